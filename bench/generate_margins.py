#!/usr/bin/env python3
"""How close transformers' greedy choices come to a tie, per recording that carries a generate (the
`Generate.*` golden tests compare our token ids with those exactly, and an argmax can flip on another CPU
only where the first and second logits are within the CPU's float32 rounding of each other).

For each float32 recording with a `generation` scenario it reruns transformers' greedy generate on the
recording's inputs (the pinned transformers, the model folder named by the recording with the config the
recording holds), checks that the tokens
equal the recorded ones, and prints the smallest gap between the largest and the second-largest logit over
every step and row, also relative to the largest |logit| of that step. A measurement, not a test.

  py bench/generate_margins.py recordings/tiny_fp32.h5 build/recordings/*_fp32.h5
"""
import argparse
import json
import os
import sys

import h5py
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "recordings"))
import record_reference as rr  # noqa: E402

INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw", "pixel_values_videos",
          "video_grid_thw", "second_per_grid_ts")


def model_folder(name):
    for d in (os.path.join(ROOT, "weights", name), os.path.join(ROOT, "build", "weights", name)):
        if os.path.isfile(os.path.join(d, "config.json")):
            return d
    sys.exit(f"no model folder '{name}' under weights/ or build/weights/ (build target qvl_recordings)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recordings", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"ATen capability {torch.backends.cpu.get_cpu_capability()}")
    worst = None
    for path in args.recordings:
        with h5py.File(path, "r") as f:
            gen = json.loads(f.attrs["scenario"]).get("generation")
            if not gen or f.attrs["dtype"] != "float32":
                continue
            calls = f["calls"]
            top = calls[sorted(calls.keys())[0]]["inputs"]
            kwargs = {k: torch.from_numpy(top[k][()]) for k in INPUTS if k in top}
            model_name = f.attrs["model_dir"]
            config = json.loads(f.attrs["config"])  # as recorded: a scenario may change the folder's config
        from transformers import Qwen2_5_VLConfig
        model = rr.Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model_folder(model_name), config=Qwen2_5_VLConfig.from_dict(config), dtype=torch.float32,
            attn_implementation="eager").eval()
        with torch.no_grad():
            out = model.generate(**kwargs, max_new_tokens=gen["max_new_tokens"], do_sample=False, use_cache=True,
                                 output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[:, kwargs["input_ids"].shape[1]:].tolist()
        same = tokens == gen["new_tokens"]
        gap, rel = float("inf"), float("inf")
        for step in out.logits:  # [B, V] per step
            top2 = step.double().topk(2, dim=-1).values
            g = top2[:, 0] - top2[:, 1]
            r = g / step.double().abs().max(dim=-1).values
            gap, rel = min(gap, float(g.min())), min(rel, float(r.min()))
        print(f"{os.path.basename(path)}: {len(out.logits)} steps x {len(tokens)} rows, tokens "
              f"{'equal the recorded ones' if same else 'DIFFER from the recorded ones'}; smallest top-1/top-2 gap "
              f"{gap:.3e} ({rel:.3e} of the step's largest |logit|)")
        worst = rel if worst is None else min(worst, rel)
    if worst is not None:
        print(f"smallest relative gap over all: {worst:.3e} (float32 rounding is ~6e-8 relative per operation)")


if __name__ == "__main__":
    main()
