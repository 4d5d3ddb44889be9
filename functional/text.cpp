#include "functional/text.h"

#include <cmath>
#include <limits>

#include "functional/cuda/fused.h"
#include "functional/mlp.h"
#include "functional/norm.h"
#include "functional/rope/circle.h"
#include "functional/vision.h"
#include "functional/linear.h"

namespace qvl::text {

CosSin rotary(const at::Tensor& pos, at::ScalarType dtype, const TextConfig& c, Recorder* rec, const std::string& path) {
  TORCH_CHECK(pos.dim() == 3 && pos.size(0) == 3, "text::rotary: position_ids must be [3, B, T], got ", pos.sizes());
  RecordScope rs(rec, path, "Qwen2_5_VLRotaryEmbedding", [&] { return Value::dict({{"arg1", Value::of(pos)}}); });
  const int64_t Dh = c.head_dim(), B = pos.size(1);
  at::Tensor inv_freq = rope_inv_freq(c.rope_theta, Dh).to(pos.device());
  // inv_freq[None, None, :, None].float().expand(3, B, -1, 1) @ position_ids[:, :, None, :].float()
  at::Tensor inv = inv_freq.view({1, 1, -1, 1}).expand({3, B, -1, 1});
  at::Tensor p = pos.unsqueeze(2).to(at::kFloat);                      // [3, B, 1, T]
  at::Tensor freqs = at::matmul(inv, p).transpose(2, 3);              // [3, B, T, Dh/2] (attention_scaling 1)
  // recomposition_frequencies: chunk i of mrope_section comes from row i % 3; then cat((f, f), -1)
  auto recompose = [&](const at::Tensor& f) {
    std::vector<at::Tensor> parts;
    auto chunks = f.split_with_sizes(c.mrope_section, -1);
    for (size_t i = 0; i < chunks.size(); ++i) parts.push_back(chunks[i][i % 3]);
    at::Tensor half = at::cat(parts, -1);                              // [B, T, Dh/2]
    return at::cat({half, half}, -1);                                  // [B, T, Dh]
  };
  CosSin out{recompose(freqs.cos()).to(dtype), recompose(freqs.sin()).to(dtype)};
  rs.done(Value::tuple({Value::of(out.cos), Value::of(out.sin)}));
  return out;
}

std::pair<at::Tensor, at::Tensor> apply_rotary_pos_emb(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                       const at::Tensor& sin, bool fused) {
  if (fused && q.is_cuda()) {
    // one kernel for q and k in float32, rounded once (HF rounds every bf16 op): [B, T, H, Dh] views
    auto [qe, ke] = cuda::rope_apply(q.transpose(1, 2), k.transpose(1, 2), cuda::rope_tables(cos, sin));
    return {qe.transpose(1, 2), ke.transpose(1, 2)};
  }
  at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);  // [B, 1, T, Dh]
  return {(q * c) + (rotate_half(q) * s), (k * c) + (rotate_half(k) * s)};
}

at::Tensor causal_mask(const at::Tensor& attention_mask, int64_t B, int64_t q_len, int64_t past, at::ScalarType dtype) {
  const int64_t kv_len = past + q_len;
  at::Tensor q_idx = at::arange(q_len, at::kLong).view({1, 1, -1, 1}) + past;
  at::Tensor k_idx = at::arange(kv_len, at::kLong).view({1, 1, 1, -1});
  at::Tensor allowed = k_idx.le(q_idx).expand({B, 1, q_len, kv_len});  // causal_mask_function
  if (attention_mask.defined()) {
    TORCH_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == B && attention_mask.size(1) == kv_len,
                "text::causal_mask: attention_mask must be [", B, ", ", kv_len, "], got ", attention_mask.sizes());
    allowed = allowed.logical_and(attention_mask.to(at::kBool).view({B, 1, 1, kv_len}));  // padding_mask_function
  }
  // torch.where(mask, torch.tensor(0.0, dtype=dtype), torch.finfo(dtype).min)
  const double min = dtype == at::kBFloat16 ? -3.3895313892515355e38
                     : dtype == at::kHalf   ? -65504.0
                     : dtype == at::kDouble ? std::numeric_limits<double>::lowest()
                                            : static_cast<double>(std::numeric_limits<float>::lowest());
  return at::where(allowed, at::zeros({}, at::TensorOptions().dtype(dtype)), at::full({}, min, at::TensorOptions().dtype(dtype)));
}

