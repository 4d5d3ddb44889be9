#!/usr/bin/env python3
"""Vision benchmark: transformers vs qvl on the same CPU, config, weights and inputs, in one run.

  1. tiny: the whole vision tower of the tiny model (weights/tiny) on the 112x84 image;
  2. real: one vision block at the real sizes (hidden 1280, 16 heads of 80, intermediate 3420) on the
     448x448 grid (1024 patches), windowed (16 windows of 64) and full (one segment of 1024).
qvl runs as a server (qvl_bench_vision ... serve) and the two sides alternate call by call (A B A B ...), so a
change in the machine's load falls on both calls of a pair; the table gives the median of the per-pair speed
ratios with their min-max. Both use torch's default intra-op thread count on this machine (reported). transformers runs eager attention in float32, the
implementation qvl mirrors; sdpa is timed too for reference.

  python bench/bench_vision.py [--pairs N] [--binary build/bench/qvl_bench_vision]
"""
import argparse
import json
import os
import sys
import tempfile

import h5py
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "recordings"))
import record_reference as rr  # noqa: E402
from timing import Server, interleaved, machine_line, passive_openmp  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index  # noqa: E402


def save_inputs(path, **tensors):
    with h5py.File(path, "w") as f:
        for k, t in tensors.items():
            ds = f.create_dataset(k, data=t.contiguous().numpy())
            ds.attrs["kind"] = "tensor"
            ds.attrs["dtype"] = str(t.dtype).replace("torch.", "")


def load(model_dir, attn):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                               attn_implementation=attn).eval()


def main():
    passive_openmp()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20, help="interleaved (transformers, qvl) pairs per case")
    ap.add_argument("--binary", default=os.path.join(here, "..", "build", "bench", "qvl_bench_vision"))
    a = ap.parse_args()
    rows = []

    def against(case, mode, ckpt, inputs, hf_fns):
        """qvl in serve mode, interleaved pair by pair with each transformers implementation."""
        server = Server([a.binary, mode, ckpt, inputs, "serve"])
        try:
            for attn, fn in hf_fns:
                rows.append((case, attn, interleaved(fn, server.time_ms, a.pairs)))
        finally:
            server.close()

    with tempfile.TemporaryDirectory() as tmp:
        # --- tiny: the whole tower -------------------------------------------------------------------
        tiny = os.path.join(here, "..", "weights", "tiny")
        proc = rr.image_processor_for(tiny)
        pp = proc(images=[rr.synthetic_image(112, 84, 0)], return_tensors="pt")
        pv, grid = pp["pixel_values"], pp["image_grid_thw"]
        save_inputs(os.path.join(tmp, "tiny.h5"), pixel_values=pv, grid_thw=grid)
        towers = {attn: load(tiny, attn).model.visual for attn in ("eager", "sdpa")}
        against("tiny tower 112x84", "tower", tiny, os.path.join(tmp, "tiny.h5"),
                [(attn, (lambda v: lambda: v(pv, grid_thw=grid))(v)) for attn, v in towers.items()])

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
        blocks = {attn: load(real, attn).model.visual.blocks[0] for attn in ("eager", "sdpa")}
        for name, cu in (("windowed", cu_win), ("full", cu_full)):
            inputs = os.path.join(tmp, f"block_{name}.h5")
            save_inputs(inputs, x=x, cu_seqlens=cu, cos=cos, sin=sin)
            against(f"real block 448x448 {name}", "block", real, inputs,
                    [(attn, (lambda b, cu: lambda: b(x, cu_seqlens=cu, position_embeddings=(cos, sin)))(b, cu))
                     for attn, b in blocks.items()])

    print(f"vision benchmark: float32; {machine_line()} (qvl: the same default); torch {torch.__version__}")
    print(f"each case: {a.pairs} interleaved pairs (transformers call, qvl call) after 3 warm-ups on each side; "
          "speed = transformers ms / qvl ms per pair")
    print(f"{'case':28} {'against':16} {'HF median ms':>12} {'qvl median ms':>13} {'speed median':>12} {'min-max':>13}")
    for case, attn, r in rows:
        print(f"{case:28} {'transformers ' + attn:16} {r['ref_ms']:12.3f} {r['ours_ms']:13.3f} {r['ratio']:11.2f}x "
              f"{r['ratio_min']:5.2f}-{r['ratio_max']:.2f}x")


if __name__ == "__main__":
    main()
