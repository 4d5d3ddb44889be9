// The text fast path (TextConfig::fast, functional/text_fast.cpp) against transformers itself, not only against
// the plain path: FastPath.MatchesRecording/<recording> replays, with the fast path on, every recorded call of
// the text MLPs, the decoder layers, the text model, the model and the top level, the prefill and every
// recorded decode step (each with the KV cache it was recorded with), judged by the same thresholds table as
// the plain replay. One test per recording, looping over its calls (failures reported per call, one summary
// line; QVL_ONLY=CLASS[,CLASS] narrows it, see golden_support.h). Float32 recordings run it with MKL's packed GEMMs too (fast_packed) where this LibTorch has
// them; bfloat16 ones without (the packed GEMM is float32 only).
//
// Left out: the Qwen2_5_VLAttention calls by themselves. The fast attention never forms the attention weights
// that transformers' eager attention returns as its second output (it returns None); its first output is
// checked inside every decoder-layer call.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>

#include "functional/packed_gemm.h"
#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

const std::set<std::string> kFastClasses = {"Qwen2MLP", "Qwen2_5_VLDecoderLayer", "Qwen2_5_VLTextModel",
                                            "Qwen2_5_VLModel", "Qwen2_5_VLForConditionalGeneration"};

struct FastCase {
  std::string recording;  // empty: no recordings
  std::string name;
};

std::vector<FastCase> fast_cases() {
  std::vector<FastCase> out;
  for (const auto& info : recording_index())
    if (info.has_text) out.push_back({info.path, info.name});  // a vision-only recording has nothing for it
  if (out.empty()) out.push_back({"", "NoRecordingsWithTextCalls"});
  return out;
}

void PrintTo(const FastCase& c, std::ostream* os) { *os << c.name; }

class FastPath : public ::testing::TestWithParam<FastCase> {};

TEST_P(FastPath, MatchesRecording) {
  const FastCase& c = GetParam();
  if (c.recording.empty())
    GTEST_SKIP() << "no recording with text decoder calls in " << data_path("recordings") << " or "
                 << generated_recordings_dir() << " (run scripts/record.sh)";
  Recording rec = Recording::open(c.recording);
  const GoldenModel& m = model_for(rec);
  const bool float32 = rec.attr("dtype") == "float32";
  std::vector<bool> packs{false};
  if (float32 && packed::available()) packs.push_back(true);
  const Registry reg = Registry::defaults();
  for (bool pack : packs) {
    SCOPED_TRACE(pack ? "fast + packed GEMMs" : "fast");
    const Weights fused = text::fuse_projections(m.weights, pack);
    ModelConfig cfg = m.config;
    cfg.text.fast = true;
    cfg.text.fast_packed = pack;
    std::map<std::string, int> replayed;
    CallTally tally(c.name + (pack ? " (fast+packed)" : " (fast)"));
    for (size_t i = 0; i < rec.calls().size(); ++i) {
      const CallHeader& h = rec.calls()[i];
      if (!kFastClasses.count(h.module_class) || !reg.find(h.module_class) || !selected(h)) continue;
      tally.check(replay_call(rec, i, fused, cfg, reg));
      ++replayed[h.module_class];
    }
    if (tally.checked == 0 && !only_classes().empty())
      GTEST_SKIP() << "QVL_ONLY names none of the fast path's classes (Qwen2MLP, Qwen2_5_VLDecoderLayer and up)";
    if (only_classes().empty()) {
      // Each recording runs the language model: at least one call of every decoder layer went through the fast path.
      EXPECT_GE(replayed["Qwen2_5_VLDecoderLayer"], m.config.text.num_hidden_layers) << c.recording;
      EXPECT_GE(replayed["Qwen2MLP"], m.config.text.num_hidden_layers) << c.recording;
    }
    std::string by_class;
    for (const auto& [cls, n] : replayed) by_class += (by_class.empty() ? "(" : ", ") + cls + " " + std::to_string(n);
    tally.summary(by_class.empty() ? "" : by_class + ")");
  }
}

// Greedy generation on the fast path gives transformers' generate tokens, on every recording that carries them.
TEST(FastPath, GenerateTokenIdenticalToTransformers) {
  int checked = 0;
  for (const auto& path : recording_files()) {
    Recording rec = Recording::open(path);
    if (!has_generation(rec)) continue;
    const GoldenModel& m = model_for(rec);
    const bool pack = rec.attr("dtype") == "float32" && packed::available();
    ModelConfig cfg = m.config;
    cfg.text.fast = true;
    cfg.text.fast_packed = pack;
    EXPECT_EQ(generate_mismatch(rec, text::fuse_projections(m.weights, pack), cfg), "")
        << path << (pack ? " (fast + packed GEMMs)" : " (fast)");
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no recording carries transformers' generated tokens";
}

INSTANTIATE_TEST_SUITE_P(Golden, FastPath, ::testing::ValuesIn(fast_cases()),
                         [](const ::testing::TestParamInfo<FastCase>& i) { return i.param.name; });

}  // namespace
}  // namespace qvl::testing
