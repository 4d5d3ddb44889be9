// A plain ViT image classifier as pure functions over a Weights tree, with the position encoding
// plugged in from functional/rope/ (no copy of any variant lives here). No I/O.
//
// Model (pre-norm, as DeiT):
//   patches   [B, T, C*p*p]  non-overlapping p x p patches, row-major over the (gh, gw) grid, channel-major
//                            inside a patch (the flattening of a stride-p Conv2d's receptive field)
//   x         [B, T, W]      patch_embed (Linear), + pos_embed for "ape" (bicubic-resized to other grids)
//   x         [B, 1+T, W]    with a class token in front (cls_token, never rotated)
//   blocks    x += proj(attn(LN1(x)));  x += fc2(GELU(fc1(LN2(x))))
//             attn: qkv Linear -> H heads of D = W/H; the RoPE rotates q and k of the patch tokens only;
//                   softmax(q k^T / sqrt(D)) v (vit::attend: explicit for short sequences, else scaled_dot_product_attention)
//   logits    head(LN(x_cls))  (mean over the patch tokens without a class token)
//
// Weights tree (names as timm's VisionTransformer):
//   patch_embed.proj.{weight [W, C*p*p], bias [W]}, cls_token [1, 1, W], pos_embed [1, gh*gw, W] (ape),
//   rope.freqs [2, L, H*D/2] (mixed: learned frequencies), blocks.<i>.{norm1, attn.qkv, attn.proj, norm2,
//   mlp.fc1, mlp.fc2}.{weight, bias}, norm.{weight, bias}, head.{weight, bias}.
//
// Position encodings (VitRope, spec in brackets):
//   none          [none]           nothing
//   ape           [ape]            learned absolute embedding on the training grid
//   axial         [axial]          RoPE-ViT axial, complex form (rope::axial_angles + apply_pairs_complex), theta 100
//   axial-matrix  [axial-matrix]   the same angles through explicit 2x2 rotation matrices, one small matrix product
//                                  per pair (rope::pair_rotation_blocks, apply_pairs_matrix)
//   mixed         [mixed]          RoPE-Mixed, learned per layer and head (rope::mixed_angles), theta 10
//   block:N       [block:2..]      N x N blocks: exp of axis-partition generators (rope::generators_axis_partition,
//                                  block_rotations, apply_block_rope), theta 100. The blocks must split evenly
//                                  over the two axes, so 2*floor(D/(2N)) blocks rotate the first
//                                  N * 2*floor(D/(2N)) channels; the rest pass through (partial rotary).
//   spiral:K      [spiral:K]       Spiral RoPE with K = 2R directions, exact projection (rope::spiral_angles
//                                  in SpiralMode::kExact), theta 100, max_freq 1
//   ape+axial     [ape+axial]      both
// Positions of patch (row r, column c) on a gh x gw grid, x = column, y = row:
//   extend   (x, y) = (c, r): integer positions past the training grid (Heo et al.)
//   rescale  (x, y) = (c * Gw/gw, r * Gh/gh): rescaled into the training grid's range (Gh x Gw); Spiral does this
//            through its own pt_seq_len rule (t = r / n * pt), which is the same map.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "functional/weights.h"

