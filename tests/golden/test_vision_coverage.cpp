// Every recording with a vision tower covers both attention kinds and window padding, and its metadata
// says so truthfully: the scenario's full/window block lists and padding flag are checked against the
// cu_seqlens each recorded block actually received.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "tests/golden/golden_support.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

TEST(VisionCoverage, VisionRecordingsCoverFullWindowedAndPadding) {
  auto files = recording_files();
  if (files.empty()) GTEST_SKIP() << "no recordings";
  int checked = 0;
  for (const auto& path : files) {
    Recording rec = Recording::open(path);
    if (!rec.has_attr("scenario")) continue;
    auto scenario = nlohmann::json::parse(rec.attr("scenario"));
    if (!scenario.contains("vision")) continue;
    const auto& v = scenario["vision"];
    EXPECT_FALSE(v["full_blocks"].empty()) << path << ": no full-attention block ran";
    EXPECT_FALSE(v["window_blocks"].empty()) << path << ": no windowed block ran";
    EXPECT_TRUE(v["window_padding"].get<bool>()) << path << ": no window padding";

    // What actually ran: per-frame cu_seqlens and window boundaries, then each block's cu_seqlens input.
    at::Tensor cu, cu_win;
    std::set<int64_t> full, window;
    for (size_t i = 0; i < rec.calls().size(); ++i) {
      const CallHeader& h = rec.calls()[i];
      if (h.module_class == "get_vision_attention_seqlens") cu = rec.load(i).output(0).as_tensor();
      if (h.module_class == "get_vision_window_index") cu_win = rec.load(i).output(1).as_tensor();
      if (h.module_class != "Qwen2_5_VLVisionBlock") continue;
      const at::Tensor got = rec.load(i).input("cu_seqlens", 1).as_tensor();
      const int64_t block = nlohmann::json::parse(h.settings).at("block_index").get<int64_t>();
      ASSERT_TRUE(cu.defined() && cu_win.defined()) << path << ": block before the index builders";
      if (at::equal(got, cu) && !at::equal(cu, cu_win)) full.insert(block);
      else if (at::equal(got, cu_win)) window.insert(block);
      else ADD_FAILURE() << path << ": block " << block << " received neither cu_seqlens nor cu_window_seqlens";
    }
    EXPECT_EQ(full, v["full_blocks"].get<std::set<int64_t>>()) << path;
    EXPECT_EQ(window, v["window_blocks"].get<std::set<int64_t>>()) << path;
    // Uneven windows: not every window holds the same number of patches.
    at::Tensor sizes = cu_win.slice(0, 1) - cu_win.slice(0, 0, -1);
    EXPECT_GT(std::get<0>(at::_unique(sizes)).numel(), 1) << path << ": all windows are the same size";
    ++checked;
  }
  EXPECT_GT(checked, 0) << "no recording with a vision tower";
}

// The generated scenarios exist (the build records them when the Python environment is configured).
TEST(VisionCoverage, VisionScenariosAreRecorded) {
  const std::string dir = generated_recordings_dir();
  if (!std::filesystem::exists(dir + "/.stamp")) {
    GTEST_SKIP() << "scenario recordings absent: " << dir << " (configure with -DQVL_PYTHON=<pinned venv python>)";
  }
  for (const char* name : {"tiny_w112_252x196", "tiny_two_images", "tiny_video", "vision_real_476x420",
                           // what users vary (frame rates, mixed media, image shapes, config fields)
                           "tiny_video_fps1", "tiny_video_fps4", "tiny_image_video", "tiny_small_wide",
                           "tiny_variant_text", "tiny_merge3_mha"})
    for (const char* d : {"fp32", "bf16"})
      EXPECT_TRUE(file_exists(dir + "/" + name + "_" + d + ".h5")) << name << "_" << d;
}

}  // namespace
}  // namespace qvl::testing
