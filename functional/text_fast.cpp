// The CPU fast path of the text decoder layer (TextConfig::fast) and the load-time weight transform it needs
// (text::fuse_projections). Declared in functional/text.h, where the maths and the differences from the plain
// path are listed; the plain functions in text.cpp stay the reference.
//
// Why each piece: bench/bench_text_fast.cpp times each one against the plain way at the 7B text sizes
// (float32, 2 threads; `qvl_bench_text_fast 7`, medians). On a quiet machine: SDPA 2x (prefill) and 4x
// (decode) the eager matmul-softmax-matmul with its repeat_kv copies; the activation and product in place on
// the halves of one gate_up output 4x the out-of-place pair; down_proj reading that strided half in
// place 1.06x a linear on a copy; the in-place residual adds 1.6-1.9x (sub-millisecond); MKL's packed
// GEMMs 1.17-1.20x at 512 rows (and 0.95x at one row, hence packed::kMinRows). One GEMM for q/k/v and one for
// gate/up are even with the separate ones on a quiet machine (1.00-1.05x) and 1.14-1.19x when other processes
// share the cores; they also halve the packed buffers. The rotary apply done once on the adjacent q and k
// heads was measured too and left out: 0.85x on a quiet machine.
#include <cmath>
#include <optional>

#include "functional/mlp.h"
#include "functional/norm.h"
#include "functional/packed_gemm.h"
#include "functional/text.h"
#include "functional/linear.h"

namespace qvl::text {

namespace {

std::string describe(const at::Tensor& t) {
  return shape_str(t.sizes()) + " " + std::string(c10::toString(t.scalar_type())) + " on " + t.device().str();
}

// In `out` (a tree with the same paths as `node`'s), sets <node>.<fused>.<leaf> = cat(<node>.<part>.<leaf>
// for each part, dim 0), and each part's leaf to its row slice of the fused matrix (a contiguous view).
void fuse(Weights& out, const Weights& node, const std::vector<std::string>& parts, const std::string& fused,
          const std::string& leaf) {
  std::vector<at::Tensor> ts;
  for (const auto& p : parts) {
    const at::Tensor& t = node.tensor(p + "." + leaf);  // a missing one: the error names its full path
    if (!ts.empty()) {
      const at::Tensor& f = ts.front();
      if (t.dim() != f.dim() || t.sizes().slice(1) != f.sizes().slice(1) ||
          t.scalar_type() != f.scalar_type() || t.device() != f.device()) {
        throw WeightsError("text::fuse_projections: '" + join_path(node.path(), p + "." + leaf) + "' " +
                           describe(t) + " cannot be stacked under '" +
                           join_path(node.path(), parts[0] + "." + leaf) + "' " + describe(f) +
                           " (all but the first dim, the dtype and the device must agree)");
      }
    }
    ts.push_back(t);
  }
  at::Tensor f = at::cat(ts, 0);
  out.set(join_path(node.path(), fused + "." + leaf), f);
  int64_t row = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    out.set(join_path(node.path(), parts[i] + "." + leaf), f.narrow(0, row, ts[i].size(0)));
    row += ts[i].size(0);
  }
}

bool ends_with_component(const std::string& s, const std::string& tail) {
  if (s == tail) return true;
  return s.size() > tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0 &&
         s[s.size() - tail.size() - 1] == '.';
}

void require_fused(const Weights& w, const char* fn, const char* key) {
  TORCH_CHECK(w.has(key), "text::", fn, ": '", join_path(w.path(), key),
              "' is missing: the fast path (TextConfig::fast) needs weights from text::fuse_projections");
}

// x2d [M, in] @ proj.weight^T (+ proj.bias): MKL's packed GEMM on proj.packed with c.fast_packed and enough
// rows, else at::addmm / at::mm on the plain weight (what at::linear runs; a strided x2d is read in place).
at::Tensor project(const Weights& proj, const at::Tensor& x2d, bool bias, int64_t out, int64_t in,
                   const TextConfig& c, const char* fn) {
  const at::Tensor& weight = proj.tensor("weight", {out, in});
  const at::Tensor b = bias ? proj.tensor("bias", {out}) : at::Tensor();
  if (c.fast_packed && x2d.size(0) >= packed::kMinRows) {
    TORCH_CHECK(proj.has("packed"), "text::", fn, ": '", join_path(proj.path(), "packed"),
                "' is missing: TextConfig::fast_packed needs weights from text::fuse_projections(w, /*pack=*/true)");
    return packed::linear(x2d, proj.tensor("packed"), b);
  }
  return b.defined() ? at::addmm(b, x2d, weight.t()) : at::mm(x2d, weight.t());
}

}  // namespace

