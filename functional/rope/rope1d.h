// 1-D RoPE and multimodal RoPE (M-RoPE) as pure functions: an angle builder and an applier.
//
// Maths. Head dim d, rotary dim r <= d (partial rotary: channels >= r pass through),
// frequencies w_k = theta^(-2k/r) for k = 0..r/2-1, phase phi_k = p * w_k for a position p (integer or
// float). A pair (a, b) rotated by phi becomes (a cos phi - b sin phi, b cos phi + a sin phi). The pair
// layout decides which channels form pair k:
//   SplitHalf   (NeoX / Qwen, rotate_half = cat(-x2, x1)):  (k, k + r/2)
//   Interleaved (GPT-J / complex view):                     (2k, 2k + 1)
// Both give the same numbers up to the channel permutation; mixing them up is the classic porting bug.
//
// M-RoPE: every token has three positions (t, h, w) = position_ids [3, B, T]; frequency k takes its
// position from one row:
//   Chunked     (Qwen2-VL / Qwen2.5-VL, mrope_section [s0, s1, s2], s0+s1+s2 = r/2): k < s0 -> t,
//               s0 <= k < s0+s1 -> h, the rest -> w ("T x16 H x24 W x24" for [16, 24, 24]);
//   Interleaved (Qwen3-VL, [24, 20, 20]): start from t, then k = 1 + 3j (j < s1) -> h and k = 2 + 3j
//               (j < s2) -> w ("THW x20" then "TTTT").
// When all three rows are equal (text only) both reduce to 1-D RoPE.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace qvl::rope {

enum class PairLayout { SplitHalf, Interleaved };
enum class MRopeLayout { Chunked, Interleaved };

// w_k = 1 / theta^(2k / rotary_dim), float32 [rotary_dim / 2] (bit-identical to HF's inv_freq).
at::Tensor inv_freq(double theta, int64_t rotary_dim);

// phi[..., k] = float32(positions[...]) * inv_freq[k]        positions [...] int or float -> [..., r/2]
at::Tensor angles_1d(const at::Tensor& positions, const at::Tensor& inv_freq);

// Rotates the first 2 * angles.size(-1) channels of x [..., d] by `angles` [..., r/2] (broadcast against
// x's leading dims) in the given pair layout; channels >= r pass through unchanged. Computes in x's dtype
// (cos/sin cast to it, as HF's text path does); use x.to(kFloat) for a float32 computation.
at::Tensor apply(const at::Tensor& x, const at::Tensor& angles, PairLayout layout);
// The same with precomputed half-width tables cos, sin [..., r/2].
at::Tensor apply_cos_sin(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, PairLayout layout);

// Row (0 t, 1 h, 2 w) that feeds each of the r/2 frequencies.
std::vector<int64_t> mrope_rows(const std::vector<int64_t>& section, MRopeLayout layout);
// The row labels as a string, e.g. "TTTTHHHHHHWWWWWW".
std::string mrope_labels(const std::vector<int64_t>& section, MRopeLayout layout);

// M-RoPE phases: position_ids [3, B, T] (int or float) -> phi [B, T, r/2] float32, frequency k using row
// mrope_rows(section, layout)[k]. sum(section) must equal inv_freq.size(0).
at::Tensor mrope_angles(const at::Tensor& position_ids, const at::Tensor& inv_freq, const std::vector<int64_t>& section,
                        MRopeLayout layout);

}  // namespace qvl::rope
