#include "converter/convert.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>

#include "converter/safetensors.h"
#include "converter/sha256.h"
#include "instrument/config_json.h"
#include "instrument/h5io.h"

namespace qvl {
namespace fs = std::filesystem;

namespace {
std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw std::runtime_error("'" + p.string() + "': cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
const char* kEmbed = "model.language_model.embed_tokens.weight";
}  // namespace

Checkpoint find_checkpoint(const std::string& dir) {
  Checkpoint ck;
  ck.dir = dir;
  if (!fs::is_directory(dir)) throw std::runtime_error("'" + dir + "': not a checkpoint directory");
  const fs::path cfg = fs::path(dir) / "config.json";
  if (!fs::exists(cfg)) throw std::runtime_error("'" + dir + "': no config.json");
  ck.config_json = read_text(cfg);
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text(index));
    } catch (const nlohmann::json::parse_error& e) {
      throw std::runtime_error("'" + index.string() + "': malformed JSON (" + e.what() + ")");
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object()) {
      throw std::runtime_error("'" + index.string() + "': no weight_map object");
    }
    std::set<std::string> files;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) throw std::runtime_error("'" + index.string() + "': weight_map['" + it.key() + "'] is not a file name");
      files.insert(it->get<std::string>());
    }
    for (const auto& f : files) {
      if (f.find('/') != std::string::npos || f == "..") {
        throw std::runtime_error("'" + index.string() + "': shard name '" + f + "' is not a plain file name");
      }
      const fs::path p = fs::path(dir) / f;
      if (!fs::exists(p)) throw std::runtime_error("'" + index.string() + "' names shard '" + f + "', which does not exist");
      ck.shards.push_back(p.string());
    }
  } else {
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") ck.shards.push_back(e.path().string());
    std::sort(ck.shards.begin(), ck.shards.end());
  }
  if (ck.shards.empty()) throw std::runtime_error("'" + dir + "': no .safetensors files");
  return ck;
}

std::string canonical_key(const std::string& key, const std::string& shard, std::string* layout) {
  std::string l, out;
  if (key == "lm_head.weight") {
    out = key;
  } else if (starts_with(key, "model.visual.") || starts_with(key, "model.language_model.")) {
    l = "runtime";
    out = key;
  } else if (starts_with(key, "visual.")) {
    l = "hub";
    out = "model." + key;
  } else if (starts_with(key, "model.")) {
    l = "hub";
    out = "model.language_model." + key.substr(6);
  } else {
    throw std::runtime_error("unmapped checkpoint key '" + key + "' in shard '" + shard +
                             "' (expected visual.*, model.*, model.visual.*, model.language_model.* or lm_head.weight)");
  }
  if (layout) *layout = l;
  return out;
}

std::string resolve_tied_lm_head(Weights& w, const ModelConfig& cfg) {
  if (w.has("lm_head.weight")) return "";
  if (!cfg.text.tie_word_embeddings) {
    throw std::runtime_error("missing key 'lm_head.weight' and tie_word_embeddings is false in " + cfg.source);
  }
  w.set("lm_head.weight", w.tensor(kEmbed));
  return "lm_head.weight absent: tied to model.language_model.embed_tokens.weight (tie_word_embeddings)";
}

namespace {
// Walks every tensor of a checkpoint with its canonical key; checks layouts are not mixed.
void for_each_tensor(const Checkpoint& ck, std::string* layout_out,
                     const std::function<void(const std::string&, const SafetensorsFile&, const SafetensorsEntry&)>& fn) {
  std::string layout;
  std::set<std::string> seen;
  for (const auto& shard : ck.shards) {
    SafetensorsFile f = SafetensorsFile::open(shard);
    for (const auto& e : f.entries()) {
      std::string l;
      const std::string key = canonical_key(e.name, shard, &l);
      if (!l.empty()) {
        if (layout.empty()) layout = l;
        if (layout != l) {
          throw std::runtime_error("'" + shard + "': key '" + e.name + "' is in the " + l +
                                   " layout but earlier keys are in the " + layout + " layout");
        }
      }
      if (!seen.insert(key).second) {
        throw std::runtime_error("'" + shard + "': key '" + e.name + "' maps to '" + key + "', which appeared before");
      }
      fn(key, f, e);
    }
  }
  if (layout_out) *layout_out = layout.empty() ? "unknown" : layout;
}
}  // namespace

Weights load_checkpoint(const std::string& dir, ModelConfig* cfg_out, std::string* config_json) {
  Checkpoint ck = find_checkpoint(dir);
  ModelConfig cfg = parse_model_config(ck.config_json, (fs::path(dir) / "config.json").string());
  Weights w;
  for_each_tensor(ck, nullptr, [&](const std::string& key, const SafetensorsFile& f, const SafetensorsEntry& e) {
    w.set(key, f.read(e.name));
  });
  resolve_tied_lm_head(w, cfg);
  if (cfg_out) *cfg_out = cfg;
  if (config_json) *config_json = ck.config_json;
  return w;
}

ConvertReport convert_checkpoint(const std::string& dir, const std::string& out, int gzip_level,
                                 const std::function<void(uint64_t, uint64_t)>& progress) {
  Checkpoint ck = find_checkpoint(dir);
  ModelConfig cfg = parse_model_config(ck.config_json, (fs::path(dir) / "config.json").string());
  ConvertReport rep;
  nlohmann::json source;
  source["checkpoint"] = fs::path(dir).filename().string().empty() ? fs::path(dir).parent_path().filename().string()
                                                                   : fs::path(dir).filename().string();
  uint64_t total = 0;
  for (const auto& s : ck.shards) {
    source["shards"].push_back({{"file", fs::path(s).filename().string()}, {"sha256", sha256_file(s)}});
    total += fs::file_size(s);
  }
  // Layout is known only after the walk; write it as an attribute at the end via a second writer pass is
  // not possible with a streaming writer, so peek at the first shard's keys first.
  std::string layout;
  {
    SafetensorsFile first = SafetensorsFile::open(ck.shards.front());
    for (const auto& e : first.entries()) {
      std::string l;
      canonical_key(e.name, ck.shards.front(), &l);
      if (!l.empty()) {
        layout = l;
        break;
      }
    }
  }
  h5::WeightsWriter w(out, {{"config", ck.config_json}, {"source", source.dump()},
                            {"key_layout", layout.empty() ? "unknown" : layout}},
                      gzip_level);
  bool has_lm_head = false;
  for_each_tensor(ck, &rep.key_layout, [&](const std::string& key, const SafetensorsFile& f, const SafetensorsEntry& e) {
    w.add(key, f.read(e.name));
    has_lm_head |= key == "lm_head.weight";
    rep.tensors += 1;
    rep.bytes += e.end - e.begin;
    if (progress) progress(rep.bytes, total);
  });
  if (!has_lm_head) {
    if (!cfg.text.tie_word_embeddings) {
      throw std::runtime_error("'" + dir + "': missing key 'lm_head.weight' and tie_word_embeddings is false");
    }
    rep.notes.push_back("lm_head.weight absent: tied to " + std::string(kEmbed) + " when loaded");
  }
  w.commit();
  return rep;
}

Weights load_weights_any(const std::string& path, ModelConfig* cfg, std::string* config_json) {
  if (fs::is_directory(path)) return load_checkpoint(path, cfg, config_json);
  h5::WeightsFile wf = h5::read_weights(path);
  ModelConfig c = parse_model_config(wf.config_json, path + ":config");
  resolve_tied_lm_head(wf.weights, c);
  if (cfg) *cfg = c;
  if (config_json) *config_json = wf.config_json;
  return wf.weights;
}

}  // namespace qvl