Value recorded_layer_inputs(const char* x_name, const at::Tensor& x, const at::Tensor& mask, const CosSin& rope) {
  return Value::dict({{x_name, Value::of(x)},
                      {"attention_mask", mask.defined() ? Value::of(mask) : Value::none()},
                      {"position_embeddings", Value::tuple({Value::of(rope.cos), Value::of(rope.sin)})}});
}

std::pair<at::Tensor, at::Tensor> rotate_qk(Recorder* rec, const std::string& attn_path, const at::Tensor& q,
                                            const at::Tensor& k, const CosSin& rope, bool fused) {
  RecordScope rot(rec, attn_path + ".apply_rotary_pos_emb", "apply_rotary_pos_emb", [&] {
    return Value::dict({{"arg0", Value::of(q)}, {"arg1", Value::of(k)}, {"arg2", Value::of(rope.cos)},
                        {"arg3", Value::of(rope.sin)}});
  }, "{\"kind\": \"function\"}");
  auto qk = apply_rotary_pos_emb(q, k, rope.cos, rope.sin, fused);
  rot.done(Value::tuple({Value::of(qk.first), Value::of(qk.second)}));
  return qk;
}

std::pair<at::Tensor, at::Tensor> cache_update(KVCache& cache, int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  if (static_cast<int64_t>(cache.keys.size()) <= layer) {
    cache.keys.resize(layer + 1);
    cache.values.resize(layer + 1);
  }
  at::Tensor& ck = cache.keys[layer];
  at::Tensor& cv = cache.values[layer];
  ck = ck.defined() ? at::cat({ck, k}, -2) : k;
  cv = cv.defined() ? at::cat({cv, v}, -2) : v;
  return {ck, cv};
}

AttentionOutput attention(const Weights& w, const at::Tensor& x, const at::Tensor& mask, const CosSin& rope,
                          const TextConfig& c, Recorder* rec, KVCache* cache, int64_t layer) {
  if (c.fast) return attention_fast(w, x, mask, rope, c, rec, cache, layer);
  TORCH_CHECK(x.dim() == 3 && x.size(2) == c.hidden_size, "text::attention: x must be [B, T, ", c.hidden_size,
              "], got ", x.sizes());
  const int64_t B = x.size(0), T = x.size(1), D = c.hidden_size, H = c.num_attention_heads,
                Hkv = c.num_key_value_heads, Dh = c.head_dim();
  RecordScope rs(rec, w.path(), "Qwen2_5_VLAttention", [&] {
    return recorded_layer_inputs("hidden_states", x, mask, rope);
  });
  // self.q_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
  at::Tensor q = linear(w.at("q_proj"), x, true, H * Dh, D).view({B, T, -1, Dh}).transpose(1, 2);    // [B, H, T, Dh]
  at::Tensor k = linear(w.at("k_proj"), x, true, Hkv * Dh, D).view({B, T, -1, Dh}).transpose(1, 2);  // [B, Hkv, T, Dh]
  at::Tensor v = linear(w.at("v_proj"), x, true, Hkv * Dh, D).view({B, T, -1, Dh}).transpose(1, 2);  // [B, Hkv, T, Dh]
  std::tie(q, k) = rotate_qk(rec, w.path(), q, k, rope, c.fused);
  // key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
  if (cache) std::tie(k, v) = cache_update(*cache, layer, k, v);
  auto [o, wts] = eager_attention(q, k, v, mask);  // [B, T, H Dh], [B, H, T, Tk]
  AttentionOutput out{linear(w.at("o_proj"), o, /*bias=*/false, D, H * Dh), wts};
  rs.done(Value::tuple({Value::of(out.out), Value::of(out.weights)}));
  return out;
}

