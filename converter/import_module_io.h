// `qvl import module_io_data DIR -o REC.h5`: the Qwen2.5-VL conversion framework's recordings (one folder per
// module call, tensors as torch.save files) into a qvl.recording that `qvl check` replays.
//
// Reading .pt files needs torch's unpickler, so the folders are read, checked and mapped on the Python side
// (recordings/record_reference.py import-module-io, in the pinned environment): module classes to qvl's replay
// classes, each call to its module path, unmappable calls listed with the reason, the framework's same-second
// folder collisions detected and the lost calls named. The recording is written there by the recorder's own
// writer. This side finds the pinned Python, runs it, checks the result opens as a recording, and turns the
// framework's vision_weights.pt (a dict of dicts) into qvl.weights, checked against config.json. Every output
// goes to a temporary first: on any error nothing is left.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "functional/config.h"

namespace qvl {

struct ImportOptions {
  std::string dir;          // the module_io_data folder
  std::string out;          // the qvl.recording to write
  std::string config;       // config.json (optional; required with weights_out)
  std::string weights;      // the framework's vision_weights.pt (optional)
  std::string weights_out;  // qvl.weights to write from `weights` (optional)
  std::string checkpoint;   // an HF checkpoint directory, to tell text module instances apart (optional)
};

// The pinned Python: $QVL_PYTHON, else the one the build was configured with (-DQVL_PYTHON). Error if neither
// names an executable file.
std::string pinned_python();

// Runs the import. Returns the exit code (0 ok; 2 when the Python side reported a corrupt input, already
// printed); throws std::runtime_error on other errors.
int run_import_module_io(const ImportOptions& opt);

// The framework's vision weights (canonical keys model.visual.*) against config.json: every vision tensor
// present with its shape, and nothing else. Throws one error naming `source` and listing the problems.
void check_vision_weights(const std::map<std::string, std::vector<int64_t>>& actual, const ModelConfig& cfg,
                          const std::string& source);

}  // namespace qvl
