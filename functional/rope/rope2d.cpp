#include "functional/rope/rope2d.h"


#include <cmath>
#include <stdexcept>
#include <string>

#include "functional/rope/block.h"  // apply_block_rope
#include "functional/weights.h"  // shape_str

namespace qvl::rope {
namespace {
void check_dim(int64_t dim, const char* fn) {
  TORCH_CHECK(dim > 0 && dim % 4 == 0, fn, ": head dim must be a positive multiple of 4 (D/4 pairs per axis), got ", dim);
}
void check_pairs(const at::Tensor& x, const at::Tensor& angles, const char* fn) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0, fn, ": x must be [..., D] with D even, got ", x.sizes());
  TORCH_CHECK(angles.dim() >= 1 && angles.size(-1) == x.size(-1) / 2, fn, ": angles must be [..., ", x.size(-1) / 2,
              "] (one per pair of x ", x.sizes(), "), got ", angles.sizes());
}
// float32, or float64 when either input is float64 (so that autograd's gradcheck can run in double).
at::ScalarType compute_dtype(const at::Tensor& a, const at::Tensor& b) {
  return (a.scalar_type() == at::kDouble || (b.defined() && b.scalar_type() == at::kDouble)) ? at::kDouble : at::kFloat;
}
}  // namespace

GridXY grid_xy(int64_t end_x, int64_t end_y) {
  TORCH_CHECK(end_x > 0 && end_y > 0, "rope::grid_xy: end_x and end_y must be positive, got ", end_x, " x ", end_y);
  // t = torch.arange(end_x * end_y, dtype=torch.float32)
  at::Tensor t = at::arange(end_x * end_y, at::kFloat);
  // t_x = (t % end_x).float(); t_y = torch.div(t, end_x, rounding_mode='floor').float()
  return {at::remainder(t, end_x), at::div(t, end_x, "floor")};
}

at::Tensor axial_frequencies(int64_t dim, double theta) {
  check_dim(dim, "rope::axial_frequencies");
  // 1.0 / (theta ** (torch.arange(0, dim, 4)[: (dim // 4)].float() / dim))
  return at::reciprocal(at::pow(theta, at::arange(0, dim, 4, at::kLong).to(at::kFloat) / dim));
}

at::Tensor axial_angles(int64_t dim, const at::Tensor& t_x, const at::Tensor& t_y, double theta) {
  TORCH_CHECK(t_x.dim() == 1 && t_y.sizes() == t_x.sizes(), "rope::axial_angles: t_x and t_y must both be [N], got ",
              t_x.sizes(), " and ", t_y.sizes());
  at::Tensor omega = axial_frequencies(dim, theta);  // [D/4]
  // freqs_x = torch.outer(t_x, freqs_x); freqs_y = torch.outer(t_y, freqs_y); cat(..., dim=-1)
  return at::cat({at::outer(t_x.to(at::kFloat), omega), at::outer(t_y.to(at::kFloat), omega)}, -1);  // [N, D/2]
}

at::Tensor axial_grid_angles(int64_t dim, int64_t end_x, int64_t end_y, double theta) {
  GridXY g = grid_xy(end_x, end_y);
  return axial_angles(dim, g.t_x, g.t_y, theta);
}

at::Tensor mixed_init_frequencies(const at::Tensor& alpha, int64_t dim, double theta) {
  check_dim(dim, "rope::mixed_init_frequencies");
  TORCH_CHECK(alpha.dim() == 2, "rope::mixed_init_frequencies: alpha must be [depth, heads], got ", alpha.sizes());
  const int64_t L = alpha.size(0);
  // mag = 1 / (theta ** (torch.arange(0, dim, 4)[: (dim // 4)].float() / dim))
  at::Tensor mag = axial_frequencies(dim, theta);   // [F]
  at::Tensor a = alpha.to(at::kFloat).unsqueeze(-1);  // [L, H, 1]
  // fx = cat([mag * cos(angles), mag * cos(pi/2 + angles)]); fy = cat([mag * sin(angles), mag * sin(pi/2 + angles)])
  at::Tensor a90 = a + M_PI / 2;
  at::Tensor fx = at::cat({mag * at::cos(a), mag * at::cos(a90)}, -1);  // [L, H, P]
  at::Tensor fy = at::cat({mag * at::sin(a), mag * at::sin(a90)}, -1);  // [L, H, P]
  // stack([freqs_x, freqs_y]) per layer, stack(dim=1) over layers, .view(2, depth, -1)
  return at::stack({fx.reshape({L, -1}), fy.reshape({L, -1})}, 0);  // [2, L, H*P]
}

