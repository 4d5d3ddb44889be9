#include "functional/rope/vision_plug.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "functional/rope/block.h"
#include "functional/rope/rope2d.h"
#include "functional/vision.h"
#include "functional/weights.h"  // shape_str

namespace qvl::rope {
namespace {

void check_pos(const at::Tensor& pos, const char* fn) {
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 2, fn, ": pos_hw must be [S, 2] (row, column), got ", pos.sizes());
}

// Per-image rows of pos_hw: (first row, count, h, w) from grid_thw.
struct ImageSpan {
  int64_t start, count, h, w;
};
std::vector<ImageSpan> image_spans(const at::Tensor& grid_thw, int64_t S, const char* fn) {
  TORCH_CHECK(grid_thw.dim() == 2 && grid_thw.size(1) == 3, fn, ": grid_thw must be [G, 3], got ", grid_thw.sizes());
  at::Tensor g = grid_thw.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t* p = g.data_ptr<int64_t>();
  std::vector<ImageSpan> out;
  int64_t start = 0;
  for (int64_t i = 0; i < g.size(0); ++i) {
    const int64_t n = p[3 * i] * p[3 * i + 1] * p[3 * i + 2];
    out.push_back({start, n, p[3 * i + 1], p[3 * i + 2]});
    start += n;
  }
  TORCH_CHECK(start == S, fn, ": grid_thw gives ", start, " patches, pos_hw has ", S);
  return out;
}

std::string fmt_double(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

}  // namespace

CosSin split_half_cos_sin(const at::Tensor& phi) {
  at::Tensor a = phi.to(at::kFloat);
  return {at::cat({a, a}, -1).cos(), at::cat({a, a}, -1).sin()};
}

namespace {
// The builders compute on the host (their constants are host tensors) and hand the tables to pos's device.
CosSin on_device(const CosSin& t, const at::Tensor& pos) { return {t.cos.to(pos.device()), t.sin.to(pos.device())}; }
}  // namespace

VisionRope qwen_vision_rope() {
  VisionRope r;
  r.name = "qwen";
  r.build = [](const at::Tensor& pos, const at::Tensor&, int64_t, const VisionConfig& c) {
    return vision::rotary(pos, c);
  };
  return r;
}

VisionRope axial_vision_rope(double theta) {
  VisionRope r;
  r.name = "axial:theta=" + fmt_double(theta);
  r.build = [theta](const at::Tensor& pos_hw, const at::Tensor&, int64_t, const VisionConfig& c) {
    check_pos(pos_hw, "rope::axial_vision_rope");
    at::Tensor pos = pos_hw.to(at::kCPU);
    // x = column, y = row (init_t_xy); angles [S, Dh/2]
    return on_device(split_half_cos_sin(axial_angles(c.head_dim(), pos.select(1, 1), pos.select(1, 0), theta)), pos_hw);
  };
  return r;
}

VisionRope mixed_vision_rope(double theta, uint64_t seed) {
  VisionRope r;
  r.name = "mixed:theta=" + fmt_double(theta) + ",seed=" + std::to_string(seed);
  r.per_layer = true;
  r.build = [theta, seed](const at::Tensor& pos_hw, const at::Tensor&, int64_t layer, const VisionConfig& c) {
    check_pos(pos_hw, "rope::mixed_vision_rope");
    at::Tensor pos = pos_hw.to(at::kCPU);
    TORCH_CHECK(layer >= 0 && layer < c.depth, "rope::mixed_vision_rope: layer ", layer, " outside depth ", c.depth);
    // angles = torch.rand(1) * 2 * torch.pi per (layer, head), from our own seeded generator
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    at::Tensor alpha = at::rand({c.depth, c.num_heads}, gen, at::kFloat) * (2 * M_PI);  // [L, H]
    at::Tensor freqs = mixed_init_frequencies(alpha, c.head_dim(), theta);             // [2, L, H*Dh/2]
    at::Tensor phi = mixed_angles(freqs.slice(1, layer, layer + 1), pos.select(1, 1), pos.select(1, 0), c.num_heads);
    return on_device(split_half_cos_sin(phi[0].permute({1, 0, 2})), pos_hw);  // [S, H, P] -> cos/sin [S, H, Dh]
  };
  return r;
}

VisionRope spiral_vision_rope(const SpiralConfig& sc, SpiralMode mode) {
  VisionRope r;
  std::ostringstream os;
  os << "spiral:rotate=" << sc.rotate << ",max_freq=" << sc.max_freq << ",min_freq=" << sc.min_freq
     << ",truncate=" << sc.truncate_percentage << ",same_theta=" << (sc.same_theta ? 1 : 0) << ",theta=" << sc.theta
     << ",pt=" << sc.pt_seq_len << ",mode=" << (mode == SpiralMode::kClamp ? "clamp" : "exact");
  r.name = os.str();
  r.build = [sc, mode](const at::Tensor& pos_hw, const at::Tensor& grid_thw, int64_t, const VisionConfig& c) {
    check_pos(pos_hw, "rope::spiral_vision_rope");
    at::Tensor pos = pos_hw.to(at::kCPU);
    SpiralConfig cfg = sc;
    cfg.head_dim = c.head_dim();
    at::Tensor freqs = spiral_frequencies(cfg);
    std::vector<at::Tensor> parts;
    for (const ImageSpan& s : image_spans(grid_thw, pos.size(0), "rope::spiral_vision_rope")) {
      // [count, Dh] interleaved phases for this image's h x w grid
      parts.push_back(spiral_angles(freqs, pos.slice(0, s.start, s.start + s.count), s.h, s.w, cfg, mode));
    }
    at::Tensor phi = at::cat(parts, 0);                                   // [S, Dh]
    return on_device(split_half_cos_sin(phi.slice(1, 0, phi.size(1), 2)), pos_hw);  // pair q = channel 2q
  };
  return r;
}

VisionRope block2_vision_rope(double theta) {
  VisionRope r;
  r.name = "block2:theta=" + fmt_double(theta);
  r.build = [theta](const at::Tensor& pos_hw, const at::Tensor&, int64_t, const VisionConfig& c) {
    check_pos(pos_hw, "rope::block2_vision_rope");
    at::Tensor pos = pos_hw.to(at::kCPU);
    at::Tensor G = generators_axis_partition(c.head_dim(), /*block=*/2, /*axes=*/2, theta);  // [2, Dh/2, 2, 2]
    // positions (x, y) = (column, row) as in RoPE-ViT
    at::Tensor blocks = block_rotations(G, at::stack({pos.select(1, 1), pos.select(1, 0)}, 1));  // [S, Dh/2, 2, 2]
    // exp(phi J) = [[cos, -sin], [sin, cos]]
    at::Tensor col0 = blocks.select(-1, 0);  // [S, Dh/2, 2]: (cos, sin)
    at::Tensor cs = col0.select(-1, 0), sn = col0.select(-1, 1);
    return on_device(CosSin{at::cat({cs, cs}, -1), at::cat({sn, sn}, -1)}, pos_hw);
  };
  return r;
}

VisionRope parse_vision_rope(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  static const std::map<std::string, std::set<std::string>> keys = {
      {"qwen", {}},
      {"axial", {"theta"}},
      {"mixed", {"theta", "seed"}},
      {"spiral", {"rotate", "max_freq", "min_freq", "truncate", "same_theta", "theta", "pt", "mode"}},
      {"block2", {"theta"}},
  };
  auto known = keys.find(name);
  if (known == keys.end()) {
    std::string names;
    for (const auto& [k, v] : keys) names += (names.empty() ? "" : ", ") + k;
    throw std::runtime_error("parse_vision_rope: unknown rope '" + name + "' in '" + spec + "' (known: " + names + ")");
  }
  std::map<std::string, std::string> kv;
  if (colon != std::string::npos) {
    std::stringstream ss(spec.substr(colon + 1));
    std::string item;
    while (std::getline(ss, item, ',')) {
      const size_t eq = item.find('=');
      if (item.empty() || eq == std::string::npos || eq == 0) {
        throw std::runtime_error("parse_vision_rope: '" + item + "' in '" + spec + "' is not key=value");
      }
      const std::string k = item.substr(0, eq);
      if (!known->second.count(k)) {
        std::string list;
        for (const auto& x : known->second) list += (list.empty() ? "" : ", ") + x;
        throw std::runtime_error("parse_vision_rope: " + name + " has no key '" + k + "' (keys: " +
                                 (list.empty() ? "none" : list) + ")");
      }
      if (kv.count(k)) throw std::runtime_error("parse_vision_rope: key '" + k + "' given twice in '" + spec + "'");
      kv[k] = item.substr(eq + 1);
    }
  }
  auto num = [&](const std::string& k, double def) {
    auto it = kv.find(k);
    if (it == kv.end()) return def;
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(it->second, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != it->second.size() || !std::isfinite(v)) {
      throw std::runtime_error("parse_vision_rope: " + name + ": " + k + "='" + it->second + "' is not a number");
    }
    return v;
  };
  auto integer = [&](const std::string& k, int64_t def) {
    const double v = num(k, static_cast<double>(def));
    if (v != std::floor(v)) {
      throw std::runtime_error("parse_vision_rope: " + name + ": " + k + "='" + kv.at(k) + "' is not an integer");
    }
    return static_cast<int64_t>(v);
  };
  if (name == "qwen") return qwen_vision_rope();
  if (name == "axial") return axial_vision_rope(num("theta", 100.0));
  if (name == "block2") return block2_vision_rope(num("theta", 100.0));
  if (name == "mixed") {
    const int64_t seed = integer("seed", 0);
    TORCH_CHECK(seed >= 0, "parse_vision_rope: mixed: seed must be >= 0, got ", kv.at("seed"));
    return mixed_vision_rope(num("theta", 10.0), static_cast<uint64_t>(seed));
  }
  // spiral
  SpiralConfig sc;
  sc.rotate = integer("rotate", 2);
  sc.max_freq = num("max_freq", 1.5);
  sc.min_freq = num("min_freq", 0.0);
  sc.truncate_percentage = num("truncate", 0.0);
  sc.theta = num("theta", 10000.0);
  sc.pt_seq_len = integer("pt", 0);
  const int64_t same = integer("same_theta", 0);
  TORCH_CHECK(same == 0 || same == 1, "parse_vision_rope: spiral: same_theta must be 0 or 1, got ", kv.at("same_theta"));
  sc.same_theta = same == 1;
  SpiralMode mode = SpiralMode::kExact;
  if (kv.count("mode")) {
    if (kv["mode"] == "clamp") mode = SpiralMode::kClamp;
    else TORCH_CHECK(kv["mode"] == "exact", "parse_vision_rope: spiral: mode must be clamp or exact, got '", kv["mode"], "'");
  }
  // Validate what does not depend on the tower's head dim now (head_dim % 4R is checked at build time).
  TORCH_CHECK(sc.rotate >= 0, "parse_vision_rope: spiral: rotate must be >= 0, got ", kv.at("rotate"));
  TORCH_CHECK(!sc.same_theta || sc.rotate > 0, "parse_vision_rope: spiral: same_theta=1 needs rotate > 0, got rotate ",
              sc.rotate);
  TORCH_CHECK(sc.max_freq > 0, "parse_vision_rope: spiral: max_freq must be > 0, got ", sc.max_freq);
  TORCH_CHECK(sc.truncate_percentage >= 0 && sc.truncate_percentage <= 1,
              "parse_vision_rope: spiral: truncate must be in [0, 1], got ", sc.truncate_percentage);
  return spiral_vision_rope(sc, mode);
}

}  // namespace qvl::rope
