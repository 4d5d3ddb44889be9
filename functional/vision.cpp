#include "functional/vision.h"

#include <array>
#include <cmath>

#include "functional/cuda/fused.h"
#include "functional/mlp.h"
#include "functional/norm.h"
#include "functional/linear.h"

namespace qvl::vision {

at::Tensor patch_embed(const Weights& w, const at::Tensor& pixel_values, const VisionConfig& c, Recorder* rec) {
  const int64_t C = c.in_channels, Tp = c.temporal_patch_size, P = c.patch_size;
  const at::Tensor& weight = w.tensor("proj.weight", {c.hidden_size, C, Tp, P, P});
  TORCH_CHECK(pixel_values.dim() == 2 && pixel_values.size(1) == c.patch_dim(), "patch_embed: pixel_values must be [S, ",
              c.patch_dim(), "] (C*T_p*P*P), got ", pixel_values.sizes());
  RecordScope rs(rec, w.path(), "Qwen2_5_VisionPatchEmbed",
                 [&] { return Value::dict({{"arg0", Value::of(pixel_values)}}); });
  // hidden_states.view(-1, in_channels, temporal_patch_size, patch_size, patch_size).to(proj.weight.dtype)
  at::Tensor x = pixel_values.reshape({-1, C, Tp, P, P}).to(weight.scalar_type());  // [S, C, T_p, P, P]
  // self.proj(...).view(-1, self.embed_dim); Conv3d with stride == kernel_size, no bias
  at::Tensor out = at::conv3d(x, weight, /*bias=*/{}, /*stride=*/{Tp, P, P});  // [S, C_v, 1, 1, 1]
  out = out.view({-1, c.hidden_size});                                            // [S, C_v]
  rs.done(Value::of(out));
  return out;
}

at::Tensor patch_merger(const Weights& w, const at::Tensor& x, const VisionConfig& c, Recorder* rec) {
  const int64_t unit = c.spatial_merge_size * c.spatial_merge_size;
  const int64_t Dm = c.hidden_size * unit;  // self.hidden_size = context_dim * spatial_merge_size**2
  TORCH_CHECK(x.dim() == 2 && x.size(1) == c.hidden_size && x.size(0) % unit == 0, "patch_merger: x must be [S, ",
              c.hidden_size, "] with S a multiple of ", unit, ", got ", x.sizes());
  RecordScope rs(rec, w.path(), "Qwen2_5_VLPatchMerger", [&] { return Value::dict({{"arg0", Value::of(x)}}); });
  // x = self.mlp(self.ln_q(x).view(-1, self.hidden_size))
  at::Tensor h = rms_norm(w.at("ln_q"), x, c.rms_norm_eps, rec, c.fused).view({-1, Dm});  // [S/4, 4*C_v]
  h = linear(w.at("mlp.0"), h, /*bias=*/true, Dm, Dm);                            // [S/4, 4*C_v]
  h = at::gelu(h);                                                                // nn.GELU(), exact erf
  at::Tensor out = linear(w.at("mlp.2"), h, /*bias=*/true, c.out_hidden_size, Dm);  // [S/4, out_D]
  rs.done(Value::of(out));
  return out;
}

}  // namespace qvl::vision

namespace qvl::vision {
namespace {
std::vector<std::array<int64_t, 3>> grids(const at::Tensor& grid_thw, const char* fn) {
  TORCH_CHECK(grid_thw.dim() == 2 && grid_thw.size(1) == 3, fn, ": grid_thw must be [G, 3], got ", grid_thw.sizes());
  at::Tensor g = grid_thw.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t* p = g.data_ptr<int64_t>();
  std::vector<std::array<int64_t, 3>> out;
  for (int64_t i = 0; i < g.size(0); ++i) out.push_back({p[3 * i], p[3 * i + 1], p[3 * i + 2]});
  return out;
}
// A JSON string literal (for recorder settings).
std::string json_quote(const std::string& v) {
  std::string out = "\"";
  for (char ch : v) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) >= 0x20) out += ch;
  }
  return out + "\"";
}
std::string grid_str(const std::array<int64_t, 3>& g) {
  return "(" + std::to_string(g[0]) + ", " + std::to_string(g[1]) + ", " + std::to_string(g[2]) + ")";
}
}  // namespace

