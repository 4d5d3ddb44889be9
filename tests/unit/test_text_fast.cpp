// The CPU fast path of the text decoder layer (TextConfig::fast, functional/text_fast.cpp) against the plain
// reference path, on random weights: the decoder layer, the attention and the MLP; float32 and bfloat16;
// with a KV cache (prefill, then two decode steps, cache contents compared after each), a left-padding mask,
// GQA (rep 2, 7 and the 7B layout of 28 query heads on 4 kv heads), no GQA with an odd head count (3) and an
// odd half head size (Dh 18); float32 also with MKL's packed GEMMs (TextConfig::fast_packed: the prefill's
// 12 rows take them, the decode steps' 2 rows do not). Planted bugs (k and v slices swapped, gate and up
// swapped) must fail the same comparison, which shows that it can fail. And packed::linear itself.
//
// Tolerances: the thresholds table of instrument/thresholds (docs/design.md §5), nothing local.
//  - float32: the float32 row (max error <= 1e-5 of the tensor's scale, Pearson and every row's cosine
//    >= 0.99999). The fast path differs from the plain one only by summation order (one GEMM for q/k/v and
//    one for gate/up; SDPA's blocked, online softmax), so it must agree at float32 rounding level.
//  - bfloat16 (the fused GEMMs and in-place ops; the attention core is the plain path's eager one there):
//    the bfloat16 row: the fast path's error against the plain path's float32 run may be at most 2x
//    the plain bf16 path's own error against it (RMSE and max |error|).
#include <gtest/gtest.h>

#include <functional>
#include <sstream>

#include "converter/convert.h"
#include "functional/mlp.h"
#include "functional/model.h"
#include "functional/norm.h"
#include "functional/packed_gemm.h"
#include "functional/text.h"
#include "instrument/metrics.h"
#include "instrument/thresholds.h"
#include "tests/support/test_support.h"

