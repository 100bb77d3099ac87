#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install pope with its test/demo extras.
#   POPE_VENV   where the environment lives (default: .venv in the repo root)
#   POPE_TORCH  the torch requirement installed first (default: torch==2.13.0, the CPU wheel
#               these machines carry; on a CUDA machine set e.g. POPE_TORCH="torch" or install
#               torch yourself beforehand)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POPE_VENV:-$root/.venv}"
torch_req="${POPE_TORCH:-torch==2.13.0}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing $torch_req"
  "${pip[@]}" install -q "$torch_req"
fi
echo "[setup] installing pope[test] (builds the C++ core pope._ext)"
"${pip[@]}" install -q -e "$root[test]"
"$venv/bin/python" -c "import pope, pope._ext, pope.backends as b; print('[setup] pope', pope.__version__, 'backends:', b.available_backends())"
