// Golden checking of the RoPE variants against the outputs of the papers' official code
// (tests/data/rope_golden/*.h5, schema in tests/data/rope_golden/README.md).
//
// Each case holds a `function` name, its `params` (JSON), input tensors and output tensors. A runner per
// function recomputes the outputs with functional/rope/ and the checker compares them output by output:
// positions exactly (integers) or to 1e-6 (floats), every other float tensor at the fp32 rule of the
// thresholds table. A case whose official run raised has no outputs: the runner must raise too (or
// follow a documented, tested choice, reported as such).
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace qvl::rope_check {

using TensorMap = std::map<std::string, at::Tensor>;

struct GoldenCase {
  std::string file, name, function, note;
  nlohmann::json params;  // the `params` attribute, parsed
  nlohmann::json root;    // the file's root attributes (JSON-valued ones parsed, others as strings)
  TensorMap inputs;       // "complex_as_real_pair" tensors stay real, [..., 2] = (re, im)
  TensorMap outputs;      // empty when the official code raised
};

struct CaseResult {
  TensorMap outputs;  // qvl's values, keyed like the golden outputs
  // Golden outputs that cannot be recomputed and are checked another way (name -> how); printed.
  std::map<std::string, std::string> notes;
};

using Runner = std::function<CaseResult(const GoldenCase&)>;

// Runners by `function` attribute. Throws on an unknown function.
const std::map<std::string, Runner>& runners();

// naver-ai/rope-vit and Spiral RoPE runners (instrument/rope_golden_vit.cpp).
CaseResult run_axial_case(const GoldenCase& c);   // function "axial"
CaseResult run_mixed_case(const GoldenCase& c);   // function "mixed"
CaseResult run_spiral_case(const GoldenCase& c);  // function "spiral_rope_apply"
// Circle-RoPE runners (instrument/rope_golden_circle.cpp).
CaseResult run_circle_index_case(const GoldenCase& c);  // function "circle_index"
CaseResult run_rope_index_case(const GoldenCase& c);    // function "get_rope_index"

// One output compared.
struct OutputCheck {
  std::string name, rule;  // rule: "exact", "abs<=1e-6", "fp32"
  bool pass = false;
  double max_abs = 0, max_rel = 0, pearson = 1;
  std::string detail;      // shape or dtype mismatch, missing output, ...
};
struct CaseCheck {
  std::string name, function;
  bool pass = false;
  bool expected_error = false;  // the official code raised; qvl raised too
  std::string error;            // qvl's error text, if it raised
  std::vector<OutputCheck> outputs;
  std::map<std::string, std::string> notes;
};

std::vector<GoldenCase> read_golden_file(const std::string& path);
CaseCheck check_case(const GoldenCase& c);

}  // namespace qvl::rope_check
