// The fused CUDA paths (functional/cuda) against the plain functional path, both on the GPU: float32 and
// bfloat16 (fp16 where it adds a case), strided views of a fused qkv, odd sizes (head_dim 80 and 72,
// token counts that are no multiple of any block size). Every test SKIPs with the reason when no CUDA device
// can run them (cuda::unavailable_reason()).
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "functional/cuda/fused.h"
#include "functional/norm.h"
#include "functional/rope/rope1d.h"
#include "functional/rotary.h"
#include "functional/text.h"
#include "functional/vision.h"
#include "instrument/metrics.h"
#include "tests/support/test_support.h"

namespace qvl {
namespace {

#define QVL_REQUIRE_CUDA()                                   \
  do {                                                       \
    const std::string why_ = cuda::unavailable_reason();     \
    if (!why_.empty()) GTEST_SKIP() << why_;                 \
  } while (0)

// Tolerances of the comparisons below, one place, each with its reason.
//  - tables, any dtype: 0 (bit-identical). The kernel does the plain path's float32 operations in the same
//    order with __fmul_rn/__fadd_rn (no FMA contraction) and rounds once to the output dtype, as the plain
//    path's final .to(dtype) does.
//  - positions (angles computed in the kernel), float32: the angle is the same float32 product, but the
//    kernel's sincosf and ATen's cos()/sin() may differ in the last bit: |diff| <= kSinCosAbs * max|x|.
constexpr double kSinCosAbs = 2e-6;
//  - positions, bf16/fp16: the float32 values then differ in the last bits, which can flip one rounding
//    step of the 8-bit (11-bit) mantissa: at most 1 ulp of the output type per element.
constexpr double kLowPrecisionUlps = 1.0;
//  - RMSNorm float32: the sum of squares is reduced in another order than ATen's and rsqrtf may differ
//    by an ulp: |diff| <= kRmsFp32Rel * max|ref|.
constexpr double kRmsFp32Rel = 2e-6;
//  - RMSNorm bf16: the normalised value rounds to bf16 before the weight product (as HF does), so a last-bit
//    float32 difference can move it by 1 bf16 ulp, and the product by up to 2.
constexpr double kRmsBf16Ulps = 2.0;
//  - attention float32 (memory-efficient kernel vs the loop of matmuls): float32 reordering of the
//    softmax sums: max|diff| <= kAttnFp32Rel * max|ref|.
constexpr double kAttnFp32Rel = 2e-5;
//  - attention / block in bf16: the bf16 rule of docs/design.md §5: the fused error against a float32 run may be
//    at most kBf16Ratio x the plain bf16 path's own error (RMSE and max |error|).
constexpr double kBf16Ratio = 2.0;

const at::Device kGpu(at::kCUDA, 0);

at::Tensor randn(at::IntArrayRef sizes, uint64_t seed) {
  at::manual_seed(seed);
  return at::randn(sizes, at::kFloat);
}

std::string describe(const at::Tensor& ours, const at::Tensor& ref) {
  Metrics m = compare(ours.to(at::kCPU), ref.to(at::kCPU), /*check_dtype=*/false, 4);
  std::ostringstream os;
  os << "max_abs " << m.max_abs << " at " << format_index(m.worst_index) << ", max_rel " << m.max_rel
     << "; (ours, ref): " << format_worst(m);
  return os.str();
}

void expect_identical(const at::Tensor& ours, const at::Tensor& ref, const std::string& what) {
  ASSERT_EQ(ours.sizes(), ref.sizes()) << what;
  ASSERT_EQ(ours.scalar_type(), ref.scalar_type()) << what;
  EXPECT_TRUE(at::equal(ours.to(at::kCPU), ref.to(at::kCPU))) << what << ": not bit-identical; " << describe(ours, ref);
}

void expect_close_abs(const at::Tensor& ours, const at::Tensor& ref, double tol, const std::string& what) {
  ASSERT_EQ(ours.sizes(), ref.sizes()) << what;
  const double diff = (ours.to(at::kDouble) - ref.to(at::kDouble)).abs().max().item<double>();
  EXPECT_LE(diff, tol) << what << "; " << describe(ours, ref);
}

// |a - b| <= ulps * ulp(max(|a|, |b|)) element-wise, ulp of the output dtype (bf16: 8 significant bits).
void expect_within_ulps(const at::Tensor& ours, const at::Tensor& ref, double ulps, const std::string& what) {
  ASSERT_EQ(ours.sizes(), ref.sizes()) << what;
  ASSERT_EQ(ours.scalar_type(), ref.scalar_type()) << what;
  const int bits = ours.scalar_type() == at::kBFloat16 ? 8 : ours.scalar_type() == at::kHalf ? 11 : 24;
  at::Tensor a = ours.to(at::kDouble), b = ref.to(at::kDouble);
  at::Tensor mag = at::maximum(a.abs(), b.abs()).clamp_min(1e-30);
  at::Tensor ulp = at::pow(2.0, at::floor(at::log2(mag)) - (bits - 1));
  at::Tensor excess = (a - b).abs() / ulp;
  const double worst = excess.max().item<double>();
  EXPECT_LE(worst, ulps) << what << ": " << worst << " ulps; " << describe(ours, ref);
}

// The bf16 rule: err(ours vs fp32) <= ratio x err(plain bf16 vs fp32), RMSE and max |error|.
void expect_bf16_rule(const at::Tensor& fused, const at::Tensor& plain, const at::Tensor& fp32, const std::string& what) {
  Metrics mf = compare(fused.to(at::kCPU), fp32.to(at::kCPU), false), mp = compare(plain.to(at::kCPU), fp32.to(at::kCPU), false);
  EXPECT_LE(mf.rmse, kBf16Ratio * mp.rmse) << what << ": fused rmse " << mf.rmse << " vs plain bf16 rmse " << mp.rmse;
  EXPECT_LE(mf.max_abs, kBf16Ratio * mp.max_abs) << what << ": fused max_abs " << mf.max_abs << " vs plain bf16 " << mp.max_abs;
  EXPECT_GT(mp.max_abs, 0.0) << what << ": the plain bf16 path equals float32, the rule means nothing";
}

// --- RoPE: vision layout ---------------------------------------------------------------------------------------

struct VisionQkv {
  at::Tensor qkv;   // [S, 3, H, Dh] as the qkv linear's output reshaped
  at::Tensor q, k;  // strided views [S, H, Dh]
};
VisionQkv vision_qkv(int64_t S, int64_t H, int64_t Dh, at::ScalarType dt, uint64_t seed) {
  VisionQkv v;
  v.qkv = randn({S, 3 * H * Dh}, seed).to(kGpu, dt).reshape({S, 3, H, Dh});
  v.q = v.qkv.select(1, 0);
  v.k = v.qkv.select(1, 1);
  return v;
}

VisionConfig vision_cfg(int64_t C, int64_t H) {
  VisionConfig c;
  c.depth = 1;
  c.hidden_size = C;
  c.num_heads = H;
  c.intermediate_size = 2 * C;
  c.out_hidden_size = C;
  c.rope_theta = 10000.0;
  c.hidden_act = "silu";
  return c;
}

at::Tensor vision_positions(int64_t S, uint64_t seed) {
  at::manual_seed(seed);
  return at::randint(0, 200, {S, 2}, at::kLong).to(kGpu);
}

TEST(FusedRope, VisionTablesBitIdentical) {
  QVL_REQUIRE_CUDA();
  const int64_t S = 997, H = 16, Dh = 80;  // 997 tokens: no multiple of any block size
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(c10::toString(dt));
    VisionQkv v = vision_qkv(S, H, Dh, dt, 1);
    ASSERT_FALSE(v.q.is_contiguous());
    CosSin cs = vision::rotary(vision_positions(S, 2), vision_cfg(H * Dh, H));
    auto [qp, kp] = vision::apply_rotary_pos_emb_vision(v.q, v.k, cs.cos, cs.sin, /*fused=*/false);
    auto [qf, kf] = vision::apply_rotary_pos_emb_vision(v.q, v.k, cs.cos, cs.sin, /*fused=*/true);
    expect_identical(qf, qp, "q");
    expect_identical(kf, kp, "k");
  }
}

TEST(FusedRope, VisionInPlaceOnFusedQkvLeavesVAlone) {
  QVL_REQUIRE_CUDA();
  const int64_t S = 515, H = 16, Dh = 80;
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dt));
    VisionQkv v = vision_qkv(S, H, Dh, dt, 3);
    CosSin cs = vision::rotary(vision_positions(S, 4), vision_cfg(H * Dh, H));
    auto [qp, kp] = vision::apply_rotary_pos_emb_vision(v.q, v.k, cs.cos, cs.sin, false);
    at::Tensor v_before = v.qkv.select(1, 2).clone();
    auto [qi, ki] = cuda::rope_apply(v.q.unsqueeze(0), v.k.unsqueeze(0), cuda::rope_tables(cs.cos, cs.sin), /*in_place=*/true);
    EXPECT_EQ(qi.data_ptr(), v.q.data_ptr()) << "in place must write into q";
    expect_identical(v.q, qp, "q in place");
    expect_identical(v.k, kp, "k in place");
    expect_identical(v.qkv.select(1, 2), v_before, "v untouched");
  }
}

