// The text model's per-layer rope plan (Circle-RoPE / AGE) plugged into the tiny model: the research
// workflow (run with Circle-RoPE, record from C++, compare with the stock transformers recording: the
// first divergent module is in the first layer whose positions changed) and the decode policy.
#include <gtest/gtest.h>

#include "functional/model.h"
#include "functional/norm.h"
#include "functional/rope/circle.h"
#include "functional/text.h"
#include "instrument/compare.h"
#include "instrument/rope_spec.h"
#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"
#include "functional/linear.h"

namespace qvl::testing {
namespace {

const char* kCircle = R"({"alpha": 0.5, "radius": 10, "method": "circle", "move_to_origin": true)";

std::string spec(const std::string& age, const std::string& extra = "") {
  return std::string("circle:") + kCircle + ", \"AGE_mode\": \"" + age + "\"" + extra + "}";
}

// First divergent call of a C++ chained run under `rope_spec` against the stock transformers recording.
std::string first_divergence(const std::string& rope_spec, int* failed_before_layers = nullptr) {
  const std::string path = data_path("recordings/tiny_fp32.h5");
  Recording ref = Recording::open(path);
  const GoldenModel& m = model_for(ref);
  ModelConfig cfg = m.config;
  cfg.text_rope = parse_text_rope(rope_spec);
  TempDir d;
  record_model_chained(m.weights, cfg, ref, d.file("ours.h5"));
  CompareReport rep = compare_recordings(ref, Recording::open(d.file("ours.h5")));
  if (rep.first_divergent < 0) return "";
  return rep.rows[rep.first_divergent].ref.module_path;
}

TEST(RopePlan, FirstDivergenceIsTheFirstCircleLayer) {
  QVL_REQUIRE_FILE(data_path("recordings/tiny_fp32.h5"));
  // 3 layers. strategy_3 puts Circle on layers l >= 3/2, i.e. layer 2 only; layers 0-1 keep M-RoPE and
  // still match transformers exactly.
  EXPECT_EQ(rope::circle::age_layers("strategy_3", 3), (std::vector<bool>{false, false, true}));
  std::string s3 = first_divergence(spec("strategy_3"));
  EXPECT_EQ(s3.rfind("model.language_model.layers.2.", 0), 0u) << "first divergence at '" << s3 << "'";
  // strategy_4 and all-Circle change layer 0 first.
  for (const char* age : {"strategy_4", "all"}) {
    std::string s = first_divergence(spec(age));
    EXPECT_EQ(s.rfind("model.language_model.layers.0.", 0), 0u) << age << ": first divergence at '" << s << "'";
  }
  // The stock plan reproduces transformers: nothing diverges.
  EXPECT_EQ(first_divergence("mrope"), "");
}

// The README's research workflow, through the command line.
TEST(RopePlan, CommandLineWorkflowReportsTheFirstCircleLayer) {
  const std::string ref = data_path("recordings/tiny_fp32.h5");
  QVL_REQUIRE_FILE(ref);
  TempDir d;
  const std::string rope = "'" + spec("strategy_3") + "'";
  CommandResult run = run_qvl("run " + ref + " --rope " + rope + " -o " + d.file("circle.h5"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  CommandResult cmp = run_qvl("compare " + ref + " " + d.file("circle.h5"));
  EXPECT_NE(cmp.output.find("first divergent module: model.language_model.layers.2.self_attn"), std::string::npos)
      << cmp.output;
  CommandResult bad = run_qvl("run " + ref + " --rope 'circle:{\"radius\": 10, \"circle_r\": 1}' -o " + d.file("x.h5"));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("unknown key 'circle_r'"), std::string::npos) << bad.output;
  EXPECT_FALSE(file_exists(d.file("x.h5")));
}

// Logits of the last position of a full (uncached) forward over `embeds` with the plan `plan`.
at::Tensor full_logits(const Weights& root, const at::Tensor& embeds, const text::RopePlan& plan, const ModelConfig& c) {
  at::Tensor h = text::text_model(root.at("model.language_model"), embeds, {}, plan, c.text);
  return linear(root.at("lm_head"), h.slice(1, h.size(1) - 1), false, c.text.vocab_size, c.text.hidden_size)
      .select(1, 0)
      .to(at::kFloat);
}

TEST(RopePlan, CachedDecodeEqualsAFullForwardPerSourceAndDiffersUnderParity) {
  const std::string path = data_path("recordings/tiny_fp32.h5");
  QVL_REQUIRE_FILE(path);
  Recording rec = Recording::open(path);
  const GoldenModel& m = model_for(rec);
  model::Inputs in = recorded_model_inputs(rec);
  for (bool parity : {false, true}) {
    ModelConfig c = m.config;
    c.text_rope = parse_text_rope(spec("strategy_4", parity ? R"(, "age_decode": "parity")" : ""));
    model::DecodeState s = model::prefill(m.weights, in, c);
    at::Tensor next = s.logits.argmax(-1);
    model::decode_step(m.weights, s, next, c);
    // The same two tokens without a cache: prompt positions of each source, then the source's own next
    // position (last prompt position + 1 for M-RoPE, Circle max + 1 for Circle).
    model::PlannedRope pr = model::plan_rope(in, at::ones_like(in.input_ids), c);
    ModelConfig per_source = c;
    per_source.text_rope.parity_decode = false;
    model::PlannedRope ps = model::plan_rope(in, at::ones_like(in.input_ids), per_source);
    text::RopePlan full = pr.plan;
    for (size_t k = 0; k < full.positions.size(); ++k)
      full.positions[k] = at::cat({full.positions[k].to(at::kFloat), ps.last[k] + 1}, 2);
    at::Tensor embeds = at::cat({model::embed_inputs(m.weights.at("model"), in, c),
                                 at::embedding(m.weights.tensor("model.language_model.embed_tokens.weight"), next.unsqueeze(1))},
                                1);
    at::Tensor want = full_logits(m.weights, embeds, full, c);
    const double err = (s.logits - want).abs().max().item<double>(), scale = want.abs().max().item<double>();
    if (!parity) {
      EXPECT_LE(err, 1e-5 * scale) << "per-source decode differs from the uncached forward";
    } else {
      // Official behaviour: the M-RoPE layers decode at the Circle delta, so the step differs.
      EXPECT_GT(err, 1e-3 * scale) << "parity decode should shift the M-RoPE layers' positions";
    }
  }
}

}  // namespace
}  // namespace qvl::testing
