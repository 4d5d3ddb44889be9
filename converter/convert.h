// Hugging Face Qwen2.5-VL checkpoints (config.json + safetensors, single or sharded) -> the nested weight
// tree, keyed by the runtime module paths of the pinned transformers (DESIGN.md §4).
//
// Key layouts accepted (reference notes §2.2-2.3), mapped to one canonical tree:
//   hub / transformers 5.x save_pretrained:  visual.X -> model.visual.X ; model.X -> model.language_model.X
//   transformers 4.52+ runtime layout:       model.visual.X, model.language_model.X (unchanged)
//   lm_head.weight                           unchanged; absent with tie_word_embeddings -> the embedding
// Any other key is an error naming the key and its shard.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "functional/config.h"
#include "functional/weights.h"

namespace qvl {

struct Checkpoint {
  std::string dir;
  std::string config_json;          // config.json text
  std::vector<std::string> shards;  // paths of the .safetensors files
};

// Finds config.json and the shards (model.safetensors.index.json if present, else *.safetensors).
Checkpoint find_checkpoint(const std::string& dir);

// The canonical runtime path for a checkpoint key; `layout` receives "hub" or "runtime".
std::string canonical_key(const std::string& key, const std::string& shard, std::string* layout);

// The tied-embedding rule: with tie_word_embeddings and no lm_head.weight, lm_head.weight is the embedding.
// Returns a note describing what was done ("" if nothing).
std::string resolve_tied_lm_head(Weights& w, const ModelConfig& cfg);

// Loads a checkpoint directory straight into a Weights tree (no conversion step).
Weights load_checkpoint(const std::string& dir, ModelConfig* cfg = nullptr, std::string* config_json = nullptr);

struct ConvertReport {
  int64_t tensors = 0;
  uint64_t bytes = 0;
  std::string key_layout;
  std::vector<std::string> notes;
};

// Streams every tensor of `dir` into a qvl.weights HDF5 file at `out` (temporary file, renamed when
// complete). `progress(done_bytes, total_bytes)` is called after each tensor if given.
ConvertReport convert_checkpoint(const std::string& dir, const std::string& out, int gzip_level = 0,
                                 const std::function<void(uint64_t, uint64_t)>& progress = {});

// Loads the weights for `qvl check` and friends: a qvl.weights .h5 file, or a checkpoint directory.
Weights load_weights_any(const std::string& path, ModelConfig* cfg, std::string* config_json = nullptr);

}  // namespace qvl
