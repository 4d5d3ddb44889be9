#include "tools/convert_commands.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>

#include "converter/convert.h"
#include "converter/safetensors.h"
#include "functional/error.h"
#include "instrument/config_json.h"
#include "instrument/h5io.h"
#include "instrument/recording.h"

namespace qvl {
namespace fs = std::filesystem;

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
std::string human_bytes(double b) {
  char buf[32];
  if (b >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2f GB", b / 1e9);
  else if (b >= 1e6)
    std::snprintf(buf, sizeof buf, "%.1f MB", b / 1e6);
  else if (b >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1f kB", b / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f B", b);
  return buf;
}
// SIGINT / SIGTERM during a conversion: stop after the current tensor (the temporary is then removed).
volatile std::sig_atomic_t g_signal = 0;
void on_signal(int sig) {
  g_signal = sig;
}
struct SignalGuard {
  struct sigaction old_int {
  }, old_term{};
  SignalGuard() {
    g_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  ~SignalGuard() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
  static void check() {
    if (g_signal) {
      throw std::runtime_error(std::string("interrupted by ") + (g_signal == SIGINT ? "SIGINT" : "SIGTERM") +
                               "; the partial output was removed");
    }
  }
};

std::string config_summary(const std::string& json_text, const std::string& source) {
  try {
    ModelConfig c = parse_model_config(json_text, source);
    return "vision depth " + std::to_string(c.vision.depth) + ", hidden " +
           std::to_string(c.vision.hidden_size) + "; text layers " +
           std::to_string(c.text.num_hidden_layers) + ", hidden " + std::to_string(c.text.hidden_size) +
           ", heads " + std::to_string(c.text.num_attention_heads) + "/" +
           std::to_string(c.text.num_key_value_heads) + ", vocab " + std::to_string(c.text.vocab_size) +
           "; tie_word_embeddings " + (c.text.tie_word_embeddings ? "true" : "false");
  } catch (const std::exception& e) {
    return "unreadable (" + error_message(e) + ")";
  }
}
}  // namespace

// ------------------------------------------------------------------------------------------------------
ProgressBar::ProgressBar(std::string label, bool enabled)
    : label_(std::move(label)), enabled_(enabled), tty_(isatty(STDERR_FILENO) == 1), start_(now_s()) {}

void ProgressBar::update(uint64_t done, uint64_t total) {
  if (!enabled_) return;
  const double t = now_s(), el = t - start_;
  // A terminal gets a live line (4 updates a second); a log gets a line every 10 s once the run is long.
  if (tty_ ? (t - last_ < 0.25 && done < total) : (el < 5.0 || t - last_ < 10.0)) return;
  last_ = t;
  const double rate = el > 0 ? done / el : 0.0;
  const double eta = rate > 0 && total > done ? (total - done) / rate : 0.0;
  const int pct =
      total ? static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)) : 100;
  std::fprintf(stderr, "%s[%s] %3d%%  %s / %s  %.2f GB/s  ETA %.0f s%s", tty_ ? "\r" : "", label_.c_str(),
               pct, human_bytes(static_cast<double>(done)).c_str(),
               human_bytes(static_cast<double>(total)).c_str(), rate / 1e9, eta, tty_ ? "   " : "\n");
  std::fflush(stderr);
  printed_ = true;
}

void ProgressBar::finish() {
  if (enabled_ && tty_ && printed_) std::fprintf(stderr, "\n");
  printed_ = false;
}

uint64_t parse_byte_size(const std::string& text) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    throw std::runtime_error("size '" + text +
                             "': expected a number with an optional unit (B, kB, MB, GB, KiB, MiB, GiB)");
  }
  std::string unit = text.substr(pos);
  const std::map<std::string, double> units = {{"", 1},         {"B", 1},           {"kB", 1e3},
                                               {"KB", 1e3},     {"MB", 1e6},        {"GB", 1e9},
                                               {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}};
  auto it = units.find(unit);
  if (it == units.end() || v <= 0) {
    throw std::runtime_error(
        "size '" + text +
        "': expected a positive number with an optional unit (B, kB, MB, GB, KiB, MiB, GiB)");
  }
  return static_cast<uint64_t>(v * it->second);
}

// Runs `work`, closing the progress line whether it returns or throws.
template <class F>
auto with_bar(ProgressBar& bar, F&& work) {
  try {
    auto r = work();
    bar.finish();
    return r;
  } catch (...) {
    bar.finish();
    throw;
  }
}

static void print_removed(const std::vector<std::string>& removed) {
  for (const auto& r : removed) std::printf("  removed the stale temporary %s of a killed run\n", r.c_str());
}

