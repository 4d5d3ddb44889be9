#include "converter/shapes.h"

#include <stdexcept>

#include "functional/weights.h"  // shape_str

namespace qvl {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& cfg) {
  const VisionConfig& v = cfg.vision;
  const TextConfig& t = cfg.text;
  std::vector<ExpectedTensor> out;
  auto add = [&](const std::string& key, std::vector<int64_t> shape) {
    out.push_back({key, std::move(shape), false});
  };

  // --- vision tower (Qwen2_5_VisionTransformerPretrainedModel) ---
  const int64_t C = v.hidden_size, Fv = v.intermediate_size;
  const int64_t Cm = C * v.spatial_merge_size * v.spatial_merge_size;  // merger hidden: C_v m^2
  add("model.visual.patch_embed.proj.weight",
      {C, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size});
  for (int64_t i = 0; i < v.depth; ++i) {
    const std::string b = "model.visual.blocks." + std::to_string(i) + ".";
    add(b + "norm1.weight", {C});
    add(b + "norm2.weight", {C});
    add(b + "attn.qkv.weight", {3 * C, C});
    add(b + "attn.qkv.bias", {3 * C});
    add(b + "attn.proj.weight", {C, C});
    add(b + "attn.proj.bias", {C});
    for (const char* p : {"gate_proj", "up_proj"}) {
      add(b + "mlp." + p + ".weight", {Fv, C});
      add(b + "mlp." + p + ".bias", {Fv});
    }
    add(b + "mlp.down_proj.weight", {C, Fv});
    add(b + "mlp.down_proj.bias", {C});
  }
  add("model.visual.merger.ln_q.weight", {C});
  add("model.visual.merger.mlp.0.weight", {Cm, Cm});
  add("model.visual.merger.mlp.0.bias", {Cm});
  add("model.visual.merger.mlp.2.weight", {v.out_hidden_size, Cm});
  add("model.visual.merger.mlp.2.bias", {v.out_hidden_size});

  // --- text decoder (Qwen2_5_VLTextModel) ---
  const int64_t D = t.hidden_size, F = t.intermediate_size, Dh = t.head_dim();
  const int64_t Q = t.num_attention_heads * Dh, KV = t.num_key_value_heads * Dh;
  add("model.language_model.embed_tokens.weight", {t.vocab_size, D});
  for (int64_t j = 0; j < t.num_hidden_layers; ++j) {
    const std::string l = "model.language_model.layers." + std::to_string(j) + ".";
    add(l + "self_attn.q_proj.weight", {Q, D});
    add(l + "self_attn.q_proj.bias", {Q});
    add(l + "self_attn.k_proj.weight", {KV, D});
    add(l + "self_attn.k_proj.bias", {KV});
    add(l + "self_attn.v_proj.weight", {KV, D});
    add(l + "self_attn.v_proj.bias", {KV});
    add(l + "self_attn.o_proj.weight", {D, Q});
    add(l + "mlp.gate_proj.weight", {F, D});
    add(l + "mlp.up_proj.weight", {F, D});
    add(l + "mlp.down_proj.weight", {D, F});
    add(l + "input_layernorm.weight", {D});
    add(l + "post_attention_layernorm.weight", {D});
  }
  add("model.language_model.norm.weight", {D});
  out.push_back({"lm_head.weight", {t.vocab_size, D}, t.tie_word_embeddings});
  return out;
}

void check_tensor_shapes(const std::map<std::string, std::vector<int64_t>>& actual, const ModelConfig& cfg,
                         const std::string& source) {
  std::vector<std::string> problems;
  std::map<std::string, bool> known;
  for (const auto& e : expected_tensors(cfg)) {
    known[e.key] = true;
    auto it = actual.find(e.key);
    if (it == actual.end()) {
      if (!e.optional) {
        problems.push_back("missing tensor '" + e.key + "' (expected " + shape_str(e.shape) + ")" +
                           (e.key == "lm_head.weight" ? ", and tie_word_embeddings is false" : ""));
      }
    } else if (it->second != e.shape) {
      problems.push_back("shape mismatch for '" + e.key + "': expected " + shape_str(e.shape) + ", got " +
                         shape_str(it->second));
    }
  }
  for (const auto& [key, shape] : actual) {
    if (known.count(key)) continue;
    std::string why = " is not a Qwen2.5-VL weight for this config";
    if (ends_with(key, "_scale") || ends_with(key, "_scale_inv") || ends_with(key, ".input_scale") ||
        ends_with(key, ".weight_scale")) {
      why =
          " looks like a quantisation scale: quantised (e.g. FP8) checkpoints are not supported, dequantise "
          "first";
    }
    problems.push_back("unexpected tensor '" + key + "' " + shape_str(shape) + why);
  }
  if (problems.empty()) return;
  std::string msg = source + ": " + std::to_string(problems.size()) + " tensor" +
                    (problems.size() > 1 ? "s do" : " does") + " not match config.json (vision depth " +
                    std::to_string(cfg.vision.depth) + ", hidden " + std::to_string(cfg.vision.hidden_size) +
                    "; text layers " + std::to_string(cfg.text.num_hidden_layers) + ", hidden " +
                    std::to_string(cfg.text.hidden_size) + ", vocab " + std::to_string(cfg.text.vocab_size) +
                    "): ";
  const size_t shown = std::min<size_t>(problems.size(), 8);
  for (size_t i = 0; i < shown; ++i) msg += (i ? "; " : "") + problems[i];
  if (problems.size() > shown) msg += "; and " + std::to_string(problems.size() - shown) + " more";
  throw std::runtime_error(msg);
}

}  // namespace qvl
