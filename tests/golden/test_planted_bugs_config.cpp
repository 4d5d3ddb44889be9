// Planted bugs in what users vary: each is correct whenever an input or config field has
// the value that the older scenarios all share, so every older recording passes it, and wrong otherwise.
// Each test names the new scenario (scripts/record_scenarios.sh) that varies the field and must FAIL every
// call the bug touches, and prints, as the demonstration, how the older recordings pass the same bug.
//
//   bug                                                  field (older value -> varied value)     caught by
//   get_rope_index ignores second_per_grid_ts            spg 1.0 -> 2.0 (fps 1), 0.5 (fps 4)     tiny_video_fps1, tiny_video_fps4, tiny_variant_text
//   tokens_per_second hard-coded 2                        2 -> 3                                   tiny_variant_text
//   text rotary rope_theta hard-coded 1e6                 1e6 -> 1e4                               tiny_variant_text
//   text RMSNorm eps hard-coded 1e-6                      1e-6 -> 1e-3                             tiny_variant_text
//   full attention on every second block (1, 3, ...)      [1, 3] -> [0, 2]                         tiny_variant_text
//   spatial_merge_size hard-coded 2                        2 -> 3                                   tiny_merge3_mha
//   GQA ratio assumed 2 (query head h reads KV head h/2)  4 heads / 2 KV -> 4 / 4                  tiny_merge3_mha
//
// Only the plain forward pass is replayed (generate_step < 0): the decode steps run the same functions.
// A missing scenario recording makes the test SKIP with the reason.
#include <gtest/gtest.h>

#include <cstdio>
#include <functional>

#include "functional/model.h"
#include "functional/norm.h"
#include "functional/text.h"
#include "functional/vision.h"
#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

std::string generated(const std::string& stem) { return generated_recordings_dir() + "/" + stem + ".h5"; }
const std::string kTinyFp32 = data_path("recordings/tiny_fp32.h5");

using CallFilter = std::function<bool(const CallHeader&)>;
bool any_call(const CallHeader&) { return true; }
bool text_call(const CallHeader& h) { return h.module_path.find("language_model") != std::string::npos; }

struct Tally {
  int pass = 0, fail = 0, error = 0;
  std::string first_other;  // describe() of the first call that did not come out as expected
  int total() const { return pass + fail + error; }
};

// Replays every plain-forward call of `cls` that `filter` keeps, with `reg`.
Tally replay_calls(const std::string& path, const Registry& reg, const std::string& cls, const CallFilter& filter,
                   CallResult::Status expected) {
  Recording rec = Recording::open(path);
  const GoldenModel& m = model_for(rec);
  Tally t;
  for (size_t i = 0; i < rec.calls().size(); ++i) {
    const CallHeader& h = rec.calls()[i];
    if (h.module_class != cls || h.generate_step >= 0 || !filter(h)) continue;
    CallResult r = replay_call(rec, i, m.weights, m.config, reg);
    (r.status == CallResult::Status::Pass ? t.pass : r.status == CallResult::Status::Fail ? t.fail : t.error)++;
    if (r.status != expected && t.first_other.empty()) t.first_other = describe(r);
  }
  return t;
}

std::string stem_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  std::string s = slash == std::string::npos ? path : path.substr(slash + 1);
  return s.substr(0, s.size() - 3);
}

void print_row(const std::string& path, const std::string& cls, const Tally& t, const char* verdict) {
  std::printf("  %-28s %-42s %3d calls: %3d pass, %3d FAIL, %d error  -> %s\n", stem_of(path).c_str(), cls.c_str(),
              t.total(), t.pass, t.fail, t.error, verdict);
}

