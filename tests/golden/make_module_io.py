#!/usr/bin/env python3
"""Test helper: writes the conversion framework's `module_io_data` layout from the tiny model, through forward
hooks that save exactly what that framework's @instrument decorator saves, in its layout:

  <out>/module_io_data/<Module>_<YYYYmmdd_HHMMSS>/metadata.json   {module, class, timestamp, settings,
                                                                   inputs: {args, kwargs}, outputs}
                                                 inputs/arg_<i>.pt, inputs/kwarg_<name>.pt, outputs/output[_<i>].pt
                                                 setting_<attr>.pt (tensor attributes of modules without a config)
  <out>/weights/vision_weights.pt   the vision tower's state dict as a dict of dicts (blocks -> '0' -> norm1 -> weight)

Paths inside metadata.json are relative to <out> (the framework's working directory), as the framework writes them.

--clock decides the folder names' seconds: `distinct` gives every call its own second (no collision), `shared`
puts every call of the forward pass in one second (the framework's collision: a module's later calls overwrite
its earlier ones in the same folder).

--legacy-rotary adds the two vision-rotary calls of transformers 4.49, which the framework recorded and the
pinned transformers no longer has (see legacy_rotary_calls).

Usage: make_module_io.py --model weights/tiny --out DIR [--clock distinct|shared] [--image synthetic:112x84]
                         [--legacy-rotary]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "recordings"))
import record_reference as rr  # noqa: E402

# The modules the framework instruments (its model.py decorates their forwards), by transformers 5.x class name.
INSTRUMENTED = {
    "Qwen2_5_VLRMSNorm", "Qwen2_5_VLMLP", "Qwen2MLP", "Qwen2_5_VisionPatchEmbed", "Qwen2_5_VLVisionRotaryEmbedding",
    "Qwen2_5_VLVisionAttention", "Qwen2_5_VLVisionBlock", "Qwen2_5_VLPatchMerger",
    "Qwen2_5_VisionTransformerPretrainedModel", "Qwen2_5_VLDecoderLayer", "Qwen2_5_VLAttention",
    "Qwen2_5_VLRotaryEmbedding", "Qwen2_5_VLTextModel",
}


def save_tensor_data(value, save_dir, name, rel_dir):
    """The framework's rule: a tensor -> <name>.pt and an entry; a list/tuple -> recursion with _<i>; else str()."""
    if isinstance(value, torch.Tensor):
        torch.save(value.detach().cpu(), os.path.join(save_dir, f"{name}.pt"))
        return {"type": "tensor", "shape": list(value.shape), "dtype": str(value.dtype),
                "path": os.path.join(rel_dir, f"{name}.pt")}
    if isinstance(value, (list, tuple)):
        return [save_tensor_data(v, save_dir, f"{name}_{i}", rel_dir) for i, v in enumerate(value)]
    return str(value)


class Clock:
    def __init__(self, mode):
        self.mode = mode
        self.t = datetime.datetime(2025, 3, 1, 12, 0, 0)

    def folder_stamp(self):
        stamp = self.t.strftime("%Y%m%d_%H%M%S")
        if self.mode == "distinct":
            self.t += datetime.timedelta(seconds=1)
        return stamp


def install(model, out_root, clock):
    io_root = os.path.join(out_root, "module_io_data")
    os.makedirs(io_root, exist_ok=True)
    handles = []

    def hook(module):
        name = type(module).__name__
        pending = []

        def pre(mod, args, kwargs):
            run = f"{name}_{clock.folder_stamp()}"
            run_dir = os.path.join(io_root, run)
            rel = os.path.join("module_io_data", run)
            os.makedirs(os.path.join(run_dir, "inputs"), exist_ok=True)
            os.makedirs(os.path.join(run_dir, "outputs"), exist_ok=True)
            settings = {}
            if hasattr(mod, "config"):
                settings = mod.config.to_dict()
            else:
                for attr in dir(mod):
                    if attr.startswith("_"):
                        continue
                    try:
                        val = getattr(mod, attr)
                    except Exception as e:  # noqa: BLE001 - as the framework does
                        settings[attr] = str(e)
                        continue
                    if callable(val):
                        continue
                    settings[attr] = (save_tensor_data(val, run_dir, f"setting_{attr}", rel)
                                      if isinstance(val, torch.Tensor) else str(val))
            inputs = {
                "args": [save_tensor_data(a, os.path.join(run_dir, "inputs"), f"arg_{i}", os.path.join(rel, "inputs"))
                         for i, a in enumerate(args)],
                "kwargs": {k: save_tensor_data(v, os.path.join(run_dir, "inputs"), f"kwarg_{k}", os.path.join(rel, "inputs"))
                           for k, v in kwargs.items()},
            }
            pending.append((run_dir, rel, settings, inputs))

        def post(mod, args, kwargs, output):
            run_dir, rel, settings, inputs = pending.pop()
            odir, orel = os.path.join(run_dir, "outputs"), os.path.join(rel, "outputs")
            if isinstance(output, torch.Tensor):
                out = save_tensor_data(output, odir, "output", orel)
            elif isinstance(output, (list, tuple)):
                out = [save_tensor_data(o, odir, f"output_{i}", orel) for i, o in enumerate(output)]
            else:
                out = str(output)
            meta = {"module": name, "class": type(mod).__name__, "timestamp": clock.t.isoformat(),
                    "settings": settings, "inputs": inputs, "outputs": out}
            with open(os.path.join(run_dir, "metadata.json"), "w") as f:
                json.dump(meta, f, indent=2)

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))

    for _, m in model.named_modules():
        if type(m).__name__ in INSTRUMENTED:
            hook(m)
    return handles


