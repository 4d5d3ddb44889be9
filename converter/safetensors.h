// A validating, memory-mapped reader of one .safetensors file.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data. Every entry is
// checked before any tensor is read: a known dtype, a non-negative shape, offsets inside the data area,
// byte count == numel x itemsize, and no two entries overlapping. Errors name the file, the tensor and the
// offending value, so a truncated or hostile file gives one clear message and never a crash.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace qvl {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "BF16", ...
  at::ScalarType scalar_type;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data area
};

class SafetensorsFile {
 public:
  static constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // 100 MB

  static SafetensorsFile open(const std::string& path);
  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // in offset order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry& entry(const std::string& name) const;
  // A copy of the tensor (the mapping may be closed afterwards).
  at::Tensor read(const std::string& name) const;
  uint64_t file_size() const { return size_; }

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> map_;
  uint64_t size_ = 0, data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (in the given order) to a .safetensors file, atomically (temporary file + rename).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// safetensors dtype string <-> torch dtype; FP8 and unknown dtypes are errors naming the dtype.
at::ScalarType safetensors_dtype(const std::string& dtype, const std::string& where);
std::string safetensors_dtype_name(at::ScalarType t);

}  // namespace qvl
