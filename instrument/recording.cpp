#include "instrument/recording.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>

namespace qvl {

const Value& RecordedCall::input(const std::string& name, int pos) const {
  if (inputs.has(name)) return inputs.at(name);
  const std::string arg = "arg" + std::to_string(pos);
  if (pos >= 0 && inputs.has(arg)) return inputs.at(arg);
  std::string all;
  for (const auto& k : inputs.keys) all += (all.empty() ? "" : ", ") + k;
  throw std::runtime_error("call " + header.group + " (" + header.module_path + "): no input '" + name + "'" +
                           (pos >= 0 ? " or '" + arg + "'" : "") + " (inputs: " + all + ")");
}

const Value& RecordedCall::output(int index) const {
  const std::string key = index < 0 ? "out" : "out" + std::to_string(index);
  if (!outputs.has(key)) {
    std::string all;
    for (const auto& k : outputs.keys) all += (all.empty() ? "" : ", ") + k;
    throw std::runtime_error("call " + header.group + " (" + header.module_path + "): no output '" + key +
                             "' (outputs: " + all + ")");
  }
  return outputs.at(key);
}

namespace {
// settings.generate_step of a call header's settings JSON, -1 when absent.
int64_t generate_step_of(const std::string& settings) {
  const auto st = nlohmann::json::parse(settings, nullptr, false);
  if (st.is_object() && st.contains("generate_step") && st["generate_step"].is_number_integer())
    return st["generate_step"].get<int64_t>();
  return -1;
}

CallSummary parse_summary(const std::string& text, const std::string& where) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("classes") || !j["classes"].is_object() || !j.contains("generate_steps") ||
      !j["generate_steps"].is_number_integer()) {
    throw h5::CorruptError(where + ": root attribute 'call_summary' is not {\"classes\": {...}, \"generate_steps\": n}");
  }
  CallSummary s;
  for (const auto& [k, v] : j["classes"].items()) {
    if (!v.is_number_integer()) throw h5::CorruptError(where + ": call_summary: count of '" + k + "' is not an integer");
    s.classes[k] = v.get<int64_t>();
  }
  s.generate_steps = j["generate_steps"].get<int64_t>();
  return s;
}
}  // namespace

std::string call_group_name(int64_t seq) {
  char name[24];
  std::snprintf(name, sizeof(name), "%06lld", static_cast<long long>(seq));
  return name;
}

void check_call_groups(const std::vector<std::string>& names, int64_t stated, const std::string& path) {
  const std::string where = "recording '" + path + "'";
  std::set<int64_t> found;
  for (const auto& n : names) {
    const bool digits = n.size() >= 6 && std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits || n.size() > 18 || call_group_name(std::stoll(n)) != n) {
      throw h5::CorruptError(where + ": /calls holds '" + n + "', which is not a call group (000000, 000001, ...)");
    }
    found.insert(std::stoll(n));
  }
  const int64_t expected = stated >= 0 ? stated : (found.empty() ? 0 : *found.rbegin() + 1);
  std::vector<int64_t> missing, extra;
  for (int64_t i = 0; i < expected; ++i)
    if (!found.count(i)) missing.push_back(i);
  for (int64_t i : found)
    if (i >= expected) extra.push_back(i);
  if (missing.empty() && extra.empty()) return;
  const std::string count = stated >= 0 ? "root says " + std::to_string(stated) + " calls; found " + std::to_string(found.size())
                                        : "found " + std::to_string(found.size()) + " up to call " +
                                              call_group_name(expected - 1) + "; this older file states no count";
  auto list = [](const std::vector<int64_t>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 5; ++i) s += (i ? ", " : "") + call_group_name(v[i]);
    if (v.size() > 5) s += " and " + std::to_string(v.size() - 5) + " more";
    return s;
  };
  if (!missing.empty()) {
    throw h5::CorruptError(where + ": call" + (missing.size() > 1 ? "s " : " ") + list(missing) + " missing (" + count + ")");
  }
  throw h5::CorruptError(where + ": call" + (extra.size() > 1 ? "s " : " ") + list(extra) +
                         " beyond the stated count (" + count + ")");
}