std::pair<at::Tensor, at::Tensor> eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& mask) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dh = q.size(3), Hkv = k.size(1), rep = H / Hkv;
  // repeat_kv: [B, Hkv, Tk, Dh] -> [B, Hkv * rep, Tk, Dh]
  auto repeat_kv = [&](const at::Tensor& t) {
    if (rep == 1) return t;
    return t.unsqueeze(2).expand({B, Hkv, rep, t.size(2), Dh}).reshape({B, Hkv * rep, t.size(2), Dh});
  };
  const double scaling = std::pow(static_cast<double>(Dh), -0.5);
  at::Tensor wts = at::matmul(q, repeat_kv(k).transpose(2, 3)) * scaling;  // [B, H, T, Tk]
  if (mask.defined()) wts = wts + mask;
  wts = at::softmax(wts, -1, at::kFloat).to(q.scalar_type());
  at::Tensor o = at::matmul(wts, repeat_kv(v)).transpose(1, 2).contiguous();  // [B, T, H, Dh]
  return {o.reshape({B, T, -1}).contiguous(), wts};
}

at::Tensor decoder_layer(const Weights& w, const at::Tensor& x, const at::Tensor& mask, const CosSin& rope,
                         const TextConfig& c, Recorder* rec, KVCache* cache, int64_t layer) {
  if (c.fast) return decoder_layer_fast(w, x, mask, rope, c, rec, cache, layer);
  RecordScope rs(rec, w.path(), "Qwen2_5_VLDecoderLayer", [&] {
    return recorded_layer_inputs("arg0", x, mask, rope);
  });
  // hidden_states = residual + self_attn(input_layernorm(hidden_states))
  const at::Tensor attn_in = rms_norm(w.at("input_layernorm"), x, c.rms_norm_eps, rec, c.fused);
  const at::Tensor attn_out = attention(w.at("self_attn"), attn_in, mask, rope, c, rec, cache, layer).out;
  const at::Tensor h = x + attn_out;
  // hidden_states = residual + mlp(post_attention_layernorm(hidden_states))
  const at::Tensor mlp_in = rms_norm(w.at("post_attention_layernorm"), h, c.rms_norm_eps, rec, c.fused);
  const at::Tensor mlp_out = mlp(w.at("mlp"), mlp_in, c, rec);
  at::Tensor out = h + mlp_out;
  rs.done(Value::of(out));
  return out;
}

at::Tensor text_model(const Weights& w, const at::Tensor& embeds, const at::Tensor& attention_mask,
                      const at::Tensor& position_ids, const TextConfig& c, Recorder* rec, KVCache* cache) {
  RopePlan plan{{position_ids}, {""}, std::vector<int64_t>(c.num_hidden_layers, 0)};
  return text_model(w, embeds, attention_mask, plan, c, rec, cache);
}

