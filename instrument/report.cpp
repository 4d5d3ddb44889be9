#include "instrument/report.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "functional/error.h"
#include "instrument/h5io.h"
#include "instrument/thresholds.h"

namespace qvl::report {

// ---------------------------------------------------------------------------------------------------------
// Small pieces
// ---------------------------------------------------------------------------------------------------------

std::string escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}
std::string sci(double v) { return std::isfinite(v) ? fmt("%.2e", v) : (std::isnan(v) ? "nan" : "inf"); }
std::string fixed9(double v) { return std::isfinite(v) ? fmt("%.9f", v) : sci(v); }
// A sort key that parses as a number (data-v of a table cell); non-finite values sort last.
std::string key(double v) { return std::isfinite(v) ? fmt("%.17g", v) : "1e308"; }

constexpr double kLogFloor = 1e-12;  // zero error is drawn here (log scales)

// The block / layer number in a module path: ".blocks.3" -> 3, or -1.
int64_t index_after(const std::string& path, const std::string& marker) {
  const auto at = path.find(marker);
  if (at == std::string::npos) return -1;
  size_t i = at + marker.size(), j = i;
  while (j < path.size() && std::isdigit(static_cast<unsigned char>(path[j]))) ++j;
  return j > i ? std::stoll(path.substr(i, j - i)) : -1;
}

// The tensor a call's row metrics come from: "out", else "out0", else the first float output with rows.
const TensorCheck* main_tensor(const Call& c) {
  for (const char* name : {"out", "out0", "out.last_hidden_state"})
    for (const auto& t : c.tensors)
      if (t.name == name && t.vs_ref.shape_ok && !t.vs_ref.integer) return &t;
  for (const auto& t : c.tensors)
    if (t.vs_ref.shape_ok && !t.vs_ref.integer && !t.vs_ref.row_cos.empty()) return &t;
  return nullptr;
}

// The worst tensor of a call, as `qvl check` prints it: the first failing one, else the lowest Pearson.
const TensorCheck* worst_tensor(const Call& c) {
  const TensorCheck* w = nullptr;
  for (const auto& t : c.tensors) {
    if (!t.verdict.pass) return &t;
    if (!w || t.vs_ref.pearson < w->vs_ref.pearson) w = &t;
  }
  return w;
}

// Worst float metrics over a call's outputs (against the reference).
struct Worst {
  double max_rel = 0.0, min_row_cos = 1.0;
  double ours_rel = 0.0, hf_rel = 0.0, ours_cos = 1.0, hf_cos = 1.0;  // bf16: each against HF's float32
  double ratio = 0.0;                                                  // bf16: ours / HF's own error
  bool any = false, bf16 = false;
};
Worst worst_of(const Call& c) {
  Worst w;
  for (const auto& t : c.tensors) {
    if (!t.vs_ref.shape_ok || t.vs_ref.integer) continue;
    w.any = true;
    w.max_rel = std::max(w.max_rel, t.vs_ref.max_rel);
    w.min_row_cos = std::min(w.min_row_cos, t.vs_ref.min_row_cos);
    if (t.bf16_rule) {
      w.bf16 = true;
      w.ours_rel = std::max(w.ours_rel, t.ours_vs_fp32.max_rel);
      w.hf_rel = std::max(w.hf_rel, t.hf_vs_fp32.max_rel);
      w.ours_cos = std::min(w.ours_cos, t.ours_vs_fp32.min_row_cos);
      w.hf_cos = std::min(w.hf_cos, t.hf_vs_fp32.min_row_cos);
      const double ra = t.hf_vs_fp32.rmse > 0 ? t.ours_vs_fp32.rmse / t.hf_vs_fp32.rmse : 0.0;
      const double rb = t.hf_vs_fp32.max_abs > 0 ? t.ours_vs_fp32.max_abs / t.hf_vs_fp32.max_abs : 0.0;
      w.ratio = std::max({w.ratio, ra, rb});
    }
  }
  return w;
}

std::string rule_text(const std::string& dtype) {
  try {
    const Threshold& th = threshold_for(dtype, "*");
    if (dtype == "bfloat16")
      return "error against HF's float32 run <= " + fmt("%.1f", th.max_err_ratio) +
             "x HF's own bf16 error (RMSE and max |error|); integers exact";
    return "pearson >= " + fmt("%.5f", th.min_pearson) + ", max_rel <= " + fmt("%.0e", th.max_rel) +
           ", min row cosine >= " + fmt("%.5f", th.min_row_cos) + "; integers exact";
  } catch (const std::exception& e) {
    return "no rule: " + error_message(e);
  }
}

// ---------------------------------------------------------------------------------------------------------
// SVG: a log-scale line chart and a heatmap
// ---------------------------------------------------------------------------------------------------------

struct Series {
  std::string name, colour;
  std::vector<double> y;  // one per x; NaN = no point
  bool dashed = false;
};

double log_pos(double v) { return std::log10(std::max(v, kLogFloor)); }

