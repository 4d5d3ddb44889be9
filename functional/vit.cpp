#include "functional/vit.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "functional/rope/block.h"
#include "functional/rope/rope2d.h"
#include "functional/rope/spiral.h"
#include "functional/linear.h"

namespace qvl::vit {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Stopwatch {
  double* sink;
  double t0;
  explicit Stopwatch(double* s) : sink(s), t0(s ? now_s() : 0) {}
  ~Stopwatch() {
    if (sink) *sink += now_s() - t0;
  }
};

// Blocks of the block:N variant: an even number (they split over the x and y axes), as many as fit in D.
int64_t block_count(const VitConfig& c) { return 2 * (c.head_dim() / (2 * c.rope.n)); }

rope::SpiralConfig spiral_config(const VitConfig& c, int64_t pt_seq_len) {
  rope::SpiralConfig s;
  s.head_dim = c.head_dim();
  s.rotate = c.rope.n / 2;  // K = 2R directions
  s.max_freq = 1.0;
  s.min_freq = 0.0;  // automatic: geometric with theta, like the axial frequencies
  s.theta = c.rope.theta;
  s.pt_seq_len = pt_seq_len;
  return s;
}

at::Tensor linear(const Weights& w, const std::string& name, const at::Tensor& x) {
  return at::linear(x, w.tensor(name + ".weight"), w.tensor(name + ".bias"));
}
at::Tensor layer_norm(const Weights& w, const std::string& name, const at::Tensor& x) {
  return at::layer_norm(x, {x.size(-1)}, w.tensor(name + ".weight"), w.tensor(name + ".bias"), 1e-6);
}

// q and k [B, H, T, D] of one block, the RoPE applied to the patch tokens.
std::pair<at::Tensor, at::Tensor> rotated_qk(const VitConfig& c, const RopeTables& t, int64_t layer, at::Tensor q,
                                             at::Tensor k, RopeTimer* timer) {
  if (!c.rope.rotary()) return {q, k};
  Stopwatch sw(timer ? &timer->apply_s : nullptr);
  const int64_t s = c.cls_token ? 1 : 0;
  auto rot = [&](const at::Tensor& x) {
    at::Tensor r = apply_rope(c, t, layer, s ? x.slice(2, s) : x);
    return s ? at::cat({x.slice(2, 0, s), r}, 2) : r;  // the class token is never rotated
  };
  return {rot(q), rot(k)};
}

}  // namespace

std::string VitRope::spec() const {
  switch (kind) {
    case Kind::None: return "none";
    case Kind::Ape: return "ape";
    case Kind::Axial: return "axial";
    case Kind::AxialMatrix: return "axial-matrix";
    case Kind::Mixed: return "mixed";
    case Kind::Block: return "block:" + std::to_string(n);
    case Kind::Spiral: return "spiral:" + std::to_string(n);
    case Kind::ApeAxial: return "ape+axial";
  }
  return "?";
}

VitRope parse_rope(const std::string& spec) {
  VitRope r;
  auto number = [&](const std::string& tail) -> int64_t {
    try {
      size_t used = 0;
      const long long v = std::stoll(tail, &used);
      if (used == tail.size()) return v;
    } catch (const std::exception&) {
    }
    throw std::runtime_error("vit rope '" + spec + "': '" + tail + "' is not an integer");
  };
  if (spec == "none") r.kind = VitRope::Kind::None;
  else if (spec == "ape") r.kind = VitRope::Kind::Ape;
  else if (spec == "axial") r.kind = VitRope::Kind::Axial;
  else if (spec == "axial-matrix") r.kind = VitRope::Kind::AxialMatrix;
  else if (spec == "ape+axial") r.kind = VitRope::Kind::ApeAxial;
  else if (spec == "mixed") {
    r.kind = VitRope::Kind::Mixed;
    r.theta = 10;
  } else if (spec.rfind("block:", 0) == 0) {
    r.kind = VitRope::Kind::Block;
    r.n = number(spec.substr(6));
    TORCH_CHECK(r.n >= 2, "vit rope '", spec, "': block size must be >= 2, got ", r.n);
  } else if (spec.rfind("spiral:", 0) == 0) {
    r.kind = VitRope::Kind::Spiral;
    r.n = number(spec.substr(7));
    TORCH_CHECK(r.n >= 2 && r.n % 2 == 0, "vit rope '", spec, "': K directions must be even and >= 2, got ", r.n);
  } else {
    throw std::runtime_error("unknown vit rope '" + spec +
                             "' (known: none, ape, axial, axial-matrix, mixed, block:N, spiral:K, ape+axial)");
  }
  return r;
}

