"""Peak memory and wall time of ``pope evaluate`` on a large log with precomputed log-probs.

A synthetic log of N rows (default 1e6), K ~ U{1..9} responses per prompt (about N / 5
prompts, contiguous), string prompt ids, 8 string aspect labels, ``signal``, ``log_logging``
and ``log_target`` columns (no model: nothing is scored), is written once as Parquet and as
JSON Lines. Each measured run is a fresh ``python -m pope evaluate`` subprocess: in memory, and
streamed with ``--chunk-rows``. A run reports

- ``peak_mib``: the child's own peak resident set (``VmHWM`` read by the child at exit); the
  log is written by another subprocess, so no large parent is forked;
- ``maxrss_mib``: ``ru_maxrss`` of the child from ``wait4`` (a cross-check; it can only be
  larger, since Linux carries the forking parent's peak over ``exec``);
- ``wall_s``: the child's wall time (interpreter start and imports included);
- ``floor_mib``: the same command on a 100-row log (interpreter, imports, libraries), so the
  growth with the log is ``peak_mib - floor_mib``.

The POPE total of every run is printed so that the in-memory and the streamed run can be
compared (equal up to float rounding).

Two entry points: ``cli`` (``pope evaluate``, whose process imports torch: the command's
error handling imports :mod:`pope.scoring`) and ``api`` (:func:`pope.pipeline.evaluate_logs`
/ :func:`pope.pipeline.evaluate_stream` with the same settings; no torch). ``--backend cpp``
sets ``POPE_BACKEND`` for the child (the automatic choice imports every CPU backend, numba
included, to rank them).

Usage::

    python bench/bench_memory.py --rows 1e6 --chunk-rows 100000
    python bench/bench_memory.py --formats parquet --modes stream   # one cell
    python bench/bench_memory.py --entries api --backend cpp
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FORMATS = ("parquet", "jsonl")
MODES = ("memory", "stream")


# ----------------------------------------------------------------------------- data
def write_log(path: Path, n_rows: int, fmt: str, seed: int = 0) -> None:
    """Synthetic log of ``n_rows`` rows (prompts contiguous), written in pieces."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    k = rng.integers(1, 10, size=n_rows // 3 + 16)
    pid = np.repeat(np.arange(k.size, dtype=np.int64), k)[:n_rows]
    ll = -rng.exponential(4.0, size=n_rows)
    cols = {
        "prompt_id": np.char.add("q", pid.astype(str)).astype(object),
        "signal": rng.integers(0, 12, size=n_rows).astype(np.float64),
        "aspect": np.array(list("abcdefgh"), dtype=object)[rng.integers(0, 8, size=n_rows)],
        "log_logging": ll,
        "log_target": np.minimum(ll + rng.normal(0.0, 1.0, size=n_rows), 0.0),
    }
    table = pa.table(cols)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "parquet":
        pq.write_table(table, tmp, row_group_size=131_072)
    else:
        step = 100_000
        with open(tmp, "w", encoding="utf-8") as fh:
            for start in range(0, n_rows, step):
                part = table.slice(start, step).to_pylist()
                fh.write("".join(json.dumps(r) + "\n" for r in part))
    tmp.replace(path)


# ----------------------------------------------------------------------------- one run
CHILD = """\
import sys, time
t = time.perf_counter()
from pope.cli import main
rc = main(sys.argv[1:])
wall = time.perf_counter() - t
with open("/proc/self/status") as f:
    hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024
print("BENCH", hwm, wall, file=sys.stderr)
sys.exit(rc)
"""


API_CHILD = """\
import json, sys, time, warnings
warnings.simplefilter("ignore")
t = time.perf_counter()
from pope.pipeline import EvalSpec, evaluate_logs, evaluate_stream
logs, chunk_rows, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spec = EvalSpec(n_aspects=8, aspect_names=tuple("abcdefgh"), progress=False)
if chunk_rows:
    res = evaluate_stream(logs, spec, chunk_rows=chunk_rows)
else:
    res = evaluate_logs(logs, spec)
wall = time.perf_counter() - t
with open(out, "w") as f:
    json.dump({"pope": {"total": {"value": res.pope.total.value}}}, f)
with open("/proc/self/status") as f:
    hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024
print("BENCH", hwm, wall, file=sys.stderr)
"""