Weights fuse_projections(const Weights& w, bool pack) {
  if (w.is_leaf())
    throw WeightsError("text::fuse_projections: '" + w.path() + "' is a tensor, not a weight tree");
  // A new tree with the same absolute paths (recorder paths and errors stay those of `w`), sharing tensors.
  const auto leaves = w.flatten();
  if (leaves.empty()) return w;  // nothing to fuse (and nothing a caller could modify through it)
  Weights root;
  for (const auto& [rel, t] : leaves) root.set(join_path(w.path(), rel), t);
  Weights out = w.path().empty() ? root : root.at(w.path());
  const std::string anchor = "self_attn.q_proj.weight";
  for (const auto& [rel, t] : leaves) {
    if (!ends_with_component(rel, anchor)) continue;
    const std::string layer_rel = rel.substr(0, rel.size() - anchor.size());  // "" or "layers.3."
    const Weights layer = layer_rel.empty() ? w : w.at(layer_rel.substr(0, layer_rel.size() - 1));
    fuse(root, layer.at("self_attn"), {"q_proj", "k_proj", "v_proj"}, "qkv_proj", "weight");
    fuse(root, layer.at("self_attn"), {"q_proj", "k_proj", "v_proj"}, "qkv_proj", "bias");
    fuse(root, layer.at("mlp"), {"gate_proj", "up_proj"}, "gate_up_proj", "weight");
    if (!pack) continue;
    for (const char* proj : {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}) {
      const std::string at_proj = join_path(layer.path(), proj);
      const at::Tensor& weight = root.tensor(at_proj + ".weight");
      if (weight.scalar_type() != at::kFloat || !weight.device().is_cpu()) {
        throw WeightsError("text::fuse_projections(pack): '" + at_proj + ".weight' is " +
                           describe(weight) + "; MKL's packed GEMM takes float32 CPU weights only");
      }
      root.set(at_proj + ".packed", packed::pack(weight));
    }
  }
  return out;
}

AttentionOutput attention_fast(const Weights& w, const at::Tensor& x, const at::Tensor& mask,
                               const CosSin& rope, const TextConfig& c, Recorder* rec, KVCache* cache,
                               int64_t layer) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == c.hidden_size, "text::attention_fast: x must be [B, T, ", c.hidden_size,
              "], got ", x.sizes());
  require_fused(w, "attention_fast", "qkv_proj");
  const int64_t B = x.size(0), T = x.size(1), D = c.hidden_size, H = c.num_attention_heads,
                Hkv = c.num_key_value_heads, Dh = c.head_dim();
  RecordScope rs(rec, w.path(), "Qwen2_5_VLAttention", [&] {
    return recorded_layer_inputs("hidden_states", x, mask, rope);
  });
  // q_proj, k_proj and v_proj(hidden_states) as one GEMM; the heads side by side: q (H), k (Hkv), v (Hkv)
  at::Tensor heads = project(w.at("qkv_proj"), x.reshape({B * T, D}), /*bias=*/true, (H + 2 * Hkv) * Dh, D, c,
                             "attention_fast")
                         .view({B, T, H + 2 * Hkv, Dh});
  at::Tensor q = heads.narrow(2, 0, H).transpose(1, 2);          // [B, H, T, Dh]
  at::Tensor k = heads.narrow(2, H, Hkv).transpose(1, 2);        // [B, Hkv, T, Dh]
  at::Tensor v = heads.narrow(2, H + Hkv, Hkv).transpose(1, 2);  // [B, Hkv, T, Dh]
  std::tie(q, k) = rotate_qk(rec, w.path(), q, k, rope, c.fused);
  if (cache) {
    // past_key_values.update(key_states, value_states, self.layer_idx); a new entry gets compact copies
    const bool fresh = layer >= static_cast<int64_t>(cache->keys.size()) || !cache->keys[layer].defined();
    std::tie(k, v) = cache_update(*cache, layer, fresh ? k.contiguous() : k, fresh ? v.contiguous() : v);
  }
  // softmax(q k^T * scaling + attention_mask, float32) v, query head h reading kv head h / (H / Hkv)
  at::Tensor o, weights;
  if (q.scalar_type() == at::kFloat) {
    const double scaling = std::pow(static_cast<double>(Dh), -0.5);
    o = at::scaled_dot_product_attention(q, k, v, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt,
                                         /*dropout_p=*/0.0, /*is_causal=*/false, scaling,
                                         /*enable_gqa=*/H != Hkv);  // [B, H, T, Dh]
    o = o.transpose(1, 2).reshape({B * T, H * Dh});  // [B T, H Dh] (a view when the kernel wrote [B, T, H, Dh])
  } else {
    // Other dtypes (bfloat16): the plain path's eager attention, which rounds where transformers' does (text.h).
    std::tie(o, weights) = eager_attention(q, k, v, mask);
    o = o.view({B * T, H * Dh});
  }
  AttentionOutput out{
      project(w.at("o_proj"), o, /*bias=*/false, D, H * Dh, c, "attention_fast").view({B, T, D}), weights};
  rs.done(Value::tuple({Value::of(out.out), weights.defined() ? Value::of(weights) : Value::none()}));
  return out;
}

