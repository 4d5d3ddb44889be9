// Planted bugs: each swaps one module of the replay registry for a subtly wrong version (the kind other
// ports shipped, docs/design.md §8.5) and shows that the harness FAILS every recorded call of it.
#include <gtest/gtest.h>

#include "functional/mlp.h"
#include "functional/norm.h"
#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

const std::string kFp32 = data_path("recordings/tiny_fp32.h5");
const std::string kBf16 = data_path("recordings/tiny_bf16.h5");


TEST(PlantedBugModules, MergerWithoutBiasesFails) {
  QVL_REQUIRE_FILE(kFp32);
  // The tt-metal functional merger called F.linear without mlp.0.bias and mlp.2.bias.
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    at::Tensor x = c.input("x", 0).as_tensor();
    at::Tensor h = rms_norm(w.at("ln_q"), x, 1e-6).view({-1, cfg.vision.hidden_size * 4});
    h = at::gelu(at::linear(h, w.tensor("mlp.0.weight")));
    return Value::of(at::linear(h, w.tensor("mlp.2.weight")));
  };
  expect_all_fail(kFp32, "Qwen2_5_VLPatchMerger", bug);
}

TEST(PlantedBugModules, RmsNormWithOnePlusWeightFails) {
  QVL_REQUIRE_FILE(kFp32);
  // Gemma-style (1 + weight) scaling carried over from another port.
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    at::Tensor x = c.input("hidden_states", 0).as_tensor();
    at::Tensor h = x.to(at::kFloat);
    h = h * at::rsqrt(h.pow(2).mean(-1, true) + cfg.text.rms_norm_eps);
    return Value::of((1 + w.tensor("weight")) * h.to(x.scalar_type()));
  };
  expect_all_fail(kFp32, "Qwen2_5_VLRMSNorm", bug);
}

TEST(PlantedBugModules, RmsNormWithWrongEpsIsCaughtByTheConfigCrossCheck) {
  QVL_REQUIRE_FILE(kFp32);
  // Text norms with HF's class default eps 1e-5 instead of the config's 1e-6: the values differ by far
  // less than float32 rounding at these activations, so the value check alone cannot see it; the recorded
  // eps is cross-checked against the one the replay uses instead (Registry::defaults, norm_eps).
  Recording rec = Recording::open(kFp32);
  const GoldenModel& m = model_for(rec);
  ModelConfig wrong = m.config;
  wrong.text.rms_norm_eps = 1e-5;
  int errors = 0, text_norms = 0;
  for (size_t i = 0; i < rec.calls().size(); ++i) {
    const CallHeader& h = rec.calls()[i];
    if (h.module_class != "Qwen2_5_VLRMSNorm" || h.module_path.find("language_model") == std::string::npos) continue;
    ++text_norms;
    CallResult r = replay_call(rec, i, m.weights, wrong, Registry::defaults());
    errors += r.status == CallResult::Status::Error && r.error.find("RMSNorm eps") != std::string::npos;
  }
  EXPECT_GT(text_norms, 0);
  EXPECT_EQ(errors, text_norms);
}

TEST(PlantedBugModules, VisionMlpWithoutBiasFails) {
  QVL_REQUIRE_FILE(kFp32);
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    return Value::of(gated_mlp(w, c.input("hidden_state", 0).as_tensor(), cfg.vision.intermediate_size,
                               cfg.vision.hidden_act, /*bias=*/false));
  };
  expect_all_fail(kFp32, "Qwen2_5_VLMLP", bug);
}

TEST(PlantedBugModules, TextMlpWithWrongActivationFails) {
  QVL_REQUIRE_FILE(kFp32);
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    return Value::of(gated_mlp(w, c.input("x", 0).as_tensor(), cfg.text.intermediate_size, "gelu", false));
  };
  expect_all_fail(kFp32, "Qwen2MLP", bug);
}

TEST(PlantedBugModules, PatchEmbedWithPatchColumnsInWrongOrderFails) {
  QVL_REQUIRE_FILE(kFp32);
  // Reading the 1176 features as (t, c, py, px) instead of the processor's (c, t, py, px).
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    const auto& v = cfg.vision;
    at::Tensor x = c.input("hidden_states", 0).as_tensor().reshape(
        {-1, v.temporal_patch_size, v.in_channels, v.patch_size, v.patch_size});
    x = x.transpose(1, 2).contiguous();
    at::Tensor out = at::conv3d(x, w.tensor("proj.weight"), {}, {v.temporal_patch_size, v.patch_size, v.patch_size});
    return Value::of(out.view({-1, v.hidden_size}));
  };
  expect_all_fail(kFp32, "Qwen2_5_VisionPatchEmbed", bug);
}

}  // namespace
}  // namespace qvl::testing
