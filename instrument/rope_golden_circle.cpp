// Runners for circle_rope.h5 (lose4578/CircleRoPE): the block mapping and the whole get_rope_index.
#include "functional/rope/circle.h"
#include "instrument/rope_check.h"
#include "instrument/rope_spec.h"

namespace qvl::rope_check {

CaseResult run_circle_index_case(const GoldenCase& c) {
  auto g = c.params.at("grid_thw").get<std::vector<int64_t>>();  // the merged (LLM) grid (t, h, w)
  if (g.size() != 3) throw std::runtime_error(c.name + ": params.grid_thw must have 3 entries");
  rope::circle::Config cfg = circle_config_from_json(c.params.at("config"));
  cfg.video = rope::circle::VideoFrames::Official;
  // An image: every frame time is 0 (time_tensor = arange(t) * 0 * tokens_per_second)
  CaseResult r;
  r.outputs["llm_pos_ids"] = rope::circle::block_positions(at::zeros({g[0]}, at::kLong), g[1], g[2], cfg);
  return r;
}

CaseResult run_rope_index_case(const GoldenCase& c) {
  const auto& t = c.root.at("token_ids");
  rope::circle::TokenIds ids;
  ids.vision_start = t.at("vision_start").get<int64_t>();
  ids.image = t.at("image").get<int64_t>();
  ids.video = t.at("video").get<int64_t>();
  ids.spatial_merge_size = t.at("spatial_merge_size").get<int64_t>();
  ids.tokens_per_second = t.at("tokens_per_second").get<double>();
  rope::circle::Config cfg = circle_config_from_json(c.params.at("config"));
  cfg.video = rope::circle::VideoFrames::Official;
  auto in = [&](const char* name) { return c.inputs.count(name) ? c.inputs.at(name) : at::Tensor(); };
  auto idx = rope::circle::get_rope_index(in("input_ids"), in("image_grid_thw"), in("video_grid_thw"),
                                          in("second_per_grid_ts"), in("attention_mask"), ids, cfg,
                                          c.params.at("use_m_index").get<bool>());
  CaseResult r;
  r.outputs["position_ids"] = idx.position_ids;
  r.outputs["rope_deltas"] = idx.deltas;
  return r;
}

}  // namespace qvl::rope_check
