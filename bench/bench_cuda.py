#!/usr/bin/env python3
"""GPU benchmark: the fused CUDA paths (functional/cuda) against transformers on the same GPU and shapes, in
one run. Needs a CUDA device (exits 77, "no CUDA device", without one).

  1. RoPE, 7B text layer: q 28 heads, k 4 heads of 128, 8192 tokens, bf16, M-RoPE section [16, 24, 24].
  2. RoPE, a vision layer: 16 heads of 80, 12960 patches (a 90 x 144 grid), bf16, the 2-D rotary.
     qvl (qvl_bench_cuda): the fused kernel with angles from positions or from float32 tables, in place and
     out of place; the plain ATen path; a device-to-device copy of the q+k bytes (the bandwidth yardstick).
     transformers, eager: Qwen2_5_VLRotaryEmbedding + apply_rotary_pos_emb (5.x's split of 4.x's
     apply_multimodal_rotary_pos_emb) and apply_rotary_pos_emb alone; vision: the vision rotary +
     apply_rotary_pos_emb_vision, and the apply alone. q/k are views of one projection as in HF's forward.
     Effective bandwidth = compulsory bytes (q and k read and written once, plus the angle inputs) / time;
     reported as a percent of the copy measured in the same run and of 3.35 TB/s (H100 SXM HBM3 peak).
     "x HF" compares like with like: positions rows against HF's rotary + apply, table rows against HF's apply.
  3. RMSNorm [12960, 1280] bf16: fused, plain ATen, transformers' Qwen2RMSNorm.
  4. The vision tower on a 1920x1080 image at the real sizes (32 blocks of 1280, 16 heads of 80, window 112,
     full attention in blocks 7/15/23/31), random weights, bf16: qvl fused and plain vs transformers sdpa.
Timing on both sides: wall clock between CUDA synchronisations around a batch of calls; medians of REPS.

  python bench/bench_cuda.py [--reps N] [--binary build/bench/qvl_bench_cuda] [--skip-tower]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import h5py
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "recordings"))
import record_reference as rr  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf  # noqa: E402
from transformers.vision_utils import get_vision_position_ids  # noqa: E402

HBM_PEAK = 3.35e12  # bytes/s, H100 SXM
DEV = "cuda"


def gpu_us(fn, reps, inner=10, warmup=3):
    """Median microseconds of one call: `inner` calls between two synchronisations per sample."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            torch.cuda.synchronize()
            samples.append((time.perf_counter() - t0) * 1e6 / inner)
    return statistics.median(samples)


