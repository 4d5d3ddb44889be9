// Plain option structs of the text-side RoPE plug-in (no ATen), so that ModelConfig can carry them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qvl::rope {
namespace circle {

// Circle-RoPE options: the official `circle_rope` config block (functional/rope/circle.h has the maths).
// Defaults are the official code's `.get` defaults, not the released config's.
enum class Method { Circle, NoCircle };
enum class DffConvention { Head, Legacy };
enum class VideoFrames { PerFrame, Official };

struct Config {
  double alpha = -1.0;            // code default -1 (released configs: 0.5)
  bool radius_auto = false;       // "auto" / "auto-k"
  double radius = -1.0;           // the number, or k of "auto-k" (1 for "auto")
  Method method = Method::Circle;
  bool move_to_origin = false;
  bool move_to_positive = false;  // off when false
  bool move_to_positive_auto = false;
  double move_to_positive_offset = 0.0;  // True -> 1.0, a number -> itself, "auto" -> 0
  double dff_rate = 0.0;                 // 0: off
  DffConvention dff_convention = DffConvention::Head;
  VideoFrames video = VideoFrames::PerFrame;
};

}  // namespace circle

// Which positions the text model's layers see (docs/design.md §2: "a per-layer rope plan").
//   MRope:  stock Qwen2.5-VL M-RoPE everywhere (transformers' get_rope_index); the default.
//   Circle: Circle-RoPE positions (circle::get_rope_index) on the layers that the AGE strategy marks
//           (circle::age_layers) and stock M-RoPE on the others; no strategy = Circle on every layer.
// Decoding: each position source keeps its own rope delta (a new token sits at past + delta of the source
// its layer uses), so a cached decode equals a full forward over the longer sequence. parity_decode = true
// reproduces the official Circle-RoPE code instead, where every layer decodes at the Circle delta after an
// AGE prefill (so M-RoPE layers see new tokens shifted by circle delta - M-RoPE delta).
struct TextRope {
  enum class Kind { MRope, Circle };
  Kind kind = Kind::MRope;
  circle::Config circle;
  std::string age_strategy;  // "", "all", "strategy_2", "strategy_3", "strategy_4"
  bool parity_decode = false;
  std::string spec;          // the text it was parsed from, for printing
};

}  // namespace qvl::rope
