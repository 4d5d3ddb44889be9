// Bad input through the qvl binary: one clear error line naming the file/key and expected/got values,
// a non-zero exit, and no crash.
#include <gtest/gtest.h>

#include <filesystem>

#include "instrument/h5io.h"
#include "tests/support/test_support.h"

namespace qvl {
namespace {
using testing::data_path;
using testing::run_qvl;
using testing::TempDir;

const std::string kWeights = data_path("weights/tiny.h5");
const std::string kRecording = data_path("recordings/tiny_fp32.h5");

void expect_contains(const testing::CommandResult& r, const std::string& needle) {
  EXPECT_NE(r.output.find(needle), std::string::npos) << "missing '" << needle << "' in:\n" << r.output;
}

// A copy of the tiny weights with one edit applied.
std::string edited_weights(const TempDir& d, const std::function<void(Weights&)>& edit) {
  h5::WeightsFile wf = h5::read_weights(kWeights);
  edit(wf.weights);
  const std::string out = d.file("edited.h5");
  h5::write_weights(out, wf.weights, wf.attrs);
  return out;
}

TEST(Cli, HelpWorksForEveryCommand) {
  for (const char* args : {"--help", "check --help", "convert --help", "inspect --help"}) {
    auto r = run_qvl(args);
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.output;
    expect_contains(r, "Usage");
  }
}

TEST(Cli, MissingRecordingNamesTheFile) {
  QVL_REQUIRE_FILE(kWeights);
  auto r = run_qvl(kWeights + " /nonexistent/rec.h5");  // no subcommand: usage error
  EXPECT_NE(r.exit_code, 0);
  r = run_qvl("check " + kWeights + " /nonexistent/rec.h5");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_contains(r, "'/nonexistent/rec.h5': no such file");
}

TEST(Cli, CorruptRecordingIsAClearError) {
  QVL_REQUIRE_FILE(kWeights);
  TempDir d;
  testing::write_file(d.file("junk.h5"), std::string(4096, '\x5a'));
  auto r = run_qvl("check " + kWeights + " " + d.file("junk.h5"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_contains(r, "junk.h5': not an HDF5 file, or corrupt");
}

TEST(Cli, MissingOrTruncatedWeightsFileIsAClearError) {
  QVL_REQUIRE_FILE(kRecording);
  auto r = run_qvl("check /nonexistent/w.h5 " + kRecording);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_contains(r, "'/nonexistent/w.h5': no such file");
  TempDir d;
  std::filesystem::copy_file(kWeights, d.file("cut.h5"));
  std::filesystem::resize_file(d.file("cut.h5"), 3000);
  r = run_qvl("check " + d.file("cut.h5") + " " + kRecording);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_contains(r, "cut.h5'");
}

TEST(Cli, MissingWeightKeyNamesTheFullPath) {
  QVL_REQUIRE_FILE(kWeights);
  QVL_REQUIRE_FILE(kRecording);
  TempDir d;
  const std::string w = edited_weights(d, [](Weights& ws) {
    Weights out;
    for (auto& [k, t] : ws.flatten())
      if (k != "model.visual.merger.mlp.2.bias") out.set(k, t);
    ws = out;
  });
  auto r = run_qvl("check " + w + " " + kRecording);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_contains(r, "cannot find 'model.visual.merger.mlp.2.bias'");
  expect_contains(r, "there is: weight");
}

TEST(Cli, ShapeMismatchNamesExpectedAndGot) {
  QVL_REQUIRE_FILE(kWeights);
  QVL_REQUIRE_FILE(kRecording);
  TempDir d;
  const std::string w = edited_weights(d, [](Weights& ws) {
    ws.set("model.language_model.layers.1.mlp.up_proj.weight", at::zeros({64, 128}));  // transposed
  });
  auto r = run_qvl("check " + w + " " + kRecording);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_contains(r, "shape mismatch for 'model.language_model.layers.1.mlp.up_proj.weight': expected [128, 64], got [64, 128]");
}

TEST(Cli, UnknownDtypeNamesTheDataset) {
  QVL_REQUIRE_FILE(kWeights);
  QVL_REQUIRE_FILE(kRecording);
  TempDir d;
  const std::string w = d.file("dtype.h5");
  std::filesystem::copy_file(kWeights, w);
  {
    h5::File f{h5::Handle(H5Fopen(w.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose), w};
    h5::Handle ds(H5Dopen2(f.id(), "lm_head/weight", H5P_DEFAULT), H5Dclose);
    h5::set_attr(ds.id(), "dtype", std::string("complex64"));
  }
  auto r = run_qvl("check " + w + " " + kRecording);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_contains(r, "lm_head.weight: unknown dtype 'complex64'");
}

TEST(Cli, ConvertOfMissingCheckpointLeavesNoOutput) {
  TempDir d;
  auto r = run_qvl("convert " + d.file("no_such_dir") + " " + d.file("out.h5"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_contains(r, "not a checkpoint directory");
  EXPECT_FALSE(std::filesystem::exists(d.file("out.h5")));
}

}  // namespace
}  // namespace qvl
