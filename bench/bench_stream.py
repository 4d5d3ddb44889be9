#!/usr/bin/env python3
"""Wall time and peak RSS of both sides of a real-size check: the reference recorder (transformers, plain
and through accelerate's disk offload) and `qvl check --stream` (against the non-streamed `qvl check` where
the model fits in memory). Each run is a child process; its peak RSS is the child's own (os.wait4's
ru_maxrss). A measurement, not a test: it prints one row per run and the commands it ran.

  py bench/bench_stream.py --model $BIG/ckpt --dtype bfloat16 --image synthetic:448x448 \\
      --modules 'model.visual.blocks.{0,1}' --modules lm_head --recorders plain,offload \\
      --offload $BIG/offload --max-memory 10GiB --checks stream,plain --out $BIG/rec.h5

accelerate is pinned in scripts/requirements.txt; --pythonpath DIR still adds a directory to the
recorder's PYTHONPATH.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

from timing import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd, env=None, log=None):
    """(exit code, wall seconds, peak RSS bytes, cpu seconds) of one child."""
    t0 = time.monotonic()
    with open(log or os.devnull, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, wall, ru.ru_maxrss * 1024, ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--image", action="append", default=[], help="passed to the recorder")
    ap.add_argument("--text-before", default=None, help="passed to the recorder")
    ap.add_argument("--text-after", default=None, help="passed to the recorder")
    ap.add_argument("--modules", action="append", default=[], help="passed to the recorder (record --modules)")
    ap.add_argument("--recorders", default="plain", help="comma list of plain, offload, none")
    ap.add_argument("--offload", default=None, help="offload folder (for the offload recorder)")
    ap.add_argument("--max-memory", default="10GiB", help="weights in memory for the offload recorder")
    ap.add_argument("--checks", default="stream", help="comma list of stream, plain, none")
    ap.add_argument("--out", required=True, help="the recording to write (and check); kept")
    ap.add_argument("--python", default=sys.executable, help="the pinned Python (transformers)")
    ap.add_argument("--pythonpath", default=None, help="extra PYTHONPATH for the recorder (accelerate)")
    ap.add_argument("--qvl", default=os.path.join(ROOT, "build", "qvl"))
    ap.add_argument("--logs", default=None, help="folder for each run's output (default: next to --out)")
    args = ap.parse_args()

    logs = args.logs or os.path.dirname(os.path.abspath(args.out))
    os.makedirs(logs, exist_ok=True)
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    rec = [args.python, os.path.join(ROOT, "recordings", "record_reference.py"), "record", "--model", args.model,
           "--dtype", args.dtype]
    for i in args.image:
        rec += ["--image", i]
    if args.text_before is not None:
        rec += ["--text-before", args.text_before]
    if args.text_after is not None:
        rec += ["--text-after", args.text_after]
    for m in args.modules:
        rec += ["--modules", m]

    print(f"bench_stream: {cpu_model()}, {os.cpu_count()} CPUs; model {args.model}; {args.dtype}")
    rows = []
    for kind in [k for k in args.recorders.split(",") if k and k != "none"]:
        out = args.out if kind == "plain" or "plain" not in args.recorders else args.out + f".{kind}.h5"
        cmd = rec + ["--out", out]
        if kind == "offload":
            if not args.offload:
                raise SystemExit("bench_stream: the offload recorder needs --offload DIR")
            cmd += ["--offload", args.offload, "--max-memory", args.max_memory]
        log = os.path.join(logs, f"record_{kind}.log")
        code, wall, rss, cpu = run(cmd, env=env, log=log)
        size = os.path.getsize(out) if os.path.exists(out) else 0
        rows.append((f"recorder ({kind})", code, wall, rss, cpu, f"recording {size / 1e6:.1f} MB", cmd, log))
        if kind != "plain" and code == 0 and not os.path.exists(args.out):
            os.replace(out, args.out)
    for kind in [k for k in args.checks.split(",") if k and k != "none"]:
        cmd = [args.qvl, "check", args.model, args.out] + (["--stream"] if kind == "stream" else [])
        log = os.path.join(logs, f"check_{kind}.log")
        code, wall, rss, cpu = run(cmd, log=log)
        summary = ""
        with open(log) as f:
            for line in f:
                if line.startswith("summary:"):
                    summary = line.strip()
        rows.append((f"qvl check ({kind})", code, wall, rss, cpu, summary, cmd, log))

    print(f"{'run':<22} {'exit':>4} {'wall s':>8} {'cpu s':>8} {'peak RSS GB':>12}  notes")
    for name, code, wall, rss, cpu, note, _, _ in rows:
        print(f"{name:<22} {code:>4} {wall:>8.1f} {cpu:>8.1f} {rss / 1e9:>12.2f}  {note}")
    print("commands:")
    for name, _, _, _, _, _, cmd, log in rows:
        print(f"  {name}: {' '.join(shlex.quote(c) for c in cmd)}   (output: {log})")
    return 0 if all(r[1] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
