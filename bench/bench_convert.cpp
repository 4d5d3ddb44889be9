// qvl_bench_convert: conversion throughput (GB/s) and peak RSS against checkpoint size, on synthetic
// checkpoints with the real tensor shapes (a benchmark, not a test).
//
//   qvl_bench_convert --config tests/data/configs/qwen2_5_vl_7b.json --dir /scratch/bench [--layers N]
//                     [--out-dir DIR] [--cold] [--back] [--no-fsync] [--keep] [--clean]
//
// 1. Generates DIR/<name>/ unless it exists: config.json, the shards (bf16 random bytes, hub key layout,
//    shards of at most 5 GB in key order, model-0000i-of-0000N.safetensors) and model.safetensors.index.json,
//    every tensor shape from the config (converter/shapes.h: the table the converter checks against).
// 2. Runs `qvl convert DIR/<name> OUT_DIR/<name>.h5` as a child and reads its peak RSS (getrusage of the
// child,
//    ru_maxrss) and wall time; --cold first drops the shards from the page cache (posix_fadvise DONTNEED), so
//    they are read from the disk; --back also times `qvl convert --to-safetensors` back.
// 3. Prints one line per run (with the child's CPU seconds, user + system, to tell a busy machine from a
//    slow converter) and the goals: >= 1 GB/s; peak RSS <= largest tensor + 256 MB.
// Outputs are deleted unless --keep; --clean also deletes the generated checkpoint.
#include <fcntl.h>
#include <ftw.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "converter/convert.h"
#include "converter/shapes.h"
#include "instrument/config_json.h"

namespace {
namespace fs = std::filesystem;
using namespace qvl;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void remove_tree(const std::string& path) {
  nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

uint64_t dir_bytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

// splitmix64: fast random bytes (the converter copies bits; their values do not matter).
struct Random {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

void write_all(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd, c, n);
    if (w <= 0) throw std::runtime_error("'" + path + "': write failed: " + std::strerror(errno));
    c += w;
    n -= static_cast<size_t>(w);
  }
}

struct Generated {
  uint64_t bytes = 0, largest = 0;
  std::string largest_name;
  size_t tensors = 0, shards = 0;
};

// A hub-layout bf16 checkpoint with the config's shapes.
Generated generate(const std::string& config_text, const std::string& dir) {
  const ModelConfig cfg = parse_model_config(config_text, dir + "/config.json");
  struct T {
    std::string name;
    std::vector<int64_t> shape;
    uint64_t bytes;
  };
  std::vector<T> ts;
  Generated g;
  for (const auto& e : expected_tensors(cfg)) {
    if (e.optional) continue;  // a tied lm_head is not stored, as on the hub
    uint64_t n = 2;
    for (int64_t d : e.shape) n *= static_cast<uint64_t>(d);
    ts.push_back({checkpoint_key(e.key, "hub"), e.shape, n});
    if (n > g.largest) g.largest = n, g.largest_name = ts.back().name;
  }
  std::sort(ts.begin(), ts.end(), [](const T& a, const T& b) { return a.name < b.name; });
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (!shards.back().empty() && in + ts[i].bytes > 5000000000ull) shards.emplace_back(), in = 0;
    shards.back().push_back(i);
    in += ts[i].bytes;
  }
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << config_text;
  nlohmann::ordered_json index;
  std::vector<uint64_t> buf(8u << 20);  // 64 MiB of random bytes, refilled per chunk
  Random rng{12345};
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    nlohmann::ordered_json header;
    header["__metadata__"] = {{"format", "pt"}};
    uint64_t off = 0;
    for (size_t i : shards[s]) {
      header[ts[i].name] = {
          {"dtype", "BF16"}, {"shape", ts[i].shape}, {"data_offsets", {off, off + ts[i].bytes}}};
      off += ts[i].bytes;
      index["weight_map"][ts[i].name] = name;
    }
    std::string h = header.dump();
    while ((8 + h.size()) % 8) h += ' ';
    const std::string path = dir + "/" + name;
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) throw std::runtime_error("'" + path + "': cannot create");
    uint64_t len = h.size();
    write_all(fd, &len, 8, path);
    write_all(fd, h.data(), h.size(), path);
    for (uint64_t left = off; left;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size() * 8));
      for (size_t k = 0; k < (n + 7) / 8; ++k) buf[k] = rng.next();
      write_all(fd, buf.data(), n, path);
      left -= n;
    }
    ::fsync(fd);
    ::close(fd);
    g.bytes += off;
  }
  index["metadata"]["total_size"] = g.bytes;
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump(2);
  g.tensors = ts.size();
  g.shards = shards.size();
  return g;
}

struct Run {
  double wall_s = 0, cpu_s = 0;  // cpu: user + system, all threads
  long max_rss_kb = 0;
  int status = -1;
};

