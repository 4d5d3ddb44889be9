// qvl_bench_text: times the functional text side on inputs written by bench/bench_text.py, so that
// transformers and qvl run the same config, weights and inputs on the same CPU in one run.
//   qvl_bench_text generate CKPT_DIR RECORDING N REPS   model::generate of N tokens from the recording's inputs
//   qvl_bench_text layer CKPT_DIR INPUTS.h5 REPS         one decoder layer (model.language_model.layers.0):
//                                                        prefill on x, then one decode token on a KV cache
// Prints one JSON line of medians in ms.
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_timing.h"
#include "converter/convert.h"
#include "functional/text.h"
#include "instrument/h5io.h"
#include "instrument/replay.h"

namespace {
double median_ms(int reps, const std::function<void()>& run) { return qvl::bench::time_ms(reps, 2, run).median_ms; }
}  // namespace

int main(int argc, char** argv) {
  using namespace qvl;
  try {
    if (argc < 2) throw std::runtime_error("usage: qvl_bench_text generate|layer ...");
    c10::InferenceMode guard;
    const std::string mode = argv[1];
    if (mode == "generate" && argc == 6) {
      ModelConfig cfg;
      Weights root = load_weights_any(argv[2], &cfg);
      Recording rec = Recording::open(argv[3]);
      cfg = recording_config(rec, cfg);
      model::Inputs in = recorded_model_inputs(rec);
      model::GenerateOptions opt;
      opt.max_new_tokens = std::stoll(argv[4]);  // no eos: always N tokens, as the Python side
      const double ms = median_ms(std::stoi(argv[5]), [&] { model::generate(root, in, cfg, opt); });
      std::printf("{\"median_ms\": %.4f, \"threads\": %d}\n", ms, at::get_num_threads());
    } else if (mode == "layer" && argc == 5) {
      ModelConfig cfg;
      Weights root = load_weights_any(argv[2], &cfg);
      const Weights layer = root.at("model.language_model.layers.0");
      h5::File f = h5::open_read(argv[3]);
      auto in = [&](const char* name) { return h5::read_tensor(f.id(), name, argv[3]); };
      const at::Tensor x = in("x"), mask = in("mask"), cos = in("cos"), sin = in("sin");
      const at::Tensor x1 = in("x1"), mask1 = in("mask1"), cos1 = in("cos1"), sin1 = in("sin1");
      const int reps = std::stoi(argv[4]);
      const double prefill = median_ms(reps, [&] { text::decoder_layer(layer, x, mask, {cos, sin}, cfg.text); });
      text::KVCache base;
      text::decoder_layer(layer, x, mask, {cos, sin}, cfg.text, nullptr, &base, 0);  // the 512-token cache
      const double decode = median_ms(reps, [&] {
        text::KVCache cache = base;  // shallow: decode appends with torch.cat, the base is not modified
        text::decoder_layer(layer, x1, mask1, {cos1, sin1}, cfg.text, nullptr, &cache, 0);
      });
      std::printf("{\"prefill_ms\": %.4f, \"decode_ms\": %.4f, \"threads\": %d}\n", prefill, decode, at::get_num_threads());
    } else {
      throw std::runtime_error("usage: qvl_bench_text generate CKPT REC N REPS | layer CKPT INPUTS.h5 REPS");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qvl_bench_text: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
