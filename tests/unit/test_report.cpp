// The HTML report's pieces (instrument/report.h), the one first-divergence rule (instrument/compare.h) and the
// vision-weights check of qvl import (converter/import_module_io.h). No data needed.
#include <gtest/gtest.h>

#include "converter/import_module_io.h"
#include "converter/shapes.h"
#include "instrument/compare.h"
#include "instrument/report.h"
#include "instrument/thresholds.h"

namespace qvl {
namespace {

CallHeader header(int64_t seq, int64_t parent, const std::string& path, const std::string& cls) {
  CallHeader h;
  h.seq = seq;
  h.parent = parent;
  h.module_path = path;
  h.module_class = cls;
  char g[16];
  std::snprintf(g, sizeof(g), "%06lld", static_cast<long long>(seq));
  h.group = g;
  return h;
}

TEST(FirstDivergentCall, IsTheFirstFailingCallWithoutAFailingDescendant) {
  // 0 tower > 1 block0 > 2 norm1, 3 attn ; 4 block1 > 5 mlp. A failing parent does not count before its child.
  std::vector<CallHeader> calls = {header(0, -1, "v", "T"), header(1, 0, "v.b0", "B"), header(2, 1, "v.b0.n", "N"),
                                   header(3, 1, "v.b0.a", "A"), header(4, 0, "v.b1", "B"), header(5, 4, "v.b1.m", "M")};
  EXPECT_EQ(first_divergent_call(calls, {false, false, false, false, false, false}), -1);
  EXPECT_EQ(first_divergent_call(calls, {true, true, false, true, true, true}), 3);
  EXPECT_EQ(first_divergent_call(calls, {true, false, false, false, true, false}), 4);  // block1 itself
  EXPECT_EQ(first_divergent_call(calls, {true, false, false, false, false, false}), 0);
  EXPECT_THROW(first_divergent_call(calls, {true}), std::runtime_error);
}

TEST(Report, EscapesEveryMarkupCharacter) {
  EXPECT_EQ(report::escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
}

TEST(Report, PatchPositionsUndoTheWindowOrder) {
  // One 4x4 image, merge 2: four merged groups in merge-block order (0: rows 0-1 x cols 0-1, 1: rows 0-1 x cols 2-3,
  // 2: rows 2-3 x cols 0-1, 3: rows 2-3 x cols 2-3).
  auto id = report::patch_positions({{1, 4, 4}}, {0, 1, 2, 3}, 2);
  ASSERT_EQ(id.size(), 16u);
  EXPECT_EQ(id[0].y, 0); EXPECT_EQ(id[0].x, 0);
  EXPECT_EQ(id[1].y, 0); EXPECT_EQ(id[1].x, 1);
  EXPECT_EQ(id[2].y, 1); EXPECT_EQ(id[2].x, 0);
  EXPECT_EQ(id[4].y, 0); EXPECT_EQ(id[4].x, 2);
  EXPECT_EQ(id[15].y, 3); EXPECT_EQ(id[15].x, 3);
  // Window order 3, 0, 2, 1: row 0 is now group 3's first patch, row 4 group 0's.
  auto w = report::patch_positions({{1, 4, 4}}, {3, 0, 2, 1}, 2);
  EXPECT_EQ(w[0].y, 2); EXPECT_EQ(w[0].x, 2);
  EXPECT_EQ(w[4].y, 0); EXPECT_EQ(w[4].x, 0);
  EXPECT_EQ(w[13].y, 0); EXPECT_EQ(w[13].x, 3);
  // Two images and two frames: the second image starts after the first image's frames.
  auto two = report::patch_positions({{2, 2, 2}, {1, 2, 4}}, {0, 1, 2, 3}, 2);
  EXPECT_EQ(two[4].image, 0); EXPECT_EQ(two[4].frame, 1);
  EXPECT_EQ(two[8].image, 1); EXPECT_EQ(two[8].frame, 0); EXPECT_EQ(two[12].x, 2);
  EXPECT_THROW(report::patch_positions({{1, 4, 4}}, {0, 1, 2}, 2), std::runtime_error);
  EXPECT_THROW(report::patch_positions({{1, 4, 4}}, {0, 1, 2, 9}, 2), std::runtime_error);
}

TEST(Report, TokenSpansAreRunsOfOneId) {
  auto s = report::token_spans({1, 7, 7, 7, 2, 7, 3}, 7);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].first, 1);
  EXPECT_EQ(s[0].second, 4);
  EXPECT_EQ(s[1].first, 5);
  EXPECT_EQ(s[1].second, 6);
  EXPECT_TRUE(report::token_spans({1, 2}, 7).empty());
}

TEST(Report, ColourRunsFromPaleAtNoErrorToDarkRed) {
  EXPECT_EQ(report::cos_colour(1.0), "#ebf4fc");
  EXPECT_EQ(report::cos_colour(-1.0), "#a50026");  // 1 - cos = 2, clamped at the dark end
  EXPECT_EQ(report::cos_colour(NAN), "#a50026");
  EXPECT_NE(report::cos_colour(1.0 - 1e-6), report::cos_colour(1.0 - 1e-3));
}

TEST(Report, RenderNamesTheFirstDivergenceAndLinksItsRow) {
  report::Input in;
  in.command = "qvl compare";
  in.dtype = "float32";
  in.summary = {{"reference", "a<b>.h5"}};
  for (int i = 0; i < 3; ++i) {
    report::Call c;
    c.header = header(i, -1, "model.language_model.layers." + std::to_string(i), "Qwen2_5_VLDecoderLayer");
    TensorCheck t;
    t.name = "out";
    t.vs_ref = compare(at::ones({1, 4, 8}) * (1 + 0.01 * (i == 2)), at::ones({1, 4, 8}));
    t.verdict = judge_fp32(t.vs_ref, threshold_for("float32", "*"));
    c.verdict = t.verdict.pass ? "PASS" : "FAIL";
    c.tensors = {t};
    in.calls.push_back(c);
  }
  in.first_divergent = 2;
  in.input_ids = {{5, 9, 9, 6}};
  in.image_token_id = 9;
  const std::string html = report::render(in);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("a&lt;b&gt;.h5"), std::string::npos);
  EXPECT_NE(html.find("first divergent module: <b><a href=\"#call-000002\">model.language_model.layers.2</a>"), std::string::npos);
  EXPECT_NE(html.find("<tr id=\"call-000002\" class=\"first\">"), std::string::npos);
  EXPECT_NE(html.find("image tokens 1..2"), std::string::npos);  // the image span over the heatmap
  EXPECT_EQ(html.find("http://", 0), html.find("http://www.w3.org/2000/svg"));
  EXPECT_EQ(html.find("<script src"), std::string::npos);
}

