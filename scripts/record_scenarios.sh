#!/usr/bin/env bash
# Records the scenarios with transformers (generated, not committed: each is
# several MB). Called by the build (target qvl_recordings) into build/recordings/.
#   scripts/record_scenarios.sh OUT_DIR WEIGHTS_DIR      (WEIGHTS_DIR gets the generated checkpoints)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: record_scenarios.sh OUT_DIR WEIGHTS_DIR}"
wdir="${2:?usage: record_scenarios.sh OUT_DIR WEIGHTS_DIR}"
py="${QVL_PYTHON:?QVL_PYTHON must point at the pinned environment}"
rec="$here/recordings/record_reference.py"
mkdir -p "$out"
# Every scenario also records transformers' generate call by call: the prefill and each of the 16 decode
# steps, with the KV cache by value (--record-decode; replayed by DecodeStep.* and the chained run), except
# the real-size vision scenario, whose prefill would only record its vision tower a second time.
decode=--record-decode
steps=16
scenario() {  # model dir, name, then recorder arguments; records float32 and bfloat16
  local model="$1" name="$2"; shift 2
  for dtype in float32 bfloat16; do
    local short=${dtype/float32/fp32}; short=${short/bfloat16/bf16}
    "$py" "$rec" record --model "$model" --dtype "$dtype" --name "$name" --seed 0 --generate "$steps" $decode \
      --out "$out/${name}_${short}.h5" "$@"
  done
}
tiny="$here/weights/tiny"
# The real window_size 112: grid (1, 18, 14), windows of 64, 48, 64, 48, 16 and 12 patches.
scenario "$tiny" tiny_w112_252x196 --set vision_config.window_size=112 --image synthetic:252x196
# Two images of different sizes in one forward pass: grids (1, 8, 6) and (1, 6, 8).
scenario "$tiny" tiny_two_images --image synthetic:112x84 --image synthetic:84x112:7
# A video of 4 different frames: grid (2, 8, 6), second_per_grid_ts 1.0.
scenario "$tiny" tiny_video --video synthetic:4x112x84
# A left-padded batch of 2 (row 1 drops 2 prompt tokens and is padded on the left): padding masks,
# get_rope_index with attention_mask, and batched generation.
scenario "$tiny" tiny_padded_batch --image synthetic:112x84 --pad-batch 2
# Tied embeddings: lm_head.weight is the embedding (no lm_head in the checkpoint).
"$py" "$rec" make-tiny --tie --out "$wdir/tiny_tied" --seed 2
scenario "$wdir/tiny_tied" tiny_tied --image synthetic:112x84
# What users vary: frame rates, mixed media, extreme image shapes and the config fields that the
# scenarios above all share. Four decode steps each (a decode step replays the same modules as the
# prefill); the planted bugs of tests/golden/test_planted_bugs_config.cpp name the scenario that catches each.
steps=4
# fps 1: second_per_grid_ts 2.0, so video frames are tokens_per_second * 2 = 4 positions apart.
scenario "$tiny" tiny_video_fps1 --video synthetic:4x112x84 --fps 1
# fps 4: second_per_grid_ts 0.5; transformers takes int(0.5) = 0, so every frame gets the same t.
scenario "$tiny" tiny_video_fps4 --video synthetic:4x112x84 --fps 4
# An image and a video in one prompt: both grid iterators of get_rope_index, image and video towers.
scenario "$tiny" tiny_image_video --image synthetic:112x84 --video synthetic:4x84x112
# A one-merged-token image (28x28, grid (1, 2, 2); --min-pixels lets it keep its size) and a very wide one
# (56x812, grid (1, 4, 58): 29 merged tokens in a row, windows padded at the bottom and right).
scenario "$tiny" tiny_small_wide --min-pixels 784 --image synthetic:28x28 --image synthetic:56x812
# The text and vision config fields every other scenario shares, changed on the tiny weights: text
# rope_theta 1e4 (not 1e6), rms_norm_eps 1e-3 (not 1e-6), tokens_per_second 3 (not 2) with a video at fps 1,
# and full attention in blocks [0, 2] (not [1, 3]).
scenario "$tiny" tiny_variant_text --image synthetic:112x84 --video synthetic:4x112x84 --fps 1 \
  --set text_config.rope_parameters.rope_theta=10000.0 --set text_config.rms_norm_eps=0.001 \
  --set vision_config.tokens_per_second=3 --set 'vision_config.fullatt_block_indexes=[0,2]'
# Shapes the tiny checkpoint fixes: spatial_merge_size 3 (window_size 126) and 4 KV heads (GQA ratio 1).
# Image 168x252: grid (1, 12, 18), merged (4, 6); video 4x84x168: grid (2, 6, 12); both sides are
# multiples of 2 and 3 patches, so a merge size hard-coded to 2 gives wrong values rather than an error.
"$py" "$rec" make-tiny --preset merge3-mha --out "$wdir/tiny_merge3_mha" --seed 3
scenario "$wdir/tiny_merge3_mha" tiny_merge3_mha --image synthetic:168x252 --video synthetic:4x84x168
steps=16
# Two vision blocks at the real dimensions on a 476x420 image: grid (1, 34, 30), 1020 patches, 20 windows,
# uneven at the bottom and right edges (448x448 would tile exactly and exercise no padding). Some bugs only
# show at real sizes (vllm#15200). The checkpoint is ~260 MB: generated, not committed.
"$py" "$rec" make-tiny --preset vision-real --out "$wdir/vision_real" --seed 1
decode=
scenario "$wdir/vision_real" vision_real_476x420 --image synthetic:476x420 --text-before "17" --text-after "23"
touch "$out/.stamp"
