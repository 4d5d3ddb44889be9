// Greedy generation with a KV cache is token-identical to transformers' generate on every recording
// that carries transformers' generated tokens (scenario.generation).
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "functional/model.h"
#include "functional/text.h"
#include "instrument/compare.h"
#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

TEST(Generate, TokenIdenticalToTransformersGenerate) {
  auto files = recording_files();
  if (files.empty()) GTEST_SKIP() << "no recordings";
  int checked = 0;
  int64_t longest = 0;
  for (const auto& path : files) {
    Recording rec = Recording::open(path);
    if (!has_generation(rec)) continue;
    const GoldenModel& m = model_for(rec);
    int64_t n = 0;
    EXPECT_EQ(generate_mismatch(rec, m.weights, m.config, &n), "") << path;
    longest = std::max(longest, n);
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
  const auto want = recorded_generation(rec).value().new_tokens;
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

// The inputs of every generate step -- token ids, the grown attention mask, the 4-row position ids (text row
// and M-RoPE rows, advanced by our decode loop from the prefill's get_rope_index) and the rope_deltas state
// -- equal, exactly, what transformers' generate passed at that step.
TEST(Generate, StepInputsEqualTransformersGenerate) {
  int recordings = 0, steps = 0, vision_prefills = 0;
  for (const auto& path : recording_files()) {
    Recording ref = Recording::open(path);
    const std::vector<size_t> top = ref.generate_steps();
    if (top.empty()) continue;
    const GoldenModel& m = model_for(ref);
    TempDir d;
    record_model_chained(m.weights, m.config, ref, d.file("ours.h5"));
    Recording ours = Recording::open(d.file("ours.h5"));
    std::map<std::pair<std::string, int64_t>, size_t> by_key;
    for (size_t i = 0; i < ours.calls().size(); ++i) by_key[{ours.calls()[i].module_path, ours.calls()[i].call_index}] = i;
    for (size_t i : top) {
      const CallHeader& h = ref.calls()[i];
      auto it = by_key.find({h.module_path, h.call_index});
      ASSERT_NE(it, by_key.end()) << path << ": no step " << h.generate_step << " in our run";
      RecordedCall r = ref.load(i), o = ours.load(it->second);
      for (const char* name : {"input_ids", "attention_mask", "position_ids", "rope_deltas_state"}) {
        const at::Tensor want = r.input(name).as_tensor(name), got = o.input(name).as_tensor(name);
        ASSERT_EQ(got.sizes(), want.sizes()) << path << " step " << h.generate_step << " " << name;
        EXPECT_TRUE(at::equal(got.to(at::kLong), want.to(at::kLong)))
            << path << " step " << h.generate_step << ": " << name << " differs\nours " << got << "\nref " << want;
      }
      auto given = [&](const char* n) { return r.inputs.has(n) && r.inputs.at(n).is_tensor(); };
      if (h.generate_step == 0 && (given("image_grid_thw") || given("video_grid_thw"))) {
        // M-RoPE is really exercised: the t/h/w rows differ from the text index at the vision tokens
        const at::Tensor p = r.input("position_ids").as_tensor();
        EXPECT_FALSE(at::equal(p.slice(0, 1), p.slice(0, 0, 1).expand({3, -1, -1}))) << path;
        ++vision_prefills;
      }
      ++steps;
    }
    ++recordings;
  }
  if (recordings == 0) GTEST_SKIP() << "no recording holds a recorded generate (--record-decode; build target qvl_recordings)";
  EXPECT_GT(vision_prefills, 0);
  std::printf("%d recordings, %d generate steps, inputs equal\n", recordings, steps);
}

TEST(PlantedBugDecode, DecodeStepIgnoringRopeDeltasDiverges) {
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

TEST(PlantedBugDecode, IgnoredPaddingMaskFails) {
  const std::string path = generated_recordings_dir() + "/tiny_padded_batch_fp32.h5";
  QVL_REQUIRE_FILE(path);
  // The text model run without the 2-D padding mask (causal only): the left-padded row attends to padding,
  // in the forward pass, generate's prefill and every decode step (the default replay, mask dropped).
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    RecordedCall unmasked = c;
    for (size_t i = 0; i < unmasked.inputs.keys.size(); ++i)
      if (unmasked.inputs.keys[i] == "attention_mask") unmasked.inputs.items[i] = Value::none();
    return (*Registry::defaults().find("Qwen2_5_VLTextModel"))(unmasked, w, cfg);
  };
  expect_all_fail(path, "Qwen2_5_VLTextModel", bug);
}

}  // namespace
}  // namespace qvl::testing

