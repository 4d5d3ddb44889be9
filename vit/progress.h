// A one-line progress bar on stderr for training and evaluation: done/total, free-form metrics, items/s
// and ETA. Redraws in place on a terminal; elsewhere prints a line every ~10% (logs stay short).
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace qvl::vit {

// Seconds on the steady clock: the one clock of the ViT harness (progress, training and sweep timings).
inline double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled)
      : label_(std::move(label)), total_(total), enabled_(enabled), tty_(isatty(2)), t0_(now_s()) {}
  ~Progress() { finish(); }
  // done: items so far; rate_items: items for the rate (e.g. images); metrics: "loss 0.41 acc 85.2%".
  void update(int64_t done, int64_t rate_items, const std::string& metrics) {
    if (!enabled_) return;
    const double t = now_s(), el = t - t0_;
    const bool last = done >= total_;
    if (tty_ ? (t - last_draw_ < 0.2 && !last) : (done * 10 / std::max<int64_t>(total_, 1) == last_decile_ && !last)) return;
    last_draw_ = t;
    last_decile_ = done * 10 / std::max<int64_t>(total_, 1);
    const double frac = total_ > 0 ? double(done) / double(total_) : 1.0;
    const int width = 24, fill = int(frac * width);
    std::string bar(fill, '=');
    if (fill < width) bar += '>' + std::string(width - fill - 1, ' ');
    const double eta = frac > 0 ? el * (1 - frac) / frac : 0;
    std::fprintf(stderr, "%s%s [%s] %3.0f%% %s  %.0f img/s  %s %s%s", tty_ ? "\r" : "", label_.c_str(), bar.c_str(),
                 100 * frac, metrics.c_str(), el > 0 ? rate_items / el : 0.0, last ? "took" : "ETA",
                 fmt(last ? el : eta).c_str(), tty_ ? "\033[K" : "\n");
    printed_ = true;
    std::fflush(stderr);
  }
  void finish() {
    if (enabled_ && tty_ && printed_) std::fprintf(stderr, "\n");
    printed_ = false;
  }

 private:
  static std::string fmt(double s) {
    char b[32];
    const int m = int(s) / 60, sec = int(s) % 60;
    std::snprintf(b, sizeof b, "%dm%02ds", m, sec);
    return b;
  }
  std::string label_;
  int64_t total_;
  bool enabled_, tty_, printed_ = false;
  double t0_, last_draw_ = -1e9;
  int64_t last_decile_ = -1;
};

}  // namespace qvl::vit
