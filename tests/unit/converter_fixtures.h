// Checkpoints for the converter tests, made from the committed tiny checkpoint (weights/tiny, written by
// transformers' save_pretrained): its tensors cast to a dtype, renamed to a key layout, tied or not, sharded
// with an index or not.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

namespace qvl::testing {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

std::string tiny_checkpoint_dir();  // weights/tiny

struct CheckpointSpec {
  std::string layout = "hub";  // "hub" or "runtime"
  at::ScalarType dtype = at::kFloat;
  bool tied = false;  // drop lm_head.weight and set tie_word_embeddings
  int shards = 1;     // > 1: model-0000i-of-0000N.safetensors + model.safetensors.index.json
};

// The tiny checkpoint's config.json text, with tie_word_embeddings set as asked.
std::string tiny_config_json(bool tied);

// Writes a checkpoint directory (created if needed) from the tiny weights; returns what it wrote, in
// checkpoint key names.
NamedTensors write_tiny_checkpoint(const std::string& dir, const CheckpointSpec& spec);

// Writes `tensors` as a checkpoint directory: config.json, and one shard or `shards` shards with an index.
void write_checkpoint(const std::string& dir, const NamedTensors& tensors, const std::string& config_json,
                      int shards);

// The raw bytes of a tensor (contiguous, on the CPU).
std::string tensor_bytes(const at::Tensor& t);

}  // namespace qvl::testing
