// Host side of the fused CUDA paths: shape/dtype/stride checks, the angle builders, and the launches. The
// kernels themselves (rope.cu, rms_norm.cu) see only raw pointers and strides (kernels.h).
#include "functional/cuda/fused.h"

#include <optional>
#include <stdexcept>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "functional/cuda/kernels.h"
#include "functional/weights.h"

namespace qvl::cuda {

namespace {

[[noreturn]] void fail(const std::string& fn, const std::string& msg) {
  throw std::runtime_error("qvl::cuda::" + fn + ": " + msg);
}

std::vector<float> host_floats(const at::Tensor& t, const char* fn, const char* what) {
  TORCH_CHECK(t.defined() && t.dim() == 1, "qvl::cuda::", fn, ": ", what, " must be a 1-D tensor, got ",
              t.defined() ? shape_str(t.sizes()) : std::string("undefined"));
  at::Tensor c = t.to(at::kCPU).to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

RopeAngles position_angles(const at::Tensor& positions, std::vector<float> freq, std::vector<uint8_t> row) {
  RopeAngles a;
  a.positions = positions;
  a.freq = std::move(freq);
  a.row = std::move(row);
  return a;
}

void check_positions(const at::Tensor& p, int64_t rows, const char* fn) {
  TORCH_CHECK(p.defined() && p.dim() == 3 && p.size(0) == rows, "qvl::cuda::", fn, ": positions must be [", rows,
              ", B, L], got ", p.defined() ? shape_str(p.sizes()) : std::string("undefined"));
}

detail::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return detail::DType::F32;
    case at::kBFloat16: return detail::DType::BF16;
    case at::kHalf: return detail::DType::F16;
    default: throw std::runtime_error("unsupported dtype");
  }
}
bool is_kernel_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The single row stride of x viewed as [rows, D] when its leading dims collapse (last dim contiguous), else -1.
int64_t collapsed_row_stride(const at::Tensor& x) {
  if (x.stride(-1) != 1) return -1;
  if (x.dim() == 1) return x.size(0);
  int64_t stride = x.stride(-2);
  for (int64_t d = x.dim() - 2; d > 0; --d) {
    if (x.size(d - 1) != 1 && x.stride(d - 1) != x.stride(d) * x.size(d)) return -1;
  }
  return stride;
}

}  // namespace

bool kernels_built() { return detail::kernels_built(); }

std::string unavailable_reason() {
  if (!detail::kernels_built()) return "no CUDA kernels: qvl was configured with QVL_CUDA=OFF";
  std::string err;
  const int n = detail::device_count(&err);
  if (n < 0) return "no CUDA device: the CUDA runtime reports '" + err + "'";
  if (n == 0) return "no CUDA device: the CUDA runtime sees 0 devices";
  if (!at::hasCUDA()) return "no CUDA device: the CUDA runtime sees " + std::to_string(n) + " but ATen has no CUDA backend";
  return "";
}

// --- angle builders -----------------------------------------------------------------------------------------

std::vector<uint8_t> mrope_chunked_rows(const std::vector<int64_t>& section) {
  std::vector<uint8_t> rows;
  for (size_t i = 0; i < section.size(); ++i) {
    TORCH_CHECK(section[i] >= 0, "qvl::cuda::mrope_chunked_rows: negative section size ", section[i]);
    rows.insert(rows.end(), static_cast<size_t>(section[i]), static_cast<uint8_t>(i % 3));
  }
  return rows;
}

std::vector<uint8_t> mrope_interleaved_rows(const std::vector<int64_t>& section, int64_t half) {
  TORCH_CHECK(section.size() == 3, "qvl::cuda::mrope_interleaved_rows: mrope_section must have 3 entries (T, H, W), got ",
              section.size());
  // freqs_thw = freq[0]; for dim, offset in ((1, 1), (2, 2)): freqs_thw[..., offset:3*section[dim]:3] = freq[dim]
  std::vector<uint8_t> rows(static_cast<size_t>(half), 0);
  for (int dim = 1; dim <= 2; ++dim)
    for (int64_t k = dim; k < std::min<int64_t>(3 * section[dim], half); k += 3) rows[k] = static_cast<uint8_t>(dim);
  return rows;
}

