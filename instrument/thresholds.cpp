#include "instrument/thresholds.h"

#include <cstdio>
#include <stdexcept>

namespace qvl {

const std::vector<Threshold>& threshold_table() {
  static const std::vector<Threshold> table = {
      {"float32", "*", 0.99999, 1e-5, 0.99999, 0.0,
       "float32 on CPU against transformers eager float32: agreement at float32 rounding level "
       "(max error <= 1e-5 of the tensor's scale, Pearson and every row's cosine >= 0.99999); docs/design.md §5"},
      {"bfloat16", "*", 0.0, 0.0, 0.0, 2.0,
       "bfloat16: our error against HF's float32 module on the same inputs may be at most 2x HF's own "
       "bf16 error against it (RMSE and max |error|); docs/design.md §5"},
  };
  return table;
}

const Threshold& threshold_for(const std::string& dtype, const std::string& module_class) {
  const Threshold* wildcard = nullptr;
  for (const auto& t : threshold_table()) {
    if (t.dtype != dtype) continue;
    if (t.module_class == module_class) return t;
    if (t.module_class == "*") wildcard = &t;
  }
  if (!wildcard) throw std::runtime_error("thresholds: no row for recording dtype '" + dtype + "'");
  return *wildcard;
}

namespace {
std::string fmt(const char* f, double a, double b) {
  char buf[128];
  std::snprintf(buf, sizeof(buf), f, a, b);
  return buf;
}
}  // namespace

Judgement judge_exact(const Metrics& m) {
  if (!m.shape_ok) return {false, m.shape_msg};
  if (m.mismatches) return {false, std::to_string(m.mismatches) + " of " + std::to_string(m.numel) +
                                       " integer elements differ; " + format_worst(m)};
  return {true, ""};
}

Judgement judge_positions(const Metrics& m) {
  // The rule "positions exact, or within 1e-6 where they are float" -- the rule for every golden position
  // output of tests/data/rope_golden (rope_check). Integer positions: exact.
  if (!m.shape_ok) return {false, m.shape_msg};
  if (m.integer) return judge_exact(m);
  if (m.mismatches) return {false, std::to_string(m.mismatches) + " elements finite on one side only"};
  if (!(m.max_abs <= kFloatPositionTol))
    return {false, fmt("max_abs %.3g > %.3g; ", m.max_abs, kFloatPositionTol) + format_worst(m)};
  return {true, ""};
}

Judgement judge_fp32(const Metrics& m, const Threshold& t) {
  if (!m.shape_ok) return {false, m.shape_msg};
  if (m.integer) return judge_exact(m);
  if (m.mismatches) return {false, std::to_string(m.mismatches) + " elements finite on one side only"};
  if (!(m.pearson >= t.min_pearson)) return {false, fmt("pearson %.9f < %.6f; ", m.pearson, t.min_pearson) + format_worst(m)};
  if (!(m.max_rel <= t.max_rel)) return {false, fmt("max_rel %.3g > %.3g; ", m.max_rel, t.max_rel) + format_worst(m)};
  if (!(m.min_row_cos >= t.min_row_cos))
    return {false, fmt("min_row_cos %.9f < %.6f; ", m.min_row_cos, t.min_row_cos) + format_worst(m)};
  return {true, ""};
}

Judgement judge_bf16(const Metrics& ours, const Metrics& hf, const Threshold& t) {
  if (!ours.shape_ok) return {false, ours.shape_msg};
  if (!hf.shape_ok) return {false, "recording: " + hf.shape_msg};
  if (ours.integer) return judge_exact(ours);
  if (ours.mismatches) return {false, std::to_string(ours.mismatches) + " elements finite on one side only"};
  if (hf.rmse == 0.0 && hf.max_abs == 0.0) {
    // HF's bf16 path equals its float32 path here: judge at the float32 rule.
    return judge_fp32(ours, threshold_for("float32", "*"));
  }
  const double lim_rmse = t.max_err_ratio * hf.rmse, lim_abs = t.max_err_ratio * hf.max_abs;
  if (!(ours.rmse <= lim_rmse))
    return {false, fmt("rmse vs fp32 %.3g > %.3g (", ours.rmse, lim_rmse) +
                       fmt("%.1fx HF's bf16 rmse %.3g); ", t.max_err_ratio, hf.rmse) + format_worst(ours)};
  if (!(ours.max_abs <= lim_abs))
    return {false, fmt("max_abs vs fp32 %.3g > %.3g (", ours.max_abs, lim_abs) +
                       fmt("%.1fx HF's bf16 max_abs %.3g); ", t.max_err_ratio, hf.max_abs) + format_worst(ours)};
  return {true, ""};
}

}  // namespace qvl