at::Tensor position_ids(const at::Tensor& grid_thw, int64_t m) {
  const auto opts = at::TensorOptions().dtype(at::kLong);
  std::vector<at::Tensor> parts;
  for (const auto& g : grids(grid_thw, "vision::position_ids")) {
    const int64_t t = g[0], h = g[1], w = g[2];
    TORCH_CHECK(h % m == 0 && w % m == 0, "vision::position_ids: grid ", grid_str(g), " is not divisible by merge size ", m);
    // hpos_ids, wpos_ids = meshgrid(arange(h), arange(w), indexing="ij")
    at::Tensor hpos = at::arange(h, opts).unsqueeze(1).expand({h, w});
    at::Tensor wpos = at::arange(w, opts).unsqueeze(0).expand({h, w});
    // .reshape(h // m, m, w // m, m).transpose(1, 2).flatten()
    hpos = hpos.reshape({h / m, m, w / m, m}).transpose(1, 2).flatten();
    wpos = wpos.reshape({h / m, m, w / m, m}).transpose(1, 2).flatten();
    // torch.stack([hpos_ids, wpos_ids], dim=-1).repeat(t, 1)
    parts.push_back(at::stack({hpos, wpos}, -1).repeat({t, 1}));  // [t*h*w, 2]
  }
  return at::cat(parts, 0).to(grid_thw.device());  // built on the host, returned where grid_thw lives
}

at::Tensor cu_seqlens(const at::Tensor& grid_thw) {
  at::Tensor g = grid_thw.to(at::kLong);
  // seqlens = repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
  at::Tensor seqlens = at::repeat_interleave(g.select(1, 1) * g.select(1, 2), g.select(1, 0));
  // F.pad(seqlens.cumsum(dim=0, dtype=torch.int32), (1, 0), value=0)
  return at::constant_pad_nd(seqlens.cumsum(0, at::kInt), {1, 0}, 0);
}

WindowIndex window_index(const at::Tensor& grid_thw, int64_t m, int64_t window_size, int64_t patch_size) {
  const int64_t ws = window_size / m / patch_size;  // vit_merger_window_size, in merged tokens
  TORCH_CHECK(ws >= 1, "vision::window_index: window_size ", window_size, " is smaller than one merged token (",
              m * patch_size, " pixels)");
  const int64_t unit = m * m;
  std::vector<at::Tensor> index_parts;
  std::vector<int64_t> cu = {0};
  int64_t base = 0;
  for (const auto& g : grids(grid_thw, "vision::window_index")) {
    const int64_t t = g[0], lh = g[1] / m, lw = g[2] / m;
    at::Tensor index = at::arange(t * lh * lw, at::kLong).reshape({t, lh, lw});
    const int64_t pad_h = ws - lh % ws, pad_w = ws - lw % ws;  // a full extra window when divisible
    const int64_t nh = (lh + pad_h) / ws, nw = (lw + pad_w) / ws;
    at::Tensor padded = at::constant_pad_nd(index, {0, pad_w, 0, pad_h}, -100);
    padded = padded.reshape({t, nh, ws, nw, ws}).permute({0, 1, 3, 2, 4}).reshape({t, nh * nw, ws, ws});
    at::Tensor seqlens = padded.ne(-100).sum({2, 3}).reshape(-1);  // merged tokens per window (may be 0)
    padded = padded.reshape(-1);
    index_parts.push_back(padded.masked_select(padded.ne(-100)) + base);
    at::Tensor cum = (seqlens.cumsum(0) * unit + cu.back()).contiguous();
    cu.insert(cu.end(), cum.data_ptr<int64_t>(), cum.data_ptr<int64_t>() + cum.numel());
    base += t * lh * lw;
  }
  WindowIndex out;
  out.window_index = at::cat(index_parts, 0).to(grid_thw.device());
  at::Tensor cu_t = at::tensor(cu, at::kLong).to(at::kInt);
  out.cu_window_seqlens = std::get<0>(at::unique_consecutive(cu_t)).to(grid_thw.device());
  return out;
}