// The planted-bug check: `bug` replaces `cls` in the registry.
//   catchers: recordings that vary the field. Each must exist (else SKIP), pass every kept call of `cls`
//     with the unmodified registry, and FAIL every kept call with the bug (an error does not count).
//   hidden: older recordings at the shared value, replayed with the bug for the printout. The committed
//     tiny_fp32 must pass every call: proof that the bug is the right function at the shared value, so the
//     failures above come from the varied field alone. Generated ones are printed, not asserted.
void expect_caught(const std::string& what, const std::string& cls, ReplayFn bug, const std::vector<std::string>& catchers,
                   const std::vector<std::string>& hidden, const CallFilter& filter = any_call) {
  for (const auto& p : catchers) {
    if (!file_exists(p))
      GTEST_SKIP() << "scenario recording absent: " << p
                   << " (recorded by scripts/record_scenarios.sh, build target qvl_recordings)";
  }
  Registry good = Registry::defaults(), planted = Registry::defaults();
  planted.set(cls, std::move(bug));
  std::printf("[planted] %s (replacing %s)\n", what.c_str(), cls.c_str());
  for (const auto& p : hidden) {
    if (!file_exists(p)) {
      std::printf("  %-28s absent\n", stem_of(p).c_str());
      continue;
    }
    const Tally t = replay_calls(p, planted, cls, filter, CallResult::Status::Pass);
    print_row(p, cls, t, t.pass == t.total() ? "hidden (passes)" : "caught");
    if (p == kTinyFp32) {
      EXPECT_GT(t.total(), 0) << "no " << cls << " call in " << p;
      EXPECT_EQ(t.pass, t.total()) << "the planted bug must be correct at the shared value: " << t.first_other;
    }
  }
  for (const auto& p : catchers) {
    const Tally ok = replay_calls(p, good, cls, filter, CallResult::Status::Pass);
    ASSERT_GT(ok.total(), 0) << "no " << cls << " call in " << p;
    ASSERT_EQ(ok.pass, ok.total()) << "the unmodified registry must pass " << p << ": " << ok.first_other;
    const Tally t = replay_calls(p, planted, cls, filter, CallResult::Status::Fail);
    print_row(p, cls, t, t.fail == t.total() ? "CAUGHT" : "NOT caught on every call");
    EXPECT_EQ(t.fail, t.total()) << p << ": every " << cls << " call must FAIL with the bug: " << t.first_other;
  }
}

ReplayFn rope_index_with(std::function<void(ModelConfig&)> mutate, bool ignore_second_per_grid_ts) {
  return [mutate, ignore_second_per_grid_ts](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    auto opt = [&](const char* name) {
      return c.inputs.has(name) && c.inputs.at(name).is_tensor() ? c.inputs.at(name).tensor : at::Tensor();
    };
    ModelConfig broken = cfg;
    if (mutate) mutate(broken);
    auto ri = model::get_rope_index(c.input("input_ids", 0).as_tensor(), c.input("mm_token_type_ids", 1).as_tensor(),
                                    opt("image_grid_thw"), opt("video_grid_thw"),
                                    ignore_second_per_grid_ts ? at::Tensor() : opt("second_per_grid_ts"),
                                    opt("attention_mask"), broken);
    return Value::tuple({Value::of(ri.position_ids), Value::of(ri.deltas)});
  };
}

TEST(PlantedBugConfig, SecondPerGridTsIgnoredInGetRopeIndexIsCaughtByOtherFrameRates) {
  // A hidden mutation: the frame interval taken as tokens_per_second x 1. At fps 2
  // (second_per_grid_ts 1.0, the only frame rate recorded before) that is right.
  expect_caught("get_rope_index ignores second_per_grid_ts (interval = tokens_per_second x 1)", "get_rope_index",
                rope_index_with(nullptr, /*ignore_second_per_grid_ts=*/true),
                {generated("tiny_video_fps1_fp32"), generated("tiny_video_fps4_fp32"), generated("tiny_variant_text_fp32")},
                {kTinyFp32, generated("tiny_video_fp32"), generated("tiny_image_video_fp32")});
}

TEST(PlantedBugConfig, TokensPerSecondHardCodedIsCaught) {
  expect_caught("get_rope_index with tokens_per_second hard-coded to 2", "get_rope_index",
                rope_index_with([](ModelConfig& c) { c.vision.tokens_per_second = 2; }, false),
                {generated("tiny_variant_text_fp32")},
                {kTinyFp32, generated("tiny_video_fp32"), generated("tiny_video_fps1_fp32")});
}

TEST(PlantedBugConfig, TextRopeThetaHardCodedIsCaught) {
  auto bug = [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    TextConfig t = cfg.text;
    t.rope_theta = 1e6;  // the bug: every Qwen2.5-VL checkpoint uses 1e6
    auto cs = text::rotary(c.input("position_ids", 1).as_tensor(), c.input("x", 0).as_tensor().scalar_type(), t);
    return Value::tuple({Value::of(cs.cos), Value::of(cs.sin)});
  };
  expect_caught("text rotary with rope_theta hard-coded to 1e6", "Qwen2_5_VLRotaryEmbedding", bug,
                {generated("tiny_variant_text_fp32")}, {kTinyFp32, generated("tiny_video_fp32")});
}

