#!/usr/bin/env bash
# Type-check the package with mypy (configuration: [tool.mypy] in pyproject.toml):
# src/pope, then the Triton kernels (kernels/, installed as pope.kernels) on their own.
# Not yet part of scripts/test.sh. Extra arguments go to both mypy runs.
# Needs the typecheck extra: pip install -e ".[typecheck]".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POPE_VENV:-$root/.venv}"
cd "$root"
status=0
echo "[typecheck] mypy src/pope"
"$venv/bin/python" -m mypy "$@" || status=$?
echo "[typecheck] mypy kernels"
"$venv/bin/python" -m mypy "$@" kernels || status=$?
exit "$status"
