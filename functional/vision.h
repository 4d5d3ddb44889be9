// Qwen2.5-VL vision tower modules (qvl::vision).
#pragma once

#include <ATen/ATen.h>

#include "functional/config.h"
#include "functional/recorder.h"
#include "functional/weights.h"

namespace qvl::vision {

// Mirrors Qwen2_5_VisionPatchEmbed.forward.
//   pixel_values  [S, C*T_p*P*P]  (1176 for C=3, T_p=2, P=14), columns in (c, t, py, px) order
//   out           [S, C_v]        dtype of proj.weight
// Weights: proj.weight [C_v, C, T_p, P, P] (Conv3d, no bias).
// Quirk: the input is cast to the weight dtype first; stride == kernel, so this is one matmul per patch,
// but HF runs it as a Conv3d and so do we (bf16 conv and matmul round differently).
at::Tensor patch_embed(const Weights& w, const at::Tensor& pixel_values, const VisionConfig& c,
                       Recorder* rec = nullptr);

// Mirrors Qwen2_5_VLPatchMerger.forward.
//   x    [S, C_v]        patches in window order, each 2x2 merge block contiguous (m = 2)
//   out  [S/m^2, out_D]  out_D = out_hidden_size
// Weights: ln_q.weight [C_v]; mlp.0.{weight [C_v*m^2, C_v*m^2], bias}; mlp.2.{weight [out_D, C_v*m^2], bias}.
// Quirks: ln_q is an RMSNorm with eps 1e-6; row g of the view concatenates patches m^2*g .. m^2*g+m^2-1;
// the GELU is exact (erf); both linears have biases.
at::Tensor patch_merger(const Weights& w, const at::Tensor& x, const VisionConfig& c, Recorder* rec = nullptr);

}  // namespace qvl::vision