TEST(FusedRope, VisionPositionsMatchRotaryTables) {
  QVL_REQUIRE_CUDA();
  const int64_t S = 1001, H = 16, Dh = 80;
  const VisionConfig c = vision_cfg(H * Dh, H);
  at::Tensor pos = vision_positions(S, 5);
  CosSin cs = vision::rotary(pos, c);
  cuda::RopeAngles angles = cuda::rope_vision_2d(pos, rope_inv_freq(c.rope_theta, Dh / 2));
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dt));
    VisionQkv v = vision_qkv(S, H, Dh, dt, 6);
    auto [qp, kp] = vision::apply_rotary_pos_emb_vision(v.q, v.k, cs.cos, cs.sin, false);
    auto [qf, kf] = cuda::rope_apply(v.q.unsqueeze(0), v.k.unsqueeze(0), angles);
    if (dt == at::kFloat) {
      const double scale = v.qkv.abs().max().item<double>();
      expect_close_abs(qf.squeeze(0), qp, kSinCosAbs * scale, "q");
      expect_close_abs(kf.squeeze(0), kp, kSinCosAbs * scale, "k");
    } else {
      expect_within_ulps(qf.squeeze(0), qp, kLowPrecisionUlps, "q");
      expect_within_ulps(kf.squeeze(0), kp, kLowPrecisionUlps, "k");
    }
  }
}

