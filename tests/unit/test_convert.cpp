// The converter: bit-exact round trips (safetensors -> qvl.weights -> safetensors) for every dtype, both key
// layouts and the tied lm_head; direct loading; --dtype, gzip, FP8; the shape table of the real configs.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "converter/convert.h"
#include "converter/safetensors.h"
#include "converter/sha256.h"
#include "converter/shapes.h"
#include "instrument/config_json.h"
#include "instrument/h5io.h"
#include "tests/support/test_support.h"
#include "tests/unit/converter_fixtures.h"

namespace qvl::testing {
namespace {
namespace fs = std::filesystem;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_HAS(text, needle)                                                                       \
  EXPECT_NE(std::string(text).find(needle), std::string::npos) << "missing '" << (needle) << "' in:\n" \
                                                               << (text)

// Every tensor of a checkpoint directory: name -> (dtype, shape, raw bytes), across shards.
struct RawTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
std::map<std::string, RawTensor> raw_tensors(const std::string& dir) {
  std::map<std::string, RawTensor> out;
  for (const auto& shard : find_checkpoint(dir).shards) {
    SafetensorsFile f = SafetensorsFile::open(shard);
    for (const auto& e : f.entries())
      out[e.name] = {e.dtype, e.shape,
                     std::string(reinterpret_cast<const char*>(f.bytes(e)), e.end - e.begin)};
  }
  return out;
}

void expect_same_checkpoint(const std::string& a_dir, const std::string& b_dir) {
  auto a = raw_tensors(a_dir), b = raw_tensors(b_dir);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    ASSERT_NE(it, b.end()) << name << " is missing after the round trip";
    EXPECT_EQ(it->second.dtype, t.dtype) << name;
    EXPECT_EQ(it->second.shape, t.shape) << name;
    EXPECT_TRUE(it->second.bytes == t.bytes) << name << ": bytes differ";
  }
  EXPECT_EQ(nlohmann::json::parse(read_all(a_dir + "/config.json")),
            nlohmann::json::parse(read_all(b_dir + "/config.json")));
}

// --- the shape table of the real configs ------------------------------------------------------------
struct RealModel {
  const char* name;
  int64_t vision_params, text_params;  // docs/design.md §8.2 (text includes an untied lm_head)
  int64_t layers;
  bool tied;
};
const RealModel kReal[] = {
    {"3b", 668684288, 3085938688, 36, true},
    {"7b", 676550144, 7615616512, 28, false},
    {"32b", 684416000, 32763876352, 64, false},
    {"72b", 700147712, 72706203648, 80, false},
};

ModelConfig real_config(const std::string& name) {
  return load_model_config(data_path("tests/data/configs/qwen2_5_vl_" + name + ".json"));
}

TEST(Shapes, RealConfigsGiveTheReferenceParameterCounts) {
  for (const auto& m : kReal) {
    const ModelConfig cfg = real_config(m.name);
    int64_t vision = 0, text = 0, vision_tensors = 0, text_tensors = 0;
    for (const auto& e : expected_tensors(cfg)) {
      if (e.optional) continue;  // a tied lm_head is the embedding
      int64_t n = 1;
      for (int64_t d : e.shape) n *= d;
      const bool is_vision = e.key.rfind("model.visual.", 0) == 0;
      (is_vision ? vision : text) += n;
      (is_vision ? vision_tensors : text_tensors) += 1;
    }
    EXPECT_EQ(vision, m.vision_params) << m.name;
    EXPECT_EQ(text, m.text_params) << m.name;
    EXPECT_EQ(vision_tensors, 390) << m.name;  // 12 per block x 32 + patch_embed + 5 merger
    EXPECT_EQ(text_tensors, 12 * m.layers + 2 + (m.tied ? 0 : 1)) << m.name;
    EXPECT_EQ(cfg.text.tie_word_embeddings, m.tied) << m.name;
  }
}

std::map<std::string, std::vector<int64_t>> table_of(const ModelConfig& cfg) {
  std::map<std::string, std::vector<int64_t>> m;
  for (const auto& e : expected_tensors(cfg)) m[e.key] = e.shape;
  return m;
}

TEST(Shapes, WrongShapeNamesTheKeyExpectedAndGot) {
  const ModelConfig cfg = real_config("7b");
  auto shapes = table_of(cfg);
  EXPECT_EQ(error_of([&] { check_tensor_shapes(shapes, cfg, "ckpt"); }), "");
  shapes["model.language_model.layers.27.mlp.down_proj.weight"] = {18944, 3584};  // transposed
  const std::string e = error_of([&] { check_tensor_shapes(shapes, cfg, "ckpt"); });
  EXPECT_HAS(e, "ckpt: 1 tensor does not match config.json");
  EXPECT_HAS(e,
             "shape mismatch for 'model.language_model.layers.27.mlp.down_proj.weight': expected [3584, "
             "18944], got [18944, 3584]");
}

TEST(Shapes, MissingAndUnexpectedTensorsAreNamed) {
  const ModelConfig cfg7 = real_config("7b");
  auto shapes = table_of(cfg7);
  shapes.erase("lm_head.weight");
  shapes.erase("model.visual.blocks.31.attn.qkv.bias");
  shapes["model.visual.blocks.32.norm1.weight"] = {1280};  // a 33rd block
  const std::string e = error_of([&] { check_tensor_shapes(shapes, cfg7, "ckpt"); });
  EXPECT_HAS(e, "3 tensors do not match");
  EXPECT_HAS(e,
             "missing tensor 'lm_head.weight' (expected [152064, 3584]), and tie_word_embeddings is false");
  EXPECT_HAS(e, "missing tensor 'model.visual.blocks.31.attn.qkv.bias' (expected [3840])");
  EXPECT_HAS(e, "unexpected tensor 'model.visual.blocks.32.norm1.weight' [1280]");
  // 3B ties lm_head: absent is fine, present must have the embedding's shape.
  const ModelConfig cfg3 = real_config("3b");
  auto s3 = table_of(cfg3);
  s3.erase("lm_head.weight");
  EXPECT_EQ(error_of([&] { check_tensor_shapes(s3, cfg3, "ckpt"); }), "");
  s3["lm_head.weight"] = {151936, 2047};
  EXPECT_HAS(error_of([&] { check_tensor_shapes(s3, cfg3, "ckpt"); }),
             "shape mismatch for 'lm_head.weight': expected [151936, 2048], got [151936, 2047]");
  // One clear error even when everything is wrong: the first problems and a count.
  std::map<std::string, std::vector<int64_t>> none;
  const std::string all = error_of([&] { check_tensor_shapes(none, cfg7, "ckpt"); });
  EXPECT_HAS(all, std::to_string(390 + 12 * 28 + 3) + " tensors do not match");
  EXPECT_HAS(all, "and " + std::to_string(390 + 12 * 28 + 3 - 8) + " more");
}

// Checkpoints written by transformers itself fit the table: the table is HF's, not ours.
TEST(Shapes, CheckpointsWrittenByTransformersFitTheTable) {
  int checked = 0;
  for (const std::string dir : {tiny_checkpoint_dir(), std::string(QVL_GENERATED_WEIGHTS) + "/tiny_tied",
                                std::string(QVL_GENERATED_WEIGHTS) + "/vision_real"}) {
    if (!fs::exists(dir + "/config.json")) continue;
    OpenCheckpoint oc = open_checkpoint(dir);  // throws on any mismatch
    EXPECT_EQ(oc.key_layout, "hub") << dir;
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no transformers-written checkpoint found (weights/tiny)";
}

// --- round trips ----------------------------------------------------------------------------------------
// Every dtype x both layouts x tied or not, sharded or not (one test: each case is ~50 ms, a process ~0.5 s).
TEST(Convert, RoundTripIsBitExactForEveryDtypeLayoutAndTie) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  int shards = 0;
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const std::string layout : {"hub", "runtime"}) {
      for (bool tied : {false, true}) {
        shards = shards % 3 + 1;  // 1, 2, 3, 1, ... across the cases
        SCOPED_TRACE(dtype_name(dtype) + " " + layout + (tied ? " tied " : " untied ") +
                     std::to_string(shards) + " shard(s)");
        TempDir d;
        write_tiny_checkpoint(d.file("src"), {layout, dtype, tied, shards});
        ConvertOptions co;
        co.durable = false;
        ConvertReport rep = convert_checkpoint(d.file("src"), d.file("w.h5"), co);
        EXPECT_EQ(rep.key_layout, layout);
        EXPECT_EQ(rep.tensors, tied ? 92 : 93);
        // The weights file holds canonical keys in the checkpoint's dtype.
        for (const auto& t : list_h5_tensors(d.file("w.h5"))) {
          EXPECT_EQ(t.dtype, dtype_name(dtype)) << t.path;
          EXPECT_TRUE(t.path.rfind("model.visual.", 0) == 0 ||
                      t.path.rfind("model.language_model.", 0) == 0 || t.path == "lm_head.weight")
              << t.path;
        }
        ExportOptions eo;
        eo.durable = false;
        eo.max_shard_bytes = shards > 1 ? 400000 : 5000000000ull;
        ExportReport back = export_safetensors(d.file("w.h5"), d.file("back"), eo);
        EXPECT_EQ(back.layout, layout);  // the file remembers where it came from
        EXPECT_EQ(back.shards.size() > 1, shards > 1);
        expect_same_checkpoint(d.file("src"), d.file("back"));
      }
    }
  }
}

