// Vision-side RoPE variants, pure maths (no data): RoPE-ViT axial/mixed (rope2d.h), N x N block RoPE
// (block.h), Spiral RoPE (spiral.h). Golden checks against the official code are in
// tests/golden/test_rope_vit_golden.cpp.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "functional/rope/block.h"
#include "functional/rope/rope2d.h"
#include "functional/rope/spiral.h"
#include "functional/rope/vision_plug.h"
#include "functional/vision.h"

namespace qvl::rope {
namespace {

double max_abs(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}
double max_abs(const at::Tensor& a) { return a.to(at::kDouble).abs().max().item<double>(); }

at::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// Runs f, expects an exception whose text contains every needle.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
  } catch (const std::exception& e) {
    const std::string what = e.what();
    for (const auto& n : needles) EXPECT_NE(what.find(n), std::string::npos) << "'" << n << "' not in: " << what;
    return;
  }
  ADD_FAILURE() << "no exception thrown";
}

// ================================ RoPE-ViT (rope2d.h) ======================================================

TEST(Rope2d, AxialFrequenciesAreThetaToTheMinus4kOverD) {
  at::Tensor w = axial_frequencies(64, 100.0);
  ASSERT_EQ(w.sizes(), at::IntArrayRef({16}));
  ASSERT_EQ(w.scalar_type(), at::kFloat);
  for (int64_t k = 0; k < 16; ++k) {
    const double want = std::pow(100.0, -4.0 * k / 64.0);
    EXPECT_NEAR(w[k].item<double>(), want, 1e-6 * want) << "k = " << k;
  }
  // RoPE-ViT axial: d = 64, theta = 100 runs from 1 down to 100^(-15/16) ~ 0.0133
  EXPECT_NEAR(w[15].item<double>(), 0.013335, 1e-6);
}

TEST(Rope2d, GridIsColumnThenRowMajor) {
  GridXY g = grid_xy(4, 5);  // end_x = 4 columns, end_y = 5 rows
  ASSERT_EQ(g.t_x.numel(), 20);
  EXPECT_EQ(g.t_x[6].item<float>(), 2.0f);
  EXPECT_EQ(g.t_y[6].item<float>(), 1.0f);
  EXPECT_EQ(g.t_x[19].item<float>(), 3.0f);
  EXPECT_EQ(g.t_y[19].item<float>(), 4.0f);
}

TEST(Rope2d, AxialAnglesFirstQuarterColumnThenRow) {
  const int64_t D = 16;
  at::Tensor a = axial_grid_angles(D, 4, 5, 100.0);  // [20, 8]
  at::Tensor w = axial_frequencies(D, 100.0);
  ASSERT_EQ(a.sizes(), at::IntArrayRef({20, 8}));
  for (int64_t n = 0; n < 20; ++n) {
    for (int64_t c = 0; c < 4; ++c) {
      EXPECT_EQ(a[n][c].item<float>(), static_cast<float>(n % 4) * w[c].item<float>()) << n << "," << c;
      EXPECT_EQ(a[n][4 + c].item<float>(), static_cast<float>(n / 4) * w[c].item<float>()) << n << "," << c;
    }
  }
}

TEST(Rope2d, ComplexFormEqualsRotationMatrixForm) {
  auto gen = seeded(1);
  // Axial: one table [N, P] for every head.
  at::Tensor x = at::randn({2, 3, 196, 64}, gen);
  at::Tensor ax = axial_grid_angles(64, 14, 14, 100.0);
  at::Tensor yc = apply_pairs_complex(x, ax), ym = apply_pairs_matrix(x, ax);
  const double err_axial = max_abs(yc, ym) / max_abs(yc);
  EXPECT_LE(err_axial, 1e-6) << "axial: complex vs matrix, max |diff| / max |y|";
  // Mixed: per-head tables [H, N, P] from trained-like (random) frequencies.
  at::Tensor freqs = at::randn({2, 1, 3 * 32}, gen);
  GridXY g = grid_xy(14, 14);
  at::Tensor mx = mixed_angles(freqs, g.t_x, g.t_y, 3)[0];  // [3, 196, 32]
  yc = apply_pairs_complex(x, mx);
  ym = apply_pairs_matrix(x, mx);
  const double err_mixed = max_abs(yc, ym) / max_abs(yc);
  EXPECT_LE(err_mixed, 1e-6) << "mixed: complex vs matrix";
  std::printf("complex vs matrix form, max|diff|/max|y|: axial %.3g, mixed %.3g\n", err_axial, err_mixed);
}

TEST(Rope2d, RotationMatrixIsOrthogonalAndBlockDiagonal) {
  at::Tensor ang = at::rand({5, 8}, seeded(2)) * 20.0;
  at::Tensor R = pair_rotation_matrix(ang);  // [5, 16, 16]
  ASSERT_EQ(R.sizes(), at::IntArrayRef({5, 16, 16}));
  at::Tensor I = at::eye(16, at::kFloat).expand({5, 16, 16});
  EXPECT_LE(max_abs(at::matmul(R.transpose(-1, -2), R), I), 1e-6);
  // everything outside the 2x2 diagonal blocks is zero
  at::Tensor pair = at::arange(16, at::kLong).div(2, "floor");
  at::Tensor off = pair.unsqueeze(0).ne(pair.unsqueeze(1));
  EXPECT_EQ(R.masked_select(off.expand({5, 16, 16})).abs().max().item<float>(), 0.0f);
  // block c is [[cos, -sin], [sin, cos]] of angle c
  EXPECT_FLOAT_EQ(R[3][6][6].item<float>(), std::cos(ang[3][3].item<float>()));
  EXPECT_FLOAT_EQ(R[3][6][7].item<float>(), -std::sin(ang[3][3].item<float>()));
  EXPECT_FLOAT_EQ(R[3][7][6].item<float>(), std::sin(ang[3][3].item<float>()));
}

