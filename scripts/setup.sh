#!/usr/bin/env bash
# qvl set-up: Debian packages + a pinned Python environment kept outside the checkout.
# Idempotent: re-running reuses what is already there. Prints the venv's python path on its last line.
#   QVL_VENV   where the environment lives (default ~/.cache/qvl/venv-<pin hash>)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$here/scripts/requirements.txt"

# --- Debian packages -------------------------------------------------------------------------------
debs=(cmake g++ make pkg-config libhdf5-dev libssl-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
      libbenchmark-dev python3-venv dataset-fashion-mnist libgloo-dev chromium)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- Python environment (pinned, outside the checkout) ---------------------------------------------
pin_hash=$(sha256sum "$req" | cut -c1-12)
venv="${QVL_VENV:-$HOME/.cache/qvl/venv-$pin_hash}"
if [ ! -f "$venv/.qvl-complete" ]; then
  echo "[setup] creating Python environment $venv (torch is a large download; this runs once)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install --progress-bar off -r "$req" >&2
  touch "$venv/.qvl-complete"
fi
echo "$venv/bin/python"
