#include "tests/golden/golden_support.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/test_support.h"
#include "functional/model.h"

namespace qvl::testing {
namespace fs = std::filesystem;

std::string generated_recordings_dir() { return QVL_GENERATED_RECORDINGS; }

std::string test_name(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

std::vector<std::string> recording_files() {
  std::vector<std::string> out;
  for (const fs::path dir : {fs::path(data_path("recordings")), fs::path(generated_recordings_dir())}) {
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir))
      // Not hidden files: the recorder writes .tmp-*.h5 and renames it when complete.
      if (e.path().extension() == ".h5" && e.path().filename().string()[0] != '.') out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string weights_path_for(const Recording& rec) {
  const std::string model_dir = rec.attr("model_dir");
  // weights/<name>.h5 (committed, converted), else a checkpoint directory: weights/<name>/ or the build's
  // generated weights (the real-size vision model).
  std::string wpath;
  for (const std::string& p : {data_path("weights/" + model_dir + ".h5"), data_path("weights/" + model_dir),
                               std::string(QVL_GENERATED_WEIGHTS) + "/" + model_dir}) {
    if (fs::exists(p)) {
      wpath = p;
      break;
    }
  }
  if (wpath.empty()) throw std::runtime_error(rec.path() + ": weights '" + model_dir + "' not found");
  return wpath;
}

const GoldenModel& model_for(const Recording& rec) {
  static std::map<std::string, GoldenModel> cache;  // per recording: the shared weights and its own config
  auto it = cache.find(rec.path());
  if (it != cache.end()) return it->second;
  const std::string wpath = weights_path_for(rec);
  struct Loaded {
    Weights weights;
    ModelConfig config;
  };
  static std::map<std::string, Loaded> loaded;                            // per weights file, as stored
  static std::map<std::pair<std::string, std::string>, Weights> by_dtype;  // per (file, dtype), cast
  auto lit = loaded.find(wpath);
  if (lit == loaded.end()) {
    Loaded l;
    l.weights = load_weights_any(wpath, &l.config);
    lit = loaded.emplace(wpath, std::move(l)).first;
  }
  const auto key = std::make_pair(wpath, rec.attr("dtype"));
  auto dit = by_dtype.find(key);
  if (dit == by_dtype.end()) dit = by_dtype.emplace(key, replay_model(lit->second.weights, lit->second.config, rec).weights).first;
  GoldenModel m{dit->second, recording_config(rec, lit->second.config)};
  return cache.emplace(rec.path(), std::move(m)).first->second;
}

const std::vector<RecordingInfo>& recording_index() {
  static const std::vector<RecordingInfo> index = [] {
    std::vector<RecordingInfo> out;
    for (const auto& path : recording_files()) {
      RecordingInfo info{path, test_name(fs::path(path).stem().string())};
      try {
        // The root attribute call_summary only: this runs in every test process, while the tests register.
        const CallSummary s = Recording::summary(path);
        info.has_generate = s.generate_steps > 0;
        info.has_text = s.has("Qwen2_5_VLDecoderLayer");
      } catch (const std::exception&) {
        // Not here: this runs while the tests are registered. The suites' test for this recording opens it
        // again and fails with the same error.
        info.has_generate = info.has_text = true;
      }
      out.push_back(std::move(info));
    }
    return out;
  }();
  return index;
}

const std::set<std::string>& only_classes() {
  static const std::set<std::string> only = [] {
    std::set<std::string> out;
    const char* env = std::getenv("QVL_ONLY");
    std::stringstream ss(env ? env : "");
    for (std::string c; std::getline(ss, c, ',');)
      if (!c.empty()) out.insert(c);
    return out;
  }();
  return only;
}

bool selected(const CallHeader& h) { return only_classes().empty() || only_classes().count(h.module_class) > 0; }

bool CallTally::check(const CallResult& r, const std::string& context) {
  ++checked;
  if (r.status == CallResult::Status::Pass) return true;
  ++failed;
  failures.push_back(r.header.group + " " + r.header.module_path);
  ADD_FAILURE() << name << (context.empty() ? "" : " (" + context + ")") << ": call " << describe(r);
  return false;
}

void CallTally::summary(const std::string& extra) const {
  std::ostringstream os;
  os << name << ": " << checked << " calls checked, " << failed << " failed";
  if (!extra.empty()) os << " " << extra;
  if (!only_classes().empty()) {
    os << " (QVL_ONLY=";
    for (auto it = only_classes().begin(); it != only_classes().end(); ++it)
      os << (it == only_classes().begin() ? "" : ",") << *it;
    os << ")";
  }
  for (size_t i = 0; i < failures.size() && i < 5; ++i) os << (i ? ", " : "; failed: ") << failures[i];
  if (failures.size() > 5) os << ", ... (" << failures.size() - 5 << " more)";
  std::printf("%s\n", os.str().c_str());
  std::fflush(stdout);
}

std::vector<CallResult> replay_all(const Recording& rec, const Registry& reg, const std::string& only_class) {
  const GoldenModel& m = model_for(rec);
  std::vector<CallResult> out;
  for (size_t i = 0; i < rec.calls().size(); ++i) {
    if (!only_class.empty() && rec.calls()[i].module_class != only_class) continue;
    if (!reg.find(rec.calls()[i].module_class)) continue;
    out.push_back(replay_call(rec, i, m.weights, m.config, reg));
  }
  return out;
}

std::string describe(const CallResult& r) {
  std::ostringstream os;
  os << r.header.group << " " << r.header.module_path << " (" << r.header.module_class << " #"
     << r.header.call_index << "): " << status_name(r.status);
  if (!r.error.empty()) os << "\n  " << r.error;
  for (const auto& t : r.tensors) {
    const Metrics& m = t.vs_ref;
    os << "\n  " << t.name << ": pearson " << m.pearson << ", cosine " << m.cosine << ", nmse " << m.nmse
       << ", max_abs " << m.max_abs << " at " << format_index(m.worst_index) << ", max_rel " << m.max_rel
       << ", min_row_cos " << m.min_row_cos;
    if (t.bf16_rule)
      os << "; vs fp32: ours rmse " << t.ours_vs_fp32.rmse << " / HF rmse " << t.hf_vs_fp32.rmse << ", ours max_abs "
         << t.ours_vs_fp32.max_abs << " / HF max_abs " << t.hf_vs_fp32.max_abs;
    if (!t.verdict.pass) os << "\n    -> " << t.verdict.why;
  }
  return os.str();
}

bool has_generation(const Recording& rec) { return recorded_generation(rec).has_value(); }

std::string generate_mismatch(const Recording& rec, const Weights& w, const ModelConfig& cfg, int64_t* longest) {
  const RecordedGeneration gen = recorded_generation(rec).value();
  const at::Tensor ours = model::generate(w, recorded_model_inputs(rec), cfg, gen.options);
  if (longest) *longest = gen.new_tokens.empty() ? 0 : static_cast<int64_t>(gen.new_tokens[0].size());
  return token_mismatch(ours, gen.options.max_new_tokens, gen);
}

void expect_all_fail(const std::string& recording, const std::string& cls, ReplayFn bug) {
  Recording rec = Recording::open(recording);
  Registry reg = Registry::defaults();
  // The unmodified registry passes these calls: the failures below are the bug's, not the harness's.
  for (const auto& r : replay_all(rec, reg, cls)) ASSERT_EQ(r.status, CallResult::Status::Pass) << describe(r);
  reg.set(cls, std::move(bug));
  auto results = replay_all(rec, reg, cls);
  ASSERT_FALSE(results.empty()) << "no " << cls << " call in " << recording;
  for (const auto& r : results) EXPECT_EQ(r.status, CallResult::Status::Fail) << describe(r);
}

}  // namespace qvl::testing