// ------------------------------------------------------------------------------------------------------
int run_convert(const ConvertCommand& c) {
  SignalGuard signals;
  ProgressBar bar("convert", c.progress);
  auto progress = [&](uint64_t done, uint64_t total) {
    SignalGuard::check();
    bar.update(done, total);
  };
  const double t0 = now_s();
  std::optional<at::ScalarType> dtype;
  if (!c.dtype.empty()) dtype = parse_cast_dtype(c.dtype);
  if (c.to_safetensors) {
    if (c.gzip) throw std::runtime_error("--gzip applies to HDF5 output, not --to-safetensors");
    ExportOptions opt;
    opt.layout = c.layout;
    opt.max_shard_bytes = parse_byte_size(c.max_shard_size);
    opt.dtype = dtype;
    opt.durable = c.fsync;
    opt.progress = progress;
    ExportReport rep = with_bar(bar, [&] { return export_safetensors(c.src, c.out, opt); });
    const double s = now_s() - t0;
    print_removed(rep.removed_temporaries);
    std::printf("converted %s -> %s: %lld tensors, %s in %zu shard(s), %s key layout, %.1f s (%.2f GB/s)\n",
                c.src.c_str(), c.out.c_str(), static_cast<long long>(rep.tensors),
                human_bytes(static_cast<double>(rep.bytes)).c_str(), rep.shards.size(), rep.layout.c_str(), s,
                s > 0 ? rep.bytes / s / 1e9 : 0.0);
    return 0;
  }
  if (!c.layout.empty() || c.max_shard_size != "5GB") {
    throw std::runtime_error("--layout and --max-shard-size apply to --to-safetensors only");
  }
  ConvertOptions opt;
  opt.gzip_level = c.gzip;
  opt.dtype = dtype;
  opt.durable = c.fsync;
  opt.progress = progress;
  ConvertReport rep = with_bar(bar, [&] { return convert_checkpoint(c.src, c.out, opt); });
  const double s = now_s() - t0;
  print_removed(rep.removed_temporaries);
  std::printf("converted %s -> %s: %lld tensors, %s, key layout '%s'%s, %.1f s (%.2f GB/s)\n", c.src.c_str(),
              c.out.c_str(), static_cast<long long>(rep.tensors),
              human_bytes(static_cast<double>(rep.bytes)).c_str(), rep.key_layout.c_str(),
              dtype ? (", cast to " + dtype_name(*dtype)).c_str() : "", s, s > 0 ? rep.bytes / s / 1e9 : 0.0);
  for (const auto& n : rep.notes) std::printf("  note: %s\n", n.c_str());
  return 0;
}

// ------------------------------------------------------------------------------------------------------
namespace {
void print_safetensors(const SafetensorsFile& f, std::FILE* out, const std::string& indent) {
  uint64_t total = 0;
  for (const auto& e : f.entries()) total += e.end - e.begin;
  std::fprintf(out, "%s%s: safetensors, %zu tensors, %s, header %llu bytes\n", indent.c_str(),
               f.path().c_str(), f.entries().size(), human_bytes(static_cast<double>(total)).c_str(),
               static_cast<unsigned long long>(f.data_start() - 8));
  for (const auto& [k, v] : f.metadata())
    std::fprintf(out, "%s  __metadata__ %s = %s\n", indent.c_str(), k.c_str(), v.c_str());
  for (const auto& e : f.entries())
    std::fprintf(out, "%s  %-64s %-8s %-24s %14llu bytes\n", indent.c_str(), e.name.c_str(), e.dtype.c_str(),
                 shape_str(e.shape).c_str(), static_cast<unsigned long long>(e.end - e.begin));
}

void print_tensor_rows(const std::vector<StoredTensor>& ts, size_t strip, std::FILE* out,
                       const std::string& indent) {
  for (const auto& t : ts)
    std::fprintf(out, "%s%-64s %-14s %-24s %14llu bytes\n", indent.c_str(), t.path.substr(strip).c_str(),
                 t.dtype.c_str(), shape_str(t.shape).c_str(), static_cast<unsigned long long>(t.nbytes));
}

// The root attribute `checksums` in words (instrument/h5io.h, "Integrity").
std::string checksums_text(const std::string& attr) {
  if (attr == h5::kChecksums) return "Fletcher-32 on every dataset's data, checksummed headers";
  if (attr.empty()) return "none (written before qvl checksummed its files)";
  return "unknown kind '" + attr + "'";
}

std::string dtype_counts(const std::vector<StoredTensor>& ts) {
  std::map<std::string, int> n;
  for (const auto& t : ts) ++n[t.dtype];
  std::string s;
  for (const auto& [d, k] : n) s += (s.empty() ? "" : ", ") + d + " x" + std::to_string(k);
  return s;
}
}  // namespace