// apply_pairs_matrix applies the 2x2 blocks one pair at a time; the dense block-diagonal matrix must give the
// same numbers (both are rotation-matrix forms; only the work differs), for every accepted angle layout.
TEST(Rope2d, PairBlocksEqualTheDenseMatrix) {
  auto gen = seeded(3);
  at::Tensor ang = at::rand({7, 8}, gen) * 20.0;
  at::Tensor B = pair_rotation_blocks(ang);  // [7, 8, 2, 2]
  ASSERT_EQ(B.sizes(), at::IntArrayRef({7, 8, 2, 2}));
  EXPECT_TRUE(at::equal(B, pair_rotation_matrix(ang).view({7, 8, 2, 8, 2}).diagonal(0, 1, 3).permute({0, 3, 1, 2})));
  at::Tensor x = at::randn({2, 3, 7, 16}, gen);
  at::Tensor dense = at::matmul(pair_rotation_matrix(ang), x.unsqueeze(-1)).squeeze(-1);
  EXPECT_LE(max_abs(apply_pairs_matrix(x, ang), dense) / max_abs(dense), 1e-6);
  // one angle row for every token, and a lone vector
  at::Tensor row = ang[2];
  at::Tensor dense_row = at::matmul(pair_rotation_matrix(row), x.unsqueeze(-1)).squeeze(-1);
  EXPECT_LE(max_abs(apply_pairs_matrix(x, row), dense_row) / max_abs(dense_row), 1e-6);
  at::Tensor v = x[0][0][0];
  EXPECT_EQ(apply_pairs_matrix(v, row).sizes(), v.sizes());
  EXPECT_LE(max_abs(apply_pairs_matrix(v, row), dense_row[0][0][0]), 1e-6);
  // bf16 in, bf16 out (computed in float32)
  EXPECT_EQ(apply_pairs_matrix(x.to(at::kBFloat16), ang).scalar_type(), at::kBFloat16);
}

TEST(Rope2d, MixedInitRoundTripsAlpha) {
  at::Tensor alpha = at::rand({3, 4}, seeded(3)) * (2 * M_PI);
  at::Tensor f = mixed_init_frequencies(alpha, 16, 10.0);
  ASSERT_EQ(f.sizes(), at::IntArrayRef({2, 3, 4 * 8}));
  // pair 0 of head h in layer l: fx = cos alpha, fy = sin alpha; pair F (= 4): cos/sin of alpha + 90 deg
  EXPECT_NEAR(f[0][1][2 * 8].item<double>(), std::cos(alpha[1][2].item<double>()), 1e-6);
  EXPECT_NEAR(f[1][1][2 * 8].item<double>(), std::sin(alpha[1][2].item<double>()), 1e-6);
  EXPECT_NEAR(f[0][1][2 * 8 + 4].item<double>(), -std::sin(alpha[1][2].item<double>()), 1e-6);
  EXPECT_NEAR(f[1][1][2 * 8 + 4].item<double>(), std::cos(alpha[1][2].item<double>()), 1e-6);
  at::Tensor back = mixed_alpha_from_frequencies(f, 4);
  // angular difference, so 2 pi - eps and 0 count as equal
  at::Tensor d = at::remainder(back.to(at::kDouble) - alpha.to(at::kDouble) + M_PI, 2 * M_PI) - M_PI;
  EXPECT_LE(d.abs().max().item<double>(), 1e-6);
  EXPECT_LE(max_abs(mixed_init_frequencies(back, 16, 10.0), f), 1e-6);
}

TEST(Rope2d, MixedWithAlphaZeroAndTheta100EqualsAxial) {
  GridXY g = grid_xy(7, 5);
  at::Tensor f = mixed_init_frequencies(at::zeros({1, 2}), 32, 100.0);
  at::Tensor mx = mixed_angles(f, g.t_x, g.t_y, 2);  // [1, 2, 35, 16]
  at::Tensor ax = axial_angles(32, g.t_x, g.t_y, 100.0);
  // cos(pi/2) is -4.4e-8 in float32, not 0: y * 4.4e-8 leaks into the x pairs (RoPE-ViT's complex form has the same leak)
  EXPECT_LE(max_abs(mx[0][0], ax), 1e-6);
  EXPECT_LE(max_abs(mx[0][1], ax), 1e-6);
}

// R(p)^T R(q) = R(q - p) for rotation matrices built from angles linear in the position.
TEST(Rope2d, RelativePropertyOfAxialAndMixed) {
  auto gen = seeded(4);
  at::Tensor p = at::rand({64, 2}, gen) * 14, q = at::rand({64, 2}, gen) * 14;
  at::Tensor freqs = at::randn({2, 1, 2 * 32}, gen);  // trained-like mixed frequencies, 2 heads, D = 64
  auto mats = [&](const at::Tensor& pos, bool mixed) {
    at::Tensor a = mixed ? mixed_angles(freqs, pos.select(1, 0), pos.select(1, 1), 2)[0]
                         : axial_angles(64, pos.select(1, 0), pos.select(1, 1), 100.0);
    return pair_rotation_matrix(a);
  };
  for (bool mixed : {false, true}) {
    at::Tensor lhs = at::matmul(mats(p, mixed).transpose(-1, -2), mats(q, mixed));
    const double err = max_abs(lhs, mats(q - p, mixed));
    EXPECT_LE(err, 1e-5) << (mixed ? "mixed" : "axial");
  }
}

TEST(Rope2d, RotationPreservesEveryPairsNorm) {
  auto gen = seeded(5);
  at::Tensor x = at::randn({2, 3, 20, 16}, gen);
  at::Tensor y = apply_pairs_complex(x, axial_grid_angles(16, 4, 5, 100.0));
  at::Tensor nx = x.view({2, 3, 20, 8, 2}).pow(2).sum(-1), ny = y.view({2, 3, 20, 8, 2}).pow(2).sum(-1);
  EXPECT_LE(max_abs(nx, ny) / max_abs(nx), 1e-6);
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  // dtype flow: returned in x's dtype (type_as); a float64 x is computed in float64 (for gradcheck)
  EXPECT_EQ(apply_pairs_complex(x.to(at::kDouble), axial_grid_angles(16, 4, 5, 100.0)).scalar_type(), at::kDouble);
}

