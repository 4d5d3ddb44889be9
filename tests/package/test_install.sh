#!/usr/bin/env bash
# The installable package: `cmake --install BUILD --prefix P` into a temporary prefix, then a project outside
# qvl (tests/package/consumer) finds it with find_package(qvl), links qvl::functional and qvl::instrument,
# includes <qvl/functional/norm.h>, and runs one RMSNorm on the tiny weights.
#   test_install.sh BUILD_DIR TORCH_CMAKE_PREFIX WEIGHTS.h5
set -euo pipefail
build="${1:?usage: test_install.sh BUILD_DIR TORCH_CMAKE_PREFIX WEIGHTS.h5}"
torch_prefix="${2:?}"
weights="${3:?}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" > "$tmp/install.log"
for f in include/qvl/functional/rope/rope2d.h include/qvl/instrument/h5io.h include/qvl/converter/convert.h \
         lib/cmake/qvl/qvlConfig.cmake lib/cmake/qvl/qvlConfigVersion.cmake bin/qvl; do
  [ -e "$tmp/prefix/$f" ] || { echo "FAIL: the install has no $f"; exit 1; }
done
"$tmp/prefix/bin/qvl" --help > /dev/null
nvcc_dir=""
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc_dir=/usr/local/cuda/bin; fi
PATH="${nvcc_dir:+$nvcc_dir:}$PATH" cmake -S "$here/consumer" -B "$tmp/consumer" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix;$torch_prefix" > "$tmp/configure.log" 2>&1 || { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/consumer" > "$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; exit 1; }
"$tmp/consumer/consumer" "$weights"
echo "PASS: installed to a temporary prefix, a consumer project built against it with find_package(qvl) and ran"
