// The committed weights/tiny.h5 is exactly what the converter makes of the committed HF checkpoint
// weights/tiny/, and direct loading of the checkpoint gives the same tree.
#include <gtest/gtest.h>

#include "converter/convert.h"
#include "instrument/h5io.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

TEST(TinyWeights, CommittedFileEqualsAFreshConversion) {
  const std::string ckpt = data_path("weights/tiny"), committed = data_path("weights/tiny.h5");
  QVL_REQUIRE_FILE(ckpt + "/model.safetensors");
  QVL_REQUIRE_FILE(committed);
  TempDir d;
  ConvertReport rep = convert_checkpoint(ckpt, d.file("fresh.h5"));
  EXPECT_EQ(rep.key_layout, "hub");  // transformers 5.x save_pretrained writes visual.*, model.layers.*
  h5::WeightsFile fresh = h5::read_weights(d.file("fresh.h5"));
  h5::WeightsFile old = h5::read_weights(committed);
  auto a = fresh.weights.flatten(), b = old.weights.flatten();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
  }
  EXPECT_EQ(fresh.config_json, old.config_json);
  EXPECT_EQ(fresh.attrs.at("source"), old.attrs.at("source"));  // same shard sha256
}

TEST(TinyWeights, DirectCheckpointLoadingEqualsTheWeightsFile) {
  const std::string ckpt = data_path("weights/tiny"), committed = data_path("weights/tiny.h5");
  QVL_REQUIRE_FILE(ckpt + "/model.safetensors");
  QVL_REQUIRE_FILE(committed);
  ModelConfig cfg;
  Weights direct = load_checkpoint(ckpt, &cfg);
  Weights file = load_weights_any(committed, nullptr);
  auto a = direct.flatten(), b = file.flatten();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
  // Canonical runtime paths, whatever the checkpoint layout.
  EXPECT_TRUE(direct.has("model.visual.merger.mlp.0.bias"));
  EXPECT_TRUE(direct.has("model.language_model.layers.2.self_attn.q_proj.weight"));
}

TEST(TinyWeights, KeyLayoutsMapToOneCanonicalTree) {
  std::string l;
  EXPECT_EQ(canonical_key("visual.blocks.0.attn.qkv.weight", "s", &l), "model.visual.blocks.0.attn.qkv.weight");
  EXPECT_EQ(l, "hub");
  EXPECT_EQ(canonical_key("model.layers.3.mlp.up_proj.weight", "s", &l),
            "model.language_model.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(canonical_key("model.language_model.norm.weight", "s", &l), "model.language_model.norm.weight");
  EXPECT_EQ(l, "runtime");
  EXPECT_EQ(canonical_key("lm_head.weight", "s", &l), "lm_head.weight");
  try {
    canonical_key("vision_tower.proj.weight", "model-00002-of-00004.safetensors", &l);
    FAIL();
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'vision_tower.proj.weight'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model-00002-of-00004.safetensors"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace qvl::testing