TEST(Rope2d, ErrorsNameTheFunctionAndTheShape) {
  expect_error([] { axial_frequencies(30, 100.0); }, {"rope::axial_frequencies", "30"});
  expect_error([] { apply_pairs_complex(at::zeros({2, 16}), at::zeros({2, 4})); },
               {"rope::apply_pairs_complex", "[..., 8]", "[2, 4]"});
  expect_error([] { mixed_angles(at::zeros({2, 1, 10}), at::zeros({5}), at::zeros({5}), 3); },
               {"rope::mixed_angles", "heads = 3", "[2, 1, 10]"});
}

// ================================ N x N block RoPE (block.h) ===============================================

// Random linearly dependent generators: coefficients ~ N(0, scale^2), one unit-norm skew direction per block.
at::Tensor random_ld(int64_t axes, int64_t nb, int64_t b, double scale, uint64_t seed) {
  auto gen = seeded(seed);
  at::Tensor base = at::randn({nb, b, b}, gen, at::kDouble);
  base = base / skew_part(base).pow(2).sum({-1, -2}, true).sqrt();
  return generators_linearly_dependent(at::randn({axes, nb}, gen, at::kDouble) * scale, base);  // float64
}

// Independent random skew generators per axis (LieRE-style): they do not commute for b >= 3.
at::Tensor random_independent(int64_t axes, int64_t nb, int64_t b, uint64_t seed) {
  auto gen = seeded(seed);
  at::Tensor m = at::randn({axes, nb, b, b}, gen);
  at::Tensor s = skew_part(m);
  return s / s.pow(2).sum({-1, -2}, true).sqrt();
}

TEST(BlockRope, ExpOfSkewIsOrthogonalWithDetOne) {
  for (int64_t b : {2, 3, 4, 5}) {
    at::Tensor G = random_ld(2, 4, b, 0.5, 10 + b).to(at::kFloat);
    at::Tensor p = at::rand({32, 2}, seeded(20 + b)) * 14;
    at::Tensor R = block_rotations(G, p);  // [32, 4, b, b]
    ASSERT_EQ(R.sizes(), at::IntArrayRef({32, 4, b, b}));
    at::Tensor I = at::eye(b, at::kFloat).expand_as(R);
    const double orth = max_abs(at::matmul(R.transpose(-1, -2), R), I);
    const double det = (at::linalg_det(R.to(at::kDouble)) - 1).abs().max().item<double>();
    EXPECT_LE(orth, 1e-5) << "b = " << b;
    EXPECT_LE(det, 1e-5) << "b = " << b;
  }
}

TEST(BlockRope, AxisPartitionTwoByTwoIsAxialRope) {
  const int64_t D = 64;
  at::Tensor G = generators_axis_partition(D, 2, 2, 100.0);  // [2, 32, 2, 2]
  ASSERT_EQ(G.sizes(), at::IntArrayRef({2, 32, 2, 2}));
  // generators: omega_k J on blocks k (axis x) and 16 + k (axis y), bit for bit the axial frequencies
  at::Tensor w = axial_frequencies(D, 100.0);
  EXPECT_TRUE(at::equal(G[0].slice(0, 0, 16).select(-1, 0).select(-1, 1), w));      // G[1][0] = +omega
  EXPECT_TRUE(at::equal(G[1].slice(0, 16, 32).select(-1, 1).select(-1, 0), -w));    // G[0][1] = -omega
  EXPECT_EQ(G[0].slice(0, 16, 32).abs().max().item<float>(), 0.0f);
  EXPECT_EQ(G[1].slice(0, 0, 16).abs().max().item<float>(), 0.0f);
  // the rotations and their action equal RoPE-ViT axial (positions (x, y) = (column, row))
  GridXY g = grid_xy(14, 14);
  at::Tensor blocks = block_rotations(G, at::stack({g.t_x, g.t_y}, 1));  // [196, 32, 2, 2]
  at::Tensor ax = axial_angles(D, g.t_x, g.t_y, 100.0);                   // [196, 32]
  at::Tensor want = pair_rotation_matrix(ax).view({196, 32, 2, 32, 2}).diagonal(0, 1, 3).permute({0, 3, 1, 2});
  const double err_blocks = max_abs(blocks, want);
  at::Tensor x = at::randn({2, 3, 196, D}, seeded(6));
  const double err_apply = max_abs(apply_block_rope(x, blocks), apply_pairs_complex(x, ax)) / max_abs(x);
  std::printf("2x2 block (matrix_exp) vs axial cos/sin: blocks %.3g, applied %.3g (relative)\n", err_blocks, err_apply);
  EXPECT_LE(err_blocks, 1e-5);
  EXPECT_LE(err_apply, 1e-5);
}

