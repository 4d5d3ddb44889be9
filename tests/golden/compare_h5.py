#!/usr/bin/env python3
"""Compares two recordings (qvl.recording HDF5) or two safetensors files tensor by tensor.

  --exact       every tensor bit-identical (same dtype, shape and bytes): two runs on one machine.
  --cross-cpu   the rule for a recording made on another CPU (docs/design.md §5):
                  exact:  structure (tensor set, dtypes, shapes, the root attributes below), every
                          integer or bool tensor, the top-level inputs (calls with parent -1: token ids,
                          pixel values, grids) and everything outside /calls;
                  within the thresholds table: float activations (every output, and the float inputs of
                          inner calls, which are upstream outputs). float32: max |diff| <= 1e-5 of the
                          tensor's scale and cosine >= 0.99999 (the float32 rule). bfloat16: the diff may
                          be at most 2x transformers' own bf16 error on that tensor, measured against the
                          recording's float32 shadow (outputs_fp32), as for qvl (the bfloat16 rule). A
                          bf16 tensor without a shadow (an inner call's input: some upstream call's
                          output, itself checked against its shadow) may differ by 2 bf16 ulps of scale.
Why not bit-exact: ATen picks float kernels by CPU capability (AVX2 / AVX-512) and MKL by CPU model, so
the last bits of float32 sums differ between machines; two runs on one machine are bit-identical.
Exits 1 with the first differences listed, 0 if they agree. Prints the largest float difference found.
"""
import argparse
import sys

import numpy as np

ROOT_ATTRS = ("producer", "torch_version", "dtype", "seed", "config", "scenario", "call_summary")
FLOATS = ("float32", "float64", "float16", "bfloat16")
FP32_MAX_REL = 1e-5      # instrument/thresholds.cpp, float32 row
FP32_MIN_COS = 0.99999   # same row
BF16_FACTOR = 2.0        # instrument/thresholds.cpp, bfloat16 row: 2x HF's own bf16 error
BF16_ULP = 2.0 ** -8     # relative spacing of bfloat16 (8 significant bits)


def as_f64(dtype, a):
    if dtype == "bfloat16":  # stored as uint16 bits
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def tensors_h5(path):
    import h5py

    out, top_level = {}, set()
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.attrs.get("kind", "tensor") == "tensor":
                out[name] = (obj.attrs.get("dtype", str(obj.dtype)), obj[()])
        f.visititems(visit)
        if "calls" in f:
            for k, c in f["calls"].items():
                if int(c.attrs.get("parent", 0)) == -1:
                    top_level.add(f"calls/{k}/inputs/")
        attrs = {k: f.attrs[k] for k in ROOT_ATTRS if k in f.attrs}
    return out, attrs, top_level


def tensors_st(path):
    from safetensors.numpy import load_file

    return {k: (str(v.dtype), v) for k, v in load_file(path).items()}, {}, set()


def must_be_exact(name, dtype, top_level):
    if dtype not in FLOATS or not name.startswith("calls/"):
        return True
    return any(name.startswith(p) for p in top_level)


def shadow_of(name, tensors):
    """The float32 shadow of a bf16 output: calls/N/outputs/X -> calls/N/outputs_fp32/X."""
    parts = name.split("/")
    if len(parts) >= 4 and parts[2] == "outputs":
        s = "/".join(parts[:2] + ["outputs_fp32"] + parts[3:])
        if s in tensors:
            return tensors[s][1]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref")
    ap.add_argument("new")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--exact", action="store_true")
    g.add_argument("--cross-cpu", action="store_true")
    a = ap.parse_args()
    load = tensors_st if a.ref.endswith(".safetensors") else tensors_h5
    ref, ref_attrs, top_level = load(a.ref)
    new, new_attrs, _ = load(a.new)
    problems = []
    if set(ref) != set(new):
        problems.append(f"different tensor sets: only in ref {sorted(set(ref) - set(new))[:5]}, "
                        f"only in new {sorted(set(new) - set(ref))[:5]}")
    for k in ROOT_ATTRS:
        if ref_attrs.get(k) != new_attrs.get(k):
            problems.append(f"root attribute {k} differs")
    worst = {"float32": (0.0, ""), "bfloat16": (0.0, "")}
    n_exact = n_float = n_differ = 0
    for name in sorted(set(ref) & set(new)):
        (dr, r), (dn, n) = ref[name], new[name]
        if dr != dn or r.shape != n.shape:
            problems.append(f"{name}: {dr}{list(r.shape)} vs {dn}{list(n.shape)}")
            continue
        if a.exact or must_be_exact(name, dr, top_level):
            n_exact += 1
            if r.tobytes() != n.tobytes():
                problems.append(f"{name}: not bit-identical (must be exact on every CPU)")
            continue
        n_float += 1
        if r.tobytes() == n.tobytes():
            continue
        n_differ += 1
        rf, nf = as_f64(dr, r), as_f64(dn, n)
        diff = np.abs(rf - nf)
        scale = max(np.abs(rf).max() if rf.size else 0.0, 1e-30)
        rel = diff.max() / scale if rf.size else 0.0
        if dr == "bfloat16":
            sh = shadow_of(name, ref)
            if sh is not None:
                own = np.abs(rf - sh.astype(np.float64))
                limit_max, limit_rmse = BF16_FACTOR * own.max(), BF16_FACTOR * np.sqrt((own ** 2).mean())
                rmse = np.sqrt((diff ** 2).mean())
                ratio = max(diff.max() / max(limit_max, 1e-30), rmse / max(limit_rmse, 1e-30))
                if diff.max() > limit_max or rmse > limit_rmse:
                    problems.append(f"{name}: bf16 diff max {diff.max():.3g} rmse {rmse:.3g} > 2x HF's own "
                                    f"bf16 error (max {own.max():.3g}, rmse {limit_rmse / 2:.3g})")
            else:
                ratio = rel / (2 * BF16_ULP)
                if rel > 2 * BF16_ULP:
                    problems.append(f"{name}: bf16 diff {rel:.3g} of scale > 2 bf16 ulps (no float32 shadow)")
            if ratio > worst["bfloat16"][0]:
                worst["bfloat16"] = (ratio, name)
            continue
        cos = float((rf * nf).sum() / max(np.sqrt((rf ** 2).sum() * (nf ** 2).sum()), 1e-300))
        if rel > worst["float32"][0]:
            worst["float32"] = (rel, name)
        if rel > FP32_MAX_REL or cos < FP32_MIN_COS:
            problems.append(f"{name}: max diff {rel:.3g} of scale (limit {FP32_MAX_REL}), cosine {cos:.7f}")
    mode = "exact" if a.exact else "cross-cpu rule"
    if problems:
        print(f"compare_h5 ({mode}): {a.ref} vs {a.new}: {len(problems)} problem(s)")
        for p in problems[:20]:
            print("  " + p)
        sys.exit(1)
    extra = ""
    if not a.exact:
        extra = (f"; {n_exact} exact, {n_float} float activations of which {n_differ} not bit-identical; "
                 f"largest float32 diff {worst['float32'][0]:.3g} of scale ({worst['float32'][1] or 'none'})")
        if worst["bfloat16"][1]:
            extra += f"; largest bf16 diff {worst['bfloat16'][0]:.3g} of its limit ({worst['bfloat16'][1]})"
    print(f"compare_h5 ({mode}): {a.new} matches {a.ref}: {len(ref)} tensors{extra}")


if __name__ == "__main__":
    main()
