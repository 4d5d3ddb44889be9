// libFuzzer target: the safetensors header and offset parser (converter/safetensors_header.cpp, no LibTorch).
// Built with clang -fsanitize=fuzzer,address,undefined by tests/CMakeLists.txt; run by
// tests/fuzz/run_fuzz.sh.
//
// Any input must either be rejected with a std::runtime_error or yield a header whose every invariant holds;
// a violated invariant traps, so the fuzzer reports it like a crash.
#include <cstdint>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <string>

#include "converter/safetensors_header.h"

namespace {
void require(bool ok) {
  if (!ok) __builtin_trap();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qvl::SafetensorsHeader h;
  try {
    h = qvl::parse_safetensors_header(data, size, "fuzz");
  } catch (const std::runtime_error& e) {
    require(std::string(e.what()).rfind("fuzz: ", 0) == 0);  // every message names the file
    return 0;
  }
  require(h.header_bytes <= qvl::SafetensorsHeader::kMaxHeaderBytes);
  require(h.data_start == 8 + h.header_bytes && h.data_start <= size && h.data_bytes == size - h.data_start);
  std::set<std::string> names;
  uint64_t prev_end = 0;
  for (size_t i = 0; i < h.entries.size(); ++i) {
    const auto& e = h.entries[i];
    require(names.insert(e.name).second && e.name != "__metadata__");
    const qvl::SafetensorsDtype* dt = qvl::find_safetensors_dtype(e.dtype);
    require(dt != nullptr && dt->itemsize == e.itemsize);
    require(e.shape.size() <= qvl::SafetensorsHeader::kMaxRank);
    unsigned __int128 numel = 1;
    for (int64_t d : e.shape) {
      require(d >= 0);
      numel *= static_cast<uint64_t>(d);
      if (numel > (static_cast<unsigned __int128>(1) << 64)) numel = static_cast<unsigned __int128>(1) << 64;
    }
    require(numel == e.numel);
    require(e.begin <= e.end && e.end <= h.data_bytes);
    require(numel * e.itemsize == e.end - e.begin);
    require(e.begin == prev_end);  // sorted, contiguous: no overlap, no gap
    prev_end = e.end;
    // Every byte of the tensor is inside the input.
    require(h.data_start + e.end <= size);
  }
  require(prev_end == h.data_bytes);  // no bytes after the last tensor
  return 0;
}
