// Streamed (lazy) weights: the lazy tree of functional/weights.h, open_weights_streamed over a checkpoint
// directory and a qvl.weights file, the errors of a shard that disappears or is truncated during a run, and
// the peak RSS of `qvl check --stream`, which must not grow with the model's depth.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "converter/convert.h"
#include "converter/safetensors.h"
#include "converter/shapes.h"
#include "functional/model.h"
#include "functional/text.h"
#include "instrument/config_json.h"
#include "instrument/recording.h"
#include "instrument/replay.h"
#include "tests/support/test_support.h"

namespace qvl {
namespace {
namespace fs = std::filesystem;
using testing::data_path;
using testing::TempDir;

// A source that counts its loads and returns arange tensors (value = key's position + element index).
class CountingSource : public TensorSource {
 public:
  explicit CountingSource(std::map<std::string, std::vector<int64_t>> shapes) : shapes_(std::move(shapes)) {}
  at::Tensor load(const std::string& key) const override {
    ++loads[key];
    const auto& s = shapes_.at(key);
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return at::arange(n, at::kFloat).add(static_cast<double>(key.size())).view(s);
  }
  mutable std::map<std::string, int> loads;

 private:
  std::map<std::string, std::vector<int64_t>> shapes_;
};

std::map<std::string, std::vector<int64_t>> small_model_keys() {
  return {{"model.language_model.embed_tokens.weight", {8, 4}},
          {"model.language_model.layers.0.mlp.up_proj.weight", {6, 4}},
          {"model.language_model.layers.0.input_layernorm.weight", {4}},
          {"model.language_model.layers.1.mlp.up_proj.weight", {6, 4}},
          {"model.language_model.layers.1.input_layernorm.weight", {4}},
          {"model.language_model.norm.weight", {4}},
          {"lm_head.weight", {8, 4}}};
}

Weights lazy_tree(const std::shared_ptr<CountingSource>& src) {
  Weights w;
  for (const auto& [k, s] : small_model_keys()) w.set_lazy(k, src, k, s, at::kFloat);
  w.mark_unit("model.language_model.layers.0");
  w.mark_unit("model.language_model.layers.1");
  return w;
}

TEST(LazyWeights, AtALayerLoadsOnlyThatLayerAndTheCallerOwnsIt) {
  auto src = std::make_shared<CountingSource>(small_model_keys());
  Weights root = lazy_tree(src);
  EXPECT_TRUE(root.is_lazy());
  EXPECT_TRUE(src->loads.empty());  // building the tree reads nothing
  // Above the units: the lazy node itself, nothing loaded.
  Weights layers = root.at("model.language_model.layers");
  EXPECT_TRUE(layers.is_lazy());
  EXPECT_EQ(layers.keys(), (std::vector<std::string>{"0", "1"}));
  EXPECT_TRUE(src->loads.empty());
  at::Tensor up;
  {
    Weights l1 = layers.at(1);  // a unit: materialized, every leaf of layer 1 loaded once
    EXPECT_FALSE(l1.is_lazy());
    EXPECT_EQ(src->loads.size(), 2u);
    EXPECT_EQ(src->loads["model.language_model.layers.1.mlp.up_proj.weight"], 1);
    EXPECT_EQ(src->loads.count("model.language_model.layers.0.mlp.up_proj.weight"), 0u);
    EXPECT_EQ(l1.path(), "model.language_model.layers.1");
    up = l1.tensor("mlp.up_proj.weight", {6, 4});
    EXPECT_EQ(src->loads["model.language_model.layers.1.mlp.up_proj.weight"], 1);  // no reload inside the unit
    EXPECT_GE(up.use_count(), 2);  // held by l1's copy and by `up`
  }
  EXPECT_EQ(up.use_count(), 1);  // the tree kept nothing: dropping l1 left `up` as the only owner
  EXPECT_TRUE(at::equal(up, src->load("model.language_model.layers.1.mlp.up_proj.weight")));
}

TEST(LazyWeights, LeavesOutsideUnitsLoadPerAccessAndSubModulesAlone) {
  auto src = std::make_shared<CountingSource>(small_model_keys());
  Weights root = lazy_tree(src);
  at::Tensor a = root.tensor("lm_head.weight", {8, 4});
  at::Tensor b = root.at("lm_head").tensor("weight");
  EXPECT_EQ(src->loads["lm_head.weight"], 2);  // never cached in the tree
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_EQ(a.use_count(), 1);
  // A sub-module of a unit: only its own leaves.
  Weights mlp = root.at("model.language_model.layers.0.mlp");
  EXPECT_EQ(src->loads.count("model.language_model.layers.0.input_layernorm.weight"), 0u);
  EXPECT_EQ(src->loads["model.language_model.layers.0.mlp.up_proj.weight"], 1);
  EXPECT_FALSE(mlp.is_lazy());
  // Structure queries never load.
  EXPECT_TRUE(root.has("model.language_model.norm.weight"));
  EXPECT_EQ(root.leaf_shape("model.language_model.embed_tokens.weight"), (std::vector<int64_t>{8, 4}));
  EXPECT_EQ(src->loads.count("model.language_model.embed_tokens.weight"), 0u);
  // flatten loads every leaf, and materialize gives an eager copy equal to it.
  const auto all = root.flatten();
  EXPECT_EQ(all.size(), small_model_keys().size());
  const Weights eager = root.materialize();
  EXPECT_FALSE(eager.is_lazy());
  for (const auto& [k, t] : all) EXPECT_TRUE(at::equal(eager.tensor(k), t)) << k;
}

TEST(LazyWeights, ErrorsNameThePath) {
  auto src = std::make_shared<CountingSource>(small_model_keys());
  Weights root = lazy_tree(src);
  try {
    root.at("model.language_model.layers.7");
    FAIL() << "no error";
  } catch (const WeightsError& e) {
    EXPECT_NE(std::string(e.what()).find("model.language_model.layers.7"), std::string::npos) << e.what();
  }
  try {
    root.at("lm_head.weight.x");
    FAIL() << "no error";
  } catch (const WeightsError& e) {
    EXPECT_NE(std::string(e.what()).find("[8, 4]"), std::string::npos) << e.what();
  }
  // A source that returns another shape than announced.
  Weights bad;
  bad.set_lazy("a.weight", src, "lm_head.weight", {4, 8}, at::kFloat);
  try {
    bad.tensor("a.weight");
    FAIL() << "no error";
  } catch (const WeightsError& e) {
    EXPECT_NE(std::string(e.what()).find("'a.weight' (key 'lm_head.weight') gave [8, 4], expected [4, 8]"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(bad.mark_unit("a.weight"), WeightsError);
  EXPECT_THROW(bad.mark_unit("b"), WeightsError);
}

// Every leaf of the streamed tree equals the plain load, cast as replay_model casts.
void expect_streamed_equals_plain(const std::string& path, std::optional<at::ScalarType> dtype) {
  ModelConfig cfg;
  Weights plain = load_weights_any(path, &cfg);
  if (dtype) plain = cast_floating(plain, *dtype);
  StreamedWeights sw = open_weights_streamed(path, dtype);
  EXPECT_EQ(sw.config_json.empty(), false);
  EXPECT_EQ(sw.cfg.text.num_hidden_layers, cfg.text.num_hidden_layers);
  EXPECT_EQ(sw.cast, dtype.has_value() && *dtype != at::kFloat);  // the tiny model is stored in float32
  const auto want = plain.flatten();
  const auto got = sw.weights.flatten();
  ASSERT_EQ(want.size(), got.size()) << path;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(want[i].first, got[i].first);
    EXPECT_EQ(want[i].second.scalar_type(), got[i].second.scalar_type()) << want[i].first;
    EXPECT_TRUE(at::equal(want[i].second, got[i].second)) << path << " " << want[i].first;
  }
  EXPECT_TRUE(sw.weights.at("model.visual.blocks").is_lazy());
  EXPECT_FALSE(sw.weights.at("model.visual.blocks.0").is_lazy());
}

TEST(StreamedWeights, CheckpointDirectoryAndWeightsFileEqualThePlainLoad) {
  for (const std::string& p : {data_path("weights/tiny"), data_path("weights/tiny.h5")}) {
    for (std::optional<at::ScalarType> d : {std::optional<at::ScalarType>(), std::optional(at::kFloat),
                                            std::optional(at::kBFloat16)}) {
      SCOPED_TRACE(p + (d ? std::string(" as ") + c10::toString(*d) : std::string(" as stored")));
      expect_streamed_equals_plain(p, d);
    }
  }
}

TEST(StreamedWeights, ChunkedCastEqualsTheWholeCast) {
  const SafetensorsFile f = SafetensorsFile::open(data_path("weights/tiny/model.safetensors"));
  const SafetensorsEntry& e = f.entry("model.embed_tokens.weight");  // hub layout
  at::Tensor whole = f.read(e.name).to(at::kBFloat16);
  for (uint64_t chunk : {uint64_t{2}, uint64_t{100}, uint64_t{4096}, uint64_t{1} << 30}) {
    EXPECT_TRUE(at::equal(f.read_as(e, at::kBFloat16, chunk), whole)) << chunk;
    EXPECT_TRUE(at::equal(f.read_as(e, at::kFloat, chunk), f.read(e.name))) << chunk;
  }
}

TEST(StreamedWeights, TiedLmHeadReadsTheEmbedding) {
  TempDir d;
  const std::string dir = d.file("tied");
  fs::create_directories(dir);
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(data_path("weights/tiny/config.json")));
  cfg["tie_word_embeddings"] = true;
  std::ofstream(dir + "/config.json") << cfg.dump();
  const SafetensorsFile f = SafetensorsFile::open(data_path("weights/tiny/model.safetensors"));
  std::vector<std::pair<std::string, at::Tensor>> ts;
  for (const auto& e : f.entries())
    if (e.name != "lm_head.weight") ts.emplace_back(e.name, f.read(e.name));
  write_safetensors(dir + "/model.safetensors", ts);
  StreamedWeights sw = open_weights_streamed(dir, at::kBFloat16);
  EXPECT_TRUE(at::equal(sw.weights.tensor("lm_head.weight"),
                        sw.weights.tensor("model.language_model.embed_tokens.weight")));
  EXPECT_EQ(sw.weights.tensor("lm_head.weight").scalar_type(), at::kBFloat16);
}

// A copy of the tiny checkpoint to break during a run.
std::string tiny_copy(const TempDir& d) {
  const std::string dir = d.file("ckpt");
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(data_path(std::string("weights/tiny/") + f), dir + "/" + f);
  return dir;
}

// Replays every call of the tiny recording on `root`; returns the results.
std::vector<CallResult> replay_everything(const Recording& rec, const ReplayModel& rm) {
  const Registry reg = Registry::defaults();
  std::vector<CallResult> out;
  for (size_t i = 0; i < rec.calls().size(); ++i)
    if (reg.find(rec.calls()[i].module_class)) out.push_back(replay_call(rec, i, rm.weights, rm.config, reg));
  return out;
}

// After the shard broke: every call that needs a weight is an ERROR naming the shard and the key; only calls
// that need no weights (free functions, rotary tables) can pass. Nothing with weights reads as passed.
void expect_broken_run(const std::vector<CallResult>& results, const std::string& needle) {
  int errors = 0, passed = 0;
  for (const auto& r : results) {
    const bool weightless = r.header.module_class.rfind("get_", 0) == 0 || r.header.module_class.rfind("apply_", 0) == 0 ||
                            r.header.module_class.find("Rotary") != std::string::npos;
    if (weightless) {
      passed += r.status == CallResult::Status::Pass;
      continue;
    }
    EXPECT_EQ(r.status, CallResult::Status::Error) << r.header.module_path << ": " << r.error;
    EXPECT_NE(r.error.find("shard 'model.safetensors' (tensor '"), std::string::npos) << r.error;
    EXPECT_NE(r.error.find(needle), std::string::npos) << r.error;
    EXPECT_EQ(r.error.find('\n'), std::string::npos) << "one line: " << r.error;
    ++errors;
  }
  EXPECT_GT(errors, 30);
  EXPECT_GT(passed, 0);
}

TEST(StreamedWeights, ShardThatDisappearsDuringARunIsOneErrorNamingShardAndKey) {
  TempDir d;
  const std::string dir = tiny_copy(d);
  Recording rec = Recording::open(data_path("recordings/tiny_fp32.h5"));
  ReplayModel rm = load_replay_model(dir, rec, /*stream=*/true);
  const Registry reg = Registry::defaults();
  // The first implemented call with weights passes while the shard is there ...
  size_t first = 0;
  while (rec.calls()[first].module_class != "Qwen2_5_VisionPatchEmbed") ++first;
  EXPECT_EQ(replay_call(rec, first, rm.weights, rm.config, reg).status, CallResult::Status::Pass);
  // ... then the shard goes away.
  fs::remove(dir + "/model.safetensors");
  expect_broken_run(replay_everything(rec, rm), "the shard has disappeared since it was opened");
  try {
    rm.weights.tensor("model.visual.blocks.2.attn.qkv.weight");
    FAIL() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("shard 'model.safetensors' (tensor 'visual.blocks.2.attn.qkv.weight', "
                                         "'model.visual.blocks.2.attn.qkv.weight'): the shard has disappeared"),
              std::string::npos)
        << e.what();
  }
}

TEST(StreamedWeights, ShardTruncatedDuringARunIsOneErrorNamingShardAndKey) {
  TempDir d;
  const std::string dir = tiny_copy(d);
  Recording rec = Recording::open(data_path("recordings/tiny_fp32.h5"));
  ReplayModel rm = load_replay_model(dir, rec, /*stream=*/true);
  ASSERT_EQ(::truncate((dir + "/model.safetensors").c_str(), 4096), 0);
  expect_broken_run(replay_everything(rec, rm), "the shard is truncated: it now has 4096 bytes");
}

TEST(StreamedWeights, ShardReplacedDuringARunIsAnError) {
  TempDir d;
  const std::string dir = tiny_copy(d);
  Recording rec = Recording::open(data_path("recordings/tiny_fp32.h5"));
  ReplayModel rm = load_replay_model(dir, rec, /*stream=*/true);
  const std::string shard = dir + "/model.safetensors";
  fs::copy_file(shard, shard + ".new");
  { std::ofstream(shard + ".new", std::ios::app) << "padding"; }
  fs::rename(shard + ".new", shard);
  expect_broken_run(replay_everything(rec, rm), "the shard was replaced or resized since it was opened");
}

// ---- peak RSS against depth -------------------------------------------------------------------------------
// A mid-size model (text hidden 512, intermediate 2048, 8 query / 2 KV heads; the tiny vision tower with
// out_hidden 512) of `layers` decoder layers with random weights, and a recording of its own forward pass made
// from C++ on the tiny recording's inputs (the numbers do not matter here; the memory does).
struct MidModel {
  std::string dir, recording;
  uint64_t weight_bytes = 0;
};

MidModel make_mid_model(const TempDir& d, int layers) {
  MidModel m;
  m.dir = d.file("mid" + std::to_string(layers));
  fs::create_directories(m.dir);
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(data_path("weights/tiny/config.json")));
  auto& t = cfg["text_config"];
  t["hidden_size"] = 512;
  t["intermediate_size"] = 2048;
  t["num_attention_heads"] = 8;
  t["num_key_value_heads"] = 2;
  t["num_hidden_layers"] = layers;
  t.erase("layer_types");
  t["rope_parameters"]["mrope_section"] = {8, 12, 12};
  cfg["vision_config"]["out_hidden_size"] = 512;
  const std::string text = cfg.dump(2);
  std::ofstream(m.dir + "/config.json") << text;
  const ModelConfig mc = parse_model_config(text, m.dir + "/config.json");
  at::manual_seed(layers);
  std::vector<std::pair<std::string, at::Tensor>> ts;
  for (const auto& e : expected_tensors(mc)) {
    at::Tensor w = e.shape.size() == 1 ? 1 + 0.1 * at::randn(e.shape) : at::randn(e.shape) / std::sqrt(static_cast<double>(e.shape.back()));
    m.weight_bytes += static_cast<uint64_t>(w.nbytes());
    ts.emplace_back(checkpoint_key(e.key, "hub"), w);
  }
  write_safetensors(m.dir + "/model.safetensors", ts);
  ts.clear();
  // Its forward pass recorded from C++ (every call, with the mid config as the recording's config).
  Recording ref = Recording::open(data_path("recordings/tiny_fp32.h5"));
  m.recording = d.file("mid" + std::to_string(layers) + ".h5");
  ModelConfig wcfg;
  const Weights w = load_weights_any(m.dir, &wcfg);
  RecordingWriter writer(m.recording, {{"producer", "qvl test"}, {"dtype", "float32"}, {"device", "cpu"},
                                       {"attn_implementation", "functional"}, {"config", text}, {"scenario", "{}"}});
  model::lm_forward(w, recorded_model_inputs(ref), wcfg, &writer);
  writer.close();
  return m;
}

struct ChildRun {
  int status = -1;
  long max_rss_kb = 0;
  std::string output;
};

// Runs qvl as a child process and reads its peak RSS (wait4's rusage: the child alone).
ChildRun run_qvl_rss(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> all{QVL_BINARY};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    FILE* out = std::freopen(log.c_str(), "w", stdout);
    if (!out || dup2(fileno(stdout), 2) < 0) _exit(126);
    execv(argv[0], argv.data());
    _exit(127);
  }
  ChildRun r;
  struct rusage ru {};
  int status = 0;
  wait4(pid, &status, 0, &ru);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.max_rss_kb = ru.ru_maxrss;
  std::stringstream ss;
  ss << std::ifstream(log).rdbuf();
  r.output = ss.str();
  return r;
}

