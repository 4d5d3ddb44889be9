// 2-D RoPE of Heo et al. 2024, "Rotary Position Embedding for Vision Transformer" (naver-ai/rope-vit,
// deit/models_v2_rope.py @ ce85c2e): RoPE-Axial and RoPE-Mixed, as angle builders plus two appliers.
//
// Notation: D = head dim (even, and a multiple of 4 for the builders), P = D/2 pairs, F = D/4,
// N tokens (patches only: the class token is never rotated, the caller leaves it out), H heads,
// L = depth (layers).
//
// Positions (init_t_xy): integer patch indices on an end_x (columns) x end_y (rows) grid, row-major:
//   token n -> x_n = n mod end_x (column), y_n = floor(n / end_x) (row), float32, no normalisation.
//
// Pair layout: the complex view. Pair c is channels (2c, 2c+1) read as z_c = x_{2c} + i x_{2c+1};
// the rotation by phase phi_c is z_c -> z_c e^{i phi_c}, i.e.
//   y_{2c}   = x_{2c} cos phi_c - x_{2c+1} sin phi_c
//   y_{2c+1} = x_{2c+1} cos phi_c + x_{2c} sin phi_c
// which is the block-diagonal rotation R(phi) = blockdiag_c [[cos, -sin], [sin, cos]] applied to x.
//
// RoPE-Axial (compute_axial_cis):
//   omega_k = 1 / theta^(4k/D), k = 0..F-1      (float32: reciprocal(pow(theta, arange(0, D, 4) / D)))
//   phi_c   = x * omega_c          for c <  F   (first D/4 pairs: the column)
//   phi_c   = y * omega_{c-F}      for c >= F   (next D/4 pairs: the row)
//   One table [N, P] shared by every head and layer. DeiT uses theta = 100, Swin theta = 50.
//
// RoPE-Mixed (init_random_2d_freqs + compute_mixed_cis), learnable frequencies per layer l and head h:
//   init from one angle alpha_{l,h} (U[0, 2 pi) in the official code), mag_k = 1 / theta^(4k/D):
//     fx_{l,h} = [mag cos(alpha), mag cos(pi/2 + alpha)]   (length P)
//     fy_{l,h} = [mag sin(alpha), mag sin(pi/2 + alpha)]
//   stored as freqs [2, L, H*P] (freqs[0] = fx, freqs[1] = fy, head-major inside H*P); theta = 10.
//   phi_{l,h,n,c} = x_n fx_{l,h,c} + y_n fy_{l,h,c}   -> [L, H, N, P] (float32, autocast off)
//   The first F pairs encode direction alpha, the next F pairs alpha + 90 deg. After training the
//   frequencies are free, but each phi is still linear in (x, y), so the relative property is exact.
//   Mixed with alpha = 0 and theta = 100 equals Axial up to cos(pi/2) = -4.4e-8 in float32.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace qvl::rope {

// --- positions -----------------------------------------------------------------------------------------

// Mirrors init_t_xy(end_x, end_y).
//   t_x, t_y  [N = end_x * end_y] float32: column n % end_x and row n // end_x
struct GridXY {
  at::Tensor t_x, t_y;
};
GridXY grid_xy(int64_t end_x, int64_t end_y);

// --- RoPE-Axial ------------------------------------------------------------------------------------------

// omega [D/4] float32 = 1 / theta^(arange(0, D, 4) / D). Requires D % 4 == 0.
at::Tensor axial_frequencies(int64_t dim, double theta);

// Axial angles phi [N, D/2] float32 from positions t_x, t_y [N] (any float/int dtype, used as float32):
// cat(outer(t_x, omega), outer(t_y, omega)).
at::Tensor axial_angles(int64_t dim, const at::Tensor& t_x, const at::Tensor& t_y, double theta);

// Mirrors compute_axial_cis(dim, end_x, end_y, theta) as angles: [N, D/2] float32 on the grid_xy grid.
at::Tensor axial_grid_angles(int64_t dim, int64_t end_x, int64_t end_y, double theta);

// --- RoPE-Mixed ------------------------------------------------------------------------------------------

// Mirrors init_random_2d_freqs for every layer, stacked as rope_vit_models.__init__ does, with the random
// draw made explicit: alpha [L, H] float32 (radians) -> freqs [2, L, H*D/2] float32.
at::Tensor mixed_init_frequencies(const at::Tensor& alpha, int64_t dim, double theta);

// Inverse of the init, for checking recorded inits: alpha [L, H] in [0, 2 pi) from freqs [2, L, H*D/2],
// alpha = atan2(fy_0, fx_0) (pair 0 has mag 1). Exact only for freqs that still have the init's form.
at::Tensor mixed_alpha_from_frequencies(const at::Tensor& freqs, int64_t num_heads);

// Mirrors compute_mixed_cis(freqs, t_x, t_y, num_heads) as angles.
//   freqs     [2, L, H*P] float32 (learned or initialised)
//   t_x, t_y  [N]
//   out       [L, H, N, P] float32: t_x fx + t_y fy
at::Tensor mixed_angles(const at::Tensor& freqs, const at::Tensor& t_x, const at::Tensor& t_y, int64_t num_heads);

// --- appliers (both layouts are the complex view above) ---------------------------------------------------
// Dtype: every applier and mixed_angles computes in float32, or in float64 when an input is float64 (so
// that autograd's gradcheck runs in double); all are differentiable in x, the angles and mixed's freqs.

// polar(1, phi) as a complex64 (complex128 for float64 phi) tensor, same shape as phi (torch.polar(ones_like(phi), phi)).
at::Tensor cis(const at::Tensor& angles);

// Complex form, mirrors apply_rotary_emb for one tensor:
//   x       [..., N, D]   any float dtype; computed in float32 (x.float()) and cast back (type_as)
//   angles  [..., N, D/2] float32, broadcastable against x's leading dims ([N, P], [H, N, P], ...)
//   out     [..., N, D]   view_as_real(view_as_complex(x) * polar(1, angles))
at::Tensor apply_pairs_complex(const at::Tensor& x, const at::Tensor& angles);

// The rotation of each pair as an explicit 2x2 matrix: [..., D/2, 2, 2] float32 (float64 for float64 angles),
// [[cos, -sin], [sin, cos]] per pair, from angles [..., D/2].
at::Tensor pair_rotation_blocks(const at::Tensor& angles);

// The same rotations as one dense matrix: [..., D, D], block-diagonal with pair_rotation_blocks at
// rows/columns (2c, 2c+1). For tests and exposition; applying it costs D^2 multiply-adds per token
// instead of 2 D.
at::Tensor pair_rotation_matrix(const at::Tensor& angles);

// Rotation-matrix form: y_p = B_p x_p with B_p = pair_rotation_blocks(angles)[p], applied by
// rope::apply_block_rope (2x2 blocks). Same contract as apply_pairs_complex; equal to it and to
// pair_rotation_matrix(angles) @ x up to float32 rounding (~1e-7).
at::Tensor apply_pairs_matrix(const at::Tensor& x, const at::Tensor& angles);

}  // namespace qvl::rope