CosSin rotary(const at::Tensor& pos, const VisionConfig& c, Recorder* rec, const std::string& path) {
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 2, "vision::rotary: position_ids must be [S, 2], got ", pos.sizes());
  RecordScope rs(rec, path, "Qwen2_5_VLVisionRotaryEmbedding", [&] {
    return Value::dict({{"arg1", Value::of(pos)}});
  });
  const int64_t spatial_dim = c.head_dim() / 2;
  at::Tensor inv_freq = rope_inv_freq(c.rope_theta, spatial_dim).to(pos.device());
  // freqs = position_ids[..., None].float() * inv_freq.float()          [S, 2, Dh/4]
  at::Tensor freqs = pos.unsqueeze(-1).to(at::kFloat) * inv_freq;
  // recomposition_frequencies: cat([f_h, f_w], -1) then cat([hw, hw], -1)   [S, Dh]
  auto recompose = [](const at::Tensor& f) {
    at::Tensor hw = at::cat({f.select(1, 0), f.select(1, 1)}, -1);
    return at::cat({hw, hw}, -1);
  };
  CosSin out{recompose(freqs.cos()), recompose(freqs.sin())};  // attention_scaling is 1.0 for axial
  rs.done(Value::tuple({Value::of(out.cos), Value::of(out.sin)}));
  return out;
}

at::Tensor rotary_freq_table(int64_t seqlen, const VisionConfig& c) {
  TORCH_CHECK(seqlen >= 0, "vision::rotary_freq_table: seqlen must be >= 0, got ", seqlen);
  // seq = arange(seqlen, dtype=inv_freq.dtype); freqs = outer(seq, inv_freq)
  const at::Tensor inv_freq = rope_inv_freq(c.rope_theta, c.head_dim() / 2);
  return at::outer(at::arange(seqlen, inv_freq.options()), inv_freq);
}

at::Tensor rot_pos_emb(const at::Tensor& grid_thw, const VisionConfig& c) {
  const at::Tensor pos = position_ids(grid_thw, c.spatial_merge_size);  // [S, 2]
  // max_grid_size = grid_thw[:, 1:].max(); rotary_pos_emb_full[pos_ids].flatten(1)
  const int64_t max_grid = grid_thw.slice(1, 1).max().item<int64_t>();
  const at::Tensor table = rotary_freq_table(max_grid, c).to(grid_thw.device());
  return table.index_select(0, pos.reshape(-1)).reshape({pos.size(0), -1});
}

std::pair<at::Tensor, at::Tensor> apply_rotary_pos_emb_vision(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& cos, const at::Tensor& sin, bool fused) {
  if (fused && q.is_cuda() && cos.dim() == 2) {
    // the same float32 maths in one kernel for q and k, bit-identical (cuda::rope_apply; shared [S, Dh] tables)
    auto [qe, ke] = cuda::rope_apply(q.unsqueeze(0), k.unsqueeze(0), cuda::rope_tables(cos, sin));
    return {qe.squeeze(0), ke.squeeze(0)};
  }
  // q, k = q.float(), k.float(); cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
  at::Tensor qf = q.to(at::kFloat), kf = k.to(at::kFloat);
  // (a per-head table [S, H, Dh] from a plugged rope is used as is)
  const bool per_head = cos.dim() == q.dim();
  at::Tensor c = (per_head ? cos : cos.unsqueeze(-2)).to(at::kFloat), s = (per_head ? sin : sin.unsqueeze(-2)).to(at::kFloat);
  // q_embed = (q * cos) + (rotate_half(q) * sin), cast back to the input dtypes
  at::Tensor qe = (qf * c) + (rotate_half(qf) * s);
  at::Tensor ke = (kf * c) + (rotate_half(kf) * s);
  return {qe.to(q.scalar_type()), ke.to(k.scalar_type())};
}