namespace qvl::testing {
namespace {

std::string recorded_generate_file() { return generated_recordings_dir() + "/tiny_tied_fp32.h5"; }

// Isolated replay of the decode steps: attention that ignores the recorded KV cache (attends to the new
// token only) fails every cached call after the prefill.
TEST(PlantedBugDecode, DecodeAttentionIgnoringTheCacheFails) {
  const std::string path = recorded_generate_file();
  QVL_REQUIRE_FILE(path);
  Recording rec = Recording::open(path);
  const GoldenModel& m = model_for(rec);
  Registry bug = Registry::defaults();
  bug.set("Qwen2_5_VLAttention", [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    const Value& pe = c.input("position_embeddings");
    const at::Tensor mask = c.input("attention_mask").as_tensor();
    auto o = text::attention(w, c.input("hidden_states", 0).as_tensor(), mask.slice(3, mask.size(3) - mask.size(2)),
                             {pe.at(0).as_tensor(), pe.at(1).as_tensor()}, cfg.text);
    return Value::tuple({Value::of(o.out), Value::of(o.weights)});
  });
  int decode_calls = 0;
  for (size_t i = 0; i < rec.calls().size(); ++i) {
    const CallHeader& h = rec.calls()[i];
    if (h.module_class != "Qwen2_5_VLAttention" || h.generate_step < 1) continue;
    ASSERT_EQ(replay_call(rec, i, m.weights, m.config, Registry::defaults()).status, CallResult::Status::Pass);
    CallResult r = replay_call(rec, i, m.weights, m.config, bug);
    EXPECT_EQ(r.status, CallResult::Status::Fail) << describe(r);
    ++decode_calls;
  }
  EXPECT_GT(decode_calls, 0) << path << " has no decode-step attention call";
}

// Chained generate: a decode loop that ignores rope_deltas (positions = the absolute token index) first
// diverges at the text rotary of decode step 1; the whole prefill before it still matches.
TEST(ChainedDecode, DecodeWithoutRopeDeltasFirstDivergesAtStepOneRotary) {
  const std::string path = recorded_generate_file();
  QVL_REQUIRE_FILE(path);
  Recording ref = Recording::open(path);
  const GoldenModel& m = model_for(ref);
  const std::vector<size_t> steps = ref.generate_steps();
  ASSERT_GE(steps.size(), 2u);
  TempDir d;
  {
    RecordingWriter w(d.file("ours.h5"), {{"producer", "qvl test"}, {"dtype", ref.attr("dtype")}});
    const model::Inputs prompt = recorded_model_inputs(ref);
    model::lm_forward(m.weights, prompt, m.config, &w);
    model::DecodeState s = model::prefill(m.weights, prompt, m.config, &w);
    for (size_t k = 1; k < steps.size(); ++k) {
      at::Tensor ids = ref.load(steps[k]).input("input_ids").as_tensor().select(1, 0);
      const int64_t B = ids.size(0), n = s.cache.length();
      model::decode_step(m.weights, s, ids, m.config, at::full({3, B, 1}, n, at::kLong), &w);
    }
    w.close();
  }
  CompareReport rep = compare_recordings(ref, Recording::open(d.file("ours.h5")));
  ASSERT_GE(rep.first_divergent, 0) << "decoding without rope_deltas went unnoticed";
  const CallHeader& first = rep.rows[rep.first_divergent].ref;
  EXPECT_EQ(first.module_path, "model.language_model.rotary_emb");
  EXPECT_EQ(first.generate_step, 1);
  for (const auto& r : rep.rows)
    if (r.present && r.ref.generate_step == 0) EXPECT_TRUE(r.pass) << r.ref.module_path << " (prefill)";
}

}  // namespace
}  // namespace qvl::testing
