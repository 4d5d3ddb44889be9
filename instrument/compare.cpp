#include "instrument/compare.h"

#include <map>

#include "functional/model.h"
#include "functional/text.h"
#include "functional/vision.h"

namespace qvl {

namespace {
std::map<std::string, std::string> chained_attrs(const Recording& ref) {
  return {{"producer", "qvl 0.1.0"},
          {"dtype", ref.attr("dtype")},
          {"device", "cpu"},
          {"attn_implementation", "functional (eager-equivalent)"},
          {"config", ref.has_attr("config") ? ref.attr("config") : "{}"},
          {"scenario", ref.has_attr("scenario") ? ref.attr("scenario") : "{}"},
          {"reference", ref.path()}};
}
}  // namespace

size_t record_model_chained(const Weights& root, const ModelConfig& cfg, const Recording& ref,
                            const std::string& out_path) {
  RecordingWriter writer(out_path, chained_attrs(ref));
  const model::Inputs prompt = recorded_model_inputs(ref);
  model::lm_forward(root, prompt, cfg, &writer);
  const std::vector<size_t> steps = ref.generate_steps();
  if (!steps.empty()) {
    model::DecodeState s = model::prefill(root, prompt, cfg, &writer);
    for (size_t k = 1; k < steps.size(); ++k) {
      const at::Tensor ids = ref.load(steps[k]).input("input_ids").as_tensor("input_ids");  // [B, 1]
      model::decode_step(root, s, ids.select(1, 0), cfg, {}, &writer);
    }
  }
  writer.close();
  return writer.size();
}

size_t record_vision_chained(const Weights& root, const ModelConfig& cfg, const Recording& ref,
                             const std::string& out_path) {
  size_t tower = ref.calls().size();
  for (size_t i = 0; i < ref.calls().size() && tower == ref.calls().size(); ++i)
    if (ref.calls()[i].module_class == "Qwen2_5_VisionTransformerPretrainedModel") tower = i;
  if (tower == ref.calls().size()) throw std::runtime_error("'" + ref.path() + "': no vision tower call to take inputs from");
  RecordedCall call = ref.load(tower);
  const at::Tensor pixel_values = call.input("hidden_states", 0).as_tensor("pixel_values");
  const at::Tensor grid_thw = call.input("grid_thw", 1).as_tensor("grid_thw");
  RecordingWriter writer(out_path, chained_attrs(ref));
  vision::transformer(root.at(call.header.module_path), pixel_values, grid_thw, cfg.vision, &writer, cfg.vision_rope.get());
  writer.close();
  return writer.size();
}

int first_divergent_call(const std::vector<CallHeader>& calls, const std::vector<bool>& failing) {
  if (failing.size() != calls.size()) throw std::runtime_error("first_divergent_call: one flag per call expected");
  const int64_t n = static_cast<int64_t>(calls.size());
  std::vector<bool> failing_descendant(calls.size(), false);
  for (int64_t i = 0; i < n; ++i) {
    if (!failing[i]) continue;
    for (int64_t p = calls[i].parent; p >= 0 && p < n; p = calls[p].parent) failing_descendant[p] = true;
  }
  for (int64_t i = 0; i < n; ++i)
    if (failing[i] && !failing_descendant[i]) return static_cast<int>(i);
  return -1;
}

CompareReport compare_recordings(const Recording& ref, const Recording& ours) {
  CompareReport rep;
  std::map<std::pair<std::string, int64_t>, size_t> ours_index;
  for (size_t i = 0; i < ours.calls().size(); ++i) {
    const CallHeader& h = ours.calls()[i];
    ours_index[{h.module_path, h.call_index}] = i;
  }
  for (size_t i = 0; i < ref.calls().size(); ++i) {
    CompareRow row;
    row.ref = ref.calls()[i];
    auto it = ours_index.find({row.ref.module_path, row.ref.call_index});
    if (it == ours_index.end()) {
      ++rep.missing;
      rep.rows.push_back(std::move(row));
      continue;
    }
    row.present = true;
    RecordedCall r = ref.load(i), o = ours.load(it->second);
    // In a chain every call's inputs carry upstream bf16 drift, so the noise floor is HF's fp32 model run
    // end to end (outputs_fp32_chain), not its fp32 module on HF's own bf16 inputs (outputs_fp32).
    const Value& floor = r.outputs_fp32_chain.is_none() ? r.outputs_fp32 : r.outputs_fp32_chain;
    row.tensors = judge_outputs(o.outputs, r.outputs, floor, ref.attr("dtype"), row.ref.module_class);
    for (const auto& tc : row.tensors) {
      if (tc.vs_ref.shape_ok && !tc.vs_ref.integer) {
        row.max_rel = std::max(row.max_rel, tc.vs_ref.max_rel);
        row.min_pearson = std::min(row.min_pearson, tc.vs_ref.pearson);
      }
      if (!tc.verdict.pass && row.pass) {
        row.pass = false;
        row.why = tc.name + ": " + tc.verdict.why;
      }
    }
    ++rep.compared;
    rep.failed += !row.pass;
    rep.rows.push_back(std::move(row));
  }
  std::vector<CallHeader> headers;
  std::vector<bool> failing;
  for (const auto& r : rep.rows) {
    headers.push_back(r.ref);
    failing.push_back(r.present && !r.pass);
  }
  rep.first_divergent = first_divergent_call(headers, failing);
  return rep;
}

}  // namespace qvl
