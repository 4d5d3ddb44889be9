// token_mismatch: how `qvl generate` and the golden Generate tests judge our tokens against the ones
// transformers' generate recorded.
#include <gtest/gtest.h>

#include "instrument/replay.h"

namespace qvl {
namespace {

RecordedGeneration recorded(std::vector<std::vector<int64_t>> rows, int64_t max_new) {
  RecordedGeneration g;
  g.options.max_new_tokens = max_new;
  g.new_tokens = std::move(rows);
  return g;
}

at::Tensor tokens(std::vector<std::vector<int64_t>> rows) {
  at::Tensor t = at::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())}, at::kLong);
  for (size_t b = 0; b < rows.size(); ++b)
    for (size_t i = 0; i < rows[b].size(); ++i) t[b][i] = rows[b][i];
  return t;
}

TEST(TokenMismatch, EqualTokensAreNoMismatch) {
  EXPECT_EQ(token_mismatch(tokens({{5, 6, 7}, {8, 9, 2}}), 3, recorded({{5, 6, 7}, {8, 9, 2}}, 3)), "");
}

TEST(TokenMismatch, NamesTheRowStepAndBothTokens) {
  EXPECT_EQ(token_mismatch(tokens({{5, 6, 7}, {8, 4, 2}}), 3, recorded({{5, 6, 7}, {8, 9, 2}}, 3)),
            "row 1: first differing token at step 1 (ours 4, transformers 9)");
}

TEST(TokenMismatch, RowCountMustAgree) {
  EXPECT_EQ(token_mismatch(tokens({{5, 6}}), 2, recorded({{5, 6}, {5, 6}}, 2)), "rows: ours 1, transformers 2");
}

TEST(TokenMismatch, ALengthDifferenceIsAllowedOnlyWhereACapCutTheShorterSide) {
  // Ours cut by -n 2 below transformers' 4 tokens: the first 2 are compared.
  EXPECT_EQ(token_mismatch(tokens({{5, 6}}), 2, recorded({{5, 6, 7, 8}}, 4)), "");
  // Transformers cut at its max_new_tokens 2, ours ran to 4: its 2 are compared.
  EXPECT_EQ(token_mismatch(tokens({{5, 6, 7, 8}}), 4, recorded({{5, 6}}, 2)), "");
  // Ours stopped early (an eos on our side only) without reaching our cap: a difference.
  EXPECT_EQ(token_mismatch(tokens({{5, 6}}), 8, recorded({{5, 6, 7, 8}}, 8)), "row 0: ours has 2 tokens, transformers 4");
  // Transformers stopped early without reaching its cap: a difference.
  EXPECT_EQ(token_mismatch(tokens({{5, 6, 7, 8}}), 8, recorded({{5, 6}}, 8)), "row 0: ours has 4 tokens, transformers 2");
}

}  // namespace
}  // namespace qvl