TEST(FusedRope, ScalarPathForUnalignedViewsAndHeadDim72) {
  QVL_REQUIRE_CUDA();
  // head_dim 72 in bf16: 36 pairs is no multiple of 8 elements, and the views start 1 element into their rows,
  // so the kernel must take its unvectorised path.
  const int64_t S = 333, H = 5, Dh = 72;
  at::Tensor buf = randn({S, 2 * H * Dh + 1}, 7).to(kGpu, at::kBFloat16);
  at::Tensor q = buf.narrow(1, 1, H * Dh).view({S, H, Dh}), k = buf.narrow(1, 1 + H * Dh, H * Dh).view({S, H, Dh});
  at::Tensor pos = vision_positions(S, 8);
  CosSin cs = vision::rotary(pos, vision_cfg(H * Dh, H));
  auto [qp, kp] = vision::apply_rotary_pos_emb_vision(q, k, cs.cos, cs.sin, false);
  auto [qf, kf] = vision::apply_rotary_pos_emb_vision(q, k, cs.cos, cs.sin, true);
  expect_identical(qf, qp, "q");
  expect_identical(kf, kp, "k");
}

// --- RoPE: text layout (GQA, [B, H, T, Dh] views of a fused qkv) --------------------------------------------------

TextConfig text_cfg(int64_t Hq, int64_t Hkv, int64_t Dh, std::vector<int64_t> section) {
  TextConfig c;
  c.hidden_size = Hq * Dh;
  c.num_attention_heads = Hq;
  c.num_key_value_heads = Hkv;
  c.rope_theta = 1e6;
  c.mrope_section = std::move(section);
  return c;
}