at::Tensor attention(const Weights& w, const at::Tensor& x, const at::Tensor& cu, const CosSin& rope,
                     const VisionConfig& c, Recorder* rec) {
  const int64_t S = x.size(0), C = c.hidden_size, H = c.num_heads, Dh = c.head_dim();
  TORCH_CHECK(x.dim() == 2 && x.size(1) == C, "vision::attention: x must be [S, ", C, "], got ", x.sizes());
  at::Tensor cu_l = cu.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t* cp = cu_l.data_ptr<int64_t>();
  TORCH_CHECK(cu_l.dim() == 1 && cu_l.numel() >= 2 && cp[0] == 0 && cp[cu_l.numel() - 1] == S,
              "vision::attention: cu_seqlens must run from 0 to S = ", S, ", got ", cu.sizes());
  RecordScope rs(rec, w.path(), "Qwen2_5_VLVisionAttention", [&] {
    return Value::dict({{"arg0", Value::of(x)}, {"cu_seqlens", Value::of(cu)},
                        {"position_embeddings", Value::tuple({Value::of(rope.cos), Value::of(rope.sin)})}});
  });
  // self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
  at::Tensor qkv = linear(w.at("qkv"), x, /*bias=*/true, 3 * C, C).reshape({S, 3, H, -1}).permute({1, 0, 2, 3});
  at::Tensor q = qkv[0], k = qkv[1], v = qkv[2];  // [S, H, Dh]
  RecordScope rot(rec, w.path() + ".apply_rotary_pos_emb_vision", "apply_rotary_pos_emb_vision", [&] {
    return Value::dict({{"arg0", Value::of(q)}, {"arg1", Value::of(k)}, {"arg2", Value::of(rope.cos)},
                        {"arg3", Value::of(rope.sin)}});
  }, "{\"kind\": \"function\"}");
  auto [qr, kr] = apply_rotary_pos_emb_vision(q, k, rope.cos, rope.sin, c.fused);
  rot.done(Value::tuple({Value::of(qr), Value::of(kr)}));
  const double scaling = std::pow(static_cast<double>(Dh), -0.5);
  if (c.fused && x.is_cuda()) {
    // every segment in one varlen flash / memory-efficient call (undefined: not supported, loop below)
    at::Tensor o = cuda::varlen_attention(qr, kr, v, cu, scaling);  // [S, H, Dh]
    if (o.defined()) {
      at::Tensor out = linear(w.at("proj"), o.reshape({S, -1}), /*bias=*/true, C, C);
      rs.done(Value::of(out));
      return out;
    }
  }
  // .transpose(0, 1).unsqueeze(0)                                             [1, H, S, Dh]
  q = qr.transpose(0, 1).unsqueeze(0);
  k = kr.transpose(0, 1).unsqueeze(0);
  v = v.transpose(0, 1).unsqueeze(0);
  std::vector<at::Tensor> outs;
  for (int64_t i = 0; i + 1 < cu_l.numel(); ++i) {
    const int64_t a = cp[i], b = cp[i + 1];
    at::Tensor qi = q.slice(2, a, b), ki = k.slice(2, a, b), vi = v.slice(2, a, b);
    // eager_attention_forward: softmax(q @ k^T * scaling, dtype=float32).to(q.dtype) @ v
    at::Tensor wts = at::matmul(qi, ki.transpose(2, 3)) * scaling;        // [1, H, L, L]
    wts = at::softmax(wts, -1, at::kFloat).to(qi.scalar_type());
    outs.push_back(at::matmul(wts, vi).transpose(1, 2).contiguous());    // [1, L, H, Dh]
  }
  at::Tensor o = at::cat(outs, 1).reshape({S, -1}).contiguous();          // [S, C]
  at::Tensor out = linear(w.at("proj"), o, /*bias=*/true, C, C);
  rs.done(Value::of(out));
  return out;
}

at::Tensor block(const Weights& w, const at::Tensor& x, const at::Tensor& cu, const CosSin& rope,
                 const VisionConfig& c, Recorder* rec, const std::string& settings_json) {
  RecordScope rs(rec, w.path(), "Qwen2_5_VLVisionBlock", [&] {
    return Value::dict({{"arg0", Value::of(x)}, {"cu_seqlens", Value::of(cu)},
                        {"position_embeddings", Value::tuple({Value::of(rope.cos), Value::of(rope.sin)})}});
  }, settings_json);
  // hidden_states = hidden_states + self.attn(self.norm1(hidden_states), ...)
  const at::Tensor attn_in = rms_norm(w.at("norm1"), x, c.rms_norm_eps, rec, c.fused);
  const at::Tensor attn_out = attention(w.at("attn"), attn_in, cu, rope, c, rec);
  const at::Tensor h = x + attn_out;
  // hidden_states = hidden_states + self.mlp(self.norm2(hidden_states))
  const at::Tensor mlp_in = rms_norm(w.at("norm2"), h, c.rms_norm_eps, rec, c.fused);
  const at::Tensor mlp_out = mlp(w.at("mlp"), mlp_in, c, rec);
  at::Tensor out = h + mlp_out;
  rs.done(Value::of(out));
  return out;
}