Recording Recording::open(const std::string& path) {
  Recording r;
  r.path_ = path;
  r.file_ = std::make_shared<h5::File>(h5::open_read(path));
  const hid_t f = r.file_->id();
  const std::string where = "'" + path + "'";
  if (!h5::has_attr(f, "format")) throw h5::Error(where + ": not a qvl recording (no 'format' attribute)");
  const std::string format = h5::attr_str(f, "format", where);
  if (format != "qvl.recording") {
    throw h5::Error(where + ": not a qvl recording (format = '" + format + "', expected 'qvl.recording')");
  }
  for (const char* name : {"producer", "dtype", "config", "scenario", "torch_version", "attn_implementation",
                           "device", "platform", "model_dir"}) {
    if (h5::has_attr(f, name)) r.attrs_[name] = h5::attr_str(f, name, where);
  }
  r.attrs_["format"] = format;
  if (!r.attrs_.count("dtype")) throw h5::Error(where + ": missing root attribute 'dtype'");
  h5::note_if_unchecksummed(f, path);
  h5::Handle calls = h5::open_group(f, "calls", where);
  const std::vector<std::string> names = h5::children(calls.id());
  check_call_groups(names, h5::has_attr(f, "num_calls") ? h5::attr_int(f, "num_calls", where) : -1, path);
  for (const auto& name : names) {
    h5::Handle g = h5::open_group(calls.id(), name, where + ":/calls");
    const std::string here = where + ":/calls/" + name;
    CallHeader h;
    h.group = name;
    h.seq = static_cast<int64_t>(r.headers_.size());
    h.module_path = h5::attr_str(g.id(), "module_path", here);
    h.module_class = h5::attr_str(g.id(), "module_class", here);
    h.call_index = h5::attr_int(g.id(), "call_index", here);
    h.parent = h5::attr_int(g.id(), "parent", here);
    h.settings = h5::has_attr(g.id(), "settings") ? h5::attr_str(g.id(), "settings", here) : "{}";
    h.generate_step = generate_step_of(h.settings);
    r.headers_.push_back(std::move(h));
  }
  if (h5::has_attr(f, "call_summary")) {
    const CallSummary stated = parse_summary(h5::attr_str(f, "call_summary", where), where);
    const CallSummary found = CallSummary::of(r.headers_);
    if (!(stated == found)) {
      throw h5::CorruptError(where + ": the calls do not match the root attribute call_summary (stated " +
                             stated.json() + ", found " + found.json() + ")");
    }
  }
  return r;
}

CallSummary CallSummary::of(const std::vector<CallHeader>& headers) {
  CallSummary s;
  std::set<int64_t> steps;
  for (const auto& h : headers) {
    ++s.classes[h.module_class];
    if (h.generate_step >= 0) steps.insert(h.generate_step);
  }
  s.generate_steps = static_cast<int64_t>(steps.size());
  return s;
}

std::string CallSummary::json() const {
  nlohmann::json j;
  j["classes"] = classes;
  j["generate_steps"] = generate_steps;
  return j.dump();
}


CallSummary Recording::summary(const std::string& path) {
  {
    h5::File f = h5::open_read(path);
    const std::string where = "'" + path + "'";
    if (h5::has_attr(f.id(), "call_summary")) return parse_summary(h5::attr_str(f.id(), "call_summary", where), where);
  }
  return CallSummary::of(open(path).calls());  // older file: read every call header
}

const std::string& Recording::attr(const std::string& name) const {
  auto it = attrs_.find(name);
  if (it == attrs_.end()) throw h5::Error("'" + path_ + "': missing root attribute '" + name + "'");
  return it->second;
}

std::vector<size_t> Recording::generate_steps() const {
  std::vector<size_t> out;
  for (size_t i = 0; i < headers_.size(); ++i) {
    const CallHeader& h = headers_[i];
    if (h.generate_step >= 0 && h.parent < 0 && h.module_class == "Qwen2_5_VLForConditionalGeneration") out.push_back(i);
  }
  return out;
}