// R(p)^T R(q) = R(q - p) for commuting generators: block sizes 2, 3, 4, positions of dimension 1 to 4.
// Checked in float64 (block_rotations computes in the generators' dtype), so the check sees the
// construction, not float32 rounding: in float32, matrix_exp at angles up to ~14 rad alone is off by a few
// 1e-6 (the float32 numbers are printed alongside; measured 2.9e-6 to 1.1e-5).
TEST(BlockRope, RelativePropertyHoldsForCommutingGenerators) {
  struct Case {
    const char* what;
    at::Tensor G;
  };
  std::vector<Case> cases = {
      {"axis-partition b=2 A=2 (axial)", generators_axis_partition(64, 2, 2, 100.0)},
      {"axis-partition b=3 A=2 canonical", generators_axis_partition(48, 3, 2, 100.0)},
      {"axis-partition b=4 A=2 random directions",
       generators_axis_partition(64, 4, 2, 100.0, [] {
         at::Tensor s = skew_part(at::randn({16, 4, 4}, seeded(7)));
         return s / s.pow(2).sum({-1, -2}, true).sqrt();
       }())},
      {"axis-partition b=4 A=3", generators_axis_partition(48, 4, 3, 100.0)},
      {"linearly dependent b=2 A=2 (mixed)", random_ld(2, 32, 2, 0.5, 8)},
      {"linearly dependent b=3 A=1", random_ld(1, 16, 3, 0.5, 9)},
      {"linearly dependent b=3 A=3", random_ld(3, 16, 3, 0.5, 10)},
      {"linearly dependent b=4 A=2", random_ld(2, 16, 4, 0.5, 11)},
      {"linearly dependent b=4 A=4", random_ld(4, 16, 4, 0.5, 12)},
  };
  for (const auto& c : cases) {
    const int64_t A = c.G.size(0);
    auto gen = seeded(100 + A);
    at::Tensor p = at::rand({64, A}, gen, at::kDouble) * 14, q = at::rand({64, A}, gen, at::kDouble) * 14;
    auto residual = [&](at::ScalarType dt) {
      at::Tensor G = c.G.to(dt), pp = p.to(dt), qq = q.to(dt);
      at::Tensor lhs = at::matmul(block_rotations(G, pp).transpose(-1, -2), block_rotations(G, qq));
      return max_abs(lhs, block_rotations(G, qq - pp));
    };
    const double err = residual(at::kDouble), err32 = residual(at::kFloat);
    std::printf("%-45s commutator %.2g, max |R(p)^T R(q) - R(q-p)| = %.3g (float32: %.3g)\n", c.what,
                max_commutator(c.G), err, err32);
    EXPECT_LE(err, 1e-5) << c.what;
    EXPECT_LE(max_commutator(c.G), 1e-5) << c.what;
  }
}

// The counter-example the construction avoids (LieRE with b >= 3): independent generators per axis.
TEST(BlockRope, NonCommutingGeneratorsBreakTheRelativeProperty) {
  at::Tensor G = random_independent(2, 8, 3, 13);
  at::Tensor p = at::rand({64, 2}, seeded(14)) * 3, q = at::rand({64, 2}, seeded(15)) * 3;
  at::Tensor lhs = at::matmul(block_rotations(G, p).transpose(-1, -2), block_rotations(G, q));
  const double err = max_abs(lhs, block_rotations(G, q - p));
  const double comm = max_commutator(G);
  std::printf("independent 3x3 generators: commutator %.3g, relative residual %.3g\n", comm, err);
  EXPECT_GT(comm, 0.1);
  EXPECT_GT(err, 0.05);
}

// apply_block_rope's per-position GEMM (blocks [M, nb, b, b], x with leading rows) against its broadcast b x b
// products (the same blocks with a leading unit dim), values and gradients, with and without partial rotary.
TEST(BlockRope, PerPositionGemmEqualsBroadcastProducts) {
  for (int64_t D : {32, 35}) {
    at::Tensor G = random_ld(2, 8, 4, 0.5, 16).to(at::kFloat);
    at::Tensor blocks = block_rotations(G, at::rand({10, 2}, seeded(19)) * 14);  // [10, 8, 4, 4]
    at::Tensor x0 = at::randn({2, 3, 10, D}, seeded(20)), go = at::randn({2, 3, 10, D}, seeded(21));
    at::Tensor xa = x0.clone().requires_grad_(true), xb = x0.clone().requires_grad_(true);
    at::Tensor ya = apply_block_rope(xa, blocks), yb = apply_block_rope(xb, blocks.unsqueeze(0));
    EXPECT_LE(max_abs(ya, yb), 1e-6) << "D " << D;
    ya.backward(go);
    yb.backward(go);
    EXPECT_LE(max_abs(xa.grad(), xb.grad()), 1e-6) << "D " << D;
    if (D > 32) EXPECT_TRUE(at::equal(ya.narrow(-1, 32, D - 32), x0.narrow(-1, 32, D - 32))) << "the unrotated tail changed";
  }
}

TEST(BlockRope, BlockwiseApplyEqualsDenseMatrix) {
  at::Tensor G = random_ld(2, 8, 4, 0.5, 16).to(at::kFloat);
  at::Tensor p = at::rand({10, 2}, seeded(17)) * 14;
  at::Tensor blocks = block_rotations(G, p);  // [10, 8, 4, 4]
  at::Tensor dense = block_diag_dense(blocks);  // [10, 32, 32]
  ASSERT_EQ(dense.sizes(), at::IntArrayRef({10, 32, 32}));
  at::Tensor x = at::randn({3, 10, 32}, seeded(18));
  at::Tensor want = at::matmul(dense, x.unsqueeze(-1)).squeeze(-1);
  EXPECT_LE(max_abs(apply_block_rope(x, blocks), want), 1e-6);
  // the dense 2x2 case is rope2d's rotation matrix
  at::Tensor ax = axial_grid_angles(16, 4, 5, 100.0);
  GridXY g = grid_xy(4, 5);
  at::Tensor b2 = block_rotations(generators_axis_partition(16, 2, 2, 100.0), at::stack({g.t_x, g.t_y}, 1));
  EXPECT_LE(max_abs(block_diag_dense(b2), pair_rotation_matrix(ax)), 1e-5);
}

// An odd-size skew matrix has eigenvalue 0: exp keeps its axis fixed (one channel direction per block).
TEST(BlockRope, OddBlockKeepsOneDirectionFixed) {
  at::Tensor G = random_ld(2, 4, 3, 0.5, 19).to(at::kFloat);  // every axis shares the block's skew direction
  at::Tensor R = block_rotations(G, at::rand({8, 2}, seeded(20)) * 14);  // [8, 4, 3, 3]
  for (int64_t j = 0; j < 4; ++j) {
    at::Tensor S = G[0][j].to(at::kDouble);  // axis of a 3x3 skew matrix: (S21, S02, S10)
    at::Tensor v = at::stack({S[2][1], S[0][2], S[1][0]}).to(at::kFloat);
    v = v / v.norm();
    at::Tensor Rv = at::matmul(R.select(1, j), v);  // [8, 3]
    EXPECT_LE(max_abs(Rv, v.expand_as(Rv)), 1e-5) << "block " << j;
  }
}

