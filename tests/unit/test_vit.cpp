// The ViT experiments: gradcheck of every RoPE applier in double, the relative-shift property of
// every variant (and its absence for APE), axial-matrix == axial and block:2 == axial, training (loss falls,
// beats chance, same seed = same losses on one thread), save/load identical logits, and the data readers'
// bad-data errors. Data-dependent tests SKIP with the reason when Fashion-MNIST is absent.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <unistd.h>
#include <zlib.h>

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "functional/rope/block.h"
#include "functional/rope/rope2d.h"
#include "functional/rope/spiral.h"
#include "functional/vit.h"
#include "tests/support/test_support.h"
#include "vit/data.h"
#include "vit/train.h"
#include "vit/workers.h"

namespace qvl::vit {
namespace {
namespace fs = std::filesystem;

std::vector<double> nlohmann_parse(const std::string& text) { return nlohmann::json::parse(text).get<std::vector<double>>(); }

at::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }
at::Tensor randn_d(std::vector<int64_t> shape, at::Generator& g) {
  return at::randn(shape, g, at::TensorOptions().dtype(at::kDouble));
}

template <typename F>
void expect_error(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
  } catch (const std::exception& e) {
    const std::string what = e.what();
    for (const auto& n : needles) EXPECT_NE(what.find(n), std::string::npos) << "'" << n << "' not in: " << what;
    return;
  }
  ADD_FAILURE() << "no exception thrown";
}

// torch.autograd.gradcheck in C++: the full Jacobian of f at `inputs` (float64), analytic (one backward per
// output element) against central differences (eps 1e-6), with gradcheck's default atol 1e-5, rtol 1e-3.
void gradcheck(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f, std::vector<at::Tensor> inputs,
               const std::string& what) {
  for (auto& x : inputs) {
    ASSERT_EQ(x.scalar_type(), at::kDouble) << what;
    x = x.detach().clone().requires_grad_(true);
  }
  at::Tensor out = f(inputs);
  ASSERT_EQ(out.scalar_type(), at::kDouble) << what << ": the applier did not compute in float64";
  const int64_t n_out = out.numel();
  const double eps = 1e-6, atol = 1e-5, rtol = 1e-3;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const int64_t n_in = inputs[k].numel();
    at::Tensor analytic = at::zeros({n_out, n_in}, at::kDouble), numeric = at::zeros({n_out, n_in}, at::kDouble);
    for (int64_t o = 0; o < n_out; ++o) {
      at::Tensor go = at::zeros_like(out, at::MemoryFormat::Contiguous);  // out may be a strided view
      go.view(-1)[o] = 1.0;
      auto g = torch::autograd::grad({out}, {inputs[k]}, {go}, /*retain_graph=*/true, /*create_graph=*/false, /*allow_unused=*/true);
      if (g[0].defined()) analytic[o] = g[0].reshape(-1);
    }
    for (int64_t i = 0; i < n_in; ++i) {
      std::vector<at::Tensor> p = inputs, m = inputs;
      for (auto& t : p) t = t.detach();
      for (auto& t : m) t = t.detach();
      p[k] = p[k].clone();
      m[k] = m[k].clone();
      p[k].view(-1)[i] += eps;
      m[k].view(-1)[i] -= eps;
      numeric.select(1, i).copy_((f(p) - f(m)).reshape(-1) / (2 * eps));
    }
    const double err = (analytic - numeric).abs().sub(numeric.abs().mul(rtol)).max().item<double>();
    EXPECT_LE(err, atol) << what << ": input " << k << " Jacobian mismatch (max |a-n| - rtol|n| = " << err << ")";
    EXPECT_GT(analytic.abs().max().item<double>(), 0.0) << what << ": input " << k << " gets no gradient";
  }
}

// --- gradcheck of every applier ----------------------------------------------------------------------------

TEST(VitGradcheck, AxialComplex) {
  auto g = seeded(1);
  gradcheck([](const std::vector<at::Tensor>& in) { return rope::apply_pairs_complex(in[0], in[1]); },
            {randn_d({1, 2, 3, 8}, g), randn_d({3, 4}, g)}, "apply_pairs_complex");
}

TEST(VitGradcheck, AxialMatrix) {
  auto g = seeded(2);
  gradcheck([](const std::vector<at::Tensor>& in) { return rope::apply_pairs_matrix(in[0], in[1]); },
            {randn_d({1, 2, 3, 8}, g), randn_d({3, 4}, g)}, "apply_pairs_matrix");
}

TEST(VitGradcheck, MixedLearnedFrequencies) {
  // x and the learned freqs [2, L, H*P] through mixed_angles (positions are data, not parameters)
  auto g = seeded(3);
  const int64_t L = 2, H = 2, D = 8;
  at::Tensor tx = at::tensor({0.0, 1.0, 2.0}, at::kDouble), ty = at::tensor({1.0, 0.0, 2.0}, at::kDouble);
  for (int64_t layer = 0; layer < L; ++layer)
    gradcheck(
        [&](const std::vector<at::Tensor>& in) {
          return rope::apply_pairs_complex(in[0], rope::mixed_angles(in[1], tx, ty, H)[layer]);
        },
        {randn_d({1, H, 3, D}, g), randn_d({2, L, H * D / 2}, g)}, "mixed layer " + std::to_string(layer));
}

