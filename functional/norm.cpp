#include "functional/norm.h"

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

}  // namespace qvl