TEST(PlantedBugConfig, TextRmsNormEpsHardCodedIsCaught) {
  // Hard-coded in the function, so the recorded-eps cross-check of the replay (Registry::defaults) is not
  // involved: the values alone must show it. eps 1e-3 moves the output by ~1e-3 of its scale.
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig&) {
    return Value::of(rms_norm(w, c.input("hidden_states", 0).as_tensor(), 1e-6));
  };
  expect_caught("text RMSNorm with eps hard-coded to 1e-6", "Qwen2_5_VLRMSNorm", bug,
                {generated("tiny_variant_text_fp32")}, {kTinyFp32, generated("tiny_video_fp32")}, text_call);
}

TEST(PlantedBugConfig, FullAttentionBlocksHardCodedIsCaught) {
  // Full attention on blocks 1, 3, 5, ... whatever fullatt_block_indexes says: right for the tiny model
  // ([1, 3]) and the real-size vision scenario ([1] of 2 blocks).
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    VisionConfig v = cfg.vision;
    v.fullatt_block_indexes.clear();
    for (int64_t i = 1; i < v.depth; i += 2) v.fullatt_block_indexes.push_back(i);
    auto out = vision::transformer(w, c.input("hidden_states", 0).as_tensor(), c.input("grid_thw", 1).as_tensor(), v);
    return Value::dict({{"last_hidden_state", Value::of(out.last_hidden_state)},
                        {"pooler_output", Value::of(out.pooler_output)}});
  };
  expect_caught("vision tower with full attention on every second block", "Qwen2_5_VisionTransformerPretrainedModel",
                bug, {generated("tiny_variant_text_fp32")}, {kTinyFp32, generated("tiny_video_fp32")});
}

TEST(PlantedBugConfig, SpatialMergeSizeHardCodedIsCaught) {
  // Merge blocks of 2x2 patches whatever spatial_merge_size says: the patch order of the rotary table and
  // the window grouping. The merge-3 grids are multiples of 2 and 3 patches, so these are wrong values
  // (and a wrong window count), not errors.
  auto positions = [](const RecordedCall& c, const Weights&, const ModelConfig&) {
    return Value::of(vision::position_ids(c.input("grid_thw", 0).as_tensor(), /*spatial_merge_size=*/2));
  };
  auto windows = [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    auto wi = vision::window_index(c.input("grid_thw", 0).as_tensor(), /*spatial_merge_size=*/2, cfg.vision.window_size,
                                   cfg.vision.patch_size);
    return Value::tuple({Value::of(wi.window_index), Value::of(wi.cu_window_seqlens)});
  };
  const std::vector<std::string> catchers = {generated("tiny_merge3_mha_fp32")};
  const std::vector<std::string> hidden = {kTinyFp32, generated("tiny_video_fp32")};
  expect_caught("vision position ids with spatial_merge_size hard-coded to 2", "get_vision_position_ids", positions,
                catchers, hidden);
  expect_caught("vision window index with spatial_merge_size hard-coded to 2", "get_vision_window_index", windows,
                catchers, hidden);
}

TEST(PlantedBugConfig, GqaRatioAssumedIsCaught) {
  // Query head h reads KV head h / 2, the mapping of a 2:1 grouping, whatever the head counts say.
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    at::Tensor x = c.input("hidden_states", 0).as_tensor();
    const Value& pe = c.input("position_embeddings");
    const at::Tensor mask = c.inputs.has("attention_mask") && c.inputs.at("attention_mask").is_tensor()
                                ? c.inputs.at("attention_mask").tensor
                                : at::Tensor();
    const int64_t B = x.size(0), T = x.size(1), Dh = cfg.text.head_dim(), H = cfg.text.num_attention_heads;
    auto proj = [&](const std::string& name) {
      return at::linear(x, w.tensor(name + ".weight"), w.tensor(name + ".bias")).view({B, T, -1, Dh}).transpose(1, 2);
    };
    auto [q, k] = text::apply_rotary_pos_emb(proj("q_proj"), proj("k_proj"), pe.at(0).as_tensor(), pe.at(1).as_tensor());
    at::Tensor v = proj("v_proj");
    const at::Tensor kv_head = at::arange(H, at::kLong).div(2, "floor");  // the bug
    auto [out, weights] = text::eager_attention(q, k.index_select(1, kv_head), v.index_select(1, kv_head), mask);
    return Value::tuple({Value::of(at::linear(out, w.tensor("o_proj.weight"))), Value::of(weights)});
  };
  expect_caught("text attention with the GQA ratio assumed 2 (KV head h / 2)", "Qwen2_5_VLAttention", bug,
                {generated("tiny_merge3_mha_fp32")}, {kTinyFp32, generated("tiny_video_fp32")});
}

}  // namespace
}  // namespace qvl::testing