TEST(VitGradcheck, BlockGeneratorsAndApplier) {
  // x, and the generators [A, nb, b, b] themselves through matrix_exp (block_rotations), for b = 2 .. 4,
  // including partial rotary (D = 2*nb*b + 1 leaves one channel unrotated)
  auto g = seeded(4);
  at::Tensor pos = at::tensor({0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 2.0, 1.0}, at::kDouble).view({4, 2});
  for (int64_t b : {2, 3, 4}) {
    const int64_t nb = 2, D = nb * b + 1;
    gradcheck(
        [&](const std::vector<at::Tensor>& in) {
          at::Tensor G = rope::skew_part(in[1]) * 0.3;  // skew generators
          return rope::apply_block_rope(in[0], rope::block_rotations(G, pos));
        },
        {randn_d({1, 1, 4, D}, g), randn_d({2, nb, b, b}, g)}, "block b=" + std::to_string(b));
    // the linearly dependent (ComRoPE-LD) construction: coefficients and base matrices
    gradcheck(
        [&](const std::vector<at::Tensor>& in) {
          return rope::apply_block_rope(in[0], rope::block_rotations(rope::generators_linearly_dependent(in[1], in[2]), pos));
        },
        {randn_d({1, 1, 4, D}, g), randn_d({2, nb}, g).mul(0.3), randn_d({nb, b, b}, g)}, "block LD b=" + std::to_string(b));
  }
}

TEST(VitGradcheck, Spiral) {
  auto g = seeded(5);
  gradcheck([](const std::vector<at::Tensor>& in) { return rope::apply_spiral(in[0], in[1]); },
            {randn_d({1, 3, 2, 8}, g), randn_d({3, 8}, g)}, "apply_spiral");
  gradcheck([](const std::vector<at::Tensor>& in) { return rope::apply_spiral(in[0], in[1], /*class_token=*/true); },
            {randn_d({1, 4, 1, 8}, g), randn_d({3, 8}, g)}, "apply_spiral with class token");
}

TEST(VitGradcheck, WholeModelMixedFrequenciesGetGradients) {
  // the ViT's forward in float64 end to end with learned mixed frequencies (a small model)
  VitConfig c;
  c.image = 8;
  c.patch = 4;
  c.width = 8;
  c.depth = 1;
  c.heads = 2;
  c.classes = 3;
  c.rope = parse_rope("mixed");
  Weights w0 = init(c, 0);
  at::Tensor img = at::randn({1, 1, 8, 8}, at::kDouble);
  gradcheck(
      [&](const std::vector<at::Tensor>& in) {
        Weights w;
        for (const auto& [p, t] : w0.flatten()) w.set(p, t.to(at::kDouble));
        w.set("rope.freqs", in[0]);
        return forward(w, c, img);
      },
      {w0.tensor("rope.freqs").to(at::kDouble)}, "vit forward wrt rope.freqs");
}

// --- relative-shift property ------------------------------------------------------------------------------

VitConfig small_config(const std::string& rope) {
  VitConfig c;
  c.width = 64;
  c.heads = 1;
  c.depth = 2;
  c.rope = parse_rope(rope);
  return c;
}

// positions of an s x s patch of a 10 x 10 grid at offset (dx, dy): [s*s, 2] (x, y)
at::Tensor sub_grid(int64_t s, int64_t dx, int64_t dy) {
  std::vector<float> v;
  for (int64_t r = 0; r < s; ++r)
    for (int64_t col = 0; col < s; ++col) {
      v.push_back(float(col + dx));
      v.push_back(float(r + dy));
    }
  return at::tensor(v).view({s * s, 2});
}

class RelativeShift : public ::testing::TestWithParam<std::string> {};

TEST_P(RelativeShift, LogitsDependOnlyOnDifferences) {
  VitConfig c = small_config(GetParam());
  Weights w = init(c, 7);
  at::Tensor x = at::randn({2, 36, c.width}, seeded(8));
  for (int64_t layer = 0; layer < c.depth; ++layer) {
    at::Tensor a = attention_logits(w, c, layer, x, rope_tables_at(w, c, sub_grid(6, 0, 0), 10, 10));
    at::Tensor b = attention_logits(w, c, layer, x, rope_tables_at(w, c, sub_grid(6, 3, 2), 10, 10));
    const double scale = a.abs().max().item<double>();
    EXPECT_LE((a - b).abs().max().item<double>(), 1e-5 * std::max(1.0, scale))
        << GetParam() << " layer " << layer << ": shifting every position by (3, 2) changed the attention logits";
    // not vacuous: positions that are not a shift (scaled by 2) do change them
    at::Tensor scaled = attention_logits(w, c, layer, x, rope_tables_at(w, c, sub_grid(6, 0, 0) * 2 - 0, 12, 12));
    EXPECT_GT((a - scaled).abs().max().item<double>(), 1e-3 * scale) << GetParam() << ": the encoding ignores positions";
  }
}

