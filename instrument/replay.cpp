#include "instrument/replay.h"

#include <cmath>
#include <sstream>
#include <nlohmann/json.hpp>

#include "functional/error.h"
#include "functional/mlp.h"
#include "instrument/config_json.h"
#include "functional/model.h"
#include "functional/norm.h"
#include "functional/text.h"
#include "functional/vision.h"
#include "functional/linear.h"

namespace qvl {

const char* status_name(CallResult::Status s) {
  switch (s) {
    case CallResult::Status::Pass: return "PASS";
    case CallResult::Status::Fail: return "FAIL";
    case CallResult::Status::NoFunction: return "no function yet";
    case CallResult::Status::Error: return "ERROR";
  }
  return "?";
}

Value as_outputs(const Value& v) {
  if (v.kind == Value::Kind::Tuple) {
    std::vector<std::pair<std::string, Value>> kv;
    for (size_t i = 0; i < v.items.size(); ++i) kv.emplace_back("out" + std::to_string(i), v.items[i]);
    return Value::dict(std::move(kv));
  }
  return Value::dict({{"out", v}});
}

namespace {

bool is_vision_path(const std::string& path) {
  return path.rfind("model.visual", 0) == 0 || path.rfind("visual", 0) == 0;
}

// RMSNorm eps comes from the config (vision: hard-coded 1e-6; text: rms_norm_eps), never from the
// recording; the recorded eps is only cross-checked, so a config-parsing bug cannot hide.
double norm_eps(const RecordedCall& call, const ModelConfig& cfg) {
  const double eps = is_vision_path(call.header.module_path) ? cfg.vision.rms_norm_eps : cfg.text.rms_norm_eps;
  auto s = nlohmann::json::parse(call.header.settings, nullptr, false);
  if (s.is_object() && s.contains("eps")) {
    const double rec_eps = s["eps"].get<double>();
    if (std::abs(rec_eps - eps) > 1e-12 * std::max(1.0, std::abs(eps))) {
      throw std::runtime_error("RMSNorm eps: the config gives " + std::to_string(eps) +
                               " but the recorded module used " + std::to_string(rec_eps));
    }
  }
  return eps;
}

}  // namespace

model::Inputs inputs_of_call(const RecordedCall& c) {
  auto opt = [&](const std::string& name) {
    return c.inputs.has(name) && c.inputs.at(name).is_tensor() ? c.inputs.at(name).tensor : at::Tensor();
  };
  model::Inputs in;
  in.input_ids = c.input("input_ids").as_tensor("input_ids");
  in.attention_mask = opt("attention_mask");
  in.mm_token_type_ids = opt("mm_token_type_ids");
  in.pixel_values = opt("pixel_values");
  in.image_grid_thw = opt("image_grid_thw");
  in.pixel_values_videos = opt("pixel_values_videos");
  in.video_grid_thw = opt("video_grid_thw");
  in.second_per_grid_ts = opt("second_per_grid_ts");
  in.position_ids = opt("position_ids");
  in.rope_deltas = opt("rope_deltas_state");
  return in;
}

namespace {
// A generate-phase call's KV cache (the recorded DynamicCache before the call), or none.
bool recorded_cache(const RecordedCall& c, text::KVCache& cache) {
  if (!c.inputs.has("past_key_values") || c.inputs.at("past_key_values").is_none()) return false;
  cache = text::cache_from_value(c.inputs.at("past_key_values"));
  return true;
}

// The layer a cached attention / decoder-layer call writes to (settings.layer_idx, from the recorder).
int64_t layer_index(const RecordedCall& c) {
  auto s = nlohmann::json::parse(c.header.settings, nullptr, false);
  if (!s.is_object() || !s.contains("layer_idx"))
    throw std::runtime_error("a cached call of '" + c.header.module_path + "' has no settings.layer_idx (re-record it)");
  return s["layer_idx"].get<int64_t>();
}

// HF's outputs for a call that ran with a cache: the cache after the call rides along.
void add_cache(std::vector<std::pair<std::string, Value>>& out, const text::KVCache* cache, const ModelConfig& cfg) {
  if (cache) out.emplace_back("past_key_values", text::cache_value(*cache, cfg.text.num_hidden_layers));
}
}  // namespace

std::optional<RecordedGeneration> recorded_generation(const Recording& rec) {
  if (!rec.has_attr("scenario")) return std::nullopt;
  const auto sc = nlohmann::json::parse(rec.attr("scenario"));
  if (!sc.contains("generation") || sc["generation"].is_null()) return std::nullopt;
  const auto& gen = sc["generation"];
  RecordedGeneration g;
  g.options.max_new_tokens = gen["max_new_tokens"].get<int64_t>();
  g.options.eos_token_ids = gen["eos_token_id"].get<std::vector<int64_t>>();
  if (gen["pad_token_id"].is_number()) g.options.pad_token_id = gen["pad_token_id"].get<int64_t>();
  g.new_tokens = gen["new_tokens"].get<std::vector<std::vector<int64_t>>>();
  return g;
}

std::string token_mismatch(const at::Tensor& ours, int64_t our_max_new, const RecordedGeneration& want) {
  const auto& rows = want.new_tokens;
  std::ostringstream why;
  if (ours.size(0) != static_cast<int64_t>(rows.size())) {
    why << "rows: ours " << ours.size(0) << ", transformers " << rows.size();
    return why.str();
  }
  const at::Tensor o = ours.to(at::kLong).contiguous();
  const int64_t n_ours = o.size(1);
  for (size_t b = 0; b < rows.size(); ++b) {
    const int64_t n_want = static_cast<int64_t>(rows[b].size());
    for (int64_t t = 0; t < std::min(n_ours, n_want); ++t) {
      const int64_t mine = o[b][t].item<int64_t>();
      if (mine != rows[b][t]) {
        why << "row " << b << ": first differing token at step " << t << " (ours " << mine << ", transformers "
            << rows[b][t] << ")";
        return why.str();
      }
    }
    const bool cut = (n_ours < n_want && n_ours == our_max_new) ||
                     (n_want < n_ours && n_want == want.options.max_new_tokens);
    if (n_ours != n_want && !cut) {
      why << "row " << b << ": ours has " << n_ours << " tokens, transformers " << n_want;
      return why.str();
    }
  }
  return "";
}

model::Inputs recorded_model_inputs(const Recording& rec) {
  for (const char* cls : {"Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"})
    for (size_t i = 0; i < rec.calls().size(); ++i)
      if (rec.calls()[i].module_class == cls) return inputs_of_call(rec.load(i));
  throw std::runtime_error("'" + rec.path() + "': no Qwen2_5_VLForConditionalGeneration or Qwen2_5_VLModel call to take inputs from");
}

namespace {
// The recorded (cos, sin) pair a vision or text attention call received as position_embeddings.
vision::CosSin recorded_cos_sin(const RecordedCall& c) {
  const Value& pe = c.input("position_embeddings");
  return vision::CosSin{pe.at(0).as_tensor("cos"), pe.at(1).as_tensor("sin")};
}

// A keyword input that may be absent or None: an undefined tensor then.
at::Tensor optional_input(const RecordedCall& c, const std::string& name) {
  return c.inputs.has(name) && c.inputs.at(name).is_tensor() ? c.inputs.at(name).tensor : at::Tensor();
}

// Modules of both towers, and the plain layers (nn.Embedding, nn.Linear).
void add_shared(Registry& r) {
  r.set("Qwen2_5_VLRMSNorm", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    const bool fused = is_vision_path(c.header.module_path) ? cfg.vision.fused : cfg.text.fused;
    return Value::of(rms_norm(w, c.input("hidden_states", 0).as_tensor("hidden_states"), norm_eps(c, cfg), nullptr, fused));
  });
  r.set("Embedding", [](const RecordedCall& c, const Weights& w, const ModelConfig&) {
    return Value::of(at::embedding(w.tensor("weight"), c.input("input", 0).as_tensor()));
  });
  r.set("Linear", [](const RecordedCall& c, const Weights& w, const ModelConfig&) {
    return Value::of(linear(w, c.input("input", 0).as_tensor(), w.has("bias")));
  });
}

// The vision tower: patch embed, rotary, windows, attention, blocks, merger, the tower.
void add_vision(Registry& r) {
  r.set("Qwen2_5_VLMLP", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    return Value::of(vision::mlp(w, c.input("hidden_state", 0).as_tensor("hidden_state"), cfg.vision));
  });
  r.set("Qwen2_5_VisionPatchEmbed", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    return Value::of(vision::patch_embed(w, c.input("hidden_states", 0).as_tensor("hidden_states"), cfg.vision));
  });
  r.set("Qwen2_5_VLPatchMerger", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    return Value::of(vision::patch_merger(w, c.input("x", 0).as_tensor("x"), cfg.vision));
  });
  r.set("get_vision_position_ids", [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    return Value::of(vision::position_ids(c.input("grid_thw", 0).as_tensor(), cfg.vision.spatial_merge_size));
  });
  r.set("get_vision_attention_seqlens", [](const RecordedCall& c, const Weights&, const ModelConfig&) {
    // (cu_seqlens, max_seqlen); max_seqlen is None outside flash attention.
    return Value::tuple({Value::of(vision::cu_seqlens(c.input("grid_thw", 0).as_tensor())), Value::none()});
  });
  r.set("get_vision_window_index", [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    auto wi = vision::window_index(c.input("grid_thw", 0).as_tensor(), cfg.vision.spatial_merge_size,
                                   cfg.vision.window_size, cfg.vision.patch_size);
    return Value::tuple({Value::of(wi.window_index), Value::of(wi.cu_window_seqlens)});
  });
  r.set("Qwen2_5_VLVisionRotaryEmbedding", [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    auto cs = vision::rotary(c.input("position_ids", 1).as_tensor(), cfg.vision);
    return Value::tuple({Value::of(cs.cos), Value::of(cs.sin)});
  });
  // The 4.49-era forms (conversion-framework recordings, qvl import module_io_data).
  r.set("Qwen2_5_VisionRotaryEmbedding", [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    return Value::of(vision::rotary_freq_table(c.input("seqlen", 0).as_int("seqlen"), cfg.vision));
  });
  r.set("rot_pos_emb", [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    return Value::of(vision::rot_pos_emb(c.input("grid_thw", 0).as_tensor(), cfg.vision));
  });
  r.set("apply_rotary_pos_emb_vision", [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    auto [q, k] = vision::apply_rotary_pos_emb_vision(c.input("q", 0).as_tensor(), c.input("k", 1).as_tensor(),
                                                      c.input("cos", 2).as_tensor(), c.input("sin", 3).as_tensor(),
                                                      cfg.vision.fused);
    return Value::tuple({Value::of(q), Value::of(k)});
  });
  r.set("Qwen2_5_VLVisionAttention", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    return Value::of(vision::attention(w, c.input("hidden_states", 0).as_tensor(), c.input("cu_seqlens", 1).as_tensor(),
                                       recorded_cos_sin(c), cfg.vision));
  });
  r.set("Qwen2_5_VLVisionBlock", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    return Value::of(vision::block(w, c.input("hidden_states", 0).as_tensor(), c.input("cu_seqlens", 1).as_tensor(),
                                   recorded_cos_sin(c), cfg.vision));
  });
  r.set("Qwen2_5_VisionTransformerPretrainedModel", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    auto out = vision::transformer(w, c.input("hidden_states", 0).as_tensor(), c.input("grid_thw", 1).as_tensor(), cfg.vision);
    return Value::dict({{"last_hidden_state", Value::of(out.last_hidden_state)},
                        {"pooler_output", Value::of(out.pooler_output)}});
  });
}

