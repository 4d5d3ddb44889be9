// SHA-256 (FIPS 180-4), for recording which checkpoint shards a weights file came from. Uses the x86 SHA
// extensions (SHA-NI, ~1.7 GB/s) when the CPU has them, else portable code (~0.3 GB/s); same digests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace qvl {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  std::string hex();  // finalises; call once
  static bool hardware();  // whether this CPU takes the SHA-NI path
  // For tests: force the portable path (false) or restore the default (true).
  static void allow_hardware(bool allow);

 private:
  void block(const uint8_t* p);
  void blocks(const uint8_t* p, size_t n);  // n whole 64-byte blocks
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

}  // namespace qvl
