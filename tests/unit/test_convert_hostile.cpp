// Hostile and broken input through the qvl binary: each case gives ONE clear error line, exit code 2, no
// crash, and leaves nothing in the output directory (no output file, no temporary). A conversion killed
// with SIGKILL leaves no output file; its temporary is named as such and removed by the next run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "converter/convert.h"
#include "converter/safetensors.h"
#include "instrument/h5io.h"
#include "tests/support/test_support.h"
#include "tests/unit/converter_fixtures.h"

namespace qvl::testing {
namespace {
namespace fs = std::filesystem;

// A safetensors file from a header text and a data size (bytes of zeros).
std::string raw(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

// A checkpoint directory with the tiny config.json and `shard` as its only shard; returns its path.
std::string ckpt_with(const TempDir& d, const std::string& shard_bytes) {
  const std::string dir = d.file("ckpt");
  fs::create_directories(dir);
  write_file(dir + "/config.json", tiny_config_json(false));
  write_file(dir + "/model.safetensors", shard_bytes);
  return dir;
}

// Runs `qvl convert SRC OUT/out.h5` and checks the one-error contract.
void expect_one_clear_error(const TempDir& d, const std::string& src, const std::string& needle,
                            const std::string& extra = "") {
  fs::create_directories(d.file("out"));
  auto r = run_qvl("convert " + src + " " + d.file("out/out.h5") + " " + extra);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output.rfind("qvl convert: error: ", 0), 0u) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << "not one line:\n" << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << "missing '" << needle << "' in:\n" << r.output;
  EXPECT_TRUE(fs::is_empty(d.file("out"))) << "the failed run left something in the output directory";
}

TEST(Hostile, TruncatedFile) {
  TempDir d;
  expect_one_clear_error(d, ckpt_with(d, std::string("\x10\x00\x00", 3)),
                         "truncated: 3 bytes, less than the 8-byte header length");
}

TEST(Hostile, TruncatedData) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  const std::string dir = d.file("ckpt");
  write_tiny_checkpoint(dir, {});
  fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") / 2);
  expect_one_clear_error(d, dir, "is beyond the data area");
}

TEST(Hostile, HeaderLengthBeyondTheFile) {
  TempDir d;
  std::string bytes = raw("{}", 0);
  bytes[0] = '\x7f';
  bytes[1] = '\x7f';  // 32639 header bytes claimed, 10 in the file
  expect_one_clear_error(d, ckpt_with(d, bytes),
                         "header length 32639 runs past the end of the file (10 bytes)");
}

TEST(Hostile, HeaderOver100MB) {
  TempDir d;
  const std::string dir = ckpt_with(d, "");
  // A real (sparse) file whose header is 100 MB + 1 byte long.
  const uint64_t n = 100000001;
  std::string len(8, '\0');
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  write_file(dir + "/model.safetensors", len + "{");
  fs::resize_file(dir + "/model.safetensors", 8 + n + 16);
  expect_one_clear_error(d, dir, "header length 100000001 exceeds the 100 MB limit");
}

TEST(Hostile, MalformedJson) {
  TempDir d;
  expect_one_clear_error(d, ckpt_with(d, raw("{\"w\": [", 0)), "malformed JSON header");
}

TEST(Hostile, OffsetsOutOfBounds) {
  TempDir d;
  expect_one_clear_error(
      d,
      ckpt_with(
          d,
          raw(R"({"visual.merger.ln_q.weight":{"dtype":"F32","shape":[250],"data_offsets":[0,1000]}})", 16)),
      "tensor 'visual.merger.ln_q.weight': data_offsets end 1000 is beyond the data area (16 bytes)");
}

TEST(Hostile, OverlappingOffsets) {
  TempDir d;
  expect_one_clear_error(
      d,
      ckpt_with(
          d,
          raw(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
              24)),
      "tensors 'a' [0, 16) and 'b' [8, 24) overlap");
}

// Polyglots: bytes that no tensor accounts for. The safetensors library refuses both ("invalid offset for
// tensor", "incomplete metadata, file not fully covered"); so do convert, inspect and direct loading.
const char* kGapHeader =
    R"({"a":{"dtype":"I8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"I8","shape":[2],"data_offsets":[6,8]}})";
const char* kGapError =
    "model.safetensors': tensor 'b' starts at data offset 6, but tensor 'a' ends at 2: 4 bytes in between "
    "belong to no tensor";

TEST(Hostile, GapBetweenTensors) {
  TempDir d;
  expect_one_clear_error(d, ckpt_with(d, raw(kGapHeader, 8)), kGapError);
}

