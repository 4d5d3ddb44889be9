// Qwen2.5-VL text decoder (qvl::text). The full model (qvl::model) is in functional/model.h.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "functional/config.h"
#include "functional/recorder.h"
#include "functional/rotary.h"
#include "functional/weights.h"

namespace qvl::text {

// The KV cache of a decode: per layer, the post-RoPE keys and the values seen so far ([B, Hkv, T, Dh]).
// An explicit value the caller owns and passes in, mirroring DynamicCache (torch.cat along the sequence).
struct KVCache {
  std::vector<at::Tensor> keys, values;
  int64_t length() const { return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2); }
};
// A cache as a recorded value (docs/design.md §3): a dict of type "DynamicCache" with `keys` and `values`, one
// entry per layer (None where a layer is still empty), as the reference recorder snapshots HF's cache.
//   layers: how many entries to write (HF's cache has one per decoder layer from the start)
Value cache_value(const KVCache& cache, int64_t layers);
// The inverse; an error names what is malformed (not a dict, lists of different lengths, ...).
KVCache cache_from_value(const Value& v);

// Mirrors Qwen2_5_VLRotaryEmbedding.forward(x, position_ids) of transformers 5.x: M-RoPE cos/sin with
// the mrope_section recomposition already applied (4.x did it in apply_multimodal_rotary_pos_emb).
//   position_ids  [3, B, T] int64 (t, h, w rows)
//   cos, sin      [B, T, Dh] in `dtype` (the activation dtype: HF casts the float32 tables down)
// Quirks: frequencies are an outer product done as a float32 matmul; frequency i of [0, Dh/2) takes its
// position from row (i's chunk in mrope_section) % 3, and dims i and i + Dh/2 share it.
CosSin rotary(const at::Tensor& position_ids, at::ScalarType dtype, const TextConfig& c, Recorder* rec = nullptr,
              const std::string& path = "model.language_model.rotary_emb");

// Mirrors apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1).
//   q [B, H, T, Dh], k [B, Hkv, T, Dh], cos/sin [B, T, Dh]; no dtype change (no float32 upcast here).
// fused (CUDA tensors): cuda::rope_apply computes in float32 and rounds once, so in bf16 it differs from
// HF's op-by-op bf16 rounding (it is closer to the float32 result); in float32 it is bit-identical.
std::pair<at::Tensor, at::Tensor> apply_rotary_pos_emb(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& cos, const at::Tensor& sin,
                                                       bool fused = false);

// The eager attention mask of create_causal_mask: [B, 1, Tq, Tk] in `dtype`, 0 where query i (at absolute
// position past + i) may attend key j (j <= past + i and attention_mask[b, j] == 1), finfo(dtype).min
// elsewhere. `attention_mask` is the 2-D [B, Tk] padding mask, or undefined for none.
at::Tensor causal_mask(const at::Tensor& attention_mask, int64_t batch, int64_t q_len, int64_t past,
                       at::ScalarType dtype);

// Mirrors Qwen2_5_VLAttention.forward with eager attention (with a KV cache: see `cache` below).
//   x     [B, T, D];  mask [B, 1, T, T] additive (or undefined);  rope: cos/sin [B, T, Dh]
//   out   [B, T, D];  weights [B, H, T, T] (HF returns them too)
// Weights: q_proj.{weight [H*Dh, D], bias}, k_proj/v_proj.{weight [Hkv*Dh, D], bias}, o_proj.weight (no bias).
// Quirks: GQA by repeat_kv (query head h uses kv head h / (H/Hkv)); softmax in float32, cast back.
struct AttentionOutput {
  at::Tensor out, weights;
};
// With `cache`, the new keys/values are appended to layer `layer`'s entries and attention runs over all
// of them (the mask is then [B, 1, T, past + T]).
AttentionOutput attention(const Weights& w, const at::Tensor& x, const at::Tensor& mask, const CosSin& rope,
                          const TextConfig& c, Recorder* rec = nullptr, KVCache* cache = nullptr, int64_t layer = 0);

