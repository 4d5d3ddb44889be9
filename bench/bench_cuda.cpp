// qvl_bench_cuda: times the fused CUDA paths (functional/cuda) on a GPU; bench/bench_cuda.py runs it and
// times transformers on the same shapes in the same run. GPU only.
//   qvl_bench_cuda rope text   B L HQ HKV DH DTYPE REPS   M-RoPE (section 16/24/24 scaled to DH/2) on views
//                                                          of a fused qkv [B, L, (HQ + 2 HKV) * DH]
//   qvl_bench_cuda rope vision S H DH DTYPE REPS          vision 2-D rotary on views of qkv [S, 3, H, DH]
//   qvl_bench_cuda rmsnorm ROWS D DTYPE REPS               RMSNorm, fused and plain
//   qvl_bench_cuda tower CKPT_DIR INPUTS.h5 REPS           vision::transformer in bf16 on the GPU, fused and
//                                                          plain (pixel_values, grid_thw from INPUTS.h5)
// Prints one JSON line: per case the median time of one call in microseconds and the compulsory bytes it
// moves (reads + writes of the tensors it must touch once), plus a device-to-device copy of the rotated
// bytes measured in the same process for the bandwidth comparison.
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_timing.h"
#include "converter/convert.h"
#include "functional/cuda/fused.h"
#include "functional/error.h"
#include "functional/norm.h"
#include "functional/rotary.h"
#include "functional/text.h"
#include "functional/vision.h"
#include "instrument/h5io.h"
#include "instrument/replay.h"

namespace {
using namespace qvl;

const at::Device kGpu(at::kCUDA, 0);

void sync() { c10::cuda::getCurrentCUDAStream().synchronize(); }

// Median microseconds of one call: each sample times `inner` back-to-back calls between two syncs.
double median_us(int reps, int inner, const std::function<void()>& run) {
  auto t = bench::time_ms(reps, 3, [&] {
    for (int i = 0; i < inner; ++i) run();
    sync();
  });
  return t.median_ms * 1e3 / inner;
}

struct Row {
  std::string name;
  double us;
  double bytes;
};

std::string json(const std::vector<Row>& rows, const std::string& extra = "") {
  std::ostringstream os;
  os << "{\"device\": \"" << at::cuda::getDeviceProperties(0)->name << "\"" << extra << ", \"rows\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    os << (i ? ", " : "") << "{\"name\": \"" << rows[i].name << "\", \"us\": " << rows[i].us
       << ", \"bytes\": " << static_cast<long long>(rows[i].bytes) << "}";
  }
  os << "]}";
  return os.str();
}

// q, k views of a fused qkv [B, L, (HQ + 2 HKV) * DH]; returns (qkv, q [B, L, HQ, DH], k [B, L, HKV, DH]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_qkv(int64_t B, int64_t L, int64_t HQ, int64_t HKV, int64_t DH,
                                                         at::ScalarType dt) {
  at::Tensor qkv = at::randn({B, L, (HQ + 2 * HKV) * DH}, at::TensorOptions().device(kGpu).dtype(dt));
  at::Tensor q = qkv.narrow(2, 0, HQ * DH).view({B, L, HQ, DH});
  at::Tensor k = qkv.narrow(2, HQ * DH, HKV * DH).view({B, L, HKV, DH});
  return {qkv, q, k};
}