INSTANTIATE_TEST_SUITE_P(EveryRope, RelativeShift,
                         ::testing::Values("axial", "axial-matrix", "mixed", "block:2", "block:3", "block:4", "block:5",
                                           "block:6", "spiral:4", "spiral:8", "ape+axial"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(RelativeShiftApe, AbsoluteEmbeddingLacksIt) {
  VitConfig c = small_config("ape");
  Weights w = init(c, 7);
  // a clearly non-zero learned table, as after training
  w.set("pos_embed", at::randn({1, 49, c.width}, seeded(9)));
  at::Tensor content = at::randn({1, 16, c.width}, seeded(10));
  auto rows = [&](int64_t dx, int64_t dy) {
    std::vector<int64_t> idx;
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t col = 0; col < 4; ++col) idx.push_back((r + dy) * 7 + col + dx);
    return w.tensor("pos_embed").index_select(1, at::tensor(idx, at::kLong));
  };
  at::Tensor a = attention_logits(w, c, 0, content + rows(0, 0), RopeTables());
  at::Tensor b = attention_logits(w, c, 0, content + rows(2, 3), RopeTables());
  EXPECT_GT((a - b).abs().max().item<double>(), 1e-2 * a.abs().max().item<double>())
      << "APE: shifting every position left the attention logits unchanged";
}

// --- equalities ----------------------------------------------------------------------------------------------

TEST(VitEquality, AxialMatrixAndBlock2EqualAxial) {
  at::Tensor img = at::rand({4, 1, 28, 28}, seeded(11)) * 2 - 1;
  at::Tensor img36 = at::rand({2, 1, 36, 36}, seeded(12)) * 2 - 1;
  VitConfig ax = small_config("axial");
  Weights w = init(ax, 3);  // axial, axial-matrix and block:2 have the same parameters
  for (const std::string other : {"axial-matrix", "block:2"}) {
    VitConfig oc = small_config(other);
    for (auto mode : {Positions::Extend, Positions::Rescale}) {
      at::Tensor a = forward(w, ax, img, mode), b = forward(w, oc, img, mode);
      EXPECT_LE((a - b).abs().max().item<double>(), 2e-5) << other << " at 28px";
      a = forward(w, ax, img36, mode);
      b = forward(w, oc, img36, mode);
      EXPECT_LE((a - b).abs().max().item<double>(), 2e-5) << other << " at 36px";
    }
    EXPECT_EQ(rotated_fraction(oc), 1.0);
  }
  // and none differs (not vacuous)
  EXPECT_GT((forward(w, ax, img) - forward(w, small_config("none"), img)).abs().max().item<double>(), 1e-4);
}

// vit::attend writes short sequences out (matmul, softmax, matmul) and sends long ones to ATen's fused kernel:
// on both sides of the switch it equals attention computed in float64, values and gradients, to float32
// rounding (unit-scale inputs: 1e-5).
TEST(VitAttend, EqualsFloat64AttentionOnBothSides) {
  at::Generator g = seeded(11);
  for (int64_t T : std::vector<int64_t>{26, 50, kExplicitAttentionMaxTokens, kExplicitAttentionMaxTokens + 1, 82}) {
    std::vector<at::Tensor> a, ref;
    for (int i = 0; i < 3; ++i) {
      at::Tensor t = at::randn({3, 2, T, 64}, g);
      a.push_back(t.clone().requires_grad_(true));
      ref.push_back(t.to(at::kDouble).requires_grad_(true));
    }
    at::Tensor go = at::randn({3, 2, T, 64}, g);
    at::Tensor ya = attend(a[0], a[1], a[2]);
    at::Tensor yr = at::matmul(at::softmax(at::matmul(ref[0], ref[1].transpose(-1, -2)) / 8.0, -1), ref[2]);  // sqrt(64)
    EXPECT_TRUE(at::allclose(ya.to(at::kDouble), yr, 1e-5, 1e-5)) << "T " << T << ": max |diff| " << (ya.to(at::kDouble) - yr).abs().max().item<double>();
    ya.backward(go);
    yr.backward(go.to(at::kDouble));
    for (int i = 0; i < 3; ++i) {
      const at::Tensor ga = a[i].grad().to(at::kDouble);
      EXPECT_TRUE(at::allclose(ga, ref[i].grad(), 1e-5, 1e-5)) << "T " << T << " grad " << i << ": max |diff| "
                                                               << (ga - ref[i].grad()).abs().max().item<double>();
    }
  }
}

TEST(VitConfigTest, RotatedFractionAndParse) {
  EXPECT_DOUBLE_EQ(rotated_fraction(small_config("block:3")), 60.0 / 64.0);
  EXPECT_DOUBLE_EQ(rotated_fraction(small_config("block:5")), 60.0 / 64.0);
  EXPECT_DOUBLE_EQ(rotated_fraction(small_config("block:6")), 60.0 / 64.0);
  EXPECT_DOUBLE_EQ(rotated_fraction(small_config("block:4")), 1.0);
  EXPECT_DOUBLE_EQ(rotated_fraction(small_config("ape")), 0.0);
  expect_error([] { parse_rope("block:1"); }, {"block:1", ">= 2"});
  expect_error([] { parse_rope("spiral:3"); }, {"spiral:3", "even"});
  expect_error([] { parse_rope("rotary"); }, {"unknown vit rope", "rotary"});
  VitConfig c = small_config("spiral:8");
  VitConfig back = VitConfig::from_json(c.to_json());
  EXPECT_EQ(back.to_json(), c.to_json());
  VitConfig bad = small_config("spiral:6");  // 64 % 12 != 0
  expect_error([&] { bad.validate(); }, {"spiral:6", "2K"});
}

TEST(VitForward, PartialRotaryLeavesTailChannels) {
  // block:3 on D = 64 rotates 60 channels; the last 4 of q pass through unchanged
  VitConfig c = small_config("block:3");
  Weights w = init(c, 1);
  RopeTables t = rope_tables(w, c, 7, 7, Positions::Extend);
  at::Tensor q = at::randn({1, 1, 49, 64}, seeded(2));
  at::Tensor r = apply_rope(c, t, 0, q);
  EXPECT_TRUE(at::equal(r.slice(-1, 60), q.slice(-1, 60)));
  EXPECT_GT((r.slice(-1, 0, 60) - q.slice(-1, 0, 60)).abs().max().item<double>(), 1e-3);
}

// --- data ------------------------------------------------------------------------------------------------------

std::string be32(uint32_t v) {
  std::string s(4, '\0');
  s[0] = char(v >> 24);
  s[1] = char(v >> 16);
  s[2] = char(v >> 8);
  s[3] = char(v);
  return s;
}
std::string idx_images(uint32_t n, uint32_t h, uint32_t w, uint32_t magic = 0x803) {
  std::string s = be32(magic) + be32(n) + be32(h) + be32(w);
  for (uint32_t i = 0; i < n * h * w; ++i) s += char(i % 251);
  return s;
}
std::string idx_labels(std::vector<uint8_t> l) {
  std::string s = be32(0x801) + be32(uint32_t(l.size()));
  for (auto v : l) s += char(v);
  return s;
}
void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
  gzclose(f);
}