TEST(BlockRope, ErrorsNameTheFunctionAndTheShape) {
  expect_error([] { generators_axis_partition(30, 4, 2, 100.0); }, {"rope::generators_axis_partition", "30"});
  expect_error([] { block_rotations(at::zeros({2, 4, 3, 3}), at::zeros({5, 3})); },
               {"rope::block_rotations", "[M, 2]", "[5, 3]"});
  expect_error([] { apply_block_rope(at::zeros({5, 10}), at::zeros({5, 4, 3, 3})); }, {"rope::apply_block_rope", "[5, 10]"});
}

// ================================ Spiral RoPE (spiral.h) ===================================================

SpiralConfig spiral(int64_t d, int64_t R, double M, bool same = false, double tau = 0.0, int64_t pt = 14) {
  SpiralConfig c;
  c.head_dim = d;
  c.rotate = R;
  c.max_freq = M;
  c.same_theta = same;
  c.truncate_percentage = tau;
  c.pt_seq_len = pt;
  return c;
}

TEST(Spiral, FrequenciesAreGeometricWithTheAutomaticMinimum) {
  // spiral.h: with the automatic m, f_k = M theta^(-2k/E)
  struct Case {
    int64_t R;
    bool same;
    int64_t F, E;
  };
  for (const auto& c : {Case{0, false, 16, 32}, Case{2, false, 16, 32}, Case{8, false, 16, 32}, Case{2, true, 8, 16},
                        Case{4, true, 4, 8}}) {
    at::Tensor f = spiral_frequencies(spiral(64, c.R, 1.5, c.same));
    ASSERT_EQ(f.numel(), c.F) << "R = " << c.R << " same_theta = " << c.same;
    for (int64_t k = 0; k < c.F; ++k) {
      const double want = 1.5 * std::pow(10000.0, -2.0 * k / c.E);
      EXPECT_NEAR(f[k].item<double>(), want, 2e-6 * want) << "R = " << c.R << ", k = " << k;
    }
  }
}

TEST(Spiral, TruncationZeroesTheLowestFrequencies) {
  at::Tensor full = spiral_frequencies(spiral(64, 2, 1.5));
  at::Tensor cut = spiral_frequencies(spiral(64, 2, 1.5, false, 0.25));  // F = 16: floor(4.0) = 4
  EXPECT_EQ(spiral_truncation_count(spiral(64, 2, 1.5, false, 0.25)), 4);
  EXPECT_TRUE(at::equal(cut.slice(0, 0, 12), full.slice(0, 0, 12)));
  EXPECT_EQ(cut.slice(0, 12).abs().max().item<float>(), 0.0f);
}

// The official `freqs[-n_t:] = 0` with n_t = floor(F tau) = 0 zeroes every frequency; qvl truncates nothing.
TEST(Spiral, TruncationEdgeBugIsGuarded) {
  SpiralConfig c = spiral(64, 2, 1.5, false, 0.05);  // F = 16, 16 * 0.05 = 0.8 -> n_t = 0
  EXPECT_EQ(spiral_truncation_count(c), 0);
  at::Tensor f = spiral_frequencies(c);
  EXPECT_GT(f.abs().min().item<float>(), 0.0f) << "n_t = 0 must not zero the frequencies";
  EXPECT_TRUE(at::equal(f, spiral_frequencies(spiral(64, 2, 1.5))));
}

// Spot values from an independent NumPy (float32) evaluation of the official formulas: n = 14, R = 2, M = 1.5, d = 64 (reference-compatible mode).
TEST(Spiral, SpotValuesOfTheReferenceTable) {
  SpiralConfig c = spiral(64, 2, 1.5);
  at::Tensor phi = spiral_grid_angles(spiral_frequencies(c), 14, c, SpiralMode::kClamp);  // [196, 64]
  struct Row {
    int64_t i, j;
    double ch0, ch4, ch32, ch36;
  };
  for (const Row& r : {Row{2, 5, 3.0, 1.07076, 7.5, 4.089451}, Row{13, 13, 19.5, 6.166441, 19.5, 3.083221},
                       Row{0, 13, 0.0, 3.083221, 19.5, 6.166441}}) {
    at::Tensor t = phi[r.i * 14 + r.j];
    EXPECT_NEAR(t[0].item<double>(), r.ch0, 1e-5) << r.i << "," << r.j;
    EXPECT_NEAR(t[4].item<double>(), r.ch4, 1e-5) << r.i << "," << r.j;
    EXPECT_NEAR(t[32].item<double>(), r.ch32, 1e-5) << r.i << "," << r.j;
    EXPECT_NEAR(t[36].item<double>(), r.ch36, 1e-5) << r.i << "," << r.j;
  }
}

// Where the two forms differ: at 45 deg on 14 x 14, 20 tokens are clamped per rotated direction.
TEST(Spiral, ClampAndExactDifferExactlyOnTheClampedTokens) {
  SpiralConfig c = spiral(64, 2, 1.5);
  at::Tensor clamped = spiral_clamped(14, c);  // [196, 4]: directions 0, 45 (row half), 90, 135 (column half)
  ASSERT_EQ(clamped.sizes(), at::IntArrayRef({196, 4}));
  EXPECT_EQ(clamped.select(1, 0).sum().item<int64_t>(), 0);
  EXPECT_EQ(clamped.select(1, 1).sum().item<int64_t>(), 20) << "45 deg";
  EXPECT_EQ(clamped.select(1, 2).sum().item<int64_t>(), 0);
  EXPECT_EQ(clamped.select(1, 3).sum().item<int64_t>(), 20) << "135 deg";
  at::Tensor any = clamped.any(1);
  EXPECT_EQ(any.sum().item<int64_t>(), 40);
  // the four corners, in the right direction
  EXPECT_TRUE(clamped[0][1].item<bool>());              // (0, 0): i + j small, 45 deg
  EXPECT_TRUE(clamped[13 * 14 + 13][1].item<bool>());   // (13, 13)
  EXPECT_TRUE(clamped[13][3].item<bool>());             // (0, 13): j - i large, 135 deg
  EXPECT_TRUE(clamped[13 * 14][3].item<bool>());        // (13, 0)
  EXPECT_FALSE(any[6 * 14 + 7].item<bool>());           // the centre
  at::Tensor f = spiral_frequencies(c);
  at::Tensor pc = spiral_grid_angles(f, 14, c, SpiralMode::kClamp), pe = spiral_grid_angles(f, 14, c, SpiralMode::kExact);
  at::Tensor differs = pc.ne(pe).any(1);
  EXPECT_TRUE(at::equal(differs, any)) << "the forms differ on exactly the clamped tokens";
  at::Tensor interior = any.logical_not().nonzero().squeeze(1);
  EXPECT_TRUE(at::equal(pc.index_select(0, interior), pe.index_select(0, interior))) << "bit-identical inside";
}