void VitConfig::validate() const {
  TORCH_CHECK(image > 0 && patch > 0 && image % patch == 0, "vit config: image ", image,
              " must be a positive multiple of patch ", patch);
  TORCH_CHECK(channels > 0 && depth > 0 && heads > 0 && width > 0 && mlp_ratio > 0 && classes > 1,
              "vit config: channels, depth, heads, width and mlp_ratio must be positive and classes >= 2, got channels ",
              channels, ", depth ", depth, ", heads ", heads, ", width ", width, ", mlp_ratio ", mlp_ratio,
              ", classes ", classes);
  TORCH_CHECK(width % heads == 0, "vit config: width ", width, " must be a multiple of heads ", heads);
  const int64_t D = head_dim();
  switch (rope.kind) {
    case VitRope::Kind::Axial:
    case VitRope::Kind::AxialMatrix:
    case VitRope::Kind::ApeAxial:
    case VitRope::Kind::Mixed:
      TORCH_CHECK(D % 4 == 0, "vit config: rope ", rope.spec(), " needs head dim % 4 == 0, got ", D);
      break;
    case VitRope::Kind::Block:
      TORCH_CHECK(D >= 2 * rope.n, "vit config: rope ", rope.spec(), " needs head dim >= 2N = ", 2 * rope.n, ", got ", D);
      break;
    case VitRope::Kind::Spiral:
      TORCH_CHECK(D % (2 * rope.n) == 0 && D % 4 == 0, "vit config: rope ", rope.spec(),
                  " needs head dim divisible by 2K = ", 2 * rope.n, " and 4, got ", D);
      break;
    default: break;
  }
}

std::string VitConfig::to_json() const {
  nlohmann::json j = {{"model_type", "qvl_vit"}, {"image", image}, {"channels", channels}, {"patch", patch},
                      {"width", width}, {"depth", depth}, {"heads", heads}, {"mlp_ratio", mlp_ratio},
                      {"classes", classes}, {"cls_token", cls_token}, {"rope", rope.spec()}, {"rope_theta", rope.theta}};
  return j.dump();
}

VitConfig VitConfig::from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("vit config: not JSON: ") + e.what());
  }
  const std::string model_type = j.is_object() ? j.value("model_type", "") : "";
  TORCH_CHECK(model_type == "qvl_vit", "vit config: model_type must be qvl_vit, got '", model_type, "'");
  VitConfig c;
  try {
    c.image = j.at("image");
    c.channels = j.at("channels");
    c.patch = j.at("patch");
    c.width = j.at("width");
    c.depth = j.at("depth");
    c.heads = j.at("heads");
    c.mlp_ratio = j.at("mlp_ratio");
    c.classes = j.at("classes");
    c.cls_token = j.at("cls_token");
    c.rope = parse_rope(j.at("rope").get<std::string>());
    c.rope.theta = j.at("rope_theta");
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(std::string("vit config: ") + e.what());
  }
  c.validate();
  return c;
}

Positions parse_positions(const std::string& s) {
  if (s == "extend") return Positions::Extend;
  if (s == "rescale") return Positions::Rescale;
  throw std::runtime_error("positions must be extend or rescale, got '" + s + "'");
}

