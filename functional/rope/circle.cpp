#include "functional/rope/circle.h"

#include <cmath>
#include <stdexcept>

#include "functional/weights.h"

namespace qvl::rope::circle {
namespace {

constexpr double kTwoPi = 2 * M_PI;

// rotate_plane_perpendicular_to_vector(coords, [1, 1, 1]): P = c[0] * u + c[1] * v, float32.
at::Tensor plane_embed(const at::Tensor& coords) {
  // text = tensor([1, 1, 1]).float(); text_unit = text / norm(text)
  at::Tensor text = at::ones({3}, at::kFloat);
  at::Tensor n = text / at::linalg_vector_norm(text);
  // u = stack([-n1, n0, 0]); u = u / norm(u); v = cross(n, u); v = v / norm(v)
  at::Tensor u = at::stack({-n[1], n[0], at::zeros({}, at::kFloat)});
  u = u / at::linalg_vector_norm(u);
  at::Tensor v = at::linalg_cross(n, u, 0);
  v = v / at::linalg_vector_norm(v);
  at::Tensor a = coords[0], b = coords[1];
  return at::stack({a * u[0] + b * v[0], a * u[1] + b * v[1], a * u[2] + b * v[2]});
}

// map_to_circle on frame 0: (R cos theta, R sin theta), theta = alpha theta_SA + (1 - alpha) theta_GA.
at::Tensor map_to_circle(const at::Tensor& coords, const at::Tensor& radius, double alpha) {
  at::Tensor x = coords[0][0], y = coords[1][0];  // [H, W]
  const int64_t H = x.size(0), W = x.size(1);
  at::Tensor phi = at::atan2(y.to(at::kFloat), x.to(at::kFloat));
  at::Tensor lo = phi.min(), range = phi.max() - lo;
  // theta_uniform = (theta_orig - theta_min) / theta_range * (2 * pi), or theta_orig when the range is 0
  at::Tensor sa = range.item<float>() > 0 ? (phi - lo) / range * kTwoPi : phi;
  at::Tensor ga = at::arange(H * W, at::kFloat).reshape({H, W}) / static_cast<double>(H * W) * kTwoPi;
  at::Tensor theta = sa * alpha + ga * (1 - alpha);
  at::Tensor nx = radius * at::cos(theta), ny = radius * at::sin(theta);
  return at::stack({nx, ny}).unsqueeze(1);  // [2, 1, H, W] (z is never used after this)
}

}  // namespace

at::Tensor block_positions(const at::Tensor& frame_times, int64_t H, int64_t W, const Config& cfg) {
  const int64_t T = frame_times.size(0);
  TORCH_CHECK(T >= 1 && H >= 1 && W >= 1, "circle::block_positions: empty grid (", T, ", ", H, ", ", W, ")");
  TORCH_CHECK(T <= 1 || cfg.method != Method::Circle || cfg.video != VideoFrames::Official,
              "circle::block_positions: the official Circle-RoPE maps one frame only, but the grid has T=", T,
              " frames (", T * H * W, " tokens, ", H * W, " positions); use the per-frame extension");
  // ori_coords = stack((w_index, h_index, t_index))                               [3, T, H, W] int64
  at::Tensor w_idx = at::arange(W, at::kLong).view({1, 1, W}).expand({T, H, W});
  at::Tensor h_idx = at::arange(H, at::kLong).view({1, H, 1}).expand({T, H, W});
  at::Tensor t_idx = frame_times.to(at::kLong).view({T, 1, 1}).expand({T, H, W});
  at::Tensor coords = at::stack({w_idx, h_idx, t_idx});
  if (cfg.move_to_origin) {
    // centers = (amax + amin) / 2.0 per axis; coords - centers                    -> float32
    at::Tensor centers = (at::amax(coords, {1, 2, 3}) + at::amin(coords, {1, 2, 3})) / 2.0;
    coords = coords - centers.view({-1, 1, 1, 1});
  }
  // radius = ori_coords.max().abs() * scale for "auto[-scale]", else float(radius)
  at::Tensor radius = cfg.radius_auto ? (coords.max().abs() * cfg.radius).to(at::kFloat)
                                      : at::scalar_tensor(cfg.radius, at::kFloat);
  at::Tensor P = plane_embed(cfg.method == Method::Circle ? map_to_circle(coords, radius, cfg.alpha) : coords);
  if (cfg.dff_rate != 0.0) {
    at::Tensor flat = plane_embed(coords);
    P = cfg.dff_convention == DffConvention::Head ? P * (1 - cfg.dff_rate) + flat * cfg.dff_rate
                                                  : P * cfg.dff_rate + flat * (1 - cfg.dff_rate);
  }
  if (T > 1 || P.size(1) != T) {
    if (cfg.video == VideoFrames::PerFrame) {
      // qvl extension: frame f = frame 0's points + z'_f (1, 1, 1)
      at::Tensor z = coords[2].select(1, 0).select(1, 0).to(at::kFloat).view({1, T, 1, 1});  // [1, T, 1, 1]
      P = P.select(1, 0).unsqueeze(1) + z;
    } else {
      P = P.expand({3, T, H, W});  // official no_circle: frames share frame 0's positions
    }
  }
  if (cfg.move_to_positive) {
    // new_coords = coords + |min(coords)| + offset
    at::Tensor m = at::min(P).abs();
    P = (P + m) + (cfg.move_to_positive_auto ? 0.0 : cfg.move_to_positive_offset);
  }
  P = P.contiguous().to(at::kFloat);
  return at::stack({P[2].flatten(), P[1].flatten(), P[0].flatten()});  // [3, T*H*W] rows (t, h, w)
}

at::Tensor m_block_positions(const at::Tensor& frame_times, int64_t H, int64_t W) {
  const int64_t T = frame_times.size(0);
  at::Tensor t = frame_times.to(at::kLong).view({T, 1, 1}).expand({T, H, W}).flatten();
  at::Tensor h = at::arange(H, at::kLong).view({1, H, 1}).expand({T, H, W}).flatten();
  at::Tensor w = at::arange(W, at::kLong).view({1, 1, W}).expand({T, H, W}).flatten();
  return at::stack({t, h, w});
}

RopeIndex get_rope_index(const at::Tensor& input_ids, const at::Tensor& image_grid_thw, const at::Tensor& video_grid_thw,
                         const at::Tensor& second_per_grid_ts, const at::Tensor& attention_mask_in, const TokenIds& ids,
                         const Config& cfg, bool use_m_index) {
  TORCH_CHECK(input_ids.dim() == 2, "circle::get_rope_index: input_ids must be [B, L], got ", input_ids.sizes());
  const int64_t B = input_ids.size(0), L = input_ids.size(1);
  at::Tensor attention_mask = attention_mask_in.defined() ? attention_mask_in.to(at::kLong) : at::ones({B, L}, at::kLong);
  TORCH_CHECK(attention_mask.sizes() == input_ids.sizes(), "circle::get_rope_index: attention_mask ",
              attention_mask.sizes(), " does not match input_ids ", input_ids.sizes());
  RopeIndex out;
  if (!image_grid_thw.defined() && !video_grid_thw.defined()) {
    // The text-only branch keeps the stock int64 positions: cumsum - 1 with 1 at padding.
    at::Tensor p = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask.eq(0), 1);
    out.position_ids = p.unsqueeze(0).expand({3, B, L}).contiguous();
    out.deltas = std::get<0>(out.position_ids.amax(0).max(-1, true)) + 1 - L;
    return out;
  }
  const int64_t m = ids.spatial_merge_size;
  // position_ids = torch.ones(3, B, L).type(torch.float)
  out.position_ids = at::ones({3, B, L}, at::kFloat);
  std::vector<float> deltas;
  int64_t image_index = 0, video_index = 0;
  auto grid = [](const at::Tensor& g, int64_t i, const char* what) {
    TORCH_CHECK(g.defined() && i < g.size(0), "circle::get_rope_index: more ", what,
                " groups in input_ids than rows in ", what, "_grid_thw (", g.defined() ? g.size(0) : 0, ")");
    return std::array<int64_t, 3>{g[i][0].item<int64_t>(), g[i][1].item<int64_t>(), g[i][2].item<int64_t>()};
  };
  for (int64_t b = 0; b < B; ++b) {
    at::Tensor keep = attention_mask[b].eq(1);
    at::Tensor row = input_ids[b].masked_select(keep).contiguous();
    std::vector<int64_t> tok(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
    const int64_t n = static_cast<int64_t>(tok.size());
    int64_t images = 0, videos = 0;
    for (int64_t i = 0; i + 1 < n; ++i) {
      if (tok[i] != ids.vision_start) continue;
      images += tok[i + 1] == ids.image;
      videos += tok[i + 1] == ids.video;
    }
    auto find = [&](int64_t id, int64_t from, int64_t remain) -> int64_t {
      if (remain <= 0) return n + 1;
      for (int64_t i = from; i < n; ++i)
        if (tok[i] == id) return i;
      return n + 1;
    };
    std::vector<at::Tensor> parts;  // each [3, len], int64 or float32
    auto next_start = [&]() -> at::Tensor {
      // st_idx = llm_pos_ids_list[-1].max() + 1 if llm_pos_ids_list else 0
      return parts.empty() ? at::zeros({}, at::kLong) : parts.back().max() + 1;
    };
    int64_t st = 0, remain_i = images, remain_v = videos;
    for (int64_t g = 0; g < images + videos; ++g) {
      const int64_t ed_i = find(ids.image, st, remain_i), ed_v = find(ids.video, st, remain_v);
      std::array<int64_t, 3> thw;
      double spg;
      int64_t ed;
      if (ed_i < ed_v) {
        thw = grid(image_grid_thw, image_index++, "image");
        spg = 0.0;
        --remain_i;
        ed = ed_i;
      } else {
        thw = grid(video_grid_thw, video_index, "video");
        spg = second_per_grid_ts.defined() ? second_per_grid_ts[video_index].item<double>() : 1.0;
        ++video_index;
        --remain_v;
        ed = ed_v;
      }
      TORCH_CHECK(ed <= n, "circle::get_rope_index: row ", b, ": a vision group has no placeholder tokens");
      const int64_t T = thw[0], H = thw[1] / m, W = thw[2] / m, text_len = ed - st;
      at::Tensor st_idx = next_start();
      parts.push_back(at::arange(text_len, at::kLong).view({1, -1}).expand({3, -1}) + st_idx);
      // time_tensor = arange(T) * second_per_grid_t * tokens_per_second; .long() truncates
      at::Tensor times = at::arange(T, at::kLong);
      times = spg == 0.0 ? times * 0 : (times * at::scalar_tensor(spg, at::kFloat) * ids.tokens_per_second).to(at::kLong);
      at::Tensor block = use_m_index ? m_block_positions(times, H, W) : block_positions(times, H, W, cfg);
      parts.push_back(block + text_len + st_idx);
      st = ed + T * H * W;
      TORCH_CHECK(st <= n, "circle::get_rope_index: row ", b, ": grid (", T, ", ", thw[1], ", ", thw[2], ") needs ",
                  T * H * W, " tokens, but only ", n - ed, " remain in the sequence from its first placeholder");
    }
    if (st < n) {
      at::Tensor st_idx = next_start();
      parts.push_back(at::arange(n - st, at::kLong).view({1, -1}).expand({3, -1}) + st_idx);
    }
    at::Tensor pos = at::cat(parts, 1).reshape({3, -1}).to(at::kFloat);  // [3, n]
    out.position_ids.select(1, b).masked_scatter_(keep.view({1, L}).expand({3, L}), pos);
    deltas.push_back((pos.max() + 1 - L).item<float>());
  }
  TORCH_CHECK(!image_grid_thw.defined() || image_index == image_grid_thw.size(0), "circle::get_rope_index: image_grid_thw has ",
              image_grid_thw.size(0), " rows but input_ids hold ", image_index, " image groups");
  TORCH_CHECK(!video_grid_thw.defined() || video_index == video_grid_thw.size(0), "circle::get_rope_index: video_grid_thw has ",
              video_grid_thw.size(0), " rows but input_ids hold ", video_index, " video groups");
  out.deltas = at::tensor(deltas, at::kFloat).unsqueeze(1);
  return out;
}

std::vector<bool> age_layers(const std::string& strategy, int64_t L) {
  TORCH_CHECK(L >= 1, "circle::age_layers: need at least one layer, got ", L);
  std::vector<bool> circle(L);
  for (int64_t l = 0; l < L; ++l) {
    if (strategy == "all") circle[l] = true;
    else if (strategy == "strategy_2") circle[l] = 2 * l < L;   // l < L/2
    else if (strategy == "strategy_3") circle[l] = 2 * l >= L;  // l >= L/2
    else if (strategy == "strategy_4") circle[l] = l % 2 == 0;
    else TORCH_CHECK(false, "circle::age_layers: unknown AGE strategy '", strategy,
                     "' (known: all, strategy_2, strategy_3, strategy_4; the official strategy_1 never existed in its table)");
  }
  return circle;
}

}  // namespace qvl::rope::circle
