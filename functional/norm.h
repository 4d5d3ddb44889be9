// RMSNorm (Qwen2_5_VLRMSNorm). linear() and the activations are in functional/linear.h.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "functional/recorder.h"
#include "functional/weights.h"

namespace qvl {

// Mirrors Qwen2_5_VLRMSNorm.forward (transformers 5.x; Qwen2RMSNorm in 4.x).
//   x    [..., D]  any float dtype
//   out  [..., D]  dtype = promote(weight.dtype, x.dtype)
// Weights: weight [D].
// Quirks: the variance is computed in float32 whatever the input dtype, and the normalised value is cast
// back to the input dtype BEFORE the weight multiply (so bf16 * bf16 weight gives bf16).
// Vision norms use eps 1e-6 (hard-coded in HF); text norms use config.rms_norm_eps.
// fused: on a CUDA x, run the fused kernel (cuda::rms_norm; same maths, one pass) when it covers the dtypes.
at::Tensor rms_norm(const Weights& w, const at::Tensor& x, double eps, Recorder* rec = nullptr, bool fused = false);

}  // namespace qvl
