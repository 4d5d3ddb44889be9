#!/usr/bin/env bash
# Regenerates the tiny checkpoint and its transformers recordings (the golden data of the spine).
#   scripts/record.sh [OUT_ROOT]     writes OUT_ROOT/weights/tiny/ and OUT_ROOT/recordings/tiny_{fp32,bf16}.h5
# OUT_ROOT defaults to the repository. Uses $QVL_PYTHON, else runs scripts/setup.sh to get the environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$here}"
py="${QVL_PYTHON:-$(bash "$here/scripts/setup.sh" | tail -n 1)}"
rec="$here/recordings/record_reference.py"
mkdir -p "$out/weights" "$out/recordings"
"$py" "$rec" make-tiny --out "$out/weights/tiny" --seed 0
# The spine's scenario: a fixed synthetic 112x84 image (grid (1, 8, 6)) with text before and after it.
for dtype in float32 bfloat16; do
  short=${dtype/float32/fp32}; short=${short/bfloat16/bf16}
  "$py" "$rec" record --model "$out/weights/tiny" --image synthetic:112x84 --dtype "$dtype" \
    --name tiny_image_112x84 --seed 0 --generate 64 --out "$out/recordings/tiny_$short.h5"
done
