#!/usr/bin/env python3
"""Text benchmark: transformers vs qvl, prefill and per-token decode, same CPU/config/weights/inputs, one run.

  1. tiny: the whole tiny model on the recorded image prompt (recordings/tiny_fp32.h5): prefill =
     generate(1 token); per-token decode = (generate(33) - generate(1)) / 32. Both sides run their own
     greedy loop with a KV cache; eos is disabled so both generate exactly N tokens.
  2. 7B: one decoder layer at the Qwen2.5-VL-7B text sizes (hidden 3584, 28 heads, 4 KV heads of 128,
     intermediate 18944), random weights: prefill on 512 tokens; decode = 1 token on a 512-token cache.
Float32, eager attention, torch's default thread count on both sides. qvl runs as a server (serve mode) and the
two sides alternate call by call (A B A B ...), so a change in the machine's load falls on both calls of a pair;
the table gives the median of the per-pair speed ratios (transformers ms / qvl ms) with their min-max.
qvl runs its fast path (TextConfig::fast: fused qkv and gate_up GEMMs, SDPA, and with fast_packed MKL's packed
GEMM for inputs of >= 4 rows; weights fused and packed once before timing, as the transformers load is not
timed either); its plain reference path is timed too and shown as "(plain)".

  python bench/bench_text.py [--pairs N] [--bin BUILD/bench/qvl_bench_text]
"""
import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import h5py
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "recordings"))
import record_reference as rr  # noqa: E402
from timing import Server, interleaved, machine_line, passive_openmp  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402

BIN = os.path.join(here, "..", "build", "bench", "qvl_bench_text")


