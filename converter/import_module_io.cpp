#include "converter/import_module_io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <fstream>
#include <sstream>

#include "converter/safetensors.h"
#include "converter/shapes.h"
#include "instrument/config_json.h"
#include "instrument/h5io.h"
#include "instrument/process.h"
#include "instrument/recording.h"


#ifndef QVL_SOURCE_DIR
#define QVL_SOURCE_DIR "."
#endif
#ifndef QVL_PYTHON_DEFAULT
#define QVL_PYTHON_DEFAULT ""
#endif

namespace qvl {

namespace {
bool executable(const std::string& p) { return !p.empty() && ::access(p.c_str(), X_OK) == 0; }

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("'" + path + "': cannot be read");
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// Removes a file when it goes out of scope (the intermediate safetensors file).
struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() {
    if (!path.empty()) std::remove(path.c_str());
  }
};
}  // namespace

std::string pinned_python() {
  if (const char* env = std::getenv("QVL_PYTHON"); env && *env) {
    if (!executable(env)) throw std::runtime_error(std::string("QVL_PYTHON='") + env + "' is not an executable file");
    return env;
  }
  if (executable(QVL_PYTHON_DEFAULT)) return QVL_PYTHON_DEFAULT;
  throw std::runtime_error(
      "no pinned Python: set QVL_PYTHON to the environment's python (scripts/setup.sh prints it), or configure the "
      "build with -DQVL_PYTHON=...");
}

void check_vision_weights(const std::map<std::string, std::vector<int64_t>>& actual, const ModelConfig& cfg,
                          const std::string& source) {
  std::vector<std::string> problems;
  std::map<std::string, bool> known;
  for (const auto& e : expected_tensors(cfg)) {
    if (e.key.rfind("model.visual.", 0) != 0) continue;
    known[e.key] = true;
    auto it = actual.find(e.key);
    if (it == actual.end()) problems.push_back("missing tensor '" + e.key + "' (expected " + shape_str(e.shape) + ")");
    else if (it->second != e.shape)
      problems.push_back("shape mismatch for '" + e.key + "': expected " + shape_str(e.shape) + ", got " + shape_str(it->second));
  }
  for (const auto& [k, s] : actual)
    if (!known.count(k)) problems.push_back("unexpected tensor '" + k + "' " + shape_str(s) + " is not a vision weight for this config");
  if (problems.empty()) return;
  std::string msg = source + ": " + std::to_string(problems.size()) + " vision tensor(s) do not match config.json (depth " +
                    std::to_string(cfg.vision.depth) + ", hidden " + std::to_string(cfg.vision.hidden_size) + "):";
  for (size_t i = 0; i < problems.size() && i < 8; ++i) msg += "\n  " + problems[i];
  if (problems.size() > 8) msg += "\n  ... and " + std::to_string(problems.size() - 8) + " more";
  throw std::runtime_error(msg);
}

int run_import_module_io(const ImportOptions& opt) {
  struct stat st {};
  if (::stat(opt.dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) throw std::runtime_error("'" + opt.dir + "': not a folder");
  if (!opt.weights_out.empty() && opt.weights.empty())
    throw std::runtime_error("--weights-out needs --weights (the framework's vision_weights.pt)");
  if (!opt.weights_out.empty() && opt.config.empty())
    throw std::runtime_error("--weights-out needs --config: a qvl.weights file carries its config.json, and the weights "
                             "are checked against it");
  ModelConfig cfg;
  std::string config_text;
  if (!opt.config.empty()) {
    config_text = read_text(opt.config);
    if (!opt.weights_out.empty()) cfg = parse_model_config(config_text, opt.config);
  }
  const std::string python = pinned_python();
  h5::AtomicPath rec_out(opt.out);
  std::unique_ptr<h5::AtomicPath> w_out;
  RemoveOnExit st_tmp;
  std::vector<std::string> argv = {python, std::string(QVL_SOURCE_DIR) + "/recordings/record_reference.py",
                                   "import-module-io", opt.dir, "--out", rec_out.tmp()};
  if (!opt.config.empty()) argv.insert(argv.end(), {"--config", opt.config});
  if (!opt.weights.empty()) argv.insert(argv.end(), {"--weights", opt.weights});
  if (!opt.checkpoint.empty()) argv.insert(argv.end(), {"--checkpoint", opt.checkpoint});
  if (!opt.weights_out.empty()) {
    w_out = std::make_unique<h5::AtomicPath>(opt.weights_out);
    st_tmp.path = w_out->tmp() + ".safetensors";
    argv.insert(argv.end(), {"--weights-out", st_tmp.path});
  }
  const int rc = run_process(argv);
  if (rc == 2) return 2;  // a corrupt input: the Python side printed the one error line; nothing was written
  if (rc != 0) throw std::runtime_error("the Python side (" + argv[1] + " import-module-io) failed with exit status " +
                                        std::to_string(rc) + "; nothing was written");
  // The result must open as a recording before it takes the target name.
  const Recording rec = Recording::open(rec_out.tmp());
  if (!opt.weights_out.empty()) {
    const SafetensorsFile sf = SafetensorsFile::open(st_tmp.path);
    std::map<std::string, std::vector<int64_t>> shapes;
    Weights w;
    for (const auto& e : sf.entries()) {
      shapes[e.name] = e.shape;
      w.set(e.name, sf.read(e.name));
    }
    check_vision_weights(shapes, cfg, opt.weights);
    h5::write_weights(w_out->tmp(), w,
                      {{"config", config_text},
                       {"key_layout", "runtime"},
                       {"scope", "vision"},
                       {"source", "conversion framework vision_weights.pt: " + opt.weights}});
  }
  if (w_out) w_out->commit();
  rec_out.commit();
  std::printf("imported %zu calls into %s (dtype %s)%s\n", rec.calls().size(), opt.out.c_str(), rec.attr("dtype").c_str(),
              opt.weights_out.empty() ? "" : (", vision weights into " + opt.weights_out).c_str());
  return 0;
}

}  // namespace qvl
