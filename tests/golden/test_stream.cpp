// qvl check --stream against the plain replay: on every call of the committed recordings (and the real-size
// vision scenario when generated), the streamed tree (converter/convert.h: open_weights_streamed, each call
// loading only its module's weights) gives the same status and bit-identical metrics as the fully loaded,
// cast tree, from a qvl.weights file and from a checkpoint directory. qvl run --stream (the chained run, one
// layer loaded at a time) writes a recording that compares with the reference exactly as the plain run's does.
#include <gtest/gtest.h>

#include <filesystem>

#include "instrument/compare.h"

#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {
namespace fs = std::filesystem;

void expect_same_metrics(const Metrics& a, const Metrics& b, const std::string& what) {
  EXPECT_EQ(a.shape_ok, b.shape_ok) << what;
  EXPECT_EQ(a.shape_msg, b.shape_msg) << what;
  EXPECT_EQ(a.numel, b.numel) << what;
  EXPECT_EQ(a.mismatches, b.mismatches) << what;
  // Bit-identical numbers: the same function on the same weights (== on doubles, NaN never expected).
  EXPECT_EQ(a.pearson, b.pearson) << what;
  EXPECT_EQ(a.cosine, b.cosine) << what;
  EXPECT_EQ(a.nmse, b.nmse) << what;
  EXPECT_EQ(a.rmse, b.rmse) << what;
  EXPECT_EQ(a.max_abs, b.max_abs) << what;
  EXPECT_EQ(a.max_rel, b.max_rel) << what;
  EXPECT_EQ(a.min_row_cos, b.min_row_cos) << what;
  EXPECT_EQ(a.worst_index, b.worst_index) << what;
}

// Replays every call of `rec` with the plain and the streamed weights from `weights_path`; returns how many
// calls were compared (implemented modules only).
int compare_streamed(const std::string& recording, const std::string& weights_path) {
  Recording rec = Recording::open(recording);
  const ReplayModel plain = load_replay_model(weights_path, rec, /*stream=*/false);
  const ReplayModel streamed = load_replay_model(weights_path, rec, /*stream=*/true);
  EXPECT_TRUE(streamed.weights.is_lazy());
  EXPECT_EQ(plain.cast, streamed.cast);
  const Registry reg = Registry::defaults();
  int compared = 0;
  for (size_t i = 0; i < rec.calls().size(); ++i) {
    if (!reg.find(rec.calls()[i].module_class)) continue;
    const CallResult a = replay_call(rec, i, plain.weights, plain.config, reg);
    const CallResult b = replay_call(rec, i, streamed.weights, streamed.config, reg);
    const std::string what = recording + " " + describe(a) + "\nstreamed: " + describe(b);
    EXPECT_EQ(a.status, b.status) << what;
    EXPECT_EQ(a.error, b.error) << what;
    EXPECT_EQ(a.status, CallResult::Status::Pass) << what;  // every recorded call passes (README, Status)
    EXPECT_EQ(a.tensors.size(), b.tensors.size()) << what;
    for (size_t t = 0; t < std::min(a.tensors.size(), b.tensors.size()); ++t) {
      const TensorCheck &x = a.tensors[t], &y = b.tensors[t];
      EXPECT_EQ(x.name, y.name) << what;
      EXPECT_EQ(x.verdict.pass, y.verdict.pass) << what;
      EXPECT_EQ(x.verdict.why, y.verdict.why) << what;
      EXPECT_EQ(x.bf16_rule, y.bf16_rule) << what;
      expect_same_metrics(x.vs_ref, y.vs_ref, what + " (" + x.name + " vs ref)");
      expect_same_metrics(x.ours_vs_fp32, y.ours_vs_fp32, what + " (" + x.name + " vs fp32)");
      expect_same_metrics(x.hf_vs_fp32, y.hf_vs_fp32, what + " (" + x.name + " HF vs fp32)");
    }
    ++compared;
  }
  return compared;
}

TEST(Stream, TinyRecordingsFromTheWeightsFileMatchThePlainReplay) {
  for (const char* name : {"recordings/tiny_fp32.h5", "recordings/tiny_bf16.h5"}) {
    QVL_REQUIRE_FILE(data_path(name));
    QVL_REQUIRE_FILE(data_path("weights/tiny.h5"));
    EXPECT_GT(compare_streamed(data_path(name), data_path("weights/tiny.h5")), 40) << name;
  }
}

