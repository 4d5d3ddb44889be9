// qvl_bench_text_fast: what each choice of the text fast path (functional/text_fast.cpp) buys, one at a time,
// at the Qwen2.5-VL-7B text sizes (hidden 3584, 28 heads on 4 KV heads of 128, intermediate 18944), float32,
// random weights, on a 512-token prefill and on one decode token over a 512-token cache. Each line times the
// plain way (as functional/text.cpp does it) and the fast way of one step, interleaved rep by rep so that
// load from other processes hits both alike, and prints medians and minimums in ms. The last lines time the
// whole decoder layer: plain, fast, fast with packed GEMMs.
//   qvl_bench_text_fast [REPS]   (default 5; the decode lines run 4x as many)
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_timing.h"
#include "functional/norm.h"
#include "functional/packed_gemm.h"
#include "functional/text.h"

namespace {
using qvl::Weights;

struct Stat {
  double median, min;
};
struct Pairs {
  Stat plain, fast;
  double gain, gain_min, gain_max;  // median, min and max of the per-pair ratios plain / fast
};

// Times a and b alternately, pair by pair (after one warm-up call each); `setup`, if given, runs untimed before
// each call.
Pairs ab(int reps, const std::function<void()>& a, const std::function<void()>& b,
         const std::function<void()>& setup = {}) {
  std::vector<double> ta, tb, ratio;
  auto timed = [&](const std::function<void()>& f) {
    if (setup) setup();
    return qvl::bench::time_ms(1, 0, f).median_ms;
  };
  timed(a);
  timed(b);
  for (int i = 0; i < reps; ++i) {
    ta.push_back(timed(a));
    tb.push_back(timed(b));
    ratio.push_back(ta.back() / tb.back());
  }
  auto stat = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return Stat{v[v.size() / 2], v.front()};
  };
  std::sort(ratio.begin(), ratio.end());
  return {stat(ta), stat(tb), ratio[ratio.size() / 2], ratio.front(), ratio.back()};
}

void row(const char* name, const Pairs& s) {
  std::printf("%-54s %10.2f %10.2f   %10.2f %10.2f   %6.2fx (%.2f-%.2f)\n", name, s.plain.median, s.plain.min,
              s.fast.median, s.fast.min, s.gain, s.gain_min, s.gain_max);
}
}  // namespace

