// qvl — the command-line tool. Every command takes --help.
//   qvl check   [WEIGHTS] [RECORDING]   replay every recorded call that has a function; one row per call
//                                       (--stream: one module's weights at a time; --device cuda; --html)
//   qvl run     REF.h5 -o OURS.h5       the chained full-model run, recorded from C++ (--stream, --scale-weight)
//   qvl run-vision REF.h5 -o OURS.h5    the chained vision tower alone
//   qvl compare REF.h5 OURS.h5          call by call; the first divergent module (--html)
//   qvl generate --weights W --inputs REC.h5   greedy generation with a KV cache (--fast, -n)
//   qvl convert HF_DIR OUT.h5           Hugging Face checkpoint -> nested qvl.weights HDF5 (--dtype, --gzip)
//   qvl convert --to-safetensors IN.h5 OUT_DIR   and back (sharded, index.json, hub key layout)
//   qvl inspect PATH                    list a weights file, a recording, a safetensors file or a checkpoint
//   qvl import module_io_data DIR -o REC.h5   the conversion framework's recordings -> qvl.recording
//   qvl rope-check PATH...              the RoPE variants against the official code's golden files
//   qvl vit train|eval|sweep            ViT position-encoding experiments (vit/commands.h)
// check, run, run-vision and generate take --rope / --rope-vision (RopeOptions). convert and inspect live in
// tools/convert_commands.h.
// Errors print one line naming the file, key, expected and actual value, and exit non-zero.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <malloc.h>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "functional/error.h"
#include "tools/convert_commands.h"
#include "converter/convert.h"
#include "converter/import_module_io.h"
#include "converter/safetensors.h"
#include "functional/model.h"
#include "functional/packed_gemm.h"
#include "functional/cuda/fused.h"
#include "functional/vision.h"
#include "instrument/compare.h"
#include "instrument/config_json.h"
#include "instrument/h5io.h"
#include "instrument/recording.h"
#include "instrument/replay.h"
#include "instrument/report.h"
#include "instrument/rope_check.h"
#include "instrument/rope_spec.h"
#include "functional/rope/vision_plug.h"
#include "vit/commands.h"

#ifndef QVL_SOURCE_DIR
#define QVL_SOURCE_DIR "."
#endif

namespace {
namespace fs = std::filesystem;
using namespace qvl;

const std::string kDefaultWeights = std::string(QVL_SOURCE_DIR) + "/weights/tiny.h5";
const std::string kDefaultRecording = std::string(QVL_SOURCE_DIR) + "/recordings/tiny_fp32.h5";

std::string trunc(const std::string& s, size_t n) { return s.size() <= n ? s : "..." + s.substr(s.size() - n + 3); }

// --- --rope: the RoPE plug-in (functional/rope), same options on check, run and generate ---------------
struct RopeOptions {
  std::string text = "mrope", vision = "qwen";

  void add_to(CLI::App* cmd) {
    cmd->add_option("--rope", text,
                    "Text RoPE: mrope (default), circle (released Circle-RoPE config, AGE strategy_4), circle:{JSON} "
                    "(a circle_rope block; README)")
        ->capture_default_str();
    cmd->add_option("--rope-vision", vision,
                    "Vision 2-D rotary: qwen (default), axial[:theta=100], mixed[:theta=10,seed=0], "
                    "spiral[:rotate=2,mode=exact|clamp,...], block2[:theta=100] (README)")
        ->capture_default_str();
  }
  void apply(ModelConfig& cfg) const {
    cfg.text_rope = parse_text_rope(text);
    if (cfg.text_rope.kind != rope::TextRope::Kind::MRope) std::fprintf(stderr, "rope (text): %s\n", text.c_str());
    if (vision != "qwen") {
      cfg.vision_rope = std::make_shared<const rope::VisionRope>(rope::parse_vision_rope(vision));
      std::fprintf(stderr, "rope (vision): %s\n", cfg.vision_rope->name.c_str());
    }
  }
};

// --- check: which modules a recording holds (a recording made with record --modules holds a selection) ---
// "3,4,5,7" -> "3-5,7"
std::string index_ranges(const std::vector<int64_t>& v) {
  std::string out;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    out += (out.empty() ? "" : ",") + std::to_string(v[i]) + (j > i ? "-" + std::to_string(v[j]) : "");
    i = j + 1;
  }
  return out;
}