TEST(Convert, TransformersCheckpointComesBackByteForByte) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  convert_checkpoint(tiny_checkpoint_dir(), d.file("w.h5"));
  export_safetensors(d.file("w.h5"), d.file("back"));
  // Same tensor order and header layout as transformers' writer for a single-dtype model: identical files.
  EXPECT_TRUE(read_all(d.file("back/model.safetensors")) ==
              read_all(tiny_checkpoint_dir() + "/model.safetensors"));
  expect_same_checkpoint(tiny_checkpoint_dir(), d.file("back"));
}

TEST(Convert, ShardsAndIndexLikeTheHub) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  convert_checkpoint(tiny_checkpoint_dir(), d.file("w.h5"));
  ExportOptions eo;
  eo.max_shard_bytes = 500000;
  ExportReport rep = export_safetensors(d.file("w.h5"), d.file("back"), eo);
  ASSERT_EQ(rep.shards.size(), 4u);  // 1.78 MB in shards of at most 0.5 MB
  EXPECT_EQ(rep.shards[0], "model-00001-of-00004.safetensors");
  auto index = nlohmann::json::parse(read_all(d.file("back/model.safetensors.index.json")));
  uint64_t total = 0;
  for (const auto& s : rep.shards) {
    SafetensorsFile f = SafetensorsFile::open(d.file("back/" + s));
    uint64_t in_shard = 0;
    for (const auto& e : f.entries()) {
      EXPECT_EQ(index["weight_map"][e.name], s) << e.name;
      in_shard += e.end - e.begin;
    }
    if (f.entries().size() > 1) EXPECT_LE(in_shard, 500000u) << s;  // a lone tensor may exceed the limit
    total += in_shard;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), 93u);
  Checkpoint ck = find_checkpoint(d.file("back"));
  EXPECT_TRUE(ck.indexed);
  EXPECT_EQ(ck.shards.size(), 4u);
}

