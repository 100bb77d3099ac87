"""Cost of the diversity estimators of ``pope.evaluate`` relative to the plug-in, same process.

Usage::

    python bench/bench_diversity.py [--n 1000000] [--k 8] [--c 16] [--repeats 9]

A log of ``n`` responses in ``n / k`` prompts of ragged K (uniform in [k/2, 3k/2]), ``C`` hard
aspects and random log-propensities; every estimator's full ``pope.evaluate`` call is timed
``--repeats`` times, interleaved (so load on the machine hits all alike), and the table
reports the best time and the ratio to the plug-in's best time. The kernels alone (power sums,
plug-in coverage) are timed too. Target (issue "honest uncertainty"): the polynomial estimator
at most 2x the plug-in.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np

import pope
from pope.backends import get_backend
from pope.coverage import coverage_core
from pope.power_sums import power_sums

ESTIMATORS = {
    "plugin": {"diversity_estimator": "plugin"},
    "jackknife": {"diversity_estimator": "jackknife"},
    "polynomial (default)": {},
    "polynomial, degree 4": {"diversity_degree": 4},
    "gini_simpson": {"diversity": "gini_simpson"},
}


def make_log(n: int, k: int, c: int, seed: int = 0) -> tuple[pope.LoggedFeedback, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(max(1, k // 2), k + k // 2 + 1, size=n // k)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(ptr[-1])
    fb = pope.LoggedFeedback(
        prompt_ptr=ptr,
        signal=rng.poisson(2.0, m).astype(float),
        log_logging=np.log(rng.uniform(0.05, 1, m)),
        aspect=rng.integers(0, c, m),
        n_aspects=c,
    )
    return fb, np.log(rng.uniform(0.05, 1, m))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--c", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    fb, lt = make_log(args.n, args.k, args.c)
    times: dict[str, list[float]] = {name: [] for name in ESTIMATORS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pope.InsufficientDataWarning)
        for kw in ESTIMATORS.values():  # warm-up (Numba caches, coefficient LPs)
            pope.evaluate(fb, lt, **kw)
        for _ in range(args.repeats):
            for name, kw in ESTIMATORS.items():
                t0 = time.perf_counter()
                pope.evaluate(fb, lt, **kw)
                times[name].append(time.perf_counter() - t0)
    be = get_backend()
    w = np.exp(np.minimum(lt - fb.log_logging, 0.0))
    kern = {"power sums (L=4)": [], "plug-in coverage": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        power_sums(fb.prompt_ptr, w, fb.aspect, None, args.c, 4)
        kern["power sums (L=4)"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        coverage_core(be, fb.prompt_ptr, lt - fb.log_logging, fb.aspect, None, args.c, True)
        kern["plug-in coverage"].append(time.perf_counter() - t0)
    base = min(times["plugin"])
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"POPE_NUM_THREADS={os.environ.get('POPE_NUM_THREADS', 'auto')}; "
        f"n={fb.n_responses}, prompts={fb.n_prompts}, C={args.c}; best of {args.repeats}"
    )
    print("| pope.evaluate | best (ms) | median (ms) | / plug-in |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        print(
            f"| {name} | {1e3 * min(ts):.1f} | {1e3 * float(np.median(ts)):.1f} | "
            f"{min(ts) / base:.2f} |"
        )
    kb = min(kern["plug-in coverage"])
    for name, ts in kern.items():
        print(
            f"| kernel: {name} | {1e3 * min(ts):.1f} | {1e3 * float(np.median(ts)):.1f} | "
            f"{min(ts) / kb:.2f} (vs plug-in kernel) |"
        )


if __name__ == "__main__":
    main()