namespace qvl {
namespace {

struct Shape {
  const char* name;
  int64_t D, H, Hkv, F;
  std::vector<int64_t> mrope;  // sums to Dh / 2
};

// GQA rep 2; no GQA with 3 heads; rep 7 with an odd half head size (Dh 18); the 7B head layout (28 on 4).
const std::vector<Shape> kShapes = {
    {"gqa_rep2", 64, 4, 2, 96, {2, 3, 3}},
    {"mha_3_heads", 48, 3, 3, 80, {2, 3, 3}},
    {"rep7_head_dim_18", 126, 7, 1, 70, {3, 3, 3}},
    {"heads_28_on_4", 448, 28, 4, 160, {2, 3, 3}},
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << s.name;
}  // test names and failure output

TextConfig config(const Shape& s) {
  TextConfig c;
  c.vocab_size = 32;
  c.hidden_size = s.D;
  c.intermediate_size = s.F;
  c.num_hidden_layers = 2;
  c.num_attention_heads = s.H;
  c.num_key_value_heads = s.Hkv;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.mrope_section = s.mrope;
  c.hidden_act = "silu";
  return c;
}

TextConfig fast(TextConfig c, bool packed = false) {
  c.fast = true;
  c.fast_packed = packed;
  return c;
}

#define QVL_REQUIRE_PACKED()                                                                         \
  do {                                                                                               \
    if (!packed::available()) GTEST_SKIP() << "MKL's packed GEMM is not available in this LibTorch"; \
  } while (0)

// Random float32 weights of text decoder layers 0..n-1 under model.language_model.layers: projections
// N(0, 1/in) so that activations stay O(1), biases non-zero, norm weights near 1 but not 1 (HF's init
// hides bias and norm bugs). Returns the `layers` node.
Weights random_layers(const TextConfig& c, int64_t n, uint64_t seed) {
  at::manual_seed(seed);
  const int64_t D = c.hidden_size, F = c.intermediate_size, Dh = c.head_dim(),
                Nq = c.num_attention_heads * Dh, Nkv = c.num_key_value_heads * Dh;
  auto proj = [](int64_t out, int64_t in) {
    return at::randn({out, in}) / std::sqrt(static_cast<double>(in));
  };
  Weights root;
  for (int64_t i = 0; i < n; ++i) {
    const std::string p = "model.language_model.layers." + std::to_string(i) + ".";
    root.set(p + "input_layernorm.weight", 1.0 + 0.1 * at::randn({D}));
    root.set(p + "post_attention_layernorm.weight", 1.0 + 0.1 * at::randn({D}));
    root.set(p + "self_attn.q_proj.weight", proj(Nq, D));
    root.set(p + "self_attn.q_proj.bias", 0.5 * at::randn({Nq}));
    root.set(p + "self_attn.k_proj.weight", proj(Nkv, D));
    root.set(p + "self_attn.k_proj.bias", 0.5 * at::randn({Nkv}));
    root.set(p + "self_attn.v_proj.weight", proj(Nkv, D));
    root.set(p + "self_attn.v_proj.bias", 0.5 * at::randn({Nkv}));
    root.set(p + "self_attn.o_proj.weight", proj(D, Nq));
    root.set(p + "mlp.gate_proj.weight", proj(F, D));
    root.set(p + "mlp.up_proj.weight", proj(F, D));
    root.set(p + "mlp.down_proj.weight", proj(D, F));
  }
  return root.at("model.language_model.layers");
}

// The same tree (same paths) with every tensor cast to `dtype`.
Weights cast(const Weights& w, at::ScalarType dtype) {
  Weights root;
  for (const auto& [rel, t] : w.flatten()) root.set(join_path(w.path(), rel), t.to(dtype));
  return w.path().empty() ? root : root.at(w.path());
}

// M-RoPE positions whose t, h and w rows differ (so the sections matter): [3, B, T] from `start` per row.
at::Tensor positions(int64_t B, int64_t T, const at::Tensor& start) {
  at::Tensor base = at::arange(T, at::kLong).view({1, 1, T}) + start.view({1, B, 1});  // [1, B, T]
  return at::cat({base, base * 2 + 1, base * 3 + 2}, 0);                               // [3, B, T]
}

std::string judge_text(const Judgement& j) {
  return j.pass ? "pass" : j.why;
}

// float32: fast vs plain under the float32 row of the thresholds table.
Judgement judge32(const at::Tensor& fast_out, const at::Tensor& plain_out) {
  return judge_fp32(compare(fast_out, plain_out, /*check_dtype=*/true), threshold_for("float32", "*"));
}

// bfloat16: fast and plain bf16 outputs, each against the plain path's float32 run.
Judgement judge16(const at::Tensor& fast_out, const at::Tensor& plain_out, const at::Tensor& fp32_out) {
  if (fast_out.scalar_type() != plain_out.scalar_type()) {
    return {false, std::string("dtype ") + c10::toString(fast_out.scalar_type()) + " vs " +
                       c10::toString(plain_out.scalar_type())};
  }
  const Metrics ours = compare(fast_out.to(at::kFloat), fp32_out, /*check_dtype=*/false);
  const Metrics plain = compare(plain_out.to(at::kFloat), fp32_out, /*check_dtype=*/false);
  return judge_bf16(ours, plain, threshold_for("bfloat16", "*"));
}

// One run of the layers stack over a prefill and two decode steps, batch of 2 with row 1 left-padded by 2.
struct Steps {
  std::vector<at::Tensor> outs;       // per step: the last layer's output
  std::vector<text::KVCache> caches;  // per step: the cache after it (tensors shared, never modified)
};

constexpr int64_t kB = 2, kPrefill = 6, kSteps = 2, kPad = 2;

Steps run_steps(const Weights& layers, const TextConfig& c, at::ScalarType dtype, uint64_t seed) {
  at::manual_seed(seed);
  const int64_t D = c.hidden_size;
  at::Tensor am = at::ones({kB, kPrefill}, at::kLong);
  am.select(0, 1).narrow(0, 0, kPad).fill_(0);                    // left padding on row 1
  at::Tensor start = at::tensor({int64_t{0}, -kPad}, at::kLong);  // the padded row's first real token at 0
  Steps r;
  text::KVCache cache;
  int64_t past = 0;
  for (int64_t step = 0; step <= kSteps; ++step) {
    const int64_t T = step == 0 ? kPrefill : 1;
    if (step > 0) am = at::cat({am, at::ones({kB, 1}, at::kLong)}, 1);
    at::Tensor x = at::randn({kB, T, D}).to(dtype);
    at::Tensor pos = positions(kB, T, start + past).clamp_min(0);
    CosSin rope = text::rotary(pos, dtype, c);
    at::Tensor mask = text::causal_mask(am, kB, T, past, dtype);
    at::Tensor h = x;
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      h = text::decoder_layer(layers.at(i), h, mask, rope, c, nullptr, &cache, i);
    r.outs.push_back(h);
    r.caches.push_back(cache);
    past += T;
  }
  return r;
}

class TextFast : public ::testing::TestWithParam<Shape> {};

void expect_steps_match32(const Steps& fast_run, const Steps& plain) {
  for (int64_t s = 0; s <= kSteps; ++s) {
    SCOPED_TRACE("step " + std::to_string(s));
    EXPECT_TRUE(judge32(fast_run.outs[s], plain.outs[s]).pass)
        << "output: " << judge_text(judge32(fast_run.outs[s], plain.outs[s]));
    const auto &pc = plain.caches[s], &fc = fast_run.caches[s];
    ASSERT_EQ(fc.keys.size(), pc.keys.size());
    EXPECT_EQ(fc.length(), pc.length());
    EXPECT_EQ(fc.length(), kPrefill + s);
    for (size_t i = 0; i < pc.keys.size(); ++i) {
      SCOPED_TRACE("cache layer " + std::to_string(i));
      ASSERT_EQ(fc.keys[i].sizes(), pc.keys[i].sizes());
      ASSERT_EQ(fc.values[i].sizes(), pc.values[i].sizes());
      EXPECT_TRUE(judge32(fc.keys[i], pc.keys[i]).pass)
          << "keys: " << judge_text(judge32(fc.keys[i], pc.keys[i]));
      EXPECT_TRUE(judge32(fc.values[i], pc.values[i]).pass)
          << "values: " << judge_text(judge32(fc.values[i], pc.values[i]));
    }
  }
}

TEST_P(TextFast, DecoderLayerWithCacheAndPaddingMatchesPlainFloat32) {
  const TextConfig c = config(GetParam());
  const Weights layers = random_layers(c, 2, 11);
  expect_steps_match32(run_steps(text::fuse_projections(layers), fast(c), at::kFloat, 5),
                       run_steps(layers, c, at::kFloat, 5));
}

TEST_P(TextFast, DecoderLayerWithCacheAndPaddingMatchesPlainFloat32Packed) {
  QVL_REQUIRE_PACKED();
  const TextConfig c = config(GetParam());
  const Weights layers = random_layers(c, 2, 14);
  expect_steps_match32(run_steps(text::fuse_projections(layers, /*pack=*/true), fast(c, true), at::kFloat, 4),
                       run_steps(layers, c, at::kFloat, 4));
}

TEST_P(TextFast, DecoderLayerWithCacheAndPaddingMatchesPlainBfloat16) {
  const TextConfig c = config(GetParam());
  const Weights layers = random_layers(c, 2, 12);
  const Weights layers16 = cast(layers, at::kBFloat16);
  // The reference: the plain path in float32 on the same (bf16-valued) weights and inputs.
  const Steps ref = run_steps(cast(layers16, at::kFloat), c, at::kFloat, 6);
  const Steps plain = run_steps(layers16, c, at::kBFloat16, 6);
  const Steps fast_run = run_steps(text::fuse_projections(layers16), fast(c), at::kBFloat16, 6);
  for (int64_t s = 0; s <= kSteps; ++s) {
    SCOPED_TRACE("step " + std::to_string(s));
    const Judgement out = judge16(fast_run.outs[s], plain.outs[s], ref.outs[s]);
    EXPECT_TRUE(out.pass) << "output: " << out.why;
    const auto &pc = plain.caches[s], &fc = fast_run.caches[s], &rc = ref.caches[s];
    EXPECT_EQ(fc.length(), pc.length());
    for (size_t i = 0; i < pc.keys.size(); ++i) {
      SCOPED_TRACE("cache layer " + std::to_string(i));
      ASSERT_EQ(fc.keys[i].sizes(), pc.keys[i].sizes());
      const Judgement k = judge16(fc.keys[i], pc.keys[i], rc.keys[i]),
                      v = judge16(fc.values[i], pc.values[i], rc.values[i]);
      EXPECT_TRUE(k.pass) << "keys: " << k.why;
      EXPECT_TRUE(v.pass) << "values: " << v.why;
    }
  }
}

// attention and mlp through the flag (text::attention / text::mlp with c.fast), no cache, padding mask.
TEST_P(TextFast, AttentionAndMlpMatchPlainBothDtypes) {
  const TextConfig c = config(GetParam());
  const Weights layer = random_layers(c, 1, 13).at(0);
  const int64_t T = 9;
  at::manual_seed(7);
  const at::Tensor x32 = at::randn({kB, T, c.hidden_size});
  at::Tensor am = at::ones({kB, T}, at::kLong);
  am.select(0, 0).narrow(0, 0, 3).fill_(0);
  const at::Tensor pos = positions(kB, T, at::tensor({int64_t{-3}, int64_t{0}}, at::kLong)).clamp_min(0);
  std::map<at::ScalarType, std::pair<at::Tensor, at::Tensor>> ref;  // float32 plain attention / mlp outputs
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dt));
    const Weights w = cast(layer, dt);
    const Weights wf = text::fuse_projections(w);
    const at::Tensor x = x32.to(dt), mask = text::causal_mask(am, kB, T, 0, dt);
    const CosSin rope = text::rotary(pos, dt, c);
    const at::Tensor a_plain = text::attention(w.at("self_attn"), x, mask, rope, c).out;
    const auto a_fast = text::attention(wf.at("self_attn"), x, mask, rope, fast(c));
    const auto a_plain_weights = text::attention(w.at("self_attn"), x, mask, rope, c).weights;
    if (dt == at::kFloat) {
      EXPECT_FALSE(a_fast.weights.defined()) << "the fused kernel forms no attention weights";
    } else {  // bf16 runs the plain path's eager attention: it returns its weights
      ASSERT_TRUE(a_fast.weights.defined()) << "bf16: the eager attention returns its weights";
      EXPECT_EQ(a_fast.weights.sizes(), a_plain_weights.sizes());
    }
    const at::Tensor m_plain = text::mlp(w.at("mlp"), x, c), m_fast = text::mlp(wf.at("mlp"), x, fast(c));
    if (dt == at::kFloat) {
      // the bf16 reference: float32 plain runs on the bf16-rounded weights and inputs
      const Weights w16 = cast(cast(layer, at::kBFloat16), at::kFloat);
      const at::Tensor x16 = x32.to(at::kBFloat16).to(at::kFloat);
      ref[at::kBFloat16] = {text::attention(w16.at("self_attn"), x16, mask, rope, c).out,
                            text::mlp(w16.at("mlp"), x16, c)};
      const Judgement ja = judge32(a_fast.out, a_plain), jm = judge32(m_fast, m_plain);
      EXPECT_TRUE(ja.pass) << "attention: " << ja.why;
      EXPECT_TRUE(jm.pass) << "mlp: " << jm.why;
      if (packed::available()) {  // 18 rows: the packed GEMMs run
        const Weights wp = text::fuse_projections(w, /*pack=*/true);
        const Judgement pa =
            judge32(text::attention(wp.at("self_attn"), x, mask, rope, fast(c, true)).out, a_plain);
        const Judgement pm = judge32(text::mlp(wp.at("mlp"), x, fast(c, true)), m_plain);
        EXPECT_TRUE(pa.pass) << "attention, packed: " << pa.why;
        EXPECT_TRUE(pm.pass) << "mlp, packed: " << pm.why;
      }
    } else {
      const Judgement ja = judge16(a_fast.out, a_plain, ref[at::kBFloat16].first);
      const Judgement jm = judge16(m_fast, m_plain, ref[at::kBFloat16].second);
      EXPECT_TRUE(ja.pass) << "attention: " << ja.why;
      EXPECT_TRUE(jm.pass) << "mlp: " << jm.why;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, TextFast, ::testing::ValuesIn(kShapes),
                         [](const ::testing::TestParamInfo<Shape>& i) { return std::string(i.param.name); });

// ---- the comparison can fail: planted bugs ----------------------------------------------------------------

// The same tree with leaves a and b (paths relative to w) exchanged: fused afterwards, this is a fused matrix
// whose row blocks are in the wrong order, as a fast path slicing its output wrongly would read them.
Weights swap_leaves(const Weights& w, const std::string& a, const std::string& b) {
  Weights root;
  for (const auto& [rel, t] : w.flatten()) {
    const std::string key = rel == a ? b : rel == b ? a : rel;
    root.set(join_path(w.path(), key), t);
  }
  return root.at(w.path());
}

std::vector<bool> pack_variants() {
  return packed::available() ? std::vector<bool>{false, true} : std::vector<bool>{false};
}

TEST(TextFastPlantedBug, SwappedKeyAndValueSlicesAreCaught) {
  const TextConfig c = config(kShapes[0]);
  const Weights layers = random_layers(c, 2, 21);
  const Steps plain = run_steps(layers, c, at::kFloat, 8);
  Weights bad = layers;
  for (const char* i : {"0", "1"}) {
    for (const char* leaf : {"weight", "bias"}) {
      bad = swap_leaves(bad, std::string(i) + ".self_attn.k_proj." + leaf,
                        std::string(i) + ".self_attn.v_proj." + leaf);
    }
  }
  for (bool pack : pack_variants()) {
    SCOPED_TRACE(pack ? "packed" : "not packed");
    const Steps buggy = run_steps(text::fuse_projections(bad, pack), fast(c, pack), at::kFloat, 8);
    const Metrics m = compare(buggy.outs[0], plain.outs[0]);
    EXPECT_FALSE(judge32(buggy.outs[0], plain.outs[0]).pass)
        << "a k/v swap went unnoticed: max_rel " << m.max_rel;
    EXPECT_GT(m.max_rel, 1e-2) << "the planted bug should be far above float32 rounding";
    EXPECT_FALSE(judge32(buggy.caches[0].keys[0], plain.caches[0].keys[0]).pass) << "cache keys";
  }
}

TEST(TextFastPlantedBug, SwappedGateAndUpAreCaught) {
  const TextConfig c = config(kShapes[2]);
  const Weights layer = random_layers(c, 1, 22).at(0);
  at::manual_seed(9);
  const at::Tensor x = at::randn({1, 5, c.hidden_size});
  const at::Tensor plain = text::mlp(layer.at("mlp"), x, c);
  for (bool pack : pack_variants()) {
    SCOPED_TRACE(pack ? "packed" : "not packed");
    const Weights bad =
        text::fuse_projections(swap_leaves(layer, "mlp.gate_proj.weight", "mlp.up_proj.weight"), pack);
    const at::Tensor buggy = text::mlp(bad.at("mlp"), x, fast(c, pack));
    const Metrics m = compare(buggy, plain);
    EXPECT_FALSE(judge32(buggy, plain).pass) << "a gate/up swap went unnoticed: max_rel " << m.max_rel;
    EXPECT_GT(m.max_rel, 1e-2);
  }
}

// ---- fuse_projections ----------------------------------------------------------------------------------

TEST(FuseProjections, KeepsPathsAndOriginalsAndLeavesTheInputUntouched) {
  const TextConfig c = config(kShapes[0]);
  const Weights layers = random_layers(c, 2, 31);
  const at::Tensor q_before = layers.tensor("1.self_attn.q_proj.weight");
  const Weights fused = text::fuse_projections(layers);
  EXPECT_EQ(fused.path(), layers.path());
  EXPECT_EQ(fused.at(1).at("self_attn").path(), "model.language_model.layers.1.self_attn");
  // the input tree is unchanged
  EXPECT_FALSE(layers.has("0.self_attn.qkv_proj"));
  EXPECT_FALSE(layers.has("1.mlp.gate_up_proj"));
  EXPECT_TRUE(layers.tensor("1.self_attn.q_proj.weight").is_same(q_before));
  for (int64_t i = 0; i < 2; ++i) {
    const Weights a = fused.at(i).at("self_attn"), m = fused.at(i).at("mlp"), o = layers.at(i);
    const at::Tensor& qkv = a.tensor("qkv_proj.weight");
    const int64_t Dh = c.head_dim(), Nq = c.num_attention_heads * Dh, Nkv = c.num_key_value_heads * Dh;
    EXPECT_EQ(qkv.sizes(), (std::vector<int64_t>{Nq + 2 * Nkv, c.hidden_size}));
    EXPECT_TRUE(
        at::equal(qkv, at::cat({o.tensor("self_attn.q_proj.weight"), o.tensor("self_attn.k_proj.weight"),
                                o.tensor("self_attn.v_proj.weight")})));
    EXPECT_TRUE(at::equal(a.tensor("qkv_proj.bias"),
                          at::cat({o.tensor("self_attn.q_proj.bias"), o.tensor("self_attn.k_proj.bias"),
                                   o.tensor("self_attn.v_proj.bias")})));
    EXPECT_TRUE(at::equal(m.tensor("gate_up_proj.weight"),
                          at::cat({o.tensor("mlp.gate_proj.weight"), o.tensor("mlp.up_proj.weight")})));
    // the originals are contiguous row views of the fused matrices, equal to the input's
    for (const char* k : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias", "v_proj.bias"}) {
      const at::Tensor& t = a.tensor(k);
      EXPECT_TRUE(t.is_contiguous()) << k;
      EXPECT_TRUE(at::equal(t, o.tensor(std::string("self_attn.") + k))) << k;
    }
    EXPECT_EQ(a.tensor("v_proj.weight").data_ptr<float>(),
              qkv.data_ptr<float>() + (Nq + Nkv) * c.hidden_size);
    EXPECT_EQ(m.tensor("up_proj.weight").data_ptr<float>(),
              m.tensor("gate_up_proj.weight").data_ptr<float>() + c.intermediate_size * c.hidden_size);
    // untouched leaves are the same tensors
    EXPECT_TRUE(
        fused.tensor(std::to_string(i) + ".mlp.down_proj.weight").is_same(o.tensor("mlp.down_proj.weight")));
  }
}

TEST(FuseProjections, PlainPathRunsUnchangedOnTheFusedTree) {
  const TextConfig c = config(kShapes[3]);
  const Weights layers = random_layers(c, 2, 32);
  const Steps on_original = run_steps(layers, c, at::kFloat, 3);
  const Steps on_fused = run_steps(text::fuse_projections(layers), c, at::kFloat, 3);
  // the same values read through views: the same float32 results
  for (int64_t s = 0; s <= kSteps; ++s) {
    const Judgement j = judge32(on_fused.outs[s], on_original.outs[s]);
    EXPECT_TRUE(j.pass) << "step " << s << ": " << j.why;
  }
}

TEST(FuseProjections, MismatchedProjectionNamesItsPath) {
  const TextConfig c = config(kShapes[0]);
  Weights layers = random_layers(c, 1, 33);
  layers.set("0.self_attn.k_proj.weight",
             at::zeros({c.num_key_value_heads * c.head_dim(), c.hidden_size + 1}));
  try {
    text::fuse_projections(layers);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'model.language_model.layers.0.self_attn.k_proj.weight' [32, 65]"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("model.language_model.layers.0.self_attn.q_proj.weight"), std::string::npos) << msg;
  }
}

TEST(FuseProjections, FastPathWithoutFusedWeightsSaysSo) {
  const TextConfig c = config(kShapes[0]);
  const Weights layer = random_layers(c, 1, 34).at(0);
  const at::Tensor x = at::randn({1, 3, c.hidden_size});
  const CosSin rope = text::rotary(positions(1, 3, at::zeros({1}, at::kLong)), at::kFloat, c);
  for (int which = 0; which < 2; ++which) {
    try {
      if (which == 0)
        text::decoder_layer(layer, x, {}, rope, fast(c));
      else
        text::mlp(layer.at("mlp"), x, fast(c));
      FAIL() << "expected an error";
    } catch (const std::exception& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(which == 0 ? "'model.language_model.layers.0.self_attn.qkv_proj' is missing"
                                    : "'model.language_model.layers.0.mlp.gate_up_proj' is missing"),
                std::string::npos)
          << msg;
      EXPECT_NE(msg.find("text::fuse_projections"), std::string::npos) << msg;
    }
  }
}