// R = 1 (K = 2) rotates nothing: axial 2-D RoPE on the interleaved layout, rows in the first half,
// columns in the second, f_k = M theta^(-2k/D); R = 0 gives the same numbers.
TEST(Spiral, RotateOneIsAxialInterleaved) {
  const int64_t d = 64, D = 32, n = 14;
  SpiralConfig c1 = spiral(d, 1, 1.5), c0 = spiral(d, 0, 1.5);
  at::Tensor p1 = spiral_grid_angles(spiral_frequencies(c1), n, c1, SpiralMode::kClamp);
  at::Tensor p0 = spiral_grid_angles(spiral_frequencies(c0), n, c0, SpiralMode::kClamp);
  at::Tensor want = at::empty({n * n, d}, at::kDouble);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t ch = 0; ch < D; ++ch) {
        const double f = 1.5 * std::pow(10000.0, -2.0 * (ch / 2) / D);
        want[i * n + j][ch] = i * f;
        want[i * n + j][D + ch] = j * f;
      }
  EXPECT_LE(max_abs(p1, want), 1e-5);
  EXPECT_LE(max_abs(p0, p1), 1e-5);
  // and the application is the interleaved 2x2 rotation of every pair
  at::Tensor x = at::randn({2, n * n, 3, d}, seeded(30));
  at::Tensor y = apply_spiral(x, p1);
  at::Tensor y_ref = apply_pairs_complex(x.transpose(1, 2), p1.slice(1, 0, d, 2)).transpose(1, 2);
  EXPECT_LE(max_abs(y, y_ref) / max_abs(y_ref), 1e-6);
}

// The frequency-to-direction assignment of §3.2 (paper eq. 13) and the projection formula, against an
// independent double computation in exact mode at an off-centre token.
TEST(Spiral, FrequencyToDirectionAssignment) {
  for (int64_t R : {2, 4, 8}) {
    const int64_t d = 64, D = 32, n = 7;  // odd n: kappa = 3 is a grid point
    SpiralConfig c = spiral(d, R, 1.5, false, 0.0, 0);  // pt = 0: sigma = 1, t_r = r
    at::Tensor f = spiral_frequencies(c);
    at::Tensor pos = at::tensor({int64_t{2}, int64_t{5}}).view({1, 2});  // (i, j)
    at::Tensor phi = spiral_angles(f, pos, n, n, c, SpiralMode::kExact)[0];
    const double i = 2, j = 5, kappa = 3;
    for (int64_t k = 0; k < D / 2; ++k) {
      const int64_t band = (k % (2 * R)) / 2;  // frequency k -> direction band (paper eq. 13, code layout)
      const double a = band * (M_PI / 2) / R;
      const double fk = f[k].item<double>();
      const double row = band == 0 ? i * fk : fk * (kappa + std::cos(a) * (i - kappa) + std::sin(a) * (j - kappa));
      const double col = band == 0 ? j * fk : fk * (kappa + std::cos(a) * (j - kappa) - std::sin(a) * (i - kappa));
      for (int64_t ch : {2 * k, 2 * k + 1}) {
        EXPECT_NEAR(phi[ch].item<double>(), row, 1e-5) << "R = " << R << ", frequency " << k << ", row half";
        EXPECT_NEAR(phi[D + ch].item<double>(), col, 1e-5) << "R = " << R << ", frequency " << k << ", column half";
      }
    }
  }
}

// Scores q(p) . k(p') under a joint translation of p and p'.
double translation_residual(const at::Tensor& phi, int64_t n, int64_t di, int64_t dj, const at::Tensor& interior,
                            bool only_interior) {
  const int64_t d = phi.size(1);
  auto gen = seeded(40);
  at::Tensor q = at::randn({1, 1, 1, d}, gen), k = at::randn({1, 1, 1, d}, gen);
  at::Tensor qr = apply_spiral(q.expand({1, n * n, 1, d}).contiguous(), phi)[0].select(1, 0);  // [n*n, d]
  at::Tensor kr = apply_spiral(k.expand({1, n * n, 1, d}).contiguous(), phi)[0].select(1, 0);
  at::Tensor S = at::matmul(qr.to(at::kDouble), kr.to(at::kDouble).t());  // [n*n, n*n] scores
  double worst = 0;
  for (int64_t a = 0; a < n * n; ++a) {
    const int64_t ai = a / n, aj = a % n;
    if (ai + di < 0 || ai + di >= n || aj + dj < 0 || aj + dj >= n) continue;
    const int64_t a2 = (ai + di) * n + aj + dj;
    for (int64_t b = 0; b < n * n; ++b) {
      const int64_t bi = b / n, bj = b % n;
      if (bi + di < 0 || bi + di >= n || bj + dj < 0 || bj + dj >= n) continue;
      const int64_t b2 = (bi + di) * n + bj + dj;
      if (only_interior && !(interior[a].item<bool>() && interior[b].item<bool>() && interior[a2].item<bool>() &&
                             interior[b2].item<bool>()))
        continue;
      worst = std::max(worst, std::abs(S[a][b].item<double>() - S[a2][b2].item<double>()));
    }
  }
  return worst / (q.norm().item<double>() * k.norm().item<double>());
}

