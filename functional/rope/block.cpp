#include "functional/rope/block.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "functional/weights.h"  // shape_str

namespace qvl::rope {
namespace {
void check_square(const at::Tensor& m, const char* fn, const char* what) {
  TORCH_CHECK(m.dim() >= 2 && m.size(-1) == m.size(-2), fn, ": ", what, " must be [..., b, b], got ", m.sizes());
}
}  // namespace

at::Tensor skew_part(const at::Tensor& m) {
  check_square(m, "rope::skew_part", "m");
  return m - m.transpose(-1, -2);
}

at::Tensor canonical_skew(int64_t b) {
  TORCH_CHECK(b >= 2, "rope::canonical_skew: block size must be >= 2, got ", b);
  at::Tensor S = at::zeros({b, b}, at::kFloat);
  for (int64_t i = 0; 2 * i + 1 < b; ++i) {
    S[2 * i + 1][2 * i] = 1.0;
    S[2 * i][2 * i + 1] = -1.0;
  }
  return S;
}

at::Tensor generators_axis_partition(int64_t dim, int64_t block, int64_t axes, double theta,
                                     const at::Tensor& unit_skew) {
  TORCH_CHECK(block >= 2 && axes >= 1 && dim > 0 && dim % block == 0 && (dim / block) % axes == 0,
              "rope::generators_axis_partition: head dim ", dim, " must split into ", axes, " equal groups of ", block,
              "x", block, " blocks (D % (b*A) == 0, b >= 2, A >= 1)");
  const int64_t nb = dim / block, per_axis = nb / axes;
  at::Tensor S = unit_skew.defined() ? unit_skew.to(at::kFloat) : canonical_skew(block);
  if (S.dim() == 2) S = S.unsqueeze(0).expand({nb, block, block});
  TORCH_CHECK(S.dim() == 3 && S.size(0) == nb && S.size(1) == block && S.size(2) == block,
              "rope::generators_axis_partition: unit_skew must be [", block, ", ", block, "] or [", nb, ", ", block, ", ",
              block, "], got ", unit_skew.sizes());
  // omega_k = 1 / theta^(k*A*b / D), written like rope2d's axial_frequencies so that b = 2, A = 2 gives
  // the same float32 values: reciprocal(pow(theta, arange(0, D, A*b) / D))                 [nb/A]
  at::Tensor omega = at::reciprocal(at::pow(theta, at::arange(0, dim, axes * block, at::kLong).to(at::kFloat) / dim));
  at::Tensor G = at::zeros({axes, nb, block, block}, at::kFloat);
  for (int64_t a = 0; a < axes; ++a) {
    // blocks [a*per_axis, (a+1)*per_axis) belong to axis a
    G[a].slice(0, a * per_axis, (a + 1) * per_axis) = omega.view({per_axis, 1, 1}) * S.slice(0, a * per_axis, (a + 1) * per_axis);
  }
  return G;  // [A, nb, b, b]
}

at::Tensor generators_linearly_dependent(const at::Tensor& coeffs, const at::Tensor& base) {
  check_square(base, "rope::generators_linearly_dependent", "base");
  TORCH_CHECK(coeffs.dim() == 2 && base.dim() == 3 && coeffs.size(1) == base.size(0),
              "rope::generators_linearly_dependent: coeffs must be [A, nb] and base [nb, b, b], got ", coeffs.sizes(),
              " and ", base.sizes());
  // G_{a,j} = c_{a,j} (P_j - P_j^T), in the promoted floating dtype of the inputs (float32 for integers)
  at::ScalarType dt = at::promote_types(coeffs.scalar_type(), base.scalar_type());
  if (!at::isFloatingType(dt)) dt = at::kFloat;
  return coeffs.to(dt).view({coeffs.size(0), coeffs.size(1), 1, 1}) * skew_part(base.to(dt)).unsqueeze(0);
}

double max_commutator(const at::Tensor& generators) {
  check_square(generators, "rope::max_commutator", "generators");
  TORCH_CHECK(generators.dim() >= 4, "rope::max_commutator: generators must be [..., A, nb, b, b], got ",
              generators.sizes());
  at::Tensor G = generators.to(at::kDouble);
  const int64_t A = G.size(-4);
  double worst = 0;
  for (int64_t a = 0; a < A; ++a) {
    for (int64_t a2 = a + 1; a2 < A; ++a2) {
      at::Tensor X = G.select(-4, a), Y = G.select(-4, a2);
      at::Tensor C = at::matmul(X, Y) - at::matmul(Y, X);
      worst = std::max(worst, C.pow(2).sum({-1, -2}).sqrt().max().item<double>());
    }
  }
  return worst;
}

at::Tensor block_rotations(const at::Tensor& generators, const at::Tensor& positions) {
  check_square(generators, "rope::block_rotations", "generators");
  TORCH_CHECK(generators.dim() >= 4, "rope::block_rotations: generators must be [..., A, nb, b, b], got ",
              generators.sizes());
  const int64_t A = generators.size(-4);
  TORCH_CHECK(positions.dim() == 2 && positions.size(1) == A, "rope::block_rotations: positions must be [M, ", A,
              "] (one coordinate per generator axis), got ", positions.sizes());
  at::Tensor p = positions.to(generators.scalar_type());
  // sum_a p[m, a] * G[..., a, j]                                                      [..., M, nb, b, b]
  at::Tensor gen = at::einsum("...ajrc,ma->...mjrc", {generators, p});
  return at::linalg_matrix_exp(gen);
}

at::Tensor block_diag_dense(const at::Tensor& blocks) {
  check_square(blocks, "rope::block_diag_dense", "blocks");
  TORCH_CHECK(blocks.dim() >= 3, "rope::block_diag_dense: blocks must be [..., nb, b, b], got ", blocks.sizes());
  const int64_t nb = blocks.size(-3), b = blocks.size(-1);
  // R[..., j, r, k, c] = blocks[..., j, r, c] * delta(j, k)                                [..., nb, b, nb, b]
  at::Tensor eye = at::eye(nb, blocks.options()).view({nb, 1, nb, 1});
  at::Tensor R = blocks.unsqueeze(-2) * eye;
  std::vector<int64_t> shape(blocks.sizes().begin(), blocks.sizes().end() - 3);
  shape.push_back(nb * b);
  shape.push_back(nb * b);
  return R.reshape(shape);  // [..., D, D]
}

at::Tensor apply_block_rope(const at::Tensor& x, const at::Tensor& blocks) {
  check_square(blocks, "rope::apply_block_rope", "blocks");
  TORCH_CHECK(blocks.dim() >= 4 && x.dim() >= 2 && x.size(-1) >= blocks.size(-3) * blocks.size(-1),
              "rope::apply_block_rope: x must be [..., M, D] with D >= nb*b for blocks [..., M, nb, b, b], got x ",
              x.sizes(), " and blocks ", blocks.sizes());
  const int64_t nb = blocks.size(-3), b = blocks.size(-1), rot = nb * b, D = x.size(-1);
  // partial rotary: channels [0, nb*b) are rotated, the rest [nb*b, D) pass through unchanged
  at::Tensor xr = rot == D ? x : x.narrow(-1, 0, rot);
  if (blocks.dim() == 4 && blocks.size(0) == x.size(-2) && x.dim() >= 3) {
    // One set of blocks per position, shared by every leading row of x (the batch and heads): per position, one
    // GEMM of the rows [R, nb*b] with the transposed block-diagonal matrix. The zeros off the blocks add
    // nothing, so this is the same sum per channel as the b x b products below, without broadcasting the
    // blocks over the rows (1.6-2.7x as fast forward+backward at a ViT's sizes, bench/bench_vit_kernels.py).
    const int64_t M = x.size(-2), R = xr.numel() / (M * rot);
    at::Tensor xm = xr.to(blocks.scalar_type()).reshape({R, M, rot}).transpose(0, 1);  // [M, R, nb*b]
    at::Tensor y = at::matmul(xm, block_diag_dense(blocks).transpose(-1, -2));         // [M, R, nb*b]
    y = y.transpose(0, 1).reshape(xr.sizes()).to(x.scalar_type());
    return rot == D ? y : at::cat({y, x.narrow(-1, rot, D - rot)}, -1);
  }
  std::vector<int64_t> shape = xr.sizes().vec();
  shape.back() = nb;
  shape.push_back(b);
  shape.push_back(1);
  // x'_j = B_j x_j for each contiguous block j of b channels                             [..., M, nb, b, 1]
  at::Tensor y = at::matmul(blocks, xr.to(blocks.scalar_type()).reshape(shape));
  y = y.reshape(xr.sizes()).to(x.scalar_type());
  return rot == D ? y : at::cat({y, x.narrow(-1, rot, D - rot)}, -1);
}

}  // namespace qvl::rope