TEST(ImportModuleIO, VisionWeightsAreCheckedAgainstTheConfig) {
  ModelConfig cfg;
  cfg.vision.depth = 1;
  cfg.vision.hidden_size = 8;
  cfg.vision.intermediate_size = 12;
  cfg.vision.num_heads = 2;
  cfg.vision.out_hidden_size = 6;
  cfg.text.vocab_size = 10;
  cfg.text.hidden_size = 4;
  cfg.text.intermediate_size = 8;
  cfg.text.num_hidden_layers = 1;
  cfg.text.num_attention_heads = 2;
  cfg.text.num_key_value_heads = 1;
  std::map<std::string, std::vector<int64_t>> vis;
  for (const auto& e : expected_tensors(cfg))
    if (e.key.rfind("model.visual.", 0) == 0) vis[e.key] = e.shape;
  EXPECT_NO_THROW(check_vision_weights(vis, cfg, "v.pt"));  // text weights are not needed
  auto bad = vis;
  bad["model.visual.blocks.0.norm1.weight"] = {9};
  bad.erase("model.visual.merger.ln_q.weight");
  bad["model.visual.blocks.1.norm1.weight"] = {8};
  try {
    check_vision_weights(bad, cfg, "v.pt");
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("v.pt: 3 vision tensor(s) do not match config.json", 0), 0u) << m;
    EXPECT_NE(m.find("shape mismatch for 'model.visual.blocks.0.norm1.weight': expected [8], got [9]"), std::string::npos) << m;
    EXPECT_NE(m.find("missing tensor 'model.visual.merger.ln_q.weight'"), std::string::npos) << m;
    EXPECT_NE(m.find("unexpected tensor 'model.visual.blocks.1.norm1.weight'"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace qvl
