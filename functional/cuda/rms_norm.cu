// Fused RMSNorm, mirroring Qwen2_5_VLRMSNorm: one block per row.
//   var = mean(x.float()^2);  h = x.float() * rsqrt(var + eps);  out = w * h.to(dtype)
// The sum of squares is accumulated in float32 (per thread, then a warp-shuffle and shared-memory tree), so
// it differs from ATen's reduction order only in float32 rounding; the rest is element-wise and rounds
// exactly where HF's upcast does (h to the input dtype, then the weight product in that dtype).
#include <algorithm>
#include <string>

#include "functional/cuda/device_math.cuh"
#include "functional/cuda/kernels.h"

namespace qvl::cuda::detail {
namespace {

template <typename T, int V>
__global__ void rms_norm_kernel(const RmsParams p) {
  __shared__ float partial[32];
  __shared__ float inv_rms;
  const T* x = static_cast<const T*>(p.x) + static_cast<int64_t>(blockIdx.x) * p.x_row_stride;
  const T* w = static_cast<const T*>(p.w);
  T* y = static_cast<T*>(p.out) + static_cast<int64_t>(blockIdx.x) * p.out_row_stride;
  const int D = static_cast<int>(p.D);

  // variance = hidden_states.pow(2).mean(-1, keepdim=True)   (float32)
  float acc = 0.f;
  for (int i = threadIdx.x * V; i < D; i += blockDim.x * V) {
    const Vec<T, V> v = *reinterpret_cast<const Vec<T, V>*>(x + i);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float f = Cvt<T>::load(v.v[e]);
      acc += f * f;
    }
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = (blockDim.x + 31) / 32;
    float s = lane < n_warps ? partial[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    // hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    if (lane == 0) inv_rms = rsqrtf(__fadd_rn(s / static_cast<float>(D), p.eps));
  }
  __syncthreads();
  const float r = inv_rms;

  // self.weight * hidden_states.to(input_dtype)
  for (int i = threadIdx.x * V; i < D; i += blockDim.x * V) {
    const Vec<T, V> v = *reinterpret_cast<const Vec<T, V>*>(x + i);
    const Vec<T, V> g = *reinterpret_cast<const Vec<T, V>*>(w + i);
    Vec<T, V> out;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const T h = Cvt<T>::store(__fmul_rn(Cvt<T>::load(v.v[e]), r));
      out.v[e] = Cvt<T>::store(__fmul_rn(Cvt<T>::load(g.v[e]), Cvt<T>::load(h)));
    }
    *reinterpret_cast<Vec<T, V>*>(y + i) = out;
  }
}

template <typename T>
std::string launch(const RmsParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int V = p.vectorized ? kVec : 1;
  const int64_t items = (p.D + V - 1) / V;
  const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, ((items + 31) / 32) * 32)));
  if (p.vectorized) {
    rms_norm_kernel<T, kVec><<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(p);
  } else {
    rms_norm_kernel<T, 1><<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(p);
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string("rms_norm kernel launch: ") + cudaGetErrorString(err);
}

}  // namespace

std::string rms_norm_launch(const RmsParams& p, void* stream) {
  if (p.rows == 0) return {};
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::F32: return launch<float>(p, s);
    case DType::BF16: return launch<__nv_bfloat16>(p, s);
    case DType::F16: return launch<__half>(p, s);
  }
  return "rms_norm_launch: unknown dtype";
}

}  // namespace qvl::cuda::detail