RopeAngles rope_tables(const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(cos.defined() && sin.defined() && cos.sizes() == sin.sizes() && cos.dim() >= 2 && cos.dim() <= 3,
              "qvl::cuda::rope_tables: cos and sin must both be [S, D] or [B, L, D], got ",
              cos.defined() ? shape_str(cos.sizes()) : "undefined", " and ",
              sin.defined() ? shape_str(sin.sizes()) : "undefined");
  RopeAngles a;
  auto prep = [](const at::Tensor& t) {
    at::Tensor f = (t.dim() == 2 ? t.unsqueeze(0) : t).to(at::kFloat);  // exact upcast
    return f.stride(-1) == 1 ? f : f.contiguous();
  };
  a.cos = prep(cos);
  a.sin = prep(sin);
  if (a.cos.strides() != a.sin.strides()) a.sin = a.sin.contiguous(), a.cos = a.cos.contiguous();
  return a;
}

RopeAngles rope_1d(const at::Tensor& positions, const at::Tensor& inv_freq) {
  TORCH_CHECK(positions.defined() && positions.dim() == 2, "qvl::cuda::rope_1d: positions must be [B, L], got ",
              positions.defined() ? shape_str(positions.sizes()) : "undefined");
  std::vector<float> f = host_floats(inv_freq, "rope_1d", "inv_freq");
  std::vector<uint8_t> r(f.size(), 0);
  return position_angles(positions.unsqueeze(0), std::move(f), std::move(r));
}

RopeAngles rope_mrope_chunked(const at::Tensor& positions, const at::Tensor& inv_freq,
                              const std::vector<int64_t>& section) {
  check_positions(positions, 3, "rope_mrope_chunked");
  std::vector<float> f = host_floats(inv_freq, "rope_mrope_chunked", "inv_freq");
  std::vector<uint8_t> r = mrope_chunked_rows(section);
  TORCH_CHECK(r.size() == f.size(), "qvl::cuda::rope_mrope_chunked: mrope_section sums to ", r.size(),
              " but inv_freq has ", f.size(), " frequencies (head_dim / 2)");
  return position_angles(positions, std::move(f), std::move(r));
}

RopeAngles rope_mrope_interleaved(const at::Tensor& positions, const at::Tensor& inv_freq,
                                  const std::vector<int64_t>& section) {
  check_positions(positions, 3, "rope_mrope_interleaved");
  std::vector<float> f = host_floats(inv_freq, "rope_mrope_interleaved", "inv_freq");
  std::vector<uint8_t> r = mrope_interleaved_rows(section, static_cast<int64_t>(f.size()));
  return position_angles(positions, std::move(f), std::move(r));
}

RopeAngles rope_vision_2d(const at::Tensor& position_ids, const at::Tensor& inv_freq) {
  TORCH_CHECK(position_ids.defined() && position_ids.dim() == 2 && position_ids.size(1) == 2,
              "qvl::cuda::rope_vision_2d: position_ids must be [S, 2] (h, w), got ",
              position_ids.defined() ? shape_str(position_ids.sizes()) : "undefined");
  std::vector<float> q = host_floats(inv_freq, "rope_vision_2d", "inv_freq");
  // cat([h * inv, w * inv]): pairs [0, Dh/4) from row h, [Dh/4, Dh/2) from row w
  std::vector<float> f = q;
  f.insert(f.end(), q.begin(), q.end());
  std::vector<uint8_t> r(q.size(), 0);
  r.insert(r.end(), q.size(), 1);
  return position_angles(position_ids.t().unsqueeze(1), std::move(f), std::move(r));  // [2, 1, S]
}

RopeAngles rope_circle(const at::Tensor& positions, const at::Tensor& inv_freq, const std::vector<int64_t>& section) {
  check_positions(positions, 3, "rope_circle");
  TORCH_CHECK(positions.scalar_type() == at::kFloat,
              "qvl::cuda::rope_circle: Circle-RoPE positions are float32 (CircleRoPE get_rope_index), got ",
              positions.scalar_type());
  return rope_mrope_chunked(positions, inv_freq, section);
}

