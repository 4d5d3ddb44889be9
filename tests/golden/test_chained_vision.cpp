// Chained run (docs/design.md §6.2): the functional vision tower from pixel_values alone, recorded from C++,
// compared call by call with the transformers recording.
#include <gtest/gtest.h>

#include <set>

#include "instrument/compare.h"
#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

bool has_vision_tower(const Recording& rec) {
  for (const auto& h : rec.calls())
    if (h.module_class == "Qwen2_5_VisionTransformerPretrainedModel") return true;
  return false;
}

using ChainFn = size_t (*)(const Weights&, const ModelConfig&, const Recording&, const std::string&);

// Runs `chain` on every recording that `wanted` accepts and expects it to match transformers call by
// call; `all_calls` also requires every reference call to be made (the full model, not just the tower).
void expect_chains_match(ChainFn chain, bool (*wanted)(const Recording&), bool all_calls) {
  auto files = recording_files();
  if (files.empty()) GTEST_SKIP() << "no recordings";
  int runs = 0;
  for (const auto& path : files) {
    Recording ref = Recording::open(path);
    if (!wanted(ref)) continue;
    const GoldenModel& m = model_for(ref);
    TempDir d;
    const size_t n = chain(m.weights, m.config, ref, d.file("ours.h5"));
    CompareReport rep = compare_recordings(ref, Recording::open(d.file("ours.h5")));
    EXPECT_EQ(static_cast<size_t>(rep.compared), n) << path << ": every call we recorded is in the reference";
    if (all_calls) EXPECT_EQ(rep.missing, 0) << path << ": reference calls the chained run did not make";
    EXPECT_EQ(rep.failed, 0) << path << ": first divergence at "
                             << (rep.first_divergent >= 0 ? rep.rows[rep.first_divergent].ref.module_path + ": " +
                                                                rep.rows[rep.first_divergent].why
                                                          : "");
    ++runs;
  }
  EXPECT_GT(runs, 0);
}

TEST(ChainedRun, VisionTowerMatchesTransformersCallByCall) {
  expect_chains_match(record_vision_chained, has_vision_tower, /*all_calls=*/false);
}

TEST(ChainedRun, FirstDivergenceIsThePlantedModule) {
  const std::string path = data_path("recordings/tiny_fp32.h5");
  QVL_REQUIRE_FILE(path);
  Recording ref = Recording::open(path);
  const GoldenModel& m = model_for(ref);
  Weights w = cast_floating(m.weights, at::kFloat);  // a copy we may modify
  const std::string key = "model.visual.blocks.2.mlp.down_proj.bias";
  w.set(key, w.tensor(key) * 1.05);
  TempDir d;
  record_vision_chained(w, m.config, ref, d.file("ours.h5"));
  CompareReport rep = compare_recordings(ref, Recording::open(d.file("ours.h5")));
  ASSERT_GE(rep.first_divergent, 0) << "the planted change went unnoticed";
  EXPECT_EQ(rep.rows[rep.first_divergent].ref.module_path, "model.visual.blocks.2.mlp");
  // Every call that finished before it still matches (its ancestors start earlier but finish later),
  // and the error grows from block 2 to block 3.
  std::set<int64_t> ancestors;
  for (int64_t p = rep.rows[rep.first_divergent].ref.parent; p >= 0; p = rep.rows[p].ref.parent) ancestors.insert(p);
  double block2 = -1, block3 = -1;
  for (int i = 0; i < rep.first_divergent; ++i)
    if (rep.rows[i].present && !ancestors.count(i)) EXPECT_TRUE(rep.rows[i].pass) << rep.rows[i].ref.module_path;
  for (const auto& r : rep.rows) {
    if (r.ref.module_path == "model.visual.blocks.2") block2 = r.max_rel;
    if (r.ref.module_path == "model.visual.blocks.3") block3 = r.max_rel;
  }
  EXPECT_GT(block2, 0.0);
  EXPECT_GT(block3, block2);
}


TEST(ChainedRun, FullModelMatchesTransformersCallByCall) {
  expect_chains_match(record_model_chained, [](const Recording&) { return true; }, /*all_calls=*/true);
}

TEST(ChainedRun, FirstDivergenceInTheDecoderIsThePlantedLayer) {
  const std::string path = data_path("recordings/tiny_fp32.h5");
  QVL_REQUIRE_FILE(path);
  Recording ref = Recording::open(path);
  const GoldenModel& m = model_for(ref);
  Weights w = cast_floating(m.weights, at::kFloat);
  const std::string key = "model.language_model.layers.1.post_attention_layernorm.weight";
  w.set(key, w.tensor(key) * 1.02);
  TempDir d;
  record_model_chained(w, m.config, ref, d.file("ours.h5"));
  CompareReport rep = compare_recordings(ref, Recording::open(d.file("ours.h5")));
  ASSERT_GE(rep.first_divergent, 0);
  EXPECT_EQ(rep.rows[rep.first_divergent].ref.module_path, "model.language_model.layers.1.post_attention_layernorm");
  for (const auto& r : rep.rows)
    if (r.ref.module_path.rfind("model.visual", 0) == 0 || r.ref.module_path == "model.language_model.layers.0")
      EXPECT_TRUE(r.pass) << r.ref.module_path << " runs before the planted change";
}

}  // namespace
}  // namespace qvl::testing
