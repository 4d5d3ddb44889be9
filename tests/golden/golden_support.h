// Discovery of the committed transformers recordings and their weights, shared by the golden suites.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "converter/convert.h"
#include "instrument/recording.h"
#include "instrument/replay.h"
#include "functional/model.h"

namespace qvl::testing {

// recordings/*.h5 (committed) and the build's generated recordings (QVL_GENERATED_RECORDINGS), sorted.
std::vector<std::string> recording_files();
std::string generated_recordings_dir();

// A gtest parameter name from any text: letters, digits and '_' only.
std::string test_name(std::string s);

// What the per-recording suites need to know of each recording, read once per process (opening a recording
// reads the header of every call): the test name (the file stem), whether it holds a recorded generate
// (settings.generate_step, --record-decode) and text decoder calls. A recording that cannot be opened is
// listed with both set, so that each suite's test for it opens it and fails with the reason.
struct RecordingInfo {
  std::string path, name;
  bool has_generate = false;
  bool has_text = false;
};
const std::vector<RecordingInfo>& recording_index();

// QVL_ONLY=CLASS[,CLASS...] (environment) restricts the per-call golden suites (Golden/Replay, Golden/DecodeStep,
// Golden/FastPath) to the calls of those module classes, to run one module's calls alone. Unset: every call.
const std::set<std::string>& only_classes();
bool selected(const CallHeader& h);

// The running tally of a per-recording suite. check() reports a call that did not pass with ADD_FAILURE
// (its call, module path, the failing metric with its limit, the worst index and (ours, ref) pairs: see
// describe) and goes on; summary() prints one line, "tiny_fp32: 42 calls checked, 0 failed".
struct CallTally {
  std::string name;
  int checked = 0, failed = 0;
  std::vector<std::string> failures;  // "group module_path" of each failed call
  explicit CallTally(std::string n) : name(std::move(n)) {}
  bool check(const CallResult& r, const std::string& context = "");
  void summary(const std::string& extra = "") const;
};

// The weights a recording was made from: weights/<model_dir>.h5 (root attr model_dir), cast to the
// recording's dtype as transformers' from_pretrained(dtype=...) does. The loaded weights are cached per
// file and the cast per (file, dtype), so a process loads each model once; the config is the recording's.
struct GoldenModel {
  Weights weights;
  ModelConfig config;
};
const GoldenModel& model_for(const Recording& rec);
// The weights file or checkpoint directory model_for loads (error if none exists).
std::string weights_path_for(const Recording& rec);

// Replays every call of `rec` whose class `reg` implements; returns the results.
std::vector<CallResult> replay_all(const Recording& rec, const Registry& reg, const std::string& only_class = "");

std::string describe(const CallResult& r);

// Whether `rec` carries transformers' generated tokens (scenario.generation).
bool has_generation(const Recording& rec);
// Runs model::generate on `rec`'s inputs with the settings transformers' generate used (max_new_tokens, eos,
// pad) and compares our tokens with transformers' exactly. Returns "" when identical, else where they first
// differ. `longest`: set to the number of tokens per row transformers generated.
std::string generate_mismatch(const Recording& rec, const Weights& w, const ModelConfig& cfg, int64_t* longest = nullptr);

// Planted-bug check: every call of `cls` passes with the default registry, and FAILS (not errors, not
// passes) with `bug` in its place.
void expect_all_fail(const std::string& recording, const std::string& cls, ReplayFn bug);  // metrics of every tensor, for failure messages

}  // namespace qvl::testing
