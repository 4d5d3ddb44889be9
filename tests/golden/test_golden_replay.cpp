// One test case per recorded call of an implemented module, for every recording in recordings/:
// Replay.MatchesRecording/<recording>_<call>_<module path>. The calls of a recorded generate (prefill and
// decode steps, --record-decode) are grouped: one case per step, DecodeStep.MatchesRecording/<recording>_step<k>,
// which replays every call of that step (each with the KV cache it was recorded with).
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

struct Case {
  std::string recording;  // empty: no recording found
  size_t index = 0;
  std::string name;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  Registry reg = Registry::defaults();
  for (const auto& path : recording_files()) {
    Recording rec = Recording::open(path);
    const std::string stem = std::filesystem::path(path).stem().string();
    for (size_t i = 0; i < rec.calls().size(); ++i) {
      const CallHeader& h = rec.calls()[i];
      if (!reg.find(h.module_class) || h.generate_step >= 0) continue;
      out.push_back({path, i, test_name(stem + "_" + h.group + "_" + h.module_path)});
    }
  }
  if (out.empty()) out.push_back({"", 0, "NoRecordings"});
  return out;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class Replay : public ::testing::TestWithParam<Case> {};

TEST_P(Replay, MatchesRecording) {
  const Case& c = GetParam();
  if (c.recording.empty()) GTEST_SKIP() << "no recordings in " << data_path("recordings") << " (run scripts/record.sh)";
  Recording rec = Recording::open(c.recording);
  const GoldenModel& m = model_for(rec);
  CallResult r = replay_call(rec, c.index, m.weights, m.config, Registry::defaults());
  EXPECT_EQ(r.status, CallResult::Status::Pass) << describe(r);
}

INSTANTIATE_TEST_SUITE_P(Golden, Replay, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

struct StepCase {
  std::string recording;  // empty: no recording holds a recorded generate
  int64_t step = 0;
  std::string name;
};

std::vector<StepCase> step_cases() {
  std::vector<StepCase> out;
  for (const auto& path : recording_files()) {
    Recording rec = Recording::open(path);
    int64_t last = -1;
    for (const auto& h : rec.calls()) last = std::max(last, h.generate_step);
    const std::string stem = test_name(std::filesystem::path(path).stem().string());
    for (int64_t k = 0; k <= last; ++k) out.push_back({path, k, stem + "_step" + std::to_string(k)});
  }
  if (out.empty()) out.push_back({"", 0, "NoRecordedGenerate"});
  return out;
}

void PrintTo(const StepCase& c, std::ostream* os) { *os << c.name; }

class DecodeStep : public ::testing::TestWithParam<StepCase> {};

TEST_P(DecodeStep, MatchesRecording) {
  const StepCase& c = GetParam();
  if (c.recording.empty())
    GTEST_SKIP() << "no recording in " << generated_recordings_dir() << " holds a recorded generate (built by the "
                 << "qvl_recordings target: scripts/record_scenarios.sh, --record-decode)";
  Recording rec = Recording::open(c.recording);
  const GoldenModel& m = model_for(rec);
  const Registry reg = Registry::defaults();
  int replayed = 0, cached = 0;
  std::set<std::string> classes;
  for (size_t i = 0; i < rec.calls().size(); ++i) {
    const CallHeader& h = rec.calls()[i];
    if (h.generate_step != c.step || !reg.find(h.module_class)) continue;
    CallResult r = replay_call(rec, i, m.weights, m.config, reg);
    EXPECT_EQ(r.status, CallResult::Status::Pass) << describe(r);
    ++replayed;
    classes.insert(h.module_class);
    cached += h.module_class == "Qwen2_5_VLAttention";
  }
  // The step ran the whole model: the top-level call, every decoder layer's attention (with its cache).
  EXPECT_TRUE(classes.count("Qwen2_5_VLForConditionalGeneration")) << "step " << c.step << " has no top-level call";
  EXPECT_EQ(cached, m.config.text.num_hidden_layers) << "step " << c.step << ": attention calls";
  std::printf("%s step %lld: %d calls replayed\n", c.recording.c_str(), static_cast<long long>(c.step), replayed);
}

INSTANTIATE_TEST_SUITE_P(Golden, DecodeStep, ::testing::ValuesIn(step_cases()),
                         [](const ::testing::TestParamInfo<StepCase>& i) { return i.param.name; });

// Every implemented module must actually be exercised by each recording, or a passing suite means little.
TEST(GoldenCoverage, EveryImplementedModuleIsRecorded) {
  auto files = recording_files();
  if (files.empty()) GTEST_SKIP() << "no recordings in " << data_path("recordings");
  Registry reg = Registry::defaults();
  for (const auto& path : files) {
    Recording rec = Recording::open(path);
    for (const auto& cls : reg.classes()) {
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
