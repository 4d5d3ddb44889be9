// Chained-run comparison (docs/design.md §6.2): two recordings of the same scenario, typically transformers'
// and qvl's own (RecordingWriter), aligned call by call on (module_path, call_index) in the reference's
// execution order. Errors accumulate here, so the first divergent call is the module to look at, and the
// per-block error shows how it grows.
#pragma once

#include <string>
#include <vector>

#include "instrument/recording.h"
#include "instrument/replay.h"
#include "functional/model.h"

namespace qvl {

struct CompareRow {
  CallHeader ref;             // the reference call
  bool present = false;       // found in `ours`
  std::vector<TensorCheck> tensors;
  bool pass = true;
  std::string why;            // first failing tensor's reason
  double max_rel = 0.0, min_pearson = 1.0;  // worst over the call's float outputs
};

struct CompareReport {
  std::vector<CompareRow> rows;
  int compared = 0, failed = 0, missing = 0;
  int first_divergent = -1;   // index into rows of the earliest-finishing failing call, -1 if none
};

// The chained run of the vision tower: takes pixel_values and grid_thw from `ref`'s vision tower call,
// runs vision::transformer on `root` (already in the recording's dtype) and writes every call to
// `out_path` in the qvl.recording schema. Returns the number of calls recorded.
size_t record_vision_chained(const Weights& root, const ModelConfig& cfg, const Recording& ref,
                             const std::string& out_path);

// The chained run of the whole model (Qwen2_5_VLForConditionalGeneration) from the recording's token ids
// and pixel values, recorded to `out_path`. Returns the number of calls recorded.
// If `ref` holds a recorded generate (--record-decode), the run goes on with our prefill and decode steps
// (model::prefill / decode_step, KV cache, our positions, masks and rope_deltas state), fed the token ids
// transformers fed at each step (teacher forcing: a token difference cannot hide a later divergence, and
// token identity is checked on its own), so every step compares module by module.
size_t record_model_chained(const Weights& root, const ModelConfig& cfg, const Recording& ref,
                            const std::string& out_path);

// The first divergent call: the earliest call to *finish* with a failing output. Calls are numbered in pre-order
// (a parent before its children, though it finishes after them), so it is the first failing call that has no
// failing descendant. `failing[i]` belongs to calls[i]; parents are CallHeader::parent (an index into calls).
// Returns -1 when nothing fails. One rule for `qvl compare`, `qvl check` and their HTML reports.
int first_divergent_call(const std::vector<CallHeader>& calls, const std::vector<bool>& failing);

// Judges `ours` against `ref` with the thresholds of the reference's dtype. bf16: ours and HF's bf16
// outputs against the reference's fp32 chain (outputs_fp32_chain: the fp32 model run end to end; older
// recordings without it fall back to the per-call outputs_fp32), ours at most 2x HF's own error.
CompareReport compare_recordings(const Recording& ref, const Recording& ours);

}  // namespace qvl
