// Timing shared by the benchmark programs: warm-up calls, then `reps` timed calls.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace qvl::bench {

struct Timing {
  double median_ms, min_ms;
};

inline Timing time_ms(int reps, int warmup, const std::function<void()>& run) {
  for (int i = 0; i < warmup; ++i) run();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    run();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front()};
}

}  // namespace qvl::bench

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include <ATen/Parallel.h>

namespace qvl::bench {

// The machine line printed with every figure (bench/timing.py machine_line's C++ side): the CPU model, the
// vector extensions ATen can pick from (its capability is the best of these unless ATEN_CPU_CAPABILITY lowers
// it), ATEN_CPU_CAPABILITY, and the thread count.
inline std::string machine_line() {
  std::string model = "unknown CPU", flags;
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    if (line.rfind("model name", 0) == 0 && model == "unknown CPU") model = value;
    if (line.rfind("flags", 0) == 0 && flags.empty()) flags = " " + value + " ";
  }
  auto has = [&](const char* f) { return flags.find(std::string(" ") + f + " ") != std::string::npos; };
  const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
  return "CPU: " + model + "; avx2 " + (has("avx2") ? "yes" : "no") + ", avx512f " + (has("avx512f") ? "yes" : "no") +
         "; ATEN_CPU_CAPABILITY=" + (cap ? cap : "unset") + "; threads " + std::to_string(at::get_num_threads());
}

// Serve mode, for benchmarks that interleave the two sides (bench/timing.py, Server): after `warmup` calls of
// each named run, prints "ready"; then for each name read from stdin runs it once and prints the milliseconds
// it took. Ends at EOF. The Python side times its own call between two of ours, pair by pair.
inline int serve(const std::map<std::string, std::function<void()>>& runs, int warmup = 3) {
  for (const auto& [name, run] : runs)
    for (int i = 0; i < warmup; ++i) run();
  std::printf("ready\n");
  std::fflush(stdout);
  for (std::string name; std::getline(std::cin, name);) {
    auto it = runs.find(name);
    if (it == runs.end()) {
      std::printf("error: no run '%s'\n", name.c_str());
      std::fflush(stdout);
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    it->second();
    std::printf("%.6f\n", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace qvl::bench
