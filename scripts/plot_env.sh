#!/usr/bin/env bash
# A small Python environment for the result plots only (matplotlib), kept apart from the pinned reference
# venv so that adding it does not rebuild that one. Prints the python path on its last line.
#   QVL_PLOT_VENV  where it lives (default ~/.cache/qvl/venv-plot-<pin hash>)
set -euo pipefail
pins="matplotlib==3.10.8 numpy==2.4.6"
hash=$(echo "$pins" | sha256sum | cut -c1-12)
venv="${QVL_PLOT_VENV:-$HOME/.cache/qvl/venv-plot-$hash}"
if [ ! -f "$venv/.qvl-complete" ]; then
  echo "[plot_env] creating $venv ($pins)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --progress-bar off $pins >&2
  touch "$venv/.qvl-complete"
fi
echo "$venv/bin/python"
