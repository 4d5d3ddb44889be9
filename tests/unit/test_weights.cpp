#include <gtest/gtest.h>

#include "functional/weights.h"

namespace qvl {
namespace {

Weights sample() {
  Weights w;
  w.set("model.visual.blocks.0.attn.qkv.weight", at::zeros({12, 4}));
  w.set("model.visual.blocks.0.attn.qkv.bias", at::zeros({12}));
  w.set("model.visual.blocks.0.attn.proj.weight", at::zeros({4, 4}));
  w.set("model.visual.blocks.10.norm1.weight", at::ones({4}));
  w.set("model.visual.blocks.2.norm1.weight", at::ones({4}));
  return w;
}

TEST(Weights, DescendsDottedAndIndexedPaths) {
  Weights w = sample();
  Weights attn = w.at("model.visual.blocks").at(0).at("attn");
  EXPECT_EQ(attn.path(), "model.visual.blocks.0.attn");
  EXPECT_EQ(attn.tensor("qkv.weight").size(0), 12);
  EXPECT_TRUE(w.has("model.visual.blocks.2.norm1.weight"));
  EXPECT_FALSE(w.has("model.visual.blocks.3"));
}

TEST(Weights, SubtreesAreViewsOfTheSameStorage) {
  Weights w = sample();
  Weights blk = w.at("model.visual.blocks.0");
  blk.set("mlp.up_proj.weight", at::ones({2, 2}));
  EXPECT_TRUE(w.has("model.visual.blocks.0.mlp.up_proj.weight"));
}

TEST(Weights, MissingKeyNamesFullPathAndSiblings) {
  Weights w = sample();
  try {
    w.at("model.visual.blocks.0.attn").tensor("qkvx.weight");
    FAIL() << "expected WeightsError";
  } catch (const WeightsError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'model.visual.blocks.0.attn.qkvx'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("proj, qkv"), std::string::npos) << msg;
  }
}

TEST(Weights, ShapeMismatchNamesExpectedAndGot) {
  Weights w = sample();
  try {
    w.at("model.visual.blocks.0.attn").tensor("qkv.weight", {12, 8});
    FAIL() << "expected WeightsError";
  } catch (const WeightsError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.visual.blocks.0.attn.qkv.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected [12, 8], got [12, 4]"), std::string::npos) << msg;
  }
  EXPECT_NO_THROW(w.at("model.visual.blocks.0.attn").tensor("qkv.weight", {12, -1}));
}

TEST(Weights, GroupIsNotATensorAndTensorIsNotAGroup) {
  Weights w = sample();
  EXPECT_THROW(w.at("model.visual").tensor(), WeightsError);
  EXPECT_THROW(w.at("model.visual.blocks.0.attn.qkv.weight.x"), WeightsError);
  EXPECT_THROW(w.set("model.visual.blocks.0.attn", at::zeros({1})), WeightsError);
}

TEST(Weights, KeysAndFlattenUseNaturalOrder) {
  Weights w = sample();
  std::vector<std::string> keys = w.at("model.visual.blocks").keys();
  ASSERT_EQ(keys.size(), 3u);
  EXPECT_EQ(keys[0], "0");
  EXPECT_EQ(keys[1], "2");
  EXPECT_EQ(keys[2], "10");
  auto flat = w.flatten();
  ASSERT_EQ(flat.size(), 5u);
  EXPECT_EQ(flat.back().first, "model.visual.blocks.10.norm1.weight");
}

TEST(Weights, JoinPathLeavesOutAnEmptySide) {
  EXPECT_EQ(join_path("model.visual", "blocks"), "model.visual.blocks");
  EXPECT_EQ(join_path("", "lm_head"), "lm_head");
  EXPECT_EQ(join_path("model.language_model.rotary_emb", ""), "model.language_model.rotary_emb");
  EXPECT_EQ(join_path("", ""), "");
}

TEST(Weights, MalformedPathIsAnError) {
  Weights w;
  EXPECT_THROW(w.set("a..b", at::zeros({1})), WeightsError);
  EXPECT_THROW(w.at(""), WeightsError);
}

}  // namespace
}  // namespace qvl
