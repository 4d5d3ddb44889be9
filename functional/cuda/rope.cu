// Fused RoPE apply (split-half pairs (k, k + D/2)) for q and k in one launch; see kernels.h for the maths.
//
// Grid: one block per `tpb` consecutive tokens of the flattened [B * L] token axis, so the grid scales with
// the number of tokens, never with sequences x max length. A block
//   1. computes (or loads) the float32 cos/sin of its tokens' D/2 pairs into shared memory once, and
//   2. walks (token, head of q then k, chunk of V pairs): each thread loads both halves of its V pairs,
//      rotates them in float32 and only then stores both halves (so in place is safe).
// The products and sums are __fmul_rn/__fadd_rn: no FMA contraction, so with float32 tables the result is
// bit-identical to the plain ATen path (x * cos) + (rotate_half(x) * sin) computed in float32.
#include <algorithm>
#include <string>

#include "functional/cuda/device_math.cuh"
#include "functional/cuda/kernels.h"

namespace qvl::cuda::detail {
namespace {

__device__ __forceinline__ float load_position(const RopeParams& p, int r, int b, int l) {
  const int64_t off = r * p.pos_sr + b * p.pos_sb + l * p.pos_sl;
  // position_ids.float(): int64 and int32 are rounded to nearest float32 (exact below 2^24)
  switch (p.pos_type) {
    case PosType::I64: return static_cast<float>(static_cast<const long long*>(p.pos)[off]);
    case PosType::I32: return static_cast<float>(static_cast<const int*>(p.pos)[off]);
    default: return static_cast<const float*>(p.pos)[off];
  }
}

template <typename T, int V>
__global__ void rope_kernel(const __grid_constant__ RopeParams p, int tpb, int chunks) {
  extern __shared__ float angles[];  // [tpb][4][half]: c1, s1, c2, s2
  const int half = static_cast<int>(p.half);
  const int L = static_cast<int>(p.L);
  const int n_tokens = static_cast<int>(p.B * p.L);
  const int tok0 = blockIdx.x * tpb;

  // 1. the angles of this block's tokens
  for (int i = threadIdx.x; i < tpb * half; i += blockDim.x) {
    const int j = i / half, k = i - j * half, n = tok0 + j;
    if (n >= n_tokens) break;
    const int b = n / L, l = n - b * L;
    float* a = angles + j * 4 * half;
    if (p.cos) {
      const float* c = p.cos + b * p.tab_sb + l * p.tab_sl;
      const float* s = p.sin + b * p.tab_sb + l * p.tab_sl;
      a[k] = c[k];
      a[half + k] = s[k];
      a[2 * half + k] = c[half + k];
      a[3 * half + k] = s[half + k];
    } else {
      // freqs = position_ids.float() * inv_freq (one float32 product), then cos() and sin()
      const float phi = __fmul_rn(load_position(p, p.row[k], b, l), p.freq[k]);
      float s, c;
      sincosf(phi, &s, &c);
      a[k] = c;
      a[half + k] = s;
      a[2 * half + k] = c;
      a[3 * half + k] = s;
    }
  }
  __syncthreads();

  // 2. rotate: item = (token j, head hh over q's then k's heads, chunk of V pairs)
  const int heads_q = static_cast<int>(p.t[0].heads);
  const int heads = heads_q + (p.n_tensors > 1 ? static_cast<int>(p.t[1].heads) : 0);
  const int per_token = heads * chunks;
  for (int i = threadIdx.x; i < tpb * per_token; i += blockDim.x) {
    const int j = i / per_token, rem = i - j * per_token, n = tok0 + j;
    if (n >= n_tokens) break;
    const int hh = rem / chunks, k0 = (rem - hh * chunks) * V;
    const int ti = hh < heads_q ? 0 : 1;
    const RopeTensor& t = p.t[ti];
    const int h = hh - ti * heads_q;
    const int b = n / L, l = n - b * L;
    const T* x = static_cast<const T*>(t.in) + b * t.in_sb + l * t.in_sl + h * t.in_sh;
    T* y = static_cast<T*>(t.out) + b * t.out_sb + l * t.out_sl + h * t.out_sh;
    const float* a = angles + j * 4 * half;
    // both halves are in registers before either is stored
    const Vec<T, V> x1 = *reinterpret_cast<const Vec<T, V>*>(x + k0);
    const Vec<T, V> x2 = *reinterpret_cast<const Vec<T, V>*>(x + half + k0);
    Vec<T, V> y1, y2;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const int k = k0 + e;
      const float u = Cvt<T>::load(x1.v[e]), w = Cvt<T>::load(x2.v[e]);
      // q_embed = (q * cos) + (rotate_half(q) * sin), rotate_half(q) = cat(-q2, q1)
      y1.v[e] = Cvt<T>::store(__fadd_rn(__fmul_rn(u, a[k]), __fmul_rn(-w, a[half + k])));
      y2.v[e] = Cvt<T>::store(__fadd_rn(__fmul_rn(w, a[2 * half + k]), __fmul_rn(u, a[3 * half + k])));
    }
    *reinterpret_cast<Vec<T, V>*>(y + k0) = y1;
    *reinterpret_cast<Vec<T, V>*>(y + half + k0) = y2;
  }
}

template <typename T>
std::string launch(const RopeParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int V = p.vectorized ? kVec : 1;
  const int chunks = static_cast<int>(p.half) / V;
  const int heads = static_cast<int>(p.t[0].heads + (p.n_tensors > 1 ? p.t[1].heads : 0));
  const int per_token = heads * chunks;
  // About 512 work items per block; the shared angle table bounds the tokens per block (48 KiB).
  const int smem_per_token = static_cast<int>(4 * p.half * sizeof(float));
  int tpb = per_token >= 512 ? 1 : 512 / per_token;
  tpb = std::max(1, std::min(tpb, (48 * 1024) / smem_per_token));
  const int64_t n_tokens = p.B * p.L;
  int threads = std::min(1024, ((tpb * per_token + 31) / 32) * 32);
  threads = std::max(threads, 32);
  const int64_t blocks = (n_tokens + tpb - 1) / tpb;
  const size_t smem = static_cast<size_t>(tpb) * smem_per_token;
  if (p.vectorized) {
    rope_kernel<T, kVec><<<static_cast<unsigned>(blocks), threads, smem, stream>>>(p, tpb, chunks);
  } else {
    rope_kernel<T, 1><<<static_cast<unsigned>(blocks), threads, smem, stream>>>(p, tpb, chunks);
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string("rope kernel launch: ") + cudaGetErrorString(err);
}

}  // namespace

std::string rope_launch(const RopeParams& p, void* stream) {
  if (p.B * p.L == 0) return {};
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::F32: return launch<float>(p, s);
    case DType::BF16: return launch<__nv_bfloat16>(p, s);
    case DType::F16: return launch<__half>(p, s);
  }
  return "rope_launch: unknown dtype";
}

bool kernels_built() { return true; }

int device_count(std::string* error) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (error) *error = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later runtime calls start clean
    return -1;
  }
  return n;
}

}  // namespace qvl::cuda::detail
