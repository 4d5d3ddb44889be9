// N x N block RoPE: rotations built from commuting skew-symmetric generators through the matrix
// exponential (the commuting-generator construction of ComRoPE; LieRE's non-commuting generators are the
// counter-example).
//
// Notation: D = head dim, b = block size (the "N" of N x N), nb = D / b blocks, A = position dimension
// (2 for images, 3 for video, any A >= 1), M tokens with positions p in R^A.
//
// Maths. Per block j a set of skew-symmetric generators G_{a,j} (b x b, G^T = -G), frequencies included.
//   R(p) = blockdiag_j exp( sum_a p_a G_{a,j} )                              (D x D, in SO(D))
//   x'   = R(p) x, channels [j*b, (j+1)*b) form block j (contiguous blocks).
// exp of a skew matrix is orthogonal with det 1. If, for every block j, the G_{a,j} commute pairwise
// (G_{a,j} G_{a',j} = G_{a',j} G_{a,j}), then exp(U) exp(V) = exp(U + V) for U, V in their span, so
//   R(p)^T R(q) = exp(-sum p_a G) exp(sum q_a G) = R(q - p)        (exact relative property)
// and q'(p)^T k'(q) = q^T R(q - p) k depends only on q - p. Generators that do not commute (LieRE with
// b >= 3) break this; max_commutator() measures how much.
//
// Two commuting constructions are provided:
// * Axis partition (ComRoPE-AP, laid out like RoPE-ViT axial): the nb blocks are split into A contiguous
//   groups of nb/A; block j = g*(nb/A) + k of group g belongs to axis g only:
//     G_{a,j} = [a == g] * omega_k * S_j,   omega_k = 1 / theta^(k*A*b/D),  k = 0..nb/A-1
//   with S_j a unit skew matrix (default canonical_skew(b)). Different axes act on disjoint blocks, so
//   the generators of a block commute trivially. For b = 2, A = 2, S = J = [[0,-1],[1,0]]:
//   exp(phi J) = [[cos phi, -sin phi], [sin phi, cos phi]] and omega_k = theta^(-4k/D), i.e. exactly
//   RoPE-ViT axial (rope2d.h) with positions (x, y) = (column, row).
// * Linearly dependent (ComRoPE-LD): G_{a,j} = c_{a,j} (P_j - P_j^T) with scalar coefficients c [A, nb]
//   and one free matrix P_j per block. All axes share one skew direction per block, so they commute;
//   every axis acts on every block (a dense b x b rotation, not a sum of planes).
// Any 2 x 2 generators commute (all are multiples of J), so b = 2 with any coefficients is exactly
// relative: that is RoPE-Mixed (per-head c_{a,j} = learned fx, fy).
// An odd b always leaves one direction per block fixed (a skew matrix of odd size has eigenvalue 0).
//
// Cost: one b x b matrix_exp per token and block (O(M nb b^3)) plus a block matmul (O(M D b)), versus
// O(M D) for the complex 2 x 2 form; bench/bench_rope_block.cpp measures it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace qvl::rope {

// m - m^T over the last two dims.
at::Tensor skew_part(const at::Tensor& m);

// The canonical unit skew b x b (float32): unit-rate rotations in the disjoint planes (2i, 2i+1),
// S[2i+1, 2i] = 1, S[2i, 2i+1] = -1; for b = 2 this is J. For odd b the last channel is fixed.
at::Tensor canonical_skew(int64_t b);

// Axis-partition generators [A, nb, b, b] float32 (see above). Requires D % b == 0 and nb % A == 0.
//   unit_skew  [b, b] or [nb, b, b] skew-symmetric directions S_j; undefined -> canonical_skew(b)
at::Tensor generators_axis_partition(int64_t dim, int64_t block, int64_t axes, double theta,
                                     const at::Tensor& unit_skew = at::Tensor());

// Linearly dependent generators [A, nb, b, b]: G_{a,j} = coeffs[a, j] * (base_j - base_j^T), in the inputs'
// floating dtype (float64 inputs keep the exact commutation that float32 rounding of c*S blurs at 1e-8).
//   coeffs  [A, nb];  base [nb, b, b] (any matrices; only their skew part is used)
at::Tensor generators_linearly_dependent(const at::Tensor& coeffs, const at::Tensor& base);

// Largest Frobenius norm of G_{a,j} G_{a',j} - G_{a',j} G_{a,j} over blocks j and axis pairs a < a'
// (0 for commuting constructions; computed in float64).
double max_commutator(const at::Tensor& generators);

// The rotation blocks per token: exp(sum_a p_a G_{a,j}) with at::linalg_matrix_exp.
//   generators  [A, nb, b, b] (or with leading dims, e.g. [H, A, nb, b, b] per head)
//   positions   [M, A]  float (integer positions are converted to the generators' dtype)
//   out         [M, nb, b, b]  (or [..., M, nb, b, b] with the generators' leading dims)
at::Tensor block_rotations(const at::Tensor& generators, const at::Tensor& positions);

// Dense block-diagonal matrices [..., D, D] from blocks [..., nb, b, b].
at::Tensor block_diag_dense(const at::Tensor& blocks);

// Applies the blocks: x' = R x per token, block by block (a batched b x b matmul). When the blocks are per
// position only ([M, nb, b, b]) and x has leading rows ([..., M, D]), each position's rows go through one GEMM
// with the block-diagonal matrix instead (the same products; for finite x the off-block zeros add nothing).
//   x       [..., M, D]  any float dtype; computed in the blocks' dtype (float32) and cast back
//   blocks  [..., M, nb, b, b] broadcastable against x's leading dims; D >= nb*b
//   out     [..., M, D]  partial rotary when nb*b < D: the first nb*b channels are rotated and the
//           remaining D - nb*b pass through unchanged (a block size that does not divide D)
at::Tensor apply_block_rope(const at::Tensor& x, const at::Tensor& blocks);

}  // namespace qvl::rope
