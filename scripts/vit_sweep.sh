#!/usr/bin/env bash
# Starts (or resumes) the default ViT sweep in the background, detached from the terminal, from a stable copy
# of the binary so that rebuilding the checkout does not disturb it:
#   bash scripts/vit_sweep.sh [STATE_DIR] [extra qvl vit sweep options...]
# STATE_DIR (default /work/vit_sweep) gets the binary copy, sweep.log and results/vit/ (runs/ + the tables and
# the PNG). A killed sweep resumes where it stopped: runs whose file exists are skipped. Copy
# STATE_DIR/results/vit into the repository's results/vit to commit them.
# OMP_WAIT_POLICY=PASSIVE: on a CPU shared with other jobs, OpenMP's spinning barriers made 2 threads 4x slower
# than 1 (measured: 12 vs 52 images/s under load 16); passive waiting removes that.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="${1:-/work/vit_sweep}"
shift || true
mkdir -p "$state"
cp "$here/build/qvl" "$state/qvl.new" && mv "$state/qvl.new" "$state/qvl"
plot_py="$(bash "$here/scripts/plot_env.sh")"
cd "$state"
OMP_WAIT_POLICY=PASSIVE setsid nohup nice -n 10 ./qvl vit sweep --out "$state/results/vit" --plot-python "$plot_py" "$@" \
  >> "$state/sweep.log" 2>&1 < /dev/null &
echo "sweep started (pid $!): log $state/sweep.log, results $state/results/vit"
