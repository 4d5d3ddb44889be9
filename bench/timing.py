"""Timing shared by the benchmark scripts: warm-up calls, then `reps` timed calls under torch.no_grad()."""
import statistics
import time

import torch


def time_ms(fn, reps, warmup=3):
    """Returns (median ms, min ms)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        ms = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms), min(ms)
