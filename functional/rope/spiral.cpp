#include "functional/rope/spiral.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "functional/weights.h"  // shape_str

namespace qvl::rope {
namespace {

void check_config(const SpiralConfig& c, const char* fn) {
  TORCH_CHECK(c.head_dim > 0 && c.head_dim % 4 == 0, fn, ": head_dim must be a positive multiple of 4, got ", c.head_dim);
  TORCH_CHECK(c.rotate >= 0, fn, ": rotate must be >= 0, got ", c.rotate);
  // assert x.shape[-1] % (self.rotate * 4) == 0
  TORCH_CHECK(c.rotate == 0 || c.head_dim % (4 * c.rotate) == 0, fn, ": head_dim ", c.head_dim,
              " must be a multiple of 4*rotate = ", 4 * c.rotate);
  TORCH_CHECK(!c.same_theta || c.rotate > 0, fn,
              ": same_theta needs rotate > 0, got rotate 0 (the official DeiT code fails there: "
              "repeat_interleave(0) empties the table)");
  TORCH_CHECK(c.max_freq > 0, fn, ": max_freq must be > 0, got ", c.max_freq);
  TORCH_CHECK(c.truncate_percentage >= 0 && c.truncate_percentage <= 1, fn,
              ": truncate_percentage must be in [0, 1], got ", c.truncate_percentage);
}

int64_t num_frequencies(const SpiralConfig& c) {
  const int64_t D = c.head_dim / 2;
  if (c.rotate == 0) return D / 2;
  const int64_t E = c.same_theta ? D / c.rotate : D;  // effective_dim
  return E / 2;
}

// Frequency index of half-channel c (c < D): two channels per frequency; with same_theta each group of 4
// channels (2 frequencies) is repeated R times (freqs_grouped.repeat_interleave(rotate, dim=1)).
at::Tensor frequency_index(const SpiralConfig& c) {
  const int64_t D = c.head_dim / 2;
  at::Tensor ch = at::arange(D, at::kLong);
  if (c.same_theta && c.rotate > 0) return 2 * at::div(at::div(ch, 4, "floor"), c.rotate, "floor") + at::div(ch % 4, 2, "floor");
  return at::div(ch, 2, "floor");
}

// The rotated (unclamped) coordinates per direction sub-block b = 0..R-1, in float64:
// u_row[:, b] = kr + cos a_b (i - kr) + sin a_b (j - kc); u_col[:, b] = kc + cos a_b (j - kc) - sin a_b (i - kr).
struct Rotated {
  at::Tensor u_row, u_col;  // [M, R]
};
Rotated rotated_coordinates(const at::Tensor& pos_rc, int64_t n_rows, int64_t n_cols, int64_t R) {
  const double kr = (n_rows - 1) / 2.0, kc = (n_cols - 1) / 2.0;
  at::Tensor i = pos_rc.select(1, 0).to(at::kDouble).unsqueeze(1) - kr;  // [M, 1]
  at::Tensor j = pos_rc.select(1, 1).to(at::kDouble).unsqueeze(1) - kc;
  std::vector<double> cs, sn;
  for (int64_t b = 0; b < R; ++b) {
    // angle_rad = math.radians(i * 90 / self.rotate)
    const double a = (b * 90.0 / R) * M_PI / 180.0;
    cs.push_back(std::cos(a));
    sn.push_back(std::sin(a));
  }
  at::Tensor c = at::tensor(cs, at::kDouble).unsqueeze(0), s = at::tensor(sn, at::kDouble).unsqueeze(0);  // [1, R]
  return {kr + c * i + s * j, kc + c * j - s * i};
}

}  // namespace

int64_t spiral_truncation_count(const SpiralConfig& c) {
  check_config(c, "rope::spiral_truncation_count");
  if (c.rotate == 0 || !(c.truncate_percentage > 0)) return 0;
  // num_to_truncate = int(freqs.shape[0] * truncate_percentage)
  return static_cast<int64_t>(static_cast<double>(num_frequencies(c)) * c.truncate_percentage);
}

at::Tensor spiral_frequencies(const SpiralConfig& c) {
  check_config(c, "rope::spiral_frequencies");
  const int64_t D = c.head_dim / 2;
  if (c.rotate == 0) {
    // max_freq_lang / (theta ** (torch.arange(0, dim, 2)[:(dim // 2)].float() / dim)); Python's
    // scalar / tensor is reciprocal(tensor) * scalar
    return at::reciprocal(at::pow(c.theta, at::arange(0, D, 2, at::kLong).to(at::kFloat) / D)) * c.max_freq;
  }
  const int64_t E = c.same_theta ? D / c.rotate : D;
  const int64_t F = E / 2;
  TORCH_CHECK(F >= 2, "rope::spiral_frequencies: only ", F, " frequency per direction (head_dim ", c.head_dim,
              ", rotate ", c.rotate, ", same_theta): the official formula divides by F-1 = 0");
  double m = c.min_freq;
  // if min_freq_lang < 1e-6: min_freq_lang = max_freq_lang / (theta ** ((effective_dim - 2) / effective_dim))
  if (m < 1e-6) m = c.max_freq / std::pow(c.theta, static_cast<double>(E - 2) / E);
  // min_freq_lang * (max_freq_lang/min_freq_lang) ** (torch.arange(dim_half-1, -1, -1).float() / (dim_half-1))
  at::Tensor e = at::arange(F - 1, -1, -1, at::kLong).to(at::kFloat) / (F - 1);
  at::Tensor f = at::pow(c.max_freq / m, e) * m;  // [F]
  const int64_t nt = spiral_truncation_count(c);
  // freqs[-num_to_truncate:] = 0, guarded: num_to_truncate == 0 truncates nothing (the official zeroes all)
  if (nt > 0) f.slice(0, F - nt, F).zero_();
  return f;
}

at::Tensor spiral_angles(const at::Tensor& freqs, const at::Tensor& pos_rc, int64_t n_rows, int64_t n_cols,
                         const SpiralConfig& c, SpiralMode mode) {
  check_config(c, "rope::spiral_angles");
  const int64_t d = c.head_dim, D = d / 2, R = c.rotate;
  const int64_t F = num_frequencies(c);
  TORCH_CHECK(freqs.dim() == 1 && freqs.size(0) == F, "rope::spiral_angles: freqs must be [", F, "] for head_dim ", d,
              ", rotate ", R, c.same_theta ? ", same_theta" : "", ", got ", freqs.sizes());
  TORCH_CHECK(pos_rc.dim() == 2 && pos_rc.size(1) == 2, "rope::spiral_angles: pos_rc must be [M, 2] (row, column), got ",
              pos_rc.sizes());
  TORCH_CHECK(n_rows > 0 && n_cols > 0, "rope::spiral_angles: empty grid ", n_rows, "x", n_cols);
  const bool square = n_rows == n_cols;
  TORCH_CHECK(square || (mode != SpiralMode::kClamp && c.pt_seq_len <= 0), "rope::spiral_angles: grid ", n_rows, "x",
              n_cols,
              " is not square; the official code (and so mode=clamp and the pt_seq_len rescaling) "
              "supports square grids only; use mode=exact with pt_seq_len <= 0");
  at::Tensor pos = pos_rc.to(at::kLong);
  if (pos.numel() > 0) {
    const int64_t rmin = pos.select(1, 0).min().item<int64_t>(), rmax = pos.select(1, 0).max().item<int64_t>();
    const int64_t cmin = pos.select(1, 1).min().item<int64_t>(), cmax = pos.select(1, 1).max().item<int64_t>();
    TORCH_CHECK(rmin >= 0 && cmin >= 0 && rmax < n_rows && cmax < n_cols, "rope::spiral_angles: positions span rows [",
                rmin, ", ", rmax, "] and columns [", cmin, ", ", cmax, "], outside the ", n_rows, "x", n_cols, " grid");
  }
  const int64_t n = std::max(n_rows, n_cols);
  // t = torch.arange(ft_seq_len, dtype=x.dtype) / ft_seq_len * self.pt_seq_len   (float32 here)
  at::Tensor t = c.pt_seq_len > 0 ? at::arange(n, at::kFloat) / n * c.pt_seq_len : at::arange(n, at::kFloat);
  const double sigma = c.pt_seq_len > 0 ? static_cast<double>(c.pt_seq_len) / n : 1.0;
  // freqs = einsum(t, self.freqs), repeat '(n r)' r=2, same_theta regrouping: per half-channel frequency
  at::Tensor fc = freqs.to(at::kFloat).index_select(0, frequency_index(c));  // [D]
  at::Tensor fd = at::cat({fc, fc});                                           // [d]
  // broadcat((freqs[:, None, :], freqs[None, :, :])): first half from the row, second from the column
  at::Tensor ti = t.index_select(0, pos.select(1, 0)).unsqueeze(1), tj = t.index_select(0, pos.select(1, 1)).unsqueeze(1);
  at::Tensor phi = at::cat({ti * fc, tj * fc}, 1);  // [M, d]
  if (R <= 1) return phi;                          // rotate 0 and 1: no rotated sub-block
  // rotate_freqs on sub-blocks b >= 1 of every group of 4R channels: closed form (see header)
  Rotated u = rotated_coordinates(pos, n_rows, n_cols, R);
  at::Tensor U = at::cat({u.u_row, u.u_col}, 1);  // [M, 2R] float64
  if (mode == SpiralMode::kClamp) U = U.clamp(0, n - 1);
  at::Tensor ch = at::arange(d, at::kLong);
  at::Tensor b = at::div(ch % (4 * R), 4, "floor");                // sub-block per channel
  at::Tensor col = (ch >= D).to(at::kLong) * R + b;                // which column of U
  at::Tensor rotated = (U.index_select(1, col) * sigma).to(at::kFloat) * fd;  // [M, d]
  return at::where((b > 0).unsqueeze(0), rotated, phi);
}

at::Tensor spiral_grid_angles(const at::Tensor& freqs, int64_t n, const SpiralConfig& c, SpiralMode mode) {
  TORCH_CHECK(n > 0, "rope::spiral_grid_angles: grid side must be positive, got ", n);
  at::Tensor r = at::arange(n, at::kLong);
  at::Tensor pos = at::stack({r.repeat_interleave(n), r.repeat({n})}, 1);  // [n*n, 2] (i, j), row-major
  return spiral_angles(freqs, pos, n, n, c, mode);
}

at::Tensor spiral_clamped(int64_t n, const SpiralConfig& c) {
  check_config(c, "rope::spiral_clamped");
  TORCH_CHECK(n > 0, "rope::spiral_clamped: grid side must be positive, got ", n);
  if (c.rotate == 0) return at::zeros({n * n, 0}, at::kBool);
  at::Tensor r = at::arange(n, at::kLong);
  at::Tensor pos = at::stack({r.repeat_interleave(n), r.repeat({n})}, 1);
  Rotated u = rotated_coordinates(pos, n, n, c.rotate);
  at::Tensor U = at::cat({u.u_row, u.u_col}, 1);  // [n*n, 2R]; the b = 0 columns (i, j) are never clamped
  return U.ne(U.clamp(0, n - 1));
}

at::Tensor rotate_half_interleaved(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0, "rope::rotate_half_interleaved: last dim must be even, got ",
              x.sizes());
  // rearrange '... (d r) -> ... d r', stack((-x2, x1)), rearrange back
  at::Tensor x1 = x.slice(-1, 0, x.size(-1), 2), x2 = x.slice(-1, 1, x.size(-1), 2);
  return at::stack({-x2, x1}, -1).flatten(-2);
}

