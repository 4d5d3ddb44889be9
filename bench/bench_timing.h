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
