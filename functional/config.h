// Plain config structs mirroring Qwen2_5_VLVisionConfig / Qwen2_5_VLTextConfig / Qwen2_5_VLConfig.
// They are parsed from an HF config.json by instrument/config_json.h (functional/ does no JSON I/O).
// Defaults here are never relied on for a real model: the parser requires every field it reads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "functional/rope/rope_config.h"

namespace qvl {

namespace rope {
struct VisionRope;  // functional/rope/vision_plug.h
}

struct VisionConfig {
  int64_t depth = 0;
  int64_t hidden_size = 0;          // C_v
  int64_t intermediate_size = 0;    // F_v
  int64_t num_heads = 0;            // H_v
  int64_t in_channels = 3;
  int64_t patch_size = 14;          // P
  int64_t temporal_patch_size = 2;  // T_p
  int64_t spatial_merge_size = 2;   // m
  int64_t window_size = 112;
  int64_t out_hidden_size = 0;
  int64_t tokens_per_second = 2;
  double rope_theta = 10000.0;
  std::vector<int64_t> fullatt_block_indexes;
  std::string hidden_act = "silu";
  // Hard-coded in HF (Qwen2_5_VLRMSNorm(..., eps=1e-6) in the vision block and merger), not in the config.
  double rms_norm_eps = 1e-6;
  // Not an HF field (never read from config.json): run the fused CUDA kernels (functional/cuda/fused.h) for
  // RMSNorm, the rotary apply and the attention over cu_seqlens when the tensors are on a CUDA device.
  bool fused = false;

  int64_t head_dim() const { return hidden_size / num_heads; }
  int64_t patch_dim() const { return in_channels * temporal_patch_size * patch_size * patch_size; }
};

struct TextConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;          // D
  int64_t intermediate_size = 0;    // F
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;  // H
  int64_t num_key_value_heads = 0;  // Hkv
  int64_t max_position_embeddings = 0;
  std::string hidden_act = "silu";
  double rms_norm_eps = 1e-6;
  double rope_theta = 1e6;
  std::vector<int64_t> mrope_section;  // sums to head_dim / 2
  bool tie_word_embeddings = false;
  // Not an HF field: run the fused CUDA kernels for RMSNorm and the rotary apply on CUDA tensors.
  bool fused = false;
  // Not an HF field (never read from config.json, never set from the weights' contents): run the fast path
  // of text::attention / text::mlp / text::decoder_layer (one qkv GEMM, one gate_up GEMM, fused SDPA; see
  // text::attention_fast). Needs weights from text::fuse_projections. The plain path is the reference.
  bool fast = false;
  // Not an HF field: with `fast`, inputs of >= packed::kMinRows rows run their projections through MKL's packed
  // GEMM (functional/packed_gemm.h) on the packed copies that text::fuse_projections(w, /*pack=*/true) adds.
  bool fast_packed = false;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

struct ModelConfig {
  VisionConfig vision;
  TextConfig text;
  int64_t image_token_id = 0;
  int64_t video_token_id = 0;
  int64_t vision_start_token_id = 0;
  int64_t vision_end_token_id = 0;
  rope::TextRope text_rope;  // the text model's rope plan (default: stock M-RoPE); set by --rope, never by config.json
  // The vision tower's 2-D rotary builder (null: Qwen's own); set by --rope-vision, never by config.json.
  std::shared_ptr<const rope::VisionRope> vision_rope;
  std::string source;  // where it was parsed from, for error messages
};

}  // namespace qvl
