// Parses an HF Qwen2.5-VL config.json into qvl::ModelConfig. Accepts the transformers 5.x layout
// (text_config / vision_config, rope_parameters) and the hub's flat 4.x layout (text fields at the top,
// rope_scaling + rope_theta). A missing required key is an error naming the key and the source; optional
// keys take the value the pinned transformers config class would give them.
#pragma once

#include <string>

#include "functional/config.h"

namespace qvl {

ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
ModelConfig load_model_config(const std::string& config_json_path);

}  // namespace qvl
