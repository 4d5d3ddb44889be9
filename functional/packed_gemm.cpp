#include "functional/packed_gemm.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "functional/weights.h"
#include "functional/linear.h"

// MKL's CBLAS packed-GEMM entry points (LP64: MKL_INT is int; the enums are ints), as weak references: they
// resolve to the definitions libtorch_cpu exports, or stay null where it exports none.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace qvl::packed {

namespace {
// mkl_cblas.h values
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kBMatrix = 162, kPacked = 151;
constexpr int64_t kHeader = 64;  // bytes before MKL's buffer (keeps it 64-byte aligned, as ATen allocates)
constexpr int64_t kMagic = 0x716b76706163ll;  // "qvlpac"-ish tag

struct Header {
  int64_t magic, n, k;
  uint64_t address;  // of MKL's buffer when it was packed
};

// The packing and compute calls take int sizes.
int to_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= INT32_MAX, "packed GEMM: ", what, " ", v, " does not fit an int");
  return static_cast<int>(v);
}

void check_float_cpu(const at::Tensor& t, const char* fn, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), "packed::", fn, ": ", what,
              " must be float32 on the CPU, got ", t.scalar_type(), " on ", t.device());
}
}  // namespace

bool available() {
  return cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute;
}

at::Tensor pack(const at::Tensor& weight) {
  TORCH_CHECK(available(),
              "packed::pack: MKL's packed GEMM is not available (this LibTorch exports no "
              "cblas_sgemm_pack / cblas_sgemm_compute)");
  TORCH_CHECK(weight.dim() == 2, "packed::pack: weight must be [N, K], got ", weight.sizes());
  check_float_cpu(weight, "pack", "weight");
  const at::Tensor w = weight.contiguous();
  const int n = to_int(w.size(0), "N"), k = to_int(w.size(1), "K");
  const size_t bytes =
      cblas_sgemm_pack_get_size(kBMatrix, /*m=*/512, n, k);  // the size depends on n and k only
  at::Tensor out = at::empty({kHeader + static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte));
  uint8_t* base = out.data_ptr<uint8_t>();
  float* buf = reinterpret_cast<float*>(base + kHeader);
  // op(B) = weight^T: B is K x N, stored as the row-major [N, K] weight, i.e. transposed
  cblas_sgemm_pack(kRowMajor, kBMatrix, kTrans, /*m=*/512, n, k, 1.0f, w.data_ptr<float>(), k, buf);
  const Header h{kMagic, w.size(0), w.size(1), reinterpret_cast<uint64_t>(buf)};
  std::memcpy(base, &h, sizeof(h));
  return out;
}

std::pair<int64_t, int64_t> shape(const at::Tensor& packed) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 1 && packed.is_contiguous() &&
                  packed.numel() >= kHeader && packed.device().is_cpu(),
              "packed: not a packed weight (expected a contiguous uint8 CPU tensor of at least ", kHeader,
              " bytes from packed::pack), got ", packed.scalar_type(), " ", packed.sizes(), " on ", packed.device(),
              packed.is_contiguous() ? "" : " (not contiguous)");
  Header h;
  std::memcpy(&h, packed.data_ptr<uint8_t>(), sizeof(h));
  TORCH_CHECK(h.magic == kMagic, "packed: not a packed weight (no header from packed::pack)");
  TORCH_CHECK(h.address == reinterpret_cast<uint64_t>(packed.data_ptr<uint8_t>() + kHeader),
              "packed: this packed weight was copied or moved after packing (MKL's buffer is only valid "
              "where it was packed); pack the weight again");
  return {h.n, h.k};
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias) {
  const auto [N, K] = shape(packed);
  check_float_cpu(x, "linear", "x");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "packed::linear: x must be [..., ", K, "], got ", x.sizes());
  // 2-D with a unit last stride: read in place with its row stride; otherwise a contiguous [M, K] copy/view
  at::Tensor a = x.dim() == 2 && x.stride(1) == 1 && x.stride(0) >= K ? x : x.contiguous().view({-1, K});
  const int64_t M = a.size(0);
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = N;
  at::Tensor c = at::empty({M, N}, x.options());
  float beta = 0.0f;
  if (bias.defined()) {
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == N, "packed::linear: bias must be [", N, "], got ", bias.sizes());
    check_float_cpu(bias, "linear", "bias");
    c.copy_(bias.unsqueeze(0).expand({M, N}));  // C = bias, then C = x B + 1 * C (as addmm)
    beta = 1.0f;
  }
  if (M > 0) {
    cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, to_int(M, "M"), to_int(N, "N"), to_int(K, "K"),
                        a.data_ptr<float>(), to_int(a.stride(0), "lda"),
                        reinterpret_cast<const float*>(packed.data_ptr<uint8_t>() + kHeader),
                        to_int(N, "ldb"), beta, c.data_ptr<float>(), to_int(N, "ldc"));
  }
  return c.view(out_shape);
}

}  // namespace qvl::packed
