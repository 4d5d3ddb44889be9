// qvl — the command-line tool.
//   qvl check   [WEIGHTS] [RECORDING]   replay every recorded call that has a function; one row per call
//   qvl convert HF_DIR OUT.h5           Hugging Face checkpoint -> nested qvl.weights HDF5
//   qvl inspect FILE                    list a weights file, a recording or a safetensors file
// Errors print one line naming the file, key, expected and actual value, and exit non-zero.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "converter/convert.h"
#include "converter/safetensors.h"
#include "functional/vision.h"
#include "instrument/compare.h"
#include "instrument/config_json.h"
#include "instrument/h5io.h"
#include "instrument/recording.h"
#include "instrument/replay.h"

#ifndef QVL_SOURCE_DIR
#define QVL_SOURCE_DIR "."
#endif

namespace {
namespace fs = std::filesystem;
using namespace qvl;

const std::string kDefaultWeights = std::string(QVL_SOURCE_DIR) + "/weights/tiny.h5";
const std::string kDefaultRecording = std::string(QVL_SOURCE_DIR) + "/recordings/tiny_fp32.h5";

std::string trunc(const std::string& s, size_t n) { return s.size() <= n ? s : "..." + s.substr(s.size() - n + 3); }

// --- check -----------------------------------------------------------------------------------------
int cmd_check(const std::string& weights_path, const std::string& recording_path, bool verbose,
              const std::vector<std::string>& only) {
  ModelConfig wcfg;
  Recording rec = Recording::open(recording_path);
  // What transformers ran with (overrides included), weights cast as from_pretrained(dtype=...) did.
  ReplayModel rm = replay_model(load_weights_any(weights_path, &wcfg), wcfg, rec);
  const Weights& root = rm.weights;
  const ModelConfig& cfg = rm.config;
  const std::string dtype = rec.attr("dtype");
  const bool bf16 = dtype == "bfloat16";
  Registry reg = Registry::defaults();
  const std::string cast_note =
      rm.cast ? "  weights:   cast to " + dtype + " as from_pretrained(dtype=" + dtype + ") does\n" : "";

  std::printf("qvl check\n  weights:   %s\n  recording: %s\n  producer:  %s, torch %s, %s, %s attention\n",
              weights_path.c_str(), recording_path.c_str(), rec.attr("producer").c_str(),
              rec.has_attr("torch_version") ? rec.attr("torch_version").c_str() : "?", dtype.c_str(),
              rec.has_attr("attn_implementation") ? rec.attr("attn_implementation").c_str() : "?");
  std::printf("%s", cast_note.c_str());
  const Threshold& th = threshold_for(dtype, "*");
  if (bf16) {
    std::printf("  rule:      error vs HF's float32 module <= %.1fx HF's own bf16 error (RMSE and max|err|)\n",
                th.max_err_ratio);
  } else {
    std::printf("  rule:      pearson >= %.5f, max_rel <= %.0e, min_row_cos >= %.5f; integers exact\n",
                th.min_pearson, th.max_rel, th.min_row_cos);
  }
  std::printf("\n%-6s %-44s %-34s %4s  %-7s %12s %10s %12s %10s %s\n", "call", "module_path", "class", "idx", "verdict",
              "pearson", "max_rel", "min_row_cos", "max_abs", bf16 ? "err/HF" : "worst@");

  int passed = 0, failed = 0, missing = 0;
  std::map<std::string, int> missing_classes;
  std::vector<std::string> failures;
  for (size_t i = 0; i < rec.calls().size(); ++i) {
    const CallHeader& h = rec.calls()[i];
    if (!only.empty() && std::find(only.begin(), only.end(), h.module_class) == only.end()) continue;
    CallResult r = replay_call(rec, i, root, cfg, reg);
    std::printf("%-6s %-44s %-34s %4lld  ", h.group.c_str(), trunc(h.module_path, 44).c_str(),
                trunc(h.module_class, 34).c_str(), static_cast<long long>(h.call_index));
    if (r.status == CallResult::Status::NoFunction) {
      ++missing;
      ++missing_classes[h.module_class];
      std::printf("%s\n", "-  (no function yet)");
      continue;
    }
    if (r.status == CallResult::Status::Error) {
      ++failed;
      failures.push_back(h.group + " " + h.module_path + ": " + r.error);
      std::printf("ERROR   %s\n", r.error.c_str());
      continue;
    }
    // The row shows the worst output tensor (lowest pearson); --verbose lists them all.
    const TensorCheck* worst = &r.tensors.front();
    for (const auto& t : r.tensors)
      if (!t.verdict.pass || t.vs_ref.pearson < worst->vs_ref.pearson) worst = &t;
    auto print_metrics = [&](const TensorCheck& t) {
      const Metrics& m = t.vs_ref;
      if (!m.shape_ok) {
        std::printf("%s", m.shape_msg.c_str());
      } else if (m.integer) {
        std::printf("%12s %10s %12s %10s exact (%lld/%lld equal)", "-", "-", "-", "-",
                    static_cast<long long>(m.numel - m.mismatches), static_cast<long long>(m.numel));
      } else {
        std::printf("%12.9f %10.2e %12.9f %10.2e ", m.pearson, m.max_rel, m.min_row_cos, m.max_abs);
        if (t.bf16_rule) {
          const double ra = t.hf_vs_fp32.rmse > 0 ? t.ours_vs_fp32.rmse / t.hf_vs_fp32.rmse : 0.0;
          const double rb = t.hf_vs_fp32.max_abs > 0 ? t.ours_vs_fp32.max_abs / t.hf_vs_fp32.max_abs : 0.0;
          std::printf("%.2f", std::max(ra, rb));
        } else {
          std::printf("%s", format_index(m.worst_index).c_str());
        }
      }
    };
    const bool ok = r.status == CallResult::Status::Pass;
    (ok ? passed : failed)++;
    std::printf("%-7s ", ok ? "PASS" : "FAIL");
    print_metrics(*worst);
    std::printf("\n");
    if (verbose || !ok) {
      for (const auto& t : r.tensors) {
        std::printf("%-6s   %-*s ", "", 92, ("output " + t.name).c_str());
        std::printf("%-7s ", t.verdict.pass ? "ok" : "FAIL");
        print_metrics(t);
        std::printf("\n");
        if (!t.verdict.pass) std::printf("%-6s     -> %s\n", "", t.verdict.why.c_str());
      }
    }
    if (!ok) failures.push_back(h.group + " " + h.module_path + ": " + r.error);
  }

  std::printf("\nsummary: %d passed, %d failed, %d no function yet", passed, failed, missing);
  if (!missing_classes.empty()) {
    std::printf(" (");
    bool first = true;
    for (const auto& [c, n] : missing_classes) {
      std::printf("%s%s x%d", first ? "" : ", ", c.c_str(), n);
      first = false;
    }
    std::printf(")");
  }
  std::printf("\n");
  for (const auto& f : failures) std::printf("FAILED %s\n", f.c_str());
  if (passed == 0 && failed == 0) {
    std::printf("qvl check: no call of an implemented module was found in the recording; nothing was checked\n");
    return 1;
  }
  return failed ? 1 : 0;
}

// --- run-vision: the chained run of the functional vision tower, recorded from C++ ----------------------
int cmd_run(bool vision_only, const std::string& weights_path, const std::string& ref_path, const std::string& out_path,
            const std::vector<std::string>& scales) {
  ModelConfig wcfg;
  Recording ref = Recording::open(ref_path);
  ReplayModel rm = replay_model(load_weights_any(weights_path, &wcfg), wcfg, ref);
  Weights& root = rm.weights;
  const ModelConfig& cfg = rm.config;
  // Researcher knob: scale one weight tensor to see where and how a change propagates.
  for (const auto& s : scales) {
    const auto eq = s.find('=');
    if (eq == std::string::npos) throw std::runtime_error("--scale-weight expects PATH=FACTOR, got '" + s + "'");
    const std::string path = s.substr(0, eq);
    const double factor = std::stod(s.substr(eq + 1));
    root.set(path, root.tensor(path) * factor);
    std::printf("  scaled %s by %g\n", path.c_str(), factor);
  }
  const size_t n = vision_only ? record_vision_chained(root, cfg, ref, out_path) : record_model_chained(root, cfg, ref, out_path);
  std::printf("recorded %zu calls of the functional %s to %s\n", n, vision_only ? "vision tower" : "model", out_path.c_str());
  return 0;
}

// --- compare: two recordings, first divergence and error growth -------------------------------------------
int cmd_compare(const std::string& ref_path, const std::string& ours_path, bool all) {
  Recording ref = Recording::open(ref_path), ours = Recording::open(ours_path);
  CompareReport rep = compare_recordings(ref, ours);
  std::printf("qvl compare\n  reference: %s (%s)\n  ours:      %s (%s)\n  dtype:     %s\n\n", ref_path.c_str(),
              ref.attr("producer").c_str(), ours_path.c_str(), ours.attr("producer").c_str(), ref.attr("dtype").c_str());
  std::printf("%-6s %-46s %-34s %-7s %12s %10s\n", "call", "module_path", "class", "verdict", "pearson", "max_rel");
  for (size_t i = 0; i < rep.rows.size(); ++i) {
    const CompareRow& r = rep.rows[i];
    if (!r.present && !all) continue;
    std::printf("%-6s %-46s %-34s ", r.ref.group.c_str(), trunc(r.ref.module_path, 46).c_str(),
                trunc(r.ref.module_class, 34).c_str());
    if (!r.present) {
      std::printf("-       (not in ours)\n");
      continue;
    }
    std::printf("%-7s %12.9f %10.2e%s\n", r.pass ? "PASS" : "FAIL", r.min_pearson, r.max_rel,
                static_cast<int>(i) == rep.first_divergent ? "   <-- first divergence" : "");
  }
  // Error growth over the stacked blocks (vision blocks, decoder layers).
  std::printf("\nerror growth by block (output max_rel vs the reference):\n");
  for (const auto& r : rep.rows)
    if (r.present && (r.ref.module_class == "Qwen2_5_VLVisionBlock" || r.ref.module_class == "Qwen2_5_VLDecoderLayer"))
      std::printf("  %-40s %10.2e  %s\n", r.ref.module_path.c_str(), r.max_rel, r.pass ? "PASS" : "FAIL");
  std::printf("\nsummary: %d compared, %d failed, %d reference calls not in ours\n", rep.compared, rep.failed, rep.missing);
  if (rep.first_divergent >= 0) {
    const CompareRow& r = rep.rows[rep.first_divergent];
    std::printf("first divergent module: %s (%s, call %s): %s\n", r.ref.module_path.c_str(), r.ref.module_class.c_str(),
                r.ref.group.c_str(), r.why.c_str());
  }
  if (rep.compared == 0) {
    std::printf("qvl compare: no call of the reference is in ours; nothing was compared\n");
    return 1;
  }
  return rep.failed ? 1 : 0;
}

// --- generate: greedy decoding with a KV cache, tokens printed as they come ---------------------------------
int cmd_generate(const std::string& weights_path, const std::string& inputs_path, int64_t max_new, std::vector<int64_t> eos) {
  ModelConfig wcfg;
  Recording rec = Recording::open(inputs_path);
  ReplayModel rm = replay_model(load_weights_any(weights_path, &wcfg), wcfg, rec);
  const Weights& root = rm.weights;
  const ModelConfig& cfg = rm.config;
  const std::string dtype = rec.attr("dtype");
  model::Inputs in = recorded_model_inputs(rec);
  model::GenerateOptions opt;
  opt.max_new_tokens = max_new;
  // eos: --eos, else the one transformers used when it recorded (scenario.generation), else none.
  nlohmann::json gen;
  if (rec.has_attr("scenario")) {
    auto sc = nlohmann::json::parse(rec.attr("scenario"));
    if (sc.contains("generation") && !sc["generation"].is_null()) gen = sc["generation"];
  }
  if (eos.empty() && !gen.is_null()) eos = gen["eos_token_id"].get<std::vector<int64_t>>();
  opt.eos_token_ids = eos;
  if (!gen.is_null() && gen["pad_token_id"].is_number()) opt.pad_token_id = gen["pad_token_id"].get<int64_t>();
  std::printf("prompt: %lld tokens x %lld, %s; generating up to %lld tokens (eos:", static_cast<long long>(in.input_ids.size(1)),
              static_cast<long long>(in.input_ids.size(0)), dtype.c_str(), static_cast<long long>(max_new));
  for (auto e : eos) std::printf(" %lld", static_cast<long long>(e));
  std::printf(")\n");
  at::Tensor out = model::generate(root, in, cfg, opt, [](int64_t step, const at::Tensor& tok) {
    std::printf("%s", step == 0 ? "tokens:" : "");
    for (int64_t b = 0; b < tok.size(0); ++b) std::printf("%s%lld", b ? "/" : " ", static_cast<long long>(tok[b].item<int64_t>()));
    std::fflush(stdout);
  });
  std::printf("\n");
  if (!gen.is_null()) {
    auto want = gen["new_tokens"].get<std::vector<std::vector<int64_t>>>();
    bool same = static_cast<int64_t>(want.size()) == out.size(0);
    for (size_t b = 0; same && b < want.size(); ++b) {
      same = static_cast<int64_t>(want[b].size()) == out.size(1);
      for (size_t t = 0; same && t < want[b].size(); ++t) same = want[b][t] == out[b][t].item<int64_t>();
    }
    std::printf("transformers generate recorded %zu x %zu tokens: %s\n", want.size(), want.empty() ? 0 : want[0].size(),
                same ? "IDENTICAL" : "DIFFERENT");
    return same ? 0 : 1;
  }
  return 0;
}

// --- convert ---------------------------------------------------------------------------------------
int cmd_convert(const std::string& dir, const std::string& out, int gzip) {
  const auto t0 = std::chrono::steady_clock::now();
  double last_print = -1.0;
  auto progress = [&](uint64_t done, uint64_t total) {
    const int pct = total ? static_cast<int>(100.0 * done / total) : 100;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (done < total && s - last_print < 0.5) return;  // at most two updates a second, and the last one
    last_print = s;
    const double rate = s > 0 ? done / s : 0;
    const double eta = rate > 0 ? (total - done) / rate : 0;
    std::fprintf(stderr, "\r[convert] %3d%%  %8.1f MB  %7.1f MB/s  ETA %5.1fs", pct, done / 1e6, rate / 1e6, eta);
    std::fflush(stderr);
  };
  ConvertReport rep = convert_checkpoint(dir, out, gzip, progress);
  std::fprintf(stderr, "\n");
  std::printf("converted %s -> %s: %lld tensors, %.1f MB, key layout '%s'\n", dir.c_str(), out.c_str(),
              static_cast<long long>(rep.tensors), rep.bytes / 1e6, rep.key_layout.c_str());
  for (const auto& n : rep.notes) std::printf("  note: %s\n", n.c_str());
  return 0;
}

// --- inspect ---------------------------------------------------------------------------------------
int cmd_inspect(const std::string& path) {
  if (fs::path(path).extension() == ".safetensors") {
    SafetensorsFile f = SafetensorsFile::open(path);
    std::printf("%s: safetensors, %zu tensors\n", path.c_str(), f.entries().size());
    for (const auto& [k, v] : f.metadata()) std::printf("  __metadata__ %s = %s\n", k.c_str(), v.c_str());
    for (const auto& e : f.entries())
      std::printf("  %-60s %-5s %-22s %12llu bytes\n", e.name.c_str(), e.dtype.c_str(), shape_str(e.shape).c_str(),
                  static_cast<unsigned long long>(e.end - e.begin));
    return 0;
  }
  if (fs::is_directory(path)) {
    Checkpoint ck = find_checkpoint(path);
    for (const auto& s : ck.shards) cmd_inspect(s);
    return 0;
  }
  h5::File f = h5::open_read(path);
  const std::string format = h5::has_attr(f.id(), "format") ? h5::attr_str(f.id(), "format", path) : "";
  f.h.reset();
  if (format == "qvl.recording") {
    Recording rec = Recording::open(path);
    std::printf("%s: qvl.recording, %zu calls, producer %s, dtype %s\n", path.c_str(), rec.calls().size(),
                rec.attr("producer").c_str(), rec.attr("dtype").c_str());
    for (const auto& h : rec.calls())
      std::printf("  %s %-50s %-36s #%lld parent %lld %s\n", h.group.c_str(), h.module_path.c_str(),
                  h.module_class.c_str(), static_cast<long long>(h.call_index), static_cast<long long>(h.parent),
                  h.settings.c_str());
    return 0;
  }
  if (format == "qvl.weights") {
    h5::WeightsFile wf = h5::read_weights(path);
    uint64_t total = 0;
    auto leaves = wf.weights.flatten();
    for (const auto& [k, t] : leaves) total += t.nbytes();
    std::printf("%s: qvl.weights, %zu tensors, %.2f MB, key layout %s\n", path.c_str(), leaves.size(), total / 1e6,
                wf.attrs.count("key_layout") ? wf.attrs.at("key_layout").c_str() : "?");
    for (const auto& [k, t] : leaves)
      std::printf("  %-60s %-9s %-22s %12lld bytes\n", k.c_str(), dtype_name(t.scalar_type()).c_str(),
                  shape_str(t.sizes()).c_str(), static_cast<long long>(t.nbytes()));
    return 0;
  }
  throw std::runtime_error("'" + path + "': HDF5 file of unknown format '" + format +
                           "' (expected qvl.weights or qvl.recording)");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qvl: Qwen2.5-VL functional reference and golden-test harness"};
  app.require_subcommand(1);

  std::string weights = kDefaultWeights, recording = kDefaultRecording;
  bool verbose = false;
  std::vector<std::string> only;
  auto* check = app.add_subcommand("check", "Replay every recorded call against the functional implementation");
  check->add_option("weights", weights, "qvl.weights .h5 file or HF checkpoint directory")->capture_default_str();
  check->add_option("recording", recording, "qvl.recording .h5 file")->capture_default_str();
  check->add_flag("-v,--verbose", verbose, "One line per output tensor");
  check->add_option("--only", only, "Check only these module classes / function names");

  std::string hf_dir, out;
  int gzip = 0;
  auto* convert = app.add_subcommand("convert", "Convert a Hugging Face checkpoint to a nested qvl.weights HDF5 file");
  convert->add_option("hf_dir", hf_dir, "Checkpoint directory (config.json + *.safetensors)")->required();
  convert->add_option("out", out, "Output .h5 (written to a temporary file, renamed when complete)")->required();
  convert->add_option("--gzip", gzip, "gzip level 0-9 (0: none)")->check(CLI::Range(0, 9));

  std::string ref_path, ours_path, run_out;
  std::vector<std::string> scales;
  std::string run_weights = kDefaultWeights;
  auto add_run = [&](const char* name, const char* help) {
    auto* cmd = app.add_subcommand(name, help);
    cmd->add_option("reference", ref_path, "Reference recording (transformers) giving the inputs")->required();
    cmd->add_option("--weights", run_weights, "qvl.weights .h5 or HF checkpoint directory")->capture_default_str();
    cmd->add_option("-o,--out", run_out, "Output recording (qvl.recording schema)")->required();
    cmd->add_option("--scale-weight", scales, "PATH=FACTOR: scale one weight tensor (see where a change diverges)");
    return cmd;
  };
  auto* run_vision = add_run("run-vision", "Chained run: the functional vision tower from a recording's pixel_values, recorded from C++");
  auto* run_model = add_run("run", "Chained run: the whole functional model from a recording's token ids and pixel values, recorded from C++");
  bool compare_all = false;
  auto* compare_cmd = app.add_subcommand("compare", "Compare two recordings call by call; report the first divergent module");
  compare_cmd->add_option("reference", ref_path, "Reference recording")->required();
  compare_cmd->add_option("ours", ours_path, "Recording to judge (e.g. from qvl run-vision)")->required();
  compare_cmd->add_flag("--all", compare_all, "Also list reference calls that ours does not have");

  std::string gen_weights = kDefaultWeights, gen_inputs = kDefaultRecording;
  int64_t gen_max = 16;
  std::vector<int64_t> gen_eos;
  auto* gen_cmd = app.add_subcommand("generate", "Greedy generation with a KV cache from a recording's inputs; prints tokens as they come");
  gen_cmd->add_option("--weights", gen_weights, "qvl.weights .h5 or HF checkpoint directory")->capture_default_str();
  gen_cmd->add_option("--inputs", gen_inputs, "Recording whose top-level call gives input_ids, pixel values and grids")->capture_default_str();
  gen_cmd->add_option("-n,--max-new-tokens", gen_max, "Tokens to generate")->capture_default_str();
  gen_cmd->add_option("--eos", gen_eos, "End-of-sequence ids (default: those transformers used when recording)");

  std::string inspect_path;
  auto* inspect = app.add_subcommand("inspect", "List a weights file, a recording, a safetensors file or a checkpoint");
  inspect->add_option("file", inspect_path, "File or checkpoint directory")->required();

  CLI11_PARSE(app, argc, argv);
  const std::string name = app.get_subcommands().front()->get_name();
  try {
    if (check->parsed()) return cmd_check(weights, recording, verbose, only);
    if (convert->parsed()) return cmd_convert(hf_dir, out, gzip);
    if (inspect->parsed()) return cmd_inspect(inspect_path);
    if (run_vision->parsed()) return cmd_run(true, run_weights, ref_path, run_out, scales);
    if (run_model->parsed()) return cmd_run(false, run_weights, ref_path, run_out, scales);
    if (compare_cmd->parsed()) return cmd_compare(ref_path, ours_path, compare_all);
    if (gen_cmd->parsed()) return cmd_generate(gen_weights, gen_inputs, gen_max, gen_eos);
  } catch (const c10::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "qvl %s: error: %s\n", name.c_str(), e.what_without_backtrace());
    return 2;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "qvl %s: error: %s\n", name.c_str(), e.what());
    return 2;
  }
  return 0;
}
