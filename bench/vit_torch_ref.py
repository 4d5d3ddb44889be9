#!/usr/bin/env python3
"""The reference a user would pick instead of qvl for the ViT experiments: the same ViT (patch 4, width 64,
one head of 64, depth 6, MLP x2, class token, axial RoPE theta 100 in complex form, as RoPE-ViT's
compute_axial_cis/apply_rotary_emb) in plain PyTorch eager, trained with the same protocol as
`qvl vit train` (AdamW 0.05 on matrices, one-cycle lr 4e-3, batch 64, ±2-pixel shifts over the first half
of the steps, no flips) on the
same Fashion-MNIST files. Prints train and eval images/s in the format bench/bench_vit.py parses.

  python bench/vit_torch_ref.py --threads 2 --max-steps 100 [--data /usr/share/datasets/fashion-mnist]
"""
import argparse
import gzip
import math
import os
import struct
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        b = f.read()
    magic = struct.unpack(">I", b[:4])[0]
    nd = magic & 0xFF
    dims = struct.unpack(">" + "I" * nd, b[4:4 + 4 * nd])
    return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def axial_angles(dim, end, theta=100.0, scale=1.0):
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end * end, dtype=torch.float32)
    tx, ty = (t % end) * scale, torch.div(t, end, rounding_mode="floor") * scale
    return torch.cat([torch.outer(tx, freqs), torch.outer(ty, freqs)], -1)


def apply_rope(x, cis):
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * cis).flatten(-2).type_as(x)


class Block(nn.Module):
    def __init__(self, w, heads, mlp):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(w, eps=1e-6)
        self.qkv = nn.Linear(w, 3 * w)
        self.proj = nn.Linear(w, w)
        self.norm2 = nn.LayerNorm(w, eps=1e-6)
        self.fc1 = nn.Linear(w, mlp * w)
        self.fc2 = nn.Linear(mlp * w, w)

    def forward(self, x, cis):
        B, T, W = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, T, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        q = torch.cat([q[:, :, :1], apply_rope(q[:, :, 1:], cis)], 2)
        k = torch.cat([k[:, :, :1], apply_rope(k[:, :, 1:], cis)], 2)
        o = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(o.transpose(1, 2).reshape(B, T, W))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, patch=4, w=64, depth=6, heads=1, mlp=2, classes=10):
        super().__init__()
        self.patch, self.w = patch, w
        self.embed = nn.Linear(patch * patch, w)
        self.cls = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.blocks = nn.ModuleList([Block(w, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(w, eps=1e-6)
        self.head = nn.Linear(w, classes)
        self.hd = w // heads
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, img, cis):
        B, C, H, W = img.shape
        p = self.patch
        x = img.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * p * p)
        x = torch.cat([self.cls.expand(B, -1, -1), self.embed(x)], 1)
        for b in self.blocks:
            x = b(x, cis)
        return self.head(self.norm(x)[:, 0])


def augment(u8, gen, shift=2, flip=False):
    B, _, H, W = u8.shape
    off = torch.randint(-shift, shift + 1, (B, 2), generator=gen)
    padded = F.pad(u8, (shift, shift, shift, shift))
    out = torch.empty_like(u8)
    for i in range(B):
        dy, dx = int(off[i, 0]), int(off[i, 1])
        out[i] = padded[i, :, shift + dy:shift + dy + H, shift + dx:shift + dx + W]
    if not flip:
        return out
    f = torch.rand(B, generator=gen) < 0.5
    return torch.where(f.view(B, 1, 1, 1), out.flip(3), out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-batch", type=int, default=500)
    ap.add_argument("--shift", type=int, default=2, help="random shift in pixels (qvl: --shift)")
    ap.add_argument("--shift-until", type=float, default=0.5, help="fraction of the steps that get the shift (qvl: --shift-until)")
    ap.add_argument("--flip", action="store_true", help="random horizontal flips (qvl: --flip true)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr = torch.from_numpy(read_idx(os.path.join(a.data, "train-images-idx3-ubyte.gz")).copy()).unsqueeze(1)
    ytr = torch.from_numpy(read_idx(os.path.join(a.data, "train-labels-idx1-ubyte.gz")).copy()).long()
    xte = torch.from_numpy(read_idx(os.path.join(a.data, "t10k-images-idx3-ubyte.gz")).copy()).unsqueeze(1)
    yte = torch.from_numpy(read_idx(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz")).copy()).long()
    model = ViT()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "cls"]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "cls")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=a.lr)
    per_epoch = len(ytr) // a.batch
    total = per_epoch * a.epochs if a.max_steps <= 0 else min(per_epoch * a.epochs, a.max_steps)
    warm = max(1, round(0.1 * total))
    shift_steps = int(a.shift_until * total + 0.5)  # steps [0, shift_steps) are shifted, as in qvl's vit/train.cpp

    def lr_at(s):
        if s < warm:
            return a.lr / 25 + (a.lr - a.lr / 25) * s / warm
        t = (s - warm) / max(1, total - warm)
        return a.lr * 0.5 * (1 + math.cos(math.pi * t)) + a.lr / 1e4 * 0.5 * (1 - math.cos(math.pi * t))

    cis = torch.polar(torch.ones(49, 32), axial_angles(64, 7))
    gen = torch.Generator().manual_seed(a.seed)
    step, t0 = 0, time.perf_counter()
    model.train()
    while step < total:
        perm = torch.randperm(len(ytr), generator=gen)
        for s in range(per_epoch):
            if step >= total:
                break
            idx = perm[s * a.batch:(s + 1) * a.batch]
            x = augment(xtr[idx], gen, shift=a.shift if step < shift_steps else 0, flip=a.flip).float().div_(127.5).sub_(1.0)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad()
            loss = F.cross_entropy(model(x, cis), ytr[idx])
            loss.backward()
            opt.step()
            step += 1
    train_s = time.perf_counter() - t0
    print(f"trained {step} steps in {train_s:.1f} s: {step * a.batch / train_s:.0f} images/s, final loss {loss.item():.4f}")
    model.eval()
    correct, t0 = 0, time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(yte), a.eval_batch):
            x = xte[s:s + a.eval_batch].float().div_(127.5).sub_(1.0)
            correct += (model(x, cis).argmax(1) == yte[s:s + a.eval_batch]).sum().item()
    ev = time.perf_counter() - t0
    print(f"test 28px (extend): top-1 {100 * correct / len(yte):.2f}%, loss 0, {len(yte) / ev:.0f} images/s")


if __name__ == "__main__":
    main()
