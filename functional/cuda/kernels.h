// Launchers of the hand-written CUDA kernels (rope.cu, rms_norm.cu), torch-free: raw pointers, element
// strides and plain enums, so the .cu translation units compile with nvcc alone (no ATen headers) and stay
// quick to build. functional/cuda/fused.cpp checks the tensors and fills these structs; nothing else calls
// them. Every launcher returns "" on success or the CUDA error text.
#pragma once

#include <cstdint>
#include <string>

namespace qvl::cuda::detail {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };
enum class PosType : int { I64 = 0, I32 = 1, F32 = 2 };

// Pairs per head (head_dim / 2) that the RoPE parameter block can describe: head_dim up to 512.
constexpr int kMaxRopeHalf = 256;

// One rotated tensor (q or k), logically [B, L, H, D] with element strides; the last dim is contiguous.
// `out` may equal `in` (in place): every thread loads both halves of its pairs before it stores either.
struct RopeTensor {
  const void* in = nullptr;
  void* out = nullptr;
  int64_t heads = 0;
  int64_t in_sb = 0, in_sl = 0, in_sh = 0;
  int64_t out_sb = 0, out_sl = 0, out_sh = 0;
};

// y[k]        = x[k] * c1[k] - x[k + half] * s1[k]
// y[k + half] = x[k + half] * c2[k] + x[k] * s2[k]          k < half, all in float32, one rounding at the store
// Angles come from float32 tables (c1 = cos[k], c2 = cos[k + half], s likewise), or from positions:
// c1 = c2 = cos(pos[row[k]] * freq[k]), s1 = s2 = sin(...), pos[r, b, l] of type pos_type.
struct RopeParams {
  DType dtype = DType::F32;  // of every q/k in/out
  int64_t B = 0, L = 0, half = 0;
  RopeTensor t[2];
  int n_tensors = 0;  // 1 (q only) or 2 (q and k)
  // Table angles: cos/sin [B or 1, L, 2 * half] float32, batch stride (0 when broadcast) and token stride.
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t tab_sb = 0, tab_sl = 0;
  // Position angles (used when cos is null): pos [R, B, L] with element strides.
  const void* pos = nullptr;
  PosType pos_type = PosType::I64;
  int64_t pos_sr = 0, pos_sb = 0, pos_sl = 0;
  float freq[kMaxRopeHalf] = {};
  uint8_t row[kMaxRopeHalf] = {};
  bool vectorized = false;  // 16-byte loads/stores: the caller checked every pointer, stride and half
};

std::string rope_launch(const RopeParams& p, void* stream);

// out[r, :] = w * cast_to_dtype(x[r, :] * rsqrt(mean(x[r, :]^2) + eps))     (mean and rsqrt in float32)
// x, w and out share `dtype`; rows are `x_row_stride` / `out_row_stride` elements apart, D contiguous.
struct RmsParams {
  DType dtype = DType::F32;
  const void* x = nullptr;
  const void* w = nullptr;
  void* out = nullptr;
  int64_t rows = 0, D = 0, x_row_stride = 0, out_row_stride = 0;
  float eps = 0.f;
  bool vectorized = false;  // 16-byte accesses allowed (pointers, strides and D checked by the caller)
};

std::string rms_norm_launch(const RmsParams& p, void* stream);

// Devices the CUDA runtime sees; on failure -1 and the runtime's error text in `error`.
int device_count(std::string* error);

// true in rope.cu; false in no_kernels.cpp, which a QVL_CUDA=OFF build links instead (every launcher there
// returns an error saying so).
bool kernels_built();

}  // namespace qvl::cuda::detail