at::Tensor apply_spiral(const at::Tensor& x, const at::Tensor& angles, bool class_token) {
  TORCH_CHECK(x.dim() == 4, "rope::apply_spiral: x must be [B, N, H, d], got ", x.sizes());
  const int64_t N = x.size(1), skip = class_token ? 1 : 0;
  TORCH_CHECK(angles.dim() == 2 && angles.size(0) == N - skip && angles.size(1) == x.size(3),
              "rope::apply_spiral: angles must be [", N - skip, ", ", x.size(3), "] for x ", x.sizes(),
              class_token ? " with a class token" : "", ", got ", angles.sizes());
  // float32, or float64 when an input is float64 (gradcheck)
  const at::ScalarType dt = (x.scalar_type() == at::kDouble || angles.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  at::Tensor xp = x.slice(1, skip).to(dt);  // patch tokens
  // freqs_cos = freqs.cos().view(-1, 1, d): one table for every batch entry and head
  at::Tensor a = angles.to(dt).unsqueeze(1);  // [N', 1, d]
  // x * freqs_cos + rotate_half(x) * freqs_sin
  at::Tensor y = (xp * a.cos() + rotate_half_interleaved(xp) * a.sin()).to(x.scalar_type());
  // q = cat(q[:, :1], rope(q[:, 1:])): the class token is not rotated
  return class_token ? at::cat({x.slice(1, 0, 1), y}, 1) : y;
}

}  // namespace qvl::rope
