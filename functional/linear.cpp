#include "functional/linear.h"

#include <c10/util/Exception.h>

namespace qvl {

at::Tensor activation(const at::Tensor& x, const std::string& name) {
  if (name == "silu" || name == "swish") return at::silu(x);
  if (name == "gelu") return at::gelu(x);  // nn.GELU(): approximate='none' (erf)
  if (name == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (name == "quick_gelu") return x * at::sigmoid(1.702 * x);
  if (name == "relu") return at::relu(x);
  TORCH_CHECK(false, "activation: unsupported hidden_act '", name,
              "' (supported: silu, gelu, gelu_pytorch_tanh, quick_gelu, relu)");
}

at::Tensor linear(const Weights& w, const at::Tensor& x, bool bias, int64_t out_features, int64_t in_features) {
  const at::Tensor& weight = w.tensor("weight", {out_features, in_features < 0 ? x.size(-1) : in_features});
  TORCH_CHECK(weight.size(1) == x.size(-1), "linear: '", w.path(), ".weight' ", weight.sizes(),
              " cannot take an input of shape ", x.sizes(), " (last dim must be ", weight.size(1), ")");
  if (!bias) return at::linear(x, weight);
  return at::linear(x, weight, w.tensor("bias", {weight.size(0)}));
}

}  // namespace qvl
