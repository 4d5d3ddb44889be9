#!/usr/bin/env bash
# The main job on the embedded tiny model: set-up and build, record with transformers if the recordings
# are missing, convert the HF checkpoint, then `qvl check` every recorded call (float32 and bfloat16).
# Exit status: 0 when every checked call passes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$here/scripts/build.sh")"
if [ ! -f "$here/recordings/tiny_fp32.h5" ] || [ ! -f "$here/recordings/tiny_bf16.h5" ]; then
  echo "[main] recordings missing: recording the transformers reference" >&2
  QVL_PYTHON="$py" bash "$here/scripts/record.sh"
fi
qvl="$here/build/qvl"
"$qvl" convert "$here/weights/tiny" "$here/build/tiny.h5"
status=0
for rec in tiny_fp32 tiny_bf16; do
  echo
  "$qvl" check "$here/build/tiny.h5" "$here/recordings/$rec.h5" || status=1
done
exit $status