at::Tensor mixed_alpha_from_frequencies(const at::Tensor& freqs, int64_t num_heads) {
  TORCH_CHECK(freqs.dim() == 3 && freqs.size(0) == 2 && num_heads > 0 && freqs.size(2) % num_heads == 0,
              "rope::mixed_alpha_from_frequencies: freqs must be [2, depth, heads*D/2] with heads = ", num_heads,
              ", got ", freqs.sizes());
  const int64_t L = freqs.size(1);
  at::Tensor f = freqs.to(at::kDouble).reshape({2, L, num_heads, -1});  // [2, L, H, P]
  // pair 0 has magnitude 1: fx_0 = cos(alpha), fy_0 = sin(alpha)
  at::Tensor alpha = at::atan2(f[1].select(-1, 0), f[0].select(-1, 0));  // (-pi, pi]
  alpha = at::where(alpha < 0, alpha + 2 * M_PI, alpha);
  return alpha.to(at::kFloat);  // [L, H]
}

at::Tensor mixed_angles(const at::Tensor& freqs, const at::Tensor& t_x, const at::Tensor& t_y, int64_t num_heads) {
  TORCH_CHECK(freqs.dim() == 3 && freqs.size(0) == 2 && num_heads > 0 && freqs.size(2) % num_heads == 0,
              "rope::mixed_angles: freqs must be [2, depth, heads*D/2] with heads = ", num_heads, ", got ",
              freqs.sizes());
  TORCH_CHECK(t_x.dim() == 1 && t_y.sizes() == t_x.sizes(), "rope::mixed_angles: t_x and t_y must both be [N], got ",
              t_x.sizes(), " and ", t_y.sizes());
  const int64_t N = t_x.size(0), L = freqs.size(1);
  const at::ScalarType dt = compute_dtype(freqs, at::Tensor());  // float64 freqs stay float64 (gradcheck)
  at::Tensor f = freqs.to(dt);
  // (t_x.unsqueeze(-1) @ freqs[0].unsqueeze(-2)).view(depth, N, num_heads, -1).permute(0, 2, 1, 3)
  at::Tensor ax = at::matmul(t_x.to(dt).unsqueeze(-1), f[0].unsqueeze(-2)).view({L, N, num_heads, -1}).permute({0, 2, 1, 3});
  at::Tensor ay = at::matmul(t_y.to(dt).unsqueeze(-1), f[1].unsqueeze(-2)).view({L, N, num_heads, -1}).permute({0, 2, 1, 3});
  return (ax + ay).contiguous();  // [L, H, N, P]; polar(ones, freqs_x + freqs_y) takes this sum
}

at::Tensor cis(const at::Tensor& angles) {
  at::Tensor a = angles.to(compute_dtype(angles, at::Tensor()));
  return at::polar(at::ones_like(a), a);  // torch.polar(torch.ones_like(freqs), freqs)
}

at::Tensor apply_pairs_complex(const at::Tensor& x, const at::Tensor& angles) {
  check_pairs(x, angles, "rope::apply_pairs_complex");
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() /= 2;
  shape.push_back(2);
  // torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
  const at::ScalarType dt = compute_dtype(x, angles);
  at::Tensor xc = at::view_as_complex(x.to(dt).contiguous().reshape(shape));  // [..., N, P] complex64 (complex128)
  // torch.view_as_real(xq_ * freqs_cis).flatten(3), then .type_as(xq)
  at::Tensor y = at::view_as_real(xc * cis(angles.to(dt))).flatten(-2);  // [..., N, D]
  return y.to(x.scalar_type());
}

at::Tensor pair_rotation_blocks(const at::Tensor& angles) {
  TORCH_CHECK(angles.dim() >= 1, "rope::pair_rotation_blocks: angles must be [..., P], got a scalar");
  at::Tensor a = angles.to(compute_dtype(angles, at::Tensor()));
  at::Tensor c = at::cos(a), s = at::sin(a);
  // blocks[..., p] = [[cos, -sin], [sin, cos]]                                        [..., P, 2, 2]
  return at::stack({at::stack({c, -s}, -1), at::stack({s, c}, -1)}, -2);
}

at::Tensor pair_rotation_matrix(const at::Tensor& angles) {
  TORCH_CHECK(angles.dim() >= 1, "rope::pair_rotation_matrix: angles must be [..., P], got a scalar");
  return block_diag_dense(pair_rotation_blocks(angles));  // [..., D, D]
}

at::Tensor apply_pairs_matrix(const at::Tensor& x, const at::Tensor& angles) {
  check_pairs(x, angles, "rope::apply_pairs_matrix");
  // x'_p = B_p x_p with B_p the 2x2 rotation of pair p, one small matrix product per pair (the block applier
  // with b = 2); the dense D x D form, pair_rotation_matrix(angles) @ x, is the same numbers at D/2 times the work.
  const at::ScalarType dt = compute_dtype(x, angles);
  // the block applier wants a token axis on both: a lone vector or one angle row for all tokens gets one
  const bool vec = x.dim() == 1;
  at::Tensor xt = vec ? x.unsqueeze(0) : x, a = angles.dim() == 1 ? angles.unsqueeze(0) : angles;
  at::Tensor y = apply_block_rope(xt.to(dt), pair_rotation_blocks(a.to(dt)));
  return (vec ? y.squeeze(0) : y).to(x.scalar_type());
}

}  // namespace qvl::rope
