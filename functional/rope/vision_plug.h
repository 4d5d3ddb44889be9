// Pluggable 2-D rotary for the Qwen2.5-VL vision tower: vision::transformer(..., rope) takes one of these
// in place of Qwen's own Qwen2_5_VLVisionRotaryEmbedding (the default, used when none is given).
//
// Contract of a builder:
//   pos_hw    [S, 2] int64 (row h, column w) patch indices per image, as vision::position_ids returns
//             them (merge-block order, frames repeated)
//   grid_thw  [G, 3] int64 (t, h, w): image g owns the next t*h*w rows of pos_hw
//   layer     the block index (0 when per_layer is false: one table for every block)
//   out       CosSin, float32 on pos_hw's device, either [S, Dh] (every head) or [S, H, Dh] (per head;
//             RoPE-Mixed). The builders below compute on the host and move the tables there.
//
// Layout mapping. Inside the tower every variant keeps Qwen's split-half pair layout: pair k of a head is
// channels (k, k + Dh/2), turned by phi_k through apply_rotary_pos_emb_vision with
// cos = cat(cos phi, cos phi) and sin = cat(sin phi, sin phi). A builder yields phi_k = the angle its own
// paper code gives its pair k, i.e. its complex / interleaved pair (2k, 2k+1). q and k come out of a
// learned projection, so moving pair (2k, 2k+1) to (k, k + Dh/2) is a fixed permutation of the
// projection's output rows: the attention scores are those of the variant in its own layout. Each
// variant keeps its own axis order: Qwen row-then-column, RoPE-ViT/block column (x) then row (y),
// Spiral row half then column half.
//
// Builders (spec for parse_vision_rope in brackets, defaults shown):
//   qwen     [qwen]                          vision::rotary: bit for bit the default tower
//   axial    [axial:theta=100]               RoPE-ViT axial (rope2d.h), x = column, y = row
//   mixed    [mixed:theta=10,seed=0]         RoPE-Mixed, per layer and head; alpha_{l,h} ~ U[0, 2 pi) drawn
//                                            from a CPU generator seeded with `seed` (layer-major order), so
//                                            the same spec always gives the same frequencies
//   spiral   [spiral:rotate=2,max_freq=1.5,min_freq=0,truncate=0,same_theta=0,theta=10000,pt=0,mode=exact]
//            Spiral RoPE (spiral.h) per image grid; mode=clamp (reference-compatible) needs square image
//            grids, mode=exact takes any; pt > 0 rescales positions by pt/n (square grids only), pt = 0
//            keeps integer patch positions. Phi of pair q = the interleaved channel 2q.
//   block2   [block2:theta=100]              2x2 block RoPE from the matrix exponential of axis-partition
//            generators (block.h), read back as cos/sin = blocks[0][0], blocks[1][0]. Equal to axial up to
//            matrix_exp rounding. Blocks of size >= 3 are not rotations of channel pairs, so they cannot
//            be written as cos/sin: they need apply_block_rope inside the attention (not plugged here).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>

#include "functional/config.h"
#include "functional/rope/spiral.h"
#include "functional/rotary.h"

namespace qvl::rope {

using VisionRopeBuild =
    std::function<CosSin(const at::Tensor& pos_hw, const at::Tensor& grid_thw, int64_t layer, const VisionConfig& c)>;

struct VisionRope {
  std::string name;        // the spec it stands for, e.g. "spiral:rotate=2,mode=exact"
  VisionRopeBuild build;
  bool per_layer = false;  // build once per block (layer = block index) instead of once per tower
};

VisionRope qwen_vision_rope();
VisionRope axial_vision_rope(double theta = 100.0);
VisionRope mixed_vision_rope(double theta = 10.0, uint64_t seed = 0);
// `c.head_dim` is ignored: the tower's head dim is used.
VisionRope spiral_vision_rope(const SpiralConfig& c, SpiralMode mode);
VisionRope block2_vision_rope(double theta = 100.0);

// Parses "name[:key=value,...]" (see the table above). Errors name the unknown rope, the unknown key
// (listing the known ones) or the bad value.
VisionRope parse_vision_rope(const std::string& spec);

// cos/sin in the tower's split-half layout from per-pair angles phi [..., Dh/2]: cat(phi, phi).cos()/.sin().
CosSin split_half_cos_sin(const at::Tensor& phi);

}  // namespace qvl::rope