// The text decoder and the full model: MLP, rotary, attention and decoder layer (each with its recorded KV
// cache in a decode step), the text model, get_rope_index, the model and the top level.
void add_text(Registry& r) {
  r.set("Qwen2MLP", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    return Value::of(text::mlp(w, c.input("x", 0).as_tensor("x"), cfg.text));
  });
  r.set("Qwen2_5_VLRotaryEmbedding", [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    auto cs = text::rotary(c.input("position_ids", 1).as_tensor(), c.input("x", 0).as_tensor().scalar_type(), cfg.text);
    return Value::tuple({Value::of(cs.cos), Value::of(cs.sin)});
  });
  r.set("apply_rotary_pos_emb", [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    auto [q, k] = text::apply_rotary_pos_emb(c.input("q", 0).as_tensor(), c.input("k", 1).as_tensor(),
                                             c.input("cos", 2).as_tensor(), c.input("sin", 3).as_tensor(),
                                             cfg.text.fused);
    return Value::tuple({Value::of(q), Value::of(k)});
  });
  // A decode step's call carries the cache as it was before the call; the cache is appended to as in HF.
  r.set("Qwen2_5_VLAttention", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    text::KVCache cache;
    const bool cached = recorded_cache(c, cache);
    auto o = text::attention(w, c.input("hidden_states", 0).as_tensor(), optional_input(c, "attention_mask"), recorded_cos_sin(c), cfg.text,
                             nullptr, cached ? &cache : nullptr, cached ? layer_index(c) : 0);
    return Value::tuple({Value::of(o.out), Value::of(o.weights)});
  });
  r.set("Qwen2_5_VLDecoderLayer", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    text::KVCache cache;
    const bool cached = recorded_cache(c, cache);
    return Value::of(text::decoder_layer(w, c.input("hidden_states", 0).as_tensor(), optional_input(c, "attention_mask"),
                                         recorded_cos_sin(c), cfg.text, nullptr, cached ? &cache : nullptr,
                                         cached ? layer_index(c) : 0));
  });
  r.set("Qwen2_5_VLTextModel", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    at::Tensor embeds = optional_input(c, "inputs_embeds");
    if (!embeds.defined()) embeds = at::embedding(w.tensor("embed_tokens.weight"), c.input("input_ids", 0).as_tensor());
    // generate passes [4, B, T]: row 0 (text positions) only shapes packed-sequence masks in HF
    at::Tensor pos = optional_input(c, "position_ids");
    pos = model::mrope_rows(pos);
    text::KVCache cache;
    const bool cached = recorded_cache(c, cache);
    at::Tensor h = text::text_model(w, embeds, optional_input(c, "attention_mask"), pos, cfg.text, nullptr, cached ? &cache : nullptr);
    std::vector<std::pair<std::string, Value>> out{{"last_hidden_state", Value::of(h)}};
    add_cache(out, cached ? &cache : nullptr, cfg);
    return Value::dict(std::move(out));
  });
  r.set("get_rope_index", [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    auto ri = model::get_rope_index(c.input("input_ids", 0).as_tensor(), c.input("mm_token_type_ids", 1).as_tensor(),
                                    optional_input(c, "image_grid_thw"), optional_input(c, "video_grid_thw"), optional_input(c, "second_per_grid_ts"),
                                    optional_input(c, "attention_mask"), cfg);
    return Value::tuple({Value::of(ri.position_ids), Value::of(ri.deltas)});
  });
  r.set("Qwen2_5_VLModel", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    text::KVCache cache;
    const bool cached = recorded_cache(c, cache);
    auto o = model::forward(w, inputs_of_call(c), cfg, nullptr, cached ? &cache : nullptr);
    std::vector<std::pair<std::string, Value>> out{{"last_hidden_state", Value::of(o.last_hidden_state)}};
    add_cache(out, cached ? &cache : nullptr, cfg);
    out.emplace_back("rope_deltas", o.rope_deltas.defined() ? Value::of(o.rope_deltas) : Value::none());
    return Value::dict(std::move(out));
  });
  r.set("Qwen2_5_VLForConditionalGeneration", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    text::KVCache cache;
    const bool cached = recorded_cache(c, cache);
    const int64_t keep = c.inputs.has("logits_to_keep") ? c.inputs.at("logits_to_keep").as_int("logits_to_keep") : 0;
    auto o = model::lm_forward(w, inputs_of_call(c), cfg, nullptr, cached ? &cache : nullptr, keep);
    std::vector<std::pair<std::string, Value>> out{{"logits", Value::of(o.logits)}};
    add_cache(out, cached ? &cache : nullptr, cfg);
    out.emplace_back("rope_deltas", o.rope_deltas.defined() ? Value::of(o.rope_deltas) : Value::none());
    return Value::dict(std::move(out));
  });
}
}  // namespace