at::Tensor text_model(const Weights& w, const at::Tensor& embeds, const at::Tensor& attention_mask,
                      const RopePlan& plan, const TextConfig& c, Recorder* rec, KVCache* cache) {
  TORCH_CHECK(embeds.dim() == 3 && embeds.size(2) == c.hidden_size, "text::text_model: inputs_embeds must be [B, T, ",
              c.hidden_size, "], got ", embeds.sizes());
  TORCH_CHECK(!plan.positions.empty() && plan.names.size() == plan.positions.size() &&
                  static_cast<int64_t>(plan.layer_source.size()) == c.num_hidden_layers,
              "text::text_model: the rope plan needs >= 1 source, one name per source and one source per layer (",
              c.num_hidden_layers, " layers), got ", plan.positions.size(), " sources, ", plan.names.size(), " names, ",
              plan.layer_source.size(), " layers");
  for (int64_t s : plan.layer_source) {
    TORCH_CHECK(s >= 0 && s < static_cast<int64_t>(plan.positions.size()), "text::text_model: rope plan layer source ",
                s, " out of range: expected [0, ", plan.positions.size(), ")");
  }
  const int64_t B = embeds.size(0), T = embeds.size(1);
  const at::Tensor& position_ids = plan.positions[plan.layer_source[0]];
  RecordScope rs(rec, w.path(), "Qwen2_5_VLTextModel", [&] {
    return Value::dict({{"inputs_embeds", Value::of(embeds)},
                        {"attention_mask", attention_mask.defined() ? Value::of(attention_mask) : Value::none()},
                        {"position_ids", position_ids.defined() ? Value::of(position_ids) : Value::none()}});
  });
  // position_ids = arange(T) + past_seen_tokens, expanded to 3 rows, when none are given
  const int64_t past = cache ? cache->length() : 0;
  // built on the host, used where the activations live
  at::Tensor mask = causal_mask(attention_mask.defined() ? attention_mask.to(at::kCPU) : attention_mask, B, T, past,
                                embeds.scalar_type()).to(embeds.device());
  std::vector<CosSin> ropes(plan.positions.size());
  std::vector<bool> used(plan.positions.size(), false);
  for (int64_t s : plan.layer_source) used[s] = true;
  for (size_t s = 0; s < plan.positions.size(); ++s) {
    if (!used[s]) continue;
    at::Tensor pos = plan.positions[s].defined()
                         ? plan.positions[s]
                         : (at::arange(T, embeds.options().dtype(at::kLong)) + past).view({1, 1, -1}).expand({3, B, -1});
    if (pos.dim() == 2) pos = pos.unsqueeze(0).expand({3, pos.size(0), -1});
    const std::string rpath = join_path(join_path(w.path(), "rotary_emb"), plan.names[s]);
    ropes[s] = rotary(pos, embeds.scalar_type(), c, rec, rpath);
  }
  at::Tensor h = embeds;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    h = decoder_layer(w.at("layers").at(i), h, mask, ropes[plan.layer_source[i]], c, rec, cache, i);
  h = rms_norm(w.at("norm"), h, c.rms_norm_eps, rec, c.fused);
  if (cache) {
    rs.done(Value::dict({{"last_hidden_state", Value::of(h)}, {"past_key_values", cache_value(*cache, c.num_hidden_layers)}}));
  } else {
    rs.done(Value::dict({{"last_hidden_state", Value::of(h)}}));
  }
  return h;
}

Value cache_value(const KVCache& cache, int64_t layers) {
  std::vector<Value> keys, values;
  for (int64_t i = 0; i < layers; ++i) {
    const bool has = i < static_cast<int64_t>(cache.keys.size()) && cache.keys[i].defined();
    keys.push_back(has ? Value::of(cache.keys[i]) : Value::none());
    values.push_back(has ? Value::of(cache.values[i]) : Value::none());
  }
  Value k = Value::tuple(std::move(keys)), v = Value::tuple(std::move(values));
  k.kind = v.kind = Value::Kind::List;
  return Value::dict({{"keys", std::move(k)}, {"values", std::move(v)}}, "DynamicCache");
}

KVCache cache_from_value(const Value& v) {
  TORCH_CHECK(v.kind == Value::Kind::Dict && v.has("keys") && v.has("values"),
              "KV cache: expected a dict with 'keys' and 'values' (a recorded DynamicCache), got ", v.describe());
  const Value &k = v.at("keys"), &vals = v.at("values");
  TORCH_CHECK(k.size() == vals.size(), "KV cache: ", k.size(), " key entries but ", vals.size(), " value entries");
  KVCache out;
  for (size_t i = 0; i < k.size(); ++i) {
    TORCH_CHECK(k.at(i).is_none() == vals.at(i).is_none(), "KV cache: layer ", i, " has ",
                k.at(i).is_none() ? "values" : "keys", " but not ", k.at(i).is_none() ? "keys" : "values");
    out.keys.push_back(k.at(i).is_none() ? at::Tensor() : k.at(i).as_tensor("cache keys"));
    out.values.push_back(vals.at(i).is_none() ? at::Tensor() : vals.at(i).as_tensor("cache values"));
  }
  return out;
}

}  // namespace qvl::text