struct TextQkv {
  at::Tensor qkv;   // [B, T, (Hq + 2 Hkv) * Dh]
  at::Tensor q, k;  // [B, H, T, Dh] strided views, as q_proj(...).view(B, T, H, Dh).transpose(1, 2)
};
TextQkv text_qkv(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t Dh, at::ScalarType dt, uint64_t seed) {
  TextQkv t;
  t.qkv = randn({B, T, (Hq + 2 * Hkv) * Dh}, seed).to(kGpu, dt);
  t.q = t.qkv.narrow(2, 0, Hq * Dh).view({B, T, Hq, Dh}).transpose(1, 2);
  t.k = t.qkv.narrow(2, Hq * Dh, Hkv * Dh).view({B, T, Hkv, Dh}).transpose(1, 2);
  return t;
}

// M-RoPE positions whose three rows differ, up to 8191 (large angles).
at::Tensor mrope_positions(int64_t B, int64_t T, uint64_t seed) {
  at::manual_seed(seed);
  return at::randint(0, 8192, {3, B, T}, at::kLong).to(kGpu);
}

TEST(FusedRope, TextChunkedMropeTablesBitIdentical) {
  QVL_REQUIRE_CUDA();
  const int64_t B = 2, T = 203, Hq = 28, Hkv = 4, Dh = 128;
  const TextConfig c = text_cfg(Hq, Hkv, Dh, {16, 24, 24});
  at::Tensor pos = mrope_positions(B, T, 9);
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dt));
    TextQkv t = text_qkv(B, T, Hq, Hkv, Dh, dt, 10);
    CosSin cs = text::rotary(pos, dt, c);  // cast to the activation dtype, as HF does
    auto [qf, kf] = text::apply_rotary_pos_emb(t.q, t.k, cs.cos, cs.sin, /*fused=*/true);
    // the fused kernel is the plain formula in float32 on the (exactly) upcast inputs, rounded once
    auto [q32, k32] = text::apply_rotary_pos_emb(t.q.to(at::kFloat), t.k.to(at::kFloat), cs.cos.to(at::kFloat),
                                                 cs.sin.to(at::kFloat), false);
    expect_identical(qf, q32.to(dt), "q");
    expect_identical(kf, k32.to(dt), "k");
    if (dt == at::kBFloat16) {
      // and it is never further from float32 than HF's bf16 op-by-op path
      auto [qp, kp] = text::apply_rotary_pos_emb(t.q, t.k, cs.cos, cs.sin, false);
      const double fused_err = (qf.to(at::kFloat) - q32).abs().max().item<double>();
      const double plain_err = (qp.to(at::kFloat) - q32).abs().max().item<double>();
      EXPECT_LE(fused_err, plain_err) << "fused bf16 error vs float32 " << fused_err << " > HF-style bf16 error " << plain_err;
    }
  }
}

