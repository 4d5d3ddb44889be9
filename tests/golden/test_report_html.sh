#!/usr/bin/env bash
# The HTML report of qvl compare / qvl check, on the committed tiny recordings:
#   parse     every report is strictly well-formed and self-contained, and names the first divergent module that
#             the text report names: a Circle-RoPE run (AGE strategy_3 and the released config), a --scale-weight
#             run (float32 and bfloat16), qvl check --rope circle, and qvl check (nothing diverges);
#   chromium  headless Chromium renders the Circle-RoPE report to a PNG and the page is not blank. SKIPPED (exit 77)
#             with the reason when Chromium is absent.
# Usage: test_report_html.sh QVL_BINARY parse|chromium   (QVL_PYTHON: the pinned python; else python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
qvl="$1"; mode="$2"
py="${QVL_PYTHON:-python3}"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
fp32="$here/recordings/tiny_fp32.h5"; bf16="$here/recordings/tiny_bf16.h5"
circle3='circle:{"alpha": 0.5, "radius": 10, "method": "circle", "move_to_origin": true, "AGE_mode": "strategy_3"}'

# compare NAME REF OURS: qvl compare --html, then the HTML checks against the text report's first divergence.
compare() {
  local name="$1" ref="$2" ours="$3" rc=0
  "$qvl" compare "$ref" "$ours" --html "$tmp/$name.html" > "$tmp/$name.txt" || rc=$?
  if [ "$rc" != 1 ]; then echo "FAIL $name: qvl compare exited $rc, expected 1 (a divergent run)"; cat "$tmp/$name.txt"; exit 1; fi
  local first; first="$(sed -n 's/^first divergent module: \([^ ]*\) .*/\1/p' "$tmp/$name.txt")"
  if [ -z "$first" ]; then echo "FAIL $name: the text report names no first divergent module"; exit 1; fi
  echo "$name: text report: first divergent module $first"
  "$py" "$here/tests/golden/check_report_html.py" "$tmp/$name.html" --first "$first"
}

if [ "$mode" = parse ]; then
  "$qvl" run "$fp32" -o "$tmp/circle3.h5" --rope "$circle3" > /dev/null 2>&1
  compare circle3 "$fp32" "$tmp/circle3.h5"
  "$qvl" run "$fp32" -o "$tmp/circle.h5" --rope circle > /dev/null 2>&1
  compare circle "$fp32" "$tmp/circle.h5"
  "$qvl" run "$fp32" -o "$tmp/scaled.h5" --scale-weight model.visual.blocks.2.mlp.down_proj.bias=1.05 > /dev/null
  compare scaled "$fp32" "$tmp/scaled.h5"
  "$qvl" run "$bf16" -o "$tmp/scaled_bf16.h5" --scale-weight model.visual.blocks.2.mlp.down_proj.bias=1.5 > /dev/null
  compare scaled_bf16 "$bf16" "$tmp/scaled_bf16.h5"
  # qvl check with a changed rotary: the isolated replay diverges where the model recomputes its positions.
  rc=0; "$qvl" check "$here/weights/tiny.h5" "$fp32" --rope circle --html "$tmp/check_circle.html" > "$tmp/check_circle.txt" 2>&1 || rc=$?
  [ "$rc" = 1 ] || { cat "$tmp/check_circle.txt"; echo "FAIL check --rope circle: exit $rc, expected 1"; exit 1; }
  first="$(sed -n 's/^first divergent module: \([^ ]*\) .*/\1/p' "$tmp/check_circle.txt")"
  [ -n "$first" ] || { echo "FAIL check --rope circle: no first divergent module in the text report"; exit 1; }
  "$py" "$here/tests/golden/check_report_html.py" "$tmp/check_circle.html" --first "$first"
  "$qvl" check "$here/weights/tiny.h5" "$fp32" --html "$tmp/check.html" > "$tmp/check.txt"
  if grep -q '^first divergent module' "$tmp/check.txt"; then echo "FAIL check: the text report names a divergence"; exit 1; fi
  "$py" "$here/tests/golden/check_report_html.py" "$tmp/check.html" --first none
  echo "report html: OK"
elif [ "$mode" = chromium ]; then
  chrome="$(command -v chromium || command -v chromium-browser || true)"
  if [ -z "$chrome" ]; then
    echo "SKIPPED: no headless Chromium (Debian package 'chromium') on this machine; the render check needs it"
    exit 77
  fi
  "$qvl" run "$fp32" -o "$tmp/circle3.h5" --rope "$circle3" > /dev/null 2>&1
  "$qvl" compare "$fp32" "$tmp/circle3.h5" --html "$tmp/report.html" > /dev/null || true
  # No network: the report must render from the file alone.
  timeout 120 "$chrome" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
      --hide-scrollbars --window-size=1280,2200 --screenshot="$tmp/report.png" "file://$tmp/report.html" > "$tmp/chrome.log" 2>&1 || {
    echo "FAIL: chromium did not render the report"; tail -20 "$tmp/chrome.log"; exit 1; }
  "$py" - "$tmp/report.png" <<'PY'
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
w, h = im.size
px = list(im.getdata())
ink = sum(1 for p in px if min(p) < 235)
colours = len(set(px))
reds = sum(1 for r, g, b in px if r > 150 and g < 120 and b < 120)
print(f"{sys.argv[1]}: {w}x{h}, {100.0 * ink / len(px):.1f}% non-white pixels, {colours} colours, {reds} red pixels")
if w < 800 or h < 800 or ink < 0.02 * len(px) or colours < 20 or reds == 0:
    sys.exit("FAIL: the rendered page is blank or lacks the plots (needs >= 2% ink, >= 20 colours, the red of a divergence)")
PY
  echo "report render: OK"
else
  echo "usage: $0 QVL_BINARY parse|chromium"; exit 2
fi
