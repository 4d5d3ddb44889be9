// nn.Linear and the activations of ACT2FN: the pieces every projection and MLP is made of.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "functional/weights.h"

namespace qvl {

// ACT2FN[name] for the activations Qwen2.5-VL configs use: "silu", "gelu" (exact erf),
// "gelu_pytorch_tanh", "quick_gelu", "relu". Anything else is an error naming the activation.
at::Tensor activation(const at::Tensor& x, const std::string& name);

// nn.Linear: x @ weight^T + bias, with the weight shape checked against [out, in] when given.
//   x [..., in] -> [..., out]; reads `weight` and, if `bias` is true, `bias` (a missing bias is an error).
at::Tensor linear(const Weights& w, const at::Tensor& x, bool bias, int64_t out_features = -1,
                  int64_t in_features = -1);

}  // namespace qvl