Run run_child(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const double t0 = now_s();
  const pid_t pid = fork();
  if (pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  Run r;
  struct rusage ru {};
  int status = 0;
  wait4(pid, &status, 0, &ru);
  r.wall_s = now_s() - t0;
  r.max_rss_kb = ru.ru_maxrss;
  r.cpu_s = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

void drop_from_page_cache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qvl_bench_convert: conversion GB/s and peak RSS on a synthetic checkpoint with real shapes"};
  std::string config_path, dir, out_dir;
  int layers = -1;
  bool cold = false, back = false, no_fsync = false, keep = false, clean = false;
  app.add_option("--config", config_path,
                 "config.json giving the shapes (tests/data/configs/qwen2_5_vl_*.json)")
      ->required();
  app.add_option("--dir", dir, "Scratch directory for the checkpoint and the outputs")->required();
  app.add_option("--out-dir", out_dir,
                 "Where the outputs go (default: --dir); e.g. a tmpfs to take the disk out");
  app.add_option("--layers", layers, "Override the text layer count (sizes in between the real models)");
  app.add_flag("--cold", cold, "Drop the shards from the page cache first (read them from the disk)");
  app.add_flag("--back", back, "Also time qvl convert --to-safetensors back");
  app.add_flag("--no-fsync", no_fsync, "Pass --no-fsync to qvl convert");
  app.add_flag("--keep", keep, "Keep the outputs");
  app.add_flag("--clean", clean, "Delete the generated checkpoint at the end");
  CLI11_PARSE(app, argc, argv);
  try {
    std::ifstream in(config_path);
    if (!in) throw std::runtime_error("'" + config_path + "': cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    nlohmann::json cfgj = nlohmann::json::parse(ss.str());
    std::string name = fs::path(config_path).stem().string();
    if (layers > 0) {
      (cfgj.contains("text_config") ? cfgj["text_config"] : cfgj)["num_hidden_layers"] = layers;
      name += "-" + std::to_string(layers) + "layers";
    }
    const std::string ckpt = (fs::path(dir) / name).string();
    const std::string config_text = cfgj.dump(2);
    Generated g;
    if (!fs::exists(ckpt + "/model.safetensors.index.json")) {
      const double t0 = now_s();
      g = generate(config_text, ckpt);
      std::printf("generated %s: %zu tensors, %zu shards, %.2f GB in %.1f s\n", ckpt.c_str(), g.tensors,
                  g.shards, g.bytes / 1e9, now_s() - t0);
    }
    // Sizes from the checkpoint itself (also when it was generated before).
    OpenCheckpoint oc = open_checkpoint(ckpt);
    g.bytes = oc.tensor_bytes;
    g.tensors = oc.tensors.size();
    g.shards = oc.files.size();
    g.largest = 0;
    for (const auto& t : oc.tensors) {
      const auto& e = oc.entry(t);
      if (e.end - e.begin > g.largest) g.largest = e.end - e.begin, g.largest_name = e.name;
    }
    oc = OpenCheckpoint{};  // unmap

    const std::string out = (fs::path(out_dir.empty() ? dir : out_dir) / (name + ".h5")).string();
    if (cold)
      for (const auto& e : fs::directory_iterator(ckpt)) drop_from_page_cache(e.path().string());
    std::vector<std::string> args = {QVL_BINARY, "convert", ckpt, out, "--no-progress"};
    if (no_fsync) args.push_back("--no-fsync");
    Run r = run_child(args);
    if (r.status != 0) throw std::runtime_error("qvl convert exited with " + std::to_string(r.status));
    const double gbs = g.bytes / r.wall_s / 1e9;
    const double rss = r.max_rss_kb * 1024.0;
    const double over = rss - static_cast<double>(g.largest);
    std::printf(
        "convert  %-24s %6.2f GB  %3zu tensors %2zu shards  %6.1f s  %5.2f GB/s  cpu %5.1f s  peak RSS %6.1f "
        "MB  "
        "largest tensor %6.1f MB (%s)  RSS - largest %+7.1f MB  [%s%s]\n",
        name.c_str(), g.bytes / 1e9, g.tensors, g.shards, r.wall_s, gbs, r.cpu_s, rss / 1e6, g.largest / 1e6,
        g.largest_name.c_str(), over / 1e6, cold ? "cold" : "warm", no_fsync ? ", no fsync" : ", fsync");
    std::printf("goals: >= 1 GB/s: %s (%.2f); peak RSS <= largest + 256 MB: %s (%+.1f MB)\n",
                gbs >= 1.0 ? "met" : "MISSED", gbs, over <= 256e6 ? "met" : "MISSED", over / 1e6);
    if (back) {
      const std::string back_dir = (fs::path(out_dir.empty() ? dir : out_dir) / (name + "-back")).string();
      if (fs::exists(back_dir)) remove_tree(back_dir);
      if (cold) drop_from_page_cache(out);
      std::vector<std::string> bargs = {QVL_BINARY, "convert", "--to-safetensors",
                                        out,        back_dir,  "--no-progress"};
      if (no_fsync) bargs.push_back("--no-fsync");
      Run b = run_child(bargs);
      if (b.status != 0)
        throw std::runtime_error("qvl convert --to-safetensors exited with " + std::to_string(b.status));
      std::printf(
          "back     %-24s %6.2f GB  %6.1f s  %5.2f GB/s  cpu %5.1f s  peak RSS %6.1f MB  RSS - largest "
          "%+7.1f MB\n",
          name.c_str(), dir_bytes(back_dir) / 1e9, b.wall_s, g.bytes / b.wall_s / 1e9, b.cpu_s,
          b.max_rss_kb * 1024.0 / 1e6, (b.max_rss_kb * 1024.0 - g.largest) / 1e6);
      if (!keep) remove_tree(back_dir);
    }
    if (!keep) fs::remove(out);
    if (clean) remove_tree(ckpt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qvl_bench_convert: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
