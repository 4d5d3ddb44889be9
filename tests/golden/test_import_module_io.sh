#!/usr/bin/env bash
# qvl import module_io_data. tests/golden/make_module_io.py writes the conversion framework's folders from
# the tiny model through forward hooks, in that framework's layout; then:
#   passes      the imported recording passes qvl check (all weights), and the framework's vision_weights.pt,
#               converted to qvl.weights, passes qvl check on the imported vision calls;
#   collisions  with every call in one second, the lost calls are named, the unmappable calls listed with reasons,
#               and the survivors still pass qvl check, also under the framework's own 4.49-era class names;
#   corrupt     a missing .pt, bad JSON, a shape that disagrees with metadata.json and a weights file that disagrees
#               with config.json each give one clear error and leave no output file.
# Usage: test_import_module_io.sh QVL_BINARY passes|collisions|corrupt. Exit 77 (SKIPPED) without the pinned Python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
qvl="$1"; mode="$2"
if [ -z "${QVL_PYTHON:-}" ] || [ ! -x "${QVL_PYTHON}" ]; then
  echo "SKIPPED: no pinned Python environment (configure with -DQVL_PYTHON=..., see scripts/setup.sh)"; exit 77
fi
export QVL_PYTHON
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
tiny="$here/weights/tiny"; cfg="$tiny/config.json"
fail() { echo "FAIL: $*"; exit 1; }
expect() { grep -q -- "$1" "$2" || { cat "$2"; fail "expected '$1' in $(basename "$2")"; }; }

case "$mode" in
passes)
  "$QVL_PYTHON" "$here/tests/golden/make_module_io.py" --model "$tiny" --out "$tmp/run" --clock distinct --legacy-rotary 2>/dev/null
  "$qvl" import module_io_data "$tmp/run/module_io_data" -o "$tmp/rec.h5" --config "$cfg" \
      --weights "$tmp/run/weights/vision_weights.pt" --weights-out "$tmp/vision.h5" --checkpoint "$tiny" > "$tmp/import.txt" 2>&1 \
    || { cat "$tmp/import.txt"; fail "qvl import exited non-zero"; }
  cat "$tmp/import.txt" | grep -v '^\[record\]' | grep -v 'Loading weights'
  expect "unmapped  Qwen2_5_VisionTransformerPretrainedModel_.*stored as str()" "$tmp/import.txt"
  # Every folder is either imported or listed as unmapped with its reason.
  folders=$(ls "$tmp/run/module_io_data" | wc -l); unmapped=$(grep -c '^unmapped' "$tmp/import.txt" || true)
  n=$((folders - unmapped)); [ "$n" -gt 30 ] || fail "only $n of $folders calls imported"
  expect "imported $n calls" "$tmp/import.txt"
  if grep -q '^collision' "$tmp/import.txt"; then fail "a collision reported where every call had its own second"; fi
  # transformers 4.49's vision rotary forms (forward(seqlen), rot_pos_emb) are imported, not listed as unmapped.
  if grep -q '^unmapped  Qwen2_5_VisionRotaryEmbedding_\|^unmapped  Qwen2_5_VisionTransformerPretrainedModel_rot_pos_emb' "$tmp/import.txt"; then
    fail "a 4.49-era vision rotary call went unmapped"; fi
  "$qvl" check "$here/weights/tiny.h5" "$tmp/rec.h5" > "$tmp/check.txt" || { cat "$tmp/check.txt"; fail "qvl check failed"; }
  grep '^summary' "$tmp/check.txt"
  expect "summary: $n passed, 0 failed" "$tmp/check.txt"
  # The framework's own vision weights, converted: the vision calls (imported without the text weights) pass on them.
  "$qvl" import module_io_data "$tmp/run/module_io_data" -o "$tmp/rec_vision.h5" --config "$cfg" \
      --weights "$tmp/run/weights/vision_weights.pt" > "$tmp/import_v.txt" 2>&1 || { cat "$tmp/import_v.txt"; fail "import (vision)"; }
  expect "unmapped  Qwen2MLP_.*pass --checkpoint" "$tmp/import_v.txt"
  nv=$((folders - $(grep -c '^unmapped' "$tmp/import_v.txt")))
  grep -q '^unmapped  Qwen2_5_VLMLP_\|^unmapped  Qwen2_5_VLVisionBlock_' "$tmp/import_v.txt" && fail "a vision call went unmapped with vision_weights.pt given"
  "$qvl" check "$tmp/vision.h5" "$tmp/rec_vision.h5" > "$tmp/check_v.txt" || { cat "$tmp/check_v.txt"; fail "qvl check on the converted vision weights failed"; }
  grep '^summary' "$tmp/check_v.txt"
  expect "summary: $nv passed, 0 failed" "$tmp/check_v.txt"
  ;;
