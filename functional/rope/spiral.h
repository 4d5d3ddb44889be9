// Spiral RoPE (Liu et al., arXiv 2602.03227; huajianduzhuo-code/Spiral_RoPE, RoPE_DeiT/rope.py @ bde84ff,
// VisionRotaryEmbedding): 2-D RoPE over K = 2R directions.
//
// Notation: d = head dim, D = d/2 (the official `dim` argument), R = rotate (K = 2R directions),
// M = max_freq (max_freq_lang), m = min_freq (min_freq_lang), tau = truncate_percentage, theta = 10000,
// n = grid side (square grids: n = sqrt(N)), p = pt_seq_len, sigma = p/n. Token t = i*n + j: i = row,
// j = column. Pair layout: interleaved, pair q = channels (2q, 2q+1), rotate_half(x) maps
// (x_{2q}, x_{2q+1}) -> (-x_{2q+1}, x_{2q}); y = x cos(Phi) + rotate_half(x) sin(Phi).
//
// Frequencies (the persistent buffer `freqs`):
//   R = 0: f_k = M / theta^(2k/D), k < D/2.
//   R > 0: E = D/R if same_theta else D; m := M / theta^((E-2)/E) if m < 1e-6 (automatic);
//          F = E/2, f_k = m (M/m)^((F-1-k)/(F-1)), k < F (= M theta^(-2k/E) with the automatic m).
//   Truncation (R > 0, tau > 0): n_t = floor(F tau); the lowest n_t frequencies f[F-n_t:] are zeroed.
//   EDGE BUG GUARDED: the official `freqs[-n_t:] = 0` with n_t = 0 (0 < tau < 1/F) zeroes ALL
//   frequencies (f[-0:] is the whole tensor). qvl zeroes none then (nothing to truncate), and
//   spiral_truncation_count() reports the count so callers can see it.
//
// Phases per half-channel c < D (two channels per frequency, interleaved):
//   frequency index  fi(c) = floor(c/2);  same_theta (R > 0): 2 floor(floor(c/4)/R) + floor((c mod 4)/2)
//   t_r = (r / n) * p in float32 (the official `arange(n)/n*pt_seq_len`)
//   row half  (channel c < D):  Phi = t_i f_fi(c);   column half (channel D + c): Phi = t_j f_fi(c)
// Directions (R > 0): the d channels are cut into groups of 4R; sub-block b = floor((ch mod 4R)/4) of a
// group is turned by a_b = b * 90/R degrees. With kappa = (n-1)/2, for b >= 1:
//   row half:     Phi = sigma f clamp(kappa + cos a_b (i - kappa) + sin a_b (j - kappa), 0, n-1)
//   column half:  Phi = sigma f clamp(kappa + cos a_b (j - kappa) - sin a_b (i - kappa), 0, n-1)
// That is the closed form of the official rotate_freqs (affine_grid + grid_sample, bilinear, border
// padding, align_corners=True) on a field linear in i or j: bilinear interpolation of a linear field is
// exact, and border padding clamps the sampled coordinate. b = 0 keeps t_i f or t_j f.
// Directions, from +i (down the rows) towards +j: row-half sub-block b at a_b, column-half at a_b + 90,
// so K = 2R directions psi = m 180/K.
//
// Two modes:
//   kClamp (reference-compatible): the clamp above, which matches the official code (and the released
//     checkpoints). Tokens whose rotated coordinate leaves [0, n-1] are clamped, and the exact relative
//     property fails for them (20 of 196 tokens at 45 deg on 14 x 14).
//   kExact (paper eq.): no clamp, Phi = sigma f (kappa + projection): affine in (i, j), so
//     Phi(p) - Phi(p') = sigma f (p - p') . u for every token. On tokens that are never clamped the two
//     modes give identical numbers.
// Class token: not rotated (the caller passes patch tokens only, or asks apply_spiral to skip token 0).
// Dtype: computed in float32 (the official code computes t and the phases in x.dtype, likely bf16 under
// AMP; grid_sample in float32).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace qvl::rope {

struct SpiralConfig {
  int64_t head_dim = 64;             // d; the official `dim` is d/2. Requires d % (4R) == 0 (and d % 4 == 0).
  int64_t rotate = 0;                // R; 0 and 1: axial (no rotated sub-blocks)
  bool same_theta = false;           // every direction shares F = d/(4R) frequencies
  double max_freq = 1.0;             // max_freq_lang
  double min_freq = 0.0;             // min_freq_lang; < 1e-6: automatic (geometric with theta)
  double truncate_percentage = 0.0;  // zero the lowest floor(F*tau) frequencies (R > 0)
  double theta = 10000.0;
  int64_t pt_seq_len = 14;           // p; <= 0: sigma = 1 and t_r = r (integer positions, any grid)
};

enum class SpiralMode { kClamp, kExact };

// Mirrors VisionRotaryEmbedding.__init__ (freqs_for='lang'): the `freqs` buffer, float32
// [D/2] (R = 0 or not same_theta) or [D/(2R)] (same_theta). Errors: d % 4, d % (4R), same_theta with
// R = 0 (the official DeiT code breaks there: repeat_interleave(0)), F = 1 (the official divides by 0).
at::Tensor spiral_frequencies(const SpiralConfig& c);

// The number of frequencies truncation zeroes (floor(F tau); the n_t = 0 case zeroes nothing, see above).
int64_t spiral_truncation_count(const SpiralConfig& c);

// The phase table for tokens at integer grid positions.
//   freqs       the buffer (spiral_frequencies, or loaded from a checkpoint)
//   pos_rc      [M, 2] int64 (row i, column j), 0 <= i < n_rows, 0 <= j < n_cols
//   n_rows, n_cols  the grid; kClamp and pt_seq_len > 0 need a square grid (n = n_rows = n_cols)
//   out         [M, d] float32 phases Phi, interleaved pair layout (channels 2q and 2q+1 equal)
at::Tensor spiral_angles(const at::Tensor& freqs, const at::Tensor& pos_rc, int64_t n_rows, int64_t n_cols,
                         const SpiralConfig& c, SpiralMode mode);

// Mirrors VisionRotaryEmbedding.forward's table for a square n x n grid: [n*n, d], tokens row-major.
at::Tensor spiral_grid_angles(const at::Tensor& freqs, int64_t n, const SpiralConfig& c, SpiralMode mode);

// Where kClamp clamps, per token and direction: [n*n, 2R] bool for the row-major n x n grid; column b < R is
// the row-half direction a_b, column R + b the column-half direction a_b + 90 deg (b = 0 never clamps).
// A token's phases differ between the modes exactly where a direction is clamped.
at::Tensor spiral_clamped(int64_t n, const SpiralConfig& c);

// rotate_half for the interleaved layout: (x_{2q}, x_{2q+1}) -> (-x_{2q+1}, x_{2q}).
at::Tensor rotate_half_interleaved(const at::Tensor& x);

// Mirrors VisionRotaryEmbedding.forward's application (x * cos + rotate_half(x) * sin), with the class
// token rule of models_v2.py Attention:
//   x       [B, N, H, d] (any float dtype; computed in float32, or float64 if x or angles is, cast back)
//   angles  [N', d] with N' = N (class_token false) or N - 1 (class_token true: token 0 is returned
//           bit for bit and tokens 1.. are rotated with angles 0..)
//   out     [B, N, H, d]
at::Tensor apply_spiral(const at::Tensor& x, const at::Tensor& angles, bool class_token = false);

}  // namespace qvl::rope