std::string line_chart(const std::string& title, const std::string& xlabel, const std::vector<int64_t>& xs,
                       const std::vector<Series>& series, const std::vector<std::pair<std::string, double>>& thresholds,
                       int64_t highlight_x) {
  const double W = 680, H = 280, L = 70, R = 190, T = 30, B = 45;
  double lo = 0, hi = -12;
  bool first = true;
  auto see = [&](double v) {
    if (!std::isfinite(v)) return;
    const double p = log_pos(v);
    lo = first ? p : std::min(lo, p);
    hi = first ? p : std::max(hi, p);
    first = false;
  };
  for (const auto& s : series)
    for (double v : s.y) see(v);
  for (const auto& [n, v] : thresholds) see(v);
  lo = std::floor(lo) - (first ? 12 : 0);
  hi = std::ceil(hi);
  if (hi <= lo) hi = lo + 1;
  const double pw = W - L - R, ph = H - T - B;
  const size_t n = xs.size();
  auto X = [&](size_t i) { return L + (n <= 1 ? pw / 2 : pw * static_cast<double>(i) / static_cast<double>(n - 1)); };
  auto Y = [&](double v) { return T + ph * (hi - log_pos(v)) / (hi - lo); };
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"" << W << "\" height=\"" << H
     << "\" viewBox=\"0 0 " << W << " " << H << "\" role=\"img\" aria-label=\"" << escape(title) << "\">";
  os << "<text x=\"" << L << "\" y=\"18\" class=\"ct\">" << escape(title) << "</text>";
  // y grid: one line per decade
  const int step = hi - lo > 8 ? 2 : 1;
  for (int e = static_cast<int>(lo); e <= static_cast<int>(hi); e += step) {
    const double y = Y(std::pow(10.0, e));
    os << "<line x1=\"" << L << "\" x2=\"" << L + pw << "\" y1=\"" << y << "\" y2=\"" << y << "\" class=\"grid\"/>";
    os << "<text x=\"" << L - 6 << "\" y=\"" << y + 4 << "\" class=\"ax\" text-anchor=\"end\">"
       << (e <= -12 ? "&lt;=1e-12" : "1e" + std::to_string(e)) << "</text>";
  }
  for (size_t i = 0; i < n; ++i) {
    if (xs[i] == highlight_x)
      os << "<rect x=\"" << X(i) - 7 << "\" y=\"" << T << "\" width=\"14\" height=\"" << ph
         << "\" class=\"hl\"><title>first divergent module is here</title></rect>";
    os << "<text x=\"" << X(i) << "\" y=\"" << T + ph + 16 << "\" class=\"ax\" text-anchor=\"middle\">" << xs[i] << "</text>";
  }
  os << "<text x=\"" << L + pw / 2 << "\" y=\"" << H - 8 << "\" class=\"ax\" text-anchor=\"middle\">" << escape(xlabel)
     << "</text>";
  double ly = T + 8;
  auto legend = [&](const std::string& name, const std::string& colour, bool dashed) {
    os << "<line x1=\"" << L + pw + 12 << "\" x2=\"" << L + pw + 34 << "\" y1=\"" << ly << "\" y2=\"" << ly
       << "\" stroke=\"" << colour << "\" stroke-width=\"2\"" << (dashed ? " stroke-dasharray=\"5,3\"" : "") << "/>";
    os << "<text x=\"" << L + pw + 40 << "\" y=\"" << ly + 4 << "\" class=\"ax\">" << escape(name) << "</text>";
    ly += 18;
  };
  for (const auto& [name, v] : thresholds) {
    const double y = Y(v);
    os << "<line x1=\"" << L << "\" x2=\"" << L + pw << "\" y1=\"" << y << "\" y2=\"" << y
       << "\" class=\"thr\"><title>" << escape(name) << " = " << sci(v) << "</title></line>";
    legend(name + " " + sci(v), "#d62728", true);
  }
  for (const auto& s : series) {
    std::ostringstream pts;
    for (size_t i = 0; i < n && i < s.y.size(); ++i)
      if (std::isfinite(s.y[i])) pts << X(i) << "," << Y(s.y[i]) << " ";
    os << "<polyline fill=\"none\" stroke=\"" << s.colour << "\" stroke-width=\"2\""
       << (s.dashed ? " stroke-dasharray=\"5,3\"" : "") << " points=\"" << pts.str() << "\"/>";
    for (size_t i = 0; i < n && i < s.y.size(); ++i)
      if (std::isfinite(s.y[i]))
        os << "<circle cx=\"" << X(i) << "\" cy=\"" << Y(s.y[i]) << "\" r=\"3.5\" fill=\"" << s.colour << "\"><title>"
           << escape(s.name) << " at " << xs[i] << ": " << sci(s.y[i]) << "</title></circle>";
    legend(s.name, s.colour, s.dashed);
  }
  os << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << pw << "\" height=\"" << ph << "\" class=\"frame\"/>";
  os << "</svg>";
  return os.str();
}

}  // namespace

std::string cos_colour(double cos) {
  // t in [0, 1]: log10(1 - cos) from -12 to 0. Three stops: pale blue, orange, dark red.
  const double err = std::isfinite(cos) ? 1.0 - cos : 1.0;
  const double t = std::clamp((log_pos(std::max(err, 0.0)) + 12.0) / 12.0, 0.0, 1.0);
  const double stops[3][3] = {{235, 244, 252}, {253, 174, 97}, {165, 0, 38}};
  const int k = t < 0.5 ? 0 : 1;
  const double u = t < 0.5 ? t / 0.5 : (t - 0.5) / 0.5;
  char buf[8];
  std::snprintf(buf, sizeof(buf), "#%02x%02x%02x", static_cast<int>(std::lround(stops[k][0] + u * (stops[k + 1][0] - stops[k][0]))),
                static_cast<int>(std::lround(stops[k][1] + u * (stops[k + 1][1] - stops[k][1]))),
                static_cast<int>(std::lround(stops[k][2] + u * (stops[k + 1][2] - stops[k][2]))));
  return buf;
}