TEST(VitData, FashionMnistGzRoundTrip) {
  testing::TempDir d;
  write_gz(d.file("t10k-images-idx3-ubyte.gz"), idx_images(3, 28, 28));
  write_gz(d.file("t10k-labels-idx1-ubyte.gz"), idx_labels({0, 9, 4}));
  Dataset ds = load_fashion_mnist(d.path(), false);
  ASSERT_EQ(ds.images.sizes(), (std::vector<int64_t>{3, 1, 28, 28}));
  EXPECT_EQ(ds.labels[1].item<int64_t>(), 9);
  EXPECT_EQ(ds.images[0][0][0][5].item<int64_t>(), 5);
  EXPECT_EQ(ds.images[2][0][27][27].item<int64_t>(), int64_t((3 * 784 - 1) % 251));
}

TEST(VitData, BadFashionMnist) {
  expect_error([] { load_fashion_mnist("/nonexistent/qvl-fmnist", true); }, {"/nonexistent/qvl-fmnist", "no such folder"});
  testing::TempDir d;
  write_gz(d.file("train-images-idx3-ubyte.gz"), idx_images(2, 28, 28));
  expect_error([&] { load_fashion_mnist(d.path(), true); }, {"train-labels-idx1-ubyte", "no such file"});
  // wrong magic
  write_gz(d.file("train-labels-idx1-ubyte.gz"), idx_labels({1, 2}));
  write_gz(d.file("train-images-idx3-ubyte.gz"), idx_images(2, 28, 28, 0x801));
  expect_error([&] { load_fashion_mnist(d.path(), true); }, {"train-images-idx3-ubyte.gz", "wrong IDX magic number 0x00000801", "0x00000803"});
  // size does not match the header
  std::string im = idx_images(2, 28, 28);
  write_gz(d.file("train-images-idx3-ubyte.gz"), im.substr(0, im.size() - 10));
  expect_error([&] { load_fashion_mnist(d.path(), true); }, {"train-images-idx3-ubyte.gz", "size does not match the header", "1568", "1558"});
  // label out of range
  write_gz(d.file("train-images-idx3-ubyte.gz"), im);
  write_gz(d.file("train-labels-idx1-ubyte.gz"), idx_labels({3, 10}));
  expect_error([&] { load_fashion_mnist(d.path(), true); }, {"train-labels-idx1-ubyte.gz", "label 10 of record 1", "out of range"});
  // counts disagree
  write_gz(d.file("train-labels-idx1-ubyte.gz"), idx_labels({3, 1, 2}));
  expect_error([&] { load_fashion_mnist(d.path(), true); }, {"3 labels for 2 images"});
  // truncated gzip stream
  write_gz(d.file("train-labels-idx1-ubyte.gz"), idx_labels({3, 1}));
  {
    std::string full;
    write_gz(d.file("tmp.gz"), im);
    std::ifstream f(d.file("tmp.gz"), std::ios::binary);
    full.assign(std::istreambuf_iterator<char>(f), {});
    testing::write_file(d.file("train-images-idx3-ubyte.gz"), full.substr(0, full.size() / 2));
  }
  expect_error([&] { load_fashion_mnist(d.path(), true); }, {"train-images-idx3-ubyte.gz", "truncated gzip stream"});
}

std::string cifar_records(int n, uint8_t label_of_last = 3) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    s += char(i == n - 1 ? label_of_last : i % 10);
    for (int k = 0; k < 3072; ++k) s += char((i + k) % 256);
  }
  return s;
}

// --holdout: the last n training images become the evaluation set, disjoint from what is trained on.
TEST(VitData, HoldOutSplitsTheTail) {
  Dataset d;
  d.images = at::arange(10, at::kByte).reshape({10, 1, 1, 1});
  d.labels = at::arange(10, at::kLong) % 3;
  d.name = "toy/train";
  auto [fit, val] = hold_out(d, 4);
  EXPECT_EQ(fit.size(), 6);
  EXPECT_EQ(val.size(), 4);
  EXPECT_EQ(val.images.view(-1)[0].item<int>(), 6);
  EXPECT_TRUE(at::equal(at::cat({fit.labels, val.labels}), d.labels));
  EXPECT_EQ(val.name, "toy/train[6:]");
  EXPECT_EQ(fit.name, "toy/train[:6]");
  expect_error([&] { hold_out(d, 10); }, {"toy/train", "hold out 10 of 10"});
  expect_error([&] { hold_out(d, 0); }, {"toy/train"});
}

