#!/usr/bin/env bash
# The reference recorder is deterministic: with the same versions and seed it gives the same tensors.
#  1. two fresh runs of scripts/record.sh must be bit-identical, tensor by tensor;
#  2. the fresh checkpoint must be bit-identical to the committed weights/tiny (seeded RNG);
#  3. the fresh recordings must match the committed ones: integers and inputs exactly, floats to 1e-6 of
#     their scale (bit-exact on the machine that made them; the tolerance only allows another CPU's
#     float32 kernels), printing the largest difference found.
# Exit 77 (ctest: SKIPPED) without the Python environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${QVL_PYTHON:-}" ] || [ ! -x "${QVL_PYTHON}" ]; then
  echo "SKIPPED: no pinned Python environment (configure with -DQVL_PYTHON=..., see scripts/setup.sh)"
  exit 77
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
QVL_PYTHON="$QVL_PYTHON" bash "$here/scripts/record.sh" "$tmp/a" 2>/dev/null
QVL_PYTHON="$QVL_PYTHON" bash "$here/scripts/record.sh" "$tmp/b" 2>/dev/null
cmp="$here/tests/golden/compare_h5.py"
for f in recordings/tiny_fp32.h5 recordings/tiny_bf16.h5; do
  "$QVL_PYTHON" "$cmp" --exact "$tmp/a/$f" "$tmp/b/$f"
  "$QVL_PYTHON" "$cmp" --tolerance 1e-6 "$here/$f" "$tmp/a/$f"
done
"$QVL_PYTHON" "$cmp" --exact "$here/weights/tiny/model.safetensors" "$tmp/a/weights/tiny/model.safetensors"
echo "recorder determinism: OK"
