// Qwen2.5-VL vision tower modules (qvl::vision).
#pragma once

#include <ATen/ATen.h>

#include "functional/config.h"
#include "functional/recorder.h"
#include "functional/rope/vision_plug.h"
#include "functional/rotary.h"
#include "functional/weights.h"

namespace qvl::vision {

// Mirrors Qwen2_5_VisionPatchEmbed.forward.
//   pixel_values  [S, C*T_p*P*P]  (1176 for C=3, T_p=2, P=14), columns in (c, t, py, px) order
//   out           [S, C_v]        dtype of proj.weight
// Weights: proj.weight [C_v, C, T_p, P, P] (Conv3d, no bias).
// Quirk: the input is cast to the weight dtype first; stride == kernel, so this is one matmul per patch,
// but HF runs it as a Conv3d and so do we (bf16 conv and matmul round differently).
at::Tensor patch_embed(const Weights& w, const at::Tensor& pixel_values, const VisionConfig& c,
                       Recorder* rec = nullptr);

// Mirrors Qwen2_5_VLPatchMerger.forward.
//   x    [S, C_v]        patches in window order, each m x m merge block contiguous (m = spatial_merge_size; the tiny_merge3_mha scenario has m = 3)
//   out  [S/m^2, out_D]  out_D = out_hidden_size
// Weights: ln_q.weight [C_v]; mlp.0.{weight [C_v*m^2, C_v*m^2], bias}; mlp.2.{weight [out_D, C_v*m^2], bias}.
// Quirks: ln_q is an RMSNorm with eps 1e-6; row g of the view concatenates patches m^2*g .. m^2*g+m^2-1;
// the GELU is exact (erf); both linears have biases.
at::Tensor patch_merger(const Weights& w, const at::Tensor& x, const VisionConfig& c, Recorder* rec = nullptr);

}  // namespace qvl::vision