TEST(Convert, ExportRefusesAnExistingNonEmptyTarget) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  convert_checkpoint(tiny_checkpoint_dir(), d.file("w.h5"));
  fs::create_directories(d.file("busy"));
  write_file(d.file("busy/keep.txt"), "x");
  EXPECT_HAS(error_of([&] { export_safetensors(d.file("w.h5"), d.file("busy")); }),
             "exists and is not an empty directory");
  EXPECT_EQ(read_all(d.file("busy/keep.txt")), "x");
  fs::create_directories(d.file("empty"));
  export_safetensors(d.file("w.h5"), d.file("empty"));
  EXPECT_TRUE(fs::exists(d.file("empty/model.safetensors")));
}

TEST(Convert, ExportChecksShapesAgainstTheConfig) {
  QVL_REQUIRE_FILE(data_path("weights/tiny.h5"));
  TempDir d;
  h5::WeightsFile wf = h5::read_weights(data_path("weights/tiny.h5"));
  wf.weights.set("model.visual.merger.mlp.2.bias", at::zeros({63}));
  h5::write_weights(d.file("bad.h5"), wf.weights, wf.attrs);
  EXPECT_HAS(error_of([&] { export_safetensors(d.file("bad.h5"), d.file("out")); }),
             "shape mismatch for 'model.visual.merger.mlp.2.bias': expected [64], got [63]");
  int others = 0;
  for (const auto& e : fs::directory_iterator(d.path())) others += e.path().filename() != "bad.h5";
  EXPECT_EQ(others, 0) << "a temporary was left behind";
}

