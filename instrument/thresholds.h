// The one thresholds table (docs/design.md §5). Every row carries its reason; loosen a row only with a
// written reason in the row itself.
#pragma once

#include <string>
#include <vector>

#include "instrument/metrics.h"

namespace qvl {

struct Threshold {
  std::string dtype;         // recording dtype this row applies to: "float32", "bfloat16"
  std::string module_class;  // class or function name, or "*" for every call
  // float32 rule: all three must hold.
  double min_pearson = 0.0;
  double max_rel = 0.0;      // Metrics::max_rel = max|ours-ref| / max|ref|
  double min_row_cos = 0.0;
  // bfloat16 rule: ours-vs-float32 error <= max_err_ratio x transformers' own bf16-vs-float32 error,
  // for both RMSE and max |error|.
  double max_err_ratio = 0.0;
  std::string reason;
};

const std::vector<Threshold>& threshold_table();
// The most specific row (exact class before "*"); error if no row covers the dtype.
const Threshold& threshold_for(const std::string& dtype, const std::string& module_class);

struct Judgement {
  bool pass = false;
  std::string why;  // on failure: the metric, its value and the limit
};

// Integer and bool tensors: exact.
Judgement judge_exact(const Metrics& m);
// Float-valued positions (Circle-RoPE position ids and deltas, from the official code's float32 maths):
// |ours - ref| <= kFloatPositionTol everywhere (integer positions go through judge_exact).
constexpr double kFloatPositionTol = 1e-6;
Judgement judge_positions(const Metrics& m);
// A float32 recording: ours vs transformers' output.
Judgement judge_fp32(const Metrics& m, const Threshold& t);
// A bfloat16 recording: ours and HF's bf16 outputs, each against HF's float32 module on the same inputs.
// Where HF's own bf16 error is exactly zero (the op runs in float32 even in the bf16 model, e.g. the vision
// rotary tables), the float32 rule applies to ours-vs-fp32 instead, since a ratio to zero means nothing.
Judgement judge_bf16(const Metrics& ours_vs_fp32, const Metrics& hf_vs_fp32, const Threshold& t);

}  // namespace qvl