TEST(FusedRope, TextChunkedMropePositionsMatchRotary) {
  QVL_REQUIRE_CUDA();
  const int64_t B = 2, T = 203, Hq = 28, Hkv = 4, Dh = 128;
  const TextConfig c = text_cfg(Hq, Hkv, Dh, {16, 24, 24});
  at::Tensor pos = mrope_positions(B, T, 11);
  CosSin cs = text::rotary(pos, at::kFloat, c);
  cuda::RopeAngles angles = cuda::rope_mrope_chunked(pos, rope_inv_freq(c.rope_theta, Dh), c.mrope_section);
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dt));
    TextQkv t = text_qkv(B, T, Hq, Hkv, Dh, dt, 12);
    auto [q32, k32] = text::apply_rotary_pos_emb(t.q.to(at::kFloat), t.k.to(at::kFloat), cs.cos, cs.sin, false);
    auto [qf, kf] = cuda::rope_apply(t.q.transpose(1, 2), t.k.transpose(1, 2), angles);
    qf = qf.transpose(1, 2);
    kf = kf.transpose(1, 2);
    if (dt == at::kFloat) {
      const double scale = t.qkv.abs().max().item<double>();
      expect_close_abs(qf, q32, kSinCosAbs * scale, "q");
      expect_close_abs(kf, k32, kSinCosAbs * scale, "k");
    } else {
      expect_within_ulps(qf, q32.to(dt), kLowPrecisionUlps, "q");
      expect_within_ulps(kf, k32.to(dt), kLowPrecisionUlps, "k");
    }
  }
}

// Plain reference for angle-based variants: phi [B, T, Dh/2] -> split-half tables -> the plain apply, float32.
std::pair<at::Tensor, at::Tensor> plain_from_angles(const TextQkv& t, const at::Tensor& phi) {
  at::Tensor cos = at::cat({phi.cos(), phi.cos()}, -1), sin = at::cat({phi.sin(), phi.sin()}, -1);  // [B, T, Dh]
  return text::apply_rotary_pos_emb(t.q.to(at::kFloat), t.k.to(at::kFloat), cos, sin, false);
}

TEST(FusedRope, InterleavedMropeMatchesPlainAngles) {
  QVL_REQUIRE_CUDA();
  const int64_t B = 1, T = 517, Hq = 16, Hkv = 8, Dh = 128;
  const std::vector<int64_t> section = {24, 20, 20};  // Qwen3-VL
  at::Tensor pos = mrope_positions(B, T, 13);
  at::Tensor inv = rope_inv_freq(1e6, Dh);
  // rope::mrope_angles is the plain builder (functional/rope); it works on the host
  at::Tensor phi = rope::mrope_angles(pos.to(at::kCPU), inv, section, rope::MRopeLayout::Interleaved).to(kGpu);
  TextQkv t = text_qkv(B, T, Hq, Hkv, Dh, at::kFloat, 14);
  auto [q32, k32] = plain_from_angles(t, phi);
  auto [qf, kf] = cuda::rope_apply(t.q.transpose(1, 2), t.k.transpose(1, 2), cuda::rope_mrope_interleaved(pos, inv, section));
  const double scale = t.qkv.abs().max().item<double>();
  expect_close_abs(qf.transpose(1, 2), q32, kSinCosAbs * scale, "q");
  expect_close_abs(kf.transpose(1, 2), k32, kSinCosAbs * scale, "k");
  // the section map matters: the chunked map on the same positions gives something else
  auto [qc, kc] = cuda::rope_apply(t.q.transpose(1, 2), t.k.transpose(1, 2), cuda::rope_mrope_chunked(pos, inv, section));
  EXPECT_GT((qc.transpose(1, 2) - q32).abs().max().item<double>(), 1e-2);
}

TEST(FusedRope, OneDimensionalMatchesPlainAngles) {
  QVL_REQUIRE_CUDA();
  const int64_t B = 3, T = 129, Hq = 8, Hkv = 2, Dh = 64;
  at::manual_seed(15);
  at::Tensor pos = at::randint(0, 32768, {B, T}, at::kLong).to(kGpu);
  at::Tensor inv = rope_inv_freq(10000.0, Dh);
  at::Tensor phi = rope::angles_1d(pos, inv.to(kGpu));  // [B, T, Dh/2]
  for (at::ScalarType dt : {at::kFloat, at::kHalf}) {
    SCOPED_TRACE(c10::toString(dt));
    TextQkv t = text_qkv(B, T, Hq, Hkv, Dh, dt, 16);
    auto [q32, k32] = plain_from_angles(t, phi);
    auto [qf, kf] = cuda::rope_apply(t.q.transpose(1, 2), t.k.transpose(1, 2), cuda::rope_1d(pos, inv));
    if (dt == at::kFloat) {
      const double scale = t.qkv.abs().max().item<double>();
      expect_close_abs(qf.transpose(1, 2), q32, kSinCosAbs * scale, "q");
      expect_close_abs(kf.transpose(1, 2), k32, kSinCosAbs * scale, "k");
    } else {
      expect_within_ulps(qf.transpose(1, 2), q32.to(dt), kLowPrecisionUlps, "q");
      expect_within_ulps(kf.transpose(1, 2), k32.to(dt), kLowPrecisionUlps, "k");
    }
  }
}

