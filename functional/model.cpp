#include "functional/model.h"

#include <cmath>
#include <limits>

#include "functional/cuda/fused.h"
#include "functional/linear.h"
#include "functional/mlp.h"
#include "functional/norm.h"
#include "functional/rope/circle.h"
#include "functional/vision.h"

namespace qvl::model {

RopeIndex get_rope_index(const at::Tensor& input_ids, const at::Tensor& types, const at::Tensor& image_grid_thw,
                         const at::Tensor& video_grid_thw, const at::Tensor& second_per_grid_ts,
                         const at::Tensor& attention_mask, const ModelConfig& c) {
  const int64_t B = input_ids.size(0), T = input_ids.size(1), m = c.vision.spatial_merge_size;
  at::Tensor position_ids = at::zeros({3, B, T}, at::kLong);  // built on the host (data_ptr walks below)
  auto rows = [](const at::Tensor& g) {
    std::vector<std::array<int64_t, 3>> out;
    if (!g.defined()) return out;
    at::Tensor gl = g.to(at::kLong).contiguous();
    for (int64_t i = 0; i < gl.size(0); ++i) out.push_back({gl[i][0].item<int64_t>(), gl[i][1].item<int64_t>(), gl[i][2].item<int64_t>()});
    return out;
  };
  auto images = rows(image_grid_thw), videos = rows(video_grid_thw);
  size_t next_image = 0, next_video = 0, next_spg = 0;
  std::vector<int64_t> deltas;
  at::Tensor ids_all = input_ids.to(at::kCPU).to(at::kLong).contiguous(), types_all = types.to(at::kCPU).to(at::kLong).contiguous();
  for (int64_t b = 0; b < B; ++b) {
    at::Tensor keep = attention_mask.defined() ? attention_mask[b].to(at::kCPU).to(at::kBool) : at::ones({T}, at::kBool);
    at::Tensor ty = types_all[b].masked_select(keep).contiguous();
    const int64_t n = ty.numel();
    const int64_t* tp = ty.data_ptr<int64_t>();
    std::vector<at::Tensor> parts;
    int64_t current = 0;
    for (int64_t s = 0; s < n;) {
      int64_t e = s;
      while (e < n && tp[e] == tp[s]) ++e;  // itertools.groupby over the token types
      if (tp[s] == 0) {
        parts.push_back(at::arange(e - s, at::kLong).view({1, -1}).expand({3, -1}) + current);
        current += e - s;
      } else {
        const bool video = tp[s] == 2;
        auto& list = video ? videos : images;
        size_t& next = video ? next_video : next_image;
        TORCH_CHECK(next < list.size(), "get_rope_index: more ", video ? "video" : "image",
                    " token groups than grids in ", video ? "video_grid_thw" : "image_grid_thw", " (", list.size(),
                    " grids)");
        const auto g = list[next++];
        int64_t interval = 1;
        if (video) {
          // time_interval = tokens_per_second * int(next(second_per_grid_ts)); the default iterator yields 1
          double spg = 1.0;
          if (second_per_grid_ts.defined()) spg = second_per_grid_ts.to(at::kDouble)[next_spg].item<double>();
          ++next_spg;
          interval = c.vision.tokens_per_second * static_cast<int64_t>(spg);
        }
        // get_vision_position_ids(current, grid, 1, m, interval): meshgrid(T, H, W, "ij"), row 0 += start
        at::Tensor tt = at::arange(g[0], at::kLong) * interval;
        at::Tensor hh = at::arange(g[1] / m, at::kLong) + current;
        at::Tensor ww = at::arange(g[2] / m, at::kLong) + current;
        auto grids = at::meshgrid({tt, hh, ww}, "ij");
        at::Tensor vp = at::stack({grids[0], grids[1], grids[2]}, 0).reshape({3, -1}).clone();
        vp[0] += current;
        parts.push_back(vp);
        current += std::max(g[1], g[2]) / m;
      }
      s = e;
    }
    at::Tensor llm = at::cat(parts, 1).reshape({3, -1});  // [3, n]
    if (attention_mask.defined()) {
      position_ids.select(1, b).index_put_({at::indexing::Slice(), keep}, llm);
    } else {
      position_ids.select(1, b).copy_(llm);
    }
    deltas.push_back(llm.max().item<int64_t>() + 1 - n);
  }
  return {position_ids.to(input_ids.device()), at::tensor(deltas, at::kLong).unsqueeze(1).to(input_ids.device())};
}

at::Tensor embed_inputs(const Weights& w, const Inputs& in, const ModelConfig& c, Recorder* rec) {
  const Weights lm = w.at("language_model");
  const at::Tensor& table = lm.tensor("embed_tokens.weight", {c.text.vocab_size, c.text.hidden_size});
  // inputs_embeds = self.get_input_embeddings()(input_ids)
  RecordScope es(rec, lm.path() + ".embed_tokens", "Embedding", [&] { return Value::dict({{"arg0", Value::of(in.input_ids)}}); });
  at::Tensor embeds = at::embedding(table, in.input_ids);
  es.done(Value::of(embeds));
  // image / video features: visual(pixel_values.type(visual.dtype), grid), scattered into their placeholders
  auto merge = [&](const at::Tensor& pv, const at::Tensor& grid, int64_t token_id, const char* what) {
    if (!pv.defined()) return;
    const at::Tensor& proj = w.tensor("visual.patch_embed.proj.weight");
    auto tower = vision::transformer(w.at("visual"), pv.to(proj.scalar_type()), grid, c.vision, rec, c.vision_rope.get());
    at::Tensor feats = tower.pooler_output.to(embeds.scalar_type());
    at::Tensor mask = in.input_ids.eq(token_id).unsqueeze(-1);  // [B, T, 1]
    const int64_t n_tokens = mask.sum().item<int64_t>();
    TORCH_CHECK(n_tokens * embeds.size(-1) == feats.numel(), what, " features and ", what,
                " tokens do not match, tokens: ", n_tokens, ", features: ", feats.size(0));
    embeds = embeds.masked_scatter(mask, feats);
  };
  merge(in.pixel_values, in.image_grid_thw, c.image_token_id, "Image");
  merge(in.pixel_values_videos, in.video_grid_thw, c.video_token_id, "Video");
  return embeds;
}

namespace {
// The step inputs a generate-phase call is recorded with (for the chained comparison of generate).
Value step_inputs(const Inputs& in) {
  std::vector<std::pair<std::string, Value>> kv{{"input_ids", Value::of(in.input_ids)}};
  if (in.attention_mask.defined()) kv.emplace_back("attention_mask", Value::of(in.attention_mask));
  if (in.position_ids.defined()) kv.emplace_back("position_ids", Value::of(in.position_ids));
  kv.emplace_back("rope_deltas_state", in.rope_deltas.defined() ? Value::of(in.rope_deltas) : Value::none());
  return Value::dict(std::move(kv));
}
Value optional(const at::Tensor& t) { return t.defined() ? Value::of(t) : Value::none(); }
}  // namespace

at::Tensor mrope_rows(const at::Tensor& position_ids) {
  return position_ids.defined() && position_ids.dim() == 3 && position_ids.size(0) == 4 ? position_ids.slice(0, 1)
                                                                                          : position_ids;
}

namespace {
// get_rope_index on the model inputs (with `attention_mask`), recorded as the function call `path`, as HF's
// hooks record it.
RopeIndex recorded_rope_index(const Inputs& in, const at::Tensor& attention_mask, const ModelConfig& c, Recorder* rec,
                              const std::string& path) {
  RecordScope ri(rec, path, "get_rope_index", [&] { return Value::dict({{"arg0", Value::of(in.input_ids)}}); },
                 "{\"kind\": \"function\"}");
  RopeIndex idx = get_rope_index(in.input_ids, in.mm_token_type_ids, in.image_grid_thw, in.video_grid_thw,
                                 in.second_per_grid_ts, attention_mask, c);
  ri.done(Value::tuple({Value::of(idx.position_ids), Value::of(idx.deltas)}));
  return idx;
}
}  // namespace

ModelOutput forward(const Weights& w, const Inputs& in, const ModelConfig& c, Recorder* rec, text::KVCache* cache) {
  RecordScope rs(rec, w.path(), "Qwen2_5_VLModel", [&] { return step_inputs(in); });
  const Weights lm = w.at("language_model");
  at::Tensor embeds = embed_inputs(w, in, c, rec);
  ModelOutput out;
  out.rope_deltas = in.rope_deltas;  // HF returns self.rope_deltas: the state, unless get_rope_index resets it
  at::Tensor position_ids;
  const int64_t past = cache ? cache->length() : 0;
  const bool can_mrope = in.mm_token_type_ids.defined() && (in.image_grid_thw.defined() || in.video_grid_thw.defined());
  if (in.position_ids.defined()) {
    TORCH_CHECK(c.text_rope.kind == rope::TextRope::Kind::MRope,
                "model::forward: explicit position_ids with a Circle-RoPE/AGE plan are not supported");
    // generate's [4, B, T]: row 0 holds the text positions (HF: packed-sequence masks only), rows 1-3 M-RoPE
    TORCH_CHECK(in.position_ids.dim() == 3 && (in.position_ids.size(0) == 3 || in.position_ids.size(0) == 4),
                "model::forward: position_ids must be [3, B, T] or [4, B, T], got ", in.position_ids.sizes());
    position_ids = mrope_rows(in.position_ids);
  } else if (c.text_rope.kind == rope::TextRope::Kind::MRope && can_mrope && (!in.rope_deltas.defined() || past == 0)) {
    // compute_3d_position_ids: get_rope_index when input_ids, mm_token_type_ids and a grid are present
    RopeIndex idx = recorded_rope_index(in, in.attention_mask, c, rec, join_path(w.path(), "get_rope_index"));
    position_ids = idx.position_ids;
    out.rope_deltas = idx.deltas;
  } else if (c.text_rope.kind == rope::TextRope::Kind::MRope && in.rope_deltas.defined() && past > 0) {
    // the cached rope_deltas: positions (mask cumsum - 1, 0 at padding; or arange(past, past + T)) + delta
    const int64_t B = embeds.size(0), T = embeds.size(1);
    at::Tensor p;
    if (in.attention_mask.defined()) {
      at::Tensor m = in.attention_mask.to(at::kLong);
      p = (m.cumsum(-1) - 1).masked_fill(m.eq(0), 0);
    } else {
      p = (at::arange(T, at::kLong) + past).view({1, -1}).expand({B, -1});
    }
    at::Tensor delta = in.rope_deltas.to(at::kLong).repeat_interleave(B / in.rope_deltas.size(0), 0);  // [B, 1]
    position_ids = (p.unsqueeze(0).expand({3, B, -1}) + delta.unsqueeze(0)).to(embeds.device());
  }
  if (c.text_rope.kind != rope::TextRope::Kind::MRope) {
    // A Circle-RoPE / AGE plan (qvl plug-in, not an HF path): per-layer positions.
    PlannedRope pr = plan_rope(in, in.attention_mask, c, rec, w.path());
    out.rope_deltas = pr.rope_deltas;
    out.last_hidden_state = text::text_model(lm, embeds, in.attention_mask, pr.plan, c.text, rec, cache);
  } else {
    out.last_hidden_state = text::text_model(lm, embeds, in.attention_mask, position_ids, c.text, rec, cache);
  }
  std::vector<std::pair<std::string, Value>> done{{"last_hidden_state", Value::of(out.last_hidden_state)}};
  if (cache) done.emplace_back("past_key_values", text::cache_value(*cache, c.text.num_hidden_layers));
  done.emplace_back("rope_deltas", optional(out.rope_deltas));
  rs.done(Value::dict(std::move(done)));
  return out;
}

LMOutput lm_forward(const Weights& root, const Inputs& in, const ModelConfig& c, Recorder* rec, text::KVCache* cache,
                    int64_t logits_to_keep) {
  RecordScope rs(rec, root.path(), "Qwen2_5_VLForConditionalGeneration", [&] { return step_inputs(in); });
  ModelOutput mo = forward(root.at("model"), in, c, rec, cache);
  // slice_indices = slice(-logits_to_keep, None); logits = lm_head(hidden_states[:, slice_indices, :])
  const int64_t T = mo.last_hidden_state.size(1);
  at::Tensor h = logits_to_keep > 0 ? mo.last_hidden_state.slice(1, std::max<int64_t>(0, T - logits_to_keep))
                                    : mo.last_hidden_state;
  RecordScope ls(rec, "lm_head", "Linear", [&] { return Value::dict({{"arg0", Value::of(h)}}); });
  LMOutput out{linear(root.at("lm_head"), h, /*bias=*/false, c.text.vocab_size, c.text.hidden_size), mo.rope_deltas};
  ls.done(Value::of(out.logits));
  std::vector<std::pair<std::string, Value>> done{{"logits", Value::of(out.logits)}};
  if (cache) done.emplace_back("past_key_values", text::cache_value(*cache, c.text.num_hidden_layers));
  done.emplace_back("rope_deltas", optional(out.rope_deltas));
  rs.done(Value::dict(std::move(done)));
  return out;
}

PlannedRope plan_rope(const Inputs& in, const at::Tensor& attention_mask, const ModelConfig& c, Recorder* rec,
                      const std::string& path) {
  const rope::TextRope& tr = c.text_rope;
  const int64_t B = in.input_ids.size(0), T = in.input_ids.size(1), L = c.text.num_hidden_layers;
  PlannedRope out;
  TORCH_CHECK(tr.kind != rope::TextRope::Kind::MRope, "model::plan_rope: the stock model has no plan");
  rope::circle::TokenIds ids{c.vision_start_token_id, c.image_token_id, c.video_token_id, c.vision.spatial_merge_size,
                             static_cast<double>(c.vision.tokens_per_second)};
  // Circle-RoPE positions: the official walker (rope::circle::get_rope_index)
  RecordScope rc(rec, join_path(path, "circle_rope_index"), "circle_rope_index",
                 [&] { return Value::dict({{"arg0", Value::of(in.input_ids)}}); }, "{\"kind\": \"function\"}");
  rope::circle::RopeIndex circle = rope::circle::get_rope_index(in.input_ids, in.image_grid_thw, in.video_grid_thw,
                                                                in.second_per_grid_ts, attention_mask, ids, tr.circle, false);
  rc.done(Value::tuple({Value::of(circle.position_ids), Value::of(circle.deltas)}));
  // the position a successor is one past: max + 1 - L + T - 1 = delta + T - 1 on every row
  at::Tensor circle_last = (circle.deltas.to(at::kFloat) + (T - 1)).view({1, B, 1}).expand({3, B, 1}).contiguous();
  const bool age = !tr.age_strategy.empty() && tr.age_strategy != "all";
  if (!age) {
    out.plan = {{circle.position_ids}, {"circle"}, std::vector<int64_t>(L, 0)};
    out.rope_deltas = circle.deltas;
    out.last = {circle_last};
    return out;
  }
  // The M-RoPE layers: the model's stock get_rope_index (equal to the official use_m_index walker for
  // images); without mm_token_type_ids, the official use_m_index walker itself.
  at::Tensor mpos, mdelta;
  const bool grids = in.image_grid_thw.defined() || in.video_grid_thw.defined();
  if (grids && in.mm_token_type_ids.defined()) {
    RopeIndex idx = recorded_rope_index(in, attention_mask, c, rec, join_path(path, "get_rope_index"));
    mpos = idx.position_ids;
    mdelta = idx.deltas;
  } else {
    auto m = rope::circle::get_rope_index(in.input_ids, in.image_grid_thw, in.video_grid_thw, in.second_per_grid_ts,
                                          attention_mask, ids, tr.circle, true);
    mpos = m.position_ids;
    mdelta = m.deltas;
  }
  std::vector<bool> layers = rope::circle::age_layers(tr.age_strategy, L);
  out.plan.positions = {mpos, circle.position_ids};
  out.plan.names = {"", "circle"};
  for (bool is_circle : layers) out.plan.layer_source.push_back(is_circle ? 1 : 0);
  out.rope_deltas = layers[0] ? circle.deltas : mdelta;
  // M-RoPE source: the last token's own position (transformers 5.x generate: previous + 1)
  at::Tensor m_last = mpos.slice(2, T - 1).to(at::kFloat);
  out.last = {tr.parity_decode ? circle_last : m_last, circle_last};
  return out;
}

namespace {
// logits_to_keep = 1: lm_head on the last position only, as float32 for the argmax.
at::Tensor last_logits(const Weights& root, const at::Tensor& h, const ModelConfig& c) {
  at::Tensor last = h.slice(1, h.size(1) - 1);  // [B, 1, D]
  return linear(root.at("lm_head"), last, false, c.text.vocab_size, c.text.hidden_size).select(1, 0).to(at::kFloat);
}
}  // namespace

DecodeState prefill(const Weights& root, const Inputs& in, const ModelConfig& c, Recorder* rec) {
  const Weights w = root.at("model");
  const Weights lm = w.at("language_model");
  const int64_t B = in.input_ids.size(0), T = in.input_ids.size(1);
  DecodeState s;
  s.attention_mask = in.attention_mask.defined() ? in.attention_mask.to(at::kLong) : at::ones({B, T}, at::kLong);
  if (c.text_rope.kind != rope::TextRope::Kind::MRope) {
    // The prompt's rope plan, and per source the position its successor is one past.
    PlannedRope pr = plan_rope(in, s.attention_mask, c);
    at::Tensor embeds = embed_inputs(w, in, c);
    at::Tensor h = text::text_model(lm, embeds, s.attention_mask, pr.plan, c.text, nullptr, &s.cache);
    s.plan = pr.plan;
    s.plan.positions = pr.last;
    s.logits = last_logits(root, h, c);
    return s;
  }
  // _prepare_position_ids_for_generation: text positions = attention-mask cumsum - 1 (0 at padding); the
  // M-RoPE rows from get_rope_index with vision inputs (which sets the model's rope_deltas), else the text
  // positions on all three rows and rope_deltas = 0. generate passes cat(text, M-RoPE rows): [4, B, T].
  at::Tensor text_pos = (s.attention_mask.cumsum(-1) - 1).masked_fill(s.attention_mask.eq(0), 0);
  at::Tensor mpos;
  if (in.mm_token_type_ids.defined() && (in.image_grid_thw.defined() || in.video_grid_thw.defined())) {
    RopeIndex idx = recorded_rope_index(in, s.attention_mask, c, rec, "get_rope_index");
    mpos = idx.position_ids;
    s.rope_deltas = idx.deltas;
  } else {
    mpos = text_pos.unsqueeze(0).expand({3, B, T});
    s.rope_deltas = at::zeros({B, 1}, at::kLong);
  }
  Inputs step = in;
  step.attention_mask = s.attention_mask;
  step.position_ids = at::cat({text_pos.unsqueeze(0), mpos.to(text_pos.device())}, 0);  // [4, B, T]
  step.rope_deltas = s.rope_deltas;
  LMOutput o = lm_forward(root, step, c, rec, &s.cache, /*logits_to_keep=*/1);
  at::Tensor last = step.position_ids.slice(2, T - 1);  // [4, B, 1]; each step is the previous position + 1
  s.text_position = last.slice(0, 0, 1);
  s.plan = {{mrope_rows(last)}, {""}, std::vector<int64_t>(c.text.num_hidden_layers, 0)};
  s.logits = o.logits.select(1, 0).to(at::kFloat);
  return s;
}

void decode_step(const Weights& root, DecodeState& s, const at::Tensor& tokens, const ModelConfig& c,
                 const at::Tensor& positions, Recorder* rec) {
  const Weights lm = root.at("model.language_model");
  const int64_t B = tokens.size(0);
  // _update_model_kwargs_for_generation: the mask grows by one; positions are the last ones + 1 (all rows)
  s.attention_mask = at::cat({s.attention_mask, at::ones({B, 1}, at::kLong)}, -1);
  if (s.text_position.defined()) {
    // stock M-RoPE: the model's own step, as generate runs it (the cached rope_deltas ride along as state)
    s.text_position = s.text_position + 1;
    s.plan.positions[0] = positions.defined() ? positions : s.plan.positions[0] + 1;
    Inputs step;
    step.input_ids = tokens.unsqueeze(1);  // [B, 1]
    step.attention_mask = s.attention_mask;
    step.position_ids = at::cat({s.text_position, s.plan.positions[0]}, 0);  // generate's [4, B, 1]
    step.rope_deltas = s.rope_deltas;
    s.logits = lm_forward(root, step, c, rec, &s.cache, /*logits_to_keep=*/1).logits.select(1, 0).to(at::kFloat);
    return;
  }
  at::Tensor e = at::embedding(lm.tensor("embed_tokens.weight"), tokens.unsqueeze(1));  // [B, 1, D]
  // every position source advances by one (its own delta, or the Circle delta under parity_decode)
  for (auto& p : s.plan.positions) p = p + 1;
  if (positions.defined()) s.plan.positions[s.plan.layer_source[0]] = positions;
  at::Tensor h = text::text_model(lm, e, s.attention_mask, s.plan, c.text, nullptr, &s.cache);
  s.logits = last_logits(root, h, c);
}

at::Tensor generate(const Weights& root, const Inputs& in, const ModelConfig& c, const GenerateOptions& opt,
                    const std::function<void(int64_t, const at::Tensor&)>& on_token, Recorder* rec) {
  DecodeState s = prefill(root, in, c, rec);
  const int64_t B = in.input_ids.size(0);
  const int64_t pad = opt.pad_token_id >= 0 ? opt.pad_token_id : (opt.eos_token_ids.empty() ? 0 : opt.eos_token_ids[0]);
  at::Tensor unfinished = at::ones({B}, at::kLong);
  std::vector<at::Tensor> out;
  for (int64_t step = 0; step < opt.max_new_tokens; ++step) {
    at::Tensor next = s.logits.argmax(-1);                    // [B]
    next = next * unfinished + pad * (1 - unfinished);        // finished rows emit pad
    out.push_back(next);
    if (on_token) on_token(step, next);
    for (int64_t e : opt.eos_token_ids) unfinished = unfinished * next.ne(e).to(at::kLong);
    if (unfinished.max().item<int64_t>() == 0 || step + 1 == opt.max_new_tokens) break;
    decode_step(root, s, next, c, {}, rec);
  }
  return at::stack(out, 1);
}

}  // namespace qvl::model
