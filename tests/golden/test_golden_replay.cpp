// The per-call golden suites, one test (one ctest entry, one process) per recording, so that the weights are
// loaded once and every call of the recording is replayed in a loop:
//  - Golden/Replay.MatchesRecording/<recording> replays every recorded call of an implemented module of the
//    forward pass;
//  - Golden/DecodeStep.MatchesRecording/<recording> replays every call of every step of a recorded generate
//    (prefill and decode steps, --record-decode), each with the KV cache it was recorded with.
// A call that does not pass is reported with ADD_FAILURE (its call group, module path, the failing metric and
// its limit, the worst index and (ours, ref) pairs) and the loop goes on; the test fails if any call failed,
// and prints one summary line. QVL_ONLY=CLASS[,CLASS] replays only those classes' calls (golden_support.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

struct Case {
  std::string recording;  // empty: no recording found
  std::string name;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> cases(bool (*wanted)(const RecordingInfo&), const std::string& none) {
  std::vector<Case> out;
  for (const auto& info : recording_index())
    if (wanted(info)) out.push_back({info.path, info.name});
  if (out.empty()) out.push_back({"", none});
  return out;
}

std::string case_name(const ::testing::TestParamInfo<Case>& i) { return i.param.name; }

class Replay : public ::testing::TestWithParam<Case> {};

TEST_P(Replay, MatchesRecording) {
  const Case& c = GetParam();
  if (c.recording.empty()) GTEST_SKIP() << "no recordings in " << data_path("recordings") << " (run scripts/record.sh)";
  Recording rec = Recording::open(c.recording);
  const GoldenModel& m = model_for(rec);
  const Registry reg = Registry::defaults();
  CallTally tally(c.name);
  int without_function = 0;
  for (size_t i = 0; i < rec.calls().size(); ++i) {
    const CallHeader& h = rec.calls()[i];
    if (h.generate_step >= 0 || !selected(h)) continue;
    if (!reg.find(h.module_class)) {
      ++without_function;
      continue;
    }
    tally.check(replay_call(rec, i, m.weights, m.config, reg));
  }
  if (tally.checked == 0 && !only_classes().empty())
    GTEST_SKIP() << c.recording << ": no forward-pass call of the QVL_ONLY classes";
  EXPECT_GT(tally.checked, 0) << c.recording << ": no call of an implemented module";
  tally.summary("(" + std::to_string(without_function) + " without a function yet)");
}

INSTANTIATE_TEST_SUITE_P(Golden, Replay,
                         ::testing::ValuesIn(cases([](const RecordingInfo&) { return true; }, "NoRecordings")),
                         case_name);

class DecodeStep : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeStep, MatchesRecording) {
  const Case& c = GetParam();
  if (c.recording.empty())
    GTEST_SKIP() << "no recording in " << generated_recordings_dir() << " holds a recorded generate (built by the "
                 << "qvl_recordings target: scripts/record_scenarios.sh, --record-decode)";
  Recording rec = Recording::open(c.recording);
  const GoldenModel& m = model_for(rec);
  const Registry reg = Registry::defaults();
  CallTally tally(c.name);
  int64_t last = -1;
  for (const auto& h : rec.calls()) last = std::max(last, h.generate_step);
  ASSERT_GE(last, 0) << c.recording << ": no recorded generate step";
  for (int64_t step = 0; step <= last; ++step) {
    int cached = 0;
    std::set<std::string> classes;
    for (size_t i = 0; i < rec.calls().size(); ++i) {
      const CallHeader& h = rec.calls()[i];
      if (h.generate_step != step || !reg.find(h.module_class)) continue;
      classes.insert(h.module_class);
      cached += h.module_class == "Qwen2_5_VLAttention";
      if (!selected(h)) continue;
      tally.check(replay_call(rec, i, m.weights, m.config, reg), "step " + std::to_string(step));
    }
    // Each step ran the whole model: the top-level call, every decoder layer's attention (with its cache).
    EXPECT_TRUE(classes.count("Qwen2_5_VLForConditionalGeneration"))
        << c.recording << ": step " << step << " has no top-level call";
    EXPECT_EQ(cached, m.config.text.num_hidden_layers) << c.recording << ": step " << step << ": attention calls";
  }
  if (tally.checked == 0 && !only_classes().empty())
    GTEST_SKIP() << c.recording << ": no generate-step call of the QVL_ONLY classes";
  tally.summary("over " + std::to_string(last + 1) + " generate steps (prefill + " + std::to_string(last) +
                " decode steps)");
}

INSTANTIATE_TEST_SUITE_P(Golden, DecodeStep,
                         ::testing::ValuesIn(cases([](const RecordingInfo& i) { return i.has_generate; },
                                                   "NoRecordedGenerate")),
                         case_name);

// Every implemented module must actually be exercised by each recording, or a passing suite means little.
TEST(GoldenCoverage, EveryImplementedModuleIsRecorded) {
  auto files = recording_files();
  if (files.empty()) GTEST_SKIP() << "no recordings in " << data_path("recordings");
  Registry reg = Registry::defaults();
  for (const auto& path : files) {
    Recording rec = Recording::open(path);
    for (const auto& cls : reg.classes()) {
      const auto& legacy = Registry::legacy_classes();
      if (std::find(legacy.begin(), legacy.end(), cls) != legacy.end()) continue;  // import test covers them
      int n = 0;
      for (const auto& h : rec.calls()) n += h.module_class == cls;
      EXPECT_GT(n, 0) << path << " has no call of " << cls;
    }
  }
}

TEST(GoldenCoverage, RecordingsCarryTheirProvenance) {
  auto files = recording_files();
  if (files.empty()) GTEST_SKIP() << "no recordings in " << data_path("recordings");
  for (const auto& path : files) {
    Recording rec = Recording::open(path);
    EXPECT_EQ(rec.attr("producer").rfind("transformers ", 0), 0u) << path;  // golden truth is transformers
    EXPECT_EQ(rec.attr("attn_implementation"), "eager") << path;
    EXPECT_FALSE(rec.attr("torch_version").empty()) << path;
    if (rec.attr("dtype") == "bfloat16") {
      // Every float output of a bf16 recording carries HF's float32 output for the noise floor.
      RecordedCall c = rec.load(rec.calls().size() - 1);
      EXPECT_FALSE(c.outputs_fp32.is_none()) << path;
    }
  }
}

}  // namespace
}  // namespace qvl::testing
