// The host side of the fused CUDA paths (functional/cuda), which needs no GPU: the M-RoPE section maps the
// kernel reads, the input checks that run before any launch, and the clear failure of
// `qvl check --device cuda` on a machine without a usable CUDA device.
#include <gtest/gtest.h>

#include "functional/cuda/fused.h"
#include "functional/rope/rope1d.h"
#include "tests/support/test_support.h"

namespace qvl {
namespace {

std::string labels(const std::vector<uint8_t>& rows) {
  std::string s;
  for (uint8_t r : rows) s.push_back("THW"[r]);
  return s;
}

std::string repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

TEST(MropeRows, ChunkedQwen25Sections) {
  // Qwen2.5-VL's chunked map: [16, 24, 24] -> T x16 H x24 W x24
  EXPECT_EQ(labels(cuda::mrope_chunked_rows({16, 24, 24})), repeat("T", 16) + repeat("H", 24) + repeat("W", 24));
  // chunk i takes row i % 3, also past three chunks (text::rotary's recomposition)
  EXPECT_EQ(labels(cuda::mrope_chunked_rows({1, 1, 1, 2})), "THWTT");
}

TEST(MropeRows, InterleavedQwen3Sections) {
  // Qwen3-VL's interleaved map: [24, 20, 20] -> THW x20 then TTTT
  EXPECT_EQ(labels(cuda::mrope_interleaved_rows({24, 20, 20}, 64)), repeat("THW", 20) + "TTTT");
}

TEST(MropeRows, AgreeWithThePlainRopeBuilder) {
  // two independent implementations of the section maps: the kernel's and functional/rope's
  for (const std::vector<int64_t>& s : {std::vector<int64_t>{16, 24, 24}, {2, 3, 3}, {24, 20, 20}, {8, 4, 4}}) {
    EXPECT_EQ(labels(cuda::mrope_chunked_rows(s)), rope::mrope_labels(s, rope::MRopeLayout::Chunked));
  }
  // interleaved: sections whose H and W runs fit in the frequencies (3 * s[1], 3 * s[2] <= sum(s); the
  // plain builder refuses the others, Python's slicing would cut them short)
  for (const std::vector<int64_t>& s : {std::vector<int64_t>{24, 20, 20}, {8, 4, 4}}) {
    const int64_t half = s[0] + s[1] + s[2];
    EXPECT_EQ(labels(cuda::mrope_interleaved_rows(s, half)), rope::mrope_labels(s, rope::MRopeLayout::Interleaved));
  }
}

TEST(FusedRopeHost, AngleBuildersNameTheBadInput) {
  at::Tensor inv = at::ones({64});
  try {
    cuda::rope_mrope_chunked(at::zeros({3, 1, 5}, at::kLong), inv, {16, 24, 20});
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("mrope_section sums to 60 but inv_freq has 64"), std::string::npos) << e.what();
  }
  try {
    cuda::rope_vision_2d(at::zeros({7, 3}, at::kLong), inv);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("position_ids must be [S, 2] (h, w), got [7, 3]"), std::string::npos) << e.what();
  }
  try {
    cuda::rope_circle(at::zeros({3, 1, 5}, at::kLong), inv, {16, 24, 24});
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("Circle-RoPE positions are float32"), std::string::npos) << e.what();
  }
}

TEST(FusedRopeHost, RefusesHostTensors) {
  at::Tensor q = at::zeros({1, 4, 2, 8});
  try {
    cuda::rope_apply(q, q, cuda::rope_1d(at::zeros({1, 4}, at::kLong), at::ones({4})));
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("q must be on a CUDA device, got cpu"), std::string::npos) << e.what();
  }
}

TEST(QvlCheckCudaHost, FailsClearlyWithoutAUsableDevice) {
  const std::string why = cuda::unavailable_reason();
  if (why.empty()) GTEST_SKIP() << "a CUDA device is present: this test checks the message given without one";
  auto r = testing::run_qvl("check --device cuda");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("qvl check: error: --device cuda: " + why), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("qvl check\n"), std::string::npos) << "nothing must run without a device:\n" << r.output;
}

}  // namespace
}  // namespace qvl
