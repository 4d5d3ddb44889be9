"""Timing shared by the benchmark scripts: warm-up calls, then `reps` timed calls under torch.no_grad(), and the
machine line printed with every figure. torch is imported where it is used, so that scripts which only start
processes (bench_vit.py, bench_stream.py) can use cpu_model() without it."""
import os
import statistics
import sys
import time


def time_ms(fn, reps, warmup=3):
    """Returns (median ms, min ms)."""
    import torch
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        ms = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms), min(ms)


def passive_openmp():
    """Interleaved timing keeps two processes alive, each with its OpenMP thread pool. By default an idle pool
    spins for a while after each parallel region, so on a machine with few cores the side that is waiting
    takes the CPU from the side being timed. OMP_WAIT_POLICY=PASSIVE makes idle threads sleep; it is read when
    the OpenMP runtime starts, so this re-executes the script with it set (the C++ server inherits it)."""
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable] + sys.argv)


def cpu_model():
    """The CPU model from /proc/cpuinfo ("unknown CPU" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_line():
    """The CPU model, ATen's CPU capability and torch's thread count: printed with every figure."""
    import torch
    return (f"CPU: {cpu_model()}; ATen capability {torch.backends.cpu.get_cpu_capability()}; "
            f"torch threads {torch.get_num_threads()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")


class Server:
    """A C++ benchmark binary in serve mode (bench/bench_timing.h, bench::serve): it warms up, then times one
    named call per request, so that the two sides can alternate call by call."""

    def __init__(self, argv):
        import subprocess
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().strip()
        if line != "ready":
            self.p.kill()
            raise RuntimeError(f"{argv[0]}: expected 'ready', got {line!r}")

    def time_ms(self, name="run"):
        self.p.stdin.write(name + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline().strip()
        try:
            return float(line)
        except ValueError:
            raise RuntimeError(f"serve: {line!r}") from None

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def interleaved(ref_fn, ours_fn, pairs, warmup=3):
    """Times the reference and ours alternately, pair by pair (A B A B ...), so that drift in the machine's load
    falls on both sides of each pair. ours_fn returns its own milliseconds (a Server's time_ms). Returns a dict:
    ref and ours medians (ms), and the median, min and max of the per-pair speed ratios ref / ours."""
    import torch
    with torch.no_grad():
        for _ in range(warmup):
            ref_fn()
        ref, ours = [], []
        for _ in range(pairs):
            t0 = time.perf_counter()
            ref_fn()
            ref.append((time.perf_counter() - t0) * 1e3)
            ours.append(ours_fn())
    ratios = sorted(r / o for r, o in zip(ref, ours))
    return {"ref_ms": statistics.median(ref), "ours_ms": statistics.median(ours),
            "ratio": statistics.median(ratios), "ratio_min": ratios[0], "ratio_max": ratios[-1], "pairs": pairs}