TEST(Convert, DirectLoadingEqualsTheConvertedFile) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  for (bool tied : {false, true}) {
    TempDir d;
    write_tiny_checkpoint(d.file("src"), {"runtime", at::kBFloat16, tied, 3});
    convert_checkpoint(d.file("src"), d.file("w.h5"));
    ModelConfig c1, c2;
    Weights direct = load_weights_any(d.file("src"), &c1);
    Weights file = load_weights_any(d.file("w.h5"), &c2);
    auto a = direct.flatten(), b = file.flatten();
    ASSERT_EQ(a.size(), b.size());
    ASSERT_EQ(a.size(), 93u);  // the tied lm_head is resolved to the embedding in both
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_EQ(a[i].second.scalar_type(), at::kBFloat16) << a[i].first;
      EXPECT_TRUE(tensor_bytes(a[i].second) == tensor_bytes(b[i].second)) << a[i].first;
    }
    EXPECT_EQ(c1.text.tie_word_embeddings, tied);
    if (tied) {
      EXPECT_TRUE(tensor_bytes(direct.tensor("lm_head.weight")) ==
                  tensor_bytes(direct.tensor("model.language_model.embed_tokens.weight")));
    }
  }
}

TEST(Convert, DtypeCastsFloatingTensorsOnly) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  ConvertOptions co;
  co.dtype = at::kBFloat16;
  convert_checkpoint(tiny_checkpoint_dir(), d.file("bf16.h5"), co);
  h5::WeightsFile wf = h5::read_weights(d.file("bf16.h5"));
  SafetensorsFile src = SafetensorsFile::open(tiny_checkpoint_dir() + "/model.safetensors");
  for (const auto& e : src.entries()) {
    const at::Tensor got = wf.weights.tensor(canonical_key(e.name, "", nullptr));
    EXPECT_EQ(got.scalar_type(), at::kBFloat16) << e.name;
    EXPECT_TRUE(tensor_bytes(got) == tensor_bytes(src.read(e.name).to(at::kBFloat16))) << e.name;
  }
  EXPECT_HAS(wf.attrs.at("source"), "\"cast\":\"bfloat16\"");
  // And on the way back: an f32 file written as an f16 checkpoint.
  convert_checkpoint(tiny_checkpoint_dir(), d.file("f32.h5"));
  ExportOptions eo;
  eo.dtype = at::kHalf;
  export_safetensors(d.file("f32.h5"), d.file("f16"), eo);
  SafetensorsFile half = SafetensorsFile::open(d.file("f16/model.safetensors"));
  ASSERT_EQ(half.entries().size(), src.entries().size());
  for (const auto& e : half.entries()) {
    EXPECT_EQ(e.dtype, "F16") << e.name;
    EXPECT_TRUE(tensor_bytes(half.read(e.name)) == tensor_bytes(src.read(e.name).to(at::kHalf))) << e.name;
  }
  // Integer and bool tensors keep their dtype; FP8 is upcast.
  EXPECT_EQ(cast_for_output(at::arange(5, at::kLong), at::kBFloat16).scalar_type(), at::kLong);
  EXPECT_EQ(cast_for_output(at::ones({2}, at::kBool), at::kHalf).scalar_type(), at::kBool);
  EXPECT_EQ(cast_for_output(at::ones({2}).to(at::kFloat8_e4m3fn), at::kFloat).scalar_type(), at::kFloat);
  EXPECT_EQ(parse_cast_dtype("f16"), at::kHalf);
  EXPECT_HAS(error_of([] { parse_cast_dtype("int8"); }), "expected bf16, f16 or f32");
}

