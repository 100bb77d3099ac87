#!/usr/bin/env bash
# One command for a CUDA machine: make pope importable, run the GPU tests of the Triton ops
# (compiled kernels, not the interpreter), write the static compile report for this GPU's
# architecture, then run the GPU benchmarks. Everything lands in $OUT if set, else
# bench/results/<UTC timestamp>/, in at most 8 files (gpu_sh.log with the environment,
# pytest_gpu.txt, aot_sm<arch>.md, bench_logprob.{txt,json,csv}, bench_linear_logprob.csv,
# and pip_install.log only if an install was needed).
#
#   bash bench/gpu.sh                      # tests + all GPU benchmarks
#   SKIP_TESTS=1 bash bench/gpu.sh         # benchmarks only
#   SKIP_BENCH=1 bash bench/gpu.sh         # tests only
#   BENCH_ARGS="--vocab 32000 --dtypes bf16" bash bench/gpu.sh   # a smaller sweep
#
# Environment: PYTHON (default: python3) must have a CUDA build of torch and triton. If
# `import pope` fails, the script tries `pip install -e . --no-build-isolation` (builds the
# C++ core; needs scikit-build-core, pybind11, cmake, a compiler) and otherwise falls back to
# a symlinked import tree under the results folder (the Triton ops need no compiled code).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
results="${OUT:-$root/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$results"
cd "$root"
unset TRITON_INTERPRET
status=0

log() { echo "[gpu.sh] $*" | tee -a "$results/gpu_sh.log"; }

# ------------------------------------------------------------------------ environment
# GPU_SH_DRY_RUN=1 skips this check (to exercise the script on a CPU box: the tests then run
# through the interpreter and the benchmark refuses).
if [ -z "${GPU_SH_DRY_RUN:-}" ] && \
   ! "$py" -c "import torch, triton, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "no CUDA device visible to torch (or torch/triton missing) in $py; nothing to do"
  exit 2
fi
{
  nvidia-smi 2>/dev/null || true
  "$py" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, 'device', torch.cuda.get_device_name() \
if torch.cuda.is_available() else 'none')"
  git -C "$root" rev-parse HEAD 2>/dev/null || true
} >> "$results/gpu_sh.log" 2>&1
log "results -> $results"

if ! "$py" -c "import pope.ops, pope.kernels.logprob" >/dev/null 2>&1; then
  log "pope not importable: trying pip install -e . --no-build-isolation"
  if "$py" -m pip install -q -e . --no-build-isolation >"$results/pip_install.log" 2>&1 \
     && "$py" -c "import pope.ops, pope.kernels.logprob" >/dev/null 2>&1; then
    log "installed"
  else
    shim="$results/.pope_import_tree"
    log "install failed (see pip_install.log); using a symlinked import tree at $shim"
    rm -rf "$shim" && mkdir -p "$shim/pope"
    for f in "$root"/src/pope/*; do ln -s "$f" "$shim/pope/"; done
    ln -s "$root/kernels" "$shim/pope/kernels"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    "$py" -c "import pope.ops, pope.kernels.logprob" || { log "pope still not importable"; exit 3; }
  fi
fi

# ------------------------------------------------------------------------------ tests
if [ -z "${SKIP_TESTS:-}" ]; then
  log "pytest tests/test_ops_*.py tests/test_kernels_aot.py (compiled Triton kernels)"
  "$py" -m pytest tests/test_ops_*.py tests/test_kernels_aot.py -q -ra -p no:cacheprovider \
      2>&1 | tee "$results/pytest_gpu.txt"
  rc=${PIPESTATUS[0]}
  log "pytest exit code $rc"
  [ "$rc" -eq 0 ] || status=1
fi

# ------------------------------------------------- static report for this device's arch
arch="$("$py" -c "import torch; a, b = torch.cuda.get_device_capability(); print(10 * a + b)" \
        2>/dev/null || true)"
if [ -n "$arch" ]; then
  log "python -m pope.kernels.aot --arch $arch (registers, spills, 128-bit accesses)"
  "$py" -m pope.kernels.aot --arch "$arch" >"$results/aot_sm$arch.md" 2>&1 \
      || { log "aot report failed"; status=1; }
else
  log "no CUDA device: aot report skipped"
fi

# ------------------------------------------------------------------------- benchmarks
if [ -z "${SKIP_BENCH:-}" ]; then
  log "bench/bench_logprob.py --linear ${BENCH_ARGS:-}"
  # shellcheck disable=SC2086
  "$py" bench/bench_logprob.py --linear --out "$results" ${BENCH_ARGS:-} 2>&1 \
      | tee "$results/bench_logprob.txt"
  rc=${PIPESTATUS[0]}
  log "bench_logprob exit code $rc"
  [ "$rc" -eq 0 ] || status=1
fi

log "done (status $status); outputs in $results"
exit "$status"
