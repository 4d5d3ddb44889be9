#include "converter/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace qvl {

struct SafetensorsFile::Mapping {
  void* addr = MAP_FAILED;
  size_t len = 0;
  ~Mapping() {
    if (addr != MAP_FAILED && len) munmap(addr, len);
  }
};

at::ScalarType safetensors_dtype(const std::string& d, const std::string& where) {
  if (d == "F64") return at::kDouble;
  if (d == "F32") return at::kFloat;
  if (d == "F16") return at::kHalf;
  if (d == "BF16") return at::kBFloat16;
  if (d == "I64") return at::kLong;
  if (d == "I32") return at::kInt;
  if (d == "I16") return at::kShort;
  if (d == "I8") return at::kChar;
  if (d == "U8") return at::kByte;
  if (d == "BOOL") return at::kBool;
  if (d == "F8_E4M3" || d == "F8_E5M2") {
    throw std::runtime_error(where + ": dtype " + d + " (FP8) is not supported; dequantise the checkpoint first");
  }
  throw std::runtime_error(where + ": unknown dtype '" + d +
                           "' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
}

std::string safetensors_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return "F64";
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: throw std::runtime_error(std::string("safetensors: cannot store dtype ") + c10::toString(t));
  }
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  const std::string where = "'" + path + "'";
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(where + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(where + ": not a regular file");
  }
  f.size_ = static_cast<uint64_t>(st.st_size);
  if (f.size_ < 8) {
    ::close(fd);
    throw std::runtime_error(where + ": truncated: " + std::to_string(f.size_) + " bytes, less than the 8-byte header length");
  }
  f.map_ = std::make_shared<Mapping>();
  f.map_->addr = mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (f.map_->addr == MAP_FAILED) throw std::runtime_error(where + ": mmap failed (" + std::strerror(errno) + ")");
  f.map_->len = f.size_;
  const uint8_t* base = static_cast<const uint8_t*>(f.map_->addr);

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > kMaxHeaderBytes) {
    throw std::runtime_error(where + ": header length " + std::to_string(n) + " exceeds the 100 MB limit");
  }
  if (8 + n > f.size_) {
    throw std::runtime_error(where + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                             std::to_string(f.size_) + " bytes): truncated?");
  }
  f.data_start_ = 8 + n;
  const uint64_t data_len = f.size_ - f.data_start_;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(base + 8 + n));
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(where + ": malformed JSON header (" + std::string(e.what()) + ")");
  }
  if (!header.is_object()) throw std::runtime_error(where + ": the header must be a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const std::string tw = where + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      if (!it->is_object()) throw std::runtime_error(where + ": __metadata__ must be an object of strings");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) throw std::runtime_error(where + ": __metadata__['" + m.key() + "'] is not a string");
        f.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const auto& e = *it;
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets")) {
      throw std::runtime_error(tw + ": entry needs dtype, shape and data_offsets");
    }
    if (!e["dtype"].is_string() || !e["shape"].is_array() || !e["data_offsets"].is_array() ||
        e["data_offsets"].size() != 2) {
      throw std::runtime_error(tw + ": malformed entry (dtype string, shape array, data_offsets [begin, end])");
    }
    SafetensorsEntry en;
    en.name = name;
    en.dtype = e["dtype"].get<std::string>();
    en.scalar_type = safetensors_dtype(en.dtype, tw);
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) {
        throw std::runtime_error(tw + ": shape entries must be non-negative integers");
      }
      const uint64_t dim = d.get<uint64_t>();
      if (dim && numel > UINT64_MAX / dim) throw std::runtime_error(tw + ": shape overflows");
      numel *= dim;
      en.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const auto& o : e["data_offsets"]) {
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0)) {
        throw std::runtime_error(tw + ": data_offsets must be non-negative integers");
      }
    }
    en.begin = e["data_offsets"][0].get<uint64_t>();
    en.end = e["data_offsets"][1].get<uint64_t>();
    if (en.begin > en.end) {
      throw std::runtime_error(tw + ": data_offsets [" + std::to_string(en.begin) + ", " + std::to_string(en.end) +
                               "] are reversed");
    }
    if (en.end > data_len) {
      throw std::runtime_error(tw + ": data_offsets end " + std::to_string(en.end) + " is beyond the data area (" +
                               std::to_string(data_len) + " bytes): truncated or corrupt");
    }
    const uint64_t item = at::elementSize(en.scalar_type);
    if (numel > UINT64_MAX / item || numel * item != en.end - en.begin) {
      throw std::runtime_error(tw + ": " + en.dtype + " shape needs " + std::to_string(numel * item) +
                               " bytes but data_offsets span " + std::to_string(en.end - en.begin));
    }
    f.entries_.push_back(std::move(en));
  }
  std::sort(f.entries_.begin(), f.entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < f.entries_.size(); ++i) {
    if (f.entries_[i].begin < f.entries_[i - 1].end) {
      throw std::runtime_error(where + ": tensors '" + f.entries_[i - 1].name + "' and '" + f.entries_[i].name +
                               "' overlap (bytes " + std::to_string(f.entries_[i].begin) + " < " +
                               std::to_string(f.entries_[i - 1].end) + ")");
    }
  }
  for (size_t i = 0; i < f.entries_.size(); ++i) f.by_name_[f.entries_[i].name] = i;
  return f;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) throw std::runtime_error("'" + path_ + "': no tensor '" + name + "'");
  return entries_[it->second];
}

at::Tensor SafetensorsFile::read(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.scalar_type));
  if (e.end > e.begin) {
    std::memcpy(t.data_ptr(), static_cast<const uint8_t*>(map_->addr) + data_start_ + e.begin, e.end - e.begin);
  }
  if (e.scalar_type == at::kBool) t = t.view(at::kByte).ne(0);
  return t;
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<at::Tensor> data;
  for (const auto& [name, t_in] : tensors) {
    at::Tensor t = t_in.detach().to(at::kCPU).contiguous();
    const uint64_t n = t.nbytes();
    header[name] = {{"dtype", safetensors_dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + n}}};
    offset += n;
    data.push_back(t);
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8) h += ' ';  // align the data area to 8 bytes, as the reference writer does
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error("'" + tmp + "': cannot create");
  bool ok = true;
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(h.size()) >> (8 * i));
  ok &= std::fwrite(len, 1, 8, f) == 8;
  ok &= std::fwrite(h.data(), 1, h.size(), f) == h.size();
  for (const auto& t : data) {
    at::Tensor bytes = t.scalar_type() == at::kBool ? t.to(at::kByte) : t;
    ok &= std::fwrite(bytes.data_ptr(), 1, bytes.nbytes(), f) == bytes.nbytes();
  }
  ok &= std::fclose(f) == 0;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("'" + path + "': write failed");
  }
}

}  // namespace qvl
