// Golden runners for the vision-side RoPE variants (instrument/rope_check.h):
//   "axial"             naver-ai/rope-vit compute_axial_cis + apply_rotary_emb  (functional/rope/rope2d.h)
//   "mixed"             naver-ai/rope-vit init_random_2d_freqs + compute_mixed_cis + apply_rotary_emb
//   "spiral_rope_apply" Spiral_RoPE VisionRotaryEmbedding(...)(x)               (functional/rope/spiral.h)
// Each recomputes every golden output of a case from its inputs and params; complex outputs are returned
// as [..., 2] float32 (re, im), like the golden file's "complex_as_real_pair".
#include <cmath>
#include <stdexcept>
#include <string>

#include "functional/rope/rope2d.h"
#include "functional/rope/spiral.h"
#include "functional/weights.h"  // shape_str
#include "instrument/rope_check.h"

namespace qvl::rope_check {
namespace {

const at::Tensor& need(const TensorMap& m, const std::string& key, const GoldenCase& c, const char* group) {
  auto it = m.find(key);
  if (it == m.end()) {
    throw std::runtime_error(c.file + ":/cases/" + c.name + ": no " + group + "/" + key + " (function '" + c.function + "')");
  }
  return it->second;
}

template <typename T>
T param(const GoldenCase& c, const char* key) {
  if (!c.params.contains(key)) {
    throw std::runtime_error(c.file + ":/cases/" + c.name + ": params has no '" + key + "' (function '" + c.function + "')");
  }
  return c.params.at(key).get<T>();
}

// view_as_real(polar(1, angles)): [..., P] -> [..., P, 2] float32
at::Tensor cis_as_real_pair(const at::Tensor& angles) { return at::view_as_real(rope::cis(angles)).contiguous(); }

}  // namespace

CaseResult run_axial_case(const GoldenCase& c) {
  const int64_t dim = param<int64_t>(c, "dim"), end_x = param<int64_t>(c, "end_x"), end_y = param<int64_t>(c, "end_y");
  const double theta = param<double>(c, "theta");
  // freqs_cis = compute_axial_cis(dim, end_x, end_y, theta)                        [N, D/2]
  at::Tensor angles = rope::axial_grid_angles(dim, end_x, end_y, theta);
  CaseResult r;
  r.outputs["freqs_cis"] = cis_as_real_pair(angles);
  // q, k = apply_rotary_emb(xq, xk, freqs_cis), xq/xk [B, H, N, D]
  r.outputs["q"] = rope::apply_pairs_complex(need(c.inputs, "xq", c, "inputs"), angles);
  r.outputs["k"] = rope::apply_pairs_complex(need(c.inputs, "xk", c, "inputs"), angles);
  return r;
}

CaseResult run_mixed_case(const GoldenCase& c) {
  const int64_t dim = param<int64_t>(c, "dim"), H = param<int64_t>(c, "num_heads"), depth = param<int64_t>(c, "depth");
  const double theta = param<double>(c, "theta");
  const at::Tensor& recorded = need(c.outputs, "freqs", c, "outputs");  // [2, depth, H*D/2], random init
  if (recorded.dim() != 3 || recorded.size(0) != 2 || recorded.size(1) != depth || recorded.size(2) != H * dim / 2) {
    throw std::runtime_error(c.name + ": outputs/freqs must be [2, " + std::to_string(depth) + ", " +
                             std::to_string(H * dim / 2) + "], got " + shape_str(recorded.sizes()));
  }
  CaseResult r;
  // The random draw cannot be repeated: recover alpha per (layer, head) and rebuild with qvl's init.
  at::Tensor alpha = rope::mixed_alpha_from_frequencies(recorded, H);  // [depth, H]
  r.outputs["freqs"] = rope::mixed_init_frequencies(alpha, dim, theta);
  r.notes["freqs"] =
      "random init (torch.rand) cannot be re-drawn: alpha per (layer, head) recovered from the recorded freqs as "
      "atan2(fy_0, fx_0), freqs rebuilt from alpha with qvl's init formula (rope::mixed_init_frequencies), so this "
      "checks the init formula; freqs_cis and q/k are computed from the recorded freqs";
  // freqs_cis = compute_mixed_cis(freqs, t_x, t_y, num_heads)                    [depth, H, N, D/2]
  at::Tensor angles = rope::mixed_angles(recorded, need(c.inputs, "t_x", c, "inputs"), need(c.inputs, "t_y", c, "inputs"), H);
  r.outputs["freqs_cis"] = cis_as_real_pair(angles);
  const at::Tensor& xq = need(c.inputs, "xq", c, "inputs");
  const at::Tensor& xk = need(c.inputs, "xk", c, "inputs");
  for (int64_t l = 0; l < depth; ++l) {
    // blk(x, freqs_cis=freqs_cis[i]): apply_rotary_emb with a per-head table [H, N, D/2]
    r.outputs["q_layer" + std::to_string(l)] = rope::apply_pairs_complex(xq, angles[l]);
    r.outputs["k_layer" + std::to_string(l)] = rope::apply_pairs_complex(xk, angles[l]);
  }
  return r;
}

CaseResult run_spiral_case(const GoldenCase& c) {
  rope::SpiralConfig sc;
  sc.head_dim = param<int64_t>(c, "head_dim");
  sc.rotate = param<int64_t>(c, "rotate");
  sc.same_theta = param<bool>(c, "same_theta");
  sc.max_freq = param<double>(c, "max_freq_lang");
  sc.min_freq = param<double>(c, "min_freq_lang");
  sc.truncate_percentage = param<double>(c, "truncate_percentage");
  sc.theta = param<double>(c, "theta");
  sc.pt_seq_len = param<int64_t>(c, "rope_size");
  const at::Tensor& x = need(c.inputs, "x", c, "inputs");  // [B, N, heads, head_dim], patch tokens only
  if (x.dim() != 4) throw std::runtime_error(c.name + ": inputs/x must be [B, N, heads, head_dim], got " + shape_str(x.sizes()));
  // ft_seq_len = int(np.sqrt(x.shape[1]))
  const int64_t n = static_cast<int64_t>(std::sqrt(static_cast<double>(x.size(1))));
  if (n * n != x.size(1)) {
    throw std::runtime_error(c.name + ": " + std::to_string(x.size(1)) + " tokens do not form a square grid");
  }
  CaseResult r;
  at::Tensor freqs = rope::spiral_frequencies(sc);
  r.outputs["freqs"] = freqs;
  // the reference-compatible (grid_sample border clamp) phases, then x * cos + rotate_half(x) * sin
  r.outputs["y"] = rope::apply_spiral(x, rope::spiral_grid_angles(freqs, n, sc, rope::SpiralMode::kClamp));
  return r;
}

}  // namespace qvl::rope_check
