#include <gtest/gtest.h>

#include "instrument/config_json.h"
#include "tests/support/test_support.h"

namespace qvl {
namespace {

std::string error_of(const std::string& json) {
  try {
    parse_model_config(json, "cfg.json");
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(Config, ParsesTheTinyCheckpoint) {
  const std::string path = testing::data_path("weights/tiny/config.json");
  QVL_REQUIRE_FILE(path);
  ModelConfig c = load_model_config(path);
  EXPECT_EQ(c.vision.depth, 4);
  EXPECT_EQ(c.vision.head_dim(), 16);
  EXPECT_EQ(c.vision.window_size, 56);
  EXPECT_EQ(c.vision.fullatt_block_indexes, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(c.text.num_key_value_heads, 2);
  EXPECT_EQ(c.text.mrope_section, (std::vector<int64_t>{2, 3, 3}));
  EXPECT_DOUBLE_EQ(c.text.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.vision.rope_theta, 10000.0);
  EXPECT_EQ(c.image_token_id, 252);
}

TEST(Config, ParsesTheHubFlatLayout) {
  // The shape of the hub's Qwen2.5-VL-7B config.json (4.x flat layout, rope_scaling + rope_theta).
  const char* hub = R"({"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": false, "image_token_id": 151655,
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
      "out_hidden_size": 3584, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
      "tokens_per_second": 2, "in_chans": 3}})";
  ModelConfig c = parse_model_config(hub, "hub.json");
  EXPECT_EQ(c.text.head_dim(), 128);
  EXPECT_EQ(c.text.mrope_section, (std::vector<int64_t>{16, 24, 24}));
  EXPECT_EQ(c.vision.head_dim(), 80);
  EXPECT_EQ(c.vision.tokens_per_second, 2);
}

TEST(Config, MissingKeyNamesKeyAndFile) {
  const std::string e = error_of(R"({"vision_config": {"depth": 1}})");
  EXPECT_NE(e.find("cfg.json:vision_config: missing required key 'hidden_size'"), std::string::npos) << e;
  EXPECT_NE(error_of("{}").find("missing required key 'vision_config'"), std::string::npos);
  EXPECT_NE(error_of("{not json").find("not valid JSON"), std::string::npos);
}

TEST(Config, InconsistentSizesAreRejected) {
  const char* bad = R"({"hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
    "num_attention_heads": 4, "num_key_value_heads": 3, "vocab_size": 10,
    "vision_config": {"depth": 1, "hidden_size": 64, "intermediate_size": 8, "num_heads": 4, "out_hidden_size": 64}})";
  EXPECT_NE(error_of(bad).find("not a multiple of num_key_value_heads 3"), std::string::npos) << error_of(bad);
}

}  // namespace
}  // namespace qvl