int bench_rope(const std::string& layout, const std::vector<std::string>& a) {
  const bool text = layout == "text";
  if ((text && a.size() != 7) || (!text && a.size() != 5)) throw std::runtime_error("rope: wrong argument count");
  const int64_t B = text ? std::stoll(a[0]) : 1, L = std::stoll(a[text ? 1 : 0]);
  const int64_t HQ = std::stoll(a[text ? 2 : 1]), HKV = text ? std::stoll(a[3]) : HQ, DH = std::stoll(a[text ? 4 : 2]);
  const at::ScalarType dt = parse_cast_dtype(a[text ? 5 : 3]);
  const int reps = std::stoi(a[text ? 6 : 4]);
  auto [qkv, q, k] = fused_qkv(B, L, HQ, HKV, DH, dt);
  const double qk_bytes = static_cast<double>(B * L * (HQ + HKV) * DH) * q.element_size();
  // angle sources: positions (3 or 2 rows of int64) and float32 tables [B, L, DH]
  cuda::RopeAngles from_pos, from_tables;
  double pos_bytes;
  at::Tensor cos, sin;
  if (text) {
    at::Tensor pos = at::randint(0, L, {3, B, L}, at::TensorOptions().device(kGpu).dtype(at::kLong));
    TextConfig c;
    c.hidden_size = HQ * DH;
    c.num_attention_heads = HQ;
    c.rope_theta = 1e6;
    const int64_t half = DH / 2, t = half / 4, h = (half - t) / 2;
    c.mrope_section = {t, h, half - t - h};  // [16, 24, 24] at DH 128
    from_pos = cuda::rope_mrope_chunked(pos, rope_inv_freq(c.rope_theta, DH), c.mrope_section);
    CosSin cs = text::rotary(pos, at::kFloat, c);
    cos = cs.cos, sin = cs.sin;
    pos_bytes = 3.0 * B * L * 8;
  } else {
    at::Tensor pos = at::randint(0, 256, {L, 2}, at::TensorOptions().device(kGpu).dtype(at::kLong));
    VisionConfig c;
    c.hidden_size = HQ * DH;
    c.num_heads = HQ;
    from_pos = cuda::rope_vision_2d(pos, rope_inv_freq(c.rope_theta, DH / 2));
    CosSin cs = vision::rotary(pos, c);
    cos = cs.cos, sin = cs.sin;
    pos_bytes = 2.0 * L * 8;
  }
  from_tables = cuda::rope_tables(cos, sin);
  const double table_bytes = 2.0 * cos.numel() * 4;
  std::vector<Row> rows;
  const int inner = 20;
  rows.push_back({"fused, positions, in place", median_us(reps, inner, [&] { cuda::rope_apply(q, k, from_pos, true); }),
                  2 * qk_bytes + pos_bytes});
  rows.push_back({"fused, positions, out of place",
                  median_us(reps, inner, [&] { cuda::rope_apply(q, k, from_pos, false); }), 2 * qk_bytes + pos_bytes});
  rows.push_back({"fused, float32 tables, in place",
                  median_us(reps, inner, [&] { cuda::rope_apply(q, k, from_tables, true); }), 2 * qk_bytes + table_bytes});
  // the plain functional path on the same GPU (ATen ops; what HF's eager code does)
  if (text) {
    // HF casts the text tables to the activation dtype
    at::Tensor qt = q.transpose(1, 2), kt = k.transpose(1, 2), cos_dt = cos.to(dt), sin_dt = sin.to(dt);
    rows.push_back({"plain ATen apply (tables)",
                    median_us(reps, 1, [&] { text::apply_rotary_pos_emb(qt, kt, cos_dt, sin_dt, false); }),
                    2 * qk_bytes + table_bytes});
  } else {
    at::Tensor qv = q.squeeze(0), kv = k.squeeze(0);
    rows.push_back({"plain ATen apply (tables)",
                    median_us(reps, 1, [&] { vision::apply_rotary_pos_emb_vision(qv, kv, cos, sin, false); }),
                    2 * qk_bytes + table_bytes});
  }
  // the copy baseline: the same number of bytes read and written, device to device
  at::Tensor src = at::empty({static_cast<int64_t>(qk_bytes)}, at::TensorOptions().device(kGpu).dtype(at::kByte));
  at::Tensor dst = at::empty_like(src);
  rows.push_back({"device-to-device copy of q+k", median_us(reps, inner, [&] { dst.copy_(src); }), 2 * qk_bytes});
  std::printf("%s\n", json(rows).c_str());
  return 0;
}

int bench_rmsnorm(const std::vector<std::string>& a) {
  if (a.size() != 4) throw std::runtime_error("rmsnorm: ROWS D DTYPE REPS");
  const int64_t R = std::stoll(a[0]), D = std::stoll(a[1]);
  const at::ScalarType dt = parse_cast_dtype(a[2]);
  const int reps = std::stoi(a[3]);
  at::Tensor x = at::randn({R, D}, at::TensorOptions().device(kGpu).dtype(dt));
  Weights w;
  w.set("weight", at::ones({D}, x.options()));
  const double bytes = 2.0 * x.numel() * x.element_size() + D * x.element_size();
  std::vector<Row> rows;
  rows.push_back({"fused", median_us(reps, 20, [&] { rms_norm(w, x, 1e-6, nullptr, true); }), bytes});
  rows.push_back({"plain ATen", median_us(reps, 5, [&] { rms_norm(w, x, 1e-6, nullptr, false); }), bytes});
  std::printf("%s\n", json(rows).c_str());
  return 0;
}

int bench_tower(const std::vector<std::string>& a) {
  if (a.size() != 3) throw std::runtime_error("tower: CKPT_DIR INPUTS.h5 REPS");
  ModelConfig cfg;
  Weights root = load_weights_any(a[0], &cfg);
  const Weights visual = to_device(cast_floating(root.at("model.visual"), at::kBFloat16), kGpu);
  h5::File f = h5::open_read(a[1]);
  at::Tensor pv = h5::read_tensor(f.id(), "pixel_values", a[1]).to(kGpu, at::kBFloat16);
  at::Tensor grid = h5::read_tensor(f.id(), "grid_thw", a[1]).to(kGpu);
  const int reps = std::stoi(a[2]);
  VisionConfig plain = cfg.vision, fused = cfg.vision;
  fused.fused = true;
  std::vector<Row> rows;
  rows.push_back({"qvl fused", median_us(reps, 1, [&] { vision::transformer(visual, pv, grid, fused); }), 0});
  rows.push_back({"qvl plain", median_us(reps, 1, [&] { vision::transformer(visual, pv, grid, plain); }), 0});
  std::printf("%s\n", json(rows, ", \"patches\": " + std::to_string(pv.size(0))).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string why = qvl::cuda::unavailable_reason();
    if (!why.empty()) throw std::runtime_error(why);
    if (argc < 2) throw std::runtime_error("usage: qvl_bench_cuda rope text|vision ... | rmsnorm ... | tower ...");
    c10::InferenceMode guard;
    const std::string mode = argv[1];
    std::vector<std::string> rest(argv + 2, argv + argc);
    if (mode == "rope" && !rest.empty()) {
      const std::string layout = rest[0];
      rest.erase(rest.begin());
      return bench_rope(layout, rest);
    }
    if (mode == "rmsnorm") return bench_rmsnorm(rest);
    if (mode == "tower") return bench_tower(rest);
    throw std::runtime_error("unknown mode '" + mode + "'");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qvl_bench_cuda: error: %s\n", error_message(e).c_str());
    return 2;
  }
}