TEST(Spiral, ExactModeIsRelativeForAllTokensClampOnlyInside) {
  const int64_t n = 10;
  SpiralConfig c = spiral(32, 2, 1.5, false, 0.0, n);
  at::Tensor f = spiral_frequencies(c);
  at::Tensor pe = spiral_grid_angles(f, n, c, SpiralMode::kExact), pc = spiral_grid_angles(f, n, c, SpiralMode::kClamp);
  at::Tensor interior = spiral_clamped(n, c).any(1).logical_not();
  ASSERT_GT(interior.logical_not().sum().item<int64_t>(), 0) << "the grid must have clamped tokens";
  for (auto [di, dj] : {std::pair<int64_t, int64_t>{1, 0}, {0, 1}, {2, -3}}) {
    const double exact_all = translation_residual(pe, n, di, dj, interior, false);
    const double clamp_inside = translation_residual(pc, n, di, dj, interior, true);
    const double clamp_all = translation_residual(pc, n, di, dj, interior, false);
    std::printf("shift (%ld, %ld): exact all tokens %.3g, clamp interior %.3g, clamp all %.3g\n", static_cast<long>(di),
                static_cast<long>(dj), exact_all, clamp_inside, clamp_all);
    EXPECT_LE(exact_all, 1e-5);
    EXPECT_LE(clamp_inside, 1e-5);
    // 100x the tolerance the exact mode meets (measured: 0.0075 to 0.013)
    EXPECT_GT(clamp_all, 1e-3) << "clamping must break the relative property somewhere";
  }
}

TEST(Spiral, ClassTokenIsNotRotated) {
  SpiralConfig c = spiral(32, 2, 1.5, false, 0.0, 4);
  at::Tensor phi = spiral_grid_angles(spiral_frequencies(c), 4, c, SpiralMode::kClamp);  // [16, 32]
  at::Tensor x = at::randn({2, 17, 3, 32}, seeded(50));
  at::Tensor y = apply_spiral(x, phi, /*class_token=*/true);
  EXPECT_TRUE(at::equal(y.select(1, 0), x.select(1, 0)));
  EXPECT_TRUE(at::equal(y.slice(1, 1), apply_spiral(x.slice(1, 1), phi)));
  EXPECT_FALSE(at::equal(y.slice(1, 1), x.slice(1, 1)));
  // norms of every interleaved pair are kept
  at::Tensor nx = x.view({2, 17, 3, 16, 2}).pow(2).sum(-1), ny = y.view({2, 17, 3, 16, 2}).pow(2).sum(-1);
  EXPECT_LE(max_abs(nx, ny) / max_abs(nx), 1e-6);
}

TEST(Spiral, ConfigErrorsAreClear) {
  expect_error([] { spiral_frequencies(spiral(64, 3, 1.5)); }, {"head_dim 64", "4*rotate = 12"});
  expect_error([] { spiral_frequencies(spiral(64, 0, 1.5, true)); }, {"same_theta", "rotate > 0"});
  expect_error([] { spiral_frequencies(spiral(8, 2, 1.5, true)); }, {"F-1 = 0"});
  SpiralConfig c = spiral(32, 2, 1.5, false, 0.0, 0);
  at::Tensor pos = at::zeros({1, 2}, at::kLong);
  expect_error([&] { spiral_angles(spiral_frequencies(c), pos, 4, 6, c, SpiralMode::kClamp); }, {"4x6", "not square"});
  expect_error([&] { spiral_angles(at::zeros({3}), pos, 4, 4, c, SpiralMode::kExact); }, {"freqs must be [8]"});
  // exact mode with integer positions takes rectangles
  EXPECT_EQ(spiral_angles(spiral_frequencies(c), pos, 4, 6, c, SpiralMode::kExact).sizes(), at::IntArrayRef({1, 32}));
}


// ================================ the vision-tower plug (vision_plug.h) ====================================

VisionConfig plug_config() {
  VisionConfig c;
  c.depth = 3;
  c.hidden_size = 64;
  c.num_heads = 4;  // Dh = 16
  c.rope_theta = 10000.0;
  return c;
}