double rotated_fraction(const VitConfig& c) {
  if (!c.rope.rotary()) return 0.0;
  if (c.rope.kind == VitRope::Kind::Block) return double(block_count(c) * c.rope.n) / double(c.head_dim());
  return 1.0;
}

bool no_weight_decay(const std::string& path) {
  auto ends = [&](const std::string& s) { return path.size() >= s.size() && path.compare(path.size() - s.size(), s.size(), s) == 0; };
  return ends(".bias") || path.find("norm") != std::string::npos || path == "cls_token" || path == "pos_embed" ||
         path == "rope.freqs";
}

Weights init(const VitConfig& c, uint64_t seed) {
  c.validate();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto normal = [&](std::vector<int64_t> shape) { return at::normal(0.0, 0.02, shape, gen, f32); };
  Weights w;
  const int64_t W = c.width, pp = c.channels * c.patch * c.patch, G = c.grid(), hidden = c.width * c.mlp_ratio;
  auto lin = [&](const std::string& name, int64_t out, int64_t in) {
    w.set(name + ".weight", normal({out, in}));
    w.set(name + ".bias", at::zeros({out}, f32));
  };
  auto norm = [&](const std::string& name) {
    w.set(name + ".weight", at::ones({W}, f32));
    w.set(name + ".bias", at::zeros({W}, f32));
  };
  lin("patch_embed.proj", W, pp);
  if (c.cls_token) w.set("cls_token", normal({1, 1, W}));
  if (c.rope.ape()) w.set("pos_embed", normal({1, G * G, W}));
  for (int64_t l = 0; l < c.depth; ++l) {
    const std::string b = "blocks." + std::to_string(l);
    norm(b + ".norm1");
    lin(b + ".attn.qkv", 3 * W, W);
    lin(b + ".attn.proj", W, W);
    norm(b + ".norm2");
    lin(b + ".mlp.fc1", hidden, W);
    lin(b + ".mlp.fc2", W, hidden);
  }
  norm("norm");
  lin("head", c.classes, W);
  if (c.rope.kind == VitRope::Kind::Mixed) {
    // init_random_2d_freqs: one direction alpha ~ U[0, 2 pi) per layer and head
    at::Tensor alpha = at::rand({c.depth, c.heads}, gen, f32) * (2 * M_PI);
    w.set("rope.freqs", rope::mixed_init_frequencies(alpha, c.head_dim(), c.rope.theta));
  }
  return w;
}

RopeTables rope_tables_at(const Weights& w, const VitConfig& c, const at::Tensor& pos_xy, int64_t grid_h, int64_t grid_w) {
  TORCH_CHECK(pos_xy.dim() == 2 && pos_xy.size(1) == 2, "vit::rope_tables_at: positions must be [M, 2] (x, y), got ",
              pos_xy.sizes());
  RopeTables t;
  t.gh = grid_h;
  t.gw = grid_w;
  const at::Tensor ref = w.tensor("patch_embed.proj.weight");
  const auto opt = ref.options();
  const int64_t D = c.head_dim();
  at::Tensor tx = pos_xy.select(1, 0).to(at::kFloat), ty = pos_xy.select(1, 1).to(at::kFloat);
  switch (c.rope.kind) {
    case VitRope::Kind::None:
    case VitRope::Kind::Ape: break;
    case VitRope::Kind::Axial:
    case VitRope::Kind::AxialMatrix:
    case VitRope::Kind::ApeAxial:
      t.angles = rope::axial_angles(D, tx, ty, c.rope.theta).to(opt);
      break;
    case VitRope::Kind::Mixed: {
      const at::Tensor& f = w.tensor("rope.freqs", {2, c.depth, c.heads * D / 2});
      t.angles = rope::mixed_angles(f, tx.to(f.device()), ty.to(f.device()), c.heads);  // [L, H, M, P], differentiable
      break;
    }
    case VitRope::Kind::Block: {
      const int64_t nb = block_count(c), b = c.rope.n;
      at::Tensor G = rope::generators_axis_partition(nb * b, b, 2, c.rope.theta);  // [2, nb, b, b]
      t.blocks = rope::block_rotations(G, at::stack({tx, ty}, 1)).to(opt);          // [M, nb, b, b]
      break;
    }
    case VitRope::Kind::Spiral: {
      // integer positions inside the grid; the exact form is affine in (row, column)
      rope::SpiralConfig sc = spiral_config(c, 0);
      at::Tensor rc = at::stack({ty, tx}, 1).round().to(at::kLong);
      t.angles = rope::spiral_angles(rope::spiral_frequencies(sc), rc, grid_h, grid_w, sc, rope::SpiralMode::kExact).to(opt);
      break;
    }
  }
  return t;
}

