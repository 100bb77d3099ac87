#!/usr/bin/env bash
# The project's test command: set up the environment, lint, check the formatting, type-check
# (mypy), build the docs (warnings are errors), run the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k coverage).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POPE_VENV:-$root/.venv}"
bash "$root/scripts/setup.sh"
cd "$root"
echo "[test] ruff"
"$venv/bin/ruff" check src kernels tests bench examples
echo "[test] ruff format --check"
"$venv/bin/ruff" format --check src kernels tests bench examples
echo "[test] mypy"
POPE_VENV="$venv" bash "$root/scripts/typecheck.sh"
echo "[test] docs (sphinx -W)"
# -E: a fresh environment every time, so a warning of an unchanged page is never hidden by
# the environment a failed earlier build saved.
"$venv/bin/python" -m sphinx -E -W --keep-going -b html -q docs docs/_build/html
echo "[test] pytest"
"$venv/bin/python" -m pytest "$@"