TEST(Hostile, BytesAfterTheLastTensor) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  const std::string dir = d.file("ckpt");
  write_tiny_checkpoint(dir, {});
  const std::string shard = dir + "/model.safetensors";
  const SafetensorsEntry last = SafetensorsFile::open(shard).entries().back();  // before the append
  std::ofstream(shard, std::ios::app | std::ios::binary) << "hidden payload";     // 14 bytes no tensor owns
  expect_one_clear_error(d, dir,
                         "model.safetensors': 14 bytes after the last tensor '" + last.name +
                             "' (which ends at data offset " + std::to_string(last.end) +
                             ") belong to no tensor: the data area is " + std::to_string(last.end + 14) +
                             " bytes");
}

// `qvl inspect` on such a file and `qvl check` on such a checkpoint: the same one error, a non-zero exit.
TEST(Hostile, InspectAndCheckRefusePolyglots) {
  TempDir d;
  const std::string dir = ckpt_with(d, raw(kGapHeader, 8));
  for (const std::string& target : {dir + "/model.safetensors", dir}) {
    auto r = run_qvl("inspect " + target);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_EQ(r.output.rfind("qvl inspect: error: ", 0), 0u) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << "not one line:\n" << r.output;
    EXPECT_NE(r.output.find(kGapError), std::string::npos) << r.output;
  }
  write_file(dir + "/model.safetensors", raw(R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", 7));
  auto r = run_qvl("inspect " + dir + "/model.safetensors");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << "not one line:\n" << r.output;
  EXPECT_NE(r.output.find("4 bytes after the last tensor 'a' (which ends at data offset 3) belong to no tensor"),
            std::string::npos)
      << r.output;
  const std::string rec = data_path("recordings/tiny_fp32.h5");
  QVL_REQUIRE_FILE(rec);
  r = run_qvl("check " + dir + " " + rec);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("qvl check: error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("4 bytes after the last tensor 'a'"), std::string::npos) << r.output;
}

TEST(Hostile, DtypeShapeAndByteCountDisagree) {
  TempDir d;
  expect_one_clear_error(d,
                         ckpt_with(d, raw(R"({"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})", 16)),
                         "tensor 'a': F32 of shape [5] needs 20 bytes but data_offsets span 16");
  TempDir e;
  expect_one_clear_error(e,
                         ckpt_with(e, raw(R"({"a":{"dtype":"C64","shape":[2],"data_offsets":[0,16]}})", 16)),
                         "tensor 'a': unknown dtype 'C64'");
}

TEST(Hostile, NestingAndDuplicateNames) {
  TempDir d;
  expect_one_clear_error(d,
                         ckpt_with(d, raw("{\"a\":" + std::string(40, '[') + std::string(40, ']') + "}", 0)),
                         "nests deeper than 8 levels");
  TempDir e;
  expect_one_clear_error(
      e,
      ckpt_with(
          e,
          raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
              8)),
      "names 'a' twice");
}

TEST(Hostile, MissingShard) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  const std::string dir = d.file("ckpt");
  write_tiny_checkpoint(dir, {"hub", at::kFloat, false, 3});
  fs::remove(dir + "/model.safetensors.index.json");
  fs::remove(dir + "/model-00002-of-00003.safetensors");
  expect_one_clear_error(d, dir,
                         "shard 'model-00002-of-00003.safetensors' is missing (2 of 00003 present, and no "
                         "model.safetensors.index.json)");
}

TEST(Hostile, IndexNamesAShardThatDoesNotExist) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  const std::string dir = d.file("ckpt");
  write_tiny_checkpoint(dir, {"hub", at::kFloat, false, 2});
  fs::remove(dir + "/model-00002-of-00002.safetensors");
  expect_one_clear_error(d, dir, "names shard 'model-00002-of-00002.safetensors', which does not exist");
}

TEST(Hostile, IndexDisagreesWithTheShards) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  const std::string dir = d.file("ckpt");
  write_tiny_checkpoint(dir, {"hub", at::kFloat, false, 2});
  std::ifstream in(dir + "/model.safetensors.index.json");
  nlohmann::json index = nlohmann::json::parse(in);
  index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors";  // it is in shard 1
  write_file(dir + "/model.safetensors.index.json", index.dump());
  expect_one_clear_error(
      d, dir,
      "model.safetensors.index.json puts tensor 'lm_head.weight' in shard "
      "'model-00002-of-00002.safetensors', but it is in shard 'model-00001-of-00002.safetensors'");
}

TEST(Hostile, UnmappedKeyNamesKeyAndShard) {
  TempDir d;
  expect_one_clear_error(
      d,
      ckpt_with(d,
                raw(R"({"vision_tower.proj.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4)),
      "unmapped checkpoint key 'vision_tower.proj.weight' in shard 'model.safetensors'");
}

