#!/usr/bin/env python3
"""Training speed per RoPE variant, one qvl binary against another (for example the build before a change),
run interleaved (A B A B ...) with the same threads, batch and steps. Each run trains --max-steps steps without
evaluation; the script prints the CPU model, every run's train images/s and, per variant, the median of the
per-pair ratios A / B.

  python bench/bench_vit_variants.py --binary build/qvl --baseline /path/to/old/qvl \
      --variants axial axial-matrix block:3 spiral:4 --pairs 2 --max-steps 150 --threads 1
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

from timing import cpu_model

here = os.path.dirname(os.path.abspath(__file__))


def train_rate(binary, variant, a, out):
    argv = [binary, "vit", "train", "--rope", variant, "--threads", str(a.threads), "--batch", str(a.batch),
            "--max-steps", str(a.max_steps), "--no-eval", "--no-progress", "-o", out]
    r = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(r"trained \d+ steps in [\d.]+ s: (\d+) images/s", r.stdout)
    if r.returncode != 0 or not m:
        sys.exit(f"{' '.join(argv)} failed:\n{r.stdout}{r.stderr}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(here, "..", "build", "qvl"), help="A: the build to measure")
    ap.add_argument("--baseline", required=True, help="B: the build to compare with")
    ap.add_argument("--variants", nargs="+", default=["axial", "axial-matrix", "mixed", "block:3", "block:6", "spiral:4"])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    for b in (a.binary, a.baseline):
        if not os.access(b, os.X_OK):
            sys.exit(f"'{b}': not an executable qvl binary")
    print(f"CPU: {cpu_model()}; threads {a.threads}; batch {a.batch}; {a.max_steps} training steps per run, no evaluation")
    print(f"A = {a.binary}\nB = {a.baseline}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "m.h5")
        for v in a.variants:
            ratios, ra, rb = [], [], []
            for i in range(a.pairs):
                x = train_rate(a.binary, v, a, out)
                y = train_rate(a.baseline, v, a, out)
                ra.append(x)
                rb.append(y)
                ratios.append(x / y)
                print(f"{v} pair {i + 1}: A {x:.0f} img/s, B {y:.0f} img/s, A/B {x / y:.3f}", flush=True)
            rows.append((v, statistics.median(ra), statistics.median(rb), statistics.median(ratios), min(ratios), max(ratios)))
    print("\n| variant | A train img/s | B train img/s | A / B, median (min-max) |\n|---|---|---|---|")
    for v, x, y, r, lo, hi in rows:
        print(f"| {v} | {x:.0f} | {y:.0f} | {r:.3f}x ({lo:.3f}-{hi:.3f}) |")


if __name__ == "__main__":
    main()
