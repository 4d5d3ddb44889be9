// The safetensors header: parsing and validation, with no LibTorch (so the fuzz target can build it alone).
//
// File layout: an 8-byte little-endian header length N, N bytes of JSON, then the data area. The JSON is an
// object; each key but "__metadata__" names a tensor {"dtype": "BF16", "shape": [r, c], "data_offsets":
// [begin, end]}, offsets relative to the data area; "__metadata__" is an object of strings.
//
// Everything is checked before any tensor byte is touched, and every failure is one std::runtime_error whose
// text names the file and, where there is one, the tensor and the offending value:
//   - the file holds the 8 length bytes; N <= 100 MB; 8 + N <= the file size;
//   - the JSON is well formed, at most kMaxDepth levels deep, an object, with no name twice;
//   - each entry: a known dtype, a shape of non-negative integers (rank <= kMaxRank, each < 2^63),
//     data_offsets [begin, end] with begin <= end <= the data area's size, and
//     end - begin == numel x itemsize (no overflow);
//   - sorted by (begin, end), the entries tile the data area exactly: the first begins at 0, each begins
//     where the one before ends (no overlap, no gap), and the last ends at the end of the file. This is the
//     rule of the reference safetensors library ("invalid offset", "file not fully covered"): bytes that no
//     tensor accounts for would make the file a polyglot. Empty tensors ([k, k]) are fine on a boundary.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace qvl {

// A safetensors dtype: its name in the header and its size in bytes.
struct SafetensorsDtype {
  const char* name;
  uint32_t itemsize;
};
// nullptr when `name` is not a safetensors dtype that qvl reads.
const SafetensorsDtype* find_safetensors_dtype(const std::string& name);
std::string supported_safetensors_dtypes();  // "F64, F32, ..." for messages

struct SafetensorsHeaderEntry {
  std::string name;
  std::string dtype;  // "F32", "BF16", "F8_E4M3", ...
  uint32_t itemsize = 0;
  std::vector<int64_t> shape;
  uint64_t numel = 0;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data area; end - begin == numel * itemsize
};

struct SafetensorsHeader {
  static constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // 100 MB
  static constexpr int kMaxDepth = 8;     // real headers are 3 deep (root, entry, shape)
  static constexpr size_t kMaxRank = 32;  // HDF5's limit; real tensors have rank <= 5

  uint64_t header_bytes = 0;                    // N
  uint64_t data_start = 0;                      // 8 + N
  uint64_t data_bytes = 0;                      // file size - data_start
  std::vector<SafetensorsHeaderEntry> entries;  // sorted by begin; they tile [0, data_bytes)
  std::map<std::string, std::string> metadata;
};

// Parses and validates the header of a safetensors file whose `size` bytes start at `file` (the whole file,
// e.g. a memory mapping). `where` names the file in messages. Throws std::runtime_error.
SafetensorsHeader parse_safetensors_header(const uint8_t* file, uint64_t size, const std::string& where);

}  // namespace qvl
