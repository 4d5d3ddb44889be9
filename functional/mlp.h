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
// c.fast: runs mlp_fast.
at::Tensor mlp(const Weights& w, const at::Tensor& x, const TextConfig& c, Recorder* rec = nullptr);
// The fast path of Qwen2MLP (TextConfig::fast; weights from text::fuse_projections; in text_fast.cpp): one GEMM
// for gate and up (gate_up_proj.weight [2F, D]), the activation and the product in place on its two halves,
// down_proj on the strided gate half (no copy); with c.fast_packed and >= packed::kMinRows rows, both GEMMs
// on the packed copies. The same ops per element as mlp: it differs only by the GEMMs' summation order, at
// float32 rounding level. Weights: gate_up_proj.{weight, packed}, down_proj.{weight, packed}. Recorded as
// Qwen2MLP.
at::Tensor mlp_fast(const Weights& w, const at::Tensor& x, const TextConfig& c, Recorder* rec = nullptr);
}  // namespace text

}  // namespace qvl
