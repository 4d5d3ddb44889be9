#!/usr/bin/env bash
# Set-up, build, then every test under ctest (labels: unit, golden, cuda). Extra arguments go to ctest,
# e.g. scripts/test.sh -L unit
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/build.sh" >/dev/null
cd "$here/build"
ctest --output-on-failure -j "$(nproc)" "$@"
