#!/usr/bin/env python3
"""qvl vit train against the plain-PyTorch reference (bench/vit_torch_ref.py): the same model (axial RoPE),
batch, threads, data and training protocol, run interleaved (qvl, torch, qvl, torch, ...). Each run trains
--max-steps steps and then evaluates the 10,000 test images at 28px. Prints the CPU model, every run's
train and eval images/s, and the qvl / torch ratios (median of the pairs).

  python bench/bench_vit.py --binary build/qvl --pairs 3 --max-steps 60 --threads 2
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def parse(out):
    tr = re.search(r"trained \d+ steps in [\d.]+ s: (\d+) images/s", out)
    ev = re.search(r"test 28px \(extend\): top-1 [\d.]+%.*?(\d+) images/s", out)
    if not tr or not ev:
        sys.exit("could not parse:\n" + out)
    return float(tr.group(1)), float(ev.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(here, "..", "build", "qvl"))
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    print(f"CPU: {cpu_model()}; threads {a.threads}; batch {a.batch}; {a.max_steps} training steps + 10,000 test images per run")
    ratios_t, ratios_e = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.pairs):
            q = subprocess.run([a.binary, "vit", "train", "--rope", "axial", "--threads", str(a.threads), "--batch", str(a.batch),
                                "--max-steps", str(a.max_steps), "--no-progress", "-o", os.path.join(tmp, "m.h5")],
                               capture_output=True, text=True)
            if q.returncode != 0:
                sys.exit(q.stdout + q.stderr)
            t = subprocess.run([sys.executable, os.path.join(here, "vit_torch_ref.py"), "--threads", str(a.threads), "--batch",
                                str(a.batch), "--max-steps", str(a.max_steps)], capture_output=True, text=True)
            if t.returncode != 0:
                sys.exit(t.stdout + t.stderr)
            (qt, qe), (tt, te) = parse(q.stdout), parse(t.stdout)
            ratios_t.append(qt / tt)
            ratios_e.append(qe / te)
            print(f"pair {i + 1}: qvl train {qt:.0f} img/s, eval {qe:.0f} img/s | torch train {tt:.0f} img/s, eval {te:.0f} img/s"
                  f" | ratio train {qt / tt:.3f}, eval {qe / te:.3f}", flush=True)
    print(f"qvl / torch (median of {a.pairs} pairs): train {statistics.median(ratios_t):.3f}x, eval {statistics.median(ratios_e):.3f}x")


if __name__ == "__main__":
    main()
