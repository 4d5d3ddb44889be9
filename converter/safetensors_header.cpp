#include "converter/safetensors_header.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

namespace qvl {
namespace {

using json = nlohmann::json;

// Every dtype of the safetensors format that qvl reads. FP8 is read as such (torch kFloat8_e4m3fn,
// kFloat8_e5m2).
constexpr SafetensorsDtype kDtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},     {"I32", 4},
    {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

std::runtime_error err(const std::string& msg) {
  return std::runtime_error(msg);
}

// A JSON integer in [0, 2^63), or an error naming `what`.
uint64_t non_negative(const json& v, const std::string& what) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw err(what + " " + std::to_string(u) + " is too large");
    return u;
  }
  if (v.is_number_integer()) throw err(what + " " + std::to_string(v.get<int64_t>()) + " is negative");
  throw err(what + " must be an integer, got " + (v.is_number() ? v.dump() : std::string(v.type_name())));
}

}  // namespace

const SafetensorsDtype* find_safetensors_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

std::string supported_safetensors_dtypes() {
  std::string s;
  for (const auto& d : kDtypes) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* file, uint64_t size, const std::string& where) {
  SafetensorsHeader h;
  if (size < 8) {
    throw err(where + ": truncated: " + std::to_string(size) + " bytes, less than the 8-byte header length");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file[i];
  if (n > SafetensorsHeader::kMaxHeaderBytes) {
    throw err(where + ": header length " + std::to_string(n) + " exceeds the 100 MB limit");
  }
  if (n > size - 8) {
    throw err(where + ": header length " + std::to_string(n) + " runs past the end of the file (" +
              std::to_string(size) + " bytes): truncated?");
  }
  h.header_bytes = n;
  h.data_start = 8 + n;
  h.data_bytes = size - h.data_start;

  // Parse with a guard: bounded nesting, and no top-level name twice (JSON objects would keep the last).
  std::set<std::string> names;
  json::parser_callback_t guard = [&](int depth, json::parse_event_t ev, json& parsed) {
    if ((ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) &&
        depth >= SafetensorsHeader::kMaxDepth) {
      throw err(where + ": the JSON header nests deeper than " +
                std::to_string(SafetensorsHeader::kMaxDepth) + " levels");
    }
    if (ev == json::parse_event_t::key && depth == 1 && !names.insert(parsed.get<std::string>()).second) {
      throw err(where + ": the JSON header names '" + parsed.get<std::string>() + "' twice");
    }
    return true;
  };
  json header;
  try {
    const char* text = reinterpret_cast<const char*>(file + 8);
    header = json::parse(text, text + n, guard);
  } catch (const json::exception& e) {
    throw err(where + ": malformed JSON header (" + std::string(e.what()) + ")");
  }
  if (!header.is_object()) throw err(where + ": the header must be a JSON object, got " + header.type_name());

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object())
        throw err(where + ": __metadata__ must be an object of strings, got " + e.type_name());
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m->is_string()) throw err(where + ": __metadata__['" + m.key() + "'] is not a string");
        h.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const std::string tw = where + ": tensor '" + name + "'";
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets")) {
      throw err(tw + ": the entry needs dtype, shape and data_offsets");
    }
    const json &jd = e["dtype"], &js = e["shape"], &jo = e["data_offsets"];
    if (!jd.is_string()) throw err(tw + ": dtype must be a string, got " + jd.type_name());
    if (!js.is_array()) throw err(tw + ": shape must be an array, got " + js.type_name());
    if (!jo.is_array() || jo.size() != 2) throw err(tw + ": data_offsets must be [begin, end]");

    SafetensorsHeaderEntry en;
    en.name = name;
    en.dtype = jd.get<std::string>();
    const SafetensorsDtype* dt = find_safetensors_dtype(en.dtype);
    if (!dt)
      throw err(tw + ": unknown dtype '" + en.dtype + "' (supported: " + supported_safetensors_dtypes() +
                ")");
    en.itemsize = dt->itemsize;
    if (js.size() > SafetensorsHeader::kMaxRank) {
      throw err(tw + ": rank " + std::to_string(js.size()) + " exceeds " +
                std::to_string(SafetensorsHeader::kMaxRank));
    }
    // numel saturates at 2^64-1 on overflow; such a shape can never match the offsets below.
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : js) {
      const uint64_t dim = non_negative(d, tw + ": shape entry");
      if (dim && numel > std::numeric_limits<uint64_t>::max() / dim) overflow = true;
      numel = overflow ? std::numeric_limits<uint64_t>::max() : numel * dim;
      en.shape.push_back(static_cast<int64_t>(dim));
    }
    en.numel = numel;
    en.begin = non_negative(jo[0], tw + ": data_offsets begin");
    en.end = non_negative(jo[1], tw + ": data_offsets end");
    if (en.begin > en.end) {
      throw err(tw + ": data_offsets [" + std::to_string(en.begin) + ", " + std::to_string(en.end) +
                "] are reversed");
    }
    if (en.end > h.data_bytes) {
      throw err(tw + ": data_offsets end " + std::to_string(en.end) + " is beyond the data area (" +
                std::to_string(h.data_bytes) + " bytes): truncated or corrupt");
    }
    const uint64_t span = en.end - en.begin;
    if (overflow || numel > std::numeric_limits<uint64_t>::max() / en.itemsize ||
        numel * en.itemsize != span) {
      throw err(tw + ": " + en.dtype + " of shape " + js.dump() + " needs " +
                (overflow || numel > std::numeric_limits<uint64_t>::max() / en.itemsize
                     ? std::string("more than 2^64")
                     : std::to_string(numel * en.itemsize)) +
                " bytes but data_offsets span " + std::to_string(span));
    }
    h.entries.push_back(std::move(en));
  }

  std::sort(h.entries.begin(), h.entries.end(),
            [](const SafetensorsHeaderEntry& a, const SafetensorsHeaderEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  // The reference library's rule: sorted by offset, the tensors tile the data area exactly, from 0 to its
  // end. Bytes that no tensor accounts for (a gap between two tensors, or after the last one) make the file a
  // polyglot, so they are refused like overlaps. Empty tensors ([k, k]) fit anywhere on a boundary.
  uint64_t covered = 0;  // the data area is covered contiguously up to here
  const SafetensorsHeaderEntry* prev = nullptr;
  for (const auto& e : h.entries) {
    if (e.begin < covered) {
      throw err(where + ": tensors '" + prev->name + "' [" + std::to_string(prev->begin) + ", " +
                std::to_string(prev->end) + ") and '" + e.name + "' [" + std::to_string(e.begin) + ", " +
                std::to_string(e.end) + ") overlap");
    }
    if (e.begin > covered) {
      throw err(where + ": tensor '" + e.name + "' starts at data offset " + std::to_string(e.begin) +
                ", but " + (prev ? "tensor '" + prev->name + "' ends at " : std::string("the data area starts at ")) +
                std::to_string(covered) + ": " + std::to_string(e.begin - covered) +
                " bytes in between belong to no tensor (the safetensors library refuses such a gap)");
    }
    covered = e.end;
    prev = &e;
  }
  if (covered != h.data_bytes) {
    throw err(where + ": " + std::to_string(h.data_bytes - covered) + " bytes after the last tensor" +
              (prev ? " '" + prev->name + "' (which ends at data offset " + std::to_string(covered) + ")"
                    : std::string(" (the header names none)")) +
              " belong to no tensor: the data area is " + std::to_string(h.data_bytes) +
              " bytes (the safetensors library refuses a file not fully covered)");
  }
  return h;
}

}  // namespace qvl
