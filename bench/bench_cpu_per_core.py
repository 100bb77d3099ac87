"""Per-core cost of the C++ cores: single-thread CPU time against the NumPy baselines.

Usage::

    python bench/bench_cpu_per_core.py

``POPE_NUM_THREADS=1`` and ``time.process_time`` (best of several calls): the CPU time one
core spends, which other processes on the machine disturb much less than the wall time that
``bench/bench_cpu.py`` measures (they still share caches and memory bandwidth). Same
workloads as ``bench_cpu.py``: public ``ips(clip=20)`` at n = 1e7 against ``np.copyto``, the
bootstrap of 1e5 rows x 1e4 resamples against the chunked NumPy gather (200 resamples,
scaled), coverage entropy on 1e6 responses (C = 16) against the NumPy ``bincount`` plug-in.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import pope.estimators as E
from pope.backends import get_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cpu as B  # the workloads of bench_cpu.py


def cpu(f: Callable[[], object], k: int) -> float:
    """Best CPU time of ``k`` calls after a warm-up call."""
    f()
    best = 1e9
    for _ in range(k):
        c0 = time.process_time()
        f()
        best = min(best, time.process_time() - c0)
    return best


def main() -> None:
    """Print the per-core figures."""
    os.environ["POPE_NUM_THREADS"] = "1"  # read by the C++ core at each call
    cpp = get_backend("cpp")
    rng = np.random.default_rng(0)
    n = 10_000_000
    lt = np.minimum(rng.normal(-30.0, 3.0, n), 0.0)
    ll = np.minimum(lt + rng.normal(0.0, 1.0, n), 0.0)
    rw = rng.random(n)
    dst = np.empty(n)
    tc = cpu(lambda: np.copyto(dst, lt), 15)
    ti = cpu(lambda: E.ips(reward=rw, log_target=lt, log_logging=ll, clip=20.0), 15)
    print(
        f"ips(clip=20), 1 thread: {ti * 1e3:.1f} ms, copy {tc * 1e3:.1f} ms: "
        f"{1.5 * tc / ti:.2f} of the copy bandwidth"
    )
    v = rng.random((100_000, 1))
    v1 = v[:, 0].copy()
    tn = cpu(lambda: B._numpy_bootstrap(v1, 200, 1), 2) * 50
    tb = cpu(lambda: cpp.bootstrap_sums(v, 10_000, 1), 2)
    print(
        f"bootstrap, 1 thread: NumPy {tn:.2f} s (scaled from 200), C++ {tb:.3f} s: "
        f"{tn / tb:.1f}x per core"
    )
    cov = argparse.Namespace(cov_c=16, cov_p=125_000)
    C, P, ptr, _, lw, labels, _, seg = B._coverage_case(cov, rng)

    def numpy_plugin() -> np.ndarray:
        mx = np.maximum.reduceat(lw, ptr[:-1])
        w = np.exp(lw - mx[seg])
        hist = np.bincount(seg * C + labels, weights=w, minlength=P * C).reshape(P, C)
        z = np.bincount(seg, weights=w, minlength=P)
        p = hist / z[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)

    t0 = cpu(numpy_plugin, 10)
    tp = cpu(lambda: cpp.segment_coverage_hard(ptr, lw, labels, C, True), 15)
    tj = cpu(lambda: cpp.segment_jackknife_entropy_hard(ptr, lw, labels, C, True), 15)
    print(
        f"coverage, 1 thread: NumPy {t0 * 1e3:.1f} ms, plug-in {tp * 1e3:.1f} ms "
        f"({t0 / tp:.1f}x), jackknife {tj * 1e3:.1f} ms ({tj / tp:.2f}x the plug-in)"
    )
    print(f"1-minute load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