def run_one(
    logs: Path, chunk_rows: int | None, out: Path, entry: str = "cli", backend: str | None = None
) -> dict[str, object]:
    """One evaluation in a fresh interpreter: peak RSS, wall time, POPE total."""
    if entry == "api":
        argv = [sys.executable, "-c", API_CHILD, str(logs), str(chunk_rows or 0), str(out)]
    else:
        argv = [
            sys.executable,
            "-c",
            CHILD,
            "evaluate",
            "--logs",
            str(logs),
            "-q",
            "--no-progress",
            "--n-aspects",
            "8",
            "--aspect-names",
            "a,b,c,d,e,f,g,h",
            "--out",
            str(out),
            "--overwrite",
        ]
        if chunk_rows:
            argv += ["--chunk-rows", str(chunk_rows)]
    env = dict(os.environ)
    if backend:
        env["POPE_BACKEND"] = backend
    t = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    line = [ln for ln in stderr.splitlines() if ln.startswith("BENCH ")]
    if os.waitstatus_to_exitcode(status) != 0 or not line:
        return {"error": (stderr or stdout)[-2000:]}
    _, hwm, inner = line[-1].split()
    total = json.loads(out.read_text())["pope"]["total"]["value"]
    return {
        "peak_mib": float(hwm),
        "maxrss_mib": usage.ru_maxrss / 1024,
        "wall_s": wall,
        "inner_s": float(inner),
        "total": total,
    }


def ensure_log(d: Path, n: int, fmt: str) -> Path:
    """The log file of ``n`` rows in ``fmt`` (written by a subprocess if missing)."""
    path = d / f"log-{n}.{fmt}"
    if not path.exists():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, __file__, "--write", str(path), "--rows", str(n), "--formats", fmt],
            check=True,
        )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=float, default=1e6)
    ap.add_argument("--chunk-rows", type=int, default=100_000)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--entries", nargs="+", default=["cli", "api"], choices=["cli", "api"])
    ap.add_argument(
        "--backend",
        choices=["cpp", "numba", "reference"],
        help="POPE_BACKEND of the runs (default: the automatic choice)",
    )
    ap.add_argument("--dir", default="/tmp/pope-bench-memory")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--write", help=argparse.SUPPRESS)
    a = ap.parse_args()
    n = int(a.rows)
    if a.write:
        write_log(Path(a.write), n, a.formats[0])
        return
    d = Path(a.dir)
    print(
        f"# {platform.node()}, {os.cpu_count()} cores, python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; rows={n}, chunk_rows={a.chunk_rows}, "
        f"POPE_BACKEND={a.backend or 'auto'}",
        flush=True,
    )
    results = []
    out = d / "out.json"
    for entry in a.entries:
        for fmt in a.formats:
            logs = ensure_log(d, n, fmt)
            floor = run_one(ensure_log(d, 100, fmt), None, out, entry, a.backend)
            for mode in a.modes:
                chunk = a.chunk_rows if mode == "stream" else None
                r = run_one(logs, chunk, out, entry, a.backend)
                r.update(
                    entry=entry, format=fmt, mode=mode, rows=n, floor_mib=floor.get("peak_mib")
                )
                results.append(r)
                if "error" in r:
                    print(f"{entry:<4} {fmt:<8} {mode:<7} ERROR {r['error'][-600:]}", flush=True)
                    continue
                print(
                    f"{entry:<4} {fmt:<8} {mode:<7} peak {r['peak_mib']:6.0f} MiB (maxrss "
                    f"{r['maxrss_mib']:.0f}, floor {r['floor_mib']:.0f}) wall "
                    f"{r['wall_s']:5.1f} s total {r['total']:.12g}",
                    flush=True,
                )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
