// The two SwiGLU MLPs of Qwen2.5-VL.
#pragma once

#include <ATen/ATen.h>

#include "functional/config.h"
#include "functional/recorder.h"
#include "functional/weights.h"

namespace qvl {

// down_proj(act(gate_proj(x)) * up_proj(x)); shared body of the two MLPs below.
//   x [..., D] -> [..., D]; weights gate_proj, up_proj [F, D], down_proj [D, F], biases iff `bias`.
at::Tensor gated_mlp(const Weights& w, const at::Tensor& x, int64_t intermediate, const std::string& act, bool bias);

namespace vision {
// Mirrors Qwen2_5_VLMLP(config, bias=True), the vision block MLP.
//   x    [S, C_v]  (any leading dims)
//   out  [S, C_v]
// Weights: gate_proj.{weight [F_v, C_v], bias [F_v]}, up_proj.{...}, down_proj.{weight [C_v, F_v], bias [C_v]}.
// Quirk: all three projections carry a bias (the text MLP has none).
at::Tensor mlp(const Weights& w, const at::Tensor& x, const VisionConfig& c, Recorder* rec = nullptr);
}  // namespace vision

namespace text {
// Mirrors Qwen2MLP, the decoder-layer MLP.
//   x    [B, T, D]  (any leading dims)
//   out  [B, T, D]
// Weights: gate_proj.weight [F, D], up_proj.weight [F, D], down_proj.weight [D, F]; no biases.
at::Tensor mlp(const Weights& w, const at::Tensor& x, const TextConfig& c, Recorder* rec = nullptr);
}  // namespace text

}  // namespace qvl
