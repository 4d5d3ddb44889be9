#!/usr/bin/env python3
"""Vision benchmark: transformers vs qvl on the same CPU, config, weights and inputs, in one run.

  1. tiny: the whole vision tower of the tiny model (weights/tiny) on the 112x84 image;
  2. real: one vision block at the real sizes (hidden 1280, 16 heads of 80, intermediate 3420) on the
     448x448 grid (1024 patches), windowed (16 windows of 64) and full (one segment of 1024).
Each side runs warm-up calls, then REPS timed calls; the medians are compared. Both use torch's default
intra-op thread count on this machine (reported). transformers runs eager attention in float32, the
implementation qvl mirrors; sdpa is timed too for reference.

  python bench/bench_vision.py [--reps N] [--binary build/bench/qvl_bench_vision]
"""
import argparse
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
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index  # noqa: E402


def save_inputs(path, **tensors):
    with h5py.File(path, "w") as f:
        for k, t in tensors.items():
            ds = f.create_dataset(k, data=t.contiguous().numpy())
            ds.attrs["kind"] = "tensor"
            ds.attrs["dtype"] = str(t.dtype).replace("torch.", "")


def time_cpp(binary, mode, ckpt, inputs, reps):
    out = subprocess.run([binary, mode, ckpt, inputs, str(reps)], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["median_ms"], r["min_ms"], r["threads"]


def load(model_dir, attn):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                               attn_implementation=attn).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--binary", default=os.path.join(here, "..", "build", "bench", "qvl_bench_vision"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # --- tiny: the whole tower -------------------------------------------------------------------
        tiny = os.path.join(here, "..", "weights", "tiny")
        proc = rr.image_processor_for(tiny)
        pp = proc(images=[rr.synthetic_image(112, 84, 0)], return_tensors="pt")
        pv, grid = pp["pixel_values"], pp["image_grid_thw"]
        save_inputs(os.path.join(tmp, "tiny.h5"), pixel_values=pv, grid_thw=grid)
        for attn in ("eager", "sdpa"):
            visual = load(tiny, attn).model.visual
            med, mn = time_ms(lambda: visual(pv, grid_thw=grid), a.reps)
            rows.append(("tiny tower 112x84", f"transformers {attn}", med, mn))
        med, mn, threads = time_cpp(a.binary, "tower", tiny, os.path.join(tmp, "tiny.h5"), a.reps)
        rows.append(("tiny tower 112x84", "qvl functional", med, mn))

        # --- real: one block at the real sizes on the 448x448 grid -------------------------------------
        cfg = json.loads(json.dumps(rr.TINY_CONFIG))
        cfg["vision_config"].update(rr.PRESETS["vision-real"]["vision_config"])
        cfg["vision_config"]["depth"] = 1
        cfg["vision_config"]["fullatt_block_indexes"] = []
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg)).eval()
        rr.randomize_weights(model, 0)
        real = os.path.join(tmp, "real")
        model.save_pretrained(real)
        vc = model.config.vision_config
        grid = torch.tensor([[1, 32, 32]])
        pos = get_vision_position_ids(grid, vc.spatial_merge_size)
        win, cu_win = get_vision_window_index(grid, vc.spatial_merge_size, vc.window_size, vc.patch_size)
        cu_full = get_vision_cu_seqlens(grid)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1024, vc.hidden_size, generator=g)
        with torch.no_grad():
            cos, sin = model.model.visual.rotary_pos_emb(x, pos)
        for name, cu in (("windowed", cu_win), ("full", cu_full)):
            inputs = os.path.join(tmp, f"block_{name}.h5")
            save_inputs(inputs, x=x, cu_seqlens=cu, cos=cos, sin=sin)
            for attn in ("eager", "sdpa"):
                blk = load(real, attn).model.visual.blocks[0]
                med, mn = time_ms(lambda: blk(x, cu_seqlens=cu, position_embeddings=(cos, sin)), a.reps)
                rows.append((f"real block 448x448 {name}", f"transformers {attn}", med, mn))
            med, mn, _ = time_cpp(a.binary, "block", real, inputs, a.reps)
            rows.append((f"real block 448x448 {name}", "qvl functional", med, mn))

    print(f"vision benchmark: float32, CPU, {torch.get_num_threads()} torch threads (qvl: {threads}), "
          f"median of {a.reps} after 3 warm-ups; torch {torch.__version__}")
    print(f"{'case':28} {'implementation':22} {'median ms':>10} {'min ms':>9} {'speed vs HF eager':>18}")
    base = {}
    for case, impl, med, mn in rows:
        if impl == "transformers eager":
            base[case] = med
    for case, impl, med, mn in rows:
        print(f"{case:28} {impl:22} {med:10.3f} {mn:9.3f} {base[case] / med:17.2f}x")


if __name__ == "__main__":
    main()
