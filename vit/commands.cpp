#include "vit/commands.h"

#include <ATen/Parallel.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <csignal>
#include <thread>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "instrument/process.h"
#include "vit/dist.h"
#include "vit/progress.h"
#include "vit/train.h"

namespace qvl::vit {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

struct Common {
  std::string dataset = "fashion_mnist", data;
  std::string device = "cpu";
  int threads = 2;
  int64_t batch_threads = 0;  // 0: one per thread on the CPU
  bool no_progress = false;
  int64_t eval_batch = 500;
};
struct ModelOpts {
  std::string rope = "axial";
  int64_t width = 64, depth = 6, heads = 1, mlp_ratio = 2, patch = 4;
  bool no_cls = false;
};
struct DistOpts {
  int64_t world = 1, rank = 0;
  std::string master = "127.0.0.1:29500";
};

Common g_common;
ModelOpts g_model;
// The command-line protocol: shifts, no flips (3 epochs are short; flips cost 28px accuracy there).
TrainOptions g_train = [] {
  TrainOptions o;
  o.flip = false;
  return o;
}();
DistOpts g_dist;
int64_t g_train_subset = 0, g_holdout = 0;
std::string g_losses_out;
std::string g_out = "vit_model.h5", g_model_path, g_positions = "extend", g_sweep_out = "results/vit", g_plot_python;
bool g_no_eval = false, g_tables_only = false;
int64_t g_jobs = 1;
std::string g_shard;  // "i/N": this process runs the i-th of N shares of a --jobs sweep
std::vector<int64_t> g_resolutions, g_seeds = {0, 1, 2};
std::vector<std::string> g_variants = {"none",    "ape",     "axial",   "axial-matrix", "mixed",    "block:2",
                                       "block:3", "block:4", "block:5", "block:6",      "spiral:4", "spiral:8"};
CLI::App *g_vit, *g_train_cmd, *g_eval_cmd, *g_sweep_cmd;

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

std::string now_iso() {
  std::time_t t = std::time(nullptr);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return b;
}

void write_text_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp-" + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error("'" + tmp + "': cannot create");
    f << text;
    f.flush();
    if (!f) {
      f.close();
      fs::remove(tmp);
      throw std::runtime_error("'" + tmp + "': write failed");
    }
  }
  fs::rename(tmp, path);
}

VitConfig model_config(const std::string& rope, const Dataset& d) {
  VitConfig c;
  c.image = d.images.size(2);
  c.channels = d.images.size(1);
  c.classes = d.classes;
  c.patch = g_model.patch;
  c.width = g_model.width;
  c.depth = g_model.depth;
  c.heads = g_model.heads;
  c.mlp_ratio = g_model.mlp_ratio;
  c.cls_token = !g_model.no_cls;
  c.rope = parse_rope(rope);
  c.validate();
  return c;
}

void setup_threads() {
  if (g_common.threads > 0) at::set_num_threads(g_common.threads);
}

// --batch-threads, with 0 resolved: on the CPU one worker per thread, elsewhere 1.
int64_t batch_threads() {
  if (g_common.batch_threads > 0) return g_common.batch_threads;
  return g_common.device == "cpu" ? int64_t(at::get_num_threads()) : 1;
}

TrainOptions train_options(const std::string& label) {
  TrainOptions o = g_train;
  o.device = g_common.device;
  o.progress = !g_common.no_progress;
  o.label = label;
  o.batch_threads = batch_threads();
  return o;
}

std::vector<int64_t> resolutions_or(std::vector<int64_t> def) { return g_resolutions.empty() ? def : g_resolutions; }