RopeTables rope_tables(const Weights& w, const VitConfig& c, int64_t gh, int64_t gw, Positions mode) {
  const int64_t G = c.grid();
  if (c.rope.kind == VitRope::Kind::Spiral) {
    // Spiral rescales through its own rule: t = r / n * pt_seq_len with pt_seq_len = G (square grids)
    TORCH_CHECK(mode != Positions::Rescale || gh == gw,
                "vit spiral rope: --positions rescale needs a square grid, got ", gh, "x", gw);
    rope::SpiralConfig sc = spiral_config(c, mode == Positions::Rescale && gh != G ? G : 0);
    at::Tensor r = at::arange(gh, at::kLong), col = at::arange(gw, at::kLong);
    at::Tensor rc = at::stack({r.repeat_interleave(gw), col.repeat({gh})}, 1);
    RopeTables t;
    t.gh = gh;
    t.gw = gw;
    t.angles = rope::spiral_angles(rope::spiral_frequencies(sc), rc, gh, gw, sc, rope::SpiralMode::kExact)
                   .to(w.tensor("patch_embed.proj.weight").options());
    return t;
  }
  rope::GridXY g = rope::grid_xy(gw, gh);  // x = column, y = row, row-major
  at::Tensor tx = g.t_x, ty = g.t_y;
  if (mode == Positions::Rescale) {
    tx = tx * (double(G) / double(gw));
    ty = ty * (double(G) / double(gh));
  }
  return rope_tables_at(w, c, at::stack({tx, ty}, 1), gh, gw);
}

at::Tensor apply_rope(const VitConfig& c, const RopeTables& t, int64_t layer, const at::Tensor& x) {
  switch (c.rope.kind) {
    case VitRope::Kind::None:
    case VitRope::Kind::Ape: return x;
    case VitRope::Kind::Axial:
    case VitRope::Kind::ApeAxial: return rope::apply_pairs_complex(x, t.angles);
    case VitRope::Kind::AxialMatrix: return rope::apply_pairs_matrix(x, t.angles);
    case VitRope::Kind::Mixed: return rope::apply_pairs_complex(x, t.angles[layer]);  // [H, N, P]
    case VitRope::Kind::Block: return rope::apply_block_rope(x, t.blocks);
    case VitRope::Kind::Spiral: return rope::apply_spiral(x.transpose(1, 2), t.angles).transpose(1, 2);
  }
  return x;
}

at::Tensor resize_pos_embed(const at::Tensor& pos_embed, int64_t grid, int64_t gh, int64_t gw) {
  TORCH_CHECK(pos_embed.dim() == 3 && pos_embed.size(1) == grid * grid, "vit: pos_embed must be [1, ", grid * grid,
              ", W], got ", pos_embed.sizes());
  if (gh == grid && gw == grid) return pos_embed;
  const int64_t W = pos_embed.size(2);
  at::Tensor p = pos_embed.reshape({1, grid, grid, W}).permute({0, 3, 1, 2});
  p = at::upsample_bicubic2d(p, {gh, gw}, /*align_corners=*/false);
  return p.permute({0, 2, 3, 1}).reshape({1, gh * gw, W});
}

