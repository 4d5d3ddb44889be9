// The full Qwen2.5-VL model (qvl::model): get_rope_index, the embedding and the merge of image and video
// features, forward, lm_forward, prefill and the decode step. The text decoder it runs is in functional/text.h,
// the vision tower in functional/vision.h.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "functional/config.h"
#include "functional/recorder.h"
#include "functional/text.h"
#include "functional/weights.h"

namespace qvl::model {

// Mirrors Qwen2_5_VLModel.get_rope_index of transformers 5.x (groups of mm_token_type_ids: 0 text,
// 1 image, 2 video).
//   input_ids, mm_token_type_ids [B, T];  image_grid_thw [Gi, 3], video_grid_thw [Gv, 3] (or undefined);
//   second_per_grid_ts [Gv] (or undefined: 1);  attention_mask [B, T] (or undefined)
//   position_ids [3, B, T] int64 (0 at padded slots);  deltas [B, 1] = max position + 1 - unpadded length
// Quirks: a vision group of grid (t, h, w) gets t/h/w rows arange(t)*interval, arange(h/m), arange(w/m),
// all offset by the current position; images use interval 1, videos tokens_per_second * int(spg); the
// next text starts at current + max(h, w) / m (the temporal extent is not included, unlike 4.x).
struct RopeIndex {
  at::Tensor position_ids, deltas;
};
RopeIndex get_rope_index(const at::Tensor& input_ids, const at::Tensor& mm_token_type_ids,
                         const at::Tensor& image_grid_thw, const at::Tensor& video_grid_thw,
                         const at::Tensor& second_per_grid_ts, const at::Tensor& attention_mask,
                         const ModelConfig& c);

// The M-RoPE rows of a position_ids tensor: generate passes [4, B, T], whose row 0 holds the text positions
// (used by HF for packed-sequence masks only); rows 1-3 are the M-RoPE positions. [3, B, T] is returned as it is.
at::Tensor mrope_rows(const at::Tensor& position_ids);

// The multimodal inputs of one forward pass; undefined tensors mean "absent".
struct Inputs {
  at::Tensor input_ids;        // [B, T] int64
  at::Tensor attention_mask;   // [B, T]
  at::Tensor mm_token_type_ids;
  at::Tensor pixel_values, image_grid_thw;
  at::Tensor pixel_values_videos, video_grid_thw, second_per_grid_ts;
  // What generate passes besides the above (undefined in a plain forward):
  // position_ids: [3, B, T], or as generate passes them [4, B, T] with the text positions (attention-mask
  //   cumsum) in row 0, which HF uses only to detect packed sequences in the mask; rows 1-3 are M-RoPE.
  // rope_deltas: Qwen2_5_VLModel.rope_deltas, the state HF keeps on the module (set by get_rope_index at
  //   the prefill, read by every later step), here an explicit input; forward returns it as HF does.
  at::Tensor position_ids, rope_deltas;
};

// The input embeddings: embed_tokens(input_ids), with the vision tower's image and video features
// masked_scatter'ed into their placeholder tokens (a count mismatch is an error, as in HF).
//   out [B, T, D]. Weights: the `model` sub-tree.
at::Tensor embed_inputs(const Weights& w, const Inputs& in, const ModelConfig& c, Recorder* rec = nullptr);

// Mirrors Qwen2_5_VLModel.forward (a prefill; with a cache, the step over cached keys and values): embed,
// run the vision tower on images and videos, masked_scatter the features into their placeholder tokens,
// M-RoPE positions from get_rope_index, then
// the text model. Weights: the `model` sub-tree (visual, language_model).
struct ModelOutput {
  at::Tensor last_hidden_state;  // [B, T, D]
  at::Tensor rope_deltas;        // [B, 1], undefined for text-only input
};
// compute_3d_position_ids when in.position_ids is undefined: get_rope_index if there are vision grids and
// (no rope_deltas state or no past); else, with a state and a past, the attention-mask positions (or
// arange(past, past + T)) + rope_deltas; else none (the text model's arange). With `cache` (DynamicCache),
// the new keys/values are appended and the past length is cache->length().
ModelOutput forward(const Weights& w, const Inputs& in, const ModelConfig& c, Recorder* rec = nullptr,
                    text::KVCache* cache = nullptr);

// Mirrors Qwen2_5_VLForConditionalGeneration.forward (logits_to_keep = 0): logits = lm_head(hidden).
//   logits [B, T, V] in the model dtype. Weights: the root (model.*, lm_head.weight).
struct LMOutput {
  at::Tensor logits, rope_deltas;
};
// logits_to_keep > 0: lm_head on the last logits_to_keep positions only (hidden_states[:, -k:]).
LMOutput lm_forward(const Weights& root, const Inputs& in, const ModelConfig& c, Recorder* rec = nullptr,
                    text::KVCache* cache = nullptr, int64_t logits_to_keep = 0);

// Greedy generation with a KV cache, as transformers 5.x `generate(do_sample=False)` does it:
// - prefill: the full model on the prompt with M-RoPE positions from get_rope_index (text-only prompts: the
//   attention-mask cumsum on all rows), logits of the last position only (logits_to_keep = 1);
// - each decode step: next token = argmax of the float32 logits; the position is the previous token's
//   position + 1 on every row (GenerationMixin._update_model_kwargs_for_generation), the attention mask
//   grows by one; finished rows (eos seen) continue with `pad_token_id`.
//   out  [B, n] int64, n <= max_new_tokens (stops early when every row has finished)
// `on_token(step, tokens [B])` is called after each step if given (for printing tokens as they come).
// The two halves of generate, public so that a caller can drive its own loop (and tests can plant a bug).
struct DecodeState {
  text::KVCache cache;
  at::Tensor attention_mask;  // [B, past + T] int64
  // The one position state: the rope plan with, per source, the last token's position [3, B, 1]; each step
  // advances every source by one. The stock model has one source (M-RoPE); a Circle/AGE plan
  // (ModelConfig::text_rope) has one or two.
  text::RopePlan plan;
  // Stock M-RoPE only (undefined on a Circle/AGE plan), what generate carries beside the positions: row 0 of
  // its 4-row position_ids (the text position of the last token, [1, B, 1]) and the model's rope_deltas
  // state [B, 1].
  at::Tensor text_position;
  at::Tensor rope_deltas;
  at::Tensor logits;          // [B, V] float32 logits of the last position
};
// With `rec`, the stock model records what transformers' generate runs, call for call: its own
// get_rope_index (root path), then Qwen2_5_VLForConditionalGeneration with the cache, 4-row position_ids
// and logits_to_keep = 1 (docs/design.md §6: the chained run of a generate-phase recording).
DecodeState prefill(const Weights& root, const Inputs& in, const ModelConfig& c, Recorder* rec = nullptr);
// Appends `tokens` [B] at `positions` [3, B, 1] (undefined: the previous positions + 1, as generate does).
void decode_step(const Weights& root, DecodeState& s, const at::Tensor& tokens, const ModelConfig& c,
                 const at::Tensor& positions = {}, Recorder* rec = nullptr);

// The text model's rope plan for a prompt, from ModelConfig::text_rope (functional/rope/rope_config.h):
// stock M-RoPE (one source, transformers' get_rope_index), or Circle-RoPE positions (rope::circle::
// get_rope_index) on the layers its AGE strategy marks and stock M-RoPE on the rest. `last` gets, per
// source, the position [3, B, 1] that the last prompt token's successor will be one past (see TextRope for
// the decode policy). attention_mask [B, T] or undefined.
struct PlannedRope {
  text::RopePlan plan;
  at::Tensor rope_deltas;         // of the source layer 0 uses (what HF would cache), undefined if none
  std::vector<at::Tensor> last;   // per source [3, B, 1]
};
PlannedRope plan_rope(const Inputs& in, const at::Tensor& attention_mask, const ModelConfig& c, Recorder* rec = nullptr,
                      const std::string& path = "");

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = -1;  // -1: the first eos id, as generate does when pad_token_id is None
};
at::Tensor generate(const Weights& root, const Inputs& in, const ModelConfig& c, const GenerateOptions& opt,
                    const std::function<void(int64_t, const at::Tensor&)>& on_token = {}, Recorder* rec = nullptr);

}  // namespace qvl::model
