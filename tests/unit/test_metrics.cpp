#include <gtest/gtest.h>

#include "instrument/metrics.h"
#include "instrument/thresholds.h"

namespace qvl {
namespace {

TEST(Metrics, IdenticalTensorsArePerfect) {
  at::Tensor a = at::randn({8, 16}, at::kDouble);
  Metrics m = compare(a, a);
  EXPECT_TRUE(m.shape_ok);
  EXPECT_DOUBLE_EQ(m.pearson, 1.0);
  EXPECT_DOUBLE_EQ(m.max_abs, 0.0);
  EXPECT_DOUBLE_EQ(m.min_row_cos, 1.0);
  EXPECT_TRUE(judge_fp32(m, threshold_for("float32", "*")).pass);
}

TEST(Metrics, ScaleErrorIsCaughtEvenThoughPearsonIsPerfect) {
  at::Tensor ref = at::randn({8, 16}, at::kDouble);
  Metrics m = compare(ref * 1.01, ref);
  EXPECT_NEAR(m.pearson, 1.0, 1e-12);  // correlation alone is blind to scale
  EXPECT_NEAR(m.max_rel, 0.01, 1e-9);
  Judgement j = judge_fp32(m, threshold_for("float32", "*"));
  EXPECT_FALSE(j.pass);
  EXPECT_NE(j.why.find("max_rel"), std::string::npos) << j.why;
}

TEST(Metrics, OffsetIsCaught) {
  at::Tensor ref = at::randn({4, 32}, at::kDouble);
  Metrics m = compare(ref + 0.05, ref);
  EXPECT_NEAR(m.pearson, 1.0, 1e-12);
  EXPECT_NEAR(m.max_abs, 0.05, 1e-12);
  EXPECT_FALSE(judge_fp32(m, threshold_for("float32", "*")).pass);
}

TEST(Metrics, WorstRowIsReportedByMinRowCosine) {
  at::Tensor ref = at::randn({100, 64}, at::kDouble);
  at::Tensor ours = ref.clone();
  ours[37] = -ours[37];  // one bad token among 100
  Metrics m = compare(ours, ref);
  EXPECT_NEAR(m.min_row_cos, -1.0, 1e-9);
  EXPECT_EQ(m.worst_index[0], 37);
}

TEST(Metrics, RowCosinesGiveOneValuePerRowInRowMajorOrder) {
  // [2, 3, 4]: six rows of four. Row 4 (batch 1, token 1) is negated, row 2 scaled (cosine stays 1), row 5
  // zeroed in ours only (cosine 0 by definition), and both sides of row 0 are zero (cosine 1).
  at::Tensor ref = at::randn({2, 3, 4}, at::kDouble);
  ref[0][0].zero_();
  at::Tensor ours = ref.clone();
  ours[1][1] = -ours[1][1];
  ours[0][2] = ours[0][2] * 3.0;
  ours[1][2].zero_();
  const std::vector<double> rc = row_cosines(ours, ref);
  ASSERT_EQ(rc.size(), 6u);
  EXPECT_DOUBLE_EQ(rc[0], 1.0);
  EXPECT_NEAR(rc[1], 1.0, 1e-12);
  EXPECT_NEAR(rc[2], 1.0, 1e-12);
  EXPECT_NEAR(rc[3], 1.0, 1e-12);
  EXPECT_NEAR(rc[4], -1.0, 1e-12);
  EXPECT_DOUBLE_EQ(rc[5], 0.0);
  // An independent float64 computation of one row, and compare() carries the same values.
  const at::Tensor a = ours[1][1], b = ref[1][1];
  EXPECT_NEAR(rc[4], (a * b).sum().item<double>() / (a.norm() * b.norm()).item<double>(), 1e-15);
  const Metrics m = compare(ours, ref);
  ASSERT_EQ(m.row_cos.size(), 6u);
  for (size_t i = 0; i < rc.size(); ++i) EXPECT_DOUBLE_EQ(m.row_cos[i], rc[i]) << i;
  EXPECT_DOUBLE_EQ(m.min_row_cos, rc[4]);
  EXPECT_THROW(row_cosines(at::zeros({2, 4}), at::zeros({3, 4})), std::runtime_error);
}

TEST(Metrics, IntegersAreExact) {
  at::Tensor ref = at::arange(10, at::kLong);
  at::Tensor ours = ref.clone();
  ours[3] = 4;
  Metrics m = compare(ours, ref);
  EXPECT_TRUE(m.integer);
  EXPECT_EQ(m.mismatches, 1);
  EXPECT_FALSE(judge_exact(m).pass);
  EXPECT_TRUE(judge_exact(compare(ref, ref)).pass);
}

TEST(Metrics, ShapeAndDtypeMismatchesFail) {
  EXPECT_FALSE(compare(at::zeros({2, 3}), at::zeros({3, 2})).shape_ok);
  Metrics m = compare(at::zeros({2}, at::kFloat), at::zeros({2}, at::kBFloat16));
  EXPECT_FALSE(m.shape_ok);
  EXPECT_NE(m.shape_msg.find("dtype mismatch: ours float32, ref bfloat16"), std::string::npos) << m.shape_msg;
  EXPECT_TRUE(compare(at::zeros({2}, at::kFloat), at::zeros({2}, at::kBFloat16), /*check_dtype=*/false).shape_ok);
}

TEST(Metrics, NanInOursIsNeverAPass) {
  at::Tensor ref = at::randn({4, 4}, at::kDouble);
  at::Tensor ours = ref.clone();
  ours[1][1] = NAN;
  Metrics m = compare(ours, ref);
  EXPECT_FALSE(judge_fp32(m, threshold_for("float32", "*")).pass);
}

TEST(Thresholds, Bf16RuleComparesAgainstHfOwnError) {
  at::Tensor fp32 = at::randn({64, 64}, at::kDouble);
  at::Tensor hf = fp32.to(at::kBFloat16).to(at::kDouble);          // HF's bf16 rounding
  at::Tensor ours_ok = hf.clone();                                 // the same rounding
  at::Tensor ours_bad = (fp32 * 1.02).to(at::kBFloat16).to(at::kDouble);  // a 2% scale bug
  const Threshold& t = threshold_for("bfloat16", "*");
  EXPECT_TRUE(judge_bf16(compare(ours_ok, fp32), compare(hf, fp32), t).pass);
  EXPECT_FALSE(judge_bf16(compare(ours_bad, fp32), compare(hf, fp32), t).pass);
}

TEST(Thresholds, EveryRowHasAReason) {
  for (const auto& row : threshold_table()) EXPECT_FALSE(row.reason.empty()) << row.dtype << " " << row.module_class;
  EXPECT_THROW(threshold_for("float8", "*"), std::runtime_error);
}

}  // namespace
}  // namespace qvl
