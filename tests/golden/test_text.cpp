// Text side checks beyond per-call replay.
#include <gtest/gtest.h>

#include "functional/text.h"
#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

const std::string kFp32 = data_path("recordings/tiny_fp32.h5");

// Text-only input reduces M-RoPE to 1-D RoPE, so recordings must hold vision tokens whose (t, h, w)
// positions differ from each other: checked on the recorded get_rope_index outputs (images and video).
TEST(MRopeGolden, VisionTokensHavePositionsThatDifferFromTheTextIndex) {
  auto files = recording_files();
  if (files.empty()) GTEST_SKIP() << "no recordings";
  int checked = 0, videos = 0;
  for (const auto& path : files) {
    Recording rec = Recording::open(path);
    for (size_t i = 0; i < rec.calls().size(); ++i) {
      if (rec.calls()[i].module_class != "get_rope_index") continue;
      RecordedCall c = rec.load(i);
      at::Tensor pos = c.output(0).as_tensor();                    // [3, B, T]
      at::Tensor types = c.input("mm_token_type_ids").as_tensor();  // [B, T]
      at::Tensor vision = types.ne(0);
      ASSERT_GT(vision.sum().item<int64_t>(), 0) << path << ": no vision tokens";
      at::Tensor t = pos[0].masked_select(vision), h = pos[1].masked_select(vision), w = pos[2].masked_select(vision);
      EXPECT_FALSE(at::equal(t, h)) << path;
      EXPECT_FALSE(at::equal(h, w)) << path;
      // Text tokens keep equal positions on all three rows.
      at::Tensor text = types.eq(0);
      EXPECT_TRUE(at::equal(pos[0].masked_select(text), pos[1].masked_select(text))) << path;
      if (types.eq(2).any().item<bool>()) {
        // Video frames advance the temporal row by tokens_per_second * int(second_per_grid_ts) per frame
        // pair. int() truncates a second_per_grid_ts below 1 (fps above 2) to 0: then every frame has one t.
        const bool has_spg = c.inputs.has("second_per_grid_ts") && c.inputs.at("second_per_grid_ts").is_tensor();
        const bool truncated = has_spg && c.inputs.at("second_per_grid_ts").tensor.lt(1).all().item<bool>();
        at::Tensor tv = pos[0].masked_select(types.eq(2));
        const int64_t distinct = std::get<0>(at::_unique(tv)).numel();
        if (truncated) {
          EXPECT_EQ(distinct, 1) << path << ": second_per_grid_ts < 1 truncates the frame interval to 0";
        } else {
          EXPECT_GT(distinct, 1) << path << ": all video tokens share one t";
        }
        ++videos;
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
  if (file_exists(generated_recordings_dir() + "/.stamp")) EXPECT_GT(videos, 0) << "no video recording checked";
}

// Qwen3-VL's interleaved M-RoPE (frequency i from axis i % 3 within the sections) in place of
// Qwen2.5-VL's chunked layout: it agrees on text tokens (all rows equal) and must fail on vision tokens.
TEST(PlantedBugText, InterleavedMRopeInPlaceOfChunkedFails) {
  QVL_REQUIRE_FILE(kFp32);
  auto bug = [](const RecordedCall& c, const Weights&, const ModelConfig& cfg) {
    const auto& t = cfg.text;
    at::Tensor pos = c.input("position_ids", 1).as_tensor();
    const int64_t Dh = t.head_dim(), B = pos.size(1);
    at::Tensor inv = rope_inv_freq(t.rope_theta, Dh);
    at::Tensor freqs = at::matmul(inv.view({1, 1, -1, 1}).expand({3, B, -1, 1}), pos.unsqueeze(2).to(at::kFloat))
                           .transpose(2, 3);  // [3, B, T, Dh/2]
    at::Tensor f = freqs[0].clone();
    for (int64_t axis : {1, 2}) {
      for (int64_t i = axis; i < std::min<int64_t>(t.mrope_section[axis] * 3, Dh / 2); i += 3)
        f.select(-1, i).copy_(freqs[axis].select(-1, i));
    }
    at::Tensor full = at::cat({f, f}, -1);
    const auto dtype = c.input("x", 0).as_tensor().scalar_type();
    return Value::tuple({Value::of(full.cos().to(dtype)), Value::of(full.sin().to(dtype))});
  };
  expect_all_fail(kFp32, "Qwen2_5_VLRotaryEmbedding", bug);
}

}  // namespace
}  // namespace qvl::testing
