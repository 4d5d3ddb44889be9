// qvl_bench_convert: conversion throughput (GB/s) and peak RSS against checkpoint size, on synthetic
// checkpoints with the real tensor shapes (a benchmark, not a test).
//
//   qvl_bench_convert --config tests/data/configs/qwen2_5_vl_7b.json --dir /scratch/bench [--layers N]
//                     [--out-dir DIR] [--cold] [--back] [--no-fsync] [--keep] [--clean]
//   qvl_bench_convert --config ... --dir DIR --values normal --generate-only [--set vision_config.depth=2]
//                     a synthetic checkpoint with usable values, for bench/bench_stream.py (no conversion)
//
// --values normal writes bf16 values a model can run on instead of random bytes (which hold NaNs): norms
// 1 + 0.1 n, biases 0.1 n, embeddings 0.5 n, matrices n / sqrt(fan_in), n ~ N(0, 1) approximated by a sum
// of four uniforms (Irwin-Hall, |n| <= 3.5). --set KEY=JSON overrides config fields (dotted: vision_config.depth).
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
#include <cmath>
#include <cstdint>
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
#include "functional/error.h"
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

uint16_t to_bf16(float f) {  // round to nearest even (finite values only)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// The (scale, offset) of a tensor's values under --values normal.
std::pair<float, float> value_law(const std::string& name, const std::vector<int64_t>& shape) {
  const bool vec = shape.size() == 1;
  if (vec && (name.find("norm") != std::string::npos || name.find("ln_q") != std::string::npos)) return {0.1f, 1.0f};
  if (vec) return {0.1f, 0.0f};
  if (name.find("embed_tokens") != std::string::npos) return {0.5f, 0.0f};
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  return {1.0f / std::sqrt(static_cast<float>(fan_in)), 0.0f};
}

// A hub-layout bf16 checkpoint with the config's shapes.
Generated generate(const std::string& config_text, const std::string& dir, bool normal_values = false) {
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
    if (!normal_values) {
      for (uint64_t left = off; left;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size() * 8));
        for (size_t k = 0; k < (n + 7) / 8; ++k) buf[k] = rng.next();
        write_all(fd, buf.data(), n, path);
        left -= n;
      }
    } else {
      uint16_t* vals = reinterpret_cast<uint16_t*>(buf.data());
      const size_t cap = buf.size() * 4;  // bf16 values per buffer
      for (size_t i : shards[s]) {
        const auto [scale, offset] = value_law(ts[i].name, ts[i].shape);
        for (uint64_t left = ts[i].bytes / 2; left;) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(left, cap));
          for (size_t k = 0; k < n; ++k) {
            const uint64_t r = rng.next();  // four 16-bit uniforms -> Irwin-Hall(4), mean 2, variance 1/3
            const float u = ((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48)) / 65536.0f;
            vals[k] = to_bf16(offset + scale * (u - 2.0f) * 1.7320508f);
          }
          write_all(fd, vals, n * 2, path);
          left -= n;
        }
      }
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
  bool cold = false, back = false, no_fsync = false, keep = false, clean = false, generate_only = false;
  std::string values = "random-bytes";
  std::vector<std::string> sets;
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
  app.add_option("--values", values, "random-bytes (the converter copies bits), or normal: values a model can run on")
      ->check(CLI::IsMember({"random-bytes", "normal"}))
      ->capture_default_str();
  app.add_option("--set", sets, "KEY=JSON: override a config field (dotted), e.g. vision_config.depth=2");
  app.add_flag("--generate-only", generate_only, "Generate the checkpoint and stop (no conversion)");
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
    for (const auto& kv : sets) {
      const auto eq = kv.find('=');
      if (eq == std::string::npos) throw std::runtime_error("--set expects KEY=JSON, got '" + kv + "'");
      nlohmann::json* at = &cfgj;
      std::string key = kv.substr(0, eq), part;
      std::stringstream parts(key);
      std::vector<std::string> path;
      while (std::getline(parts, part, '.')) path.push_back(part);
      for (size_t i = 0; i + 1 < path.size(); ++i) at = &(*at)[path[i]];
      (*at)[path.back()] = nlohmann::json::parse(kv.substr(eq + 1));
      std::string tag = key.substr(key.rfind('.') + 1) + "-" + kv.substr(eq + 1);
      for (char& c : tag)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') c = '_';
      name += "-" + tag;
    }
    if (values == "normal") name += "-normal";
    const std::string ckpt = (fs::path(dir) / name).string();
    const std::string config_text = cfgj.dump(2);
    Generated g;
    if (!fs::exists(ckpt + "/model.safetensors.index.json")) {
      const double t0 = now_s();
      g = generate(config_text, ckpt, values == "normal");
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
    if (generate_only) {
      std::printf("checkpoint %s: %.2f GB, %zu tensors, %zu shards, largest tensor %.1f MB (%s)\n", ckpt.c_str(),
                  g.bytes / 1e9, g.tensors, g.shards, g.largest / 1e6, g.largest_name.c_str());
      return 0;
    }

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
    std::fprintf(stderr, "qvl_bench_convert: error: %s\n", error_message(e).c_str());
    return 2;
  }
  return 0;
}
