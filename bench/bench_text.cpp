// qvl_bench_text: times the functional text side on inputs written by bench/bench_text.py, so that
// transformers and qvl run the same config, weights and inputs on the same CPU in one run.
//   qvl_bench_text generate CKPT_DIR RECORDING N REPS   model::generate of N tokens from the recording's inputs
//   qvl_bench_text layer CKPT_DIR INPUTS.h5 REPS         one decoder layer (model.language_model.layers.0):
//                                                        prefill on x, then one decode token on a KV cache
// Each runs the fast path (TextConfig::fast, and fast_packed where MKL's packed GEMM is available, on
// text::fuse_projections weights; the fuse is done once before timing, as transformers' load is not timed
// either) and then the plain reference path, and prints one JSON line of medians ("<name>_ms") and minimums
// ("<name>_min_ms") in ms, the plain path's names with a "plain_" prefix, and "path": which fast path ran.
// With REPS = serve, bench::serve (bench_timing.h) instead times one call per request, for interleaved pairs:
// generate serves "fast" and "plain"; layer serves "prefill", "decode", "plain_prefill" and "plain_decode".
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_timing.h"
#include "converter/convert.h"
#include "functional/error.h"
#include "functional/model.h"
#include "functional/packed_gemm.h"
#include "functional/text.h"
#include "instrument/h5io.h"
#include "instrument/replay.h"

namespace {
qvl::bench::Timing timing(int reps, const std::function<void()>& run) { return qvl::bench::time_ms(reps, 2, run); }
// "name_ms": median, "name_min_ms": minimum
std::string json(const std::string& name, const qvl::bench::Timing& t) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "\"%s_ms\": %.4f, \"%s_min_ms\": %.4f, ", name.c_str(), t.median_ms, name.c_str(), t.min_ms);
  return buf;
}
}  // namespace

int main(int argc, char** argv) {
  using namespace qvl;
  const char* usage =
      "usage: qvl_bench_text generate CKPT_DIR RECORDING N REPS | layer CKPT_DIR INPUTS.h5 REPS\n"
      "Times qvl's text fast path and plain path (prints one JSON line); driven by bench/bench_text.py.\n";
  if (argc == 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::printf("%s", usage);
    return 0;
  }
  try {
    if (argc < 2) throw std::runtime_error(usage);
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
      const bool serve = std::string(argv[5]) == "serve";
      const int reps = serve ? 0 : std::stoi(argv[5]);
      const bool pack = packed::available();
      const Weights fused = text::fuse_projections(root, pack);
      ModelConfig fast = cfg;
      fast.text.fast = true;
      fast.text.fast_packed = pack;
      if (serve) {
        std::fprintf(stderr, "qvl_bench_text: path %s, %d threads\n", pack ? "fast+packed" : "fast", at::get_num_threads());
        return bench::serve({{"fast", [&] { model::generate(fused, in, fast, opt); }},
                             {"plain", [&] { model::generate(root, in, cfg, opt); }}},
                            2);
      }
      const bench::Timing ms = timing(reps, [&] { model::generate(fused, in, fast, opt); });
      const bench::Timing plain = timing(reps, [&] { model::generate(root, in, cfg, opt); });
      std::printf("{\"path\": \"%s\", %s%s\"threads\": %d}\n", pack ? "fast+packed" : "fast", json("generate", ms).c_str(),
                  json("plain_generate", plain).c_str(), at::get_num_threads());
    } else if (mode == "layer" && argc == 5) {
      ModelConfig cfg;
      Weights root = load_weights_any(argv[2], &cfg);
      const Weights layer = root.at("model.language_model.layers.0");
      h5::File f = h5::open_read(argv[3]);
      auto in = [&](const char* name) { return h5::read_tensor(f.id(), name, argv[3]); };
      const at::Tensor x = in("x"), mask = in("mask"), cos = in("cos"), sin = in("sin");
      const at::Tensor x1 = in("x1"), mask1 = in("mask1"), cos1 = in("cos1"), sin1 = in("sin1");
      const bool serve = std::string(argv[4]) == "serve";
      const int reps = serve ? 0 : std::stoi(argv[4]);
      // One prefill, and one decode token on a copy of the 512-token cache `base` (shallow: decode appends with
      // torch.cat, the base is not modified).
      auto prefill_fn = [&](const Weights& lw, const TextConfig& tc) {
        return [&, lw, tc] { text::decoder_layer(lw, x, mask, {cos, sin}, tc); };
      };
      auto decode_fn = [&](const Weights& lw, const TextConfig& tc, const text::KVCache& base) {
        return [&, lw, tc, base] {
          text::KVCache cache = base;
          text::decoder_layer(lw, x1, mask1, {cos1, sin1}, tc, nullptr, &cache, 0);
        };
      };
      auto cache_of = [&](const Weights& lw, const TextConfig& tc) {
        text::KVCache base;
        text::decoder_layer(lw, x, mask, {cos, sin}, tc, nullptr, &base, 0);
        return base;
      };
      if (serve) {
        const bool pack = packed::available();
        TextConfig fast = cfg.text;
        fast.fast = true;
        fast.fast_packed = pack;
        const Weights fused = text::fuse_projections(layer, pack);
        std::fprintf(stderr, "qvl_bench_text: path %s, %d threads\n", pack ? "fast+packed" : "fast", at::get_num_threads());
        return bench::serve({{"prefill", prefill_fn(fused, fast)},
                             {"decode", decode_fn(fused, fast, cache_of(fused, fast))},
                             {"plain_prefill", prefill_fn(layer, cfg.text)},
                             {"plain_decode", decode_fn(layer, cfg.text, cache_of(layer, cfg.text))}},
                            2);
      }
      // prefill and decode timings of one layer's weights and config
      auto time_layer = [&](const Weights& lw, const TextConfig& tc) {
        const bench::Timing prefill = timing(reps, [&] { text::decoder_layer(lw, x, mask, {cos, sin}, tc); });
        text::KVCache base;
        text::decoder_layer(lw, x, mask, {cos, sin}, tc, nullptr, &base, 0);  // the 512-token cache
        const bench::Timing decode = timing(reps, [&] {
          text::KVCache cache = base;  // shallow: decode appends with torch.cat, the base is not modified
          text::decoder_layer(lw, x1, mask1, {cos1, sin1}, tc, nullptr, &cache, 0);
        });
        return std::make_pair(prefill, decode);
      };
      const bool pack = packed::available();
      TextConfig fast = cfg.text;
      fast.fast = true;
      fast.fast_packed = pack;
      const auto [prefill, decode] = time_layer(text::fuse_projections(layer, pack), fast);
      const auto [plain_prefill, plain_decode] = time_layer(layer, cfg.text);
      std::printf("{\"path\": \"%s\", %s%s%s%s\"threads\": %d}\n", pack ? "fast+packed" : "fast",
                  json("prefill", prefill).c_str(), json("decode", decode).c_str(), json("plain_prefill", plain_prefill).c_str(),
                  json("plain_decode", plain_decode).c_str(), at::get_num_threads());
    } else {
      throw std::runtime_error("usage: qvl_bench_text generate CKPT REC N REPS | layer CKPT INPUTS.h5 REPS");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qvl_bench_text: error: %s\n", error_message(e).c_str());
    return 2;
  }
  return 0;
}
