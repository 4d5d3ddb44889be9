// Text-side RoPE variants (functional/rope/rope1d.h, circle.h): property tests and worked examples
// whose values were computed by hand (M-RoPE) and with an independent NumPy implementation of the
// Circle-RoPE formulas (float32), not with qvl.
#include <gtest/gtest.h>

#include <cmath>

#include "functional/config.h"
#include "functional/rope/circle.h"
#include "functional/rope/rope1d.h"
#include "functional/rotary.h"
#include "functional/text.h"
#include "instrument/rope_spec.h"

namespace qvl::testing {
namespace {

using rope::MRopeLayout;
using rope::PairLayout;

at::Tensor longs(std::vector<int64_t> v) { return at::tensor(v, at::kLong); }

double max_abs(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

TEST(Rope1D, SplitHalfEqualsHfRotateHalf) {
  at::manual_seed(0);
  at::Tensor x = at::randn({2, 3, 5, 16});
  at::Tensor ang = rope::angles_1d(at::arange(5, at::kLong), rope::inv_freq(10000.0, 16));  // [5, 8]
  at::Tensor cos = at::cat({ang.cos(), ang.cos()}, -1), sin = at::cat({ang.sin(), ang.sin()}, -1);
  at::Tensor hf = x * cos + rotate_half(x) * sin;  // HF's apply_rotary_pos_emb
  EXPECT_LE(max_abs(rope::apply(x, ang, PairLayout::SplitHalf), hf), 1e-6);
}

TEST(Rope1D, InterleavedEqualsSplitHalfUnderThePairPermutation) {
  at::manual_seed(1);
  const int64_t d = 12;
  at::Tensor x = at::randn({4, 7, d});
  at::Tensor ang = rope::angles_1d(at::arange(7, at::kLong) * 3, rope::inv_freq(100.0, d));
  // interleaved channel 2k <-> split-half channel k, 2k+1 <-> k + d/2
  std::vector<int64_t> perm;
  for (int64_t k = 0; k < d / 2; ++k) perm.push_back(k), perm.push_back(k + d / 2);
  at::Tensor p = at::tensor(perm, at::kLong);
  at::Tensor split = rope::apply(x, ang, PairLayout::SplitHalf);
  at::Tensor inter = rope::apply(x.index_select(-1, p), ang, PairLayout::Interleaved);
  EXPECT_LE(max_abs(inter, split.index_select(-1, p)), 1e-6);
}

TEST(Rope1D, PartialRotaryLeavesTheTailUntouched) {
  at::manual_seed(2);
  at::Tensor x = at::randn({3, 10, 32});
  at::Tensor ang = rope::angles_1d(at::arange(10, at::kLong), rope::inv_freq(10000.0, 16));  // rotary dim 16 of 32
  for (auto layout : {PairLayout::SplitHalf, PairLayout::Interleaved}) {
    at::Tensor y = rope::apply(x, ang, layout);
    EXPECT_TRUE(at::equal(y.slice(-1, 16), x.slice(-1, 16)));
    EXPECT_GT(max_abs(y.slice(-1, 0, 16), x.slice(-1, 0, 16)), 1e-2) << "the rotary part did not rotate";
    // rotation preserves the norm of the rotated part
    EXPECT_LE(max_abs(y.slice(-1, 0, 16).norm(2, -1), x.slice(-1, 0, 16).norm(2, -1)), 1e-5);
  }
  EXPECT_THROW(rope::apply(x.slice(-1, 0, 8), ang, PairLayout::SplitHalf), c10::Error);
}

TEST(Rope1D, ScoresDependOnlyOnThePositionDifference) {
  at::manual_seed(3);
  at::Tensor q = at::randn({64}, at::kDouble), k = at::randn({64}, at::kDouble);
  at::Tensor inv = rope::inv_freq(10000.0, 64).to(at::kDouble);
  auto score = [&](double pq, double pk) {
    at::Tensor aq = at::full({1}, pq, at::kDouble).unsqueeze(-1) * inv, ak = at::full({1}, pk, at::kDouble).unsqueeze(-1) * inv;
    return (rope::apply(q.unsqueeze(0), aq, PairLayout::SplitHalf) * rope::apply(k.unsqueeze(0), ak, PairLayout::SplitHalf))
        .sum()
        .item<double>();
  };
  EXPECT_NEAR(score(7.0, 3.0), score(107.0, 103.0), 1e-9);
  EXPECT_NEAR(score(2.5, 11.25), score(-4.0, 4.75), 1e-9);  // float positions too
  EXPECT_GT(std::abs(score(7.0, 3.0) - score(7.0, 4.0)), 1e-6);
}

TEST(MRope, SectionLabelStrings) {
  EXPECT_EQ(rope::mrope_labels({16, 24, 24}, MRopeLayout::Chunked), std::string(16, 'T') + std::string(24, 'H') + std::string(24, 'W'));
  std::string inter;
  for (int i = 0; i < 20; ++i) inter += "THW";
  EXPECT_EQ(rope::mrope_labels({24, 20, 20}, MRopeLayout::Interleaved), inter + "TTTT");
  EXPECT_THROW(rope::mrope_rows({24, 30, 20}, MRopeLayout::Interleaved), c10::Error);
}

TEST(MRope, ChunkedAnglesReproduceTheModelsRotary) {
  TextConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 2;  // Dh 32
  c.rope_theta = 1e6;
  c.mrope_section = {4, 6, 6};
  at::Tensor pos = at::stack({at::arange(9, at::kLong).view({1, 9}), (at::arange(9, at::kLong) % 3).view({1, 9}),
                              (at::arange(9, at::kLong) / 3).view({1, 9})});  // [3, 1, 9], rows differ
  CosSin ref = text::rotary(pos, at::kFloat, c);
  at::Tensor a = rope::mrope_angles(pos, rope::inv_freq(c.rope_theta, 32), c.mrope_section, MRopeLayout::Chunked);
  EXPECT_TRUE(at::equal(at::cat({a.cos(), a.cos()}, -1), ref.cos));
  EXPECT_TRUE(at::equal(at::cat({a.sin(), a.sin()}, -1), ref.sin));
  // Interleaved (Qwen3-VL) takes different rows for some frequencies, so it differs on these positions.
  at::Tensor b = rope::mrope_angles(pos, rope::inv_freq(c.rope_theta, 32), {6, 5, 5}, MRopeLayout::Interleaved);
  EXPECT_GT(max_abs(a, b), 1e-3);
}

TEST(MRope, TextOnlyPositionsReduceToOneDRope) {
  at::Tensor p = (at::arange(11, at::kLong) + 5).view({1, 1, 11}).expand({3, 2, 11});
  at::Tensor inv = rope::inv_freq(1e6, 128);
  at::Tensor one_d = rope::angles_1d(p[0], inv);  // [2, 11, 64]
  for (auto layout : {MRopeLayout::Chunked, MRopeLayout::Interleaved}) {
    std::vector<int64_t> sec = layout == MRopeLayout::Chunked ? std::vector<int64_t>{16, 24, 24} : std::vector<int64_t>{24, 20, 20};
    EXPECT_TRUE(at::equal(rope::mrope_angles(p, inv, sec, layout), one_d));
  }
}

// Worked example: 3 text tokens, a 2x3 image, 3 text tokens (here the 3rd leading text token is
// the vision start and the 1st trailing one the vision end).
constexpr int64_t kVS = 1, kImg = 2, kVE = 4;
at::Tensor three_image_three() {
  return longs({10, 11, kVS, kImg, kImg, kImg, kImg, kImg, kImg, kVE, 12, 13}).view({1, 12});
}
rope::circle::TokenIds ids() { return {kVS, kImg, 3, 2, 2.0}; }

TEST(MRope, GetRopeIndexWorkedExample) {
  at::Tensor grid = longs({1, 4, 6}).view({1, 3});  // merged 2 x 3
  auto idx = rope::circle::get_rope_index(three_image_three(), grid, {}, {}, {}, ids(), {}, /*use_m_index=*/true);
  at::Tensor want = longs({0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8,  //
                                0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7, 8,           //
                                0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8}).view({3, 1, 12});
  EXPECT_TRUE(at::equal(idx.position_ids, want.to(at::kFloat))) << idx.position_ids;
  EXPECT_EQ(idx.deltas.item<float>(), -3.0f);
  // M-RoPE really is multi-dimensional here: image tokens' h and w rows differ from the t row.
  EXPECT_FALSE(at::equal(want[1], want[0]));
  EXPECT_FALSE(at::equal(want[2], want[0]));
}

rope::circle::Config released() {
  return circle_config_from_json({{"alpha", 0.5}, {"radius", 10}, {"method", "circle"}, {"move_to_origin", true}});
}

TEST(CircleRope, WorkedExampleTwoByThree) {
  // Independent NumPy table (float32), tokens in row-major order, rows (t, h, w).
  const float table[6][3] = {{0.f, 7.07107f, -7.07107f},      {7.52747f, -1.02460f, -6.50287f},
                             {5.83187f, -7.86487f, 2.03300f}, {-8.16497f, 4.08248f, 4.08248f},
                             {-8.10042f, 3.16288f, 4.93754f}, {-7.90782f, 2.19328f, 5.71454f}};
  at::Tensor p = rope::circle::block_positions(at::zeros({1}, at::kLong), 2, 3, released());
  ASSERT_EQ(p.sizes(), (at::IntArrayRef{3, 6}));
  for (int k = 0; k < 6; ++k)
    for (int r = 0; r < 3; ++r) EXPECT_NEAR(p[r][k].template item<float>(), table[k][r], 2e-5) << "token " << k << " row " << r;
  // In a sequence: image rows + 3, the trailing text starts at 3 + 7.52747 + 1, delta = 2.52747.
  auto idx = rope::circle::get_rope_index(three_image_three(), longs({1, 4, 6}).view({1, 3}), {},
                                          {}, {}, ids(), released(), false);
  EXPECT_NEAR(idx.position_ids[0][0][9].template item<float>(), 11.52747f, 2e-5);
  EXPECT_NEAR(idx.position_ids[2][0][11].template item<float>(), 13.52747f, 2e-5);
  EXPECT_NEAR(idx.deltas.item<float>(), 2.52747f, 2e-5);
  EXPECT_EQ(idx.position_ids.scalar_type(), at::kFloat);
}

TEST(CircleRope, PointsLieOnACircleOrthogonalToTheTextDirection) {
  for (auto [H, W] : {std::pair<int64_t, int64_t>{4, 6}, {8, 6}, {3, 5}}) {
    at::Tensor p = rope::circle::block_positions(at::zeros({1}, at::kLong), H, W, released()).to(at::kDouble);
    EXPECT_LE(p.sum(0).abs().max().item<double>(), 1e-5 * 10) << H << "x" << W;            // P_t + P_h + P_w = 0
    EXPECT_LE((p.norm(2, 0) - 10.0).abs().max().item<double>(), 1e-5) << H << "x" << W;   // |P| = R
    // cone property: every text position (s, s, s) is equally far from all image tokens
    for (double s : {-3.0, 0.0, 5.5}) {
      at::Tensor d = (p - s).norm(2, 0);
      EXPECT_LE((d - d.mean()).abs().max().item<double>(), 1e-4);
    }
  }
}

TEST(CircleRope, MoveToPositiveAutoAndTrue) {
  rope::circle::Config a = released(), t = released();
  a.move_to_positive = t.move_to_positive = true;
  a.move_to_positive_auto = true;
  t.move_to_positive_offset = 1.0;  // what "move_to_positive": true parses to (float(True))
  EXPECT_NEAR(rope::circle::block_positions(at::zeros({1}, at::kLong), 4, 6, a).min().item<float>(), 0.0f, 1e-6);
  EXPECT_NEAR(rope::circle::block_positions(at::zeros({1}, at::kLong), 4, 6, t).min().item<float>(), 1.0f, 1e-6);
  EXPECT_EQ(circle_config_from_json({{"move_to_positive", true}}).move_to_positive_offset, 1.0);
  EXPECT_TRUE(circle_config_from_json({{"move_to_positive", "auto"}}).move_to_positive_auto);
  EXPECT_FALSE(circle_config_from_json({{"move_to_positive", false}}).move_to_positive);
}

TEST(CircleRope, RadiusAutoIsTheCodesMaxCoordinateRule) {
  // 4x6 grid with "auto-2": R = |max centred coordinate| * 2 = 2.5 * 2 = 5 (not the paper's max L2 norm)
  auto cfg = circle_config_from_json({{"alpha", 0.5}, {"radius", "auto-2"}, {"move_to_origin", true}});
  at::Tensor p = rope::circle::block_positions(at::zeros({1}, at::kLong), 4, 6, cfg).to(at::kDouble);
  EXPECT_LE((p.norm(2, 0) - 5.0).abs().max().item<double>(), 1e-5);
}

TEST(CircleRope, ConfigErrorsNameTheKey) {
  try {
    circle_config_from_json({{"radius", 10}, {"circle_r", 10000}});
    FAIL() << "an unknown key was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("circle_r"), std::string::npos) << e.what();
  }
  EXPECT_THROW(circle_config_from_json({{"method", "spiral"}}), std::runtime_error);
  EXPECT_THROW(circle_config_from_json({{"radius", "big"}}), std::runtime_error);
  EXPECT_THROW(parse_text_rope("circle:{not json"), std::runtime_error);
  EXPECT_THROW(parse_text_rope("circle:{\"AGE_mode\": \"strategy_1\"}"), std::runtime_error);
  EXPECT_EQ(parse_text_rope("circle").age_strategy, "strategy_4");
}

TEST(CircleRope, VideoFramesPerFrameExtension) {
  rope::circle::Config cfg = released();
  at::Tensor times = longs({0, 4, 8});  // 3 frames, spg 2 * tokens_per_second 2
  // official behaviour: one frame only -> a clear error naming the frame count
  cfg.video = rope::circle::VideoFrames::Official;
  try {
    rope::circle::block_positions(times, 2, 3, cfg);
    FAIL() << "T > 1 was accepted by the official mode";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("T=3"), std::string::npos) << e.what();
  }
  // per frame: frame f = frame 0's circle + z'_f (1, 1, 1), z' the centred time (-4, 0, 4)
  cfg.video = rope::circle::VideoFrames::PerFrame;
  at::Tensor p = rope::circle::block_positions(times, 2, 3, cfg);
  ASSERT_EQ(p.sizes(), (at::IntArrayRef{3, 18}));
  at::Tensor img = rope::circle::block_positions(at::zeros({1}, at::kLong), 2, 3, cfg);
  const float z[3] = {-4.f, 0.f, 4.f};
  for (int f = 0; f < 3; ++f) EXPECT_LE(max_abs(p.slice(1, 6 * f, 6 * f + 6), img + z[f]), 1e-5) << "frame " << f;
  // T = 1 per frame is the official mapping bit for bit
  cfg.video = rope::circle::VideoFrames::Official;
  EXPECT_TRUE(at::equal(img, rope::circle::block_positions(at::zeros({1}, at::kLong), 2, 3, cfg)));
  // In a sequence with a video the walker assigns every token and the text after it starts at max + 1.
  at::Tensor ids_v = at::cat({longs({10, kVS}), at::full({18}, int64_t{3}, at::kLong),
                              at::tensor({kVE, int64_t{11}}, at::kLong)}).view({1, -1});
  auto idx = rope::circle::get_rope_index(ids_v, {}, longs({3, 4, 6}).view({1, 3}),
                                          at::tensor({2.0f}), {}, ids(), released(), false);
  at::Tensor vis = idx.position_ids.select(1, 0).slice(1, 2, 20);
  EXPECT_NEAR(idx.position_ids[0][0][20].template item<float>(), vis.max().item<float>() + 1, 1e-5);
}

TEST(Age, AnyLayerCountRule) {
  auto s4 = rope::circle::age_layers("strategy_4", 28);
  for (int l = 0; l < 28; ++l) EXPECT_EQ(s4[l], l % 2 == 0);
  auto s2 = rope::circle::age_layers("strategy_2", 28), s3 = rope::circle::age_layers("strategy_3", 28);
  for (int l = 0; l < 28; ++l) {
    EXPECT_EQ(s2[l], l < 14);
    EXPECT_EQ(s3[l], !s2[l]);  // complementary halves
  }
  auto odd = rope::circle::age_layers("strategy_2", 3);
  EXPECT_EQ(odd, (std::vector<bool>{true, true, false}));
  try {
    rope::circle::age_layers("strategy_1", 36);
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("strategy_4"), std::string::npos) << "the error should list the known strategies";
  }
}

}  // namespace
}  // namespace qvl::testing
