#!/usr/bin/env python3
"""Text benchmark: transformers vs qvl, prefill and per-token decode, same CPU/config/weights/inputs, one run.

  1. tiny: the whole tiny model on the recorded image prompt (recordings/tiny_fp32.h5): prefill =
     generate(1 token); per-token decode = (generate(33) - generate(1)) / 32. Both sides run their own
     greedy loop with a KV cache; eos is disabled so both generate exactly N tokens.
  2. 7B: one decoder layer at the Qwen2.5-VL-7B text sizes (hidden 3584, 28 heads, 4 KV heads of 128,
     intermediate 18944), random weights: prefill on 512 tokens; decode = 1 token on a 512-token cache.
Float32, eager attention, torch's default thread count on both sides; medians after warm-up.

  python bench/bench_text.py [--reps N]
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


def median_ms(fn, reps):
    return time_ms(fn, reps, warmup=2)[0]


def cpp(*args):
    out = subprocess.run([BIN, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
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
    hf1 = median_ms(lambda: model.generate(**kw, max_new_tokens=1), a.reps)
    hf33 = median_ms(lambda: model.generate(**kw, max_new_tokens=33), a.reps)
    q1 = cpp("generate", tiny, rec, 1, a.reps)["median_ms"]
    q33 = cpp("generate", tiny, rec, 33, a.reps)["median_ms"]
    rows += [("tiny prefill (generate 1)", hf1, q1), ("tiny decode per token", (hf33 - hf1) / 32, (q33 - q1) / 32)]

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
    hf_prefill = median_ms(lambda: layer(x, attention_mask=mask, position_embeddings=(cos, sin)), a.reps)
    hf_decode = median_ms(lambda: layer(x1, attention_mask=mask1, position_embeddings=(cos1, sin1),
                                        past_key_values=copy.deepcopy(base), use_cache=True), a.reps)
    with tempfile.TemporaryDirectory() as tmp:
        ck = os.path.join(tmp, "big")
        big.save_pretrained(ck)
        with h5py.File(os.path.join(tmp, "in.h5"), "w") as f:
            for k, t in dict(x=x, mask=mask, cos=cos, sin=sin, x1=x1, mask1=mask1, cos1=cos1, sin1=sin1).items():
                ds = f.create_dataset(k, data=t.contiguous().numpy())
                ds.attrs["kind"], ds.attrs["dtype"] = "tensor", "float32"
        r = cpp("layer", ck, os.path.join(tmp, "in.h5"), a.reps)
    # HF's decode timing includes a deepcopy of the 512-token cache per call; measure it to subtract it.
    copy_ms = median_ms(lambda: copy.deepcopy(base), a.reps)
    rows += [("7B layer prefill (512 tokens)", hf_prefill, r["prefill_ms"]),
             ("7B layer decode (1 token, 512 cache)", hf_decode - copy_ms, r["decode_ms"])]

    print(f"text benchmark: float32, CPU, {torch.get_num_threads()} torch threads (qvl: {r['threads']}), "
          f"medians of {a.reps}; torch {torch.__version__}")
    print(f"{'case':38} {'transformers ms':>16} {'qvl ms':>10} {'speed vs HF':>12}")
    for name, hf, q in rows:
        print(f"{name:38} {hf:16.3f} {q:10.3f} {hf / q:11.2f}x")
    print(f"(HF decode excludes its per-call cache deepcopy, {copy_ms:.3f} ms, needed to reuse one cache)")


if __name__ == "__main__":
    main()