TEST(Hostile, WrongShapeAgainstConfigBeforeAnyOutput) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  NamedTensors ts = write_tiny_checkpoint(d.file("x"), {});
  for (auto& [name, t] : ts)
    if (name == "model.layers.1.mlp.up_proj.weight")
      t = t.t().contiguous();  // [64, 128] instead of [128, 64]
  write_checkpoint(d.file("ckpt"), ts, tiny_config_json(false), 2);
  expect_one_clear_error(d, d.file("ckpt"),
                         "shape mismatch for 'model.language_model.layers.1.mlp.up_proj.weight': expected "
                         "[128, 64], got [64, 128]");
}

TEST(Hostile, BadShardAfterAGoodOneLeavesNothing) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  const std::string dir = d.file("ckpt");
  write_tiny_checkpoint(dir, {"hub", at::kFloat, false, 3});
  write_file(dir + "/model-00003-of-00003.safetensors", raw("{\"w\": [", 0));
  expect_one_clear_error(d, dir, "model-00003-of-00003.safetensors': malformed JSON header");
}

TEST(Hostile, ExportOfANonWeightsFile) {
  TempDir d;
  write_file(d.file("junk.h5"), std::string(4096, '\x5a'));
  expect_one_clear_error(d, d.file("junk.h5"), "junk.h5': not an HDF5 file, or corrupt", "--to-safetensors");
}

// --- killed and interrupted conversions -------------------------------------------------------------------
// A checkpoint of ~18 MB of random floats (the tiny model with a 32768-token vocabulary): with --gzip 9 it
// takes seconds to write, long enough to be killed in the middle.
std::string big_checkpoint(const TempDir& d) {
  NamedTensors ts = write_tiny_checkpoint(d.file("x"), {});
  for (auto& [name, t] : ts)
    if (name == "lm_head.weight" || name == "model.embed_tokens.weight") t = at::randn({32768, 64});
  nlohmann::json cfg = nlohmann::json::parse(tiny_config_json(false));
  cfg["text_config"]["vocab_size"] = 32768;
  write_checkpoint(d.file("big"), ts, cfg.dump(2), 2);
  return d.file("big");
}

// Starts `qvl convert SRC OUT --gzip 9` and returns its pid once it is writing the temporary (at least 1 MB).
pid_t start_convert_and_wait_for_writing(const std::string& src, const std::string& out,
                                         const std::string& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::freopen(log.c_str(), "w", stdout);
    (void)f;
    dup2(fileno(stdout), STDERR_FILENO);
    execl(QVL_BINARY, "qvl", "convert", src.c_str(), out.c_str(), "--gzip", "9", static_cast<char*>(nullptr));
    _exit(127);
  }
  const fs::path tmp =
      fs::path(out).parent_path() / ("." + fs::path(out).filename().string() + ".tmp-" + std::to_string(pid));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    std::error_code ec;
    if (fs::exists(tmp, ec) && fs::file_size(tmp, ec) > (1u << 20)) return pid;
    if (waitpid(pid, nullptr, WNOHANG) == pid) return -1;  // finished (or failed) before we saw it write
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

TEST(Hostile, SigkillDuringTheWriteLeavesNoOutputFile) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  const std::string src = big_checkpoint(d);
  fs::create_directories(d.file("out"));
  const std::string out = d.file("out/big.h5");
  const pid_t pid = start_convert_and_wait_for_writing(src, out, d.file("log.txt"));
  ASSERT_GT(pid, 0) << "the conversion ended before it could be killed mid-write";
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_FALSE(fs::exists(out)) << "a killed conversion left its output file";
  // What SIGKILL leaves (no code runs): the temporary, hidden and named after the target and the pid.
  const std::string tmp = d.file("out/.big.h5.tmp-" + std::to_string(pid));
  EXPECT_TRUE(fs::exists(tmp));
  EXPECT_TRUE(is_temporary_of(tmp, out));
  // The next run to the same target removes it, says so, and succeeds.
  auto r = run_qvl("convert " + src + " " + out);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("removed the stale temporary " + tmp + " of a killed run"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_EQ(h5::read_weights(out).weights.tensor("lm_head.weight").size(0), 32768);
  int files = 0;
  for (const auto& e : fs::directory_iterator(d.file("out"))) files += e.path() != out;
  EXPECT_EQ(files, 0);
}

TEST(Hostile, SigintStopsCleanly) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  const std::string src = big_checkpoint(d);
  fs::create_directories(d.file("out"));
  const std::string out = d.file("out/big.h5");
  const pid_t pid = start_convert_and_wait_for_writing(src, out, d.file("log.txt"));
  ASSERT_GT(pid, 0) << "the conversion ended before it could be interrupted";
  ASSERT_EQ(kill(pid, SIGINT), 0);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of stopping cleanly";
  EXPECT_EQ(WEXITSTATUS(status), 2);
  std::ifstream log(d.file("log.txt"));
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("qvl convert: error: interrupted by SIGINT; the partial output was removed"),
            std::string::npos)
      << text;
  EXPECT_TRUE(fs::is_empty(d.file("out")));
}

}  // namespace
}  // namespace qvl::testing