collisions)
  "$QVL_PYTHON" "$here/tests/golden/make_module_io.py" --model "$tiny" --out "$tmp/run" --clock shared 2>/dev/null
  "$qvl" import module_io_data "$tmp/run/module_io_data" -o "$tmp/rec.h5" --config "$cfg" --checkpoint "$tiny" \
      > "$tmp/import.txt" 2>&1 || { cat "$tmp/import.txt"; fail "qvl import exited non-zero"; }
  grep -e '^collision' -e '^unmapped' -e '^imported' "$tmp/import.txt"
  expect "collision Qwen2_5_VLVisionBlock_20250301_120000: 3 earlier call(s) .* overwritten by model.visual.blocks.3: lost model.visual.blocks.0, model.visual.blocks.1, model.visual.blocks.2$" "$tmp/import.txt"
  expect "collision Qwen2_5_VLRMSNorm_20250301_120000: 15 earlier" "$tmp/import.txt"
  expect "collision Qwen2MLP_20250301_120000: 2 earlier .*lost model.language_model.layers.0.mlp, model.language_model.layers.1.mlp" "$tmp/import.txt"
  expect "unmapped  Qwen2_5_VLTextModel_20250301_120000: " "$tmp/import.txt"
  n=$(( $(ls "$tmp/run/module_io_data" | wc -l) - $(grep -c '^unmapped' "$tmp/import.txt") ))
  expect "imported $n calls" "$tmp/import.txt"
  "$qvl" check "$here/weights/tiny.h5" "$tmp/rec.h5" > "$tmp/check.txt" || { cat "$tmp/check.txt"; fail "qvl check failed"; }
  expect "summary: $n passed, 0 failed" "$tmp/check.txt"
  # The framework's own (transformers 4.49) names map too (Qwen2RMSNorm, Qwen2_5_VLVisionSdpaAttention); its
  # vision rotary forms are imported in the `passes` case (make_module_io.py --legacy-rotary).
  "$QVL_PYTHON" - "$tmp/run/module_io_data" "$tmp/g1/module_io_data" <<'PY'
import json, os, shutil, sys
import torch
src, dst = sys.argv[1:]
rename = {"Qwen2_5_VLRMSNorm": "Qwen2RMSNorm", "Qwen2_5_VLVisionAttention": "Qwen2_5_VLVisionSdpaAttention"}
for name in os.listdir(src):
    mod, day, sec = name.rsplit("_", 2)
    new = f"{rename.get(mod, mod)}_{day}_{sec}"
    shutil.copytree(os.path.join(src, name), os.path.join(dst, new))
    p = os.path.join(dst, new, "metadata.json")
    meta = json.loads(open(p).read().replace(f"module_io_data/{name}/", f"module_io_data/{new}/"))
    meta["module"] = meta["class"] = rename.get(mod, mod)
    json.dump(meta, open(p, "w"))
