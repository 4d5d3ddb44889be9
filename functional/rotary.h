// Shared rotary pieces: the (cos, sin) pair and rotate_half.
#pragma once

#include <ATen/ATen.h>

namespace qvl {

struct CosSin {
  at::Tensor cos, sin;
};

// rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2])
inline at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

}  // namespace qvl