// --- rope_apply ---------------------------------------------------------------------------------------------

std::pair<at::Tensor, at::Tensor> rope_apply(const at::Tensor& q, const at::Tensor& k, const RopeAngles& a,
                                             bool in_place) {
  const char* fn = "rope_apply";
  TORCH_CHECK(q.defined() && q.dim() == 4, "qvl::cuda::", fn, ": q must be [B, L, H, D], got ",
              q.defined() ? shape_str(q.sizes()) : "undefined");
  const int64_t B = q.size(0), L = q.size(1), D = q.size(3), half = D / 2;
  TORCH_CHECK(D % 2 == 0, "qvl::cuda::", fn, ": head_dim must be even, got ", D);
  TORCH_CHECK(half <= detail::kMaxRopeHalf, "qvl::cuda::", fn, ": head_dim ", D, " exceeds ", 2 * detail::kMaxRopeHalf);
  if (k.defined()) {
    TORCH_CHECK(k.dim() == 4 && k.size(0) == B && k.size(1) == L && k.size(3) == D, "qvl::cuda::", fn, ": k must be [",
                B, ", ", L, ", Hk, ", D, "] like q ", q.sizes(), ", got ", k.sizes());
    TORCH_CHECK(k.scalar_type() == q.scalar_type() && k.device() == q.device(), "qvl::cuda::", fn,
                ": q and k must share dtype and device, got q ", q.scalar_type(), " on ", q.device(), " and k ",
                k.scalar_type(), " on ", k.device());
  }
  TORCH_CHECK(q.is_cuda(), "qvl::cuda::", fn, ": q must be on a CUDA device, got ", q.device());
  TORCH_CHECK(is_kernel_dtype(q.scalar_type()), "qvl::cuda::", fn, ": q must be float32, bfloat16 or float16, got ",
              q.scalar_type());
  TORCH_CHECK(B * L < (int64_t{1} << 31), "qvl::cuda::", fn, ": B * L must be below 2^31, got ", B, " * ", L);
  c10::cuda::CUDAGuard guard(q.device());
  detail::RopeParams p;
  p.dtype = kernel_dtype(q.scalar_type());
  p.B = B;
  p.L = L;
  p.half = half;
  const int vec = 16 / static_cast<int>(q.element_size());
  bool vectorized = half % vec == 0;
  std::vector<at::Tensor> outs;
  const std::vector<at::Tensor> ins = k.defined() ? std::vector<at::Tensor>{q, k} : std::vector<at::Tensor>{q};
  for (size_t i = 0; i < ins.size(); ++i) {
    const at::Tensor& x = ins[i];
    TORCH_CHECK(x.stride(3) == 1, "qvl::cuda::", fn, ": ", i ? "k" : "q",
                ": the last dim must be contiguous (stride 1), got strides ", x.strides());
    at::Tensor y = in_place ? x : at::empty(x.sizes(), x.options());
    outs.push_back(y);
    detail::RopeTensor& t = p.t[i];
    t.in = x.data_ptr();
    t.out = y.data_ptr();
    t.heads = x.size(2);
    t.in_sb = x.stride(0), t.in_sl = x.stride(1), t.in_sh = x.stride(2);
    t.out_sb = y.stride(0), t.out_sl = y.stride(1), t.out_sh = y.stride(2);
    for (int64_t s : {t.in_sb, t.in_sl, t.in_sh, t.out_sb, t.out_sl, t.out_sh}) vectorized = vectorized && s % vec == 0;
    vectorized = vectorized && aligned16(t.in) && aligned16(t.out);
  }
  p.n_tensors = static_cast<int>(ins.size());
  p.vectorized = vectorized;

  at::Tensor cos, sin, pos;  // keep device copies alive until the launch is queued
  if (a.cos.defined()) {
    cos = a.cos.to(q.device(), at::kFloat);
    sin = a.sin.to(q.device(), at::kFloat);
    TORCH_CHECK(cos.dim() == 3 && (cos.size(0) == 1 || cos.size(0) == B) && cos.size(1) == L && cos.size(2) == D &&
                    sin.sizes() == cos.sizes(),
                "qvl::cuda::", fn, ": cos/sin must be [1 or ", B, ", ", L, ", ", D, "], got ", cos.sizes(), " and ",
                sin.sizes());
    if (cos.stride(2) != 1) cos = cos.contiguous();
    if (sin.strides() != cos.strides()) sin = sin.contiguous(), cos = cos.contiguous();
    p.cos = cos.data_ptr<float>();
    p.sin = sin.data_ptr<float>();
    p.tab_sb = cos.size(0) == 1 ? 0 : cos.stride(0);
    p.tab_sl = cos.stride(1);
  } else {
    TORCH_CHECK(a.positions.defined(), "qvl::cuda::", fn, ": the angles hold neither cos/sin tables nor positions");
    pos = a.positions.to(q.device());
    if (pos.scalar_type() != at::kLong && pos.scalar_type() != at::kInt && pos.scalar_type() != at::kFloat) {
      pos = pos.to(at::kFloat);
    }
    TORCH_CHECK(pos.dim() == 3 && (pos.size(1) == 1 || pos.size(1) == B) && pos.size(2) == L, "qvl::cuda::", fn,
                ": positions must be [R, 1 or ", B, ", ", L, "], got ", pos.sizes());
    TORCH_CHECK(static_cast<int64_t>(a.freq.size()) == half && static_cast<int64_t>(a.row.size()) == half,
                "qvl::cuda::", fn, ": the angles describe ", a.freq.size(), " pairs (", a.row.size(),
                " rows) but head_dim / 2 is ", half);
    for (int64_t i = 0; i < half; ++i) {
      TORCH_CHECK(a.row[i] < pos.size(0), "qvl::cuda::", fn, ": pair ", i, " reads position row ",
                  static_cast<int>(a.row[i]), " of ", pos.size(0));
      p.freq[i] = a.freq[i];
      p.row[i] = a.row[i];
    }
    p.pos = pos.data_ptr();
    p.pos_type = pos.scalar_type() == at::kLong ? detail::PosType::I64
                 : pos.scalar_type() == at::kInt ? detail::PosType::I32
                                                 : detail::PosType::F32;
    p.pos_sr = pos.stride(0);
    p.pos_sb = pos.size(1) == 1 ? 0 : pos.stride(1);
    p.pos_sl = pos.stride(2);
  }
  const std::string err = detail::rope_launch(p, c10::cuda::getCurrentCUDAStream(q.device().index()).stream());
  if (!err.empty()) fail(fn, err);
  return {outs[0], outs.size() > 1 ? outs[1] : at::Tensor()};
}

