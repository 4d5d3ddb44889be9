#include "tests/unit/converter_fixtures.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "converter/convert.h"
#include "converter/safetensors.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace fs = std::filesystem;

std::string tiny_checkpoint_dir() {
  return data_path("weights/tiny");
}

std::string tiny_config_json(bool tied) {
  std::ifstream in(tiny_checkpoint_dir() + "/config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str());
  j["tie_word_embeddings"] = tied;
  return j.dump(2);
}

std::string tensor_bytes(const at::Tensor& t_in) {
  at::Tensor t = t_in.contiguous();
  return std::string(static_cast<const char*>(t.data_ptr()), t.nbytes());
}

void write_checkpoint(const std::string& dir, const NamedTensors& tensors, const std::string& config_json,
                      int shards) {
  fs::create_directories(dir);
  {
    std::ofstream out(dir + "/config.json");
    out << config_json;
  }
  if (shards <= 1) {
    write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
    return;
  }
  nlohmann::json index;
  uint64_t total = 0;
  const size_t per = (tensors.size() + shards - 1) / shards;
  for (int s = 0; s < shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, shards);
    NamedTensors part;
    for (size_t i = s * per; i < std::min(tensors.size(), (s + 1) * per); ++i) {
      part.push_back(tensors[i]);
      index["weight_map"][tensors[i].first] = name;
      total += tensors[i].second.nbytes();
    }
    write_safetensors(dir + "/" + name, part, {{"format", "pt"}});
  }
  index["metadata"]["total_size"] = total;
  std::ofstream out(dir + "/model.safetensors.index.json");
  out << index.dump(2);
}

NamedTensors write_tiny_checkpoint(const std::string& dir, const CheckpointSpec& spec) {
  SafetensorsFile src = SafetensorsFile::open(tiny_checkpoint_dir() + "/model.safetensors");
  NamedTensors out;
  for (const auto& e : src.entries()) {
    if (spec.tied && e.name == "lm_head.weight") continue;
    std::string layout;
    const std::string canonical = canonical_key(e.name, "model.safetensors", &layout);
    out.emplace_back(checkpoint_key(canonical, spec.layout), src.read(e.name).to(spec.dtype));
  }
  write_checkpoint(dir, out, tiny_config_json(spec.tied), spec.shards);
  return out;
}

}  // namespace qvl::testing