// Mirrors Qwen2_5_VLDecoderLayer.forward (pre-norm): h = x + attn(ln1(x)); out = h + mlp(ln2(h)).
// c.fast: runs decoder_layer_fast (and attention / mlp likewise run their _fast forms).
at::Tensor decoder_layer(const Weights& w, const at::Tensor& x, const at::Tensor& mask, const CosSin& rope,
                         const TextConfig& c, Recorder* rec = nullptr, KVCache* cache = nullptr, int64_t layer = 0);

// Shared by both paths, so that they record alike:
//   recorded_layer_inputs: the recorded inputs of an attention ("hidden_states") or decoder-layer ("arg0")
//     call: x, attention_mask (None when undefined) and position_embeddings (cos, sin);
//   rotate_qk: apply_rotary_pos_emb(q, k, cos, sin), recorded as transformers' free function at
//     <attn_path>.apply_rotary_pos_emb.
Value recorded_layer_inputs(const char* x_name, const at::Tensor& x, const at::Tensor& mask, const CosSin& rope);
std::pair<at::Tensor, at::Tensor> rotate_qk(Recorder* rec, const std::string& attn_path, const at::Tensor& q,
                                            const at::Tensor& k, const CosSin& rope, bool fused);

// DynamicCache.update for one layer: cat(past, new) along the sequence (dim -2), or the new tensors when the
// layer is empty; returns the whole keys and values [B, Hkv, past + T, Dh]. Shared by both attention paths.
std::pair<at::Tensor, at::Tensor> cache_update(KVCache& cache, int64_t layer, const at::Tensor& k, const at::Tensor& v);

// eager_attention_forward (attn_implementation "eager"), shared by both attention paths:
//   weights = softmax(q repeat_kv(k)^T * Dh^-0.5 + mask, float32).to(q.dtype);  out = weights repeat_kv(v)
//   q [B, H, T, Dh];  k, v [B, Hkv, Tk, Dh] (H a multiple of Hkv);  mask [B, 1, T, Tk] additive (or undefined)
// Returns out as [B, T, H Dh] (contiguous) and the weights [B, H, T, Tk].
std::pair<at::Tensor, at::Tensor> eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& mask);

// ---- The CPU fast path (functional/text_fast.cpp), opt-in with TextConfig::fast --------------------------
// Same maths as the plain functions above, fewer and larger ops; the plain path stays the reference (and
// what `qvl check` replays). Tested against it in tests/unit/test_text_fast.cpp.
//
// fuse_projections: the load-time weight transform the fast path needs. Returns a new tree with the same
// paths (w.path() and below) and the same tensors as `w`, except that in every text decoder layer under
// `w` (a node with self_attn.{q,k,v}_proj and mlp.{gate,up}_proj; `w` itself may be one):
//   self_attn.qkv_proj.weight [(H + 2 Hkv) Dh, D] = cat(q_proj.weight, k_proj.weight, v_proj.weight)
//   self_attn.qkv_proj.bias   [(H + 2 Hkv) Dh]    = cat of the three biases
//   mlp.gate_up_proj.weight   [2 F, D]            = cat(gate_proj.weight, up_proj.weight)
// and the originals (q/k/v_proj.{weight,bias}, gate/up_proj.weight) are kept, as row-slice views of the
// fused matrices: same values and shapes, contiguous, no second copy once the caller drops `w`. So the plain
// path runs on the result unchanged. `w` is not modified. An error names the path of a missing or
// mismatched (shape, dtype, device) projection.
// pack: also adds <proj>.packed = packed::pack(<proj>.weight) for qkv_proj, o_proj, gate_up_proj and down_proj
// (float32 CPU weights only, else an error), for TextConfig::fast_packed. Memory: the packed copies are about
// 1.07x those four matrices, so a packed tree holds about twice the layer's weights (the plain ones serve the
// inputs of fewer than packed::kMinRows rows, i.e. decode).
Weights fuse_projections(const Weights& w, bool pack = false);