int cmd_train() {
  setup_threads();
  std::unique_ptr<DistContext> dist;
  if (g_dist.world > 1) dist = make_dist(g_dist.world, g_dist.rank, g_dist.master, g_common.device);
  Dataset tr = load_dataset(g_common.dataset, g_common.data, true), val;
  if (g_holdout > 0) std::tie(tr, val) = hold_out(tr, g_holdout);
  tr = take(tr, g_train_subset);
  VitConfig c = model_config(g_model.rope, tr);
  TrainOptions o = train_options("train " + c.rope.spec());
  if (dist) o.reducer = &dist->reducer;
  const bool lead = g_dist.rank == 0;
  if (lead)
    std::fprintf(stderr, "qvl vit train: %s, %lld images, rope %s, width %lld, depth %lld, heads %lld, %lld epochs, batch %lld, %d threads (batch split %lld), %s%s\n",
                 tr.name.c_str(), (long long)tr.size(), c.rope.spec().c_str(), (long long)c.width, (long long)c.depth,
                 (long long)c.heads, (long long)o.epochs, (long long)o.batch, at::get_num_threads(), (long long)o.batch_threads, o.device.c_str(),
                 dist ? (", world " + std::to_string(g_dist.world)).c_str() : "");
  TrainResult r = train(c, tr, o);
  if (lead) {
    std::printf("trained %lld steps in %.1f s: %.0f images/s, final loss %.4f, last-epoch train acc %.2f%%\n",
                (long long)r.losses.size(), r.train_s, r.images_per_s, r.losses.empty() ? 0.0 : r.losses.back(),
                100 * r.final_train_acc);
    std::printf("rope: build %.2f s, apply %.2f s = %.1f%% of the forward passes (%.1f s)\n", r.rope.build_s, r.rope.apply_s,
                r.forward_s > 0 ? 100 * (r.rope.build_s + r.rope.apply_s) / r.forward_s : 0.0, r.forward_s);
    if (!g_losses_out.empty()) write_text_atomic(g_losses_out, json(r.losses).dump() + "\n");
    save_model(g_out, r.weights, c,
               "qvl vit train --rope " + c.rope.spec() + " --seed " + std::to_string(o.seed) + " --epochs " + std::to_string(o.epochs) +
                   " on " + tr.name);
    std::printf("saved %s\n", g_out.c_str());
    if (!g_no_eval) {
      const Dataset te = g_holdout > 0 ? val : load_dataset(g_common.dataset, g_common.data, false);
      const char* set = g_holdout > 0 ? "held-out" : "test";
      for (int64_t res : resolutions_or({c.image})) {
        EvalResult e = evaluate(r.weights, c, te, res, parse_positions(g_positions), g_common.eval_batch, o.device, o.progress,
                                "eval " + std::to_string(res) + "px", o.batch_threads);
        std::printf("%s %lldpx (%s): top-1 %.2f%%, loss %.4f, %.0f images/s\n", set, (long long)res, g_positions.c_str(),
                    100 * e.accuracy, e.loss, e.images_per_s);
      }
    }
  }
  if (dist) dist->barrier();
  return 0;
}

int cmd_eval() {
  setup_threads();
  if (g_model_path.empty()) throw std::runtime_error("qvl vit eval: --model PATH is required");
  LoadedModel m = load_model(g_model_path);
  Dataset te = load_dataset(g_common.dataset, g_common.data, false);
  std::printf("model %s: rope %s, width %lld, depth %lld, heads %lld, image %lld, patch %lld\n", g_model_path.c_str(),
              m.config.rope.spec().c_str(), (long long)m.config.width, (long long)m.config.depth, (long long)m.config.heads,
              (long long)m.config.image, (long long)m.config.patch);
  for (int64_t res : resolutions_or({m.config.image})) {
    EvalResult e = evaluate(m.weights, m.config, te, res, parse_positions(g_positions), g_common.eval_batch, g_common.device,
                            !g_common.no_progress, "eval " + std::to_string(res) + "px", batch_threads());
    std::printf("test %lldpx (%s): top-1 %.2f%%, loss %.4f, %.0f images/s\n", (long long)res, g_positions.c_str(), 100 * e.accuracy,
                e.loss, e.images_per_s);
  }
  return 0;
}

// --- sweep --------------------------------------------------------------------------------------------

std::string run_name(const std::string& variant, int64_t seed) {
  std::string v = variant;
  for (char& ch : v)
    if (ch == ':' || ch == '+') ch = '_';
  return v + "_seed" + std::to_string(seed);
}

double t975(int64_t dof) {  // two-sided 95% Student t quantiles
  static const double t[] = {0, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228};
  return dof >= 1 && dof <= 10 ? t[dof] : 1.96;
}

struct Stat {
  double mean = 0, sd = 0;
  int64_t n = 0;
};
Stat stat(const std::vector<double>& v) {
  Stat s;
  s.n = int64_t(v.size());
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  if (v.size() > 1) {
    for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
    s.sd = std::sqrt(s.sd / double(v.size() - 1));
  }
  return s;
}

// "mean ± sd" over two or more values; one value alone is printed bare (it has no spread to show).
std::string fmt_stat(const Stat& st, int decimals) {
  char b[64];
  if (st.n == 0) return "-";
  if (st.n >= 2)
    std::snprintf(b, sizeof b, "%.*f ± %.*f", decimals, st.mean, decimals, st.sd);
  else
    std::snprintf(b, sizeof b, "%.*f", decimals, st.mean);
  return b;
}

