#!/usr/bin/env bash
# Type-check the package with mypy (configuration: [tool.mypy] in pyproject.toml):
# src/pope, then the Triton kernels (kernels/, installed as pope.kernels) on their own.
# Part of scripts/test.sh. Extra arguments go to both mypy runs.
# Needs mypy (in the test extra, or the typecheck extra: pip install -e ".[typecheck]").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POPE_VENV:-$root/.venv}"
cd "$root"
status=0
echo "[typecheck] mypy src/pope"
"$venv/bin/python" -m mypy "$@" || status=$?
echo "[typecheck] mypy kernels"
# the third-party overrides of pyproject.toml name the imports of src/pope, most of which the
# kernels do not have: no "unused section" note for them here
"$venv/bin/python" -m mypy --no-warn-unused-configs "$@" kernels || status=$?
exit "$status"
