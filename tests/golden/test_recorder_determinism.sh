#!/usr/bin/env bash
# The reference recorder is deterministic: with the same versions and seed it gives the same tensors.
#  1. two fresh runs of scripts/record.sh on this machine must be bit-identical, tensor by tensor;
#  2. the fresh checkpoint must be bit-identical to the committed weights/tiny (seeded RNG, no float maths
#     that depends on the CPU);
#  3. the fresh recordings must match the committed ones by the cross-CPU rule (docs/design.md §5):
#     exact for the structure, every integer tensor and the top-level inputs (token ids, pixel values,
#     grids); float activations (every output and the float inputs of inner calls, which are upstream
#     outputs) within the thresholds table: float32 max |diff| <= 1e-5 of scale and cosine >= 0.99999,
#     bf16 at most 2x transformers' own bf16 error. The reason: the committed files were made on one CPU,
#     and ATen (AVX2 vs AVX-512 kernels) and MKL (per CPU model) round float32 sums differently elsewhere;
#     on an AMD EPYC with AVX-512 the float32 outputs differed by up to 1.1e-6 of scale. A bit-exact rule
#     would pass only on the recording machine.
# QVL_DETERMINISM_CAPS="avx2 avx512 default" runs step 3 once per ATen capability (ATEN_CPU_CAPABILITY).
# Exit 77 (ctest: SKIPPED) without the Python environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${QVL_PYTHON:-}" ] || [ ! -x "${QVL_PYTHON}" ]; then
  echo "SKIPPED: no pinned Python environment (configure with -DQVL_PYTHON=..., see scripts/setup.sh)"
  exit 77
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cmp="$here/tests/golden/compare_h5.py"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), ATen capability: $(
  "$QVL_PYTHON" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')"
caps="${QVL_DETERMINISM_CAPS:-default}"
# ATen's AVX-512 kernels need avx512f/bw/vl/dq; asking for them on a CPU without them dies of SIGILL.
has_avx512() { for fl in avx512f avx512bw avx512vl avx512dq; do grep -qw "$fl" /proc/cpuinfo || return 1; done; }
ran=()
for cap in $caps; do
  if [ "$cap" = avx512 ] && ! has_avx512; then
    echo "-- ATen capability avx512: this CPU has no AVX-512, not run here"
    continue
  fi
  out="$tmp/$cap"
  ran+=("$cap")
  if [ "$cap" = default ]; then env_cap=(); else env_cap=(ATEN_CPU_CAPABILITY="$cap"); fi
  env "${env_cap[@]}" QVL_PYTHON="$QVL_PYTHON" bash "$here/scripts/record.sh" "$out" 2>/dev/null
  echo "-- recorded with ATen capability: $cap"
  for f in recordings/tiny_fp32.h5 recordings/tiny_bf16.h5; do
    "$QVL_PYTHON" "$cmp" --cross-cpu "$here/$f" "$out/$f"
  done
  "$QVL_PYTHON" "$cmp" --exact "$here/weights/tiny/model.safetensors" "$out/weights/tiny/model.safetensors"
done
# Same machine, same capability: bit-identical.
last_cap="${ran[${#ran[@]}-1]}"
if [ "$last_cap" = default ]; then env_cap=(); else env_cap=(ATEN_CPU_CAPABILITY="$last_cap"); fi
env "${env_cap[@]}" QVL_PYTHON="$QVL_PYTHON" bash "$here/scripts/record.sh" "$tmp/again" 2>/dev/null
for f in recordings/tiny_fp32.h5 recordings/tiny_bf16.h5; do
  "$QVL_PYTHON" "$cmp" --exact "$tmp/$last_cap/$f" "$tmp/again/$f"
done
echo "recorder determinism: OK (ATen capabilities checked: ${ran[*]})"
