#!/usr/bin/env bash
# Starts (or resumes) the default ViT sweep in the background, detached from the terminal, from a stable copy
# of the binary so that rebuilding the checkout does not disturb it:
#   bash scripts/vit_sweep.sh [STATE_DIR] [extra qvl vit sweep options...]
# STATE_DIR (default ~/.cache/qvl/vit_sweep, beside the Python environments) gets the binary copy, sweep.log and results/vit/ (runs/ + the tables and
# the PNG). A killed sweep resumes where it stopped: runs whose file exists are skipped. Copy
# STATE_DIR/results/vit into the repository's results/vit to commit them; a fresh STATE_DIR starts from the
# run files committed there, so a sweep spans sessions and machines.
# The runs go side by side, one per core, one thread each (--jobs $(nproc) --threads 1): on 2 cores that trains
# 1.9x the images per second of one 2-thread run at batch 64 (README, "Sweep wall time"). Give --jobs or --threads after
# STATE_DIR to choose otherwise.
# OMP_WAIT_POLICY=PASSIVE: on a CPU shared with other jobs, OpenMP's spinning barriers made 2 threads 4x slower
# than 1 (measured: 12 vs 52 images/s under load 16); passive waiting removes that.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/qvl/vit_sweep}"
shift || true
mkdir -p "$state"
# A sweep committed part-way (results/vit/runs in the checkout) resumes here: its run files seed a new state dir.
if [ ! -d "$state/results/vit/runs" ] && [ -d "$here/results/vit/runs" ]; then
  mkdir -p "$state/results/vit" && cp -r "$here/results/vit/runs" "$state/results/vit/"
  echo "resuming the committed runs: $(find "$state/results/vit/runs" -name '*.json' | wc -l) run files copied from $here/results/vit/runs"
fi
cp "$here/build/qvl" "$state/qvl.new" && mv "$state/qvl.new" "$state/qvl"
plot_py="$(bash "$here/scripts/plot_env.sh")"
par=(--jobs "$(nproc)" --threads 1)
for a in "$@"; do case "$a" in --jobs|--jobs=*|--threads|--threads=*) par=() ;; esac; done
cd "$state"
OMP_WAIT_POLICY=PASSIVE setsid nohup nice -n 10 ./qvl vit sweep --out "$state/results/vit" --plot-python "$plot_py" \
  "${par[@]}" "$@" \
  >> "$state/sweep.log" 2>&1 < /dev/null &
echo "sweep started (pid $!): log $state/sweep.log, results $state/results/vit"