TEST(Stream, TinyRecordingsFromTheCheckpointDirectoryMatchThePlainReplay) {
  for (const char* name : {"recordings/tiny_fp32.h5", "recordings/tiny_bf16.h5"}) {
    QVL_REQUIRE_FILE(data_path(name));
    QVL_REQUIRE_FILE(data_path("weights/tiny/config.json"));
    EXPECT_GT(compare_streamed(data_path(name), data_path("weights/tiny")), 40) << name;
  }
}

// The chained run (qvl run model / run vision [--stream]) with plain and streamed weights: both recordings,
// compared with the reference, give the same rows, verdicts and bit-identical numbers.
void expect_same_chained_run(const std::string& recording, const std::string& weights_path, bool vision_only) {
  Recording ref = Recording::open(recording);
  TempDir tmp;
  const std::string out_plain = tmp.path() + "/plain.h5", out_streamed = tmp.path() + "/streamed.h5";
  const ReplayModel plain = load_replay_model(weights_path, ref, /*stream=*/false);
  const ReplayModel streamed = load_replay_model(weights_path, ref, /*stream=*/true);
  ASSERT_TRUE(streamed.weights.is_lazy());
  const auto record = vision_only ? record_vision_chained : record_model_chained;
  const size_t n_plain = record(plain.weights, plain.config, ref, out_plain);
  const size_t n_streamed = record(streamed.weights, streamed.config, ref, out_streamed);
  EXPECT_EQ(n_plain, n_streamed) << recording;
  EXPECT_GT(n_plain, 10u) << recording;
  const CompareReport a = compare_recordings(ref, Recording::open(out_plain));
  const CompareReport b = compare_recordings(ref, Recording::open(out_streamed));
  EXPECT_EQ(a.compared, b.compared) << recording;
  EXPECT_EQ(a.failed, b.failed) << recording;
  EXPECT_EQ(a.missing, b.missing) << recording;
  EXPECT_EQ(a.first_divergent, b.first_divergent) << recording;
  ASSERT_EQ(a.rows.size(), b.rows.size()) << recording;
  for (size_t r = 0; r < a.rows.size(); ++r) {
    const CompareRow &x = a.rows[r], &y = b.rows[r];
    const std::string what = recording + " " + x.ref.module_path;
    EXPECT_EQ(x.present, y.present) << what;
    EXPECT_EQ(x.pass, y.pass) << what;
    EXPECT_EQ(x.why, y.why) << what;
    EXPECT_EQ(x.max_rel, y.max_rel) << what;
    EXPECT_EQ(x.min_pearson, y.min_pearson) << what;
    ASSERT_EQ(x.tensors.size(), y.tensors.size()) << what;
    for (size_t t = 0; t < x.tensors.size(); ++t) {
      EXPECT_EQ(x.tensors[t].verdict.pass, y.tensors[t].verdict.pass) << what;
      expect_same_metrics(x.tensors[t].vs_ref, y.tensors[t].vs_ref, what + " " + x.tensors[t].name);
    }
  }
}

TEST(Stream, ChainedRunStreamedEqualsThePlainRun) {
  for (const char* name : {"recordings/tiny_fp32.h5", "recordings/tiny_bf16.h5"}) {
    QVL_REQUIRE_FILE(data_path(name));
    QVL_REQUIRE_FILE(data_path("weights/tiny.h5"));
    QVL_REQUIRE_FILE(data_path("weights/tiny/config.json"));
    expect_same_chained_run(data_path(name), data_path("weights/tiny.h5"), /*vision_only=*/false);
    expect_same_chained_run(data_path(name), data_path("weights/tiny"), /*vision_only=*/false);
    expect_same_chained_run(data_path(name), data_path("weights/tiny"), /*vision_only=*/true);
  }
}

TEST(Stream, RealSizeVisionBlocksMatchThePlainReplay) {
  const std::string dir = generated_recordings_dir();
  int files = 0;
  for (const char* name : {"vision_real_476x420_fp32.h5", "vision_real_476x420_bf16.h5"}) {
    const std::string path = dir + "/" + name;
    if (!fs::exists(path)) continue;
    Recording rec = Recording::open(path);
    EXPECT_GT(compare_streamed(path, weights_path_for(rec)), 10) << path;
    ++files;
  }
  if (files == 0) GTEST_SKIP() << "no generated vision_real recordings in " << dir << " (build target qvl_recordings)";
}

}  // namespace
}  // namespace qvl::testing
