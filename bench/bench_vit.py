#!/usr/bin/env python3
"""qvl vit train against the plain-PyTorch reference (bench/vit_torch_ref.py): the same model (axial RoPE),
batch, threads, data and training protocol, run interleaved (qvl, torch, qvl, torch, ...). Each run trains
--max-steps steps and then evaluates the 10,000 test images at 28px. Prints the CPU model, every run's
train and eval images/s, and the qvl / torch ratios (median of the pairs). qvl runs with its defaults, which
split each batch over --threads worker threads (--batch-threads); --unsplit adds a third side, qvl with
--batch-threads 1 (the whole batch on one thread team, as the torch side runs), interleaved with the others.

  python bench/bench_vit.py --binary build/qvl --pairs 3 --max-steps 60 --threads 2 [--unsplit]

With --side-by-side J it measures what `qvl vit sweep --jobs J --threads 1` buys instead: one qvl run with
--threads J against J single-threaded qvl runs started together (seeds 0..J-1), interleaved, and prints the
throughput ratio (images trained per second of wall time, all J runs together / the one run).

  python bench/bench_vit.py --binary build/qvl --pairs 3 --max-steps 200 --side-by-side 2
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from timing import cpu_model

here = os.path.dirname(os.path.abspath(__file__))


def parse(out):
    tr = re.search(r"trained \d+ steps in [\d.]+ s: (\d+) images/s", out)
    ev = re.search(r"test 28px \(extend\): top-1 [\d.]+%.*?(\d+) images/s", out)
    if not tr or not ev:
        sys.exit("could not parse:\n" + out)
    return float(tr.group(1)), float(ev.group(1))


def side_by_side(a):
    j = a.side_by_side
    print(f"CPU: {cpu_model()}; batch {a.batch}; {a.max_steps} training steps per run, no evaluation; "
          f"one run with --threads {j} against {j} one-thread runs side by side")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        def start(threads, seed):
            argv = [a.binary, "vit", "train", "--rope", "axial", "--threads", str(threads), "--batch", str(a.batch), "--seed", str(seed),
                    "--max-steps", str(a.max_steps), "--no-eval", "--no-progress", "-o", os.path.join(tmp, f"m{seed}.h5")]
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def finish(procs):
            outs = [p.communicate()[0] for p in procs]
            for p, out in zip(procs, outs):
                if p.returncode != 0:
                    sys.exit(out)
            return outs

        for i in range(a.pairs):
            t0 = time.perf_counter()
            finish([start(j, 0)])
            one = time.perf_counter() - t0
            t0 = time.perf_counter()
            finish([start(1, s) for s in range(j)])
            many = time.perf_counter() - t0
            ratio = j * one / many
            ratios.append(ratio)
            print(f"pair {i + 1}: one {j}-thread run {one:.1f} s; {j} one-thread runs side by side {many:.1f} s; "
                  f"throughput ratio {ratio:.3f}", flush=True)
    print(f"{j} one-thread runs / one {j}-thread run, images per second of wall time (median of {a.pairs} pairs): "
          f"{statistics.median(ratios):.3f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(here, "..", "build", "qvl"))
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--unsplit", action="store_true", help="also run qvl with --batch-threads 1 (interleaved)")
    ap.add_argument("--side-by-side", type=int, default=0, metavar="J",
                    help="compare one run with --threads J against J one-thread runs at once (no evaluation)")
    a = ap.parse_args()
    if a.side_by_side > 0:
        return side_by_side(a)
    print(f"CPU: {cpu_model()}; threads {a.threads}; batch {a.batch}; {a.max_steps} training steps + 10,000 test images per run")
    sides = [("qvl", [])] + ([("qvl --batch-threads 1", ["--batch-threads", "1"])] if a.unsplit else [])
    ratios = {name: ([], []) for name, _ in sides}
    with tempfile.TemporaryDirectory() as tmp:
        def qvl(extra):
            q = subprocess.run([a.binary, "vit", "train", "--rope", "axial", "--threads", str(a.threads), "--batch", str(a.batch),
                                "--max-steps", str(a.max_steps), "--no-progress", "-o", os.path.join(tmp, "m.h5")] + extra,
                               capture_output=True, text=True)
            if q.returncode != 0:
                sys.exit(q.stdout + q.stderr)
            return parse(q.stdout)

        for i in range(a.pairs):
            got = [(name, qvl(extra)) for name, extra in sides]
            t = subprocess.run([sys.executable, os.path.join(here, "vit_torch_ref.py"), "--threads", str(a.threads), "--batch",
                                str(a.batch), "--max-steps", str(a.max_steps)], capture_output=True, text=True)
            if t.returncode != 0:
                sys.exit(t.stdout + t.stderr)
            tt, te = parse(t.stdout)
            line = [f"pair {i + 1}:"]
            for name, (qt, qe) in got:
                ratios[name][0].append(qt / tt)
                ratios[name][1].append(qe / te)
                line.append(f"{name} train {qt:.0f} img/s, eval {qe:.0f} img/s (ratio {qt / tt:.3f}, {qe / te:.3f}) |")
            line.append(f"torch train {tt:.0f} img/s, eval {te:.0f} img/s")
            print(" ".join(line), flush=True)
    for name, (rt, re_) in ratios.items():
        print(f"{name} / torch (median of {a.pairs} pairs): train {statistics.median(rt):.3f}x "
              f"({min(rt):.3f}-{max(rt):.3f}), eval {statistics.median(re_):.3f}x ({min(re_):.3f}-{max(re_):.3f})")

if __name__ == "__main__":
    main()