// attention_fast: text::attention with
//   - one GEMM for q, k and v (qkv_proj), then q, k, v as views of its output (no copies);
//   - the rotary apply of the plain path (apply_rotary_pos_emb) on those views;
//   - float32: at::scaled_dot_product_attention with enable_gqa (on the CPU the flash kernel: no repeat_kv
//     copies, no [B, H, T, Tk] weights tensor), the same additive mask and scale Dh^-0.5. Its softmax is
//     online (max-subtracted in blocks), so it differs from the eager path at float32 rounding level.
//   - other dtypes (bfloat16): eager_attention, as the plain path. SDPA keeps the scores in float32 where
//     transformers' eager path rounds them to bfloat16; replayed against the bf16 recordings, that moved
//     single elements by 1-2 bf16 ulps, past the bf16 rule's max |error| bound (2x transformers' own) on 7
//     calls (tests/golden/test_text_fast_golden.cpp). The bf16 fast path keeps the fused GEMMs and in-place
//     ops only.
// With c.fast_packed and >= packed::kMinRows rows (B * T), the qkv and o_proj GEMMs run on the packed copies.
// Differences visible to a caller: in float32, AttentionOutput::weights is undefined (the kernel never forms
// them; recorded as None).
// The cache is updated with cache_update, as in the plain path; a new layer entry stores compact copies of
// k and v (not views that would keep the whole qkv output alive). Weights: qkv_proj.{weight, bias, packed},
// o_proj.{weight, packed} (packed: only with c.fast_packed).
AttentionOutput attention_fast(const Weights& w, const at::Tensor& x, const at::Tensor& mask, const CosSin& rope,
                               const TextConfig& c, Recorder* rec = nullptr, KVCache* cache = nullptr,
                               int64_t layer = 0);
// decoder_layer_fast: decoder_layer with attention_fast and mlp_fast, and the two residual adds done in place
// on the fresh attention / MLP outputs (x is never modified). With a recorder the adds are out of place, as
// a recorder keeps references to the tensors it was given. Recorded calls are those of the plain path (the
// layer, both norms, the attention with its apply_rotary_pos_emb, the MLP), with the attention weights None.
at::Tensor decoder_layer_fast(const Weights& w, const at::Tensor& x, const at::Tensor& mask, const CosSin& rope,
                              const TextConfig& c, Recorder* rec = nullptr, KVCache* cache = nullptr,
                              int64_t layer = 0);

// Mirrors Qwen2_5_VLTextModel.forward from inputs_embeds (a prefill; with `cache`, see below).
//   inputs_embeds [B, T, D];  attention_mask [B, T] (or undefined);  position_ids [3, B, T] (or undefined:
//   arange(T) on all three rows)
//   out [B, T, D] after the final norm
// Weights: layers.<i>, norm (the model.language_model sub-tree; embed_tokens is applied by the caller).
// With `cache`: the past length is cache->length(), attention_mask covers past + T, and position_ids are
// required (decode positions come from the caller: see model::generate).
at::Tensor text_model(const Weights& w, const at::Tensor& inputs_embeds, const at::Tensor& attention_mask,
                      const at::Tensor& position_ids, const TextConfig& c, Recorder* rec = nullptr,
                      KVCache* cache = nullptr);

// A per-layer rope plan (docs/design.md §2): several candidate position tensors and, per layer, which one it
// uses -- e.g. Circle-RoPE on some layers and M-RoPE on others (AGE). cos/sin are computed once per source.
//   positions[s]   [3, B, T] int64 or float32 (undefined: arange(T) + past on all rows)
//   names[s]       recorder name: "" records the source's rotary at <path>.rotary_emb (the stock call),
//                  otherwise at <path>.rotary_emb.<name>
//   layer_source   [num_hidden_layers] indices into positions
struct RopePlan {
  std::vector<at::Tensor> positions;
  std::vector<std::string> names;
  std::vector<int64_t> layer_source;
};
// text_model with a rope plan; text_model(..., position_ids, ...) is the one-source plan.
at::Tensor text_model(const Weights& w, const at::Tensor& inputs_embeds, const at::Tensor& attention_mask,
                      const RopePlan& plan, const TextConfig& c, Recorder* rec = nullptr, KVCache* cache = nullptr);

}  // namespace qvl::text