// Aggregates every run file into <out>/<dataset>.json and .md (atomically).
void aggregate(const std::string& out_dir, const std::string& dataset, const std::vector<std::string>& order, double sweep_wall_s) {
  const fs::path runs_dir = fs::path(out_dir) / "runs" / dataset;
  std::map<std::string, std::map<int64_t, json>> runs;  // variant -> seed -> run
  if (fs::exists(runs_dir))
    for (const auto& e : fs::directory_iterator(runs_dir)) {
      if (e.path().extension() != ".json") continue;
      std::ifstream f(e.path());
      json j;
      try {
        j = json::parse(f);
      } catch (const std::exception& ex) {
        std::fprintf(stderr, "skipping unreadable run file '%s': %s\n", e.path().c_str(), ex.what());
        continue;
      }
      runs[j.at("variant").get<std::string>()][j.at("seed").get<int64_t>()] = j;
    }
  std::vector<std::string> names;
  for (const auto& v : order)
    if (runs.count(v)) names.push_back(v);
  for (const auto& [v, _] : runs)
    if (std::find(names.begin(), names.end(), v) == names.end()) names.push_back(v);

  json agg = {{"dataset", dataset}, {"generated_at", now_iso()}, {"cpu", cpu_model()}, {"variants", json::array()}};
  std::vector<std::string> modes = {"extend", "rescale"};
  std::vector<std::string> res_keys;
  double total_run_s = 0;
  int64_t n_runs = 0;
  for (const auto& v : names)
    for (const auto& [s, j] : runs[v]) {
      total_run_s += j.value("run_wall_s", 0.0);
      ++n_runs;
      // the union of the runs' resolutions: a sweep resumed with other --resolutions leaves cells empty ("-")
      for (auto it = j["eval"]["extend"].begin(); it != j["eval"]["extend"].end(); ++it)
        if (std::find(res_keys.begin(), res_keys.end(), it.key()) == res_keys.end()) res_keys.push_back(it.key());
    }
  std::sort(res_keys.begin(), res_keys.end(), [](const std::string& a, const std::string& b) { return std::stoll(a) < std::stoll(b); });
  auto has = [](const json& j, const std::string& m, const std::string& r) { return j["eval"].contains(m) && j["eval"][m].contains(r); };
  auto acc_of = [&](const json& j, const std::string& m, const std::string& r) -> double { return j["eval"][m][r]["accuracy"].get<double>(); };
  std::ostringstream md;
  md << "# ViT position encodings on " << dataset << "\n\n";
  md << "Generated by `qvl vit sweep` on " << cpu_model() << ", " << n_runs << " runs (" << std::llround(total_run_s)
     << " s of run time). Accuracy is top-1 on the test set, mean ± sample std over seeds. Δ is the paired"
        " difference against `axial` (same seeds) with a 95% t-interval; `~` marks a difference the seeds cannot"
        " resolve (the interval contains 0).\n\n";
  // Runs made with other training options (a changed default, a resumed sweep with other flags) do not belong
  // in one table: say so in the table and on stderr. Files from before an option existed get its default.
  std::map<std::string, std::vector<std::string>> protocols;  // options -> runs
  for (const auto& [v, by_seed] : runs)
    for (const auto& [s, j] : by_seed) {
      json o = j.value("options", json::object());
      if (!o.contains("shift_until")) o["shift_until"] = 1.0;
      if (!o.contains("label_smoothing")) o["label_smoothing"] = 0.0;
      protocols[o.dump()].push_back(run_name(v, s));
    }
  if (protocols.size() > 1) {
    md << "**Warning: these runs were trained with " << protocols.size() << " different sets of options**, so the"
          " rows are not comparable:\n\n";
    for (const auto& [o, names] : protocols) {
      md << "- " << names.size() << " runs (" << names.front() << (names.size() > 1 ? ", ..." : "") << "): `" << o << "`\n";
      std::fprintf(stderr, "vit sweep: warning: %zu runs in %s (e.g. %s) were trained with options %s\n", names.size(),
                   runs_dir.c_str(), names.front().c_str(), o.c_str());
    }
    md << "\n";
  }
  if (!runs.empty()) {
    const json& any = runs.begin()->second.begin()->second;
    json model = any["config"];  // the shared architecture: the position encoding differs per row
    model.erase("rope");
    model.erase("rope_theta");
    md << "Model (the same for every variant; the position encoding is the row's): " << model.dump()
       << "; training: " << any["options"].dump() << "; threads " << any.value("threads", 0) << ", device "
       << any.value("device", std::string("cpu")) << ".\n\n";
  }
  for (const auto& m : modes) {
    md << "## Top-1 (%) by test resolution, positions `" << m << "`\n\n| variant | seeds | rotated |";
    for (const auto& r : res_keys) md << " " << r << "px |";
    md << "\n|---|---|---|";
    for (size_t i = 0; i < res_keys.size(); ++i) md << "---|";
    md << "\n";
    for (const auto& v : names) {
      md << "| " << v << " | " << runs[v].size() << " | " << std::llround(100 * runs[v].begin()->second["rope"].value("rotated_fraction", 0.0)) << "% |";
      for (const auto& r : res_keys) {
        std::vector<double> a;
        for (const auto& [s, j] : runs[v])
          if (has(j, m, r)) a.push_back(100 * acc_of(j, m, r));
        md << " " << fmt_stat(stat(a), 2) << " |";
      }
      md << "\n";
    }
    md << "\n## Δ top-1 (points) against axial, paired by seed, 95% CI, positions `" << m << "`\n\n| variant |";
    for (const auto& r : res_keys) md << " " << r << "px |";
    md << "\n|---|";
    for (size_t i = 0; i < res_keys.size(); ++i) md << "---|";
    md << "\n";
    for (const auto& v : names) {
      if (v == "axial" || !runs.count("axial")) continue;
      md << "| " << v << " |";
      for (const auto& r : res_keys) {
        std::vector<double> d;
        for (const auto& [s, j] : runs[v])
          if (runs["axial"].count(s) && has(j, m, r) && has(runs["axial"][s], m, r))
            d.push_back(100 * (acc_of(j, m, r) - acc_of(runs["axial"][s], m, r)));
        Stat st = stat(d);
        if (st.n == 0) {
          md << " - |";
          continue;
        }
        if (st.n == 1) {
          char b[48];
          std::snprintf(b, sizeof b, " %+.2f (1 seed) |", st.mean);
          md << b;
          continue;
        }
        const double h = t975(st.n - 1) * st.sd / std::sqrt(double(st.n));
        const bool resolved = (st.mean - h) > 0 || (st.mean + h) < 0;
        char b[96];
        std::snprintf(b, sizeof b, " %s%+.2f [%+.2f, %+.2f] |", resolved ? "" : "~", st.mean, st.mean - h, st.mean + h);
        md << b;
      }
      md << "\n";
    }
    md << "\n";
  }
  // speed
  md << "## Speed (same run, same threads)\n\n| variant | train img/s | eval img/s at 28px | RoPE share of forward | RoPE share of step |\n|---|---|---|---|---|\n";
  for (const auto& v : names) {
    std::vector<double> tr, ev, sf, ss;
    for (const auto& [s, j] : runs[v]) {
      tr.push_back(j["train"]["images_per_s"].get<double>());
      if (j["eval"]["extend"].contains("28")) ev.push_back(j["eval"]["extend"]["28"]["images_per_s"].get<double>());
      sf.push_back(100 * j["rope"]["share_of_forward"].get<double>());
      ss.push_back(100 * j["rope"]["share_of_step"].get<double>());
    }
    Stat c = stat(sf), d = stat(ss);
    char buf[64];
    std::snprintf(buf, sizeof buf, " %.1f%% | %.1f%% |\n", c.mean, d.mean);
    md << "| " << v << " | " << fmt_stat(stat(tr), 0) << " | " << fmt_stat(stat(ev), 0) << " |" << buf;
  }
  // matrix / complex ratio, paired by seed (the sweep runs axial and axial-matrix back to back per seed)
  json ratio = json::object();
  if (runs.count("axial") && runs.count("axial-matrix")) {
    std::vector<double> rt, re;
    for (const auto& [s, j] : runs["axial-matrix"])
      if (runs["axial"].count(s)) {
        rt.push_back(j["train"]["images_per_s"].get<double>() / runs["axial"][s]["train"]["images_per_s"].get<double>());
        if (has(j, "extend", "28") && has(runs["axial"][s], "extend", "28"))
          re.push_back(j["eval"]["extend"]["28"]["images_per_s"].get<double>() / runs["axial"][s]["eval"]["extend"]["28"]["images_per_s"].get<double>());
      }
    Stat a = stat(rt), b = stat(re);
    ratio = {{"train_speed_ratio_mean", a.mean}, {"train_speed_ratio_sd", a.sd}, {"eval_speed_ratio_mean", b.mean}, {"pairs", a.n}};
    char buf[200];
    std::snprintf(buf, sizeof buf, "\nMatrix form / complex form speed (axial-matrix img/s ÷ axial img/s, paired by seed, n = %lld): train ",
                  (long long)a.n);
    md << buf << fmt_stat(a, 3) << ", eval " << fmt_stat(b, 3) << ".\n";
  }
  agg["matrix_over_complex"] = ratio;
  agg["runs"] = n_runs;
  agg["run_time_s"] = total_run_s;
  if (sweep_wall_s > 0) agg["this_invocation_wall_s"] = sweep_wall_s;
  for (const auto& v : names) {
    json jv = {{"variant", v}, {"seeds", json::array()}, {"accuracy", json::object()}, {"delta_vs_axial", json::object()}};
    for (const auto& [s, j] : runs[v]) jv["seeds"].push_back(s);
    jv["rotated_fraction"] = runs[v].begin()->second["rope"].value("rotated_fraction", 0.0);
    for (const auto& m : modes)
      for (const auto& r : res_keys) {
        std::vector<double> a, d;
        for (const auto& [s, j] : runs[v]) {
          if (!has(j, m, r)) continue;
          a.push_back(acc_of(j, m, r));
          if (runs.count("axial") && runs["axial"].count(s) && has(runs["axial"][s], m, r))
            d.push_back(acc_of(j, m, r) - acc_of(runs["axial"][s], m, r));
        }
        Stat st = stat(a), sd = stat(d);
        if (st.n == 0) continue;
        jv["accuracy"][m][r] = {{"mean", st.mean}, {"std", st.sd}, {"n", st.n}};
        if (v != "axial" && sd.n >= 2) {
          const double h = t975(sd.n - 1) * sd.sd / std::sqrt(double(sd.n));
          jv["delta_vs_axial"][m][r] = {{"mean", sd.mean}, {"ci95", {sd.mean - h, sd.mean + h}}, {"resolved", (sd.mean - h) > 0 || (sd.mean + h) < 0}};
        }
      }
    std::vector<double> tr;
    for (const auto& [s, j] : runs[v]) tr.push_back(j["train"]["images_per_s"].get<double>());
    jv["train_images_per_s"] = stat(tr).mean;
    agg["variants"].push_back(jv);
  }
  fs::create_directories(out_dir);
  write_text_atomic((fs::path(out_dir) / (dataset + ".json")).string(), agg.dump(1) + "\n");
  write_text_atomic((fs::path(out_dir) / (dataset + ".md")).string(), md.str());
}

