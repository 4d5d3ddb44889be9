#include "instrument/config_json.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace qvl {
namespace {

using nlohmann::json;

struct Reader {
  const json& j;
  std::string where;  // "config.json:vision_config"

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }
  const json& need(const char* key) const {
    if (!has(key)) throw std::runtime_error(where + ": missing required key '" + key + "'");
    return j.at(key);
  }
  template <typename T>
  T get(const char* key) const {
    try {
      return need(key).get<T>();
    } catch (const json::type_error&) {
      throw std::runtime_error(where + ": key '" + key + "' has the wrong type (" + j.at(key).type_name() + ")");
    }
  }
  template <typename T>
  T get_or(const char* key, T fallback) const {
    return has(key) ? get<T>(key) : fallback;
  }
};

}  // namespace

ModelConfig parse_model_config(const std::string& text, const std::string& source) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    throw std::runtime_error(source + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!root.is_object()) throw std::runtime_error(source + ": config must be a JSON object");
  ModelConfig c;
  c.source = source;
  Reader top{root, source};

  // --- vision_config (Qwen2_5_VLVisionConfig) ---
  if (!top.has("vision_config")) throw std::runtime_error(source + ": missing required key 'vision_config'");
  Reader v{root.at("vision_config"), source + ":vision_config"};
  c.vision.depth = v.get<int64_t>("depth");
  c.vision.hidden_size = v.get<int64_t>("hidden_size");
  c.vision.intermediate_size = v.get<int64_t>("intermediate_size");
  c.vision.num_heads = v.get<int64_t>("num_heads");
  c.vision.out_hidden_size = v.get<int64_t>("out_hidden_size");
  // Optional keys: the pinned config class defaults (hub configs carry `in_chans`, which HF ignores).
  c.vision.in_channels = v.get_or<int64_t>("in_channels", 3);
  c.vision.patch_size = v.get_or<int64_t>("patch_size", 14);
  c.vision.temporal_patch_size = v.get_or<int64_t>("temporal_patch_size", 2);
  c.vision.spatial_merge_size = v.get_or<int64_t>("spatial_merge_size", 2);
  c.vision.window_size = v.get_or<int64_t>("window_size", 112);
  c.vision.tokens_per_second = v.get_or<int64_t>("tokens_per_second", 4);
  c.vision.hidden_act = v.get_or<std::string>("hidden_act", "silu");
  c.vision.fullatt_block_indexes = v.get_or<std::vector<int64_t>>("fullatt_block_indexes", {7, 15, 23, 31});
  if (v.has("rope_parameters")) {
    Reader vr{v.j.at("rope_parameters"), v.where + ".rope_parameters"};
    c.vision.rope_theta = vr.get_or<double>("rope_theta", 10000.0);
  }

  // --- text (Qwen2_5_VLTextConfig): nested text_config (5.x) or flat at the top (hub 4.x) ---
  const json& tj = top.has("text_config") ? root.at("text_config") : root;
  Reader t{tj, top.has("text_config") ? source + ":text_config" : source};
  c.text.vocab_size = t.get<int64_t>("vocab_size");
  c.text.hidden_size = t.get<int64_t>("hidden_size");
  c.text.intermediate_size = t.get<int64_t>("intermediate_size");
  c.text.num_hidden_layers = t.get<int64_t>("num_hidden_layers");
  c.text.num_attention_heads = t.get<int64_t>("num_attention_heads");
  c.text.num_key_value_heads = t.get_or<int64_t>("num_key_value_heads", c.text.num_attention_heads);
  c.text.max_position_embeddings = t.get_or<int64_t>("max_position_embeddings", 32768);
  c.text.hidden_act = t.get_or<std::string>("hidden_act", "silu");
  c.text.rms_norm_eps = t.get_or<double>("rms_norm_eps", 1e-5);  // the HF class default (real configs: 1e-6)
  c.text.rope_theta = t.get_or<double>("rope_theta", 1e6);
  c.text.mrope_section = {16, 24, 24};  // Qwen2_5_VLRotaryEmbedding: rope_parameters.get("mrope_section", ...)
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (t.has(key)) {
      Reader rp{tj.at(key), t.where + "." + key};
      c.text.rope_theta = rp.get_or<double>("rope_theta", c.text.rope_theta);
      c.text.mrope_section = rp.get_or<std::vector<int64_t>>("mrope_section", c.text.mrope_section);
      break;
    }
  }
  // tie_word_embeddings lives at the root in 5.x; pre-5 saves put it in text_config.
  c.text.tie_word_embeddings = top.get_or<bool>("tie_word_embeddings", false) ||
                               (top.has("text_config") && t.get_or<bool>("tie_word_embeddings", false));

  c.image_token_id = top.get_or<int64_t>("image_token_id", 151655);
  c.video_token_id = top.get_or<int64_t>("video_token_id", 151656);
  c.vision_start_token_id = top.get_or<int64_t>("vision_start_token_id", 151652);
  c.vision_end_token_id = top.get_or<int64_t>("vision_end_token_id", 151653);

  // --- consistency (the constraints of docs/design.md §8.3) ---
  auto fail = [&](const std::string& msg) { throw std::runtime_error(source + ": " + msg); };
  if (c.vision.num_heads <= 0 || c.vision.hidden_size % c.vision.num_heads != 0)
    fail("vision hidden_size " + std::to_string(c.vision.hidden_size) + " is not divisible by num_heads " +
         std::to_string(c.vision.num_heads));
  if (c.text.num_attention_heads <= 0 || c.text.hidden_size % c.text.num_attention_heads != 0)
    fail("text hidden_size is not divisible by num_attention_heads");
  if (c.text.num_key_value_heads <= 0 || c.text.num_attention_heads % c.text.num_key_value_heads != 0)
    fail("num_attention_heads " + std::to_string(c.text.num_attention_heads) +
         " is not a multiple of num_key_value_heads " + std::to_string(c.text.num_key_value_heads));
  const int64_t msum = std::accumulate(c.text.mrope_section.begin(), c.text.mrope_section.end(), int64_t{0});
  if (c.text.mrope_section.size() != 3 || 2 * msum != c.text.head_dim())
    fail("mrope_section must have 3 entries summing to head_dim/2 = " + std::to_string(c.text.head_dim() / 2) +
         ", got sum " + std::to_string(msum));
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("'" + path + "': cannot open config file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), path);
}

}  // namespace qvl
