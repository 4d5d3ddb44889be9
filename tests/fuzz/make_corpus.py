#!/usr/bin/env python3
"""Writes the seed corpus of the safetensors header fuzz target into tests/fuzz/corpus/ (stdlib only).

Valid files of every dtype and shape kind, and the broken ones the hostile-input tests name, so the fuzzer
starts from both sides of every check. Re-run after changing it: python3 tests/fuzz/make_corpus.py
"""
import argparse
import json
import os
import struct

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def st(header, data=b"", pad=True, raw_header=None):
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


seeds = {
    "empty_object": st({}),
    "metadata_only": st({"__metadata__": {"format": "pt"}}),
    "one_f32": st({"w": t("F32", [2, 2], 0, 16)}, bytes(16)),
    "every_dtype": st(
        {"__metadata__": {"format": "pt"}, "a": t("F64", [1], 0, 8), "b": t("F32", [1], 8, 12),
         "c": t("F16", [2], 12, 16), "d": t("BF16", [2], 16, 20), "e": t("I64", [1], 20, 28),
         "f": t("I32", [1], 28, 32), "g": t("I16", [2], 32, 36), "h": t("I8", [1], 36, 37),
         "i": t("U8", [1], 37, 38), "j": t("BOOL", [1], 38, 39), "k": t("F8_E4M3", [1], 39, 40),
         "l": t("F8_E5M2", [1], 40, 41)}, bytes(41)),
    "scalar_and_empty": st({"s": t("F32", [], 0, 4), "z": t("BF16", [0, 3], 4, 4)}, bytes(4)),
    "empty_on_boundaries": st({"a": t("F32", [1], 0, 4), "z": t("F32", [0], 4, 4), "b": t("F32", [1], 4, 8),
                               "e": t("U8", [0, 2], 8, 8)}, bytes(8)),
    "unpadded": st({"a": t("U8", [3], 0, 3)}, bytes(3), pad=False),
    "real_names": st({"visual.blocks.0.attn.qkv.weight": t("BF16", [6, 2], 0, 24),
                      "model.layers.0.self_attn.q_proj.bias": t("BF16", [2], 24, 28),
                      "lm_head.weight": t("BF16", [4, 2], 28, 44)}, bytes(44)),
    "bad_truncated": b"\x10\x00\x00",
    "bad_length_past_end": struct.pack("<Q", 32639) + b"{}",
    "bad_length_over_100mb": struct.pack("<Q", 100000001) + b"{}",
    "bad_json": st(None, raw_header=b'{"w": ['),
    "bad_not_object": st(None, raw_header=b"[1, 2]"),
    "bad_out_of_bounds": st({"w": t("F32", [250], 0, 1000)}, bytes(16)),
    "bad_overlap": st({"a": t("F32", [4], 0, 16), "b": t("F32", [4], 8, 24)}, bytes(24)),
    # Bytes no tensor accounts for (the safetensors library refuses both): a gap, and data after the last one.
    "bad_gap": st({"a": t("I8", [2], 0, 2), "b": t("I8", [2], 6, 8)}, bytes(8)),
    "bad_gap_at_start": st({"a": t("I8", [4], 4, 8)}, bytes(8)),
    "bad_trailing": st({"a": t("U8", [3], 0, 3)}, bytes(7)),
    "bad_trailing_no_tensor": st({"__metadata__": {"format": "pt"}}, bytes(4)),
    "bad_hole_and_trailing": st({"a": t("I8", [2], 0, 2), "b": t("I8", [2], 6, 8)}, bytes(12)),
    "bad_reversed": st({"a": t("F32", [1], 8, 4)}, bytes(8)),
    "bad_byte_count": st({"a": t("F32", [5], 0, 16)}, bytes(16)),
    "bad_dtype": st({"a": t("C64", [1], 0, 8)}, bytes(8)),
    "bad_negative_dim": st({"a": t("F32", [-1], 0, 0)}),
    "bad_huge_dims": st({"a": t("F32", [0, 18446744073709551615], 0, 0)}),
    "bad_overflow": st({"a": t("U8", [4294967296, 4294967296, 2], 0, 0)}),
    "bad_float_offset": st(None, raw_header=b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0.5,1]}}'),
    "bad_duplicate": st(None, raw_header=b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                         b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', data=bytes(2)),
    "bad_metadata": st({"__metadata__": {"n": 1}}),
    "bad_nesting": st(None, raw_header=b'{"a":' + b"[" * 20 + b"]" * 20 + b"}"),
}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=here, help="directory for the seed files (default: tests/fuzz/corpus)")
here = parser.parse_args().out
os.makedirs(here, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(here, name + ".safetensors"), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {here}")