// The 4.49-era forms (imported recordings): the table is outer(arange, inv_freq); rot_pos_emb holds rotary()'s
// angles before cos/sin, so cos(cat(e, e)) is rotary()'s cos bit for bit (the same float32 products).
TEST(VisionRope, LegacyRotaryTableAndRotPosEmbGiveRotarysAngles) {
  VisionConfig c = plug_config();
  const at::Tensor table = vision::rotary_freq_table(9, c);
  ASSERT_EQ(table.sizes(), (std::vector<int64_t>{9, c.head_dim() / 4}));
  EXPECT_EQ(table[0].abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(at::equal(table[1], rope_inv_freq(c.rope_theta, c.head_dim() / 2)));
  at::Tensor grid = at::tensor(std::vector<int64_t>{1, 8, 8, 2, 4, 6}).view({2, 3});
  const at::Tensor e = vision::rot_pos_emb(grid, c);
  ASSERT_EQ(e.sizes(), (std::vector<int64_t>{64 + 2 * 24, c.head_dim() / 2}));
  const vision::CosSin cs = vision::rotary(vision::position_ids(grid, c.spatial_merge_size), c);
  EXPECT_TRUE(at::equal(at::cat({e, e}, -1).cos(), cs.cos));
  EXPECT_TRUE(at::equal(at::cat({e, e}, -1).sin(), cs.sin));
}

TEST(VisionRope, QwenBuilderIsVisionRotaryBitForBit) {
  VisionConfig c = plug_config();
  at::Tensor grid = at::tensor(std::vector<int64_t>{1, 8, 8, 2, 4, 6}).view({2, 3});
  at::Tensor pos = vision::position_ids(grid, 2);
  CosSin a = parse_vision_rope("qwen").build(pos, grid, 0, c), b = vision::rotary(pos, c);
  EXPECT_TRUE(at::equal(a.cos, b.cos));
  EXPECT_TRUE(at::equal(a.sin, b.sin));
}

// Each builder's split-half pair k carries the angle its own code gives its pair k (the layout mapping).
TEST(VisionRope, BuildersMapTheirPairsToSplitHalfPairs) {
  VisionConfig c = plug_config();
  const int64_t Dh = 16;
  at::Tensor grid = at::tensor(std::vector<int64_t>{1, 6, 6}).view({1, 3});
  at::Tensor pos = vision::position_ids(grid, 2);  // (row, column), merge-block order
  // axial: x = column, y = row
  CosSin ax = parse_vision_rope("axial:theta=100").build(pos, grid, 0, c);
  at::Tensor phi = axial_angles(Dh, pos.select(1, 1), pos.select(1, 0), 100.0);  // [36, 8]
  EXPECT_TRUE(at::equal(ax.cos.slice(1, 0, 8), phi.cos()));
  EXPECT_TRUE(at::equal(ax.cos.slice(1, 8, 16), phi.cos()));
  EXPECT_TRUE(at::equal(ax.sin.slice(1, 8, 16), phi.sin()));
  // spiral: pair q = the interleaved channel 2q of spiral_angles on the image's grid
  SpiralConfig sc;
  sc.head_dim = Dh;
  sc.rotate = 2;
  sc.max_freq = 1.5;
  sc.pt_seq_len = 0;
  CosSin sp = parse_vision_rope("spiral:rotate=2,max_freq=1.5,mode=clamp").build(pos, grid, 0, c);
  at::Tensor sphi = spiral_angles(spiral_frequencies(sc), pos, 6, 6, sc, SpiralMode::kClamp).slice(1, 0, Dh, 2);
  EXPECT_TRUE(at::equal(sp.cos.slice(1, 0, 8), sphi.cos()));
  EXPECT_TRUE(at::equal(sp.sin.slice(1, 8, 16), sphi.sin()));
  // block2: cos/sin read from exp(phi J) equal the axial ones up to matrix_exp rounding
  CosSin b2 = parse_vision_rope("block2:theta=100").build(pos, grid, 0, c);
  EXPECT_LE(max_abs(b2.cos, ax.cos), 1e-5);
  EXPECT_LE(max_abs(b2.sin, ax.sin), 1e-5);
}

TEST(VisionRope, MixedIsPerLayerPerHeadAndSeeded) {
  VisionConfig c = plug_config();
  at::Tensor grid = at::tensor(std::vector<int64_t>{1, 4, 4}).view({1, 3});
  at::Tensor pos = vision::position_ids(grid, 2);
  VisionRope m = parse_vision_rope("mixed:theta=10,seed=0");
  EXPECT_TRUE(m.per_layer);
  CosSin l0 = m.build(pos, grid, 0, c), l1 = m.build(pos, grid, 1, c);
  ASSERT_EQ(l0.cos.sizes(), at::IntArrayRef({16, 4, 16}));  // [S, H, Dh]
  EXPECT_FALSE(at::equal(l0.cos, l1.cos)) << "layers have their own frequencies";
  EXPECT_FALSE(at::equal(l0.cos.select(1, 0), l0.cos.select(1, 1))) << "heads have their own frequencies";
  EXPECT_TRUE(at::equal(l0.cos, parse_vision_rope("mixed:seed=0").build(pos, grid, 0, c).cos)) << "same seed";
  EXPECT_FALSE(at::equal(l0.cos, parse_vision_rope("mixed:seed=1").build(pos, grid, 0, c).cos));
  // the table is compute_mixed_cis of the init frequencies at (x, y) = (column, row)
  at::Tensor alpha = at::rand({3, 4}, seeded(0), at::kFloat) * (2 * M_PI);
  at::Tensor phi = mixed_angles(mixed_init_frequencies(alpha, 16, 10.0), pos.select(1, 1), pos.select(1, 0), 4)[1];
  EXPECT_TRUE(at::equal(l1.cos.slice(2, 0, 8), phi.permute({1, 0, 2}).cos()));
}

// apply_rotary_pos_emb_vision with a per-head table [S, H, Dh] equals applying each head's [S, Dh] table.
TEST(VisionRope, PerHeadTablesBroadcastInTheVisionApplier) {
  auto gen = seeded(60);
  at::Tensor q = at::randn({10, 4, 16}, gen), k = at::randn({10, 4, 16}, gen);
  at::Tensor phi = at::randn({10, 4, 8}, gen);
  CosSin t = split_half_cos_sin(phi);
  auto [qr, kr] = vision::apply_rotary_pos_emb_vision(q, k, t.cos, t.sin);
  for (int64_t h = 0; h < 4; ++h) {
    auto [qh, kh] = vision::apply_rotary_pos_emb_vision(q.slice(1, h, h + 1), k.slice(1, h, h + 1), t.cos.select(1, h),
                                                        t.sin.select(1, h));
    EXPECT_TRUE(at::equal(qr.slice(1, h, h + 1), qh)) << "head " << h;
    EXPECT_TRUE(at::equal(kr.slice(1, h, h + 1), kh)) << "head " << h;
  }
}

TEST(VisionRope, ParseErrorsNameTheProblem) {
  expect_error([] { parse_vision_rope("rope3d"); }, {"unknown rope 'rope3d'", "axial", "spiral"});
  expect_error([] { parse_vision_rope("axial:thta=100"); }, {"axial has no key 'thta'", "keys: theta"});
  expect_error([] { parse_vision_rope("qwen:theta=1"); }, {"qwen has no key 'theta'", "none"});
  expect_error([] { parse_vision_rope("mixed:theta=abc"); }, {"theta='abc' is not a number"});
  expect_error([] { parse_vision_rope("spiral:mode=fuzzy"); }, {"mode must be clamp or exact", "fuzzy"});
  expect_error([] { parse_vision_rope("spiral:rotate=1.5"); }, {"rotate='1.5' is not an integer"});
  expect_error([] { parse_vision_rope("axial:theta"); }, {"'theta'", "not key=value"});
  EXPECT_EQ(parse_vision_rope("axial").name, "axial:theta=100");
  EXPECT_EQ(parse_vision_rope("spiral:rotate=2,mode=clamp").name,
            "spiral:rotate=2,max_freq=1.5,min_freq=0,truncate=0,same_theta=0,theta=10000,pt=0,mode=clamp");
}

}  // namespace
}  // namespace qvl::rope