TEST(FuseProjections, PackTakesFloat32OnlyAndFastPackedNeedsIt) {
  QVL_REQUIRE_PACKED();
  const TextConfig c = config(kShapes[0]);
  const Weights layers = random_layers(c, 1, 35);
  try {
    text::fuse_projections(cast(layers, at::kBFloat16), /*pack=*/true);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "'model.language_model.layers.0.self_attn.qkv_proj.weight' is [128, 64] BFloat16"),
              std::string::npos)
        << e.what();
  }
  const at::Tensor x = at::randn({1, 4, c.hidden_size});  // 4 rows: the packed GEMM is asked for
  const CosSin rope = text::rotary(positions(1, 4, at::zeros({1}, at::kLong)), at::kFloat, c);
  try {
    text::decoder_layer(text::fuse_projections(layers).at(0), x, {}, rope, fast(c, true));
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(
        std::string(e.what()).find("'model.language_model.layers.0.self_attn.qkv_proj.packed' is missing"),
        std::string::npos)
        << e.what();
  }
}

// ---- packed::linear --------------------------------------------------------------------------------------

TEST(PackedGemm, MatchesLinearForAnyRowsBiasAndRowStride) {
  QVL_REQUIRE_PACKED();
  at::manual_seed(51);
  const int64_t N = 96, K = 80;
  const at::Tensor w = at::randn({N, K}) / std::sqrt(80.0), b = at::randn({N});
  const at::Tensor p = packed::pack(w);
  EXPECT_EQ(packed::shape(p), std::make_pair(N, K));
  for (int64_t M : {1, 3, 4, 37, 130, 513, 1100}) {  // packed with the 512-row size hint: more rows too
    SCOPED_TRACE("rows " + std::to_string(M));
    const at::Tensor x = at::randn({M, K});
    Judgement j = judge32(packed::linear(x, p), at::linear(x, w));
    EXPECT_TRUE(j.pass) << "no bias: " << j.why;
    j = judge32(packed::linear(x, p, b), at::linear(x, w, b));
    EXPECT_TRUE(j.pass) << "bias: " << j.why;
    const at::Tensor x3 = at::randn({2, M, K});  // leading dims fold into rows
    j = judge32(packed::linear(x3, p, b), at::linear(x3, w, b));
    EXPECT_TRUE(j.pass) << "3-D: " << j.why;
    const at::Tensor wide = at::randn({M, 2 * K}),
                     half = wide.narrow(1, K, K);  // row stride 2K, read in place
    j = judge32(packed::linear(half, p), at::linear(half.contiguous(), w));
    EXPECT_TRUE(j.pass) << "strided rows: " << j.why;
  }
}

