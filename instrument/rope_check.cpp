#include "instrument/rope_check.h"

#include <hdf5.h>

#include <stdexcept>

#include "functional/error.h"
#include "functional/rope/circle.h"
#include "instrument/h5io.h"
#include "instrument/metrics.h"
#include "instrument/thresholds.h"

namespace qvl::rope_check {
namespace {

// Every string attribute of an HDF5 object; JSON-looking values parsed, the rest kept as strings.
nlohmann::json string_attrs(hid_t obj, const std::string& where) {
  std::vector<std::string> names;
  H5O_info_t info;
  if (H5Oget_info(obj, &info) < 0) throw h5::Error(where + ": cannot read the attributes");
  for (hsize_t i = 0; i < info.num_attrs; ++i) {
    ssize_t n = H5Aget_name_by_idx(obj, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (n < 0) throw h5::Error(where + ": cannot read attribute " + std::to_string(i));
    std::string name(n, '\0');
    H5Aget_name_by_idx(obj, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), n + 1, H5P_DEFAULT);
    names.push_back(name);
  }
  nlohmann::json out = nlohmann::json::object();
  for (const auto& name : names) {
    std::string v;
    try {
      v = h5::attr_str(obj, name, where);
    } catch (const std::exception&) {
      continue;  // a non-string attribute: not part of the schema's string attributes
    }
    auto parsed = nlohmann::json::parse(v, nullptr, /*allow_exceptions=*/false);
    out[name] = !parsed.is_discarded() && (parsed.is_object() || parsed.is_array()) ? parsed : nlohmann::json(v);
  }
  return out;
}

TensorMap read_group(hid_t loc, const std::string& name, const std::string& where) {
  TensorMap out;
  if (!h5::exists(loc, name)) return out;
  h5::Handle g = h5::open_group(loc, name, where);
  for (const auto& child : h5::children(g.id())) {
    // "complex_as_real_pair" datasets are plain float [..., 2]: read them by their stored type.
    out[child] = h5::read_tensor(g.id(), child, where + "/" + name, /*dtype_from_attr=*/false);
  }
  return out;
}

bool is_position(const std::string& name) {
  return name == "position_ids" || name == "llm_pos_ids" || name == "rope_deltas";
}

}  // namespace

std::vector<GoldenCase> read_golden_file(const std::string& path) {
  h5::File f = h5::open_read(path);
  if (!h5::exists(f.id(), "cases")) {
    throw std::runtime_error("'" + path + "': no /cases group: not a file in the RoPE golden schema (tests/data/rope_golden/README.md)");
  }
  nlohmann::json root = string_attrs(f.id(), path);
  h5::Handle cases = h5::open_group(f.id(), "cases", path);
  std::vector<GoldenCase> out;
  for (const auto& name : h5::children(cases.id())) {
    const std::string where = path + ":/cases/" + name;
    h5::Handle g = h5::open_group(cases.id(), name, where);
    GoldenCase c;
    c.file = path;
    c.name = name;
    c.root = root;
    c.function = h5::attr_str(g.id(), "function", where);
    c.params = nlohmann::json::parse(h5::has_attr(g.id(), "params") ? h5::attr_str(g.id(), "params", where) : "{}");
    c.note = h5::has_attr(g.id(), "note") ? h5::attr_str(g.id(), "note", where) : "";
    c.inputs = read_group(g.id(), "inputs", where);
    c.outputs = read_group(g.id(), "outputs", where);
    out.push_back(std::move(c));
  }
  // Extra tables outside /cases (circle_rope.h5: /age/strategy_N) become cases of their own kind, so that
  // nothing in a golden file goes unchecked.
  if (h5::exists(f.id(), "age")) {
    h5::Handle age = h5::open_group(f.id(), "age", path);
    for (const auto& name : h5::children(age.id())) {
      GoldenCase c;
      c.file = path;
      c.name = "age/" + name;
      c.root = root;
      c.function = "age_table";
      c.params = {{"strategy", name}};
      c.outputs["layers"] = h5::read_tensor(age.id(), name, path + ":/age", /*dtype_from_attr=*/false);
      out.push_back(std::move(c));
    }
  }
  return out;
}

namespace {
CaseResult run_age_case(const GoldenCase& c) {
  at::Tensor want = c.outputs.at("layers");
  std::vector<bool> layers = rope::circle::age_layers(c.params.at("strategy").get<std::string>(), want.size(0));
  std::vector<uint8_t> v(layers.begin(), layers.end());
  CaseResult r;
  r.outputs["layers"] = at::tensor(at::ArrayRef<uint8_t>(v), at::kByte).to(want.scalar_type());
  r.notes["layers"] = "qvl's any-L rule (functional/rope/circle.h age_layers) at L = " + std::to_string(want.size(0));
  return r;
}
}  // namespace

const std::map<std::string, Runner>& runners() {
  static const std::map<std::string, Runner> table = {
      {"axial", run_axial_case},
      {"mixed", run_mixed_case},
      {"spiral_rope_apply", run_spiral_case},
      {"circle_index", run_circle_index_case},
      {"get_rope_index", run_rope_index_case},
      {"age_table", run_age_case},
  };
  return table;
}

CaseCheck check_case(const GoldenCase& c) {
  CaseCheck out;
  out.name = c.name;
  out.function = c.function;
  auto it = runners().find(c.function);
  if (it == runners().end()) {
    std::string known;
    for (const auto& [k, v] : runners()) known += (known.empty() ? "" : ", ") + k;
    out.error = "no qvl runner for function '" + c.function + "' (known: " + known + ")";
    return out;
  }
  CaseResult r;
  try {
    r = it->second(c);
  } catch (const std::exception& e) {
    out.error = error_message(e);
  }
  if (c.outputs.empty()) {
    // The official code raised: qvl must raise too.
    out.expected_error = !out.error.empty();
    out.pass = out.expected_error;
    if (!out.pass) out.error = "the official code raised (" + c.note + ") but qvl returned outputs";
    return out;
  }
  if (!out.error.empty()) return out;
  out.notes = r.notes;
  out.pass = true;
  for (const auto& [name, ref] : c.outputs) {
    OutputCheck oc;
    oc.name = name;
    auto o = r.outputs.find(name);
    if (o == r.outputs.end()) {
      oc.detail = "qvl did not compute this output";
      out.pass = false;
      out.outputs.push_back(oc);
      continue;
    }
    Metrics m = compare(o->second, ref, /*check_dtype=*/true);
    Judgement j;
    if (m.integer) {
      oc.rule = "exact";
      j = judge_exact(m);
    } else if (is_position(name)) {
      oc.rule = "abs<=1e-6";
      j = judge_positions(m);
    } else {
      oc.rule = "fp32";
      j = judge_fp32(m, threshold_for("float32", c.function));
    }
    oc.pass = j.pass;
    oc.detail = j.why;
    oc.max_abs = m.max_abs;
    oc.max_rel = m.max_rel;
    oc.pearson = m.pearson;
    out.pass = out.pass && oc.pass;
    out.outputs.push_back(oc);
  }
  for (const auto& [name, t] : r.outputs) {
    if (!c.outputs.count(name)) out.notes[name] = "computed by qvl; the golden file has no such output";
  }
  return out;
}

}  // namespace qvl::rope_check
