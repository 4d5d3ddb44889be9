// A validating, memory-mapped reader of one .safetensors file, and a streaming writer.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data. The header is parsed
// and every entry checked by parse_safetensors_header (converter/safetensors_header.h, no LibTorch) before
// any tensor is read: a known dtype, a non-negative shape, offsets inside the data area, byte count ==
// numel x itemsize, and the entries tiling the data area exactly (no overlap, no gap, nothing after the
// last one: the reference library's rule). Errors name the file, the tensor and the offending
// value, so a truncated or hostile file gives one clear message and never a crash.
//
// Dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, and FP8 F8_E4M3 / F8_E5M2, read as torch's
// float8_e4m3fn / float8_e5m2 (the bits unchanged; FP8 checkpoints with scale tensors are refused later,
// by the shape check, because their scales are not Qwen2.5-VL weights).
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "converter/safetensors_header.h"

namespace qvl {

struct SafetensorsEntry : SafetensorsHeaderEntry {
  at::ScalarType scalar_type = at::kFloat;
};

class SafetensorsFile {
 public:
  static constexpr uint64_t kMaxHeaderBytes = SafetensorsHeader::kMaxHeaderBytes;  // 100 MB

  static SafetensorsFile open(const std::string& path);
  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // in offset order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return by_name_.count(name) > 0; }
  const SafetensorsEntry& entry(const std::string& name) const;
  // A copy of the tensor (the mapping may be closed afterwards).
  at::Tensor read(const std::string& name) const;
  // A tensor over the mapped bytes, no copy; it keeps the mapping alive. READ-ONLY: the pages are mapped
  // PROT_READ, so writing into it faults. BOOL entries are copied (bytes other than 0/1 become true).
  at::Tensor view(const SafetensorsEntry& e) const;
  // A copy of the entry in `dtype` (a cast when it differs: floating types only, as at::Tensor::to does),
  // made `chunk_bytes` of the file at a time, each chunk's mapped pages dropped from this process's resident
  // set once copied: the resident set grows by the output tensor only (for streamed loading).
  at::Tensor read_as(const SafetensorsEntry& e, at::ScalarType dtype, uint64_t chunk_bytes = 64ull << 20) const;
  // The raw bytes of an entry inside the mapping (end - begin of them).
  const uint8_t* bytes(const SafetensorsEntry& e) const;
  // Page-cache hints for streaming: read ahead an entry, and drop its pages from this process's resident
  // set once written, so the peak RSS stays near one tensor whatever the checkpoint size.
  void prefetch(const SafetensorsEntry& e) const;
  void release(const SafetensorsEntry& e) const;
  uint64_t file_size() const { return size_; }
  const uint8_t* file_bytes() const;                   // the whole mapped file (file_size() bytes)
  uint64_t data_start() const { return data_start_; }  // 8 + header length

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> map_;
  uint64_t size_ = 0, data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

// One planned tensor of a file being written.
struct SafetensorsPlanned {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
};

// Streams one .safetensors file to `path` (as given: the caller handles atomic renames): the header is
// computed from the plan and written first, then write() takes the tensors in plan order.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::string& path, const std::vector<SafetensorsPlanned>& plan,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  // The next planned tensor; its dtype and shape must match the plan.
  void write(const at::Tensor& t);
  // Or its raw bytes, written by the caller at the returned file offset of fd() (end_raw() when done).
  uint64_t begin_raw(at::ScalarType dtype, at::IntArrayRef shape, uint64_t* nbytes);
  void end_raw();
  int fd() const { return fd_; }
  // All planned tensors must have been written; `durable` fsyncs before closing.
  void finish(bool durable);
  uint64_t data_bytes() const { return data_bytes_; }

 private:
  void write_all(const void* p, size_t n);
  const SafetensorsPlanned& next_planned(at::ScalarType dtype, at::IntArrayRef shape) const;
  std::string path_;
  std::vector<SafetensorsPlanned> plan_;
  size_t next_ = 0;
  int fd_ = -1;
  uint64_t data_bytes_ = 0, pos_ = 0;  // pos_: where the next bytes go
};

// Writes tensors (in the given order) to a .safetensors file, atomically (temporary file + rename).
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// safetensors dtype string <-> torch dtype; unknown dtypes are errors naming the dtype and `where`.
at::ScalarType safetensors_dtype(const std::string& dtype, const std::string& where);
std::string safetensors_dtype_name(at::ScalarType t);

}  // namespace qvl