// Redraws <out>/<dataset>.png from <dataset>.json with --plot-python (scripts/plot_vit.py); nothing without it.
void plot(const std::string& ds) {
  if (g_plot_python.empty()) return;
  const std::string cmd = "'" + g_plot_python + "' '" + std::string(QVL_SOURCE_DIR) + "/scripts/plot_vit.py' '" +
                          (fs::path(g_sweep_out) / (ds + ".json")).string() + "' '" + (fs::path(g_sweep_out) / (ds + ".png")).string() + "'";
  if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "plot failed: %s\n", cmd.c_str());
}

size_t count_run_files(const fs::path& runs_dir) {
  size_t n = 0;
  if (fs::is_directory(runs_dir))
    for (const auto& e : fs::directory_iterator(runs_dir)) n += e.path().extension() == ".json";
  return n;
}

// The work queue of a --jobs sweep: a share takes a run by creating <run file>.claim exclusively (O_EXCL), so
// every share takes the next run nobody has, in the seed-major order, and none idles while runs are left.
// The share removes the claim after writing the run file; the parent clears the claims a killed sweep left.
std::string claim_path(const fs::path& run_file) { return run_file.string() + ".claim"; }
bool claim_run(const fs::path& run_file) {
  const std::string p = claim_path(run_file);
  const int fd = ::open(p.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
  if (fd < 0) {
    if (errno == EEXIST) return false;
    throw std::runtime_error("'" + p + "': cannot create the claim: " + std::strerror(errno));
  }
  const std::string pid = std::to_string(getpid()) + "\n";
  const bool ok = ::write(fd, pid.data(), pid.size()) == ssize_t(pid.size());
  ::close(fd);
  if (!ok) throw std::runtime_error("'" + p + "': cannot write the claim");
  if (fs::exists(run_file)) {  // finished by another share between our look and our claim
    fs::remove(p);
    return false;
  }
  return true;
}
void clear_claims(const fs::path& runs_dir) {
  if (!fs::is_directory(runs_dir)) return;
  for (const auto& e : fs::directory_iterator(runs_dir))
    if (e.path().extension() == ".claim") {
      std::fprintf(stderr, "vit sweep: removing the claim a stopped sweep left: %s\n", e.path().c_str());
      fs::remove(e.path());
    }
}

// --jobs N: starts N copies of this very command, each with --shard i/N; they take the runs from one queue
// (claim_run) in the seed-major order. The parent rewrites the tables (and the PNG) whenever a run file
// appears. Each share keeps the --threads it was given, so `--jobs 2 --threads 1` runs two single-threaded
// trainings side by side. Two sweeps must not share one --out folder at the same time.
int sweep_parent(const std::string& ds, const fs::path& runs_dir) {
  const double t0 = now_s();
  clear_claims(runs_dir);
  const std::vector<std::string> argv = own_command_line();
  std::vector<pid_t> pids;
  for (int64_t i = 0; i < g_jobs; ++i) {
    std::vector<std::string> a = argv;
    a.insert(a.end(), {"--shard", std::to_string(i) + "/" + std::to_string(g_jobs)});
    pids.push_back(spawn_process(a));
  }
  std::vector<int> rcs(pids.size(), -1);
  size_t seen = count_run_files(runs_dir), running = pids.size();
  while (running > 0) {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    for (size_t i = 0; i < pids.size(); ++i)
      if (rcs[i] < 0 && (rcs[i] = wait_process(pids[i], false)) >= 0) --running;
    if (const size_t n = count_run_files(runs_dir); n != seen) {
      seen = n;
      aggregate(g_sweep_out, ds, g_variants, 0);
      plot(ds);
    }
  }
  const double wall = now_s() - t0;
  if (seen > 0) {
    aggregate(g_sweep_out, ds, g_variants, wall);
    plot(ds);
  }
  std::string failed;
  for (size_t i = 0; i < rcs.size(); ++i)
    if (rcs[i] != 0) failed += " share " + std::to_string(i) + "/" + std::to_string(g_jobs) + " exited with " + std::to_string(rcs[i]) + ";";
  if (!failed.empty()) throw std::runtime_error("vit sweep --jobs:" + failed + " the finished runs are kept; run the sweep again to resume");
  std::printf("sweep: %lld shares done, %.0f s wall; results in %s/%s.{json,md}\n", (long long)g_jobs, wall, g_sweep_out.c_str(), ds.c_str());
  return 0;
}

int cmd_sweep() {
  const std::string ds = g_common.dataset == "fashion-mnist" ? "fashion_mnist" : g_common.dataset;
  const fs::path runs_dir = fs::path(g_sweep_out) / "runs" / ds;
  if (g_tables_only) {
    if (!fs::is_directory(runs_dir)) throw std::runtime_error("vit sweep --tables-only: no run files under '" + runs_dir.string() + "'");
    aggregate(g_sweep_out, ds, g_variants, 0);
    plot(ds);
    std::printf("tables rewritten from %s: %s/%s.{json,md}%s\n", runs_dir.c_str(), g_sweep_out.c_str(), ds.c_str(),
                g_plot_python.empty() ? "" : " and .png");
    return 0;
  }
  if (g_jobs > 1 && g_shard.empty()) return sweep_parent(ds, runs_dir);
  int64_t shard = 0, shards = 1;
  if (!g_shard.empty()) {
    if (std::sscanf(g_shard.c_str(), "%ld/%ld", &shard, &shards) != 2 || shards < 1 || shard < 0 || shard >= shards)
      throw std::runtime_error("vit sweep --shard '" + g_shard + "': expected i/N with 0 <= i < N");
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // a share dies with the sweep that started it
  }
  const bool tables = shards == 1;      // with --jobs, the parent alone writes the tables
  setup_threads();
  const double t_sweep = now_s();
  Dataset tr = take(load_dataset(g_common.dataset, g_common.data, true), g_train_subset);
  Dataset te = load_dataset(g_common.dataset, g_common.data, false);
  fs::create_directories(runs_dir);
  for (const auto& v : g_variants) model_config(v, tr);  // every spec valid before the first run
  const std::vector<int64_t> res = resolutions_or({20, 28, 36, 44, 56});
  const int64_t total = int64_t(g_variants.size() * g_seeds.size());
  int64_t k = 0, done_now = 0;
  // seed-major: every variant gets its first seed before any gets its second, and axial/axial-matrix
  // alternate (A B ... A B) for the speed ratio
  for (int64_t seed : g_seeds)
    for (const auto& v : g_variants) {
      ++k;
      const fs::path file = runs_dir / (run_name(v, seed) + ".json");
      if (fs::exists(file)) {
        if (shard == 0)
          std::fprintf(stderr, "[%lld/%lld] %s seed %lld: done earlier (%s)\n", (long long)k, (long long)total, v.c_str(), (long long)seed, file.c_str());
        continue;
      }
      if (shards > 1 && !claim_run(file)) continue;  // another share has it
      const double t0 = now_s();
      VitConfig c = model_config(v, tr);
      TrainOptions o = train_options("[" + std::to_string(k) + "/" + std::to_string(total) + "] " + v + " s" + std::to_string(seed));
      o.seed = uint64_t(seed);
      TrainResult r = train(c, tr, o);
      json j = {{"variant", v}, {"seed", seed}, {"dataset", ds}, {"config", json::parse(c.to_json())},
                {"options", {{"epochs", o.epochs}, {"batch", o.batch}, {"lr", o.lr}, {"weight_decay", o.weight_decay}, {"warmup", o.warmup},
                             {"shift", o.shift}, {"shift_until", o.shift_until},
                             {"label_smoothing", o.label_smoothing}, {"flip", o.flip}, {"train_images", tr.size()}, {"max_steps", o.max_steps}}},
                {"threads", at::get_num_threads()}, {"device", o.device}, {"cpu", cpu_model()}};
      // a split batch rounds differently; 1 (no split) is left out, so such runs match the files written before the split existed
      if (o.batch_threads > 1) j["options"]["batch_threads"] = o.batch_threads;
      json losses = json::array();
      for (size_t i = 0; i < r.losses.size(); i += 10) losses.push_back(r.losses[i]);
      j["train"] = {{"seconds", r.train_s}, {"images_per_s", r.images_per_s}, {"steps", r.losses.size()},
                    {"final_loss", r.losses.empty() ? 0.0 : r.losses.back()}, {"final_train_acc", r.final_train_acc}, {"loss_every_10", losses}};
      const double rope_s = r.rope.build_s + r.rope.apply_s;
      j["rope"] = {{"rotated_fraction", rotated_fraction(c)}, {"build_s", r.rope.build_s}, {"apply_s", r.rope.apply_s},
                   {"forward_s", r.forward_s}, {"share_of_forward", r.forward_s > 0 ? rope_s / r.forward_s : 0.0},
                   {"share_of_step", r.train_s > 0 ? rope_s / r.train_s : 0.0}};
      for (const std::string m : {"extend", "rescale"}) {
        for (int64_t rr : res) {
          // The position mode changes nothing without a rotary (APE is always bicubic-resized), nor at the
          // training size (rescaling by G / G is the identity), so those are evaluated once.
          if (m == "rescale" && (!c.rope.rotary() || rr == c.image)) {
            j["eval"][m][std::to_string(rr)] = j["eval"]["extend"][std::to_string(rr)];
            continue;
          }
          EvalResult e = evaluate(r.weights, c, te, rr, parse_positions(m), g_common.eval_batch, o.device, !g_common.no_progress,
                                  "  eval " + m + " " + std::to_string(rr) + "px", o.batch_threads);
          j["eval"][m][std::to_string(rr)] = {{"accuracy", e.accuracy}, {"loss", e.loss}, {"images_per_s", e.images_per_s}};
        }
      }
      const double t1 = now_s();
      j["run_wall_s"] = t1 - t0;
      j["finished_at"] = now_iso();
      write_text_atomic(file.string(), j.dump(1) + "\n");
      if (shards > 1) fs::remove(claim_path(file));
      ++done_now;
      std::fprintf(stderr, "[%lld/%lld] %s seed %lld: %.2f%% at 28px, %.0f train img/s, %.0f s -> %s\n", (long long)k, (long long)total,
                   v.c_str(), (long long)seed, 100 * j["eval"]["extend"].value("28", json{{"accuracy", 0.0}})["accuracy"].get<double>(),
                   r.images_per_s, t1 - t0, file.c_str());
      if (tables) {
        aggregate(g_sweep_out, ds, g_variants, 0);
        plot(ds);
      }
    }
  if (!tables) return 0;
  const double wall = now_s() - t_sweep;
  aggregate(g_sweep_out, ds, g_variants, wall);
  std::printf("sweep: %lld runs now, %lld done earlier, %.0f s wall; results in %s/%s.{json,md}\n", (long long)done_now,
              (long long)(total - done_now), wall, g_sweep_out.c_str(), ds.c_str());
  return 0;
}

void add_common(CLI::App* cmd) {
  cmd->add_option("--dataset", g_common.dataset, "fashion_mnist or cifar10")->capture_default_str();
  cmd->add_option("--data", g_common.data, std::string("Data folder (default for Fashion-MNIST: ") + default_fashion_mnist_dir() + ")");
  cmd->add_option("--device", g_common.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--threads", g_common.threads, "CPU threads (at::set_num_threads; 0: LibTorch's default)")->capture_default_str();
  cmd->add_option("--eval-batch", g_common.eval_batch, "Evaluation batch")->capture_default_str();
  cmd->add_option("--batch-threads", g_common.batch_threads,
                  "CPU: split each batch over this many worker threads, each with threads/batch-threads intra-op threads "
                  "(0: one per thread; 1: no split)")
      ->check(CLI::Range(int64_t(0), int64_t(256)))->capture_default_str();
  cmd->add_flag("--no-progress", g_common.no_progress, "No progress bar on stderr");
}
void add_model_and_train(CLI::App* cmd) {
  cmd->add_option("--width", g_model.width, "Embedding width")->capture_default_str();
  cmd->add_option("--depth", g_model.depth, "Blocks")->capture_default_str();
  cmd->add_option("--heads", g_model.heads, "Attention heads (head dim = width / heads)")->capture_default_str();
  cmd->add_option("--mlp-ratio", g_model.mlp_ratio, "MLP hidden = width x ratio")->capture_default_str();
  cmd->add_option("--patch", g_model.patch, "Patch side")->capture_default_str();
  cmd->add_flag("--no-cls", g_model.no_cls, "No class token (mean-pool the patch tokens)");
  cmd->add_option("--epochs", g_train.epochs, "Epochs")->capture_default_str();
  cmd->add_option("--batch", g_train.batch, "Global batch")->capture_default_str();
  cmd->add_option("--max-steps", g_train.max_steps, "Stop after this many steps (0: all epochs)")->capture_default_str();
  cmd->add_option("--lr", g_train.lr, "Peak learning rate (one-cycle)")->capture_default_str();
  cmd->add_option("--weight-decay", g_train.weight_decay, "AdamW weight decay (matrices only)")->capture_default_str();
  cmd->add_option("--warmup", g_train.warmup, "Warm-up fraction of the steps")->capture_default_str();
  cmd->add_option("--shift", g_train.shift, "Random shift augmentation in pixels (0: off)")->capture_default_str();
  cmd->add_option("--shift-until", g_train.shift_until, "Fraction of the steps that get the shift (the rest train on clean images)")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--label-smoothing", g_train.label_smoothing, "Cross-entropy label smoothing")->check(CLI::Range(0.0, 0.99))->capture_default_str();
  cmd->add_option("--flip", g_train.flip, "Random horizontal flips (true/false)")->capture_default_str();
  cmd->add_option("--train-subset", g_train_subset, "Use only the first N training images (0: all)")->capture_default_str();
}

}  // namespace

CLI::App* add_vit_command(CLI::App& app) {
  g_vit = app.add_subcommand("vit", "ViT position-encoding experiments: train, eval, sweep (RoPE variants of functional/rope)");
  g_vit->require_subcommand(1);
  const std::string rope_help = "Position encoding: none, ape, axial, axial-matrix, mixed, block:N, spiral:K, ape+axial";
  g_train_cmd = g_vit->add_subcommand("train", "Train one ViT and save it as a qvl.weights HDF5 file; evaluate it on the test set");
  add_common(g_train_cmd);
  add_model_and_train(g_train_cmd);
  g_train_cmd->add_option("--rope", g_model.rope, rope_help)->capture_default_str();
  g_train_cmd->add_option("--seed", g_train.seed, "Seed (initialisation, shuffle, augmentation)")->capture_default_str();
  g_train_cmd->add_option("-o,--out", g_out, "Output model (.h5, written to a temporary and renamed)")->capture_default_str();
  g_train_cmd->add_flag("--no-eval", g_no_eval, "Skip the test-set evaluation");
  g_train_cmd->add_option("--holdout", g_holdout,
                          "Validation split: train without the last N training images and evaluate on them instead of the test set "
                          "(for choosing a protocol without looking at the test set)")
      ->capture_default_str();
  g_train_cmd->add_option("--losses-out", g_losses_out, "Write the per-step losses (JSON array) to this file");
  g_train_cmd->add_option("--resolutions", g_resolutions, "Test resolutions (default: the training size)");
  g_train_cmd->add_option("--positions", g_positions, "extend or rescale (test resolutions other than the training one)")->capture_default_str();
  g_train_cmd->add_option("--world-size", g_dist.world, "Data-parallel processes (torch.distributed c10d; Gloo on CPU, NCCL on CUDA)")->capture_default_str();
  g_train_cmd->add_option("--rank", g_dist.rank, "This process's rank (0 .. world-size-1)")->capture_default_str();
  g_train_cmd->add_option("--master", g_dist.master, "HOST:PORT of rank 0's TCP store")->capture_default_str();

  g_eval_cmd = g_vit->add_subcommand("eval", "Evaluate a saved ViT on the test set at one or more resolutions");
  add_common(g_eval_cmd);
  g_eval_cmd->add_option("--model", g_model_path, "Model saved by qvl vit train")->required();
  g_eval_cmd->add_option("--resolutions", g_resolutions, "Test resolutions (images resized; default: the training size)");
  g_eval_cmd->add_option("--positions", g_positions, "extend: integer positions past the training grid; rescale: into its range")->capture_default_str();

  g_sweep_cmd = g_vit->add_subcommand("sweep", "Every variant x seeds: train, evaluate at every resolution and position mode; resumable");
  add_common(g_sweep_cmd);
  add_model_and_train(g_sweep_cmd);
  g_sweep_cmd->add_option("--variants", g_variants, "Variants to run")->capture_default_str();
  g_sweep_cmd->add_option("--seeds", g_seeds, "Seeds")->capture_default_str();
  g_sweep_cmd->add_option("--resolutions", g_resolutions, "Test resolutions (default 20 28 36 44 56)");
  g_sweep_cmd->add_option("--out", g_sweep_out, "Results folder: runs/<dataset>/<run>.json, <dataset>.json, <dataset>.md")->capture_default_str();
  g_sweep_cmd->add_flag("--tables-only", g_tables_only, "Run nothing: rewrite <dataset>.json and .md (and the PNG with --plot-python) from the run files in --out");
  g_sweep_cmd->add_option("--jobs", g_jobs, "Runs side by side: this many copies of the sweep, each with --threads threads (e.g. --jobs 2 --threads 1)")
      ->check(CLI::Range(int64_t(1), int64_t(64)))->capture_default_str();
  g_sweep_cmd->add_option("--shard", g_shard, "Internal (set by --jobs): one of N shares taking runs from the queue, writes no tables")->group("");
  g_sweep_cmd->add_option("--plot-python", g_plot_python, "Python with matplotlib (scripts/plot_env.sh): redraw <dataset>.png after each run");
  return g_vit;
}

int run_vit() {
  if (g_train_cmd->parsed()) return cmd_train();
  if (g_eval_cmd->parsed()) return cmd_eval();
  if (g_sweep_cmd->parsed()) return cmd_sweep();
  return 1;
}

}  // namespace qvl::vit
