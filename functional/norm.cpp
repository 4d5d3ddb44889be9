#include "functional/norm.h"

#include <sstream>

#include "functional/cuda/fused.h"

namespace qvl {

at::Tensor rms_norm(const Weights& w, const at::Tensor& x, double eps, Recorder* rec, bool fused) {
  const int64_t D = x.size(-1);
  const at::Tensor& weight = w.tensor("weight", {D});
  RecordScope rs(
      rec, w.path(), "Qwen2_5_VLRMSNorm", [&] { return Value::dict({{"arg0", Value::of(x)}}); },
      [&] { return "{\"eps\": " + std::to_string(eps) + "}"; }, 0);
  if (fused && x.is_cuda()) {
    at::Tensor out = cuda::rms_norm(x, weight, eps);  // undefined: dtypes the kernel does not cover
    if (out.defined()) {
      rs.done(Value::of(out));
      return out;
    }
  }
  // input_dtype = hidden_states.dtype; hidden_states = hidden_states.to(torch.float32)
  const at::ScalarType in_dtype = x.scalar_type();
  at::Tensor h = x.to(at::kFloat);
  // variance = hidden_states.pow(2).mean(-1, keepdim=True)
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  // hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
  h = h * at::rsqrt(variance + eps);
  // return self.weight * hidden_states.to(input_dtype)
  at::Tensor out = weight * h.to(in_dtype);
  rs.done(Value::of(out));
  return out;
}

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
