// Fused CUDA paths (qvl::cuda): fast versions of functional/ steps that compute the same thing as the plain
// ATen path, which stays the reference (docs/design.md §2). The model code reaches them by its usual function
// names when the tensors are on a CUDA device and `fused` is asked for (VisionConfig::fused,
// TextConfig::fused, or the `fused` argument of rms_norm and the rotary appliers); on the CPU, or without
// the flag, nothing here runs. Every path has a test against the plain one (tests/cuda) and a benchmark
// (bench/bench_cuda.py).
//
//   rope_apply        one kernel family for 1-D RoPE, chunked M-RoPE (Qwen2/2.5-VL), interleaved M-RoPE
//                     (Qwen3-VL), the vision 2-D rotary and Circle-RoPE (float positions); q and k in
//                     bf16/fp16/fp32, strided views allowed, math in float32, in place or out of place.
//   rms_norm          Qwen2_5_VLRMSNorm with float32 accumulation.
//   varlen_attention  block-diagonal attention over cu_seqlens in one call (ATen's varlen flash or
//                     memory-efficient kernel) instead of a loop over windows.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qvl::cuda {

// Whether the hand-written kernels (rope.cu, rms_norm.cu) were compiled in (CMake option QVL_CUDA).
bool kernels_built();

// "" when a CUDA device can run the fused paths; otherwise why not, starting with "no CUDA device: " when
// there is none. The CUDA tests skip with this text and `qvl check --device cuda` fails with it.
std::string unavailable_reason();

// --- RoPE -------------------------------------------------------------------------------------------------
// Where the rotation angles of a rope_apply call come from. Pairs are split-half: (k, k + D/2), k < D/2.
//   tables:    cos, sin [B or 1, L, D] (float32; other float dtypes are upcast first, exactly), angle pair k
//              uses cos[k], sin[k] for the first half and cos[k + D/2], sin[k + D/2] for the second;
//   positions: pos [R, B, L] (int64, int32 or float32; stride 0 broadcasts are fine) with, per pair k, the
//              row row[k] < R and the frequency freq[k]: phi = float(pos[row[k]]) * freq[k], in float32.
// Build them with the helpers below rather than by hand.
struct RopeAngles {
  at::Tensor cos, sin;
  at::Tensor positions;
  std::vector<float> freq;
  std::vector<uint8_t> row;
};

// Float32 cos/sin tables as the rotary modules return them: vision [S, Dh] or text [B, T, Dh].
RopeAngles rope_tables(const at::Tensor& cos, const at::Tensor& sin);
// 1-D RoPE: positions [B, L]; inv_freq [D/2] (rope_inv_freq(theta, D)).
RopeAngles rope_1d(const at::Tensor& positions, const at::Tensor& inv_freq);
// Qwen2/2.5-VL M-RoPE: positions [3, B, L]; chunk i of mrope_section takes row i % 3 (text::rotary).
RopeAngles rope_mrope_chunked(const at::Tensor& positions, const at::Tensor& inv_freq,
                              const std::vector<int64_t>& mrope_section);
// Qwen3-VL interleaved M-RoPE: pair k < 3 * section[1] with k % 3 == 1 takes H, k < 3 * section[2] with
// k % 3 == 2 takes W, every other pair T (apply_interleaved_mrope / recomposition_frequencies).
RopeAngles rope_mrope_interleaved(const at::Tensor& positions, const at::Tensor& inv_freq,
                                  const std::vector<int64_t>& mrope_section);
// The Qwen2.5-VL vision 2-D rotary: position_ids [S, 2] (h, w); inv_freq [Dh/4] (rope_inv_freq(theta, Dh/2)).
// Pair k < Dh/4 uses h * inv_freq[k], pair k >= Dh/4 uses w * inv_freq[k - Dh/4] (vision::rotary).
RopeAngles rope_vision_2d(const at::Tensor& position_ids, const at::Tensor& inv_freq);
// Circle-RoPE: float32 positions [3, B, L] (fractional, possibly negative) with the chunked section map.
RopeAngles rope_circle(const at::Tensor& positions, const at::Tensor& inv_freq,
                       const std::vector<int64_t>& mrope_section);

// The row of each pair (host-side, no GPU needed): length sum(section) (chunked) / half (interleaved).
std::vector<uint8_t> mrope_chunked_rows(const std::vector<int64_t>& mrope_section);
std::vector<uint8_t> mrope_interleaved_rows(const std::vector<int64_t>& mrope_section, int64_t half);

// Rotates q [B, L, Hq, D] and k [B, L, Hk, D] (k may be undefined) on a CUDA device. q and k share one
// float dtype (bf16, fp16, fp32); any strides on the B, L and head dims (e.g. views of a fused qkv), the
// last dim contiguous. The math runs in float32 and each output rounds once to the input dtype.
//   in_place = false: returns new contiguous tensors; true: writes into q and k and returns them.
std::pair<at::Tensor, at::Tensor> rope_apply(const at::Tensor& q, const at::Tensor& k, const RopeAngles& angles,
                                             bool in_place = false);

// --- RMSNorm ----------------------------------------------------------------------------------------------
// Qwen2_5_VLRMSNorm on a CUDA x [..., D] with weight [D] of x's dtype: out = weight * (x.float() *
// rsqrt(mean(x.float()^2) + eps)).to(x.dtype). Rows may be strided (the last dim contiguous).
// Returns an undefined tensor for what the kernel does not cover (weight dtype != x dtype, a non-float
// dtype), so that the caller runs the plain path.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// --- varlen attention -------------------------------------------------------------------------------------
enum class AttentionBackend { None, Flash, MemoryEfficient };
const char* backend_name(AttentionBackend b);

// softmax(q k^T * scale) v within each segment [cu[i], cu[i+1]) of cu_seqlens, for every head, in one call.
//   q, k, v     [S, H, Dh] on a CUDA device, one dtype; last dim contiguous (views of a fused qkv are fine)
//   cu_seqlens  [N+1] integer, 0 .. S (any device)
//   out         [S, H, Dh] in q's dtype, or undefined when neither ATen kernel takes these inputs: the
//               caller then runs its plain loop. `used` reports the backend that ran.
// bf16/fp16 use flash attention (head_dim a multiple of 8, at most 256); float32, and what flash refuses,
// use the memory-efficient kernel. Both accumulate in float32; flash rounds the probabilities to the input
// dtype before the product with v, as HF's bf16 eager path rounds them too.
at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& cu_seqlens, double scale, AttentionBackend* used = nullptr);

}  // namespace qvl::cuda
