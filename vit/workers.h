// A fixed set of CPU worker threads that run one job per worker and wait for all of them: the in-process
// batch split of vit::train and vit::evaluate (each worker computes the forward/backward of its share of the
// batch with its own intra-op thread count).
//
// Why: at the ViT's sizes (batch 64, 50 tokens, width 64) an ATen op is too small for OpenMP to split well,
// so one training with 2 intra-op threads runs no faster than with one, while two single-threaded shares of
// the batch run side by side at nearly twice the rate. The shares' gradients are summed in a fixed order, so
// the result does not depend on which worker finishes first.
#pragma once

#include <ATen/Parallel.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace qvl::vit {

class Workers {
 public:
  // n workers, each with `intra` intra-op threads (at::set_num_threads in the worker). The caller's own
  // thread count is restored afterwards (at::set_num_threads also sets process-wide defaults).
  Workers(int64_t n, int intra) {
    const int caller = at::get_num_threads();
    for (int64_t i = 0; i < n; ++i) {
      std::unique_lock<std::mutex> lk(mu_);
      threads_.emplace_back([this, i, intra] { loop(i, intra); });
      cv_done_.wait(lk, [&] { return started_ == i + 1; });  // one at a time: set_num_threads is not reentrant
    }
    at::set_num_threads(caller);
  }
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;
  ~Workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_job_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int64_t size() const { return int64_t(threads_.size()); }

  // Runs job(i) on worker i for every i and returns when all are done; rethrows the first worker's error.
  void run(const std::function<void(int64_t)>& job) {
    std::unique_lock<std::mutex> lk(mu_);
    job_ = &job;
    errors_.assign(threads_.size(), nullptr);
    pending_ = int64_t(threads_.size());
    ++generation_;
    cv_job_.notify_all();
    cv_done_.wait(lk, [&] { return pending_ == 0; });
    job_ = nullptr;
    for (auto& e : errors_)
      if (e) std::rethrow_exception(e);
  }

 private:
  void loop(int64_t i, int intra) {
    // ATen sets a thread's count from the process default the first time the thread asks for it, which would
    // undo an earlier set_num_threads once the caller restores its own: ask first, then set.
    (void)at::get_num_threads();
    at::set_num_threads(intra);
    uint64_t seen = 0;
    {
      std::lock_guard<std::mutex> lk(mu_);
      ++started_;
      seen = generation_;
    }
    cv_done_.notify_all();
    for (;;) {
      const std::function<void(int64_t)>* job = nullptr;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_job_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      std::exception_ptr err;
      try {
        (*job)(i);
      } catch (...) {
        err = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        errors_[size_t(i)] = err;
        --pending_;
      }
      cv_done_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_job_, cv_done_;
  const std::function<void(int64_t)>* job_ = nullptr;
  std::vector<std::exception_ptr> errors_;
  int64_t pending_ = 0, started_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

// [begin, end) of share i when n items are split into k contiguous shares (the first n % k get one more).
inline std::pair<int64_t, int64_t> share_range(int64_t n, int64_t k, int64_t i) {
  const int64_t base = n / k, extra = n % k;
  const int64_t b = i * base + std::min(i, extra);
  return {b, b + base + (i < extra ? 1 : 0)};
}

}  // namespace qvl::vit
