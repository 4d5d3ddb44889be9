// Circle-RoPE (Wang et al., arXiv 2505.16416; official code lose4578/CircleRoPE @ 063fb2c) and AGE.
//
// Builder: maps one visual block's LLM grid (T, H, W) to 3 float32 position rows (t, h, w), which then
// feed the ordinary chunked M-RoPE (rope1d.h). The steps, as the official code takes them, with
// x = column j, y = row i, z = the temporal index of the frame:
//   0. coords (x, y, z) on the grid, int64.
//   1. move_to_origin: subtract the per-axis centre (max + min) / 2 (float32 from here on).
//   2. radius R: a number, or "auto" / "auto-k": |max over all coordinates| * k (the code's rule; the paper's
//      max L2 norm is NOT what the code does).
//   3. method "circle": on frame 0, phi = atan2(y, x); theta_SA = (phi - min phi) / (max - min) * 2 pi (phi
//      itself when max == min); theta_GA = 2 pi k / (H W) for the row-major index k;
//      theta = alpha theta_SA + (1 - alpha) theta_GA; (a, b) = (R cos theta, R sin theta).
//      method "no_circle": (a, b) = (x, y).
//   4. plane embedding orthogonal to the text direction n = (1,1,1)/sqrt3: u = (-1,1,0)/sqrt2,
//      v = n x u = (-1,-1,2)/sqrt6, P = a u + b v (z is dropped).
//   5. dff_rate beta > 0: P = (1 - beta) P_circle + beta P_flat, P_flat = x u + y v (HEAD convention; commits
//      before 2025-09-01 swapped the weights: DffConvention::Legacy).
//   6. move_to_positive m: P += |min P| + off, off = 0 for "auto", float(m) otherwise (True -> 1.0).
//   7. rows (t, h, w) = (P2, P1, P0), flattened row-major over (i, j).
// The sequence offset (text length + start) is added by get_rope_index, as in M-RoPE.
//
// Videos (T > 1): the official code maps frame 0 only and so returns H*W points for T*H*W tokens (its
// get_rope_index then fails). qvl's extension (VideoFrames::PerFrame, the default): every frame gets the
// frame-0 mapping shifted along the text direction by its temporal coordinate z' (after centring when
// move_to_origin), P_f = P + z'_f (1, 1, 1), applied after step 5 and before step 6. The shift is along
// n, so each frame stays an equidistant circle from every text position (the cone property) and frames
// are ordered in time like text steps; for T = 1 (z' = 0) it is the official mapping bit for bit.
// VideoFrames::Official reproduces the official behaviour: T > 1 with method "circle" is an error naming
// the grid, and "no_circle" collapses all frames onto frame 0's positions (z dropped).
#pragma once

#include <ATen/ATen.h>

#include "functional/rope/rope_config.h"

#include <string>
#include <vector>

namespace qvl::rope::circle {

// One visual block. frame_times [T] int64: the temporal coordinate of each frame (the official code's
// time_tensor.long(): frame index * seconds_per_grid * tokens_per_second, 0 for an image).
//   out [3, T*H*W] float32, rows (t, h, w), before the sequence offset.
at::Tensor block_positions(const at::Tensor& frame_times, int64_t H, int64_t W, const Config& cfg);

// The official Qwen2.5-VL (transformers 4.49 style) block positions, as the Circle code's _get_m_index:
// rows (frame_times[f], i, j) int64 [3, T*H*W].
at::Tensor m_block_positions(const at::Tensor& frame_times, int64_t H, int64_t W);

struct TokenIds {
  int64_t vision_start = 0, image = 0, video = 0;
  int64_t spatial_merge_size = 2;
  double tokens_per_second = 2.0;
};

struct RopeIndex {
  at::Tensor position_ids;  // [3, B, L] float32 (int64 when there is no visual grid, as the official code)
  at::Tensor deltas;        // [B, 1] float32: max position + 1 - L (L the padded length)
};

// Mirrors get_rope_index of the official Circle-RoPE modular file (the transformers 4.49 walker):
//   input_ids [B, L] int64; image_grid_thw [Gi, 3] / video_grid_thw [Gv, 3] int64 (or undefined);
//   second_per_grid_ts [Gv] (or undefined: 1.0); attention_mask [B, L] (or undefined: all ones).
// Per row, over its unpadded tokens: a vision group starts after `vision_start`, its kind is the next
// token; text before it gets arange + start on all rows; the block gets block_positions (use_m_index:
// m_block_positions) + text_len + start; the next start is max(previous segment) + 1 (float). Padded slots
// hold 1. The image/video counts must match the grids (an error names the row and the counts).
RopeIndex get_rope_index(const at::Tensor& input_ids, const at::Tensor& image_grid_thw, const at::Tensor& video_grid_thw,
                         const at::Tensor& second_per_grid_ts, const at::Tensor& attention_mask, const TokenIds& ids,
                         const Config& cfg, bool use_m_index);

// --- AGE: per-layer choice between Circle (true) and M-RoPE (false) positions ----------------------------
// The official table (AGE_index_dict) is for 36 layers. qvl's rule for any L layers, equal to the table at
// L = 36: strategy_2: layer l < L/2 (the lower half, as the CODE names it; the paper's text swaps 2 and 3);
// strategy_3: l >= L/2; strategy_4: l even (0-based, i.e. 1-based odd layers). "all": every layer Circle.
// An unknown name is an error listing the known ones.
std::vector<bool> age_layers(const std::string& strategy, int64_t num_layers);

}  // namespace qvl::rope::circle