PY
  "$qvl" import module_io_data "$tmp/g1/module_io_data" -o "$tmp/rec_g1.h5" --config "$cfg" --checkpoint "$tiny" \
      > "$tmp/import_g1.txt" 2>&1 || { cat "$tmp/import_g1.txt"; fail "qvl import (4.49 names) exited non-zero"; }
  grep -e '^collision Qwen2RMSNorm' -e '^imported' "$tmp/import_g1.txt"
  expect "collision Qwen2RMSNorm_20250301_120000: 15 earlier" "$tmp/import_g1.txt"
  expect "imported $n calls" "$tmp/import_g1.txt"
  "$qvl" check "$here/weights/tiny.h5" "$tmp/rec_g1.h5" > "$tmp/check_g1.txt" || { cat "$tmp/check_g1.txt"; fail "qvl check (4.49 names) failed"; }
  expect "summary: $n passed, 0 failed" "$tmp/check_g1.txt"
  ;;
corrupt)
  "$QVL_PYTHON" "$here/tests/golden/make_module_io.py" --model "$tiny" --out "$tmp/run" --clock distinct 2>/dev/null
  # one_error NAME PATTERN: the import of $tmp/$NAME fails with exactly one error line matching PATTERN, writes nothing.
  one_error() {
    local name="$1" pattern="$2" rc=0; shift 2
    mkdir -p "$tmp/out_$name"
    "$qvl" import module_io_data "$tmp/$name/module_io_data" -o "$tmp/out_$name/rec.h5" --config "${CFG:-$cfg}" "$@" \
        > "$tmp/$name.txt" 2>&1 || rc=$?
    [ "$rc" != 0 ] || fail "$name: qvl import succeeded on corrupt input"
    local errors; errors="$(grep -c 'error' "$tmp/$name.txt" || true)"
    [ "$errors" = 1 ] || { cat "$tmp/$name.txt"; fail "$name: $errors error lines, expected one"; }
    expect "$pattern" "$tmp/$name.txt"
    [ -z "$(ls -A "$tmp/out_$name")" ] || fail "$name: left files behind: $(ls -A "$tmp/out_$name")"
    echo "$name: $(grep error "$tmp/$name.txt")"
  }
  cp -r "$tmp/run" "$tmp/missing_pt"
  rm "$(ls -d "$tmp"/missing_pt/module_io_data/Qwen2_5_VLMLP_* | head -1)/inputs/arg_0.pt"
  one_error missing_pt "Qwen2_5_VLMLP_.*/inputs/arg_0.pt: missing (metadata.json inputs.args\[0\] names it)"
  cp -r "$tmp/run" "$tmp/bad_json"
  printf '{"module": "Qwen2_5_VLMLP", "class": ' > "$(ls -d "$tmp"/bad_json/module_io_data/Qwen2_5_VLMLP_* | head -1)/metadata.json"
  one_error bad_json "Qwen2_5_VLMLP_.*/metadata.json: bad JSON at line 1"
  cp -r "$tmp/run" "$tmp/bad_shape"
  "$QVL_PYTHON" -c "import torch,sys; torch.save(torch.zeros(3, 5), sys.argv[1])" \
      "$(ls -d "$tmp"/bad_shape/module_io_data/Qwen2_5_VLPatchMerger_* | head -1)/outputs/output.pt"
  one_error bad_shape "PatchMerger_.*/outputs/output.pt: shape \[3, 5\] disagrees with metadata.json outputs shape \[12, 64\]"
  # vision_weights.pt against a config.json with another vision depth: one error listing the problems, no output.
  cp -r "$tmp/run" "$tmp/bad_weights"
  "$QVL_PYTHON" -c "import json,sys; c=json.load(open(sys.argv[1])); c['vision_config']['depth']=5; json.dump(c, open(sys.argv[2],'w'))" \
      "$cfg" "$tmp/cfg5.json"
  CFG="$tmp/cfg5.json" one_error bad_weights "vision tensor(s) do not match config.json (depth 5" --weights "$tmp/run/weights/vision_weights.pt" \
      --weights-out "$tmp/out_bad_weights/vision.h5"
  ;;
*) echo "usage: $0 QVL_BINARY passes|collisions|corrupt"; exit 2 ;;
esac
echo "import module_io_data ($mode): OK"
