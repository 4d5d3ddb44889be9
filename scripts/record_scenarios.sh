#!/usr/bin/env bash
# Records the vision-tower scenarios of issue 3 with transformers (generated, not committed: each is
# several MB). Called by the build (target qvl_recordings) into build/recordings/.
#   scripts/record_scenarios.sh OUT_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: record_scenarios.sh OUT_DIR}"
py="${QVL_PYTHON:?QVL_PYTHON must point at the pinned environment}"
rec="$here/recordings/record_reference.py"
mkdir -p "$out"
scenario() {  # name, then recorder arguments; records float32 and bfloat16
  local name="$1"; shift
  for dtype in float32 bfloat16; do
    local short=${dtype/float32/fp32}; short=${short/bfloat16/bf16}
    "$py" "$rec" record --model "$here/weights/tiny" --dtype "$dtype" --name "$name" --seed 0 \
      --out "$out/${name}_${short}.h5" "$@"
  done
}
# The real window_size 112: grid (1, 18, 14), windows of 64, 48, 64, 48, 16 and 12 patches.
scenario tiny_w112_252x196 --set vision_config.window_size=112 --image synthetic:252x196
# Two images of different sizes in one forward pass: grids (1, 8, 6) and (1, 6, 8).
scenario tiny_two_images --image synthetic:112x84 --image synthetic:84x112:7
# A video of 4 different frames: grid (2, 8, 6), second_per_grid_ts 1.0.
scenario tiny_video --video synthetic:4x112x84
touch "$out/.stamp"
