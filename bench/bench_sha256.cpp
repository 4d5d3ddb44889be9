// SHA-256 throughput: qvl's own Sha256 (converter/sha256.h; SHA-NI where the CPU has it) against OpenSSL's
// libcrypto (EVP, which picks the CPU's SHA extensions itself), on the same buffer, interleaved pair by pair
// (ours, OpenSSL, ours, OpenSSL, ...). Prints the CPU, each pair's GB/s and the median of the per-pair
// ratios (ours / OpenSSL) with their min-max. A benchmark, not a test.
//   qvl_bench_sha256 [MiB=256] [pairs=9]
#include <openssl/evp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "converter/sha256.h"

namespace {

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

std::string ours(const std::vector<unsigned char>& buf) {
  qvl::Sha256 s;
  // 64 MiB at a time, as qvl convert feeds it.
  for (size_t at = 0; at < buf.size(); at += size_t(64) << 20)
    s.update(buf.data() + at, std::min(buf.size() - at, size_t(64) << 20));
  return s.hex();
}

std::string openssl(const std::vector<unsigned char>& buf) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  for (size_t at = 0; at < buf.size(); at += size_t(64) << 20)
    EVP_DigestUpdate(ctx, buf.data() + at, std::min(buf.size() - at, size_t(64) << 20));
  unsigned char md[32];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx, md, &n);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  char b[3];
  for (unsigned i = 0; i < n; ++i) {
    std::snprintf(b, sizeof b, "%02x", md[i]);
    hex += b;
  }
  return hex;
}

template <class F>
double seconds(F&& f, std::string* digest) {
  const auto t0 = std::chrono::steady_clock::now();
  *digest = f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 256;
  const int pairs = argc > 2 ? std::atoi(argv[2]) : 9;
  std::vector<unsigned char> buf(mib << 20);
  uint32_t x = 12345;
  for (auto& c : buf) c = static_cast<unsigned char>((x = x * 1664525u + 1013904223u) >> 24);
  std::printf("CPU: %s; SHA-NI path in qvl's Sha256: %s; %s; %zu MiB, %d pairs (ours, OpenSSL)\n",
              cpu_model().c_str(), qvl::Sha256::hardware() ? "yes" : "no", OpenSSL_version(OPENSSL_VERSION), mib,
              pairs);
  std::vector<double> ratios;
  std::string a, b;
  for (int i = 0; i < pairs; ++i) {
    const double ta = seconds([&] { return ours(buf); }, &a);
    const double tb = seconds([&] { return openssl(buf); }, &b);
    if (a != b) {
      std::fprintf(stderr, "digests differ: ours %s, OpenSSL %s\n", a.c_str(), b.c_str());
      return 1;
    }
    const double gb = buf.size() / 1e9;
    ratios.push_back(tb / ta);  // > 1: ours faster
    std::printf("pair %d: ours %.2f GB/s, OpenSSL %.2f GB/s, ours/OpenSSL speed %.3f\n", i, gb / ta, gb / tb,
                ratios.back());
  }
  std::sort(ratios.begin(), ratios.end());
  std::printf("ours/OpenSSL speed: median %.3f (min %.3f, max %.3f) over %d pairs\n", ratios[ratios.size() / 2],
              ratios.front(), ratios.back(), pairs);
  return 0;
}