Registry Registry::defaults() {
  Registry r;
  add_shared(r);
  add_vision(r);
  add_text(r);
  return r;
}

const std::vector<std::string>& Registry::legacy_classes() {
  static const std::vector<std::string> legacy{"Qwen2_5_VisionRotaryEmbedding", "rot_pos_emb"};
  return legacy;
}

const ReplayFn* Registry::find(const std::string& module_class) const {
  auto it = fns_.find(module_class);
  return it == fns_.end() ? nullptr : &it->second;
}

std::vector<std::string> Registry::classes() const {
  std::vector<std::string> out;
  for (const auto& [k, _] : fns_) out.push_back(k);
  return out;
}

ModelConfig recording_config(const Recording& rec, const ModelConfig& fallback) {
  if (!rec.has_attr("config")) return fallback;
  return parse_model_config(rec.attr("config"), rec.path() + ":config");
}

std::vector<TensorCheck> judge_outputs(const Value& ours, const Value& ref, const Value& fp32_floor,
                                       const std::string& dtype, const std::string& module_class) {
  std::map<std::string, at::Tensor> mine, floor;
  for (auto& [n, t] : ours.tensors()) mine[n] = t;
  if (!fp32_floor.is_none())
    for (auto& [n, t] : fp32_floor.tensors()) floor[n] = t;
  const bool bf16 = dtype == "bfloat16";
  const Threshold& th = threshold_for(dtype, module_class);
  std::vector<TensorCheck> out;
  for (const auto& [name, want] : ref.tensors()) {
    TensorCheck tc;
    tc.name = name;
    auto it = mine.find(name);
    if (it == mine.end()) {
      tc.vs_ref.shape_ok = false;
      tc.vs_ref.shape_msg = "ours has no output '" + name + "'";
      tc.verdict = {false, tc.vs_ref.shape_msg};
    } else {
      tc.vs_ref = compare(it->second, want);
      if (!tc.vs_ref.shape_ok) {
        tc.verdict = {false, tc.vs_ref.shape_msg};
      } else if (!want.is_floating_point()) {
        tc.verdict = judge_exact(tc.vs_ref);
      } else if (bf16) {
        auto f = floor.find(name);
        if (f == floor.end()) {
          tc.verdict = {false, "the bf16 recording has no float32 output '" + name + "': cannot judge bf16 error"};
        } else {
          tc.bf16_rule = true;
          // Against the float32 run the dtypes differ by design; the dtype itself is checked above.
          tc.ours_vs_fp32 = compare(it->second, f->second, /*check_dtype=*/false);
          tc.hf_vs_fp32 = compare(want, f->second, /*check_dtype=*/false);
          tc.verdict = judge_bf16(tc.ours_vs_fp32, tc.hf_vs_fp32, th);
        }
      } else {
        tc.verdict = judge_fp32(tc.vs_ref, th);
      }
    }
    out.push_back(std::move(tc));
  }
  return out;
}

