// Discovery of the committed transformers recordings and their weights, shared by the golden suites.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "converter/convert.h"
#include "instrument/recording.h"
#include "instrument/replay.h"

namespace qvl::testing {

// recordings/*.h5 (committed) and the build's generated recordings (QVL_GENERATED_RECORDINGS), sorted.
std::vector<std::string> recording_files();
std::string generated_recordings_dir();

// A gtest parameter name from any text: letters, digits and '_' only.
std::string test_name(std::string s);

// The weights a recording was made from: weights/<model_dir>.h5 (root attr model_dir), cast to the
// recording's dtype as transformers' from_pretrained(dtype=...) does. Cached per recording.
struct GoldenModel {
  Weights weights;
  ModelConfig config;
};
const GoldenModel& model_for(const Recording& rec);

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
