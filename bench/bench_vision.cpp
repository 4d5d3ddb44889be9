// qvl_bench_vision: times the functional vision code on inputs written by bench/bench_vision.py, so that
// transformers and qvl run the same config, weights and inputs on the same CPU in one run.
//   qvl_bench_vision tower CKPT_DIR INPUTS.h5 REPS    pixel_values, grid_thw -> vision::transformer
//   qvl_bench_vision block CKPT_DIR INPUTS.h5 REPS    x, cu_seqlens, cos, sin -> vision::block (blocks.0)
// Prints one JSON line: {"median_ms": ..., "min_ms": ..., "threads": ...}. With REPS = serve it runs
// bench::serve (bench_timing.h) instead: one timed call per "run" line on stdin, for interleaved pairs.
#include <cstdio>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include "bench/bench_timing.h"
#include "converter/convert.h"
#include "functional/error.h"
#include "functional/vision.h"
#include "instrument/h5io.h"

int main(int argc, char** argv) {
  using namespace qvl;
  if (argc != 5) {
    std::fprintf(stderr, "usage: qvl_bench_vision tower|block CKPT_DIR INPUTS.h5 REPS\n");
    return 2;
  }
  try {
    const std::string mode = argv[1];
    ModelConfig cfg;
    Weights root = load_weights_any(argv[2], &cfg);
    h5::File f = h5::open_read(argv[3]);
    auto in = [&](const char* name) { return h5::read_tensor(f.id(), name, argv[3]); };
    const bool serve = std::string(argv[4]) == "serve";
    const int reps = serve ? 0 : std::stoi(argv[4]);
    std::function<void()> run;
    at::Tensor pv, grid, x, cu, cos, sin;
    const Weights visual = root.at("model.visual");
    if (mode == "tower") {
      pv = in("pixel_values");
      grid = in("grid_thw");
      run = [&] { vision::transformer(visual, pv, grid, cfg.vision); };
    } else if (mode == "block") {
      x = in("x");
      cu = in("cu_seqlens");
      cos = in("cos");
      sin = in("sin");
      const Weights blk = visual.at("blocks.0");
      run = [&, blk] { vision::block(blk, x, cu, {cos, sin}, cfg.vision); };  // blk by value: it goes out of scope
    } else {
      throw std::runtime_error("mode must be tower or block, got '" + mode + "'");
    }
    c10::InferenceMode guard;  // like torch.no_grad in the Python timing
    if (serve) return bench::serve({{"run", run}});
    const bench::Timing t = bench::time_ms(reps, 3, run);
    std::printf("{\"median_ms\": %.4f, \"min_ms\": %.4f, \"threads\": %d}\n", t.median_ms, t.min_ms,
                at::get_num_threads());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qvl_bench_vision: error: %s\n", error_message(e).c_str());
    return 2;
  }
  return 0;
}
