// Greedy generation with a KV cache is token-identical to transformers' generate on every recording
// that carries transformers' generated tokens (scenario.generation).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "functional/text.h"
#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

TEST(Generate, TokenIdenticalToTransformersGenerate) {
  auto files = recording_files();
  if (files.empty()) GTEST_SKIP() << "no recordings";
  int checked = 0, longest = 0;
  for (const auto& path : files) {
    Recording rec = Recording::open(path);
    auto sc = nlohmann::json::parse(rec.attr("scenario"));
    if (!sc.contains("generation") || sc["generation"].is_null()) continue;
    const auto& gen = sc["generation"];
    const GoldenModel& m = model_for(rec);
    model::GenerateOptions opt;
    opt.max_new_tokens = gen["max_new_tokens"].get<int64_t>();
    opt.eos_token_ids = gen["eos_token_id"].get<std::vector<int64_t>>();
    if (gen["pad_token_id"].is_number()) opt.pad_token_id = gen["pad_token_id"].get<int64_t>();
    at::Tensor ours = model::generate(m.weights, recorded_model_inputs(rec), m.config, opt);
    auto want = gen["new_tokens"].get<std::vector<std::vector<int64_t>>>();
    ASSERT_EQ(ours.size(0), static_cast<int64_t>(want.size())) << path;
    for (size_t b = 0; b < want.size(); ++b) {
      ASSERT_EQ(ours.size(1), static_cast<int64_t>(want[b].size())) << path << " row " << b;
      for (size_t t = 0; t < want[b].size(); ++t)
        ASSERT_EQ(ours[b][t].item<int64_t>(), want[b][t]) << path << " row " << b << ": first differing token at step " << t;
      longest = std::max<int>(longest, want[b].size());
    }
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no recording carries generated tokens";
  EXPECT_GE(longest, 64) << "no scenario generated 64 tokens";
}

}  // namespace
}  // namespace qvl::testing

namespace qvl::testing {
namespace {

// First step at which our tokens differ from transformers' (or -1), for a generation driven by `step_positions`.
int first_difference(const std::string& path, const std::function<at::Tensor(const model::DecodeState&)>& step_positions) {
  Recording rec = Recording::open(path);
  auto gen = nlohmann::json::parse(rec.attr("scenario"))["generation"];
  auto want = gen["new_tokens"].get<std::vector<std::vector<int64_t>>>();
  const GoldenModel& m = model_for(rec);
  model::DecodeState s = model::prefill(m.weights, recorded_model_inputs(rec), m.config);
  for (size_t t = 0; t < want[0].size(); ++t) {
    at::Tensor next = s.logits.argmax(-1);
    for (size_t b = 0; b < want.size(); ++b)
      if (next[b].item<int64_t>() != want[b][t]) return static_cast<int>(t);
    model::decode_step(m.weights, s, next, m.config, step_positions(s));
  }
  return -1;
}

TEST(PlantedBug, DecodeStepIgnoringRopeDeltasDiverges) {
  const std::string path = data_path("recordings/tiny_fp32.h5");
  QVL_REQUIRE_FILE(path);
  // Control: the correct positions (previous + 1) reproduce all 64 tokens.
  EXPECT_EQ(first_difference(path, [](const model::DecodeState&) { return at::Tensor(); }), -1);
  // The bug: decode positions = the absolute token index (past length) on all rows, i.e. without the
  // rope_deltas that M-RoPE's compressed image positions introduce (-8 here).
  int diff = first_difference(path, [](const model::DecodeState& s) {
    const int64_t B = s.attention_mask.size(0), n = s.cache.length();
    return at::full({3, B, 1}, n, at::kLong);
  });
  EXPECT_GE(diff, 0) << "generation ignoring rope_deltas still matched all 64 tokens";
  std::printf("ignoring rope_deltas: first differing token at step %d of 64\n", diff);
}

TEST(PlantedBug, IgnoredPaddingMaskFails) {
  const std::string path = generated_recordings_dir() + "/tiny_padded_batch_fp32.h5";
  QVL_REQUIRE_FILE(path);
  // The text model run without the 2-D padding mask (causal only): the left-padded row attends to padding.
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    at::Tensor h = text::text_model(w, c.input("inputs_embeds").as_tensor(), at::Tensor(),
                                    c.input("position_ids").as_tensor(), cfg.text);
    return Value::dict({{"last_hidden_state", Value::of(h)}});
  };
  expect_all_fail(path, "Qwen2_5_VLTextModel", bug);
}

}  // namespace
}  // namespace qvl::testing
