// The vision-side RoPE variants against the outputs of the papers' official code (tests/data/rope_golden):
// naver-ai/rope-vit (rope_vit.h5: "axial", "mixed") and Spiral_RoPE (spiral_rope.h5: "spiral_rope_apply").
// The golden folder is required: a missing folder FAILS with the path it looked for.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "functional/rope/rope2d.h"
#include "functional/rope/spiral.h"
#include "instrument/metrics.h"
#include "instrument/rope_check.h"
#include "instrument/thresholds.h"
#include "tests/support/test_support.h"

namespace qvl::rope_check {
namespace {

std::string golden_dir() { return std::string(QVL_SOURCE_DIR) + "/tests/data/rope_golden"; }

// Reads tests/data/rope_golden/<file>; an absent folder or file is a test failure, never a skip.
bool load(const std::string& file, std::vector<GoldenCase>* out) {
  const std::string dir = golden_dir(), path = dir + "/" + file;
  if (!testing::file_exists(dir)) {
    ADD_FAILURE() << "golden folder missing: " << dir
                  << " (the official-code outputs are committed there; see its README.md)";
    return false;
  }
  if (!testing::file_exists(path)) {
    ADD_FAILURE() << "golden file missing: " << path;
    return false;
  }
  *out = read_golden_file(path);
  return true;
}

std::string describe(const CaseCheck& r) {
  std::string s = r.name + (r.pass ? ": PASS" : ": FAIL") + (r.error.empty() ? "" : " (" + r.error + ")");
  for (const auto& o : r.outputs) {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "\n    %-10s %-6s %s max_abs %.3g max_rel %.3g pearson %.9f %s", o.name.c_str(),
                  o.rule.c_str(), o.pass ? "ok  " : "FAIL", o.max_abs, o.max_rel, o.pearson, o.detail.c_str());
    s += buf;
  }
  for (const auto& [k, v] : r.notes) s += "\n    note " + k + ": " + v;
  return s;
}

// Every case of `function` in `file` passes check_case; returns how many ran.
int expect_cases_pass(const std::string& file, const std::string& function) {
  std::vector<GoldenCase> cases;
  if (!load(file, &cases)) return 0;
  int n = 0;
  for (const auto& c : cases) {
    if (c.function != function) continue;
    CaseCheck r = check_case(c);
    std::printf("%s\n", describe(r).c_str());
    EXPECT_TRUE(r.pass) << describe(r);
    EXPECT_FALSE(r.outputs.empty()) << c.name << ": nothing compared";
    ++n;
  }
  EXPECT_GT(n, 0) << "no '" << function << "' case in " << file;
  return n;
}

Judgement fp32(const at::Tensor& ours, const at::Tensor& ref) {
  return judge_fp32(compare(ours, ref), threshold_for("float32", "*"));
}

TEST(RopeVitGolden, AxialMatchesTheOfficialCode) { expect_cases_pass("rope_vit.h5", "axial"); }

TEST(RopeVitGolden, MixedMatchesTheOfficialCode) {
  std::vector<GoldenCase> cases;
  if (!load("rope_vit.h5", &cases)) return;
  expect_cases_pass("rope_vit.h5", "mixed");
  // the init check says what it did
  for (const auto& c : cases) {
    if (c.function != "mixed") continue;
    CaseResult r = run_mixed_case(c);
    ASSERT_TRUE(r.notes.count("freqs")) << c.name;
    EXPECT_NE(r.notes.at("freqs").find("alpha"), std::string::npos);
  }
}

TEST(SpiralGolden, ReferenceCompatibleModeMatchesTheOfficialCode) {
  expect_cases_pass("spiral_rope.h5", "spiral_rope_apply");
}

// The explicit rotation-matrix form reproduces the official q/k too (the complex form is what check_case uses).
TEST(RopeVitGolden, RotationMatrixFormMatchesTheOfficialCode) {
  std::vector<GoldenCase> cases;
  if (!load("rope_vit.h5", &cases)) return;
  int n = 0;
  for (const auto& c : cases) {
    if (c.function == "axial") {
      at::Tensor a = rope::axial_grid_angles(c.params.at("dim"), c.params.at("end_x"), c.params.at("end_y"),
                                             c.params.at("theta").get<double>());
      for (const char* x : {"q", "k"}) {
        Judgement j = fp32(rope::apply_pairs_matrix(c.inputs.at(std::string("x") + x), a), c.outputs.at(x));
        EXPECT_TRUE(j.pass) << c.name << " " << x << ": " << j.why;
        ++n;
      }
    } else if (c.function == "mixed") {
      at::Tensor a = rope::mixed_angles(c.outputs.at("freqs"), c.inputs.at("t_x"), c.inputs.at("t_y"),
                                        c.params.at("num_heads").get<int64_t>());
      for (int64_t l = 0; l < a.size(0); ++l) {
        for (const char* x : {"q", "k"}) {
          const std::string key = std::string(x) + "_layer" + std::to_string(l);
          Judgement j = fp32(rope::apply_pairs_matrix(c.inputs.at(std::string("x") + x), a[l]), c.outputs.at(key));
          EXPECT_TRUE(j.pass) << c.name << " " << key << ": " << j.why;
          ++n;
        }
      }
    }
  }
  EXPECT_GT(n, 0);
}

// Where the two Spiral forms differ on the official outputs: exact (unclamped) phases miss the golden y on
// every clamped token (each one alone fails the float32 rule) and match it on every other token.
TEST(SpiralGolden, ExactModeDiffersFromTheOfficialCodeOnlyOnClampedTokens) {
  std::vector<GoldenCase> cases;
  if (!load("spiral_rope.h5", &cases)) return;
  int rotated = 0;
  for (const auto& c : cases) {
    rope::SpiralConfig sc;
    sc.head_dim = c.params.at("head_dim");
    sc.rotate = c.params.at("rotate");
    sc.same_theta = c.params.at("same_theta");
    sc.max_freq = c.params.at("max_freq_lang");
    sc.min_freq = c.params.at("min_freq_lang");
    sc.truncate_percentage = c.params.at("truncate_percentage");
    sc.theta = c.params.at("theta");
    sc.pt_seq_len = c.params.at("rope_size");
    const at::Tensor& x = c.inputs.at("x");
    const at::Tensor& y = c.outputs.at("y");
    const int64_t n = sc.pt_seq_len;
    ASSERT_EQ(x.size(1), n * n) << c.name;
    at::Tensor ye = rope::apply_spiral(x, rope::spiral_grid_angles(rope::spiral_frequencies(sc), n, sc, rope::SpiralMode::kExact));
    at::Tensor clamped = rope::spiral_clamped(n, sc);
    at::Tensor any = clamped.numel() ? clamped.any(1) : at::zeros({n * n}, at::kBool);
    at::Tensor inside = any.logical_not().nonzero().squeeze(1), outside = any.nonzero().squeeze(1);
    Judgement j = fp32(ye.index_select(1, inside), y.index_select(1, inside));
    EXPECT_TRUE(j.pass) << c.name << ": exact mode on the " << inside.numel() << " unclamped tokens: " << j.why;
    if (outside.numel() == 0) {
      EXPECT_LE(sc.rotate, 1) << c.name << ": rotated sub-blocks on a grid always clamp some corner";
      continue;
    }
    ++rotated;
    // per clamped token: its worst error relative to the tensor's scale, far above float32 rounding
    at::Tensor err = (ye.index_select(1, outside) - y.index_select(1, outside)).abs().amax({0, 2, 3});
    const double scale = y.abs().max().item<double>();
    const double weakest = err.min().item<double>() / scale;
    std::printf("%s: %ld of %ld tokens clamped; exact-mode error on them >= %.3g of max|y|\n", c.name.c_str(),
                static_cast<long>(outside.numel()), static_cast<long>(n * n), weakest);
    // every clamped token fails the float32 rule (max |err| <= max_rel x max |y|) that the unclamped ones pass
    const double limit = threshold_for("float32", "*").max_rel;
    EXPECT_GT(weakest, limit) << c.name << ": a clamped token is indistinguishable from the exact form";
  }
  EXPECT_GT(rotated, 0);
}

}  // namespace
}  // namespace qvl::rope_check