def main():
    passive_openmp()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=10, help="interleaved (transformers, qvl) pairs per case")
    ap.add_argument("--bin", default=BIN, help="the qvl_bench_text binary (default: %(default)s)")
    a = ap.parse_args()
    rows = []  # (case, qvl path, result of interleaved())

    # --- tiny: whole model, generate -----------------------------------------------------------------
    tiny = os.path.join(here, "..", "weights", "tiny")
    rec = os.path.join(here, "..", "recordings", "tiny_fp32.h5")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32, attn_implementation="eager").eval()
    model.generation_config.eos_token_id = None  # always N tokens, as the C++ side
    img = rr.image_processor_for(tiny)(images=[rr.synthetic_image(112, 84, 0)], return_tensors="pt")
    cfg = model.config
    n_tok = int(img["image_grid_thw"][0].prod()) // 4
    ids = [17, 42, 99, cfg.vision_start_token_id] + [cfg.image_token_id] * n_tok + [cfg.vision_end_token_id, 23, 77, 128, 5]
    input_ids = torch.tensor([ids])
    kw = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=img["pixel_values"],
              image_grid_thw=img["image_grid_thw"], mm_token_type_ids=(input_ids == cfg.image_token_id).int(), do_sample=False)
    g1 = Server([a.bin, "generate", tiny, rec, "1", "serve"])
    g33 = Server([a.bin, "generate", tiny, rec, "33", "serve"])
    for path in ("fast", "plain"):
        rows.append(("tiny prefill (generate 1)", path,
                     interleaved(lambda: model.generate(**kw, max_new_tokens=1), lambda: g1.time_ms(path), a.pairs)))
        # per-token decode: (generate 33 - generate 1) / 32 on each side, in pairs of pairs
        hf, q = [], []
        with torch.no_grad():
            for _ in range(a.pairs):
                t = []
                for fn in (lambda: model.generate(**kw, max_new_tokens=1), lambda: model.generate(**kw, max_new_tokens=33)):
                    t0 = time.perf_counter()
                    fn()
                    t.append((time.perf_counter() - t0) * 1e3)
                hf.append((t[1] - t[0]) / 32)
                q.append((g33.time_ms(path) - g1.time_ms(path)) / 32)
        ratios = sorted(h / x for h, x in zip(hf, q))
        rows.append(("tiny decode per token", path, {"ref_ms": statistics.median(hf), "ours_ms": statistics.median(q),
                                                     "ratio": statistics.median(ratios), "ratio_min": ratios[0],
                                                     "ratio_max": ratios[-1], "pairs": a.pairs}))
    g1.close()
    g33.close()

    # --- 7B: one decoder layer -----------------------------------------------------------------------
    c = json.loads(json.dumps(rr.TINY_CONFIG))
    c.update({"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 1, "num_attention_heads": 28,
              "num_key_value_heads": 4, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}})
    torch.manual_seed(0)
    big = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**c)).eval()
    rr.randomize_weights(big, 0)
    layer = big.model.language_model.layers[0]
    rot = big.model.language_model.rotary_emb
    L = 512
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, L, 3584, generator=g)
    x1 = torch.randn(1, 1, 3584, generator=g)
    pos = torch.arange(L).view(1, 1, -1).expand(3, 1, -1)
    pos1 = torch.full((3, 1, 1), L)
    mn = torch.finfo(torch.float32).min
    mask = torch.triu(torch.full((L, L), mn), 1).view(1, 1, L, L)
    mask1 = torch.zeros(1, 1, 1, L + 1)
    with torch.no_grad():
        cos, sin = rot(x, pos)
        cos1, sin1 = rot(x1, pos1)
        base = DynamicCache(config=big.config.text_config)
        layer(x, attention_mask=mask, position_embeddings=(cos, sin), past_key_values=base, use_cache=True)
    with tempfile.TemporaryDirectory() as tmp:
        ck = os.path.join(tmp, "big")
        big.save_pretrained(ck)
        with h5py.File(os.path.join(tmp, "in.h5"), "w") as f:
            for k, t in dict(x=x, mask=mask, cos=cos, sin=sin, x1=x1, mask1=mask1, cos1=cos1, sin1=sin1).items():
                ds = f.create_dataset(k, data=t.contiguous().numpy())
                ds.attrs["kind"], ds.attrs["dtype"] = "tensor", "float32"
        srv = Server([a.bin, "layer", ck, os.path.join(tmp, "in.h5"), "serve"])
    # HF's decode appends to the cache it is given: each call gets its own copy, made before it is timed.
    copies = []

    def hf_decode():
        layer(x1, attention_mask=mask1, position_embeddings=(cos1, sin1), past_key_values=copies.pop(), use_cache=True)

    for path, pre in (("fast", ""), ("plain", "plain_")):
        rows.append(("7B layer prefill (512 tokens)", path,
                     interleaved(lambda: layer(x, attention_mask=mask, position_embeddings=(cos, sin)),
                                 lambda: srv.time_ms(pre + "prefill"), a.pairs)))
        copies[:] = [copy.deepcopy(base) for _ in range(a.pairs + 3)]
        rows.append(("7B layer decode (1 token, 512 cache)", path,
                     interleaved(hf_decode, lambda: srv.time_ms(pre + "decode"), a.pairs)))
    srv.close()

    print(f"text benchmark: float32; {machine_line()} (qvl: the same default); torch {torch.__version__}")
    print(f"each case: {a.pairs} interleaved pairs (transformers call, qvl call) after warm-ups on each side; speed = "
          "transformers ms / qvl ms per pair. qvl path fast: TextConfig::fast (+ fast_packed where MKL's packed GEMM "
          "is available); plain: the reference path")
    print(f"{'case':38} {'qvl path':9} {'HF median ms':>12} {'qvl median ms':>13} {'speed median':>12} {'min-max':>13}")
    for case, path, r in rows:
        print(f"{case:38} {path:9} {r['ref_ms']:12.3f} {r['ours_ms']:13.3f} {r['ratio']:11.2f}x "
              f"{r['ratio_min']:5.2f}-{r['ratio_max']:.2f}x")


if __name__ == "__main__":
    main()