TEST(VitData, Cifar10SmallFiles) {
  testing::TempDir d;
  for (int i = 1; i <= 5; ++i) testing::write_file(d.file("data_batch_" + std::to_string(i) + ".bin"), cifar_records(2));
  testing::write_file(d.file("test_batch.bin"), cifar_records(3));
  Dataset tr = load_cifar10(d.path(), true), te = load_cifar10(d.path(), false);
  ASSERT_EQ(tr.images.sizes(), (std::vector<int64_t>{10, 3, 32, 32}));
  ASSERT_EQ(te.images.sizes(), (std::vector<int64_t>{3, 3, 32, 32}));
  EXPECT_EQ(te.labels[1].item<int64_t>(), 1);
  EXPECT_EQ(te.images[1][1][0][0].item<int64_t>(), (1 + 1024) % 256);  // channel-major
  // bad: truncated record, label out of range, missing file, missing folder
  testing::write_file(d.file("test_batch.bin"), cifar_records(2) + std::string(100, 'x'));
  expect_error([&] { load_cifar10(d.path(), false); }, {"test_batch.bin", "truncated record 2", "100 of 3073"});
  testing::write_file(d.file("test_batch.bin"), cifar_records(2, 11));
  expect_error([&] { load_cifar10(d.path(), false); }, {"test_batch.bin", "label 11 of record 1", "out of range"});
  fs::remove(d.file("data_batch_4.bin"));
  expect_error([&] { load_cifar10(d.path(), true); }, {"data_batch_4.bin", "no such file"});
  expect_error([&] { load_cifar10(d.file("nope"), true); }, {"nope", "no such folder"});
}

// --- training ------------------------------------------------------------------------------------------------

#define REQUIRE_FMNIST()                                                                                     \
  do {                                                                                                     \
    if (!fs::exists(std::string(default_fashion_mnist_dir()) + "/train-images-idx3-ubyte.gz"))              \
      GTEST_SKIP() << "Fashion-MNIST absent from " << default_fashion_mnist_dir()                           \
                   << " (apt-get install dataset-fashion-mnist; scripts/setup.sh does)";                    \
  } while (0)

TEST(VitTrain, HundredStepsBeatChance) {
  REQUIRE_FMNIST();
  at::set_num_threads(2);
  Dataset tr = take(load_fashion_mnist("", true), 2000), te = take(load_fashion_mnist("", false), 1000);
  VitConfig c = small_config("axial");
  TrainOptions o;
  o.batch = 64;
  o.epochs = 10;
  o.max_steps = 100;
  o.shift = 0;  // a learnability check: no augmentation
  o.flip = false;
  o.progress = false;
  TrainResult r = train(c, tr, o);
  ASSERT_EQ(r.losses.size(), 100u);
  double first = 0, last = 0;
  for (int i = 0; i < 10; ++i) {
    first += r.losses[i] / 10;
    last += r.losses[90 + i] / 10;
  }
  EXPECT_LT(last, first - 0.5) << "loss did not fall: first 10 steps " << first << ", last 10 " << last;
  EvalResult e = evaluate(r.weights, c, te, 28, Positions::Extend);
  // measured 48.95% on all 10,000 test images (qvl vit train --train-subset 2000 --batch 64 --max-steps 100
  // --depth 2 --shift 0 --flip false); at least 3x chance (10%)
  EXPECT_GT(e.accuracy, 0.3) << "chance is 0.1";
}

// A short training run of batch 64 for the determinism and option checks.
TrainOptions short_run(int64_t steps, uint64_t seed) {
  TrainOptions o;
  o.batch = 64;
  o.max_steps = steps;
  o.seed = seed;
  o.progress = false;
  return o;
}

TEST(VitTrain, SameSeedSameLossesOnOneThread) {
  REQUIRE_FMNIST();
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  Dataset tr = take(load_fashion_mnist("", true), 640);
  for (const std::string rope : {"mixed", "block:3", "spiral:4"}) {
    VitConfig c = small_config(rope);
    TrainOptions o = short_run(8, 5);
    TrainResult a = train(c, tr, o), b = train(c, tr, o);
    EXPECT_EQ(a.losses, b.losses) << rope;
    o.seed = 6;
    EXPECT_NE(train(c, tr, o).losses, a.losses) << rope << ": the seed changes nothing";
  }
  at::set_num_threads(before);
}

// The in-process batch split (--batch-threads): each worker takes a contiguous share of the batch on one
// intra-op thread and the shares' gradients are summed in a fixed order. Two split runs give the same losses
// bit for bit; against the unsplit run on one thread they differ only by float rounding (1e-5 relative, the
// data-parallel test's tolerance), also for an uneven split (64 = 22 + 21 + 21) and the learned frequencies.
TEST(VitTrain, BatchSplitEqualsTheWholeBatchAndIsDeterministic) {
  REQUIRE_FMNIST();
  const int before = at::get_num_threads();
  Dataset tr = take(load_fashion_mnist("", true), 640);
  for (const std::string rope : {"mixed", "axial"}) {
    VitConfig c = small_config(rope);
    TrainOptions o = short_run(6, 4);
    at::set_num_threads(1);
    const TrainResult whole = train(c, tr, o);
    for (int64_t k : {2, 3}) {
      at::set_num_threads(int(k));
      o.batch_threads = k;
      const TrainResult a = train(c, tr, o), b = train(c, tr, o);
      EXPECT_EQ(a.losses, b.losses) << rope << ": a split of " << k << " is not deterministic";
      ASSERT_EQ(a.losses.size(), whole.losses.size());
      for (size_t i = 0; i < a.losses.size(); ++i)
        EXPECT_NEAR(a.losses[i], whole.losses[i], 1e-5 * std::max(1.0, std::abs(whole.losses[i]))) << rope << " split " << k << " step " << i;
      // the trained weights, as a whole: their distance from the unsplit run's is a small part of how far
      // training moved them (AdamW normalises each element's step, so an element whose gradient is near 0
      // may step the other way under other rounding; a per-element tolerance would hang on that)
      double diff2 = 0, moved2 = 0;
      const Weights start = init(c, o.seed);
      for (const auto& [path, t] : a.weights.flatten()) {
        const at::Tensor w = whole.weights.tensor(path).to(at::kDouble);
        diff2 += (t.to(at::kDouble) - w).pow(2).sum().item<double>();
        moved2 += (w - start.tensor(path).to(at::kDouble)).pow(2).sum().item<double>();
      }
      std::printf("%s split %lld: |split - whole| / |whole - init| = %.3g\n", rope.c_str(), (long long)k, std::sqrt(diff2 / moved2));
      EXPECT_LT(std::sqrt(diff2), 1e-3 * std::sqrt(moved2)) << rope << " split " << k;
      EXPECT_GT(a.forward_s, 0.0);
    }
    o.batch_threads = 1;
  }
  at::set_num_threads(before);
}