TEST(Convert, GzipReadsBackIdentical) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  ConvertOptions co;
  co.gzip_level = 6;
  convert_checkpoint(tiny_checkpoint_dir(), d.file("z.h5"), co);
  export_safetensors(d.file("z.h5"), d.file("back"));
  expect_same_checkpoint(tiny_checkpoint_dir(), d.file("back"));
}

// FP8 is read as such (torch float8_e4m3fn / float8_e5m2), stored as its bits, and comes back bit-exact.
TEST(Convert, Fp8IsReadAsSuchAndRoundTrips) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  for (auto [dtype, st_name, torch_name] : {std::tuple{at::kFloat8_e4m3fn, "F8_E4M3", "float8_e4m3fn"},
                                            std::tuple{at::kFloat8_e5m2, "F8_E5M2", "float8_e5m2"}}) {
    TempDir d;
    NamedTensors written = write_tiny_checkpoint(d.file("src"), {"hub", dtype, false, 1});
    SafetensorsFile f = SafetensorsFile::open(d.file("src/model.safetensors"));
    EXPECT_EQ(f.entries().front().dtype, st_name);
    EXPECT_EQ(f.read(f.entries().front().name).scalar_type(), dtype);
    convert_checkpoint(d.file("src"), d.file("w.h5"));
    for (const auto& t : list_h5_tensors(d.file("w.h5"))) EXPECT_EQ(t.dtype, torch_name) << t.path;
    export_safetensors(d.file("w.h5"), d.file("back"));
    expect_same_checkpoint(d.file("src"), d.file("back"));
    // --dtype upcasts exactly (an unscaled FP8 value is representable in bf16).
    ConvertOptions co;
    co.dtype = at::kBFloat16;
    convert_checkpoint(d.file("src"), d.file("bf16.h5"), co);
    h5::WeightsFile wf = h5::read_weights(d.file("bf16.h5"));
    for (const auto& [name, t] : written)
      EXPECT_TRUE(at::equal(wf.weights.tensor(canonical_key(name, "", nullptr)), t.to(at::kBFloat16)))
          << name;
  }
}

TEST(Convert, QuantisationScalesAreRefusedClearly) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  NamedTensors ts = write_tiny_checkpoint(d.file("x"), {"hub", at::kFloat8_e4m3fn, false, 1});
  ts.emplace_back("model.layers.0.mlp.down_proj.weight_scale_inv", at::ones({1, 1}));
  write_checkpoint(d.file("src"), ts, tiny_config_json(false), 1);
  const std::string e = error_of([&] { convert_checkpoint(d.file("src"), d.file("w.h5")); });
  EXPECT_HAS(e, "unexpected tensor 'model.language_model.layers.0.mlp.down_proj.weight_scale_inv' [1, 1]");
  EXPECT_HAS(e, "quantised (e.g. FP8) checkpoints are not supported");
  EXPECT_FALSE(fs::exists(d.file("w.h5")));
}

TEST(Convert, RotaryBuffersAreDroppedWithTheReason) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  NamedTensors ts = write_tiny_checkpoint(d.file("x"), {"hub", at::kFloat, false, 1});
  ts.emplace_back("model.layers.1.self_attn.rotary_emb.inv_freq", at::ones({8}));
  ts.emplace_back("visual.rotary_pos_emb.inv_freq", at::ones({4}));
  write_checkpoint(d.file("src"), ts, tiny_config_json(false), 2);
  ConvertReport rep = convert_checkpoint(d.file("src"), d.file("w.h5"));
  EXPECT_EQ(rep.tensors, 93);
  ASSERT_FALSE(rep.notes.empty());
  EXPECT_HAS(rep.notes[0], "dropped 2 key(s), a non-persistent rotary buffer, recomputed from config.json");
  EXPECT_HAS(rep.notes[0], "model.layers.1.self_attn.rotary_emb.inv_freq (model-0000");
  EXPECT_HAS(rep.notes[0], "visual.rotary_pos_emb.inv_freq");
  EXPECT_FALSE(
      load_weights_any(d.file("w.h5"), nullptr).has("model.language_model.layers.1.self_attn.rotary_emb"));
}

