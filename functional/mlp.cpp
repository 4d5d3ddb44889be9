#include "functional/mlp.h"

#include "functional/norm.h"
#include "functional/linear.h"

namespace qvl {

at::Tensor gated_mlp(const Weights& w, const at::Tensor& x, int64_t intermediate, const std::string& act,
                     bool bias) {
  const int64_t D = x.size(-1);
  // return self.down_proj(self.act_fn(self.gate_proj(hidden_state)) * self.up_proj(hidden_state))
  at::Tensor gate = linear(w.at("gate_proj"), x, bias, intermediate, D);  // [..., F]
  at::Tensor up = linear(w.at("up_proj"), x, bias, intermediate, D);      // [..., F]
  return linear(w.at("down_proj"), activation(gate, act) * up, bias, D, intermediate);  // [..., D]
}

namespace vision {
at::Tensor mlp(const Weights& w, const at::Tensor& x, const VisionConfig& c, Recorder* rec) {
  RecordScope rs(rec, w.path(), "Qwen2_5_VLMLP", [&] { return Value::dict({{"arg0", Value::of(x)}}); });
  at::Tensor out = gated_mlp(w, x, c.intermediate_size, c.hidden_act, /*bias=*/true);
  rs.done(Value::of(out));
  return out;
}
}  // namespace vision

namespace text {
at::Tensor mlp(const Weights& w, const at::Tensor& x, const TextConfig& c, Recorder* rec) {
  if (c.fast) return mlp_fast(w, x, c, rec);
  RecordScope rs(rec, w.path(), "Qwen2MLP", [&] { return Value::dict({{"arg0", Value::of(x)}}); });
  at::Tensor out = gated_mlp(w, x, c.intermediate_size, c.hidden_act, /*bias=*/false);
  rs.done(Value::of(out));
  return out;
}
}  // namespace text

}  // namespace qvl
