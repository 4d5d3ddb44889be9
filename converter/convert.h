// Hugging Face Qwen2.5-VL checkpoints (config.json + safetensors, single or sharded) <-> the nested weight
// tree (HDF5), keyed by the runtime module paths of the pinned transformers (docs/design.md §4).
//
// Key layouts accepted (docs/design.md §8.1), mapped to one canonical tree:
//   hub / transformers 5.x save_pretrained:  visual.X -> model.visual.X ; model.X -> model.language_model.X
//   transformers 4.52+ runtime layout:       model.visual.X, model.language_model.X (unchanged)
//   lm_head.weight                           unchanged; absent with tie_word_embeddings -> the embedding
// Keys dropped on purpose (listed in the report with the reason): the non-persistent rotary buffers
// (*.rotary_emb.inv_freq, *.rotary_pos_emb.inv_freq, *.original_inv_freq) some old saves carry.
// Any other key outside these layouts is an error naming the key and its shard.
//
// Before a byte of tensor data is read, every shard header is validated, the index (if any) is checked
// against the shards, and every shape is checked against config.json (converter/shapes.h).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "converter/safetensors.h"
#include "functional/config.h"
#include "functional/weights.h"
#include "instrument/replay.h"

namespace qvl {

struct Checkpoint {
  std::string dir;
  std::string config_json;                        // config.json text
  std::vector<std::string> shards;                // paths of the .safetensors files
  bool indexed = false;                           // model.safetensors.index.json present
  std::map<std::string, std::string> weight_map;  // index: checkpoint key -> shard file name
};

// Finds config.json and the shards: model.safetensors.index.json if present (every named shard must exist),
// else *.safetensors (files named like model-00002-of-00004.safetensors must form the complete set).
Checkpoint find_checkpoint(const std::string& dir);

// The canonical runtime path for a checkpoint key; `layout` receives "hub", "runtime" or "" (lm_head).
std::string canonical_key(const std::string& key, const std::string& shard, std::string* layout);
// The inverse: a canonical key written in `layout` ("hub" or "runtime").
std::string checkpoint_key(const std::string& canonical, const std::string& layout);
// Why a checkpoint key is dropped on purpose, or "" when it is kept.
std::string dropped_key_reason(const std::string& key);

// The tied-embedding rule: with tie_word_embeddings and no lm_head.weight, lm_head.weight is the embedding.
// Returns a note describing what was done ("" if nothing).
std::string resolve_tied_lm_head(Weights& w, const ModelConfig& cfg);

// A checkpoint with every shard mapped and validated (headers, index, key layout, shapes vs config.json);
// no tensor data read yet.
struct OpenCheckpoint {
  struct Tensor {
    std::string key;  // canonical
    size_t shard = 0;
    size_t entry = 0;  // index into files[shard].entries()
  };
  Checkpoint ck;
  ModelConfig cfg;
  std::vector<SafetensorsFile> files;  // one per shard
  std::vector<Tensor> tensors;         // shard order, then offset order
  std::string key_layout;              // "hub", "runtime" or "unknown"
  std::vector<std::string> notes;      // dropped keys with the reason, the tied lm_head
  uint64_t tensor_bytes = 0;           // sum of the kept tensors' bytes
  const SafetensorsEntry& entry(const Tensor& t) const { return files[t.shard].entries()[t.entry]; }
};
OpenCheckpoint open_checkpoint(const std::string& dir);

// Loads a checkpoint directory straight into a Weights tree (no conversion step), after open_checkpoint's
// checks; the tensors are copies (the files may change afterwards).
Weights load_checkpoint(const std::string& dir, ModelConfig* cfg = nullptr,
                        std::string* config_json = nullptr);

// A dtype for --dtype: "bf16"/"bfloat16", "f16"/"fp16"/"float16", "f32"/"fp32"/"float32".
at::ScalarType parse_cast_dtype(const std::string& name);
// The dtype written under --dtype: floating dtypes (FP8 included) become `dtype`, integer and bool stay.
at::ScalarType output_dtype(at::ScalarType stored, std::optional<at::ScalarType> dtype);
// The tensor as written under --dtype (output_dtype of its dtype).
at::Tensor cast_for_output(const at::Tensor& t, std::optional<at::ScalarType> dtype);

using ProgressFn = std::function<void(uint64_t done_bytes, uint64_t total_bytes)>;

struct ConvertOptions {
  int gzip_level = 0;                   // 0: none; 1-9: gzip + shuffle, ~1 MiB chunks
  std::optional<at::ScalarType> dtype;  // cast floating tensors
  bool durable = true;                  // fsync the file before renaming it into place
  ProgressFn progress;                  // called after each tensor; may throw to abort (nothing is left)
};

struct ConvertReport {
  int64_t tensors = 0;
  uint64_t bytes = 0;  // bytes read from the checkpoint
  std::string key_layout;
  std::vector<std::string> notes;
  std::vector<std::string> removed_temporaries;  // stale ones of killed runs, removed first
};

// Streams every tensor of `dir` into a qvl.weights HDF5 file at `out`: a temporary file next to it, renamed
// when complete. Tensor bytes go from the mapped shards into the file one HDF5 chunk (at most 16 MiB) at a
// time, each written with its Fletcher-32 checksum (h5::DatasetStream; cast chunk by chunk with a dtype),
// the pages dropped once written, while a second thread hashes each shard: the memory used does not grow
// with the tensors. With gzip (and for BOOL tensors, normalised to 0/1) a whole tensor goes through HDF5's
// filters instead: about the largest tensor more.
ConvertReport convert_checkpoint(const std::string& dir, const std::string& out,
                                 const ConvertOptions& opt = {});

struct ExportOptions {
  std::string layout;  // "hub", "runtime", or "" = the file's key_layout (hub if unknown)
  uint64_t max_shard_bytes = 5000000000ull;  // like save_pretrained's max_shard_size="5GB"
  std::optional<at::ScalarType> dtype;
  bool durable = true;
  ProgressFn progress;
};

struct ExportReport {
  int64_t tensors = 0;
  uint64_t bytes = 0;               // tensor bytes written
  std::vector<std::string> shards;  // file names
  std::string layout;
  std::vector<std::string> removed_temporaries;
};

// qvl.weights HDF5 -> a Hugging Face checkpoint directory `out_dir` (must not exist, or be empty), after
// checking every shape against the file's config (converter/shapes.h). Tensors stream chunk by chunk, each
// chunk's checksum verified (a damaged one is an h5::CorruptError naming the dataset), or 16 MiB at a time
// from files written before checksums; gzip'd and BOOL tensors are read whole. Writes
// config.json (from the file's config attribute), the shards (model.safetensors, or
// model-0000i-of-0000N.safetensors + model.safetensors.index.json past max_shard_bytes), metadata
// {"format": "pt"}. Written into a temporary directory next to `out_dir`, renamed when complete.
// A tied lm_head that the file does not hold is not written (as save_pretrained does).
ExportReport export_safetensors(const std::string& h5_path, const std::string& out_dir,
                                const ExportOptions& opt = {});

// A tensor stored in an HDF5 file, listed without reading its data.
struct StoredTensor {
  std::string path;   // dotted ("model.visual.blocks.0.attn.qkv.weight", "calls.000003.inputs.arg0")
  std::string dtype;  // the `dtype` attribute ("bfloat16"); "python int|float|bool" for a recorded scalar;
                      // "hdf5-int64"-like from the stored type when there is no attribute
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
};
std::vector<StoredTensor> list_h5_tensors(const std::string& path);

// Temporaries of an atomic write to `final_path` (h5::AtomicPath's ".<name>.tmp-<pid>" next to it) whose
// process no longer runs: a run killed by SIGKILL leaves one. Removes them and returns their paths.
bool is_temporary_of(const std::string& candidate, const std::string& final_path, long* pid = nullptr);
std::vector<std::string> remove_stale_temporaries(const std::string& final_path);

// Loads the weights for `qvl check` and friends: a qvl.weights .h5 file, or a checkpoint directory (checked
// as open_checkpoint does).
Weights load_weights_any(const std::string& path, ModelConfig* cfg, std::string* config_json = nullptr);

// ---- Streamed weights (qvl check --stream, qvl run --stream) -------------------------------------------
// A lazy tree (functional/weights.h) over a checkpoint directory or a qvl.weights file: the same paths as
// load_weights_any gives, with no tensor data read. Each tensor is read when a module asks for it, cast to
// `dtype` (floating tensors only, as cast_floating does) and owned by the caller; every decoder layer and
// vision block is a stream unit, so a forward pass holds one layer at a time.
//   - checkpoint directory: open_checkpoint's checks first (headers, index, layout, shapes); then a tensor is
//     copied (cast) from the memory-mapped shard 64 MiB at a time, dropping the mapped pages once copied, so
//     the resident set grows by the loaded tensor only. No conversion step. Before each read the shard is
//     checked against what was opened: a shard that has disappeared, was replaced or is truncated is one
//     error naming the shard and the key (a truncation racing the copy itself is not caught: SIGBUS).
//   - qvl.weights file: the tree is listed from the HDF5 metadata; a tensor is read (its dataset only) and
//     cast when asked for.
// A tied lm_head is a lazy leaf reading the embedding.
// The freed tensors return to the system only if the allocator does not keep them: with glibc, a process that
// streams should fix the mmap threshold (mallopt(M_MMAP_THRESHOLD, ...)), as the qvl tool does for --stream.
struct StreamedWeights {
  Weights weights;
  ModelConfig cfg;
  std::string config_json;
  bool cast = false;         // some floating tensor is stored in another dtype than `dtype`
  uint64_t stored_bytes = 0;
};
StreamedWeights open_weights_streamed(const std::string& path, std::optional<at::ScalarType> dtype);

// What a replay of `rec` needs from the weights at `path`: replay_model(load_weights_any(path)), or with
// `stream` the same config over open_weights_streamed(path, the recording's dtype).
ReplayModel load_replay_model(const std::string& path, const Recording& rec, bool stream);

}  // namespace qvl
