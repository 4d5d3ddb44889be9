#include "instrument/rope_spec.h"

#include <set>
#include <stdexcept>

namespace qvl {
namespace {

// Python truthiness of a JSON value (the official code tests `if move_to_positive:` etc.).
bool truthy(const nlohmann::json& v) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0.0;
  if (v.is_string()) return !v.get<std::string>().empty();
  return !v.is_null();
}

double number(const nlohmann::json& v, const std::string& key) {
  if (v.is_boolean()) return v.get<bool>() ? 1.0 : 0.0;  // float(True) == 1.0
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    try {
      size_t used = 0;
      double d = std::stod(v.get<std::string>(), &used);
      if (used == v.get<std::string>().size()) return d;
    } catch (const std::exception&) {
    }
  }
  throw std::runtime_error("circle_rope." + key + ": expected a number, got " + v.dump());
}

}  // namespace

rope::circle::Config circle_config_from_json(const nlohmann::json& j) {
  using namespace rope::circle;
  if (!j.is_object()) throw std::runtime_error("circle_rope: expected a JSON object, got " + j.dump());
  static const std::set<std::string> known = {"alpha", "radius", "method", "move_to_origin", "move_to_positive",
                                              "dff_rate", "dff_convention", "video", "AGE_mode", "age_decode"};
  for (const auto& [k, v] : j.items()) {
    if (!known.count(k)) {
      std::string list;
      for (const auto& n : known) list += (list.empty() ? "" : ", ") + n;
      throw std::runtime_error("circle_rope: unknown key '" + k + "' (known: " + list + ")");
    }
  }
  Config c;
  if (j.contains("alpha")) c.alpha = number(j["alpha"], "alpha");
  if (j.contains("radius")) {
    const auto& r = j["radius"];
    // if 'auto' in str(radius): scale 1 for "auto", float(text after '-') for "auto-k"
    if (r.is_string() && r.get<std::string>().find("auto") != std::string::npos) {
      const std::string s = r.get<std::string>();
      c.radius_auto = true;
      if (s == "auto") c.radius = 1.0;
      else if (s.rfind("auto-", 0) == 0) c.radius = number(nlohmann::json(s.substr(5)), "radius");
      else throw std::runtime_error("circle_rope.radius: expected a number, \"auto\" or \"auto-k\", got " + r.dump());
    } else {
      c.radius = number(r, "radius");
    }
  }
  if (j.contains("method")) {
    const std::string m = j["method"].is_string() ? j["method"].get<std::string>() : j["method"].dump();
    if (m == "circle") c.method = Method::Circle;
    else if (m == "no_circle") c.method = Method::NoCircle;
    else throw std::runtime_error("circle_rope.method: invalid circle projection method '" + m + "' (circle, no_circle)");
  }
  if (j.contains("move_to_origin")) c.move_to_origin = truthy(j["move_to_origin"]);
  if (j.contains("move_to_positive") && truthy(j["move_to_positive"])) {
    const auto& m = j["move_to_positive"];
    c.move_to_positive = true;
    if (m.is_string() && m.get<std::string>() == "auto") c.move_to_positive_auto = true;
    else c.move_to_positive_offset = number(m, "move_to_positive");
  }
  if (j.contains("dff_rate") && truthy(j["dff_rate"])) c.dff_rate = number(j["dff_rate"], "dff_rate");
  if (j.contains("dff_convention")) {
    const std::string d = j["dff_convention"].get<std::string>();
    if (d == "head") c.dff_convention = DffConvention::Head;
    else if (d == "legacy") c.dff_convention = DffConvention::Legacy;
    else throw std::runtime_error("circle_rope.dff_convention: expected \"head\" or \"legacy\", got '" + d + "'");
  }
  if (j.contains("video")) {
    const std::string v = j["video"].get<std::string>();
    if (v == "per_frame") c.video = VideoFrames::PerFrame;
    else if (v == "official") c.video = VideoFrames::Official;
    else throw std::runtime_error("circle_rope.video: expected \"per_frame\" or \"official\", got '" + v + "'");
  }
  return c;
}

rope::TextRope parse_text_rope(const std::string& spec) {
  rope::TextRope r;
  r.spec = spec;
  if (spec.empty() || spec == "mrope") return r;
  nlohmann::json j;
  if (spec == "circle") {
    j = {{"alpha", 0.5}, {"radius", 10}, {"method", "circle"}, {"move_to_origin", true}, {"AGE_mode", "strategy_4"}};
  } else if (spec.rfind("circle:", 0) == 0) {
    j = nlohmann::json::parse(spec.substr(7), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) throw std::runtime_error("--rope " + spec + ": the text after 'circle:' is not valid JSON");
  } else {
    throw std::runtime_error("--rope: unknown spec '" + spec + "' (mrope, circle, circle:{JSON})");
  }
  r.kind = rope::TextRope::Kind::Circle;
  r.circle = circle_config_from_json(j);
  if (j.contains("AGE_mode")) {
    r.age_strategy = j["AGE_mode"].get<std::string>();
    if (r.age_strategy != "all" && r.age_strategy != "strategy_2" && r.age_strategy != "strategy_3" &&
        r.age_strategy != "strategy_4") {
      throw std::runtime_error("--rope: unknown AGE_mode '" + r.age_strategy + "' (all, strategy_2, strategy_3, strategy_4)");
    }
  }
  if (j.contains("age_decode")) {
    const std::string d = j["age_decode"].get<std::string>();
    if (d != "per_source" && d != "parity") throw std::runtime_error("--rope: age_decode must be per_source or parity, got '" + d + "'");
    r.parity_decode = d == "parity";
  }
  return r;
}

}  // namespace qvl
