// Text forms of the RoPE plug-in options: the official Circle-RoPE `circle_rope` JSON block, and the
// `--rope` specs of the qvl tool.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "functional/rope/rope_config.h"

namespace qvl {

// The official `circle_rope` config block (lose4578/CircleRoPE code/config.json), read with the official
// code's defaults and Python truthiness: alpha, radius (number, "auto", "auto-k"), method ("circle",
// "no_circle"), move_to_origin, move_to_positive (false, true = offset 1.0, "auto" = offset 0, a number),
// dff_rate (0/false = off). qvl's own keys: "dff_convention" ("head" | "legacy"), "video" ("per_frame" |
// "official"). "AGE_mode" is accepted and ignored here (see parse_text_rope). Any other key is an error.
rope::circle::Config circle_config_from_json(const nlohmann::json& j);

// --rope SPEC for the text model:
//   "mrope"                     stock M-RoPE (default)
//   "circle"                    the released Circle-RoPE config: alpha 0.5, radius 10, method circle,
//                               move_to_origin true, AGE_mode strategy_4
//   "circle:{JSON}"             a circle_rope block as above (missing keys take the official code's
//                               defaults); "AGE_mode": "all" | "strategy_2|3|4"; "age_decode": "per_source"
//                               (default) | "parity"
rope::TextRope parse_text_rope(const std::string& spec);

}  // namespace qvl