TEST(FusedRope, CircleFloatPositionsMatchRotary) {
  QVL_REQUIRE_CUDA();
  // Circle-RoPE positions: float32, fractional and partly negative (circle centred at the image offset)
  const int64_t B = 2, T = 77, Hq = 4, Hkv = 2, Dh = 128;
  const TextConfig c = text_cfg(Hq, Hkv, Dh, {16, 24, 24});
  at::Tensor pos = (randn({3, B, T}, 17) * 9.0 + 40.0).to(kGpu);
  CosSin cs = text::rotary(pos, at::kFloat, c);  // HF's rotary takes float positions as they are
  TextQkv t = text_qkv(B, T, Hq, Hkv, Dh, at::kFloat, 18);
  auto [q32, k32] = text::apply_rotary_pos_emb(t.q, t.k, cs.cos, cs.sin, false);
  auto [qf, kf] = cuda::rope_apply(t.q.transpose(1, 2), t.k.transpose(1, 2),
                                   cuda::rope_circle(pos, rope_inv_freq(c.rope_theta, Dh), c.mrope_section));
  const double scale = t.qkv.abs().max().item<double>();
  expect_close_abs(qf.transpose(1, 2), q32, kSinCosAbs * scale, "q");
  expect_close_abs(kf.transpose(1, 2), k32, kSinCosAbs * scale, "k");
}

// --- RMSNorm -------------------------------------------------------------------------------------------------------

Weights norm_weights(int64_t D, at::ScalarType dt, uint64_t seed) {
  Weights w;
  w.set("weight", (1.0 + 0.1 * randn({D}, seed)).to(kGpu, dt));
  return w;
}

TEST(FusedRmsNorm, MatchesPlain) {
  QVL_REQUIRE_CUDA();
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dt));
    // contiguous [1001, 1280]; a strided row view [1001, 1280] of [1001, 1408]; 3-D text sizes; D = 1000
    // (no multiple of 16 bytes in fp32 / bf16 per 128 threads), with rows of an odd length stride.
    at::Tensor big = (randn({1001, 1408}, 19) * 3.0).to(kGpu, dt);
    const std::vector<at::Tensor> xs = {big.narrow(1, 0, 1280).contiguous(), big.narrow(1, 64, 1280),
                                        (randn({2, 37, 3584}, 20) * 2.0).to(kGpu, dt),
                                        (randn({5, 1003}, 21)).to(kGpu, dt).narrow(1, 3, 1000)};
    for (size_t i = 0; i < xs.size(); ++i) {
      const at::Tensor& x = xs[i];
      SCOPED_TRACE("input " + std::to_string(i) + " " + shape_str(x.sizes()));
      Weights w = norm_weights(x.size(-1), dt, 22 + i);
      at::Tensor plain = rms_norm(w, x, 1e-6, nullptr, false);
      at::Tensor fused = rms_norm(w, x, 1e-6, nullptr, true);
      ASSERT_EQ(fused.scalar_type(), plain.scalar_type());
      if (dt == at::kFloat) {
        expect_close_abs(fused, plain, kRmsFp32Rel * plain.abs().max().item<double>(), "fp32");
      } else {
        expect_within_ulps(fused, plain, kRmsBf16Ulps, "bf16");
        const double equal = fused.eq(plain).to(at::kDouble).mean().item<double>();
        EXPECT_GE(equal, 0.99) << "only " << equal * 100 << "% of the bf16 outputs are bit-identical";
      }
    }
  }
}

