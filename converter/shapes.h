// The tensors a Qwen2_5_VLForConditionalGeneration checkpoint must hold for a given config.json, with their
// shapes (docs/design.md §8.2), and the check of a checkpoint against them before any compute.
//
//   model.visual.patch_embed.proj.weight                 [C_v, in_channels, T_p, P, P]
//   model.visual.blocks.{i}.norm1|norm2.weight           [C_v]
//   model.visual.blocks.{i}.attn.qkv.weight / .bias      [3 C_v, C_v] / [3 C_v]
//   model.visual.blocks.{i}.attn.proj.weight / .bias     [C_v, C_v] / [C_v]
//   model.visual.blocks.{i}.mlp.gate_proj|up_proj        [F_v, C_v] / [F_v]
//   model.visual.blocks.{i}.mlp.down_proj                [C_v, F_v] / [C_v]
//   model.visual.merger.ln_q.weight                      [C_v]
//   model.visual.merger.mlp.0.weight / .bias             [C_v m^2, C_v m^2] / [C_v m^2]
//   model.visual.merger.mlp.2.weight / .bias             [out_hidden_size, C_v m^2] / [out_hidden_size]
//   model.language_model.embed_tokens.weight             [V, D]
//   model.language_model.layers.{j}.self_attn.q_proj     [H Dh, D] / [H Dh]
//   model.language_model.layers.{j}.self_attn.k_proj|v_proj  [Hkv Dh, D] / [Hkv Dh]
//   model.language_model.layers.{j}.self_attn.o_proj.weight  [D, H Dh]
//   model.language_model.layers.{j}.mlp.gate_proj|up_proj.weight  [F, D]
//   model.language_model.layers.{j}.mlp.down_proj.weight          [D, F]
//   model.language_model.layers.{j}.input_layernorm|post_attention_layernorm.weight  [D]
//   model.language_model.norm.weight                     [D]
//   lm_head.weight                                       [V, D]  (optional with tie_word_embeddings)
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "functional/config.h"

namespace qvl {

struct ExpectedTensor {
  std::string key;  // canonical runtime path
  std::vector<int64_t> shape;
  bool optional = false;  // lm_head.weight under tie_word_embeddings
};

// Every tensor of the model for `cfg`, in module order (vision, text, lm_head).
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& cfg);

// Checks `actual` (canonical key -> shape) against expected_tensors(cfg): every required key present, every
// shape equal, and no key the model does not have. Throws one std::runtime_error that starts with `source`
// and lists the problems (up to 8, then a count): "shape mismatch for 'K': expected [a, b], got [c, d]",
// "missing tensor 'K' (expected [a, b])", "unexpected tensor 'K' [a, b] ...".
void check_tensor_shapes(const std::map<std::string, std::vector<int64_t>>& actual, const ModelConfig& cfg,
                         const std::string& source);

}  // namespace qvl