at::Tensor scaled_logits(const at::Tensor& q, const at::Tensor& k) {
  return at::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(q.size(-1)));
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (q.size(-2) <= kExplicitAttentionMaxTokens) return at::matmul(at::softmax(scaled_logits(q, k), -1), v);
  return at::scaled_dot_product_attention(q, k, v);
}

at::Tensor attention_logits(const Weights& w, const VitConfig& c, int64_t layer, const at::Tensor& x, const RopeTables& tables) {
  VitConfig nc = c;
  nc.cls_token = false;  // x holds patch tokens only
  const Weights blk = w.at("blocks").at(layer);
  const int64_t B = x.size(0), T = x.size(1), H = c.heads, D = c.head_dim();
  at::Tensor qkv = linear(blk, "attn.qkv", x).reshape({B, T, 3, H, D}).permute({2, 0, 3, 1, 4});
  auto [q, k] = rotated_qk(nc, tables, layer, qkv[0], qkv[1], nullptr);
  return scaled_logits(q, k);
}

at::Tensor forward(const Weights& w, const VitConfig& c, const at::Tensor& images, Positions mode,
                   const RopeTables& tables_in, RopeTimer* timer) {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == c.channels && images.size(2) % c.patch == 0 &&
                  images.size(3) % c.patch == 0,
              "vit::forward: images must be [B, ", c.channels, ", H, W] with H, W multiples of ", c.patch, ", got ",
              images.sizes());
  const int64_t B = images.size(0), p = c.patch, gh = images.size(2) / p, gw = images.size(3) / p, T0 = gh * gw;
  const int64_t W = c.width, H = c.heads, D = c.head_dim();
  // patches [B, T, C*p*p]: (C, ph, pw) inside a patch, as a stride-p convolution's weight [W, C, p, p] flattens
  at::Tensor patches = images.reshape({B, c.channels, gh, p, gw, p}).permute({0, 2, 4, 1, 3, 5}).reshape({B, T0, c.channels * p * p});
  at::Tensor x = linear(w, "patch_embed.proj", patches);
  if (c.rope.ape()) x = x + resize_pos_embed(w.tensor("pos_embed"), c.grid(), gh, gw);
  if (c.cls_token) x = at::cat({w.tensor("cls_token", {1, 1, W}).expand({B, 1, W}), x}, 1);
  RopeTables tables = tables_in;
  if (c.rope.rotary() && !tables.defined()) {
    Stopwatch sw(timer ? &timer->build_s : nullptr);
    tables = rope_tables(w, c, gh, gw, mode);
  }
  TORCH_CHECK(!c.rope.rotary() || (tables.gh == gh && tables.gw == gw), "vit::forward: rope tables are for a ",
              tables.gh, "x", tables.gw, " grid, images give ", gh, "x", gw);
  const int64_t T = x.size(1);
  const Weights blocks = w.at("blocks");
  for (int64_t l = 0; l < c.depth; ++l) {
    const Weights blk = blocks.at(l);
    at::Tensor h = layer_norm(blk, "norm1", x);
    at::Tensor qkv = linear(blk, "attn.qkv", h).reshape({B, T, 3, H, D}).permute({2, 0, 3, 1, 4});  // [3, B, H, T, D]
    auto [q, k] = rotated_qk(c, tables, l, qkv[0], qkv[1], timer);
    at::Tensor o = attend(q, k, qkv[2]);  // [B, H, T, D]
    x = x + linear(blk, "attn.proj", o.transpose(1, 2).reshape({B, T, W}));
    x = x + linear(blk, "mlp.fc2", at::gelu(linear(blk, "mlp.fc1", layer_norm(blk, "norm2", x))));
  }
  x = layer_norm(w, "norm", x);
  at::Tensor feat = c.cls_token ? x.select(1, 0) : x.mean(1);
  return linear(w, "head", feat);
}

}  // namespace qvl::vit
