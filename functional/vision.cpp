#include "functional/vision.h"

#include <sstream>

#include "functional/norm.h"

namespace qvl::vision {

at::Tensor patch_embed(const Weights& w, const at::Tensor& pixel_values, const VisionConfig& c, Recorder* rec) {
  const int64_t C = c.in_channels, Tp = c.temporal_patch_size, P = c.patch_size;
  const at::Tensor& weight = w.tensor("proj.weight", {c.hidden_size, C, Tp, P, P});
  if (pixel_values.dim() != 2 || pixel_values.size(1) != c.patch_dim()) {
    std::ostringstream os;
    os << "patch_embed: pixel_values must be [S, " << c.patch_dim() << "] (C*T_p*P*P), got "
       << shape_str(pixel_values.sizes());
    throw std::runtime_error(os.str());
  }
  RecordScope rs(rec, w.path(), "Qwen2_5_VisionPatchEmbed",
                 [&] { return Value::dict({{"arg0", Value::of(pixel_values)}}); });
  // hidden_states.view(-1, in_channels, temporal_patch_size, patch_size, patch_size).to(proj.weight.dtype)
  at::Tensor x = pixel_values.reshape({-1, C, Tp, P, P}).to(weight.scalar_type());  // [S, C, T_p, P, P]
  // self.proj(...).view(-1, self.embed_dim); Conv3d with stride == kernel_size, no bias
  at::Tensor out = at::conv3d(x, weight, /*bias=*/{}, /*stride=*/{Tp, P, P});  // [S, C_v, 1, 1, 1]
  out = out.view({-1, c.hidden_size});                                            // [S, C_v]
  rs.done(Value::of(out));
  return out;
}

at::Tensor patch_merger(const Weights& w, const at::Tensor& x, const VisionConfig& c, Recorder* rec) {
  const int64_t unit = c.spatial_merge_size * c.spatial_merge_size;
  const int64_t Dm = c.hidden_size * unit;  // self.hidden_size = context_dim * spatial_merge_size**2
  if (x.dim() != 2 || x.size(1) != c.hidden_size || x.size(0) % unit != 0) {
    std::ostringstream os;
    os << "patch_merger: x must be [S, " << c.hidden_size << "] with S a multiple of " << unit << ", got "
       << shape_str(x.sizes());
    throw std::runtime_error(os.str());
  }
  RecordScope rs(rec, w.path(), "Qwen2_5_VLPatchMerger", [&] { return Value::dict({{"arg0", Value::of(x)}}); });
  // x = self.mlp(self.ln_q(x).view(-1, self.hidden_size))
  at::Tensor h = rms_norm(w.at("ln_q"), x, c.rms_norm_eps, rec).view({-1, Dm});  // [S/4, 4*C_v]
  h = linear(w.at("mlp.0"), h, /*bias=*/true, Dm, Dm);                            // [S/4, 4*C_v]
  h = at::gelu(h);                                                                // nn.GELU(), exact erf
  at::Tensor out = linear(w.at("mlp.2"), h, /*bias=*/true, c.out_hidden_size, Dm);  // [S/4, out_D]
  rs.done(Value::of(out));
  return out;
}

}  // namespace qvl::vision