TEST(Convert, MixedLayoutsAndDuplicateKeysAreErrors) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  NamedTensors ts = write_tiny_checkpoint(d.file("x"), {"hub", at::kFloat, false, 1});
  NamedTensors mixed = ts;
  mixed[5].first = checkpoint_key(canonical_key(mixed[5].first, "", nullptr), "runtime");
  write_checkpoint(d.file("mixed"), mixed, tiny_config_json(false), 1);
  EXPECT_HAS(error_of([&] { open_checkpoint(d.file("mixed")); }), "layout but earlier keys are in the");
  // The same tensor in two shards (no index to say which is meant).
  NamedTensors dup = ts;
  dup.push_back(ts[5]);
  write_checkpoint(d.file("dup"), dup, tiny_config_json(false), 2);
  fs::remove(d.file("dup/model.safetensors.index.json"));
  EXPECT_HAS(error_of([&] { open_checkpoint(d.file("dup")); }),
             "shard 'model-00002-of-00002.safetensors': key '" + ts[5].first + "' maps to '" +
                 canonical_key(ts[5].first, "", nullptr) + "', which already came from '" + ts[5].first +
                 "' in shard 'model-00001-of-00002.safetensors'");
}

// --- qvl inspect ------------------------------------------------------------------------------------------
// The line of `output` holding every needle (in order), or "" if none does.
std::string line_with(const std::string& output, const std::vector<std::string>& needles) {
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    size_t at = 0;
    bool all = true;
    for (const auto& n : needles) {
      at = line.find(n, at);
      if (at == std::string::npos) {
        all = false;
        break;
      }
      at += n.size();
    }
    if (all) return line;
  }
  return "";
}
#define EXPECT_LINE(output, ...) \
  EXPECT_NE(line_with(output, {__VA_ARGS__}), "") << "no line with these in:\n" << (output)

