#!/usr/bin/env python3
"""Text benchmark: transformers vs qvl, prefill and per-token decode, same CPU/config/weights/inputs, one run.

  1. tiny: the whole tiny model on the recorded image prompt (recordings/tiny_fp32.h5): prefill =
     generate(1 token); per-token decode = (generate(33) - generate(1)) / 32. Both sides run their own
     greedy loop with a KV cache; eos is disabled so both generate exactly N tokens.
  2. 7B: one decoder layer at the Qwen2.5-VL-7B text sizes (hidden 3584, 28 heads, 4 KV heads of 128,
     intermediate 18944), random weights: prefill on 512 tokens; decode = 1 token on a 512-token cache.
Float32, eager attention, torch's default thread count on both sides; medians after warm-up.
qvl runs its fast path (TextConfig::fast: fused qkv and gate_up GEMMs, SDPA, and with fast_packed MKL's packed
GEMM for inputs of >= 4 rows; weights fused and packed once before timing, as the transformers load is not
timed either); its plain reference path is timed too and shown as "(plain)".

  python bench/bench_text.py [--reps N] [--bin BUILD/bench/qvl_bench_text]
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

import h5py
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "recordings"))
import record_reference as rr  # noqa: E402
from timing import time_ms  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402

BIN = os.path.join(here, "..", "build", "bench", "qvl_bench_text")


def timing(fn, reps):
    """(median ms, min ms)"""
    return time_ms(fn, reps, warmup=2)


def cpp(binary, *args):
    out = subprocess.run([binary, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--bin", default=BIN, help="the qvl_bench_text binary (default: %(default)s)")
    a = ap.parse_args()
    rows = []

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
    hf1 = timing(lambda: model.generate(**kw, max_new_tokens=1), a.reps)
    hf33 = timing(lambda: model.generate(**kw, max_new_tokens=33), a.reps)
    g1 = cpp(a.bin, "generate", tiny, rec, 1, a.reps)
    g33 = cpp(a.bin, "generate", tiny, rec, 33, a.reps)
    per_token = lambda t33, t1: tuple((x33 - x1) / 32 for x33, x1 in zip(t33, t1))  # noqa: E731
    for tag, key in (("", "generate"), (" (plain)", "plain_generate")):
        q1, q33 = (g1[key + "_ms"], g1[key + "_min_ms"]), (g33[key + "_ms"], g33[key + "_min_ms"])
        rows += [(f"tiny prefill (generate 1){tag}", hf1, q1), (f"tiny decode per token{tag}", per_token(hf33, hf1), per_token(q33, q1))]

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
    hf_prefill = timing(lambda: layer(x, attention_mask=mask, position_embeddings=(cos, sin)), a.reps)
    hf_decode = timing(lambda: layer(x1, attention_mask=mask1, position_embeddings=(cos1, sin1),
                                        past_key_values=copy.deepcopy(base), use_cache=True), a.reps)
    with tempfile.TemporaryDirectory() as tmp:
        ck = os.path.join(tmp, "big")
        big.save_pretrained(ck)
        with h5py.File(os.path.join(tmp, "in.h5"), "w") as f:
            for k, t in dict(x=x, mask=mask, cos=cos, sin=sin, x1=x1, mask1=mask1, cos1=cos1, sin1=sin1).items():
                ds = f.create_dataset(k, data=t.contiguous().numpy())
                ds.attrs["kind"], ds.attrs["dtype"] = "tensor", "float32"
        r = cpp(a.bin, "layer", ck, os.path.join(tmp, "in.h5"), a.reps)
    # HF's decode timing includes a deepcopy of the 512-token cache per call; measure it to subtract it.
    copy_ms = timing(lambda: copy.deepcopy(base), a.reps)
    hf_decode = tuple(d - c for d, c in zip(hf_decode, copy_ms))
    for tag, pre in (("", ""), (" (plain)", "plain_")):
        rows += [(f"7B layer prefill (512 tokens){tag}", hf_prefill, (r[pre + "prefill_ms"], r[pre + "prefill_min_ms"])),
                 (f"7B layer decode (1 token, 512 cache){tag}", hf_decode, (r[pre + "decode_ms"], r[pre + "decode_min_ms"]))]

    print(f"text benchmark: float32, CPU, {torch.get_num_threads()} torch threads (qvl: {r['threads']}), "
          f"medians and minimums of {a.reps}; torch {torch.__version__}")
    print(f"qvl path: {r['path']} (TextConfig::fast{', fast_packed' if 'packed' in r['path'] else ''}); "
          "rows marked (plain): the plain reference path, same run")
    print("(the two sides run one after the other: where other processes load the CPU, the ratio of minimums is the "
          "steadier one)")
    print(f"{'case':46} {'HF med ms':>10} {'HF min ms':>10} {'qvl med ms':>10} {'qvl min ms':>10} "
          f"{'speed (med)':>11} {'speed (min)':>11}")
    for name, hf, q in rows:
        print(f"{name:46} {hf[0]:10.3f} {hf[1]:10.3f} {q[0]:10.3f} {q[1]:10.3f} {hf[0] / q[0]:10.2f}x {hf[1] / q[1]:10.2f}x")
    print(f"(HF decode excludes its per-call cache deepcopy, median {copy_ms[0]:.3f} ms, needed to reuse one cache)")


if __name__ == "__main__":
    main()