namespace qvl::vision {

// --- index builders (vision_utils.py of transformers 5.x) ---------------------------------------------

// Mirrors get_vision_position_ids(grid_thw, spatial_merge_size) (G1/G2: inside rot_pos_emb).
//   grid_thw  [G, 3] int64 (t, h, w in patches)
//   out       [S, 2] int64 (h, w) per patch, in merge-block order (h/m, w/m, m, m), repeated t times
at::Tensor position_ids(const at::Tensor& grid_thw, int64_t spatial_merge_size);

// Mirrors get_vision_cu_seqlens(grid_thw, merge_temporal=False): one segment per frame.
//   out  [sum(t)+1] int32 cumulative patch counts
at::Tensor cu_seqlens(const at::Tensor& grid_thw);

// Mirrors get_vision_window_index(grid_thw, spatial_merge_size, window_size, patch_size).
//   window_index       [S/m^2] int64 permutation of merged tokens into window-major order
//   cu_window_seqlens  [W+1] int32 window boundaries in patches (unique_consecutive: empty windows vanish)
// Quirk: padding is ws - n % ws, so a whole empty window row/column is added when n % ws == 0.
struct WindowIndex {
  at::Tensor window_index;
  at::Tensor cu_window_seqlens;
};
WindowIndex window_index(const at::Tensor& grid_thw, int64_t spatial_merge_size, int64_t window_size,
                         int64_t patch_size);

// --- rotary ---------------------------------------------------------------------------------------------

// Mirrors Qwen2_5_VLVisionRotaryEmbedding.forward(x, position_ids) (5.x; G1/G2 rot_pos_emb + cat + cos/sin).
//   position_ids  [S, 2] int64 (h, w)
//   cos, sin      [S, Dh] float32: per patch [h*inv | w*inv | h*inv | w*inv], inv = theta^(-2i/(Dh/2)), i < Dh/4
// Quirk: always float32, whatever the model dtype (x only supplies the device).
using qvl::CosSin;
CosSin rotary(const at::Tensor& position_ids, const VisionConfig& c, Recorder* rec = nullptr,
              const std::string& path = "model.visual.rotary_pos_emb");

// The 4.49-era forms of the same angles (the conversion framework's recordings hold them; qvl import maps them):
// Mirrors Qwen2_5_VisionRotaryEmbedding(dim = Dh/2).forward(seqlen): outer(arange(seqlen), inv_freq).
//   out  [seqlen, Dh/4] float32, inv_freq as in rotary()
at::Tensor rotary_freq_table(int64_t seqlen, const VisionConfig& c);
// Mirrors rot_pos_emb(grid_thw): the table at max(h, w) gathered at each patch's (h, w) and flattened.
//   out  [S, Dh/2] float32 = per patch [h*inv | w*inv] (rotary()'s angles before cos/sin and the repeat)
at::Tensor rot_pos_emb(const at::Tensor& grid_thw, const VisionConfig& c);

using qvl::rotate_half;

// Mirrors apply_rotary_pos_emb_vision(q, k, cos, sin).
//   q, k      [S, H, Dh]  any float dtype
//   cos, sin  [S, Dh] (HF; unsqueezed to [S, 1, Dh]), or [S, H, Dh] per head (rope::mixed_vision_rope; used as is)
//   out       (q', k') in the dtypes of q and k
// Quirk: q, k, cos and sin are upcast to float32 for the rotation, then cast back.
// fused: on CUDA tensors with [S, Dh] tables, one kernel does both (cuda::rope_apply, bit-identical).
std::pair<at::Tensor, at::Tensor> apply_rotary_pos_emb_vision(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& cos, const at::Tensor& sin,
                                                              bool fused = false);

// --- attention, block, tower -----------------------------------------------------------------------------

// Mirrors Qwen2_5_VLVisionAttention.forward with eager attention.
//   x           [S, C_v]
//   cu_seqlens  [N+1] int32: attention is block-diagonal over these segments (windows or frames)
//   cos, sin    [S, Dh] float32
//   out         [S, C_v]
// Weights: qkv.{weight [3*C_v, C_v], bias [3*C_v]} (rows q | k | v, each head-contiguous), proj.{weight, bias}.
// Quirk: HF's eager path loops over segments; softmax runs in float32 and is cast back to the q dtype.
// c.fused on CUDA: the fused rotary, then every segment in one varlen flash (bf16/fp16) or memory-efficient
// (fp32) call (cuda::varlen_attention); the loop runs when neither kernel takes the inputs.
at::Tensor attention(const Weights& w, const at::Tensor& x, const at::Tensor& cu_seqlens, const CosSin& rope,
                     const VisionConfig& c, Recorder* rec = nullptr);

// Mirrors Qwen2_5_VLVisionBlock.forward: x + attn(norm1(x)), then + mlp(norm2(.)).
//   x [S, C_v] -> [S, C_v]; weights norm1, norm2, attn, mlp.
at::Tensor block(const Weights& w, const at::Tensor& x, const at::Tensor& cu_seqlens, const CosSin& rope,
                 const VisionConfig& c, Recorder* rec = nullptr, const std::string& settings_json = "{}");

// Mirrors Qwen2_5_VisionTransformerPretrainedModel.forward.
//   pixel_values  [S, C*T_p*P*P]
//   grid_thw      [G, 3] int64
//   out.last_hidden_state  [S, C_v]  the pre-merger state, still in WINDOW order (as 5.x returns it)
//   out.pooler_output      [S/m^2, out_D]  merged tokens back in raster (merge-block) order
// Weights: patch_embed, blocks.<i>, merger (the model.visual sub-tree).
// Quirks: patches are permuted into window order in groups of m^2 before the blocks and merged tokens are
// un-permuted (argsort of window_index) after the merger; blocks in fullatt_block_indexes use per-frame
// cu_seqlens, the others the window boundaries.
// `rope` (optional) replaces Qwen's rotary with a pluggable 2-D builder (functional/rope/vision_plug.h); its
// tables are permuted into window order like HF's, and a per_layer builder gives block i the table of layer
// i. nullptr = the stock Qwen2_5_VLVisionRotaryEmbedding (bit for bit the HF tower). With a recorder, the
// builder's (first) table is recorded at <path>.rotary_pos_emb with settings {"rope": name}.
struct TowerOutput {
  at::Tensor last_hidden_state;
  at::Tensor pooler_output;
};
TowerOutput transformer(const Weights& w, const at::Tensor& pixel_values, const at::Tensor& grid_thw,
                        const VisionConfig& c, Recorder* rec = nullptr, const rope::VisionRope* rope = nullptr);

}  // namespace qvl::vision
