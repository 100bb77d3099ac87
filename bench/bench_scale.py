"""Rows per second and peak memory per worker: local, Ray (local cluster), Spark (local[W]).

A synthetic Parquet log with precomputed log-prob columns (``log_logging``, ``log_target``;
no model) of N rows, K ~ U{1..7} responses per prompt, 4 aspect labels, is evaluated by

- ``local-memory``: :func:`pope.pipeline.evaluate_logs`, the whole log in one process (the
  baseline: ``pope evaluate`` without options);
- ``local-stream``: :func:`pope.pipeline.evaluate_stream` in one process (bounded memory);
- ``ray``: :func:`pope.engines.evaluate_ray` on a local Ray cluster with W CPUs;
- ``spark``: :func:`pope.engines.evaluate_spark` on ``local[W]``.

Each run is a fresh subprocess (so peak memory is its own); the processes it starts are
polled in ``/proc`` every 0.2 s for their resident memory. Throughput is reported as rows/s
and as a ratio to the baseline measured in the same invocation; the results of the engines
are checked equal to the baseline (relative 1e-9 on the POPE total).

Usage::

    python bench/bench_scale.py --rows 1e6 3e6 --workers 2 --buckets 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ENGINES = ("local-memory", "local-stream", "ray", "spark")


# ----------------------------------------------------------------------------- data
def write_log(path: Path, n_rows: int, seed: int = 0, file_rows: int = 1_000_000) -> None:
    """Synthetic log of ``n_rows`` rows in files of ``file_rows`` rows (prompts contiguous)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 8, size=n_rows // 2 + 8)
    pid = np.repeat(np.arange(k.size, dtype=np.int64), k)[:n_rows]
    ll = -rng.exponential(4.0, size=n_rows)
    table = pa.table(
        {
            "prompt_id": pid,
            "signal": rng.integers(0, 12, size=n_rows).astype(np.float64),
            "aspect": rng.integers(0, 4, size=n_rows).astype(np.int64),
            "log_logging": ll,
            "log_target": np.minimum(ll + rng.normal(0.0, 1.0, size=n_rows), 0.0),
        }
    )
    for i, start in enumerate(range(0, n_rows, file_rows)):
        pq.write_table(
            table.slice(start, file_rows), path / f"part-{i:05d}.parquet", row_group_size=131_072
        )


