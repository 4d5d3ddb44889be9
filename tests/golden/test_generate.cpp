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