def cpp(binary, *args):
    out = subprocess.run([binary, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def config(out_hidden=64):
    cfg = json.loads(json.dumps(rr.TINY_CONFIG))
    cfg.update({"hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
                "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}})
    cfg["vision_config"].update({"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                                 "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                                 "out_hidden_size": out_hidden})
    return Qwen2_5_VLConfig(**cfg)


def print_rope(title, r, hf_full_us, hf_apply_us):
    copy = next(x for x in r["rows"] if x["name"].startswith("device-to-device"))
    copy_bw = copy["bytes"] / (copy["us"] * 1e-6)
    print(f"\n{title}\n  device: {r['device']}; copy bandwidth {copy_bw / 1e9:.0f} GB/s")
    print(f"  {'implementation':42} {'us':>9} {'GB/s':>7} {'% copy':>7} {'% 3.35TB/s':>10} {'x HF':>7}")
    for x in r["rows"]:
        bw = x["bytes"] / (x["us"] * 1e-6)
        base = hf_full_us if "positions" in x["name"] else hf_apply_us if "copy" not in x["name"] else None
        speed = f"{base / x['us']:7.1f}" if base else f"{'-':>7}"
        print(f"  qvl {x['name']:38} {x['us']:9.1f} {bw / 1e9:7.0f} {100 * bw / copy_bw:6.1f}% {100 * bw / HBM_PEAK:9.1f}% {speed}")
    print(f"  {'transformers eager: rotary + apply':42} {hf_full_us:9.1f}")
    print(f"  {'transformers eager: apply only':42} {hf_apply_us:9.1f}")


def bench_rope_text(a, cfg):
    T, Hq, Hkv, Dh, dt = 8192, 28, 4, 128, torch.bfloat16
    tc = cfg.text_config
    rot = hf.Qwen2_5_VLRotaryEmbedding(tc).to(DEV)
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.empty(1, T, tc.hidden_size, dtype=dt, device=DEV)  # supplies dtype and device only
    pos = torch.randint(0, T, (3, 1, T), device=DEV, generator=g)
    # q_proj(x).view(B, T, -1, Dh).transpose(1, 2), likewise k
    q = torch.randn(1, T, Hq, Dh, dtype=dt, device=DEV, generator=g).transpose(1, 2)
    k = torch.randn(1, T, Hkv, Dh, dtype=dt, device=DEV, generator=g).transpose(1, 2)
    cos, sin = rot(x, pos)
    hf_full = gpu_us(lambda: hf.apply_rotary_pos_emb(q, k, *rot(x, pos)), a.reps)
    hf_apply = gpu_us(lambda: hf.apply_rotary_pos_emb(q, k, cos, sin), a.reps)
    r = cpp(a.binary, "rope", "text", 1, T, Hq, Hkv, Dh, "bf16", a.reps)
    print_rope(f"RoPE, 7B text layer: {T} tokens, q {Hq} + k {Hkv} heads x {Dh}, bf16", r, hf_full, hf_apply)


def bench_rope_vision(a, cfg):
    S, H, Dh, dt = 12960, 16, 80, torch.bfloat16
    vrot = hf.Qwen2_5_VLVisionRotaryEmbedding(cfg.vision_config).to(DEV)
    pos = get_vision_position_ids(torch.tensor([[1, 90, 144]]), 2).to(DEV)  # 12960 patches
    g = torch.Generator(device=DEV).manual_seed(1)
    # qkv(x).reshape(S, 3, H, -1).permute(1, 0, 2, 3).unbind(0)
    qkv = torch.randn(S, 3 * H * Dh, dtype=dt, device=DEV, generator=g).reshape(S, 3, H, -1).permute(1, 0, 2, 3)
    q, k, _ = qkv.unbind(0)
    cos, sin = vrot(qkv, pos)
    hf_full = gpu_us(lambda: hf.apply_rotary_pos_emb_vision(q, k, *vrot(qkv, pos)), a.reps)
    hf_apply = gpu_us(lambda: hf.apply_rotary_pos_emb_vision(q, k, cos, sin), a.reps)
    r = cpp(a.binary, "rope", "vision", S, H, Dh, "bf16", a.reps)
    print_rope(f"RoPE, vision layer: {S} patches, {H} heads x {Dh}, bf16", r, hf_full, hf_apply)


def bench_rmsnorm(a):
    R, D, dt = 12960, 1280, torch.bfloat16
    norm = hf.Qwen2_5_VLRMSNorm(D, eps=1e-6).to(DEV, dt)
    xs = torch.randn(R, D, dtype=dt, device=DEV)
    hf_us = gpu_us(lambda: norm(xs), a.reps)
    r = cpp(a.binary, "rmsnorm", R, D, "bf16", a.reps)
    print(f"\nRMSNorm [{R}, {D}] bf16 ({r['device']})")
    print(f"  {'implementation':24} {'us':>9} {'GB/s':>7} {'x HF':>7}")
    for x in r["rows"]:
        print(f"  qvl {x['name']:20} {x['us']:9.1f} {x['bytes'] / x['us'] / 1e3:7.0f} {hf_us / x['us']:7.1f}")
    print(f"  {'transformers eager':24} {hf_us:9.1f}")


def bench_tower(a, cfg):
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
        rr.randomize_weights(model, 0)
        ckpt = os.path.join(tmp, "ckpt")
        model.to(torch.bfloat16).save_pretrained(ckpt)
        del model
        proc = rr.image_processor_for(ckpt)
        pp = proc(images=[rr.synthetic_image(1080, 1920, 0)], return_tensors="pt")
        pv, grid = pp["pixel_values"], pp["image_grid_thw"]
        inputs = os.path.join(tmp, "tower.h5")
        with h5py.File(inputs, "w") as f:
            for name, t in (("pixel_values", pv), ("grid_thw", grid)):
                ds = f.create_dataset(name, data=t.contiguous().numpy())
                ds.attrs["kind"] = "tensor"
                ds.attrs["dtype"] = str(t.dtype).replace("torch.", "")
        visual = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            ckpt, dtype=torch.bfloat16, attn_implementation="sdpa").model.visual.to(DEV).eval()
        pv_d, grid_d = pv.to(DEV, torch.bfloat16), grid.to(DEV)
        hf_ms = gpu_us(lambda: visual(pv_d, grid_thw=grid_d), max(3, a.reps // 4), inner=1) / 1e3
        del visual
        torch.cuda.empty_cache()
        r = cpp(a.binary, "tower", ckpt, inputs, max(3, a.reps // 4))
    print(f"\nVision tower, 1920x1080 image -> grid {tuple(grid[0].tolist())} = {r['patches']} patches, bf16 ({r['device']})")
    print(f"  {'implementation':28} {'ms':>9} {'x transformers sdpa':>20}")
    for x in r["rows"]:
        print(f"  {x['name']:28} {x['us'] / 1e3:9.2f} {hf_ms / (x['us'] / 1e3):20.2f}")
    print(f"  {'transformers sdpa':28} {hf_ms:9.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--binary", default=os.path.join(here, "..", "build", "bench", "qvl_bench_cuda"))
    ap.add_argument("--skip-tower", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device (torch.cuda.is_available() is False); nothing was measured")
        sys.exit(77)
    print(f"GPU benchmark: torch {torch.__version__}, {torch.cuda.get_device_name(0)}, medians of {a.reps}")
    cfg = config(out_hidden=3584)
    bench_rope_text(a, cfg)
    bench_rope_vision(a, cfg)
    bench_rmsnorm(a)
    if not a.skip_tower:
        bench_tower(a, cfg)
    print("\ngoals: RoPE >= 80% of 3.35 TB/s and >= 15x HF eager; vision tower >= 2x transformers sdpa")


if __name__ == "__main__":
    main()
