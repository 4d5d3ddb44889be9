#include "functional/rope/rope1d.h"

#include <numeric>
#include <stdexcept>

#include "functional/rotary.h"
#include "functional/weights.h"

namespace qvl::rope {

at::Tensor inv_freq(double theta, int64_t rotary_dim) {
  TORCH_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0, "rope::inv_freq: rotary_dim must be positive and even, got ",
              rotary_dim);
  return rope_inv_freq(theta, rotary_dim);
}

at::Tensor angles_1d(const at::Tensor& positions, const at::Tensor& inv) {
  return positions.to(at::kFloat).unsqueeze(-1) * inv;  // [..., r/2]
}

at::Tensor apply_cos_sin(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, PairLayout layout) {
  const int64_t half = cos.size(-1), r = 2 * half, d = x.size(-1);
  TORCH_CHECK(r <= d, "rope::apply: ", half, " angles need a rotary dim of ", r, " channels, but x has only ", d, " (",
              x.sizes(), ")");
  at::Tensor c = cos.to(x.scalar_type()), s = sin.to(x.scalar_type());
  at::Tensor xr = x.slice(-1, 0, r), rest = x.slice(-1, r);
  at::Tensor y;
  if (layout == PairLayout::SplitHalf) {
    // x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)
    at::Tensor a = xr.slice(-1, 0, half), b = xr.slice(-1, half);
    y = at::cat({a * c - b * s, b * c + a * s}, -1);
  } else {
    // pairs (2k, 2k+1): (a cos - b sin, b cos + a sin), re-interleaved
    at::Tensor xp = xr.unflatten(-1, {half, 2});  // [..., r/2, 2]
    at::Tensor a = xp.select(-1, 0), b = xp.select(-1, 1);
    y = at::stack({a * c - b * s, b * c + a * s}, -1).flatten(-2);
  }
  return rest.size(-1) ? at::cat({y, rest}, -1) : y;
}

at::Tensor apply(const at::Tensor& x, const at::Tensor& angles, PairLayout layout) {
  return apply_cos_sin(x, angles.cos(), angles.sin(), layout);
}

std::vector<int64_t> mrope_rows(const std::vector<int64_t>& section, MRopeLayout layout) {
  TORCH_CHECK(section.size() == 3, "rope::mrope_rows: mrope_section must have 3 entries (t, h, w), got ",
              section.size());
  const int64_t n = std::accumulate(section.begin(), section.end(), int64_t{0});
  std::vector<int64_t> rows(n, 0);
  if (layout == MRopeLayout::Chunked) {
    for (int64_t k = section[0]; k < section[0] + section[1]; ++k) rows[k] = 1;
    for (int64_t k = section[0] + section[1]; k < n; ++k) rows[k] = 2;
  } else {
    // apply_interleaved_mrope: freqs_t[..., slice(dim, mrope_section[dim] * 3, 3)] = freqs[dim] for h, w
    for (int64_t row = 1; row <= 2; ++row) {
      for (int64_t k = row; k < section[row] * 3; k += 3) {
        TORCH_CHECK(k < n, "rope::mrope_rows: interleaved section ", section[row], " reaches past ", n, " frequencies");
        rows[k] = row;
      }
    }
  }
  return rows;
}

std::string mrope_labels(const std::vector<int64_t>& section, MRopeLayout layout) {
  std::string s;
  for (int64_t r : mrope_rows(section, layout)) s.push_back("THW"[r]);
  return s;
}

at::Tensor mrope_angles(const at::Tensor& pos, const at::Tensor& inv, const std::vector<int64_t>& section,
                        MRopeLayout layout) {
  TORCH_CHECK(pos.dim() == 3 && pos.size(0) == 3, "rope::mrope_angles: position_ids must be [3, B, T], got ",
              pos.sizes());
  std::vector<int64_t> rows = mrope_rows(section, layout);
  TORCH_CHECK(static_cast<int64_t>(rows.size()) == inv.size(0), "rope::mrope_angles: mrope_section sums to ",
              rows.size(), " but there are ", inv.size(0), " frequencies");
  at::Tensor all = angles_1d(pos, inv);  // [3, B, T, r/2]
  at::Tensor idx = at::tensor(rows, at::kLong).view({1, 1, 1, -1}).expand({1, all.size(1), all.size(2), -1});
  return all.gather(0, idx).squeeze(0);  // [B, T, r/2]
}

}  // namespace qvl::rope
