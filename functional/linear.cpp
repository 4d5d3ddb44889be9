#include "functional/linear.h"

#include <sstream>
#include <stdexcept>

namespace qvl {

at::Tensor activation(const at::Tensor& x, const std::string& name) {
  if (name == "silu" || name == "swish") return at::silu(x);
  if (name == "gelu") return at::gelu(x);  // nn.GELU(): approximate='none' (erf)
  if (name == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (name == "quick_gelu") return x * at::sigmoid(1.702 * x);
  if (name == "relu") return at::relu(x);
  throw std::runtime_error("activation: unsupported hidden_act '" + name +
                           "' (supported: silu, gelu, gelu_pytorch_tanh, quick_gelu, relu)");
}

at::Tensor linear(const Weights& w, const at::Tensor& x, bool bias, int64_t out_features, int64_t in_features) {
  const at::Tensor& weight = w.tensor("weight", {out_features, in_features < 0 ? x.size(-1) : in_features});
  if (weight.size(1) != x.size(-1)) {
    std::ostringstream os;
    os << "linear: '" << w.path() << ".weight' " << shape_str(weight.sizes()) << " cannot take an input of shape "
       << shape_str(x.sizes()) << " (last dim must be " << weight.size(1) << ")";
    throw std::runtime_error(os.str());
  }
  if (!bias) return at::linear(x, weight);
  return at::linear(x, weight, w.tensor("bias", {weight.size(0)}));
}

}  // namespace qvl
