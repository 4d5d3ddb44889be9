// Google Benchmark: N x N block RoPE in matrix form (functional/rope/block.h: matrix_exp per token and
// block, then a batched b x b matmul) against the 2 x 2 complex form (functional/rope/rope2d.h: angles,
// polar, complex multiply), on the same shapes: x [1, H, N, D] float32 on the CPU, positions of an n x n grid.
//
//   qvl_bench_rope_block [--benchmark_filter=...] [--benchmark_repetitions=5]
//
// "build+apply" times include making the rotations from the positions (what a model does per forward when
// positions change); "apply" times use precomputed tables. One intra-op thread, so numbers are comparable
// across machines with busy cores.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <vector>

#include "functional/rope/block.h"
#include "functional/rope/rope2d.h"

namespace {

using namespace qvl::rope;

struct Shape {
  int64_t heads, grid, dim;
};
Shape shape_of(const benchmark::State& st) { return {st.range(0), st.range(1), st.range(2)}; }

at::Tensor positions(int64_t n) {
  GridXY g = grid_xy(n, n);
  return at::stack({g.t_x, g.t_y}, 1);  // [n*n, 2] (x, y) = (column, row)
}

at::Tensor input(const Shape& s) {
  return at::randn({1, s.heads, s.grid * s.grid, s.dim}, at::make_generator<at::CPUGeneratorImpl>(0));
}

void set_counters(benchmark::State& st, const Shape& s) {
  st.counters["tokens"] = static_cast<double>(s.heads * s.grid * s.grid);
  st.SetItemsProcessed(st.iterations() * s.heads * s.grid * s.grid);
}

// 2x2 complex form, from positions: axial angles -> polar -> complex multiply.
void BM_Complex2x2_BuildApply(benchmark::State& st) {
  at::set_num_threads(1);
  const Shape s = shape_of(st);
  at::Tensor x = input(s), p = positions(s.grid);
  for (auto _ : st) {
    at::Tensor a = axial_angles(s.dim, p.select(1, 0), p.select(1, 1), 100.0);
    benchmark::DoNotOptimize(apply_pairs_complex(x, a));
  }
  set_counters(st, s);
}

// Block form, from positions: matrix_exp of sum_a p_a G_a per token and block -> block matmul.
void BM_BlockExp_BuildApply(benchmark::State& st) {
  at::set_num_threads(1);
  const Shape s = shape_of(st);
  const int64_t b = st.range(3);
  at::Tensor x = input(s), p = positions(s.grid);
  at::Tensor G = generators_axis_partition(s.dim, b, 2, 100.0);
  for (auto _ : st) benchmark::DoNotOptimize(apply_block_rope(x, block_rotations(G, p)));
  set_counters(st, s);
}

void BM_Complex2x2_Apply(benchmark::State& st) {
  at::set_num_threads(1);
  const Shape s = shape_of(st);
  at::Tensor x = input(s), p = positions(s.grid);
  at::Tensor a = axial_angles(s.dim, p.select(1, 0), p.select(1, 1), 100.0);
  for (auto _ : st) benchmark::DoNotOptimize(apply_pairs_complex(x, a));
  set_counters(st, s);
}

void BM_BlockExp_Apply(benchmark::State& st) {
  at::set_num_threads(1);
  const Shape s = shape_of(st);
  const int64_t b = st.range(3);
  at::Tensor x = input(s), p = positions(s.grid);
  at::Tensor blocks = block_rotations(generators_axis_partition(s.dim, b, 2, 100.0), p);
  for (auto _ : st) benchmark::DoNotOptimize(apply_block_rope(x, blocks));
  set_counters(st, s);
}

// The explicit dense D x D rotation-matrix form of rope2d (the reference, not a fast path).
void BM_DenseMatrix2x2_Apply(benchmark::State& st) {
  at::set_num_threads(1);
  const Shape s = shape_of(st);
  at::Tensor x = input(s), p = positions(s.grid);
  at::Tensor a = axial_angles(s.dim, p.select(1, 0), p.select(1, 1), 100.0);
  for (auto _ : st) benchmark::DoNotOptimize(apply_pairs_matrix(x, a));
  set_counters(st, s);
}

// {heads, grid side, head dim}: DeiT-S-like (6 heads, 14 x 14, 64) and a larger grid (12 heads, 32 x 32, 64).
void Shapes(benchmark::internal::Benchmark* b) {
  for (auto s : {std::vector<int64_t>{6, 14, 64}, std::vector<int64_t>{12, 32, 64}}) b->Args(s);
}
void ShapesWithBlock(benchmark::internal::Benchmark* b) {
  for (auto s : {std::vector<int64_t>{6, 14, 64}, std::vector<int64_t>{12, 32, 64}})
    for (int64_t blk : {2, 4, 8}) b->Args({s[0], s[1], s[2], blk});
}

BENCHMARK(BM_Complex2x2_BuildApply)->Apply(Shapes)->ArgNames({"H", "n", "D"})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BlockExp_BuildApply)->Apply(ShapesWithBlock)->ArgNames({"H", "n", "D", "b"})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Complex2x2_Apply)->Apply(Shapes)->ArgNames({"H", "n", "D"})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BlockExp_Apply)->Apply(ShapesWithBlock)->ArgNames({"H", "n", "D", "b"})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DenseMatrix2x2_Apply)->Apply(Shapes)->ArgNames({"H", "n", "D"})->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
