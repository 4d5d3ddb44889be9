#!/usr/bin/env bash
# On a machine with a CUDA GPU (H100/H200: the kernels are sm_90 + PTX): set-up and build (scripts/build.sh),
# then every GPU check and benchmark of the fused CUDA paths, in order:
#   1. ctest -L cuda        the fused paths against the plain ones (fails if any test was skipped);
#   2. qvl check --device cuda on the committed bf16 transformers recording (the bf16 rule);
#   3. bench/bench_cuda.py  RoPE, RMSNorm and the vision tower against transformers, same GPU, one run;
#   4. qvl vit train --device cuda, one epoch, evaluated at 28 and 36 px, when Fashion-MNIST is there
#      (QVL_FMNIST=DIR, default Debian's folder; the GPU machine has no network, so carry a copy).
# Everything goes to stdout; the first failure stops it with a non-zero exit. Extra arguments go to
# bench_cuda.py (e.g. --reps 50, --skip-tower).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# QVL_PYTHON=/path/to/python: use an existing Python with torch (e.g. the GPU machine's own python3, which
# has torch and transformers and no network) and skip scripts/setup.sh; the Debian build packages of
# scripts/setup.sh must then be present. Otherwise scripts/build.sh sets everything up.
if [ -n "${QVL_PYTHON:-}" ]; then
  py="$QVL_PYTHON"
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
  cmake -S "$here" -B "$here/build" -DQVL_PYTHON="$py" -DCMAKE_BUILD_TYPE=Release >&2
  cmake --build "$here/build" -j "$(nproc)" >&2
else
  py="$(bash "$here/scripts/build.sh")"
fi
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing was run" >&2
  exit 1
fi
"$py" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"

echo "== 1. ctest -L cuda"
log="$(mktemp)"
(cd "$here/build" && ctest -L cuda --output-on-failure) | tee "$log"
if grep -q "(Skipped)" "$log"; then
  echo "gpu_check: some CUDA tests were skipped (see above)" >&2
  exit 1
fi

echo "== 2. qvl check --device cuda"
"$here/build/qvl" check --device cuda "$here/weights/tiny.h5" "$here/recordings/tiny_bf16.h5"

echo "== 3. bench/bench_cuda.py"
"$py" "$here/bench/bench_cuda.py" --binary "$here/build/bench/qvl_bench_cuda" "$@"

echo "== 4. qvl vit train --device cuda"
fm="${QVL_FMNIST:-/usr/share/datasets/fashion-mnist}"
if [ -f "$fm/train-images-idx3-ubyte.gz" ]; then
  "$here/build/qvl" vit train --device cuda --data "$fm" --epochs 1 --resolutions 28 36 --no-progress -o "$(mktemp -d)/vit_cuda.h5"
else
  echo "gpu_check: step 4 not run: no Fashion-MNIST in $fm (set QVL_FMNIST)"
fi