// --- rms_norm -----------------------------------------------------------------------------------------------

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const char* fn = "rms_norm";
  TORCH_CHECK(x.is_cuda(), "qvl::cuda::", fn, ": x must be on a CUDA device, got ", x.device());
  if (weight.scalar_type() != x.scalar_type()) return {};
  if (!is_kernel_dtype(x.scalar_type())) return {};
  const int64_t D = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == D, "qvl::cuda::", fn, ": weight must be [", D, "], got ",
              weight.sizes());
  TORCH_CHECK(weight.device() == x.device(), "qvl::cuda::", fn, ": weight is on ", weight.device(), " but x on ",
              x.device());
  at::Tensor xs = x;
  int64_t row_stride = collapsed_row_stride(xs);
  if (row_stride < 0) {
    xs = x.contiguous();
    row_stride = D;
  }
  at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  TORCH_CHECK(rows < (int64_t{1} << 31), "qvl::cuda::", fn, ": more than 2^31 rows, got ", rows);
  c10::cuda::CUDAGuard guard(x.device());
  detail::RmsParams p;
  p.dtype = kernel_dtype(x.scalar_type());
  p.x = xs.data_ptr();
  p.w = w.data_ptr();
  p.out = out.data_ptr();
  p.rows = rows;
  p.D = D;
  p.x_row_stride = row_stride;
  p.out_row_stride = D;
  p.eps = static_cast<float>(eps);  // variance + eps: a float32 tensor plus a Python float stays float32
  const int vec = 16 / static_cast<int>(x.element_size());
  p.vectorized = D % vec == 0 && row_stride % vec == 0 && aligned16(p.x) && aligned16(p.w) && aligned16(p.out);
  const std::string err = detail::rms_norm_launch(p, c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  if (!err.empty()) fail(fn, err);
  return out;
}

