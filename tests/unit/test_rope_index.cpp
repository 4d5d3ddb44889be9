// model::get_rope_index on hand-built prompts: the frame interval of a video and the merge size, against
// positions written out from transformers 5.17's get_rope_index / get_vision_position_ids formulas:
//   interval = tokens_per_second * int(second_per_grid_ts[v])   (int() truncates: 0.5 -> 0, 1.9 -> 1)
//   a vision group starting at position s: t = s + f * interval, h = s + i, w = s + j (merged grid);
//   the next text starts at s + max(h, w) / spatial_merge_size.
// The recordings tiny_video_fps1 / tiny_video_fps4 check the same against transformers itself.
#include <gtest/gtest.h>

#include "functional/config.h"
#include "functional/model.h"
#include "functional/text.h"

namespace qvl::testing {
namespace {

ModelConfig config(int64_t merge, int64_t tokens_per_second) {
  ModelConfig c;
  c.vision.spatial_merge_size = merge;
  c.vision.tokens_per_second = tokens_per_second;
  return c;
}

// Two text tokens, a vision-start token, the vision group of `n` tokens (type `type`), two text tokens.
struct Prompt {
  at::Tensor ids, types;
};
Prompt prompt(int64_t n, int64_t type) {
  std::vector<int64_t> types = {0, 0, 0};
  types.insert(types.end(), n, type);
  types.insert(types.end(), {0, 0});
  at::Tensor t = at::tensor(types, at::kLong).view({1, -1});
  return {t * 7 + 1, t};  // ids only need the right length; get_rope_index groups by type
}

// The expected [3, 1, L] positions of prompt(): a merged grid (T, h, w) whose frames are `interval` apart.
at::Tensor expected(int64_t T, int64_t h, int64_t w, int64_t interval) {
  const int64_t s = 3;
  std::vector<int64_t> rows[3];
  for (int64_t i = 0; i < s; ++i)
    for (auto& r : rows) r.push_back(i);
  for (int64_t f = 0; f < T; ++f)
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j) {
        rows[0].push_back(s + f * interval);
        rows[1].push_back(s + i);
        rows[2].push_back(s + j);
      }
  const int64_t next = s + std::max(h, w);
  for (int64_t i = 0; i < 2; ++i)
    for (auto& r : rows) r.push_back(next + i);
  return at::stack({at::tensor(rows[0], at::kLong), at::tensor(rows[1], at::kLong), at::tensor(rows[2], at::kLong)})
      .view({3, 1, -1});
}

TEST(GetRopeIndex, VideoFrameIntervalTruncatesSecondPerGridTsAsTransformersDoes) {
  // A video of grid (3, 4, 4): 3 frames of 2 x 2 merged tokens; tokens_per_second 2.
  const Prompt p = prompt(12, 2);
  const at::Tensor grid = at::tensor(std::vector<int64_t>{3, 4, 4}, at::kLong).view({1, 3});
  struct Case {
    float spg;  // recorded as float32, as the processor's second_per_grid_ts
    int64_t interval;
  };
  for (const Case& k : {Case{0.5f, 0}, Case{0.999f, 0}, Case{1.0f, 2}, Case{1.9f, 2}, Case{2.0f, 4}, Case{4.0f, 8}}) {
    SCOPED_TRACE("second_per_grid_ts " + std::to_string(k.spg));
    const at::Tensor spg = at::tensor(std::vector<float>{k.spg});
    auto ri = model::get_rope_index(p.ids, p.types, {}, grid, spg, {}, config(2, 2));
    const at::Tensor want = expected(3, 2, 2, k.interval);
    EXPECT_TRUE(at::equal(ri.position_ids, want)) << ri.position_ids << "\nwant\n" << want;
    // rope_deltas = max position + 1 - length (the temporal row can exceed the text positions)
    EXPECT_EQ(ri.deltas.item<int64_t>(), want.max().item<int64_t>() + 1 - p.ids.size(1));
  }
}

TEST(GetRopeIndex, VideoWithoutSecondPerGridTsUsesOneSecond) {
  const Prompt p = prompt(12, 2);
  const at::Tensor grid = at::tensor(std::vector<int64_t>{3, 4, 4}, at::kLong).view({1, 3});
  auto ri = model::get_rope_index(p.ids, p.types, {}, grid, {}, {}, config(2, 3));
  EXPECT_TRUE(at::equal(ri.position_ids, expected(3, 2, 2, 3)));  // tokens_per_second 3 x 1
}

TEST(GetRopeIndex, ImagesIgnoreTheFrameInterval) {
  const Prompt p = prompt(4, 1);
  const at::Tensor grid = at::tensor(std::vector<int64_t>{1, 4, 4}, at::kLong).view({1, 3});
  auto ri = model::get_rope_index(p.ids, p.types, grid, {}, at::tensor(std::vector<float>{0.5f}), {}, config(2, 2));
  EXPECT_TRUE(at::equal(ri.position_ids, expected(1, 2, 2, 1)));
}

TEST(GetRopeIndex, SpatialMergeSizeThreeDividesTheGridByThree) {
  // An image of grid (1, 6, 9) with merge 3: 2 x 3 merged tokens; the next text starts 3 later.
  const Prompt p = prompt(6, 1);
  const at::Tensor grid = at::tensor(std::vector<int64_t>{1, 6, 9}, at::kLong).view({1, 3});
  auto ri = model::get_rope_index(p.ids, p.types, grid, {}, {}, {}, config(3, 2));
  EXPECT_TRUE(at::equal(ri.position_ids, expected(1, 2, 3, 1))) << ri.position_ids;
}

}  // namespace
}  // namespace qvl::testing
