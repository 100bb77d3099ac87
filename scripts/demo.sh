#!/usr/bin/env bash
# The main job on built-in data: set up the environment, then run `pope demo`.
# Extra arguments go to `pope demo` (e.g. scripts/demo.sh --out /tmp/demo --seed 1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POPE_VENV:-$root/.venv}"
bash "$root/scripts/setup.sh"
exec "$venv/bin/pope" demo "$@"
