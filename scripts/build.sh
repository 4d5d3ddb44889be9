#!/usr/bin/env bash
# Set-up (scripts/setup.sh) + configure + build into build/. Prints nothing but progress on stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$here/scripts/setup.sh" | tail -n 1)"
# The torch wheel's CMake config needs the CUDA toolkit (nvcc) even for this CPU build.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
# ccache, where installed, makes rebuilds after a pin change or a branch switch cheap.
launcher=(); if command -v ccache >/dev/null 2>&1; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$here" -B "$here/build" -DQVL_PYTHON="$py" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >&2
cmake --build "$here/build" -j "$(nproc)" >&2
echo "$py"