at::Tensor mlp_fast(const Weights& w, const at::Tensor& x, const TextConfig& c, Recorder* rec) {
  require_fused(w, "mlp_fast", "gate_up_proj");
  RecordScope rs(rec, w.path(), "Qwen2MLP", [&] { return Value::dict({{"arg0", Value::of(x)}}); });
  const int64_t D = x.size(-1), F = c.intermediate_size;
  // gate_proj(x) and up_proj(x) as one GEMM
  at::Tensor gu =
      project(w.at("gate_up_proj"), x.reshape({-1, D}), /*bias=*/false, 2 * F, D, c, "mlp_fast");  // [N, 2F]
  at::Tensor gate = gu.narrow(1, 0, F), up = gu.narrow(1, F, F);  // [N, F] each, row stride 2F
  // self.act_fn(self.gate_proj(x)) * self.up_proj(x), in place on the gate half
  at::Tensor a = c.hidden_act == "silu" ? at::silu_(gate) : activation(gate, c.hidden_act);
  a.mul_(up);
  // self.down_proj(...), reading the strided half in place (leading dimension 2F)
  std::vector<int64_t> shape = x.sizes().vec();
  at::Tensor out =
      project(w.at("down_proj"), a, /*bias=*/false, D, F, c, "mlp_fast").view(shape);  // [..., D]
  rs.done(Value::of(out));
  return out;
}

at::Tensor decoder_layer_fast(const Weights& w, const at::Tensor& x, const at::Tensor& mask,
                              const CosSin& rope, const TextConfig& c, Recorder* rec, KVCache* cache,
                              int64_t layer) {
  RecordScope rs(rec, w.path(), "Qwen2_5_VLDecoderLayer", [&] {
    return recorded_layer_inputs("arg0", x, mask, rope);
  });
  // hidden_states = residual + self_attn(input_layernorm(hidden_states)): in place on the attention output
  at::Tensor a =
      attention_fast(w.at("self_attn"), rms_norm(w.at("input_layernorm"), x, c.rms_norm_eps, rec, c.fused),
                     mask, rope, c, rec, cache, layer)
          .out;
  at::Tensor h = rec ? x + a : a.add_(x);
  // hidden_states = residual + mlp(post_attention_layernorm(hidden_states)): in place on the MLP output
  at::Tensor m = mlp_fast(
      w.at("mlp"), rms_norm(w.at("post_attention_layernorm"), h, c.rms_norm_eps, rec, c.fused), c, rec);
  at::Tensor out = rec ? h + m : m.add_(h);
  rs.done(Value::of(out));
  return out;
}

}  // namespace qvl::text