TEST(PackedGemm, RefusesACopyAndBadInputs) {
  QVL_REQUIRE_PACKED();
  const at::Tensor w = at::randn({16, 8}), p = packed::pack(w), x = at::randn({5, 8});
  auto expect_error = [](const std::function<void()>& f, const std::string& text) {
    try {
      f();
      ADD_FAILURE() << "expected an error containing: " << text;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_error([&] { packed::linear(x, p.clone()); }, "copied or moved after packing");
  expect_error([&] { packed::linear(x.to(at::kBFloat16), p); }, "x must be float32 on the CPU, got BFloat16");
  expect_error([&] { packed::linear(at::randn({5, 9}), p); }, "x must be [..., 8], got [5, 9]");
  expect_error([&] { packed::linear(x, p, at::randn({15})); }, "bias must be [16], got [15]");
  expect_error([&] { packed::linear(x, at::zeros({100}, at::kByte)); }, "not a packed weight");
  expect_error([&] { packed::pack(w.to(at::kBFloat16)); }, "weight must be float32 on the CPU");
}

// ---- the whole model: prefill and decode steps on the committed tiny checkpoint
// -------------------------------

TEST(TextFastModel, TinyModelPrefillAndDecodeLogitsMatchPlain) {
  const std::string path = testing::data_path("weights/tiny.h5");
  QVL_REQUIRE_FILE(path);
  ModelConfig cfg;
  const Weights root = load_weights_any(path, &cfg);
  // a left-padded text batch of 2 (14 prefill rows: the packed GEMMs run there; 2 rows per decode step)
  model::Inputs in;
  in.input_ids =
      at::tensor(std::vector<int64_t>{0, 0, 17, 42, 99, 23, 77, 5, 9, 14, 120, 3, 64, 201}, at::kLong)
          .view({2, 7});
  in.attention_mask = at::ones({2, 7}, at::kLong);
  in.attention_mask.select(0, 0).narrow(0, 0, 2).fill_(0);
  model::DecodeState plain = model::prefill(root, in, cfg);
  std::vector<at::Tensor> tokens;
  std::vector<at::Tensor> plain_logits{plain.logits};
  for (int step = 0; step < 3; ++step) {  // the plain path's greedy tokens, fed to both paths
    tokens.push_back(plain.logits.argmax(-1));
    model::decode_step(root, plain, tokens.back(), cfg);
    plain_logits.push_back(plain.logits);
  }
  for (bool pack : pack_variants()) {
    SCOPED_TRACE(pack ? "packed" : "not packed");
    ModelConfig fc = cfg;
    fc.text = fast(cfg.text, pack);
    // the flag reaches the decoder layers through model::prefill: on unfused weights it fails
    EXPECT_THROW(model::prefill(root, in, fc), c10::Error);
    const Weights fused = text::fuse_projections(root, pack);
    model::DecodeState s = model::prefill(fused, in, fc);
    for (size_t step = 0; step < plain_logits.size(); ++step) {
      const Judgement j = judge32(s.logits, plain_logits[step]);
      EXPECT_TRUE(j.pass) << "logits after step " << step << ": " << j.why;
      EXPECT_EQ(s.cache.length(), 7 + static_cast<int64_t>(step));
      if (step < tokens.size()) model::decode_step(fused, s, tokens[step], fc);
    }
  }
}

// ---- the recorder ----------------------------------------------------------------------------------------

struct ListRecorder : Recorder {
  struct Call {
    std::string path, cls;
    Value outputs;
  };
  std::vector<Call> calls;
  int64_t begin(const std::string& path, const std::string& cls, const Value&, const std::string&) override {
    calls.push_back({path, cls, Value()});
    return static_cast<int64_t>(calls.size()) - 1;
  }
  void end(int64_t h, const Value& out) override { calls[h].outputs = out; }
};

TEST(TextFastRecorder, RecordsThePlainCallsAndNoInPlaceChangeReachesThem) {
  const TextConfig c = config(kShapes[0]);
  const Weights layer = random_layers(c, 1, 41).at(0), fused = text::fuse_projections(layer);
  at::manual_seed(3);
  const at::Tensor x = at::randn({1, 4, c.hidden_size});
  const CosSin rope = text::rotary(positions(1, 4, at::zeros({1}, at::kLong)), at::kFloat, c);
  const at::Tensor mask = text::causal_mask({}, 1, 4, 0, at::kFloat);
  ListRecorder plain_rec, fast_rec;
  const at::Tensor plain = text::decoder_layer(layer, x, mask, rope, c, &plain_rec);
  const at::Tensor with_rec = text::decoder_layer(fused, x, mask, rope, fast(c), &fast_rec);
  const at::Tensor without_rec = text::decoder_layer(fused, x, mask, rope, fast(c));
  // out-of-place adds with a recorder, in place without: the same sums
  EXPECT_TRUE(at::equal(with_rec, without_rec));
  EXPECT_TRUE(judge32(with_rec, plain).pass);
  ASSERT_EQ(fast_rec.calls.size(), plain_rec.calls.size());
  for (size_t i = 0; i < plain_rec.calls.size(); ++i) {
    EXPECT_EQ(fast_rec.calls[i].path, plain_rec.calls[i].path);
    EXPECT_EQ(fast_rec.calls[i].cls, plain_rec.calls[i].cls);
  }
  for (const auto& call : fast_rec.calls) {
    if (call.cls == "Qwen2_5_VLAttention") {
      EXPECT_TRUE(call.outputs.at(1).is_none()) << "attention weights: the fused kernel forms none";
      // the recorded attention output is the one before the residual add (not modified in place afterwards)
      const at::Tensor a =
          text::attention(fused.at("self_attn"), rms_norm(layer.at("input_layernorm"), x, c.rms_norm_eps),
                          mask, rope, fast(c))
              .out;
      EXPECT_TRUE(at::equal(call.outputs.at(0).as_tensor(), a));
    }
    if (call.cls == "Qwen2_5_VLDecoderLayer") EXPECT_TRUE(at::equal(call.outputs.as_tensor(), with_rec));
  }
}

}  // namespace
}  // namespace qvl
