// Pluggable 2-D rotary in the Qwen2.5-VL vision tower (functional/rope/vision_plug.h), on the committed tiny
// model weights/tiny.h5: the default is the stock tower bit for bit, every builder runs, a swapped builder
// changes the output.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "functional/rope/vision_plug.h"
#include "functional/vision.h"
#include "instrument/config_json.h"
#include "instrument/h5io.h"
#include "tests/support/test_support.h"

namespace qvl::testing {
namespace {

struct Tiny {
  Weights visual;
  VisionConfig cfg;
};

const Tiny& tiny() {
  static const Tiny t = [] {
    const std::string path = data_path("weights/tiny.h5");
    h5::WeightsFile wf = h5::read_weights(path);
    return Tiny{wf.weights.at("model.visual"), parse_model_config(wf.config_json, path).vision};
  }();
  return t;
}

at::Tensor pixels(const at::Tensor& grid, const VisionConfig& c, uint64_t seed) {
  const int64_t S = (grid.select(1, 0) * grid.select(1, 1) * grid.select(1, 2)).sum().item<int64_t>();
  return at::randn({S, c.patch_dim()}, at::make_generator<at::CPUGeneratorImpl>(seed));
}

double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().item<double>();
}

TEST(VisionRopePlug, QwenBuilderKeepsTheTowerBitForBit) {
  QVL_REQUIRE_FILE(data_path("weights/tiny.h5"));
  const Tiny& t = tiny();
  at::Tensor grid = at::tensor(std::vector<int64_t>{1, 8, 8, 1, 4, 8}).view({2, 3});
  at::Tensor pv = pixels(grid, t.cfg, 1);
  rope::VisionRope qwen = rope::parse_vision_rope("qwen");
  auto base = vision::transformer(t.visual, pv, grid, t.cfg);
  auto plugged = vision::transformer(t.visual, pv, grid, t.cfg, nullptr, &qwen);
  EXPECT_TRUE(at::equal(base.last_hidden_state, plugged.last_hidden_state));
  EXPECT_TRUE(at::equal(base.pooler_output, plugged.pooler_output));
}

TEST(VisionRopePlug, EveryBuilderRunsThroughTheTowerAndChangesIt) {
  QVL_REQUIRE_FILE(data_path("weights/tiny.h5"));
  const Tiny& t = tiny();
  // one square and one rectangular image, then square images only for the clamp mode
  at::Tensor mixed_grid = at::tensor(std::vector<int64_t>{1, 8, 8, 1, 4, 8}).view({2, 3});
  at::Tensor square_grid = at::tensor(std::vector<int64_t>{1, 8, 8, 2, 4, 4}).view({2, 3});
  struct Case {
    std::string spec;
    const at::Tensor* grid;
  };
  const std::vector<Case> cases = {
      {"axial", &mixed_grid},
      {"axial:theta=50", &mixed_grid},
      {"mixed:theta=10,seed=0", &mixed_grid},
      {"mixed:seed=3", &mixed_grid},
      {"spiral:rotate=2,max_freq=1.5,mode=exact", &mixed_grid},
      {"spiral:rotate=4,mode=exact", &mixed_grid},
      {"spiral:rotate=2,mode=exact,same_theta=1,truncate=0.5", &mixed_grid},
      {"spiral:rotate=2,mode=clamp", &square_grid},
      {"spiral:rotate=2,mode=clamp,pt=14", &square_grid},
      {"block2:theta=100", &mixed_grid},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.spec);
    rope::VisionRope r = rope::parse_vision_rope(c.spec);
    at::Tensor pv = pixels(*c.grid, t.cfg, 2);
    auto base = vision::transformer(t.visual, pv, *c.grid, t.cfg);
    vision::TowerOutput out;
    ASSERT_NO_THROW(out = vision::transformer(t.visual, pv, *c.grid, t.cfg, nullptr, &r));
    EXPECT_EQ(out.pooler_output.sizes(), base.pooler_output.sizes());
    EXPECT_TRUE(at::isfinite(out.pooler_output).all().item<bool>());
    const double d = rel_diff(out.last_hidden_state, base.last_hidden_state);
    std::printf("%-45s tower output differs from qwen by %.3g (max |diff| / max |qwen|)\n", c.spec.c_str(), d);
    EXPECT_GT(d, 1e-3) << "a swapped rope must change the tower output";
  }
}

// block2 is axial built through the matrix exponential: same tower output up to float32 rounding.
TEST(VisionRopePlug, Block2TowerEqualsAxialTower) {
  QVL_REQUIRE_FILE(data_path("weights/tiny.h5"));
  const Tiny& t = tiny();
  at::Tensor grid = at::tensor(std::vector<int64_t>{1, 8, 8, 1, 4, 8}).view({2, 3});
  at::Tensor pv = pixels(grid, t.cfg, 3);
  rope::VisionRope axial = rope::parse_vision_rope("axial:theta=100"), block2 = rope::parse_vision_rope("block2:theta=100");
  auto a = vision::transformer(t.visual, pv, grid, t.cfg, nullptr, &axial);
  auto b = vision::transformer(t.visual, pv, grid, t.cfg, nullptr, &block2);
  const double d = rel_diff(b.pooler_output, a.pooler_output);
  std::printf("block2 vs axial tower: %.3g\n", d);
  EXPECT_LE(d, 1e-5);
}

TEST(VisionRopePlug, SpiralClampNeedsSquareImages) {
  QVL_REQUIRE_FILE(data_path("weights/tiny.h5"));
  const Tiny& t = tiny();
  at::Tensor grid = at::tensor(std::vector<int64_t>{1, 4, 8}).view({1, 3});
  rope::VisionRope r = rope::parse_vision_rope("spiral:mode=clamp");
  try {
    vision::transformer(t.visual, pixels(grid, t.cfg, 4), grid, t.cfg, nullptr, &r);
    ADD_FAILURE() << "no error for a 4x8 image in clamp mode";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("4x8"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not square"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qvl::testing