namespace {

// The colour legend of the heatmaps, with the float32 threshold marked.
std::string colour_legend() {
  std::ostringstream os;
  const double W = 420, H = 46, L = 10, pw = 300;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" role=\"img\" aria-label=\"colour scale\">";
  for (int i = 0; i < 60; ++i) {
    const double e = -12.0 + 12.0 * (i + 0.5) / 60.0;
    os << "<rect x=\"" << L + pw * i / 60.0 << "\" y=\"4\" width=\"" << pw / 60.0 + 0.5 << "\" height=\"14\" fill=\""
       << cos_colour(1.0 - std::pow(10.0, e)) << "\"/>";
  }
  for (int e = -12; e <= 0; e += 3) {
    const double x = L + pw * (e + 12) / 12.0;
    os << "<text x=\"" << x << "\" y=\"32\" class=\"ax\" text-anchor=\"middle\">1e" << e << "</text>";
  }
  const double th = L + pw * (std::log10(1e-5) + 12) / 12.0;
  os << "<line x1=\"" << th << "\" x2=\"" << th << "\" y1=\"0\" y2=\"22\" class=\"thr\"/>";
  os << "<text x=\"" << L + pw + 8 << "\" y=\"16\" class=\"ax\">1 - row cosine</text>";
  os << "<text x=\"" << th << "\" y=\"44\" class=\"ax\" text-anchor=\"middle\">float32 limit</text>";
  os << "</svg>";
  return os.str();
}

struct Mark {
  int64_t begin, end;  // columns [begin, end)
  std::string label, colour;
};

// rows x cols cells, each with a colour (from its cosine; NaN = no data) and a tooltip.
std::string heatmap(const std::vector<std::string>& row_labels, int64_t cols, const std::vector<double>& cos,
                    const std::vector<std::string>& tips, const std::vector<Mark>& marks, double cw, double ch,
                    const std::vector<int64_t>& gaps_after, int64_t highlight_row, const std::string& xlabel) {
  const int64_t rows = static_cast<int64_t>(row_labels.size());
  const double L = 90, T = marks.empty() ? 8 : 26, gap = 6;
  auto X = [&](int64_t c) {
    double x = L + c * cw;
    for (int64_t g : gaps_after)
      if (c > g) x += gap;
    return x;
  };
  const double W = X(cols) + 20, H = T + rows * ch + 34;
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"heat\" width=\"" << W << "\" height=\"" << H << "\">";
  for (const auto& m : marks) {
    os << "<rect x=\"" << X(m.begin) << "\" y=\"" << T - 10 << "\" width=\"" << X(m.end) - X(m.begin) << "\" height=\"6\" fill=\""
       << m.colour << "\"><title>" << escape(m.label) << " tokens " << m.begin << ".." << m.end - 1 << "</title></rect>";
    os << "<text x=\"" << X(m.begin) << "\" y=\"" << T - 13 << "\" class=\"ax\">" << escape(m.label) << "</text>";
  }
  for (int64_t r = 0; r < rows; ++r) {
    os << "<text x=\"" << L - 6 << "\" y=\"" << T + r * ch + ch * 0.7 << "\" class=\"ax" << (r == highlight_row ? " bold" : "")
       << "\" text-anchor=\"end\">" << escape(row_labels[r]) << "</text>";
    for (int64_t c = 0; c < cols; ++c) {
      const double v = cos[r * cols + c];
      if (std::isnan(v)) continue;
      os << "<rect x=\"" << X(c) << "\" y=\"" << T + r * ch << "\" width=\"" << cw << "\" height=\"" << ch << "\" fill=\""
         << cos_colour(v) << "\"><title>" << escape(tips[r * cols + c]) << "</title></rect>";
    }
  }
  if (highlight_row >= 0 && highlight_row < rows)
    os << "<rect x=\"" << L - 1 << "\" y=\"" << T + highlight_row * ch << "\" width=\"" << X(cols) - L + 2 << "\" height=\"" << ch
       << "\" class=\"hlrow\"/>";
  os << "<text x=\"" << L << "\" y=\"" << T + rows * ch + 16 << "\" class=\"ax\">" << escape(xlabel) << "</text>";
  os << "</svg>";
  return os.str();
}

// ---------------------------------------------------------------------------------------------------------
// Context from the reference recording
// ---------------------------------------------------------------------------------------------------------

std::vector<int64_t> to_vec(const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU).to(at::kLong).contiguous().view(-1);
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// `index_of[seq]`: the index in Input::calls of the reference call `seq` (or -1).
void add_context(const Recording& rec, const std::vector<int64_t>& index_of, Input& in, std::vector<std::string>& notes) {
  if (rec.has_attr("config")) {
    auto cfg = nlohmann::json::parse(rec.attr("config"), nullptr, false);
    if (cfg.is_object()) {
      in.image_token_id = cfg.value("image_token_id", int64_t{-1});
      in.video_token_id = cfg.value("video_token_id", int64_t{-1});
      if (cfg.contains("vision_config") && cfg["vision_config"].is_object())
        in.merge = cfg["vision_config"].value("spatial_merge_size", int64_t{2});
    }
  }
  const auto& calls = rec.calls();
  // Token ids of the forward pass (not a generate step).
  for (size_t i = 0; i < calls.size() && in.input_ids.empty(); ++i) {
    const CallHeader& h = calls[i];
    if (h.parent >= 0 || h.generate_step >= 0) continue;
    if (h.module_class != "Qwen2_5_VLForConditionalGeneration" && h.module_class != "Qwen2_5_VLModel") continue;
    try {
      const at::Tensor ids = rec.load(i).input("input_ids").as_tensor("input_ids");
      if (ids.dim() != 2) continue;
      for (int64_t b = 0; b < ids.size(0); ++b) in.input_ids.push_back(to_vec(ids[b]));
    } catch (const std::exception& e) {
      notes.push_back("token ids: " + error_message(e));
    }
  }
  // Vision passes of the forward pass: grids, window order and block calls (by parent link).
  for (size_t i = 0; i < calls.size(); ++i) {
    const CallHeader& h = calls[i];
    if (h.module_class != "Qwen2_5_VisionTransformerPretrainedModel" || h.generate_step >= 0) continue;
    VisionPass p;
    try {
      const RecordedCall tower = rec.load(i);
      const std::vector<int64_t> g = to_vec(tower.input("grid_thw", 1).as_tensor("grid_thw"));
      for (size_t k = 0; k + 2 < g.size(); k += 3) p.grids.push_back({g[k], g[k + 1], g[k + 2]});
      for (size_t j = i + 1; j < calls.size(); ++j) {
        if (calls[j].parent != h.seq) continue;
        if (calls[j].module_class == "get_vision_window_index" && p.window_index.empty())
          p.window_index = to_vec(rec.load(j).output(0).as_tensor("window_index"));
        if (calls[j].module_class == "Qwen2_5_VLVisionBlock" && index_of[j] >= 0) p.block_calls.push_back(index_of[j]);
      }
    } catch (const std::exception& e) {
      notes.push_back("vision tower call " + h.group + ": " + error_message(e));
      continue;
    }
    in.vision.push_back(std::move(p));
  }
}

std::string config_summary(const std::string& json_text) {
  auto c = nlohmann::json::parse(json_text, nullptr, false);
  if (!c.is_object()) return "(not JSON)";
  std::ostringstream os;
  auto get = [](const nlohmann::json& j, const char* k) { return j.contains(k) ? j[k].dump() : std::string("?"); };
  const nlohmann::json& v = c.contains("vision_config") ? c["vision_config"] : nlohmann::json::object();
  const nlohmann::json& t = c.contains("text_config") ? c["text_config"] : c;
  os << "vision: depth " << get(v, "depth") << ", hidden " << get(v, "hidden_size") << ", heads " << get(v, "num_heads")
     << ", window " << get(v, "window_size") << ", full-attention blocks " << get(v, "fullatt_block_indexes")
     << "; text: layers " << get(t, "num_hidden_layers") << ", hidden " << get(t, "hidden_size") << ", heads "
     << get(t, "num_attention_heads") << "/" << get(t, "num_key_value_heads") << ", vocab " << get(t, "vocab_size");
  return os.str();
}

void count_summary(Input& in) {
  std::map<std::string, int> n;
  for (const auto& c : in.calls) ++n[c.verdict];
  std::string s;
  for (const auto& [k, v] : n) s += (s.empty() ? "" : ", ") + std::to_string(v) + " " + k;
  in.summary.emplace_back("verdicts", s);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------------------

Input from_compare(const Recording& ref, const Recording& ours, const CompareReport& rep) {
  Input in;
  in.command = "qvl compare";
  in.dtype = ref.attr("dtype");
  auto describe = [](const Recording& r) {
    return r.path() + "  (" + (r.has_attr("producer") ? r.attr("producer") : "?") + ", " + r.attr("dtype") + ")";
  };
  in.summary.emplace_back("reference", describe(ref));
  in.summary.emplace_back("ours", describe(ours));
  in.summary.emplace_back("rule", rule_text(in.dtype) + (in.dtype == "bfloat16" ? " -- against HF's float32 model run end to end" : ""));
  if (ref.has_attr("config")) {
    in.summary.emplace_back("reference config", config_summary(ref.attr("config")));
    in.configs.emplace_back("reference config", ref.attr("config"));
  }
  if (ours.has_attr("config") && (!ref.has_attr("config") || ours.attr("config") != ref.attr("config"))) {
    in.summary.emplace_back("ours config", config_summary(ours.attr("config")));
    in.configs.emplace_back("ours config", ours.attr("config"));
  }
  std::vector<int64_t> index_of(ref.calls().size(), -1);
  for (size_t i = 0; i < rep.rows.size(); ++i) {
    const CompareRow& r = rep.rows[i];
    Call c;
    c.header = r.ref;
    c.verdict = !r.present ? "not in ours" : r.pass ? "PASS" : "FAIL";
    c.why = r.why;
    c.tensors = r.tensors;
    if (r.ref.seq >= 0 && r.ref.seq < static_cast<int64_t>(index_of.size())) index_of[r.ref.seq] = static_cast<int64_t>(i);
    in.calls.push_back(std::move(c));
  }
  in.first_divergent = rep.first_divergent;
  count_summary(in);
  std::vector<std::string> notes;
  add_context(ref, index_of, in, notes);
  for (const auto& n : notes) in.summary.emplace_back("note", n);
  return in;
}

Input from_check(const Recording& rec, const std::string& weights_path, const std::vector<CallResult>& results,
                 int first_divergent) {
  Input in;
  in.command = "qvl check";
  in.dtype = rec.attr("dtype");
  in.summary.emplace_back("weights", weights_path);
  in.summary.emplace_back("recording", rec.path() + "  (" + (rec.has_attr("producer") ? rec.attr("producer") : "?") + ", " +
                                           in.dtype + ")");
  in.summary.emplace_back("replay", "isolated: every call gets HF's recorded inputs");
  in.summary.emplace_back("rule", rule_text(in.dtype) + (in.dtype == "bfloat16" ? " -- against HF's float32 module" : ""));
  if (rec.has_attr("config")) {
    in.summary.emplace_back("config", config_summary(rec.attr("config")));
    in.configs.emplace_back("recording config", rec.attr("config"));
  }
  std::vector<int64_t> index_of(rec.calls().size(), -1);
  for (size_t i = 0; i < results.size(); ++i) {
    const CallResult& r = results[i];
    Call c;
    c.header = r.header;
    switch (r.status) {
      case CallResult::Status::Pass: c.verdict = "PASS"; break;
      case CallResult::Status::Fail: c.verdict = "FAIL"; break;
      case CallResult::Status::Error: c.verdict = "ERROR"; break;
      case CallResult::Status::NoFunction: c.verdict = "no function"; break;
    }
    c.why = r.error;
    c.tensors = r.tensors;
    if (r.header.seq >= 0 && r.header.seq < static_cast<int64_t>(index_of.size())) index_of[r.header.seq] = static_cast<int64_t>(i);
    in.calls.push_back(std::move(c));
  }
  in.first_divergent = first_divergent;
  count_summary(in);
  std::vector<std::string> notes;
  add_context(rec, index_of, in, notes);
  for (const auto& n : notes) in.summary.emplace_back("note", n);
  return in;
}

// ---------------------------------------------------------------------------------------------------------
// Geometry helpers (tested)
// ---------------------------------------------------------------------------------------------------------

std::vector<PatchPos> patch_positions(const std::vector<std::array<int64_t, 3>>& grids,
                                      const std::vector<int64_t>& window_index, int64_t merge) {
  const int64_t mm = merge * merge;
  // Un-permuted patch p -> position, images in order, merge-block order inside each frame.
  std::vector<PatchPos> natural;
  for (size_t img = 0; img < grids.size(); ++img) {
    const auto [t, h, w] = grids[img];
    if (h % merge || w % merge) throw std::runtime_error("patch_positions: grid " + std::to_string(h) + "x" + std::to_string(w) +
                                                         " is not a multiple of the merge size " + std::to_string(merge));
    for (int64_t f = 0; f < t; ++f)
      for (int64_t by = 0; by < h / merge; ++by)
        for (int64_t bx = 0; bx < w / merge; ++bx)
          for (int64_t iy = 0; iy < merge; ++iy)
            for (int64_t ix = 0; ix < merge; ++ix)
              natural.push_back({static_cast<int64_t>(img), f, by * merge + iy, bx * merge + ix});
  }
  if (static_cast<int64_t>(window_index.size()) * mm != static_cast<int64_t>(natural.size()))
    throw std::runtime_error("patch_positions: the window index has " + std::to_string(window_index.size()) + " groups of " +
                             std::to_string(mm) + " patches, the grids " + std::to_string(natural.size()) + " patches");
  std::vector<PatchPos> out(natural.size());
  for (size_t g = 0; g < window_index.size(); ++g) {
    const int64_t src = window_index[g];
    if (src < 0 || src * mm >= static_cast<int64_t>(natural.size()))
      throw std::runtime_error("patch_positions: window index " + std::to_string(src) + " out of range");
    for (int64_t q = 0; q < mm; ++q) out[g * mm + q] = natural[src * mm + q];
  }
  return out;
}

std::vector<std::pair<int64_t, int64_t>> token_spans(const std::vector<int64_t>& ids, int64_t token) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t i = 0; i < static_cast<int64_t>(ids.size());) {
    if (ids[i] != token) {
      ++i;
      continue;
    }
    int64_t j = i;
    while (j < static_cast<int64_t>(ids.size()) && ids[j] == token) ++j;
    out.emplace_back(i, j);
    i = j;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------------------

namespace {

const char* kStyle = R"(
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px;color:#1b1f23;background:#fff}
h1{font-size:22px;margin:0 0 12px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table.kv td{padding:2px 12px 2px 0;vertical-align:top} table.kv td:first-child{color:#57606a;white-space:nowrap}
.first{background:#ffe3e3} .firstbox{border:2px solid #cf222e;background:#fff5f5;padding:8px 12px;margin:10px 0;border-radius:6px}
.okbox{border:2px solid #1a7f37;background:#f0fff4;padding:8px 12px;margin:10px 0;border-radius:6px}
table.calls{border-collapse:collapse;font-size:12px;font-family:ui-monospace,Menlo,Consolas,monospace}
table.calls th{position:sticky;top:0;background:#f6f8fa;cursor:pointer;text-align:left;padding:3px 6px;border-bottom:1px solid #d0d7de}
table.calls td{padding:2px 6px;border-bottom:1px solid #eaeef2;white-space:nowrap} table.calls td.why{white-space:normal;min-width:260px;max-width:560px;font-size:11px}
td.PASS{color:#1a7f37} td.FAIL,td.ERROR{color:#cf222e;font-weight:bold} td.nof{color:#8c959f}
.chart text.ct{font-size:13px;font-weight:600} text.ax{font-size:11px;fill:#57606a} text.bold{font-weight:bold;fill:#cf222e}
line.grid{stroke:#eaeef2} line.thr{stroke:#d62728;stroke-width:1.5;stroke-dasharray:5,3} rect.frame{fill:none;stroke:#8c959f}
rect.hl{fill:#ffe3e3} rect.hlrow{fill:none;stroke:#cf222e;stroke-width:2} .muted{color:#57606a} .panel{display:inline-block;margin:0 14px 10px 0;vertical-align:top}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:300px;font-size:11px}
)";

const char* kScript = R"(
(function(){
  var tables = document.querySelectorAll('table.calls');
  for (var t = 0; t < tables.length; t++) {
    (function(table){
      var heads = table.tHead.rows[0].cells;
      for (var c = 0; c < heads.length; c++) {
        (function(col, th){
          th.addEventListener('click', function(){
            var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
            var asc = th.getAttribute('data-dir') !== 'asc';
            th.setAttribute('data-dir', asc ? 'asc' : 'desc');
            rows.sort(function(a, b){
              var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
              var nx = parseFloat(x), ny = parseFloat(y), r;
              if (!isNaN(nx) && !isNaN(ny)) r = nx - ny; else r = String(x).localeCompare(String(y));
              return asc ? r : -r;
            });
            for (var i = 0; i < rows.length; i++) body.appendChild(rows[i]);
          });
        })(c, heads[c]);
      }
    })(tables[t]);
  }
})();
)";

std::string anchor(const Call& c) { return "call-" + c.header.group; }

std::string call_link(const Call& c) {
  return "<a href=\"#" + anchor(c) + "\">" + escape(c.header.module_path.empty() ? "(root)" : c.header.module_path) + "</a>";
}

// x = block / layer number of the first call of each path (forward pass only).
struct Depth {
  std::vector<int64_t> xs;
  std::vector<size_t> calls;
};
Depth text_layers(const Input& in) {
  std::map<int64_t, size_t> by_layer;
  for (size_t i = 0; i < in.calls.size(); ++i) {
    const Call& c = in.calls[i];
    if (c.header.module_class != "Qwen2_5_VLDecoderLayer" || c.header.generate_step >= 0 || !c.judged()) continue;
    const int64_t l = index_after(c.header.module_path, ".layers.");
    if (l >= 0 && !by_layer.count(l)) by_layer[l] = i;
  }
  Depth d;
  for (const auto& [l, i] : by_layer) {
    d.xs.push_back(l);
    d.calls.push_back(i);
  }
  return d;
}
Depth vision_blocks(const Input& in) {
  Depth d;
  if (in.vision.empty()) return d;
  for (size_t i : in.vision.front().block_calls) {
    if (!in.calls[i].judged()) continue;
    d.xs.push_back(index_after(in.calls[i].header.module_path, ".blocks."));
    d.calls.push_back(i);
  }
  return d;
}

// The block / layer that holds the first divergent call, if it is one of `d`.
int64_t divergent_x(const Input& in, const Depth& d) {
  if (in.first_divergent < 0) return -1;
  const std::string& p = in.calls[in.first_divergent].header.module_path;
  for (size_t k = 0; k < d.calls.size(); ++k) {
    const std::string& q = in.calls[d.calls[k]].header.module_path;
    if (p == q || p.rfind(q + ".", 0) == 0) return d.xs[k];
  }
  return -1;
}

std::string depth_section(const Input& in) {
  std::ostringstream os;
  const bool bf16 = in.dtype == "bfloat16";
  double thr_rel = 0, thr_cos = 0;
  try {
    const Threshold& th = threshold_for(in.dtype, "*");
    thr_rel = th.max_rel;
    thr_cos = 1.0 - th.min_row_cos;
  } catch (const std::exception&) {
  }
  for (int part = 0; part < 2; ++part) {
    const Depth d = part == 0 ? vision_blocks(in) : text_layers(in);
    const std::string what = part == 0 ? "vision block" : "text layer";
    if (d.xs.empty()) {
      os << "<p class=\"muted\">No judged " << what << " calls.</p>";
      continue;
    }
    const int64_t hx = divergent_x(in, d);
    std::vector<double> rel, cos, ours_rel, hf_rel, limit, ours_cos, hf_cos;
    for (size_t i : d.calls) {
      const Worst w = worst_of(in.calls[i]);
      rel.push_back(w.max_rel);
      cos.push_back(1.0 - w.min_row_cos);
      ours_rel.push_back(w.ours_rel);
      hf_rel.push_back(w.hf_rel);
      limit.push_back(2.0 * w.hf_rel);
      ours_cos.push_back(1.0 - w.ours_cos);
      hf_cos.push_back(1.0 - w.hf_cos);
    }
    os << "<div class=\"panel\">";
    if (!bf16) {
      os << line_chart("Error growth through the " + what + "s (output vs reference)", what + " index", d.xs,
                       {{"max_rel", "#1f77b4", rel, false}, {"1 - min row cosine", "#ff7f0e", cos, false}},
                       {{"max_rel limit", thr_rel}, {"1 - row cos limit", thr_cos}}, hx);
    } else {
      os << line_chart("bf16 error through the " + what + "s: ours and HF's own, vs HF float32", what + " index", d.xs,
                       {{"ours max_rel", "#1f77b4", ours_rel, false},
                        {"HF bf16 max_rel", "#2ca02c", hf_rel, false},
                        {"limit: 2x HF's own", "#d62728", limit, true}},
                       {}, hx);
      os << "</div><div class=\"panel\">";
      os << line_chart("bf16 worst row through the " + what + "s", what + " index", d.xs,
                       {{"ours 1 - min row cos", "#1f77b4", ours_cos, false}, {"HF 1 - min row cos", "#2ca02c", hf_cos, false}},
                       {}, hx);
    }
    os << "</div>";
  }
  return os.str();
}

// Row cosines of a call's main tensor (bf16: ours against HF's float32), or empty.
const std::vector<double>* rows_of(const Call& c, bool bf16) {
  const TensorCheck* t = main_tensor(c);
  if (!t) return nullptr;
  const std::vector<double>& rc = bf16 && t->bf16_rule ? t->ours_vs_fp32.row_cos : t->vs_ref.row_cos;
  return rc.empty() ? nullptr : &rc;
}

std::string token_section(const Input& in) {
  std::ostringstream os;
  const bool bf16 = in.dtype == "bfloat16";
  const Depth d = text_layers(in);
  if (d.xs.empty()) return "<p class=\"muted\">No judged text layer calls in the forward pass.</p>";
  if (in.input_ids.empty()) return "<p class=\"muted\">The recording holds no token ids of the forward pass.</p>";
  const int64_t B = static_cast<int64_t>(in.input_ids.size()), T = static_cast<int64_t>(in.input_ids[0].size());
  const int64_t hx = divergent_x(in, d);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<std::string> labels;
    std::vector<double> cells;
    std::vector<std::string> tips;
    int64_t hl = -1;
    for (size_t k = 0; k < d.calls.size(); ++k) {
      const Call& c = in.calls[d.calls[k]];
      labels.push_back("layer " + std::to_string(d.xs[k]));
      if (d.xs[k] == hx) hl = static_cast<int64_t>(k);
      const std::vector<double>* rc = rows_of(c, bf16);
      const bool fits = rc && static_cast<int64_t>(rc->size()) == B * T;
      for (int64_t t = 0; t < T; ++t) {
        const double v = fits ? (*rc)[b * T + t] : NAN;
        cells.push_back(v);
        const int64_t id = in.input_ids[b][t];
        const std::string kind = id == in.image_token_id ? " (image)" : id == in.video_token_id ? " (video)" : "";
        tips.push_back("layer " + std::to_string(d.xs[k]) + ", token " + std::to_string(t) + " id " + std::to_string(id) + kind +
                       ": row cosine " + fixed9(v) + ", 1 - cos " + sci(1.0 - v));
      }
    }
    std::vector<Mark> marks;
    for (const auto& [s, e] : token_spans(in.input_ids[b], in.image_token_id)) marks.push_back({s, e, "image", "#1f77b4"});
    for (const auto& [s, e] : token_spans(in.input_ids[b], in.video_token_id)) marks.push_back({s, e, "video", "#2ca02c"});
    const double cw = std::clamp(900.0 / static_cast<double>(std::max<int64_t>(T, 1)), 3.0, 18.0);
    if (B > 1) os << "<p>batch row " << b << "</p>";
    os << heatmap(labels, T, cells, tips, marks, cw, 18, {}, hl, "token position 0.." + std::to_string(T - 1));
  }
  return os.str();
}

std::string patch_section(const Input& in) {
  std::ostringstream os;
  const bool bf16 = in.dtype == "bfloat16";
  if (in.vision.empty()) return "<p class=\"muted\">No vision tower call in the forward pass.</p>";
  for (size_t pi = 0; pi < in.vision.size(); ++pi) {
    const VisionPass& p = in.vision[pi];
    std::vector<PatchPos> pos;
    try {
      pos = patch_positions(p.grids, p.window_index, in.merge);
    } catch (const std::exception& e) {
      os << "<p class=\"muted\">vision pass " << pi << ": " << escape(error_message(e)) << "</p>";
      continue;
    }
    for (size_t img = 0; img < p.grids.size(); ++img) {
      const auto [gt, gh, gw] = p.grids[img];
      os << "<p>vision pass " << pi << ", grid " << img << ": t=" << gt << ", h=" << gh << ", w=" << gw
         << (gt > 1 ? " (frames side by side)" : "") << "</p><div>";
      for (size_t i : p.block_calls) {
        const Call& c = in.calls[i];
        const std::vector<double>* rc = rows_of(c, bf16);
        std::vector<double> cells(static_cast<size_t>(gh * gt * gw), NAN);
        std::vector<std::string> tips(cells.size());
        if (rc && rc->size() == pos.size()) {
          for (size_t r = 0; r < pos.size(); ++r) {
            if (pos[r].image != static_cast<int64_t>(img)) continue;
            const size_t cell = static_cast<size_t>(pos[r].y * gt * gw + pos[r].frame * gw + pos[r].x);
            cells[cell] = (*rc)[r];
            tips[cell] = "patch (y " + std::to_string(pos[r].y) + ", x " + std::to_string(pos[r].x) +
                         (gt > 1 ? ", frame " + std::to_string(pos[r].frame) : "") + "), row " + std::to_string(r) +
                         ": row cosine " + fixed9((*rc)[r]) + ", 1 - cos " + sci(1.0 - (*rc)[r]);
          }
        }
        std::vector<std::string> labels;
        for (int64_t y = 0; y < gh; ++y) labels.push_back(y == 0 ? "y 0" : y == gh - 1 ? "y " + std::to_string(y) : "");
        std::vector<int64_t> gaps;
        for (int64_t f = 1; f < gt; ++f) gaps.push_back(f * gw - 1);
        const double cw = std::clamp(260.0 / static_cast<double>(gw * gt), 3.0, 16.0);
        const bool hl = static_cast<int>(i) == in.first_divergent ||
                        (in.first_divergent >= 0 && in.calls[in.first_divergent].header.module_path.rfind(c.header.module_path + ".", 0) == 0);
        std::string attn;
        auto s = nlohmann::json::parse(c.header.settings, nullptr, false);
        if (s.is_object() && s.contains("attention")) attn = " (" + s["attention"].get<std::string>() + ")";
        os << "<div class=\"panel\"><div class=\"" << (hl ? "bold" : "") << "\">" << (hl ? "&#9658; " : "")
           << escape(c.header.module_path) << escape(attn) << " " << escape(c.verdict) << "</div>"
           << heatmap(labels, gw * gt, cells, tips, {}, cw, cw, gaps, -1, "x 0.." + std::to_string(gw - 1)) << "</div>";
      }
      os << "</div>";
    }
  }
  return os.str();
}

std::string bf16_section(const Input& in) {
  struct Agg {
    int n = 0;
    double worst = 0.0;
    size_t at = 0;
    double ours_rmse = 0, hf_rmse = 0;
  };
  std::map<std::string, Agg> by_class;
  for (size_t i = 0; i < in.calls.size(); ++i) {
    const Worst w = worst_of(in.calls[i]);
    if (!w.bf16) continue;
    Agg& a = by_class[in.calls[i].header.module_class];
    ++a.n;
    if (a.n == 1 || w.ratio > a.worst) {
      a.worst = w.ratio;
      a.at = i;
      const TensorCheck* t = worst_tensor(in.calls[i]);
      a.ours_rmse = t ? t->ours_vs_fp32.rmse : 0;
      a.hf_rmse = t ? t->hf_vs_fp32.rmse : 0;
    }
  }
  if (by_class.empty()) return "<p class=\"muted\">No call was judged by the bf16 rule.</p>";
  std::ostringstream os;
  os << "<table class=\"calls\"><thead><tr><th>class</th><th>calls</th><th>worst ours / HF error</th><th>ours RMSE vs fp32</th>"
        "<th>HF RMSE vs fp32</th><th>worst call</th></tr></thead><tbody>";
  for (const auto& [cls, a] : by_class) {
    os << "<tr><td data-v=\"" << escape(cls) << "\">" << escape(cls) << "</td><td data-v=\"" << a.n << "\">" << a.n
       << "</td><td data-v=\"" << key(a.worst) << "\" class=\"" << (a.worst <= 2.0 ? "PASS" : "FAIL") << "\">"
       << fmt("%.2f", a.worst) << "</td><td data-v=\"" << key(a.ours_rmse) << "\">" << sci(a.ours_rmse) << "</td><td data-v=\""
       << key(a.hf_rmse) << "\">" << sci(a.hf_rmse) << "</td><td data-v=\"" << a.at << "\">" << call_link(in.calls[a.at])
       << "</td></tr>";
  }
  os << "</tbody></table>";
  return os.str();
}

std::string calls_table(const Input& in) {
  const bool bf16 = in.dtype == "bfloat16";
  std::ostringstream os;
  os << "<table class=\"calls\" id=\"calls\"><thead><tr><th>call</th><th>module_path</th><th>class</th><th>idx</th><th>step</th>"
        "<th>verdict</th><th>output</th><th>pearson</th><th>max_rel</th><th>min_row_cos</th><th>max_abs</th><th>worst@</th>";
  if (bf16) os << "<th>ours/HF</th><th>ours max|err| vs fp32</th><th>HF max|err| vs fp32</th>";
  os << "<th>detail</th></tr></thead><tbody>";
  for (size_t i = 0; i < in.calls.size(); ++i) {
    const Call& c = in.calls[i];
    const bool first = static_cast<int>(i) == in.first_divergent;
    os << "<tr id=\"" << anchor(c) << "\"" << (first ? " class=\"first\"" : "") << ">";
    auto td = [&](const std::string& sortkey, const std::string& html, const std::string& cls = "") {
      os << "<td data-v=\"" << escape(sortkey) << "\"" << (cls.empty() ? "" : " class=\"" + cls + "\"") << ">" << html << "</td>";
    };
    td(std::to_string(c.header.seq), escape(c.header.group));
    td(c.header.module_path, escape(c.header.module_path) + (first ? " &#9664; first divergence" : ""));
    td(c.header.module_class, escape(c.header.module_class));
    td(std::to_string(c.header.call_index), std::to_string(c.header.call_index));
    td(std::to_string(c.header.generate_step), c.header.generate_step < 0 ? "-" : std::to_string(c.header.generate_step));
    td(c.verdict, escape(c.verdict), c.judged() || c.verdict == "ERROR" ? c.verdict : "nof");
    const TensorCheck* t = worst_tensor(c);
    if (!t || !t->vs_ref.shape_ok) {
      td("", t ? escape(t->name) : "");
      for (int k = 0; k < 5; ++k) td("1e308", "");
      if (bf16)
        for (int k = 0; k < 3; ++k) td("1e308", "");
    } else {
      const Metrics& m = t->vs_ref;
      td(t->name, escape(t->name));
      if (m.integer) {
        td("1", "exact");
        td("0", std::to_string(m.mismatches) + " differ");
        td("1", "-");
        td(key(static_cast<double>(m.mismatches)), "-");
      } else {
        td(key(m.pearson), fixed9(m.pearson));
        td(key(m.max_rel), sci(m.max_rel));
        td(key(m.min_row_cos), fixed9(m.min_row_cos));
        td(key(m.max_abs), sci(m.max_abs));
      }
      td(format_index(m.worst_index), escape(format_index(m.worst_index)));
      if (bf16) {
        if (t->bf16_rule) {
          const Worst w = worst_of(c);
          td(key(w.ratio), fmt("%.2f", w.ratio));
          td(key(t->ours_vs_fp32.max_abs), sci(t->ours_vs_fp32.max_abs));
          td(key(t->hf_vs_fp32.max_abs), sci(t->hf_vs_fp32.max_abs));
        } else {
          for (int k = 0; k < 3; ++k) td("-1", "-");
        }
      }
    }
    os << "<td class=\"why\" data-v=\"" << escape(c.why) << "\">" << escape(c.why) << "</td></tr>\n";
  }
  os << "</tbody></table>";
  return os.str();
}

}  // namespace

std::string render(const Input& in) {
  std::ostringstream os;
  os << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>" << escape(in.command)
     << " report</title><style>" << kStyle << "</style></head><body>\n";
  os << "<h1>" << escape(in.command) << " report</h1>\n";
  // --- summary
  os << "<h2 id=\"summary\">Summary</h2><table class=\"kv\">";
  for (const auto& [k, v] : in.summary) os << "<tr><td>" << escape(k) << "</td><td>" << escape(v) << "</td></tr>";
  os << "</table>\n";
  if (in.first_divergent >= 0) {
    const Call& c = in.calls[in.first_divergent];
    os << "<div class=\"firstbox\" id=\"first-divergent\">first divergent module: <b>" << call_link(c) << "</b> ("
       << escape(c.header.module_class) << ", call " << escape(c.header.group) << ", idx " << c.header.call_index << "): "
       << escape(c.why) << "</div>\n";
  } else {
    bool any_fail = false;
    for (const auto& c : in.calls) any_fail |= c.verdict == "FAIL" || c.verdict == "ERROR";
    os << "<div class=\"" << (any_fail ? "firstbox" : "okbox") << "\" id=\"first-divergent\">"
       << (any_fail ? "errors, but no divergent output" : "no divergent module: every judged call passes") << "</div>\n";
  }
  for (const auto& [label, text] : in.configs) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    os << "<details><summary>" << escape(label) << " (JSON)</summary><pre>" << escape(j.is_discarded() ? text : j.dump(1))
       << "</pre></details>\n";
  }
  // --- sections
  os << "<h2 id=\"depth\">Error growth through depth</h2><p class=\"muted\">Worst output tensor of each vision block and text "
        "layer (the forward pass), log scale; zero error is drawn at 1e-12. The shaded column holds the first divergent "
        "module.</p>\n"
     << depth_section(in) << "\n";
  os << "<h2 id=\"tokens\">Per-token error through the text layers</h2><p class=\"muted\">Each cell is one token's row cosine "
        "of the decoder layer's output"
     << (in.dtype == "bfloat16" ? " (ours against HF's float32)" : "")
     << "; colour = 1 - cosine, log scale. Bars above mark the image and video token spans.</p>\n"
     << colour_legend() << "<div>" << token_section(in) << "</div>\n";
  os << "<h2 id=\"patches\">Per-patch error over the image grid (vision blocks)</h2><p class=\"muted\">Each cell is one "
        "patch's row cosine of the block's output, placed at its (y, x) in the grid (the blocks see the patches in window "
        "order; this undoes it). Windowed-attention bugs show as rectangles.</p>\n"
     << colour_legend() << "<div>" << patch_section(in) << "</div>\n";
  if (in.dtype == "bfloat16")
    os << "<h2 id=\"bf16\">bf16: our error next to HF's own, per module class</h2><p class=\"muted\">Both against HF's "
          "float32; the rule allows ours up to 2x HF's own error.</p>\n"
       << bf16_section(in) << "\n";
  os << "<h2 id=\"table\">Every call</h2><p class=\"muted\">Click a column header to sort. The worst output tensor of each "
        "call is shown.</p>\n"
     << calls_table(in) << "\n";
  os << "<script>" << kScript << "</script>\n</body></html>\n";
  return os.str();
}

void write(const std::string& path, const Input& in) {
  const std::string html = render(in);
  h5::AtomicPath out(path);
  {
    std::ofstream f(out.tmp(), std::ios::binary);
    if (!f) throw std::runtime_error("'" + path + "': cannot write the report (" + out.tmp() + ")");
    f << html;
    f.flush();
    if (!f) throw std::runtime_error("'" + path + "': write failed");
  }
  out.commit();
}

}  // namespace qvl::report