int run_inspect(const std::string& path, std::FILE* out) {
  if (fs::is_directory(path)) {
    Checkpoint ck = find_checkpoint(path);
    std::vector<SafetensorsFile> shards;  // every header validated before anything is printed
    for (const auto& s : ck.shards) shards.push_back(SafetensorsFile::open(s));
    std::fprintf(out, "%s: Hugging Face checkpoint, %zu shard(s)%s\n", path.c_str(), ck.shards.size(),
                 ck.indexed ? " listed by model.safetensors.index.json" : "");
    std::fprintf(out, "  config: %s\n", config_summary(ck.config_json, path + "/config.json").c_str());
    for (const auto& f : shards) print_safetensors(f, out, "  ");
    try {
      OpenCheckpoint oc = open_checkpoint(path);
      std::fprintf(out, "check: ok: %zu tensors (%s), key layout %s, every shape matches config.json\n",
                   oc.tensors.size(), human_bytes(static_cast<double>(oc.tensor_bytes)).c_str(),
                   oc.key_layout.c_str());
      for (const auto& n : oc.notes) std::fprintf(out, "  note: %s\n", n.c_str());
    } catch (const std::exception& e) {
      std::fprintf(out, "check: FAILED: %s\n", error_message(e).c_str());
      return 1;
    }
    return 0;
  }
  if (fs::path(path).extension() == ".safetensors") {
    print_safetensors(SafetensorsFile::open(path), out, "");
    return 0;
  }
  h5::File f = h5::open_read(path);
  const std::string where = "'" + path + "'";
  const std::string format = h5::has_attr(f.id(), "format") ? h5::attr_str(f.id(), "format", where) : "";
  f.h.reset();
  const std::vector<StoredTensor> ts = list_h5_tensors(path);
  uint64_t total = 0;
  for (const auto& t : ts) total += t.nbytes;
  if (format == "qvl.weights") {
    std::map<std::string, std::string> attrs;
    {
      h5::File g = h5::open_read(path);
      for (const char* k : {"config", "source", "key_layout", "vit_config", "checksums"})
        if (h5::has_attr(g.id(), k)) attrs[k] = h5::attr_str(g.id(), k, where);
    }
    std::fprintf(out, "%s: qvl.weights, %zu tensors, %s, key layout %s\n", path.c_str(), ts.size(),
                 human_bytes(static_cast<double>(total)).c_str(),
                 attrs.count("key_layout") ? attrs["key_layout"].c_str() : "?");
    if (attrs.count("config") && !attrs.count("vit_config"))
      std::fprintf(out, "  config: %s\n", config_summary(attrs["config"], path + ":config").c_str());
    if (attrs.count("vit_config")) std::fprintf(out, "  vit config: %s\n", attrs["vit_config"].c_str());
    if (attrs.count("source")) std::fprintf(out, "  source: %s\n", attrs["source"].c_str());
    std::fprintf(out, "  checksums: %s\n", checksums_text(attrs.count("checksums") ? attrs["checksums"] : "").c_str());
    std::fprintf(out, "  dtypes: %s\n", dtype_counts(ts).c_str());
    print_tensor_rows(ts, 0, out, "  ");
    return 0;
  }
  if (format == "qvl.recording") {
    Recording rec = Recording::open(path);
    std::fprintf(out, "%s: qvl.recording, %zu calls, %zu tensors, %s, producer %s, dtype %s\n", path.c_str(),
                 rec.calls().size(), ts.size(), human_bytes(static_cast<double>(total)).c_str(),
                 rec.attr("producer").c_str(), rec.attr("dtype").c_str());
    {
      h5::File g = h5::open_read(path);
      const std::string sums = h5::has_attr(g.id(), "checksums") ? h5::attr_str(g.id(), "checksums", where) : "";
      std::fprintf(out, "  checksums: %s; call count %s\n", checksums_text(sums).c_str(),
                   h5::has_attr(g.id(), "num_calls") ? "stated and matched" : "not stated");
    }
    std::fprintf(out, "  dtypes: %s\n", dtype_counts(ts).c_str());
    std::map<std::string, std::vector<StoredTensor>> by_call;
    std::vector<StoredTensor> other;
    for (const auto& t : ts) {
      const size_t dot = t.path.find('.', 6);
      if (t.path.rfind("calls.", 0) == 0 && dot != std::string::npos)
        by_call[t.path.substr(6, dot - 6)].push_back(t);
      else
        other.push_back(t);
    }
    for (const auto& h : rec.calls()) {
      std::fprintf(out, "  %s %s (%s #%lld, parent %lld)%s%s\n", h.group.c_str(),
                   h.module_path.empty() ? "(top)" : h.module_path.c_str(), h.module_class.c_str(),
                   static_cast<long long>(h.call_index), static_cast<long long>(h.parent),
                   h.settings.empty() || h.settings == "{}" ? "" : " settings ",
                   h.settings == "{}" ? "" : h.settings.c_str());
      print_tensor_rows(by_call[h.group], 6 + h.group.size() + 1, out, "      ");
    }
    print_tensor_rows(other, 0, out, "  ");
    return 0;
  }
  throw std::runtime_error(where + ": HDF5 file of unknown format '" + format +
                           "' (expected qvl.weights or qvl.recording)");
}

}  // namespace qvl