// The model's modules (config): each vision block and decoder layer, and the modules around them.
struct ModuleCoverage {
  // compressed: "model.visual.blocks.{0,7,31}". partly: only calls inside the module (e.g. its MLP) are held.
  std::vector<std::string> holds, partly, lacks;
  size_t n_holds = 0, n_partly = 0, n_lacks = 0;
};
ModuleCoverage module_coverage(const Recording& rec, const ModelConfig& cfg) {
  std::set<std::string> paths;
  for (const auto& h : rec.calls()) paths.insert(h.module_path);
  // 2: a call of the module itself; 1: only calls inside it; 0: none
  auto held = [&](const std::string& m) {
    if (paths.count(m)) return 2;
    auto it = paths.lower_bound(m + ".");
    return it != paths.end() && it->rfind(m + ".", 0) == 0 ? 1 : 0;
  };
  ModuleCoverage c;
  auto add = [&](int h, const std::string& text, size_t n) {
    (h == 2 ? c.holds : h == 1 ? c.partly : c.lacks).push_back(text);
    (h == 2 ? c.n_holds : h == 1 ? c.n_partly : c.n_lacks) += n;
  };
  auto single = [&](const std::string& m) { add(held(m), m, 1); };
  auto stack = [&](const std::string& base, int64_t n) {
    std::vector<int64_t> by[3];
    for (int64_t i = 0; i < n; ++i) by[held(base + "." + std::to_string(i))].push_back(i);
    for (int h : {2, 1, 0})
      if (!by[h].empty()) add(h, base + ".{" + index_ranges(by[h]) + "}", by[h].size());
  };
  single("model.visual.patch_embed");
  single("model.visual.rotary_pos_emb");
  stack("model.visual.blocks", cfg.vision.depth);
  single("model.visual.merger");
  single("model.language_model.embed_tokens");
  single("model.language_model.rotary_emb");
  stack("model.language_model.layers", cfg.text.num_hidden_layers);
  single("model.language_model.norm");
  single("lm_head");
  return c;
}

