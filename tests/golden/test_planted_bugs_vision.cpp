// Planted vision-tower bugs: each must make the harness FAIL the calls it touches.
#include <gtest/gtest.h>

#include "functional/norm.h"
#include "functional/vision.h"
#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

const std::string kFp32 = data_path("recordings/tiny_fp32.h5");
const std::string kBf16 = data_path("recordings/tiny_bf16.h5");


// get_vision_window_index with the padded grid shifted by one row and column: one row/column of padding
// moved from the bottom/right to the top/left, so every window boundary is off by one merged token.
vision::WindowIndex window_index_padded_off_by_one(const at::Tensor& grid_thw, int64_t m, int64_t window_size,
                                                   int64_t patch_size) {
  const int64_t ws = window_size / m / patch_size, unit = m * m;
  std::vector<at::Tensor> parts;
  std::vector<int64_t> cu = {0};
  int64_t base = 0;
  at::Tensor g = grid_thw.to(at::kLong);
  for (int64_t i = 0; i < g.size(0); ++i) {
    const int64_t t = g[i][0].item<int64_t>(), lh = g[i][1].item<int64_t>() / m, lw = g[i][2].item<int64_t>() / m;
    const int64_t pad_h = ws - lh % ws, pad_w = ws - lw % ws;
    at::Tensor idx = at::arange(t * lh * lw, at::kLong).reshape({t, lh, lw});
    at::Tensor p = at::constant_pad_nd(idx, {1, pad_w - 1, 1, pad_h - 1}, -100);  // the bug
    const int64_t nh = (lh + pad_h) / ws, nw = (lw + pad_w) / ws;
    p = p.reshape({t, nh, ws, nw, ws}).permute({0, 1, 3, 2, 4}).reshape({t, nh * nw, ws, ws});
    at::Tensor seqlens = p.ne(-100).sum({2, 3}).reshape(-1);
    p = p.reshape(-1);
    parts.push_back(p.masked_select(p.ne(-100)) + base);
    at::Tensor cum = seqlens.cumsum(0) * unit + cu.back();
    for (int64_t j = 0; j < cum.numel(); ++j) cu.push_back(cum[j].item<int64_t>());
    base += t * lh * lw;
  }
  return {at::cat(parts), std::get<0>(at::unique_consecutive(at::tensor(cu, at::kLong).to(at::kInt)))};
}

TEST(PlantedBugVision, WindowsPaddedOffByOneFail) {
  QVL_REQUIRE_FILE(kFp32);
  auto bug = [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    auto wi = window_index_padded_off_by_one(c.input("grid_thw", 0).as_tensor(), cfg.vision.spatial_merge_size,
                                             cfg.vision.window_size, cfg.vision.patch_size);
    return Value::tuple({Value::of(wi.window_index), Value::of(wi.cu_window_seqlens)});
  };
  expect_all_fail(kFp32, "get_vision_window_index", bug);
}

TEST(PlantedBugVision, FullAttentionBlockRunAsWindowedFails) {
  QVL_REQUIRE_FILE(kFp32);
  // cosmos-rl#171: `layer_num in fullatt_block_indexes` never matched, so every block ran windowed.
  auto bug = [](const RecordedCall& c, const Weights& w, const ModelConfig& cfg) {
    ModelConfig broken = cfg;
    broken.vision.fullatt_block_indexes.clear();
    auto out = vision::transformer(w, c.input("hidden_states", 0).as_tensor(), c.input("grid_thw", 1).as_tensor(),
                                   broken.vision);
    return Value::dict({{"last_hidden_state", Value::of(out.last_hidden_state)},
                        {"pooler_output", Value::of(out.pooler_output)}});
  };
  expect_all_fail(kFp32, "Qwen2_5_VisionTransformerPretrainedModel", bug);
}

// A numerically subtle bug: caught where its error exceeds 2x HF's own bf16 error. Measured on
// tiny_bf16.h5: FAIL on blocks 1-3; block 0 comes in at 1.49x RMSE / 1.76x max|err|, inside the rule.
// The harness flags the module, which is what a user bisecting a bf16 port needs.
TEST(PlantedBugVision, VisionCosSinCastToBf16BeforeTheMultiplyIsFlagged) {
  QVL_REQUIRE_FILE(kBf16);
  // xLLM-style: cos/sin cast to the activation dtype and the rotation done in bf16, instead of HF's
  // float32 upcast of q, k, cos and sin.
  auto bug = [](const RecordedCall& c, const Weights&, const ModelConfig&) {
    at::Tensor q = c.input("q", 0).as_tensor(), k = c.input("k", 1).as_tensor();
    at::Tensor cos = c.input("cos", 2).as_tensor().unsqueeze(-2).to(q.scalar_type());
    at::Tensor sin = c.input("sin", 3).as_tensor().unsqueeze(-2).to(q.scalar_type());
    return Value::tuple({Value::of(q * cos + vision::rotate_half(q) * sin),
                         Value::of(k * cos + vision::rotate_half(k) * sin)});
  };
  Recording rec = Recording::open(kBf16);
  Registry reg = Registry::defaults();
  reg.set("apply_rotary_pos_emb_vision", bug);
  auto results = replay_all(rec, reg, "apply_rotary_pos_emb_vision");
  ASSERT_FALSE(results.empty());
  int failed = 0;
  for (const auto& r : results) {
    EXPECT_NE(r.status, CallResult::Status::Error) << describe(r);
    failed += r.status == CallResult::Status::Fail;
  }
  std::printf("cos/sin cast to bf16: caught on %d of %zu calls\n", failed, results.size());
  EXPECT_GE(2 * failed, static_cast<int>(results.size())) << "the bug must fail at least half of the calls";
}

}  // namespace
}  // namespace qvl::testing
