// Isolated replay (docs/design.md §6.1): feed each recorded call's inputs to the matching functional/ function
// and judge its outputs against the recording with the thresholds table. A Registry maps a recorded
// module class (or free-function name) to a replay function; tests and researchers can swap entries to
// plant a bug or try a modified module.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "functional/config.h"
#include "functional/model.h"
#include "functional/text.h"
#include "functional/weights.h"
#include "instrument/metrics.h"
#include "instrument/recording.h"
#include "instrument/thresholds.h"

namespace qvl {

// `w` is the weights sub-tree at the call's module path (empty for free functions).
using ReplayFn = std::function<Value(const RecordedCall& call, const Weights& w, const ModelConfig& cfg)>;

class Registry {
 public:
  static Registry defaults();  // every module that has a functional/ implementation
  void set(const std::string& module_class, ReplayFn fn) { fns_[module_class] = std::move(fn); }
  const ReplayFn* find(const std::string& module_class) const;
  std::vector<std::string> classes() const;
  // Classes of transformers 4.49 that the pinned transformers no longer has (Qwen2_5_VisionRotaryEmbedding's
  // forward(seqlen), rot_pos_emb): only imported recordings hold them (qvl import module_io_data), so the golden
  // recordings cannot cover them; tests/golden/test_import_module_io.sh does.
  static const std::vector<std::string>& legacy_classes();

 private:
  std::map<std::string, ReplayFn> fns_;
};

struct TensorCheck {
  std::string name;           // "out", "out0", "out.last_hidden_state"
  Metrics vs_ref;             // ours vs the recorded (HF) output
  bool bf16_rule = false;     // judged by the bf16 ratio rule
  Metrics ours_vs_fp32;       // bf16 only
  Metrics hf_vs_fp32;         // bf16 only
  Judgement verdict;
};

// Judges every output tensor of one call: `ours` and `ref` are output dicts ({out} or {out0, out1, ...}),
// `fp32_floor` HF's float32 outputs for a bfloat16 recording (None otherwise). Integers exact; float32 by
// the fp32 rule; bfloat16 by the ratio rule against the floor. A missing output is a failure.
std::vector<TensorCheck> judge_outputs(const Value& ours, const Value& ref, const Value& fp32_floor,
                                       const std::string& dtype, const std::string& module_class);

struct CallResult {
  enum class Status { Pass, Fail, NoFunction, Error };
  CallHeader header;
  Status status = Status::NoFunction;
  std::vector<TensorCheck> tensors;
  std::string error;  // Error: what went wrong; Fail: the first failing tensor's reason
};

const char* status_name(CallResult::Status s);

// Outputs of a function as the recording stores them: a tuple becomes {out0, out1, ...}, else {out}.
Value as_outputs(const Value& v);

// The config transformers ran with: the recording's `config` attribute when present (it includes any
// overrides made at record time), else `fallback` (the weights file's config.json).
ModelConfig recording_config(const Recording& rec, const ModelConfig& fallback);

// What a replay of `rec` needs: its config (recording_config over the weights' own) and the weights cast
// to the recording's dtype, as transformers' from_pretrained(dtype=...) did. `cast` says whether a cast
// happened.
struct ReplayModel {
  Weights weights;
  ModelConfig config;
  bool cast = false;
};
ReplayModel replay_model(Weights weights, const ModelConfig& weights_config, const Recording& rec);
// The dtype the recording's module ran in (its `dtype` attribute): what floating weights are cast to.
at::ScalarType replay_dtype(const Recording& rec);

// The model inputs of a recording's top-level call (Qwen2_5_VLForConditionalGeneration, else
// Qwen2_5_VLModel): input_ids, attention_mask, mm_token_type_ids, pixel values and grids.
model::Inputs recorded_model_inputs(const Recording& rec);

// What transformers' generate produced when it recorded (the scenario attribute's `generation`): its options
// and its new tokens, one row per prompt.
struct RecordedGeneration {
  model::GenerateOptions options;  // max_new_tokens, eos_token_ids, pad_token_id as transformers used them
  std::vector<std::vector<int64_t>> new_tokens;
};
// nullopt when the recording carries no generation.
std::optional<RecordedGeneration> recorded_generation(const Recording& rec);
// "" when `ours` ([B, N] new tokens, generated with at most `our_max_new` of them) equals the recorded ones;
// else where they first differ. Lengths may differ only where the shorter side was cut by its token cap.
std::string token_mismatch(const at::Tensor& ours, int64_t our_max_new, const RecordedGeneration& want);

// `device`: where the call runs. Its recorded inputs are moved there (`root` must already be there: see
// to_device) and its outputs come back to the host to be judged. With cfg.vision.fused / cfg.text.fused
// the fused CUDA paths run (qvl check --device cuda).
CallResult replay_call(const Recording& rec, size_t index, const Weights& root, const ModelConfig& cfg,
                       const Registry& reg, const at::Device& device = at::Device(at::kCPU));

}  // namespace qvl
