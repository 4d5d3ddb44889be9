// Shared rotary pieces: the (cos, sin) pair and rotate_half.
#pragma once

#include <ATen/ATen.h>

namespace qvl {

struct CosSin {
  at::Tensor cos, sin;
};

// inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)); Python's `1.0 / t` is
// reciprocal(t) * 1.0, so this matches HF bit for bit. dim/2 float32 entries.
inline at::Tensor rope_inv_freq(double theta, int64_t dim) {
  return at::reciprocal(at::pow(theta, at::arange(0, dim, 2, at::kFloat) / dim));
}

// rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2])
inline at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

}  // namespace qvl
