#!/usr/bin/env python3
"""Compares two recordings (qvl.recording HDF5) or two safetensors files tensor by tensor.

  --exact          every tensor bit-identical (same dtype, shape and bytes)
  --tolerance T    integer tensors and call inputs exact; float outputs within T x max|ref|
Exits 1 with the first differences listed, 0 if they agree.
"""
import argparse
import sys

import numpy as np


def tensors_h5(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.attrs.get("kind", "tensor") == "tensor":
                out[name] = (obj.attrs.get("dtype", str(obj.dtype)), obj[()])
        f.visititems(visit)
        attrs = {k: f.attrs[k] for k in ("producer", "torch_version", "dtype", "seed", "config", "scenario")
                 if k in f.attrs}
    return out, attrs


def tensors_st(path):
    from safetensors.numpy import load_file

    return {k: (str(v.dtype), v) for k, v in load_file(path).items()}, {}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref")
    ap.add_argument("new")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--exact", action="store_true")
    g.add_argument("--tolerance", type=float)
    a = ap.parse_args()
    load = tensors_st if a.ref.endswith(".safetensors") else tensors_h5
    ref, ref_attrs = load(a.ref)
    new, new_attrs = load(a.new)
    problems = []
    if set(ref) != set(new):
        problems.append(f"different tensor sets: only in ref {sorted(set(ref) - set(new))[:5]}, "
                        f"only in new {sorted(set(new) - set(ref))[:5]}")
    for k in ("producer", "torch_version", "dtype", "seed", "config", "scenario"):
        if ref_attrs.get(k) != new_attrs.get(k):
            problems.append(f"root attribute {k} differs")
    worst = (0.0, "")
    for name in sorted(set(ref) & set(new)):
        (dr, r), (dn, n) = ref[name], new[name]
        if dr != dn or r.shape != n.shape:
            problems.append(f"{name}: {dr}{list(r.shape)} vs {dn}{list(n.shape)}")
            continue
        if a.exact or dr not in ("float32", "float64", "float16", "bfloat16") or "/inputs/" in name:
            if r.tobytes() != n.tobytes():
                problems.append(f"{name}: not bit-identical")
            continue
        rf, nf = r.astype(np.float64), n.astype(np.float64)
        if dr == "bfloat16":  # stored as uint16 bits
            rf = (r.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
            nf = (n.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        scale = max(np.abs(rf).max() if rf.size else 0.0, 1e-30)
        d = np.abs(rf - nf).max() / scale if rf.size else 0.0
        if d > worst[0]:
            worst = (d, name)
        if d > a.tolerance:
            problems.append(f"{name}: max difference {d:.3g} of scale > {a.tolerance}")
    mode = "exact" if a.exact else f"tolerance {a.tolerance}"
    if problems:
        print(f"compare_h5 ({mode}): {a.ref} vs {a.new}: {len(problems)} problem(s)")
        for p in problems[:20]:
            print("  " + p)
        sys.exit(1)
    extra = "" if a.exact else f"; largest float difference {worst[0]:.3g} of scale ({worst[1] or 'none'})"
    print(f"compare_h5 ({mode}): {a.new} matches {a.ref}: {len(ref)} tensors{extra}")


if __name__ == "__main__":
    main()