// The worker set runs each index once per job, on its own thread with its own intra-op thread count, and
// hands a worker's error to the caller (the other workers still finish).
TEST(VitWorkers, RunEveryShareOnceAndRethrow) {
  const int before = at::get_num_threads();
  Workers w(3, 1);
  EXPECT_EQ(at::get_num_threads(), before) << "the caller's thread count changed";
  for (int rep = 0; rep < 50; ++rep) {
    std::vector<int> hits(3, 0), threads(3, 0);
    std::vector<std::thread::id> ids(3);
    w.run([&](int64_t i) {
      ++hits[size_t(i)];
      threads[size_t(i)] = at::get_num_threads();
      ids[size_t(i)] = std::this_thread::get_id();
    });
    EXPECT_EQ(hits, std::vector<int>({1, 1, 1}));
    EXPECT_EQ(threads, std::vector<int>({1, 1, 1}));
    EXPECT_NE(ids[0], ids[1]);
    EXPECT_NE(ids[0], std::this_thread::get_id());
  }
  std::vector<int> done(3, 0);
  expect_error([&] {
    w.run([&](int64_t i) {
      if (i == 1) throw std::runtime_error("share 1 failed");
      done[size_t(i)] = 1;
    });
  }, {"share 1 failed"});
  EXPECT_EQ(done, std::vector<int>({1, 0, 1}));
  using Range = std::pair<int64_t, int64_t>;
  EXPECT_EQ(share_range(64, 3, 0), Range(0, 22));
  EXPECT_EQ(share_range(64, 3, 2), Range(43, 64));
  EXPECT_EQ(share_range(2, 5, 4), Range(2, 2));
}

// Evaluation split over workers: the same predictions as one thread (a last batch smaller than the split too).
TEST(VitTrain, EvaluateSplitEqualsOneThread) {
  REQUIRE_FMNIST();
  const int before = at::get_num_threads();
  Dataset te = take(load_fashion_mnist("", false), 1003);
  VitConfig c = small_config("axial");
  Weights w = init(c, 1);
  at::set_num_threads(1);
  const EvalResult one = evaluate(w, c, te, 36, Positions::Rescale, 500);
  at::set_num_threads(2);
  for (int64_t k : {2, 5}) {
    const EvalResult split = evaluate(w, c, te, 36, Positions::Rescale, 500, "cpu", false, "eval", k);
    EXPECT_EQ(split.accuracy, one.accuracy) << "split " << k;
    EXPECT_NEAR(split.loss, one.loss, 1e-6 * std::abs(one.loss)) << "split " << k;
  }
  at::set_num_threads(before);
}

// --shift-until: the shifted steps draw exactly what a fully shifted run draws, the rest train on clean images
// (what a shift of 0 draws); --label-smoothing reaches the loss; out-of-range values are refused.
TEST(VitTrain, ShiftUntilAndLabelSmoothing) {
  REQUIRE_FMNIST();
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  Dataset tr = take(load_fashion_mnist("", true), 640);
  VitConfig c = small_config("axial");
  TrainOptions o = short_run(8, 3);
  o.shift = 2;
  o.shift_until = 1;  // every step shifted
  const std::vector<double> shifted = train(c, tr, o).losses;
  o.shift_until = 0;
  const std::vector<double> until0 = train(c, tr, o).losses;
  o.shift = 0;
  o.shift_until = 1;
  EXPECT_EQ(until0, train(c, tr, o).losses) << "shift_until 0 must train on clean images only";
  EXPECT_NE(until0, shifted);
  o.shift = 2;
  o.shift_until = 0.5;  // steps 0-3 shifted
  const std::vector<double> half = train(c, tr, o).losses;
  ASSERT_EQ(half.size(), 8u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(half[i], shifted[i]) << "step " << i;
  EXPECT_NE(std::vector<double>(half.begin() + 4, half.end()), std::vector<double>(shifted.begin() + 4, shifted.end()));
  o.shift_until = 1;
  o.label_smoothing = 0.1;
  const std::vector<double> smooth = train(c, tr, o).losses;
  EXPECT_NE(smooth, shifted) << "label smoothing changed nothing";
  o.label_smoothing = 1.0;
  EXPECT_THROW(train(c, tr, o), std::runtime_error);
  o.label_smoothing = 0;
  o.shift_until = 1.5;
  EXPECT_THROW(train(c, tr, o), std::runtime_error);
  at::set_num_threads(before);
}

TEST(VitTrain, SaveLoadIdenticalLogits) {
  REQUIRE_FMNIST();
  Dataset tr = take(load_fashion_mnist("", true), 256);
  testing::TempDir d;
  for (const std::string rope : {"mixed", "ape"}) {
    VitConfig c = small_config(rope);
    TrainOptions o;
    o.batch = 64;
    o.max_steps = 3;
    o.progress = false;
    TrainResult r = train(c, tr, o);
    const std::string path = d.file("m.h5");
    save_model(path, r.weights, c, "test");
    LoadedModel m = load_model(path);
    EXPECT_EQ(m.config.to_json(), c.to_json());
    at::Tensor imgs = tr.images.slice(0, 0, 16);
    EXPECT_TRUE(at::equal(logits(r.weights, c, imgs), logits(m.weights, m.config, imgs))) << rope;
    at::Tensor big = at::upsample_bilinear2d(imgs.to(at::kFloat), {36, 36}, false).round().clamp(0, 255).to(at::kByte);
    EXPECT_TRUE(at::equal(logits(r.weights, c, big, Positions::Rescale), logits(m.weights, m.config, big, Positions::Rescale)));
    auto res = testing::run_qvl("inspect " + path);
    EXPECT_EQ(res.exit_code, 0) << res.output;
    EXPECT_NE(res.output.find("qvl.weights"), std::string::npos) << res.output;
    EXPECT_NE(res.output.find("blocks.0.attn.qkv.weight"), std::string::npos) << res.output;
  }
  // a failed save leaves nothing
  expect_error([&] { save_model(d.file("no/such/dir/m.h5"), init(small_config("axial"), 0), small_config("axial"), "t"); }, {"no/such/dir"});
  EXPECT_FALSE(fs::exists(d.file("no")));
  expect_error([&] { load_model(d.file("absent.h5")); }, {"absent.h5"});
}

TEST(VitCli, HelpAndBadData) {
  for (const auto& [sub, option] : std::vector<std::pair<std::string, std::string>>{
           {"train", "--rope"}, {"eval", "--positions"}, {"sweep", "--variants"}}) {
    auto r = testing::run_qvl("vit " + sub + " --help");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(option), std::string::npos) << r.output;
  }
  auto r = testing::run_qvl("vit train --data /nonexistent/fm --no-progress");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("/nonexistent/fm"), std::string::npos) << r.output;
}

