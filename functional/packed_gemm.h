// MKL's packed-weight GEMM for float32 on the CPU (qvl::packed), used by the text fast path
// (TextConfig::fast_packed). x @ weight^T (+ bias), as at::linear computes it, but with op(B) = weight^T
// packed once, at load time, into MKL's internal panel layout (cblas_sgemm_pack); each call then runs
// cblas_sgemm_compute, which skips the repacking of the whole weight that every sgemm call does. Same
// products, another blocking: results differ from at::linear at float32 rounding level.
//
// Measured (2 threads, quiet machine, medians; each 7B-size projection timed alone, and the four together in
// bench/bench_text_fast.cpp): 512 rows take 0.80-0.91x the time of at::linear (gate_up 402 vs 504 ms, down
// 203 vs 222, qkv 49 vs 56, o_proj 39 vs 43), 4 to 32 rows 0.55-0.75x (gate_up at 8 rows: 30 vs 58 ms), but
// 1 and 2 rows (decode) 1.05-1.5x: hence kMinRows, below which callers keep at::linear on the plain weight.
// MKL sizes the packed buffer by n and k alone and computes correctly for any m (checked against at::linear
// for 1 to 512 rows), so one packed copy serves every prompt length.
//
// Reached through the cblas symbols that the PyTorch wheel's libtorch_cpu exports (MKL is linked into it),
// declared as weak references: with a LibTorch that does not export them, available() is false and pack()
// throws; nothing else changes.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace qvl::packed {

// Inputs with fewer rows than this (the product of all but the last dim) are better served by at::linear.
constexpr int64_t kMinRows = 4;

// Whether MKL's packed GEMM can be called (the symbols are present).
bool available();

// The packed form of weight [N, K] (float32, CPU): an opaque uint8 tensor, a 64-byte header (N, K and the
// address the buffer was packed at) then MKL's buffer (about 1.07x the weight's bytes for the 7B shapes).
// MKL's buffer must not move (its metadata depends on its address): linear() refuses a copy of the tensor
// (clone, to(), a save and load) with an error, rather than computing garbage.
at::Tensor pack(const at::Tensor& weight);

// x [..., K] float32 CPU -> [..., N] = x @ weight^T (+ bias [N] when defined). A 2-D x with unit stride in
// its last dim is read in place (any row stride, e.g. half of a [M, 2F] output); other layouts are made
// contiguous first. Errors name the expected and actual shapes, dtypes and devices.
at::Tensor linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias = {});

// N and K of a packed weight (the header), checking that it is one and has not moved.
std::pair<int64_t, int64_t> shape(const at::Tensor& packed);

}  // namespace qvl::packed