RecordedCall Recording::load(size_t index) const {
  if (index >= headers_.size()) {
    throw h5::Error("'" + path_ + "': call " + std::to_string(index) + " out of range (" +
                    std::to_string(headers_.size()) + " calls)");
  }
  RecordedCall c;
  c.header = headers_[index];
  const std::string where = "'" + path_ + "':/calls";
  h5::Handle calls = h5::open_group(file_->id(), "calls", "'" + path_ + "'");
  h5::Handle g = h5::open_group(calls.id(), c.header.group, where);
  const std::string here = where + "/" + c.header.group;
  c.inputs = h5::read_value(g.id(), "inputs", here);
  c.outputs = h5::exists(g.id(), "outputs") ? h5::read_value(g.id(), "outputs", here) : Value::dict({});
  c.outputs_fp32 = h5::exists(g.id(), "outputs_fp32") ? h5::read_value(g.id(), "outputs_fp32", here) : Value::none();
  c.outputs_fp32_chain =
      h5::exists(g.id(), "outputs_fp32_chain") ? h5::read_value(g.id(), "outputs_fp32_chain", here) : Value::none();
  return c;
}

// ------------------------------------------------------------------------------------------------------
RecordingWriter::RecordingWriter(std::string path, std::map<std::string, std::string> root_attrs)
    : path_(std::move(path)), root_attrs_(std::move(root_attrs)) {}

int64_t RecordingWriter::begin(const std::string& module_path, const std::string& module_class,
                               const Value& inputs, const std::string& settings_json) {
  Pending p;
  p.header.seq = static_cast<int64_t>(calls_.size());
  p.header.module_path = module_path;
  p.header.module_class = module_class;
  p.header.call_index = counts_[module_path]++;
  p.header.parent = stack_.empty() ? -1 : stack_.back();
  p.header.settings = settings_json;
  p.header.generate_step = generate_step_of(settings_json);
  // Detach and copy: the caller may reuse its buffers after the call.
  p.inputs = inputs;
  for (auto& t : p.inputs.items)
    if (t.is_tensor()) t.tensor = t.tensor.detach().clone();
  calls_.push_back(std::move(p));
  stack_.push_back(calls_.back().header.seq);
  return calls_.back().header.seq;
}

void RecordingWriter::end(int64_t handle, const Value& outputs) {
  if (stack_.empty() || stack_.back() != handle) {
    throw std::runtime_error("recorder: end(" + std::to_string(handle) + ") out of order");
  }
  stack_.pop_back();
  calls_[handle].outputs = outputs;
  calls_[handle].ended = true;
}

void RecordingWriter::close() {
  if (closed_) return;
  h5::AtomicPath out(path_);
  {
    h5::File f = h5::create_truncate(out.tmp());
    h5::set_attr(f.id(), "format", std::string("qvl.recording"));
    h5::set_attr(f.id(), "format_version", static_cast<int64_t>(2));
    for (const auto& [k, v] : root_attrs_) h5::set_attr(f.id(), k, v);
    // The reader checks the call groups against this count, and every dataset's checksum (h5io.h).
    h5::set_attr(f.id(), "num_calls", static_cast<int64_t>(calls_.size()));
    h5::set_attr(f.id(), "checksums", std::string(h5::kChecksums));
    {
      std::vector<CallHeader> headers;
      for (const auto& p : calls_) headers.push_back(p.header);
      h5::set_attr(f.id(), "call_summary", CallSummary::of(headers).json());
    }
    h5::Handle calls = h5::make_group(f.id(), "calls");
    for (const auto& p : calls_) {
      h5::Handle g = h5::make_group(calls.id(), call_group_name(p.header.seq));
      h5::set_attr(g.id(), "module_path", p.header.module_path);
      h5::set_attr(g.id(), "module_class", p.header.module_class);
      h5::set_attr(g.id(), "call_index", p.header.call_index);
      h5::set_attr(g.id(), "parent", p.header.parent);
      h5::set_attr(g.id(), "settings", p.header.settings);
      h5::write_value(g.id(), "inputs", p.inputs);
      if (p.ended) {
        Value outs = p.outputs.kind == Value::Kind::Tuple
                         ? [&] {
                             std::vector<std::pair<std::string, Value>> kv;
                             for (size_t i = 0; i < p.outputs.items.size(); ++i)
                               kv.emplace_back("out" + std::to_string(i), p.outputs.items[i]);
                             return Value::dict(std::move(kv));
                           }()
                         : Value::dict({{"out", p.outputs}});
        h5::write_value(g.id(), "outputs", outs);
      }
    }
  }
  out.commit();
  closed_ = true;
}

}  // namespace qvl
