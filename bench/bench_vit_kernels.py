#!/usr/bin/env python3
"""The two size-based kernel choices inside the ViT, timed with the ATen kernels qvl calls (through torch):

1. attention (vit::attend): explicit matmul-softmax-matmul against torch's scaled_dot_product_attention, at
   the token counts of the test grids (20..56 px with patch 4, plus the class token), forward at the
   evaluation batch and forward+backward at the training batch;
2. the block applier (rope::apply_block_rope) at a ViT's sizes: the broadcast b x b products against one GEMM
   per position with the block-diagonal matrix, forward+backward, for b = 2..6 (D = 64, partial rotary).

Each pair of forms runs interleaved (A B A B ...) --rounds times; the script prints the CPU model and, per
case, the median time of each form and the median of the per-round ratios.

  python bench/bench_vit_kernels.py --threads 1 --rounds 5
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from timing import cpu_model


def timed(f, reps):
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps * 1e3


def compare(name, a, b, rounds, reps):
    a(), b()  # warm-up
    ta, tb, r = [], [], []
    for _ in range(rounds):
        x, y = timed(a, reps), timed(b, reps)
        ta.append(x)
        tb.append(y)
        r.append(y / x)
    print(f"| {name} | {statistics.median(ta):.2f} | {statistics.median(tb):.2f} | {statistics.median(r):.2f}x "
          f"({min(r):.2f}-{max(r):.2f}) |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    D = 64
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {a.threads} thread(s); {a.rounds} interleaved rounds")

    def explicit(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / D ** 0.5, -1) @ v

    print("\n| attention case | explicit ms | sdpa ms | sdpa / explicit, median (min-max) |\n|---|---|---|---|")
    with torch.no_grad():
        for T in (26, 50, 65, 82, 122, 197):
            q, k, v = (torch.randn(500, 1, T, D) for _ in range(3))
            compare(f"forward, batch 500, {T} tokens", lambda: explicit(q, k, v),
                    lambda: F.scaled_dot_product_attention(q, k, v), a.rounds, 5)
    for T in (50, 82):
        q, k, v = (torch.randn(64, 1, T, D, requires_grad=True) for _ in range(3))
        g = torch.randn(64, 1, T, D)
        compare(f"forward+backward, batch 64, {T} tokens", lambda: explicit(q, k, v).backward(g),
                lambda: F.scaled_dot_product_attention(q, k, v).backward(g), a.rounds, 20)

    print("\n| block applier, batch 64, 49 positions, D 64 | per-position GEMM ms | broadcast ms | broadcast / GEMM |\n|---|---|---|---|")
    B, M = 64, 49
    for b in (2, 3, 4, 5, 6):
        nb = 2 * (D // (2 * b))
        rot = nb * b
        blocks = torch.linalg.matrix_exp(torch.randn(M, nb, b, b) * 0.3)
        x = torch.randn(B, 1, M, D, requires_grad=True)
        g = torch.randn(B, 1, M, rot)

        def broadcast():
            torch.matmul(blocks, x[..., :rot].reshape(B, 1, M, nb, b, 1)).reshape(B, 1, M, rot).backward(g)

        def gemm():
            dense = (blocks.unsqueeze(-2) * torch.eye(nb).view(nb, 1, nb, 1)).reshape(M, rot, rot)
            xm = x[..., :rot].reshape(B, M, rot).transpose(0, 1)
            torch.matmul(xm, dense.transpose(-1, -2)).transpose(0, 1).reshape(B, 1, M, rot).backward(g)

        compare(f"b = {b} ({rot} of 64 channels), forward+backward", gemm, broadcast, a.rounds, 20)


if __name__ == "__main__":
    main()