TEST(StreamRss, PeakDoesNotGrowWithDepth) {
  TempDir d;
  const MidModel shallow = make_mid_model(d, 2), deep = make_mid_model(d, 12);
  auto check = [&](const MidModel& m, bool stream) {
    // The classes whose C++-recorded calls carry complete inputs (the top-level call recorded from C++ keeps only
    // the step inputs, without pixel values, so it is not replayed here). Qwen2_5_VLTextModel is the composite
    // call that runs every layer: the one whose memory would grow with depth.
    std::vector<std::string> args{"check", m.dir, m.recording, "--only", "Qwen2_5_VLTextModel", "--only",
                                  "Qwen2_5_VLDecoderLayer", "--only", "Qwen2MLP", "--only", "Qwen2_5_VLRMSNorm",
                                  "--only", "Linear", "--only", "Embedding"};
    if (stream) args.push_back("--stream");
    ChildRun r = run_qvl_rss(args, d.file("log.txt"));
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find(" 0 failed"), std::string::npos) << r.output;
    return r.max_rss_kb;
  };
  const long s2 = check(shallow, true), s12 = check(deep, true);
  const long p2 = check(shallow, false), p12 = check(deep, false);
  const double extra_mb = static_cast<double>(deep.weight_bytes - shallow.weight_bytes) / 1e6;
  std::printf("[ StreamRss ] peak RSS: streamed 2 layers %.1f MB, 12 layers %.1f MB; plain 2 layers %.1f MB, "
              "12 layers %.1f MB; the 10 extra layers hold %.1f MB of weights\n",
              s2 / 1e3, s12 / 1e3, p2 / 1e3, p12 / 1e3, extra_mb);
  // The measurement can see depth: the plain check holds the whole model.
  EXPECT_GT(static_cast<double>(p12 - p2) / 1e3, 0.5 * extra_mb);
  // The streamed check does not grow with depth: within 10%.
  EXPECT_LE(static_cast<double>(std::max(s2, s12)), 1.10 * static_cast<double>(std::min(s2, s12)));
}

}  // namespace
}  // namespace qvl