std::string join_list(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// --stream frees each module's weights after use. glibc raises its mmap threshold each time a large block is
// freed, so later weight tensors come from the heap, and the heap keeps freed memory that it cannot trim past
// a live block: the peak RSS then grew with depth (measured: +68 MB for 10 extra hidden-512 layers, see
// StreamRss.PeakDoesNotGrowWithDepth). A fixed threshold keeps every tensor of 128 KiB or more in its own
// mapping, returned to the system when it is freed. check and run both load through here.
ReplayModel load_for_replay(const std::string& weights_path, const Recording& rec, bool stream) {
  if (stream) mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  return load_replay_model(weights_path, rec, stream);
}

// --- check -----------------------------------------------------------------------------------------
int cmd_check(const std::string& weights_path, const std::string& recording_path, bool verbose,
              const std::vector<std::string>& only, const std::string& device, bool stream, const RopeOptions& rope,
              const std::string& html = "") {
  // --device cuda: every call runs on the GPU with the fused kernels (functional/cuda), judged as on the CPU.
  const bool on_gpu = device == "cuda";
  if (on_gpu && !cuda::unavailable_reason().empty()) throw std::runtime_error("--device cuda: " + cuda::unavailable_reason());
  if (on_gpu && stream) throw std::runtime_error("--stream runs on the CPU only (not with --device cuda)");
  const at::Device dev = on_gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  Recording rec = Recording::open(recording_path);
  // What transformers ran with (overrides included), weights cast as from_pretrained(dtype=...) did; with
  // --stream a lazy tree: each call loads (and casts) only its module's weights and frees them afterwards.
  ReplayModel rm = load_for_replay(weights_path, rec, stream);
  rope.apply(rm.config);
  const Weights root = on_gpu ? to_device(rm.weights, dev) : rm.weights;
  ModelConfig cfg = rm.config;
  cfg.vision.fused = cfg.text.fused = on_gpu;
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
  if (stream)
    std::printf("  streamed:  each call loads only the weights of its module (a composite call: one layer or block at a time), then frees them\n");
  {
    const ModuleCoverage mc = module_coverage(rec, cfg);
    std::printf("  modules:   the recording holds %zu of the model's %zu modules: %s\n", mc.n_holds,
                mc.n_holds + mc.n_partly + mc.n_lacks, mc.holds.empty() ? "none" : join_list(mc.holds).c_str());
    if (mc.n_partly)
      std::printf("             it holds only calls inside %zu: %s\n", mc.n_partly, join_list(mc.partly).c_str());
    if (mc.n_lacks) std::printf("             it lacks %zu (not checked): %s\n", mc.n_lacks, join_list(mc.lacks).c_str());
  }
  if (on_gpu) std::printf("  device:    cuda, fused kernels (RMSNorm, RoPE apply, varlen attention)\n");
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

  int passed = 0, failed = 0, missing = 0, not_checked = 0;
  std::map<std::string, int> missing_classes;
  std::vector<std::string> failures;
  std::vector<CallResult> results;  // every checked call, for the first divergence and --html
  for (size_t i = 0; i < rec.calls().size(); ++i) {
    const CallHeader& h = rec.calls()[i];
    if (!only.empty() && std::find(only.begin(), only.end(), h.module_class) == only.end()) continue;
    // A call the recorder marked as not checkable (record --modules in bf16: the top-level call has no float32
    // floor) is listed, never replayed, and never counted as passed.
    const auto settings = nlohmann::json::parse(h.settings, nullptr, false);
    if (settings.is_object() && settings.contains("not_checkable")) {
      ++not_checked;
      std::printf("%-6s %-44s %-34s %4lld  -  (not checked: %s)\n", h.group.c_str(), trunc(h.module_path, 44).c_str(),
                  trunc(h.module_class, 34).c_str(), static_cast<long long>(h.call_index),
                  settings["not_checkable"].get<std::string>().c_str());
      continue;
    }
    results.push_back(replay_call(rec, i, root, cfg, reg, dev));
    const CallResult& r = results.back();
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
  if (not_checked) std::printf(", %d not checked (marked by the recorder)", not_checked);
  std::printf("\n");
  for (const auto& f : failures) std::printf("FAILED %s\n", f.c_str());
  // The first divergent module, by the rule of qvl compare (the first failing call with no failing descendant).
  std::vector<CallHeader> all_calls = rec.calls();
  std::vector<bool> failing(all_calls.size(), false);
  for (const auto& r : results)
    failing[r.header.seq] = r.status == CallResult::Status::Fail || r.status == CallResult::Status::Error;
  const int first = first_divergent_call(all_calls, failing);
  if (first >= 0) {
    const CallHeader& h = all_calls[first];
    std::printf("first divergent module: %s (%s, call %s)\n", h.module_path.c_str(), h.module_class.c_str(), h.group.c_str());
  }
  if (!html.empty()) {
    int first_row = -1;
    for (size_t k = 0; k < results.size(); ++k)
      if (results[k].header.seq == first) first_row = static_cast<int>(k);
    report::write(html, report::from_check(rec, weights_path, results, first_row));
    std::printf("report: %s\n", html.c_str());
  }
  if (passed == 0 && failed == 0) {
    std::printf("qvl check: no call of an implemented module was found in the recording; nothing was checked\n");
    return 1;
  }
  return failed ? 1 : 0;
}

// --- run-vision: the chained run of the functional vision tower, recorded from C++ ----------------------
int cmd_run(bool vision_only, const std::string& weights_path, const std::string& ref_path, const std::string& out_path,
            const std::vector<std::string>& scales, bool stream, const RopeOptions& rope) {
  Recording ref = Recording::open(ref_path);
  // --stream: a lazy tree; the chain loads layer i, runs it and frees it (functional/weights.h, lazy trees).
  ReplayModel rm = load_for_replay(weights_path, ref, stream);
  if (stream) std::printf("  streamed:  one decoder layer / vision block in memory at a time\n");
  rope.apply(rm.config);
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
int cmd_rope_check(const std::vector<std::string>& paths, bool verbose) {
  // Every argument is a golden file or a folder of them (*.h5).
  std::vector<std::string> files;
  for (const auto& p : paths) {
    if (fs::is_directory(p)) {
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(p))
        if (e.path().extension() == ".h5") found.push_back(e.path().string());
      if (found.empty()) throw std::runtime_error("'" + p + "': no .h5 golden files in this folder");
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(p)) {
      files.push_back(p);
    } else {
      throw std::runtime_error("'" + p + "': no such file or folder (golden data: tests/data/rope_golden, see its README.md)");
    }
  }
  int cases = 0, failed = 0, raised = 0;
  for (const auto& f : files) {
    auto golden = rope_check::read_golden_file(f);
    std::printf("%s: %zu cases\n", f.c_str(), golden.size());
    for (const auto& c : golden) {
      rope_check::CaseCheck r = rope_check::check_case(c);
      ++cases;
      failed += !r.pass;
      raised += r.expected_error;
      std::string summary;
      for (const auto& o : r.outputs) {
        char buf[200];
        std::snprintf(buf, sizeof(buf), "%s%s[%s] max_abs %.2e max_rel %.2e%s", summary.empty() ? "" : "  ",
                      o.name.c_str(), o.rule.c_str(), o.max_abs, o.max_rel, o.pass ? "" : " FAIL");
        summary += buf;
      }
      if (r.expected_error) summary = "raised as the official code did: " + r.error;
      else if (!r.error.empty()) summary = "error: " + r.error;
      std::printf("  %-4s %-52s %-18s %s\n", r.pass ? "ok" : "FAIL", r.name.c_str(), r.function.c_str(), summary.c_str());
      for (const auto& o : r.outputs)
        if (!o.pass || verbose) std::printf("         %s: %s\n", o.name.c_str(), o.detail.empty() ? "ok" : o.detail.c_str());
      if (verbose)
        for (const auto& [k, v] : r.notes) std::printf("         note %s: %s\n", k.c_str(), v.c_str());
    }
  }
  std::printf("rope-check: %d cases, %d passed, %d failed (%d raised as the official code did)\n", cases, cases - failed,
              failed, raised);
  return failed ? 1 : 0;
}

int cmd_compare(const std::string& ref_path, const std::string& ours_path, bool all, const std::string& html = "") {
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
  if (!html.empty()) {
    report::write(html, report::from_compare(ref, ours, rep));
    std::printf("report: %s\n", html.c_str());
  }
  if (rep.compared == 0) {
    std::printf("qvl compare: no call of the reference is in ours; nothing was compared\n");
    return 1;
  }
  return rep.failed ? 1 : 0;
}

// --- generate: greedy decoding with a KV cache, tokens printed as they come ---------------------------------
int cmd_generate(const std::string& weights_path, const std::string& inputs_path, int64_t max_new, std::vector<int64_t> eos,
                 bool fast, const RopeOptions& rope) {
  ModelConfig wcfg;
  Recording rec = Recording::open(inputs_path);
  ReplayModel rm = replay_model(load_weights_any(weights_path, &wcfg), wcfg, rec);
  rope.apply(rm.config);
  if (fast) {
    // The CPU fast path of the text decoder (TextConfig::fast): fused projections; for float32 also SDPA, and
    // MKL's packed GEMMs where this LibTorch has them. Same maths as the plain path; tokens may differ only where two
    // logits tie to float32 rounding.
    const bool f32 = rec.attr("dtype") == "float32", pack = f32 && packed::available();
    rm.weights = text::fuse_projections(rm.weights, pack);
    rm.config.text.fast = true;
    rm.config.text.fast_packed = pack;
    std::fprintf(stderr, "text fast path: fused projections%s%s\n", f32 ? ", SDPA" : "", pack ? ", MKL packed GEMMs" : "");
  }
  const Weights& root = rm.weights;
  const ModelConfig& cfg = rm.config;
  const std::string dtype = rec.attr("dtype");
  model::Inputs in = recorded_model_inputs(rec);
  model::GenerateOptions opt;
  opt.max_new_tokens = max_new;
  // eos: --eos, else the one transformers used when it recorded (scenario.generation), else none.
  const std::optional<RecordedGeneration> gen = recorded_generation(rec);
  if (eos.empty() && gen) eos = gen->options.eos_token_ids;
  opt.eos_token_ids = eos;
  if (gen) opt.pad_token_id = gen->options.pad_token_id;
  std::printf("prompt: %lld tokens x %lld, %s; generating up to %lld tokens (eos:", static_cast<long long>(in.input_ids.size(1)),
              static_cast<long long>(in.input_ids.size(0)), dtype.c_str(), static_cast<long long>(max_new));
  for (auto e : eos) std::printf(" %lld", static_cast<long long>(e));
  std::printf(")\n");
  const auto t0 = std::chrono::steady_clock::now();
  auto t_first = t0;
  at::Tensor out = model::generate(root, in, cfg, opt, [&](int64_t step, const at::Tensor& tok) {
    if (step == 0) t_first = std::chrono::steady_clock::now();
    std::printf("%s", step == 0 ? "tokens:" : "");
    for (int64_t b = 0; b < tok.size(0); ++b) std::printf("%s%lld", b ? "/" : " ", static_cast<long long>(tok[b].item<int64_t>()));
    std::fflush(stdout);
  });
  const auto t1 = std::chrono::steady_clock::now();
  const auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  std::printf("\n");
  std::fflush(stdout);
  std::fprintf(stderr, "time: prefill + first token %.1f ms, then %.2f ms per token over %lld tokens (one run, not a benchmark)\n",
               ms(t0, t_first), out.size(1) > 1 ? ms(t_first, t1) / static_cast<double>(out.size(1) - 1) : 0.0,
               static_cast<long long>(out.size(1) - 1));
  if (gen) {
    // With -n below transformers' count, the first n tokens are compared; a length that differs otherwise
    // (an eos on one side only) is a difference.
    const std::string why = token_mismatch(out, max_new, *gen);
    const bool same = why.empty();
    const int64_t recorded = gen->new_tokens.empty() ? 0 : static_cast<int64_t>(gen->new_tokens[0].size());
    const int64_t compared = std::min<int64_t>(recorded, out.size(1));
    const auto& want = gen->new_tokens;
    const std::string scope = compared < recorded ? " (the first " + std::to_string(compared) + ")"
                              : compared < out.size(1) ? " (our first " + std::to_string(compared) + " of " +
                                                             std::to_string(out.size(1)) + ")"
                                                       : "";
    if (cfg.text_rope.kind != rope::TextRope::Kind::MRope || cfg.vision_rope) {
      // A changed rope is not transformers' model: the comparison is information only.
      std::printf("transformers generate (stock rotary) recorded %zu x %lld tokens: %s%s (information only: --rope %s, --rope-vision %s)\n",
                  want.size(), static_cast<long long>(recorded), same ? "identical" : "different", scope.c_str(),
                  rope.text.c_str(), rope.vision.c_str());
      if (!same) std::printf("  %s\n", why.c_str());
      return 0;
    }
    std::printf("transformers generate recorded %zu x %lld tokens: %s%s%s\n", want.size(), static_cast<long long>(recorded),
                same ? "IDENTICAL" : "DIFFERENT", scope.c_str(), same ? "" : (": " + why).c_str());
    return same ? 0 : 1;
  }
  return 0;
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
  RopeOptions rope;  // --rope / --rope-vision on check, run-vision, run and generate (one is parsed)
  rope.add_to(check);
  std::string check_device = "cpu";
  check->add_option("--device", check_device, "cpu, or cuda: run every call on the GPU with the fused kernels")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  std::string check_html;
  check->add_option("--html", check_html, "Also write a self-contained HTML report (plots, heatmaps, sortable table) to this file");
  bool check_stream = false;
  check->add_flag("--stream", check_stream,
                  "Load only the weights of the module being replayed (memory-mapped from a checkpoint directory, or "
                  "one subtree of a qvl.weights file), cast them, replay, free them: memory bounded by one module");

  ConvertCommand conv;
  bool conv_no_progress = false, conv_no_fsync = false;
  auto* convert = app.add_subcommand(
      "convert", "Convert a Hugging Face checkpoint to a nested qvl.weights HDF5 file, or back (--to-safetensors)");
  convert->add_option("src", conv.src, "Checkpoint directory (config.json + *.safetensors), or with --to-safetensors a qvl.weights .h5")->required();
  convert->add_option("out", conv.out, "Output .h5, or with --to-safetensors a new directory (written to a temporary, renamed when complete)")->required();
  convert->add_flag("--to-safetensors", conv.to_safetensors, "qvl.weights .h5 -> Hugging Face checkpoint directory (bit-exact round trip)");
  convert->add_option("--dtype", conv.dtype, "Cast floating tensors: bf16, f16 or f32 (integer tensors are kept)")
      ->check(CLI::IsMember({"bf16", "bfloat16", "f16", "fp16", "float16", "f32", "fp32", "float32"}));
  convert->add_option("--gzip", conv.gzip, "HDF5 output: gzip level 0-9 (0: none)")->check(CLI::Range(0, 9));
  convert->add_option("--layout", conv.layout, "--to-safetensors key layout: hub (visual.*, model.layers.*) or runtime (model.visual.*, model.language_model.*); default: the layout the file came from")
      ->check(CLI::IsMember({"hub", "runtime"}));
  convert->add_option("--max-shard-size", conv.max_shard_size, "--to-safetensors shard size (e.g. 5GB, 500MB, 4GiB)")->capture_default_str();
  convert->add_flag("--no-progress", conv_no_progress, "No progress bar on stderr");
  convert->add_flag("--no-fsync", conv_no_fsync, "Skip the fsync before the rename (faster; a power cut may then lose the file)");

  std::string ref_path, ours_path, run_out;
  std::vector<std::string> scales;
  std::string run_weights = kDefaultWeights;
  bool run_stream = false;
  auto add_run = [&](const char* name, const char* help) {
    auto* cmd = app.add_subcommand(name, help);
    cmd->add_option("reference", ref_path, "Reference recording (transformers) giving the inputs")->required();
    cmd->add_option("--weights", run_weights, "qvl.weights .h5 or HF checkpoint directory")->capture_default_str();
    cmd->add_option("-o,--out", run_out, "Output recording (qvl.recording schema)")->required();
    cmd->add_option("--scale-weight", scales, "PATH=FACTOR: scale one weight tensor (see where a change diverges)");
    rope.add_to(cmd);
    cmd->add_flag("--stream", run_stream, "Layer by layer: load a decoder layer / vision block, run it, free it");
    return cmd;
  };
  auto* run_vision = add_run("run-vision", "Chained run: the functional vision tower from a recording's pixel_values, recorded from C++");
  auto* run_model = add_run("run", "Chained run: the whole functional model from a recording's token ids and pixel values, recorded from C++");
  bool compare_all = false;
  auto* compare_cmd = app.add_subcommand("compare", "Compare two recordings call by call; report the first divergent module");
  compare_cmd->add_option("reference", ref_path, "Reference recording")->required();
  compare_cmd->add_option("ours", ours_path, "Recording to judge (e.g. from qvl run-vision)")->required();
  compare_cmd->add_flag("--all", compare_all, "Also list reference calls that ours does not have");
  std::string compare_html;
  compare_cmd->add_option("--html", compare_html,
                          "Also write a self-contained HTML report (error growth, per-token and per-patch heatmaps, sortable table)");

  std::string gen_weights = kDefaultWeights, gen_inputs = kDefaultRecording;
  int64_t gen_max = 16;
  std::vector<int64_t> gen_eos;
  auto* gen_cmd = app.add_subcommand("generate", "Greedy generation with a KV cache from a recording's inputs; prints tokens as they come");
  gen_cmd->add_option("--weights", gen_weights, "qvl.weights .h5 or HF checkpoint directory")->capture_default_str();
  gen_cmd->add_option("--inputs", gen_inputs, "Recording whose top-level call gives input_ids, pixel values and grids")->capture_default_str();
  gen_cmd->add_option("-n,--max-new-tokens", gen_max, "Tokens to generate")->capture_default_str();
  rope.add_to(gen_cmd);
  gen_cmd->add_option("--eos", gen_eos, "End-of-sequence ids (default: those transformers used when recording)");
  bool gen_fast = false;
  gen_cmd->add_flag("--fast", gen_fast,
                    "CPU fast path of the text decoder: fused q/k/v and gate/up GEMMs; for float32 also SDPA and MKL packed GEMMs");

  std::vector<std::string> rope_paths;
  auto* rope_check_cmd = app.add_subcommand(
      "rope-check", "Check the RoPE variants against golden files of the official implementations (schema: tests/data/rope_golden/README.md)");
  rope_check_cmd->add_option("files", rope_paths, "Golden .h5 files or folders of them")->required();
  rope_check_cmd->add_flag("-v,--verbose", verbose, "Every output's verdict and the notes");

  std::string inspect_path;
  auto* inspect = app.add_subcommand(
      "inspect", "List the tree, shapes, dtypes and bytes of a weights file, a recording, a safetensors file or a checkpoint (no data read)");
  inspect->add_option("file", inspect_path, "File or checkpoint directory (a checkpoint is also checked against its config.json)")->required();

  ImportOptions imp;
  std::string import_kind;
  auto* import_cmd = app.add_subcommand(
      "import", "Convert another tool's recordings into a qvl.recording: module_io_data (the Qwen2.5-VL conversion "
                "framework's per-call folders); unmappable calls and lost (same-second) calls are listed");
  import_cmd->add_option("kind", import_kind, "What to import: module_io_data")->required()->check(CLI::IsMember({"module_io_data"}));
  import_cmd->add_option("dir", imp.dir, "The module_io_data folder (one <Module>_<YYYYmmdd_HHMMSS> folder per call)")->required();
  import_cmd->add_option("-o,--out", imp.out, "Output recording (.h5; written to a temporary, renamed when complete)")->required();
  import_cmd->add_option("--config", imp.config, "The model's config.json: the depth (which instance a call is), stored in the recording");
  import_cmd->add_option("--weights", imp.weights, "The framework's vision_weights.pt (dict of dicts): tells module instances apart");
  import_cmd->add_option("--weights-out", imp.weights_out, "Also convert --weights into this qvl.weights file (checked against --config)");
  import_cmd->add_option("--checkpoint", imp.checkpoint, "An HF checkpoint directory: every weight, to tell text module instances apart too");
  CLI::App* vit_cmd = vit::add_vit_command(app);

  CLI11_PARSE(app, argc, argv);
  const std::string name = app.get_subcommands().front()->get_name();
  try {
    if (check->parsed()) return cmd_check(weights, recording, verbose, only, check_device, check_stream, rope, check_html);
    if (convert->parsed()) {
      conv.progress = !conv_no_progress;
      conv.fsync = !conv_no_fsync;
      return run_convert(conv);
    }
    if (inspect->parsed()) return run_inspect(inspect_path);
    if (rope_check_cmd->parsed()) {
      // The golden files come from torch's CPU kernels on an AVX2 machine. Sleef's float32 atan2/sin/cos
      // (1-ulp accurate, not correctly rounded) give different last bits in their AVX2 and AVX-512 variants,
      // and Circle-RoPE multiplies an atan2 result by the radius, so one ulp becomes ~4e-6 in a position
      // (measured on the 8x6 grids). Run ATen's CPU kernels at AVX2 like the producer, unless the caller
      // chose a capability. Must happen before the first tensor operation picks its kernels.
      setenv("ATEN_CPU_CAPABILITY", "avx2", /*overwrite=*/0);
      std::printf("ATen CPU kernels: %s (ATEN_CPU_CAPABILITY; the golden producer's)\n", std::getenv("ATEN_CPU_CAPABILITY"));
      return cmd_rope_check(rope_paths, verbose);
    }
    if (run_vision->parsed()) return cmd_run(true, run_weights, ref_path, run_out, scales, run_stream, rope);
    if (run_model->parsed()) return cmd_run(false, run_weights, ref_path, run_out, scales, run_stream, rope);
    if (compare_cmd->parsed()) return cmd_compare(ref_path, ours_path, compare_all, compare_html);
    if (import_cmd->parsed()) return run_import_module_io(imp);
    if (gen_cmd->parsed()) return cmd_generate(gen_weights, gen_inputs, gen_max, gen_eos, gen_fast, rope);
    if (vit_cmd->parsed()) return vit::run_vit();
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "qvl %s: error: %s\n", name.c_str(), error_message(e).c_str());
    return 2;
  }
  return 0;
}