TEST(FusedRmsNorm, MixedDtypesFallBackToPlain) {
  QVL_REQUIRE_CUDA();
  // bf16 activations with a float32 weight: the kernel does not cover it, rms_norm runs the plain path
  at::Tensor x = randn({17, 256}, 23).to(kGpu, at::kBFloat16);
  Weights w = norm_weights(256, at::kFloat, 24);
  EXPECT_FALSE(cuda::rms_norm(x, w.tensor("weight"), 1e-6).defined());
  expect_identical(rms_norm(w, x, 1e-6, nullptr, true), rms_norm(w, x, 1e-6, nullptr, false), "fallback");
}

// --- vision attention over cu_seqlens, in one call --------------------------------------------------------------

Weights attention_weights(int64_t C, at::ScalarType dt, uint64_t seed) {
  Weights w;
  const double s = 1.0 / std::sqrt(static_cast<double>(C));
  w.set("qkv.weight", (randn({3 * C, C}, seed) * s).to(kGpu, dt));
  w.set("qkv.bias", (randn({3 * C}, seed + 1) * 0.1).to(kGpu, dt));
  w.set("proj.weight", (randn({C, C}, seed + 2) * s).to(kGpu, dt));
  w.set("proj.bias", (randn({C}, seed + 3) * 0.1).to(kGpu, dt));
  return w;
}

Weights cast(const Weights& w, at::ScalarType dt) {
  Weights out;
  for (const auto& [k, t] : w.flatten()) out.set(k, t.to(dt));
  return out;
}

struct AttentionCase {
  const char* name;
  std::vector<int> cu;  // segment boundaries
};

const std::vector<AttentionCase>& attention_cases() {
  // windowed: uneven windows (64, 64, 72, 133, 179, 1, 487), including one of a single patch; full: one segment
  static const std::vector<AttentionCase> cases = {{"windowed", {0, 64, 128, 200, 333, 512, 513, 1000}},
                                                   {"full", {0, 1000}}};
  return cases;
}

TEST(FusedVisionAttention, BackendsAndFloat32MatchTheLoop) {
  QVL_REQUIRE_CUDA();
  const int64_t C = 1280, H = 16, S = 1000;
  VisionConfig plain = vision_cfg(C, H), fused = plain;
  fused.fused = true;
  Weights w = attention_weights(C, at::kFloat, 30);
  at::Tensor x = randn({S, C}, 34).to(kGpu);
  CosSin cs = vision::rotary(vision_positions(S, 35), plain);
  for (const auto& c : attention_cases()) {
    SCOPED_TRACE(c.name);
    at::Tensor cu = at::tensor(c.cu, at::kInt).to(kGpu);
    at::Tensor ref = vision::attention(w, x, cu, cs, plain);
    at::Tensor out = vision::attention(w, x, cu, cs, fused);
    expect_close_abs(out, ref, kAttnFp32Rel * ref.abs().max().item<double>(), "float32");
  }
  // which kernel runs: memory-efficient for float32, flash for bf16 (head_dim 80 is a multiple of 8)
  at::Tensor q = randn({S, H, 80}, 36).to(kGpu);
  at::Tensor cu = at::tensor(attention_cases()[0].cu, at::kInt);
  cuda::AttentionBackend used;
  ASSERT_TRUE(cuda::varlen_attention(q, q, q, cu, 0.1, &used).defined());
  EXPECT_EQ(used, cuda::AttentionBackend::MemoryEfficient) << cuda::backend_name(used);
  ASSERT_TRUE(cuda::varlen_attention(q.to(at::kBFloat16), q.to(at::kBFloat16), q.to(at::kBFloat16), cu, 0.1, &used).defined());
  EXPECT_EQ(used, cuda::AttentionBackend::Flash) << cuda::backend_name(used);
}