namespace qvl::vit {

struct VitRope {
  enum class Kind { None, Ape, Axial, AxialMatrix, Mixed, Block, Spiral, ApeAxial };
  Kind kind = Kind::Axial;
  int64_t n = 0;        // block size N (Block) or directions K (Spiral)
  double theta = 100;   // 10 for Mixed
  std::string spec() const;  // canonical name: "axial", "block:3", ...
  bool ape() const { return kind == Kind::Ape || kind == Kind::ApeAxial; }
  bool rotary() const { return kind != Kind::None && kind != Kind::Ape; }
};
// "none", "ape", "axial", "axial-matrix", "mixed", "block:N" (N >= 2), "spiral:K" (K even >= 2), "ape+axial".
VitRope parse_rope(const std::string& spec);

struct VitConfig {
  int64_t image = 28;      // training image side (square)
  int64_t channels = 1;
  int64_t patch = 4;
  int64_t width = 64;      // W
  int64_t depth = 6;       // L
  int64_t heads = 1;       // H; head dim D = W / H
  int64_t mlp_ratio = 2;
  int64_t classes = 10;
  bool cls_token = true;
  VitRope rope;
  int64_t head_dim() const { return width / heads; }
  int64_t grid() const { return image / patch; }  // training grid side G
  void validate() const;                           // errors name the field and why
  std::string to_json() const;
  static VitConfig from_json(const std::string& text);
};

enum class Positions { Extend, Rescale };
Positions parse_positions(const std::string& s);  // "extend" | "rescale"

// The share of the head dim that the variant rotates (1 for axial/mixed/spiral/block dividing D, 0 for none/ape).
double rotated_fraction(const VitConfig& c);

// Fresh parameters, deterministic in `seed` (CPU generator; float32 on the CPU): truncated-normal(0.02)
// weights, zero biases, unit norms, and for mixed alpha ~ U[0, 2 pi) per layer and head.
Weights init(const VitConfig& c, uint64_t seed);

// Parameters that get no weight decay: biases, norms, cls_token, pos_embed and the mixed frequencies.
bool no_weight_decay(const std::string& path);

// The rotary tables for one grid, in the device/dtype of the weights. For mixed they depend on
// w["rope.freqs"] (differentiable); the others are constants a caller may cache per grid.
//   angles  [N, D/2] (axial, axial-matrix, ape+axial), [L, H, N, D/2] (mixed), [N, D] (spiral)
//   blocks  [N, nb, b, b] (block)
struct RopeTables {
  at::Tensor angles, blocks;
  int64_t gh = 0, gw = 0;
  bool defined() const { return angles.defined() || blocks.defined(); }
};
RopeTables rope_tables(const Weights& w, const VitConfig& c, int64_t gh, int64_t gw, Positions mode);
// Same from explicit float positions [M, 2] (x = column, y = row), for the relative-shift property checks.
// Spiral needs its grid (n_rows, n_cols) and integer positions inside it (its exact form adds a constant per
// grid, which cancels in q.k); pass them in `grid_hw`.
RopeTables rope_tables_at(const Weights& w, const VitConfig& c, const at::Tensor& pos_xy, int64_t grid_h, int64_t grid_w);

// Rotates q or k of the patch tokens for layer `layer`: x [B, H, N, D] -> [B, H, N, D].
at::Tensor apply_rope(const VitConfig& c, const RopeTables& t, int64_t layer, const at::Tensor& x);

// Optional wall-clock accounting of the RoPE work in a forward pass (host time; on CUDA the kernels are
// asynchronous, so these measure launches only).
struct RopeTimer {
  double build_s = 0, apply_s = 0;
};

// images [B, C, H, W] (float, already normalised; H and W multiples of the patch) -> logits [B, classes].
// `tables` must be for this grid (rope_tables); pass an undefined RopeTables to build them here.
at::Tensor forward(const Weights& w, const VitConfig& c, const at::Tensor& images, Positions mode = Positions::Extend,
                   const RopeTables& tables = RopeTables(), RopeTimer* timer = nullptr);

// softmax(q k^T / sqrt(D)) v for q, k, v [B, H, T, D]. Up to kExplicitAttentionMaxTokens tokens it is written
// out (matmul, softmax, matmul); longer sequences go to at::scaled_dot_product_attention. Measured with
// ATen's CPU kernels at D = 64 on one thread (bench/bench_vit_kernels.py): at T = 50 (the 7x7 training grid
// plus the class token) the explicit form runs forward+backward 1.37x as fast as the flash-attention kernel
// and forward 1.07x; at T = 65 and above the fused kernel's forward is faster (0.70x at 65, 0.40x at 197).
// The two differ in float rounding only.
constexpr int64_t kExplicitAttentionMaxTokens = 64;
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
// q k^T / sqrt(D)
at::Tensor scaled_logits(const at::Tensor& q, const at::Tensor& k);

// The attention logits q k^T / sqrt(D) of layer `layer` for patch tokens x [B, N, W] (the block input
// after norm1) at positions given by `tables`: [B, H, N, N]. Used by the relative-property tests.
at::Tensor attention_logits(const Weights& w, const VitConfig& c, int64_t layer, const at::Tensor& x, const RopeTables& tables);

// pos_embed [1, G*G, W] resized bicubically to gh x gw (align_corners false), as timm's resample_abs_pos_embed.
at::Tensor resize_pos_embed(const at::Tensor& pos_embed, int64_t grid, int64_t gh, int64_t gw);

}  // namespace qvl::vit