// A small sweep: one run file per (variant, seed), the tables over them, and a restart that skips the finished
// runs and leaves their files as they were.
TEST(VitSweep, WritesRunsAndTablesAndResumes) {
  REQUIRE_FMNIST();
  testing::TempDir d;
  const std::string cmd = " vit sweep --variants none axial --seeds 0 --depth 1 --train-subset 256 --batch 64 --max-steps 2"
                          " --resolutions 28 36 --threads 1 --no-progress --out " + d.file("vit");
  auto first = testing::run_qvl(cmd);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const std::string runs = d.file("vit/runs/fashion_mnist/");
  ASSERT_TRUE(fs::exists(runs + "none_seed0.json")) << first.output;
  ASSERT_TRUE(fs::exists(runs + "axial_seed0.json")) << first.output;
  std::ifstream md_in(d.file("vit/fashion_mnist.md"));
  const std::string md((std::istreambuf_iterator<char>(md_in)), std::istreambuf_iterator<char>());
  for (const char* want : {"| none | 1 |", "| axial | 1 |", "36px", "positions `rescale`"})
    EXPECT_NE(md.find(want), std::string::npos) << want << "\n" << md;
  // the model line is the shared architecture, not one run's position encoding
  EXPECT_EQ(md.find("\"rope\":"), std::string::npos) << md;
  const auto stamp = fs::last_write_time(runs + "axial_seed0.json");
  auto again = testing::run_qvl(cmd);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("axial seed 0: done earlier"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("none seed 0: done earlier"), std::string::npos) << again.output;
  EXPECT_EQ(fs::last_write_time(runs + "axial_seed0.json"), stamp);
  // one seed: values are printed bare (no "± 0.00" spread), the single-seed difference carries its sign
  const std::string none_row = md.substr(md.find("| none | 1 |"), md.find('\n', md.find("| none | 1 |")) - md.find("| none | 1 |"));
  EXPECT_EQ(none_row.find("±"), std::string::npos) << none_row;
  EXPECT_TRUE(md.find("| none | +") != std::string::npos || md.find("| none | -") != std::string::npos) << md;
  EXPECT_NE(md.find(" (1 seed) |"), std::string::npos) << md;
  // --tables-only rewrites the tables from the run files and trains nothing
  fs::remove(d.file("vit/fashion_mnist.md"));
  auto tables = testing::run_qvl(" vit sweep --tables-only --out " + d.file("vit"));
  ASSERT_EQ(tables.exit_code, 0) << tables.output;
  EXPECT_EQ(tables.output.find("seed 0"), std::string::npos) << tables.output;
  std::ifstream md2_in(d.file("vit/fashion_mnist.md"));
  const std::string md2((std::istreambuf_iterator<char>(md2_in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(md2.substr(md2.find("## Top-1")), md.substr(md.find("## Top-1")));
  EXPECT_EQ(fs::last_write_time(runs + "axial_seed0.json"), stamp);
  EXPECT_EQ(md.find("Warning"), std::string::npos) << md;
  // a resumed sweep with other training options adds a run the table must not silently mix in
  std::string more = cmd;
  more.replace(more.find("none axial"), 10, "none axial mixed");
  more.replace(more.find("--resolutions 28 36"), 19, "--resolutions 28");  // and other resolutions: a cell stays empty
  auto mixed = testing::run_qvl(more + " --label-smoothing 0.1");
  ASSERT_EQ(mixed.exit_code, 0) << mixed.output;
  EXPECT_NE(mixed.output.find("warning: 1 runs"), std::string::npos) << mixed.output;
  std::ifstream md3_in(d.file("vit/fashion_mnist.md"));
  const std::string md3((std::istreambuf_iterator<char>(md3_in)), std::istreambuf_iterator<char>());
  EXPECT_NE(md3.find("trained with 2 different sets of options"), std::string::npos) << md3;
  EXPECT_NE(md3.find("\"label_smoothing\":0.1"), std::string::npos) << md3;
  const size_t mixed_at = md3.find("| mixed | 1 |");
  ASSERT_NE(mixed_at, std::string::npos) << md3;
  const std::string mixed_row = md3.substr(mixed_at, md3.find('\n', mixed_at) - mixed_at);
  EXPECT_EQ(mixed_row.substr(mixed_row.size() - 4), " - |") << mixed_row;  // 28px filled, 36px empty
  auto none = testing::run_qvl(" vit sweep --tables-only --out " + d.file("nothing_here"));
  EXPECT_NE(none.exit_code, 0);
  EXPECT_NE(none.output.find("no run files under"), std::string::npos) << none.output;
}

// --jobs 2: two single-threaded shares take the runs from one queue (claim files), each run once; every run
// equals the one-process sweep's (one thread each, so bit for bit), and the parent writes the tables.
TEST(VitSweep, JobsSplitTheRunsAndMatchOneProcess) {
  REQUIRE_FMNIST();
  testing::TempDir d;
  const std::string cmd = " vit sweep --variants none axial mixed --seeds 0 --depth 1 --train-subset 256 --batch 64 --max-steps 2"
                          " --resolutions 28 36 --threads 1 --no-progress --out ";
  auto one = testing::run_qvl(cmd + d.file("one"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  // a claim left by a killed sweep: the parent clears it, so that run is not skipped
  fs::create_directories(d.file("two/runs/fashion_mnist"));
  std::ofstream(d.file("two/runs/fashion_mnist/mixed_seed0.json.claim")) << "12345\n";
  auto two = testing::run_qvl(cmd + d.file("two") + " --jobs 2");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_NE(two.output.find("2 shares done"), std::string::npos) << two.output;
  EXPECT_NE(two.output.find("removing the claim a stopped sweep left"), std::string::npos) << two.output;
  for (const auto& e : fs::directory_iterator(d.file("two/runs/fashion_mnist")))
    EXPECT_NE(e.path().extension(), ".claim") << "claim left behind: " << e.path();
  for (const char* run : {"none_seed0.json", "axial_seed0.json", "mixed_seed0.json"}) {
    auto read = [&](const std::string& dir) {
      std::ifstream f(d.file(dir + "/runs/fashion_mnist/" + run));
      EXPECT_TRUE(f.good()) << dir << "/" << run << "\n" << two.output;
      return nlohmann::json::parse(std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>()), nullptr, false);
    };
    const nlohmann::json a = read("one"), b = read("two");
    ASSERT_FALSE(a.is_discarded() || b.is_discarded()) << run;
    EXPECT_EQ(a["train"]["loss_every_10"], b["train"]["loss_every_10"]) << run;
    for (const char* m : {"extend", "rescale"})
      for (const char* r : {"28", "36"}) EXPECT_EQ(a["eval"][m][r]["accuracy"], b["eval"][m][r]["accuracy"]) << run << " " << m << " " << r;
  }
  std::ifstream md_in(d.file("two/fashion_mnist.md"));
  const std::string md((std::istreambuf_iterator<char>(md_in)), std::istreambuf_iterator<char>());
  for (const char* want : {"| none | 1 |", "| axial | 1 |", "| mixed | 1 |"}) EXPECT_NE(md.find(want), std::string::npos) << want << "\n" << md;
  auto bad = testing::run_qvl(cmd + d.file("bad") + " --shard 2/2");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--shard '2/2'"), std::string::npos) << bad.output;
}

// Two processes over loopback (c10d Gloo), each with half of every batch, against one process with the
// combined batch: the same losses step by step, to float tolerance.
TEST(VitDist, TwoProcessesEqualOneProcessWithTheCombinedBatch) {
  REQUIRE_FMNIST();
  testing::TempDir d;
  const std::string common = " vit train --rope mixed --depth 2 --train-subset 1024 --batch 64 --max-steps 6 --threads 1 --no-eval --no-progress";
  auto single = testing::run_qvl(common + " --losses-out " + d.file("one.json") + " -o " + d.file("one.h5"));
  ASSERT_EQ(single.exit_code, 0) << single.output;
  if (single.output.find("no torch.distributed backend") != std::string::npos) GTEST_SKIP() << single.output;
  const int port = 20000 + int(getpid() % 20000);
  const std::string master = " --world-size 2 --master 127.0.0.1:" + std::to_string(port);
  const std::string q = QVL_BINARY;
  const std::string cmd = "cd '" + d.path() + "' && (" + q + common + master + " --rank 0 --losses-out two.json -o two.h5 > r0.log 2>&1 & p0=$!; " +
                          q + common + master + " --rank 1 -o two_r1.h5 > r1.log 2>&1 & p1=$!; wait $p0; e0=$?; wait $p1; e1=$?; exit $((e0 | e1)))";
  const int rc = std::system(cmd.c_str());
  auto slurp = [](const std::string& p) {
    std::ifstream f(p);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  if (rc != 0 && slurp(d.file("r0.log")).find("no torch.distributed backend") != std::string::npos)
    GTEST_SKIP() << "this build has no c10d backend: " << slurp(d.file("r0.log"));
  ASSERT_EQ(rc, 0) << "rank 0:\n" << slurp(d.file("r0.log")) << "\nrank 1:\n" << slurp(d.file("r1.log"));
  auto one = nlohmann_parse(slurp(d.file("one.json"))), two = nlohmann_parse(slurp(d.file("two.json")));
  ASSERT_EQ(one.size(), 6u);
  ASSERT_EQ(two.size(), one.size());
  for (size_t i = 0; i < one.size(); ++i)
    EXPECT_NEAR(two[i], one[i], 1e-5 * std::max(1.0, std::abs(one[i]))) << "step " << i;
}

}  // namespace
}  // namespace qvl::vit