TEST(Inspect, WeightsFileListsTreeShapesDtypesAndBytes) {
  QVL_REQUIRE_FILE(data_path("weights/tiny.h5"));
  auto r = run_qvl("inspect " + data_path("weights/tiny.h5"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LINE(r.output, "qvl.weights, 93 tensors", "key layout hub");
  EXPECT_LINE(r.output, "config: vision depth 4, hidden 64; text layers 3, hidden 64, heads 4/2, vocab 256");
  // 64 x 3 x 2 x 14 x 14 float32 = 301056 bytes
  EXPECT_LINE(r.output, "model.visual.patch_embed.proj.weight", "float32", "[64, 3, 2, 14, 14]",
              "301056 bytes");
  EXPECT_LINE(r.output, "model.language_model.layers.2.self_attn.k_proj.bias", "float32", "[32]",
              "128 bytes");
}

TEST(Inspect, RecordingListsCallsAndTheirTensors) {
  QVL_REQUIRE_FILE(data_path("recordings/tiny_fp32.h5"));
  auto r = run_qvl("inspect " + data_path("recordings/tiny_fp32.h5"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LINE(r.output, "qvl.recording", "calls", "producer transformers", "dtype float32");
  EXPECT_LINE(r.output, "model.visual (Qwen2_5_VisionTransformerPretrainedModel #0");
  // The 112x84 image: 8 x 6 = 48 patches of 3 x 2 x 14 x 14 = 1176 floats.
  EXPECT_LINE(r.output, "inputs.pixel_values", "float32", "[48, 1176]", "225792 bytes");
  EXPECT_LINE(r.output, "inputs.use_cache", "python bool", "[]");
}

TEST(Inspect, SafetensorsFileAndCheckpointDirectory) {
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  auto r = run_qvl("inspect " + tiny_checkpoint_dir() + "/model.safetensors");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LINE(r.output, "safetensors, 93 tensors");
  EXPECT_LINE(r.output, "__metadata__ format = pt");
  EXPECT_LINE(r.output, "visual.patch_embed.proj.weight", "F32", "[64, 3, 2, 14, 14]", "301056 bytes");
  r = run_qvl("inspect " + tiny_checkpoint_dir());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LINE(r.output, "Hugging Face checkpoint, 1 shard(s)");
  EXPECT_LINE(r.output, "check: ok: 93 tensors", "key layout hub, every shape matches config.json");
  // A broken checkpoint is listed, and the check says what is wrong.
  TempDir d;
  NamedTensors ts = write_tiny_checkpoint(d.file("x"), {});
  const std::string gone = ts.back().first;
  ts.pop_back();
  write_checkpoint(d.file("ckpt"), ts, tiny_config_json(false), 2);
  r = run_qvl("inspect " + d.file("ckpt"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_LINE(r.output, "listed by model.safetensors.index.json");
  EXPECT_LINE(r.output, "check: FAILED: ", "missing tensor '" + canonical_key(gone, "", nullptr) + "'");
}

// --- SHA-256 (shard provenance) ---------------------------------------------------------------------------
std::string sha_hex(const std::string& data, size_t piece) {
  Sha256 s;
  for (size_t i = 0; i < data.size(); i += piece) s.update(data.data() + i, std::min(piece, data.size() - i));
  return s.hex();
}

TEST(Sha256, FipsVectors) {
  // FIPS 180-4 examples: "", "abc", the 448-bit message, and one million 'a', fed in pieces of several sizes.
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha_hex("", 1), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha_hex("abc", 1), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha_hex(two_blocks, 7), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha_hex(two_blocks, 1000), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha_hex(std::string(1000000, 'a'), 4096),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  EXPECT_EQ(sha_hex(std::string(1000000, 'a'), 65), sha_hex(std::string(1000000, 'a'), 1000000));
}

// --- temporaries of killed runs ---------------------------------------------------------------------------
TEST(AtomicTemporaries, AtomicPathNamesAreRecognised) {
  TempDir d;
  h5::AtomicPath a(d.file("out.h5"));
  long pid = 0;
  EXPECT_TRUE(is_temporary_of(a.tmp(), d.file("out.h5"), &pid)) << a.tmp();
  EXPECT_EQ(pid, static_cast<long>(::getpid()));
  EXPECT_FALSE(is_temporary_of(d.file(".out.h5.tmp-12x"), d.file("out.h5")));
  EXPECT_FALSE(is_temporary_of(d.file("out.h5.tmp-12"), d.file("out.h5")));
  EXPECT_FALSE(is_temporary_of(d.file(".other.h5.tmp-12"), d.file("out.h5")));
}

TEST(AtomicTemporaries, OnlyThoseOfDeadProcessesAreRemoved) {
  TempDir d;
  const pid_t child = fork();
  if (child == 0) _exit(0);
  ASSERT_GT(child, 0);
  waitpid(child, nullptr, 0);  // a pid whose process is gone
  const std::string dead = d.file(".out.h5.tmp-" + std::to_string(child));
  const std::string alive = d.file(".out.h5.tmp-" + std::to_string(::getppid()));
  write_file(dead, "partial");
  write_file(alive, "in progress");
  fs::create_directories(d.file(".ckpt.tmp-" + std::to_string(child)));
  write_file(d.file(".ckpt.tmp-" + std::to_string(child)) + "/model.safetensors", "partial");
  EXPECT_EQ(remove_stale_temporaries(d.file("out.h5")), std::vector<std::string>{dead});
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(alive));
  EXPECT_EQ(remove_stale_temporaries(d.file("ckpt")).size(), 1u);
  EXPECT_FALSE(fs::exists(d.file(".ckpt.tmp-" + std::to_string(child))));
}

}  // namespace
}  // namespace qvl::testing