TowerOutput transformer(const Weights& w, const at::Tensor& pixel_values, const at::Tensor& grid_thw,
                        const VisionConfig& c, Recorder* rec, const rope::VisionRope* vrope) {
  const std::string base = w.path();
  auto fn_path = [&](const char* name) { return join_path(base, name); };
  RecordScope rs(rec, base, "Qwen2_5_VisionTransformerPretrainedModel", [&] {
    return Value::dict({{"arg0", Value::of(pixel_values)}, {"grid_thw", Value::of(grid_thw)}});
  });
  const int64_t m = c.spatial_merge_size, unit = m * m;
  auto record_fn = [&](const char* name, const Value& in, const Value& out) {
    RecordScope f(rec, fn_path(name), name, [&] { return in; }, "{\"kind\": \"function\"}");
    f.done(out);
  };
  at::Tensor pos = position_ids(grid_thw, m);
  record_fn("get_vision_position_ids", Value::dict({{"arg0", Value::of(grid_thw)}}), Value::of(pos));
  at::Tensor cu = cu_seqlens(grid_thw);
  record_fn("get_vision_attention_seqlens", Value::dict({{"arg0", Value::of(grid_thw)}}),
            Value::tuple({Value::of(cu), Value::none()}));
  WindowIndex win = window_index(grid_thw, m, c.window_size, c.patch_size);
  record_fn("get_vision_window_index", Value::dict({{"arg0", Value::of(grid_thw)}}),
            Value::tuple({Value::of(win.window_index), Value::of(win.cu_window_seqlens)}));

  at::Tensor h = patch_embed(w.at("patch_embed"), pixel_values, c, rec);  // [S, C_v]
  const int64_t S = h.size(0);
  TORCH_CHECK(S == pos.size(0), "vision::transformer: pixel_values has ", S, " patches but grid_thw gives ", pos.size(0));
  // permute_input_for_window_attn: reshape(S/unit, unit, -1)[window_index].reshape(S, -1)
  // (trailing dims kept, so a per-head table [S, H, Dh] is permuted the same way)
  auto permute = [&](const at::Tensor& t) { return t.reshape({S / unit, unit, -1}).index_select(0, win.window_index).reshape(t.sizes()); };
  h = permute(h);
  std::vector<CosSin> ropes;  // one table for every block, or one per block (per_layer builder)
  if (!vrope) {
    ropes.push_back(rotary(pos, c, rec, fn_path("rotary_pos_emb")));
  } else {
    const int64_t n_tables = vrope->per_layer ? c.depth : 1;
    const int64_t Dh = c.head_dim();
    for (int64_t i = 0; i < n_tables; ++i) {
      RecordScope rr(i == 0 ? rec : nullptr, fn_path("rotary_pos_emb"), "Qwen2_5_VLVisionRotaryEmbedding",
                     [&] { return Value::dict({{"arg1", Value::of(pos)}}); },
                     [&] { return "{\"rope\": " + json_quote(vrope->name) + "}"; }, 0);
      CosSin r = vrope->build(pos, grid_thw, i, c);
      const bool shape_ok = r.cos.defined() && r.sin.defined() && r.cos.sizes() == r.sin.sizes() &&
                            r.cos.size(0) == S && r.cos.size(-1) == Dh &&
                            (r.cos.dim() == 2 || (r.cos.dim() == 3 && r.cos.size(1) == c.num_heads));
      TORCH_CHECK(shape_ok, "vision::transformer: rope '", vrope->name, "' built cos ",
                  r.cos.defined() ? shape_str(r.cos.sizes()) : std::string("(undefined)"), " and sin ",
                  r.sin.defined() ? shape_str(r.sin.sizes()) : std::string("(undefined)"), ", expected [", S, ", ", Dh,
                  "] or [", S, ", ", c.num_heads, ", ", Dh, "] (both the same)");
      rr.done(Value::tuple({Value::of(r.cos), Value::of(r.sin)}));
      ropes.push_back(r);
    }
  }
  for (CosSin& r : ropes) r = {permute(r.cos), permute(r.sin)};
  for (int64_t i = 0; i < c.depth; ++i) {
    const bool full = std::find(c.fullatt_block_indexes.begin(), c.fullatt_block_indexes.end(), i) != c.fullatt_block_indexes.end();
    const std::string settings = std::string("{\"attention\": \"") + (full ? "full" : "window") + "\", \"block_index\": " + std::to_string(i) + "}";
    const CosSin& rope = ropes[ropes.size() == 1 ? 0 : i];
    h = block(w.at("blocks").at(i), h, full ? cu : win.cu_window_seqlens, rope, c, rec, settings);
  }
  // merged = self.merger(hidden_states)[torch.argsort(window_index), :]
  at::Tensor merged = patch_merger(w.at("merger"), h, c, rec).index_select(0, at::argsort(win.window_index));
  TowerOutput out{h, merged};
  rs.done(Value::dict({{"last_hidden_state", Value::of(h)}, {"pooler_output", Value::of(merged)}}));
  return out;
}

}  // namespace qvl::vision