int main(int argc, char** argv) {
  using namespace qvl;
  c10::InferenceMode guard;
  const std::string arg = argc > 1 ? argv[1] : "5";
  if (argc > 2 || arg == "-h" || arg == "--help" || arg.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(arg) < 1) {
    std::fprintf(argc > 2 || (arg != "-h" && arg != "--help") ? stderr : stdout,
                 "usage: qvl_bench_text_fast [REPS]   (REPS >= 1, default 5; the decode lines run 4x as many)\n"
                 "Times each choice of the text fast path against the plain way at the 7B text sizes (float32,\n"
                 "random weights, 512-token prefill, one decode token on a 512-token cache).\n");
    return arg == "-h" || arg == "--help" ? 0 : 2;
  }
  const int reps = std::stoi(arg);
  const int64_t D = 3584, F = 18944, H = 28, Hkv = 4, Dh = 128, L = 512, rep = H / Hkv;
  TextConfig c;
  c.hidden_size = D;
  c.intermediate_size = F;
  c.num_hidden_layers = 1;
  c.num_attention_heads = H;
  c.num_key_value_heads = Hkv;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.mrope_section = {16, 24, 24};
  at::manual_seed(0);
  auto proj = [](int64_t out, int64_t in) {
    return at::randn({out, in}) / std::sqrt(static_cast<double>(in));
  };
  Weights root;
  const std::string p = "model.language_model.layers.0.";
  root.set(p + "input_layernorm.weight", 1.0 + 0.1 * at::randn({D}));
  root.set(p + "post_attention_layernorm.weight", 1.0 + 0.1 * at::randn({D}));
  root.set(p + "self_attn.q_proj.weight", proj(H * Dh, D));
  root.set(p + "self_attn.q_proj.bias", at::randn({H * Dh}));
  root.set(p + "self_attn.k_proj.weight", proj(Hkv * Dh, D));
  root.set(p + "self_attn.k_proj.bias", at::randn({Hkv * Dh}));
  root.set(p + "self_attn.v_proj.weight", proj(Hkv * Dh, D));
  root.set(p + "self_attn.v_proj.bias", at::randn({Hkv * Dh}));
  root.set(p + "self_attn.o_proj.weight", proj(D, H * Dh));
  root.set(p + "mlp.gate_proj.weight", proj(F, D));
  root.set(p + "mlp.up_proj.weight", proj(F, D));
  root.set(p + "mlp.down_proj.weight", proj(D, F));
  const Weights layer = root.at("model.language_model.layers.0");
  const bool pack = packed::available();
  const Weights fused = text::fuse_projections(layer, pack);
  const Weights a = layer.at("self_attn"), fa = fused.at("self_attn"), fm = fused.at("mlp");

  std::printf(
      "text fast path, one choice at a time: 7B text sizes, float32, %d threads; medians and minimums of %d "
      "(decode: %d) interleaved reps, ms; gain: median (min-max) of the per-pair ratios\n%s\n",
      at::get_num_threads(), reps, 4 * reps, qvl::bench::machine_line().c_str());
  std::printf("%-54s %10s %10s   %10s %10s   %7s\n", "step (plain way -> fast way)", "plain med", "plain min",
              "fast med", "fast min", "gain (pairs)");
  for (int64_t T : {L, int64_t{1}}) {
    const int n = T == 1 ? 4 * reps : reps;
    const std::string tag = T == 1 ? " [decode]" : " [prefill]";
    const at::Tensor x = at::randn({1, T, D});
    // q, k, v: three GEMMs -> one
    row(("q/k/v: 3 GEMMs -> 1" + tag).c_str(),
        ab(
            n,
            [&] {
              at::linear(x, a.tensor("q_proj.weight"), a.tensor("q_proj.bias"));
              at::linear(x, a.tensor("k_proj.weight"), a.tensor("k_proj.bias"));
              at::linear(x, a.tensor("v_proj.weight"), a.tensor("v_proj.bias"));
            },
            [&] { at::linear(x, fa.tensor("qkv_proj.weight"), fa.tensor("qkv_proj.bias")); }));
    // gate, up: two GEMMs -> one
    row(("gate/up: 2 GEMMs -> 1" + tag).c_str(),
        ab(
            n,
            [&] {
              at::linear(x, layer.tensor("mlp.gate_proj.weight"));
              at::linear(x, layer.tensor("mlp.up_proj.weight"));
            },
            [&] { at::linear(x, fm.tensor("gate_up_proj.weight")); }));
    // act(gate) * up: out of place on separate outputs -> in place on the halves of one
    const at::Tensor g = at::randn({T, F}), u = at::randn({T, F}), gu0 = at::cat({g, u}, 1), gu = gu0.clone();
    row(("silu(gate) * up: new tensors -> in place" + tag).c_str(),
        ab(
            n, [&] { at::silu(g) * u; },
            [&] {
              at::Tensor gate = gu.narrow(1, 0, F);
              at::silu_(gate).mul_(gu.narrow(1, F, F));
            },
            [&] { gu.copy_(gu0); }));  // fresh values for the in-place ops
    // down_proj on the strided gate half: at::linear (copies it contiguous) -> at::mm in place
    const at::Tensor half = gu.narrow(1, 0, F);
    row(("down_proj on the gate half: linear -> mm" + tag).c_str(),
        ab(
            n, [&] { at::linear(half.contiguous(), layer.tensor("mlp.down_proj.weight")); },
            [&] { at::mm(half, layer.tensor("mlp.down_proj.weight").t()); }));
    const at::Tensor heads = at::randn({1, T, H + 2 * Hkv, Dh});  // a qkv output, as [B, T, heads, Dh]
    // attention core: repeat_kv + matmul + softmax + matmul (eager) -> SDPA with enable_gqa
    const int64_t Tk = T == 1 ? L + 1 : L;
    const at::Tensor q = heads.narrow(2, 0, H).transpose(1, 2), k = at::randn({1, Hkv, Tk, Dh}),
                     v = at::randn({1, Hkv, Tk, Dh});
    const at::Tensor mask = text::causal_mask({}, 1, T, Tk - T, at::kFloat);
    const double scaling = std::pow(static_cast<double>(Dh), -0.5);
    row(("attention: eager -> SDPA" + tag).c_str(),
        ab(
            n,
            [&] {
              auto rk = [&](const at::Tensor& t) {
                return t.unsqueeze(2).expand({1, Hkv, rep, Tk, Dh}).reshape({1, H, Tk, Dh});
              };
              at::Tensor w = at::matmul(q, rk(k).transpose(2, 3)) * scaling + mask;
              w = at::softmax(w, -1, at::kFloat).to(q.scalar_type());
              at::matmul(w, rk(v)).transpose(1, 2).contiguous().reshape({1, T, -1}).contiguous();
            },
            [&] {
              at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, scaling, true)
                  .transpose(1, 2)
                  .reshape({1, T, -1});
            }));
    // residual adds: x + y -> y.add_(x) on the fresh output
    const at::Tensor r0 = at::randn({1, T, D}), r1 = r0.clone();
    row(("residual add: new tensor -> in place" + tag).c_str(),
        ab(
            n, [&] { r0 + x; }, [&] { r1.add_(x); }, [&] { r1.copy_(r0); }));
    // packed GEMMs (MKL) on the four fused projections
    if (pack) {
      const at::Tensor x2 = x.view({T, D});
      const at::Tensor xo = at::randn({T, H * Dh}), xd = at::randn({T, F});
      row(("GEMMs: at::linear -> packed (4 projections)" + tag).c_str(),
          ab(
              n,
              [&] {
                at::linear(x2, fa.tensor("qkv_proj.weight"), fa.tensor("qkv_proj.bias"));
                at::linear(xo, fa.tensor("o_proj.weight"));
                at::linear(x2, fm.tensor("gate_up_proj.weight"));
                at::linear(xd, fm.tensor("down_proj.weight"));
              },
              [&] {
                packed::linear(x2, fa.tensor("qkv_proj.packed"), fa.tensor("qkv_proj.bias"));
                packed::linear(xo, fa.tensor("o_proj.packed"));
                packed::linear(x2, fm.tensor("gate_up_proj.packed"));
                packed::linear(xd, fm.tensor("down_proj.packed"));
              }));
    }
  }
  // The whole layer
  TextConfig fast = c, fast_packed = c;
  fast.fast = fast_packed.fast = true;
  fast_packed.fast_packed = pack;
  const at::Tensor x = at::randn({1, L, D}), x1 = at::randn({1, 1, D});
  const CosSin rope = text::rotary(at::arange(L, at::kLong).view({1, 1, L}).expand({3, 1, L}), at::kFloat, c);
  const CosSin rope1 = text::rotary(at::full({3, 1, 1}, L, at::kLong), at::kFloat, c);
  const at::Tensor mask = text::causal_mask({}, 1, L, 0, at::kFloat),
                   mask1 = text::causal_mask({}, 1, 1, L, at::kFloat);
  text::KVCache base_plain, base_fast;
  text::decoder_layer(layer, x, mask, rope, c, nullptr, &base_plain, 0);
  text::decoder_layer(fused, x, mask, rope, fast, nullptr, &base_fast, 0);
  auto prefill = [&](const Weights& w, const TextConfig& tc) {
    return [&, tc] { text::decoder_layer(w, x, mask, rope, tc); };
  };
  auto decode = [&](const Weights& w, const TextConfig& tc, const text::KVCache& base) {
    return [&, tc] {
      text::KVCache cache = base;
      text::decoder_layer(w, x1, mask1, rope1, tc, nullptr, &cache, 0);
    };
  };
  row("decoder layer: plain -> fast [prefill]", ab(reps, prefill(layer, c), prefill(fused, fast)));
  if (pack)
    row("decoder layer: plain -> fast+packed [prefill]",
        ab(reps, prefill(layer, c), prefill(fused, fast_packed)));
  row("decoder layer: plain -> fast [decode]",
      ab(4 * reps, decode(layer, c, base_plain), decode(fused, fast, base_fast)));
  return 0;
}