at::ScalarType replay_dtype(const Recording& rec) {
  const auto t = dtype_from_name(rec.attr("dtype"));
  return t && (*t == at::kBFloat16 || *t == at::kHalf) ? *t : at::kFloat;
}

ReplayModel replay_model(Weights weights, const ModelConfig& weights_config, const Recording& rec) {
  ReplayModel m;
  m.config = recording_config(rec, weights_config);
  const at::ScalarType want = replay_dtype(rec);
  for (const auto& [k, t] : weights.flatten()) {
    if (t.is_floating_point() && t.scalar_type() != want) {
      m.cast = true;
      break;
    }
  }
  m.weights = m.cast ? cast_floating(weights, want) : std::move(weights);
  return m;
}

namespace {
// The same nested value with every tensor leaf moved to `device`.
Value on_device(const Value& v, const at::Device& device) {
  Value out = v;
  if (out.kind == Value::Kind::Tensor && out.tensor.defined()) out.tensor = out.tensor.to(device);
  for (Value& item : out.items) item = on_device(item, device);
  return out;
}
}  // namespace

CallResult replay_call(const Recording& rec, size_t index, const Weights& root, const ModelConfig& cfg,
                       const Registry& reg, const at::Device& device) {
  CallResult r;
  r.header = rec.calls().at(index);
  const ReplayFn* fn = reg.find(r.header.module_class);
  if (!fn) {
    r.status = CallResult::Status::NoFunction;
    return r;
  }
  try {
    RecordedCall call = rec.load(index);
    if (device.type() != at::kCPU) call.inputs = on_device(call.inputs, device);
    const bool is_function = nlohmann::json::parse(call.header.settings, nullptr, false).value("kind", "") == "function";
    Weights w = is_function ? Weights() : call.header.module_path.empty() ? root : root.at_or_empty(call.header.module_path);
    Value ours = as_outputs((*fn)(call, w, cfg));
    if (device.type() != at::kCPU) ours = on_device(ours, at::Device(at::kCPU));
    r.tensors = judge_outputs(ours, call.outputs, call.outputs_fp32, rec.attr("dtype"), r.header.module_class);
    r.status = CallResult::Status::Pass;
    for (const auto& tc : r.tensors) {
      if (!tc.verdict.pass) {
        r.status = CallResult::Status::Fail;
        r.error = tc.name + ": " + tc.verdict.why;
        break;
      }
    }
    if (r.tensors.empty()) {
      r.status = CallResult::Status::Error;
      r.error = "the recording holds no output tensor for this call";
    }
  } catch (const h5::CorruptError&) {
    throw;  // a damaged file is not a failed call: the caller stops with the error
  } catch (const std::exception& e) {
    r.status = CallResult::Status::Error;
    r.error = error_message(e);
  }
  return r;
}

}  // namespace qvl