// --- varlen attention ---------------------------------------------------------------------------------------

const char* backend_name(AttentionBackend b) {
  switch (b) {
    case AttentionBackend::None: return "none (plain loop)";
    case AttentionBackend::Flash: return "flash (varlen)";
    case AttentionBackend::MemoryEfficient: return "memory-efficient (varlen)";
  }
  return "?";
}

at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                            double scale, AttentionBackend* used) {
  const char* fn = "varlen_attention";
  if (used) *used = AttentionBackend::None;
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.sizes() == q.sizes(), "qvl::cuda::", fn,
              ": q, k, v must all be [S, H, Dh], got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device(), "qvl::cuda::", fn,
              ": q, k, v must be on one CUDA device, got ", q.device(), ", ", k.device(), ", ", v.device());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), "qvl::cuda::", fn,
              ": q, k, v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  const int64_t S = q.size(0), Dh = q.size(2);
  at::Tensor cu_host = cu_seqlens.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t n = cu_host.numel();
  const int64_t* c = cu_host.data_ptr<int64_t>();
  TORCH_CHECK(cu_host.dim() == 1 && n >= 2 && c[0] == 0 && c[n - 1] == S, "qvl::cuda::", fn,
              ": cu_seqlens must run from 0 to S = ", S, ", got ", cu_seqlens.sizes());
  int64_t max_len = 0;
  for (int64_t i = 0; i + 1 < n; ++i) {
    TORCH_CHECK(c[i + 1] >= c[i], "qvl::cuda::", fn, ": cu_seqlens must be non-decreasing, entry ", i + 1, " is ",
                c[i + 1], " after ", c[i]);
    max_len = std::max(max_len, c[i + 1] - c[i]);
  }
  at::Tensor cu = cu_host.to(at::kInt).to(q.device());
  auto last_dim_ok = [&](const at::Tensor& t) { return t.stride(-1) == 1; };
  const at::Tensor qc = last_dim_ok(q) ? q : q.contiguous();
  const at::Tensor kc = last_dim_ok(k) ? k : k.contiguous();
  const at::Tensor vc = last_dim_ok(v) ? v : v.contiguous();
  const bool half_type = q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf;
  if (half_type && Dh % 8 == 0 && Dh <= 256) {
    try {
      // mha_varlen_fwd: q, k, v [total, H, Dh]; no dropout, not causal
      auto r = at::_flash_attention_forward(qc, kc, vc, cu, cu, max_len, max_len, /*dropout_p=*/0.0,
                                            /*is_causal=*/false, /*return_debug_mask=*/false, scale);
      if (used) *used = AttentionBackend::Flash;
      return std::get<0>(r);
    } catch (const c10::Error&) {
      // e.g. a device older than sm80: try the memory-efficient kernel
    }
  }
  try {
    // [1, total, H, Dh] with cu_seqlens_q/k: the batch is the packed sequence; custom_mask_type 0 = none
    auto r = at::_efficient_attention_forward(qc.unsqueeze(0), kc.unsqueeze(0), vc.unsqueeze(0), /*bias=*/std::nullopt,
                                              cu, cu, max_len, max_len, /*dropout_p=*/0.0, /*custom_mask_type=*/0,
                                              /*compute_log_sumexp=*/false, scale);
    if (used) *used = AttentionBackend::MemoryEfficient;
    return std::get<0>(r).squeeze(0);
  } catch (const c10::Error&) {
    return {};  // neither kernel takes these inputs: the caller's plain loop runs
  }
}

}  // namespace qvl::cuda