def legacy_rotary_calls(model, grid_thw):
    """transformers 4.49's forms of the vision rotary, as (folder module name, args, output):
    Qwen2_5_VisionRotaryEmbedding.forward(seqlen) returns outer(arange(seqlen), inv_freq), and the tower's
    rot_pos_emb(grid_thw) returns that table at max(h, w) gathered at each patch's (h, w) and flattened. The
    values come from the pinned model: its rotary module's inv_freq buffer, transformers' get_vision_position_ids
    and the expression its rotary forward uses for the angles (position_ids[..., None].float() * inv_freq.float())."""
    from transformers.vision_utils import get_vision_position_ids
    vis = model.model.visual
    inv_freq = vis.rotary_pos_emb.inv_freq.float()
    seqlen = int(grid_thw[:, 1:].max())
    table = torch.arange(seqlen)[:, None].float() * inv_freq
    pos = get_vision_position_ids(grid_thw, vis.spatial_merge_size)
    return [("Qwen2_5_VisionRotaryEmbedding", [seqlen], table),
            ("Qwen2_5_VisionTransformerPretrainedModel_rot_pos_emb", [grid_thw], table[pos].flatten(1))]


def write_call(out_root, clock, name, args, output):
    """One call folder written directly (a call no hook sees), by the same rules as the hooks'."""
    run = f"{name}_{clock.folder_stamp()}"
    run_dir = os.path.join(out_root, "module_io_data", run)
    rel = os.path.join("module_io_data", run)
    for sub in ("inputs", "outputs"):
        os.makedirs(os.path.join(run_dir, sub), exist_ok=True)
    inputs = {"args": [save_tensor_data(a, os.path.join(run_dir, "inputs"), f"arg_{i}", os.path.join(rel, "inputs"))
                       for i, a in enumerate(args)], "kwargs": {}}
    out = save_tensor_data(output, os.path.join(run_dir, "outputs"), "output", os.path.join(rel, "outputs"))
    meta = {"module": name, "class": name.split("_rot_pos_emb")[0], "timestamp": clock.t.isoformat(), "settings": {},
            "inputs": inputs, "outputs": out}
    with open(os.path.join(run_dir, "metadata.json"), "w") as f:
        json.dump(meta, f, indent=2)


def nested(state):
    """convert.py's layout: keys split on '.' into a dict of dicts."""
    out = {}
    for k, v in state.items():
        d = out
        parts = k.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v.detach().clone()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clock", choices=["distinct", "shared"], default="distinct")
    ap.add_argument("--image", default="synthetic:112x84")
    ap.add_argument("--legacy-rotary", action="store_true",
                    help="also write transformers 4.49's vision rotary calls (forward(seqlen) and rot_pos_emb)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = rr.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager").eval()
    cfg = model.config
    proc = rr.image_processor_for(args.model)
    pp = proc(images=[rr.load_image(args.image, 0)], return_tensors="pt")
    n_tok = int(pp["image_grid_thw"][0].prod()) // (cfg.vision_config.spatial_merge_size ** 2)
    ids = rr.DEFAULT_TEXT_BEFORE + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_tok + \
        [cfg.vision_end_token_id] + rr.DEFAULT_TEXT_AFTER
    input_ids = torch.tensor([ids])
    mm = torch.zeros_like(input_ids, dtype=torch.int32)
    mm[input_ids == cfg.image_token_id] = 1
    os.makedirs(args.out, exist_ok=True)
    clock = Clock(args.clock)
    handles = install(model, args.out, clock)
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pp["pixel_values"],
              image_grid_thw=pp["image_grid_thw"], mm_token_type_ids=mm, use_cache=False)
    for h in handles:
        h.remove()
    if args.legacy_rotary:
        for name, call_args, output in legacy_rotary_calls(model, pp["image_grid_thw"]):
            write_call(args.out, clock, name, call_args, output)
    os.makedirs(os.path.join(args.out, "weights"), exist_ok=True)
    torch.save(nested(model.model.visual.state_dict()), os.path.join(args.out, "weights", "vision_weights.pt"))
    n = len(os.listdir(os.path.join(args.out, "module_io_data")))
    print(f"make_module_io: {n} call folders in {args.out}/module_io_data ({args.clock} clock)", file=sys.stderr)


if __name__ == "__main__":
    main()
