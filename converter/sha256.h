// SHA-256, for recording which checkpoint shards a weights file came from: OpenSSL's libcrypto (EVP), which
// uses the CPU's SHA extensions where it has them. bench/bench_sha256.cpp measured it against the hand-written
// SHA-NI code qvl had before (README, "Converting checkpoints").
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace qvl {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t n);
  std::string hex();  // finalises; call once

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

}  // namespace qvl