TEST(FusedVisionAttention, Bf16WithinTheBf16Rule) {
  QVL_REQUIRE_CUDA();
  const int64_t C = 1280, H = 16, S = 1000;
  VisionConfig plain = vision_cfg(C, H), fused = plain;
  fused.fused = true;
  Weights w32 = attention_weights(C, at::kFloat, 40);
  Weights w16 = cast(w32, at::kBFloat16);
  at::Tensor x16 = randn({S, C}, 44).to(kGpu, at::kBFloat16);
  CosSin cs = vision::rotary(vision_positions(S, 45), plain);
  for (const auto& c : attention_cases()) {
    SCOPED_TRACE(c.name);
    at::Tensor cu = at::tensor(c.cu, at::kInt).to(kGpu);
    // the float32 run on the same (bf16-valued) weights and input is the reference both are judged against
    at::Tensor ref = vision::attention(cast(w16, at::kFloat), x16.to(at::kFloat), cu, cs, plain);
    at::Tensor out_plain = vision::attention(w16, x16, cu, cs, plain);
    at::Tensor out_fused = vision::attention(w16, x16, cu, cs, fused);
    ASSERT_EQ(out_fused.scalar_type(), at::kBFloat16);
    expect_bf16_rule(out_fused, out_plain, ref, "attention");
  }
}

TEST(FusedVisionBlock, Bf16WithinTheBf16Rule) {
  QVL_REQUIRE_CUDA();
  const int64_t C = 1280, H = 16, S = 1000;
  VisionConfig plain = vision_cfg(C, H), fused = plain;
  plain.intermediate_size = fused.intermediate_size = 3420;
  fused.fused = true;
  Weights w32;
  for (const auto& [k, t] : attention_weights(C, at::kFloat, 50).flatten()) w32.set("attn." + k, t);
  w32.set("norm1.weight", (1.0 + 0.1 * randn({C}, 55)).to(kGpu));
  w32.set("norm2.weight", (1.0 + 0.1 * randn({C}, 56)).to(kGpu));
  for (uint64_t i = 0; i < 2; ++i) {
    const std::string p = i == 0 ? "mlp.gate_proj" : "mlp.up_proj";
    w32.set(p + ".weight", (randn({3420, C}, 57 + 2 * i) / std::sqrt(1280.0)).to(kGpu));
    w32.set(p + ".bias", (randn({3420}, 58 + 2 * i) * 0.1).to(kGpu));
  }
  w32.set("mlp.down_proj.weight", (randn({C, 3420}, 63) / std::sqrt(3420.0)).to(kGpu));
  w32.set("mlp.down_proj.bias", (randn({C}, 64) * 0.1).to(kGpu));
  Weights w16 = cast(w32, at::kBFloat16);
  at::Tensor x16 = randn({S, C}, 61).to(kGpu, at::kBFloat16);
  CosSin cs = vision::rotary(vision_positions(S, 62), plain);
  for (const auto& c : attention_cases()) {
    SCOPED_TRACE(c.name);
    at::Tensor cu = at::tensor(c.cu, at::kInt).to(kGpu);
    at::Tensor ref = vision::block(cast(w16, at::kFloat), x16.to(at::kFloat), cu, cs, plain);
    at::Tensor out_plain = vision::block(w16, x16, cu, cs, plain);
    at::Tensor out_fused = vision::block(w16, x16, cu, cs, fused);
    expect_bf16_rule(out_fused, out_plain, ref, "block");
  }
}

// --- qvl check --device cuda on the committed transformers recording ----------------------------------------------

TEST(QvlCheckCuda, TinyBf16RecordingPasses) {
  QVL_REQUIRE_CUDA();
  const std::string weights = testing::data_path("weights/tiny.h5"), rec = testing::data_path("recordings/tiny_bf16.h5");
  QVL_REQUIRE_FILE(rec);
  auto r = testing::run_qvl("check --device cuda " + weights + " " + rec);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("device:    cuda"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" 0 failed"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace qvl