# ----------------------------------------------------------------------------- memory
class ProcWatch:
    """Peak RSS of this process's descendants (polled from /proc), by process kind."""

    def __init__(self, root: int, every: float = 0.2) -> None:
        self.root, self.every = root, every
        self.peak: dict[int, tuple[int, str]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcWatch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            parent: dict[int, int] = {}
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        with open(f"/proc/{d}/stat") as f:
                            parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                    except (OSError, IndexError, ValueError):
                        pass
            for p in parent:
                q, hops = p, 0
                while q in parent and q != self.root and hops < 50:
                    q, hops = parent[q], hops + 1
                if q != self.root or p == self.root:
                    continue
                try:
                    with open(f"/proc/{p}/status") as f:
                        rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS"))
                    with open(f"/proc/{p}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                except (OSError, StopIteration):
                    continue
                if rss > self.peak.get(p, (0, ""))[0]:
                    self.peak[p] = (rss, cmd)
            self._stop.wait(self.every)

    def by_kind(self) -> dict[str, dict[str, float]]:
        kinds: dict[str, list[int]] = {}
        for rss, cmd in self.peak.values():
            if "java" in cmd.split(" ")[0]:
                k = "spark-jvm"
            elif "pyspark" in cmd:
                k = "spark-python-worker"
            elif cmd.startswith("ray::") or "default_worker.py" in cmd:
                k = "ray-worker"
            elif "ray" in cmd:
                k = "ray-system"
            else:
                k = "other"
            kinds.setdefault(k, []).append(rss)
        return {
            k: {"n": len(v), "max_mib": max(v) / 1024, "sum_mib": sum(v) / 1024}
            for k, v in kinds.items()
        }


def _vm_hwm_mib() -> float:
    """Peak RSS of this process (``VmHWM``; ``ru_maxrss`` would carry the parent's peak over
    ``fork`` + ``exec``)."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024


# ----------------------------------------------------------------------------- one run
def child(engine: str, logs: str, workers: int, buckets: int) -> dict[str, object]:
    import warnings

    from pope.engines import evaluate_ray, evaluate_spark
    from pope.pipeline import EvalSpec, evaluate_logs, evaluate_stream

    warnings.simplefilter("ignore")
    spec = EvalSpec(n_aspects=4, estimators=("snips", "clipped_ips"), progress=False)
    setup = 0.0
    with ProcWatch(os.getpid()) as watch:
        if engine == "local-stream":
            t = time.perf_counter()
            res = evaluate_stream(logs, spec, chunk_rows=250_000)
        elif engine == "local-memory":
            t = time.perf_counter()
            res = evaluate_logs(logs, spec)
        elif engine == "ray":
            import ray

            t0 = time.perf_counter()
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            setup = time.perf_counter() - t0
            t = time.perf_counter()
            res = evaluate_ray(logs, spec, num_buckets=buckets)
        else:
            from pyspark.sql import SparkSession

            os.environ["PYSPARK_PYTHON"] = sys.executable
            t0 = time.perf_counter()
            spark = (
                SparkSession.builder.master(f"local[{workers}]")
                .config("spark.ui.enabled", "false")
                .config("spark.sql.shuffle.partitions", str(buckets))
                .config("spark.driver.memory", "4g")
                .getOrCreate()
            )
            spark.sparkContext.setLogLevel("ERROR")
            setup = time.perf_counter() - t0
            t = time.perf_counter()
            res = evaluate_spark(logs, spec, num_buckets=buckets)
        wall = time.perf_counter() - t
    return {
        "engine": engine,
        "wall_s": wall,
        "setup_s": setup,
        "rows": res.report.n_rows,
        "total": res.pope.total.value,
        "driver_peak_mib": _vm_hwm_mib(),
        "procs": watch.by_kind(),
    }


def run_one(engine: str, logs: Path, workers: int, buckets: int) -> dict[str, object]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        engine,
        "--logs",
        str(logs),
        "--workers",
        str(workers),
        "--buckets",
        str(buckets),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"engine": engine, "error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=float, nargs="+", default=[1e6])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--buckets", type=int, default=16)
    ap.add_argument("--dir", default="/tmp/pope-bench-scale")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--logs", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.logs, a.workers, a.buckets)))
        return
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}; workers={a.workers}, "
        f"buckets={a.buckets}"
    )
    results = []
    for n in (int(r) for r in a.rows):
        logs = Path(a.dir) / f"log-{n}"
        if not logs.exists():
            write_log(logs, n)
        base = None
        for engine in a.engines:
            r = run_one(engine, logs, a.workers, a.buckets)
            r["n_rows"] = n
            results.append(r)
            if "error" in r:
                print(f"{n:>10} {engine:<13} ERROR {r['error'][-400:]}")
                continue
            rate = n / r["wall_s"]
            if base is None or engine == "local-memory":
                base = r
            ratio = rate / (n / base["wall_s"]) if base else float("nan")
            same = base is None or abs(r["total"] - base["total"]) <= 1e-9 * abs(base["total"])
            procs = r["procs"]
            worker = next(
                (procs[k] for k in ("ray-worker", "spark-python-worker") if k in procs), None
            )
            wmem = f"{worker['max_mib']:.0f} MiB x{worker['n']}" if worker else "-"
            jvm = procs.get("spark-jvm", {}).get("max_mib")
            print(
                f"{n:>10} {engine:<13} {r['wall_s']:8.1f} s {rate:>10.0f} rows/s "
                f"x{ratio:5.2f} driver {r['driver_peak_mib']:6.0f} MiB worker {wmem}"
                + (f" jvm {jvm:.0f} MiB" if jvm else "")
                + f" setup {r['setup_s']:.1f} s"
                + ("" if same else " RESULT DIFFERS"),
                flush=True,
            )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
