// Comparison metrics for one tensor pair, all computed in float64 (docs/design.md §5). Never correlation
// alone: it is blind to scale and offset, so the absolute, relative and per-row numbers come with it.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace qvl {

struct Metrics {
  bool shape_ok = true;      // false: shapes or dtypes differ; nothing else is meaningful; `shape_msg` says why
  std::string shape_msg;
  bool integer = false;      // integer/bool tensors: compared exactly
  int64_t numel = 0;
  int64_t mismatches = 0;    // integer: elements that differ; float: elements where either is non-finite differently
  double pearson = 1.0;      // Pearson correlation of the flattened tensors
  double cosine = 1.0;       // cosine similarity of the flattened tensors
  double nmse = 0.0;         // sum((a-b)^2) / sum(b^2)
  double rmse = 0.0;         // sqrt(mean((a-b)^2))
  double max_abs = 0.0;      // max |a-b|
  double max_rel = 0.0;      // max |a-b| / max |b|: the worst error relative to the tensor's scale
                             // (element-wise relative error is undefined at zeros of the reference)
  double min_row_cos = 1.0;  // minimum cosine over rows (last dim), e.g. the worst token
  std::vector<double> row_cos;       // every row's cosine (row_cosines), in row-major order of the leading dims
  std::vector<int64_t> worst_index;  // coordinates of max |a-b|
  struct Pair {
    std::vector<int64_t> index;
    double ours, ref;
  };
  std::vector<Pair> worst;  // the few largest errors, for failure messages
};

// Both are compared in float64 (integers exactly). With `check_dtype`, differing dtypes are a mismatch:
// the dtype flow (upcasts, casts back) is part of what must match HF.
Metrics compare(const at::Tensor& ours, const at::Tensor& ref, bool check_dtype = true, int n_worst = 3);

// Cosine similarity of each row (the last dimension) of two same-shaped float tensors, in float64: one value per
// token / patch, in row-major order of the leading dimensions. A row that is zero on one side only has cosine 0,
// zero on both sides 1. Non-finite elements count as 0 (compare() accounts for them separately).
std::vector<double> row_cosines(const at::Tensor& ours, const at::Tensor& ref);

std::string format_index(const std::vector<int64_t>& idx);
std::string format_worst(const Metrics& m);  // "(ours, ref) at [i,j]: (1.2, 1.3), ..."

}  // namespace qvl
