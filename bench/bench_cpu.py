"""CPU backends benchmark: every figure a ratio against a baseline timed in the same run.

Usage::

    python bench/bench_cpu.py [--n 1e7] [--repeats 15] [--out bench/cpu_results.json]

Figures (each the best of ``--repeats`` timed calls after a warm-up call, so Numba's compile is
excluded; the median is reported too):

* IPS at ``n`` samples: ``np.copyto`` of ``n`` float64 (2 * 8 * n bytes moved) is the bandwidth
  yardstick; the backends' ``ips_moments_checked`` and the public ``pope.estimators.ips``
  (``clip=20`` and none) and ``snips`` read 3 * 8 * n bytes once. Ratio: their GB/s over the
  copy's (target >= 0.60 for the public functions).
* Bootstrap, ``--boot-b`` resamples of ``--boot-n`` rows (one column): against a chunked NumPy
  gather bootstrap (``rng.integers`` indices, ``values[idx].sum(axis=1)``, 20 resamples per
  chunk, timed on ``--np-boot`` resamples and scaled linearly; target >= 25x), and against
  OBP 0.5.7's ``estimate_confidence_interval_by_bootstrap`` when ``obp`` is importable.
* Coverage entropy on ``--cov-p`` prompts of K uniform in [4, 12] (about 1e6 responses),
  C = ``--cov-c``, self-normalised: the plug-in (``segment_coverage_hard`` / ``_soft``) against
  a plain NumPy ``bincount`` plug-in (target >= 10x, hard labels); the jackknife
  (``segment_jackknife_entropy_*``) against the same backend's plug-in (target <= 2x), and
  the NumPy reference of both.

The machine may be shared: the 1-minute load average before and after is recorded; a busy
machine slows the 2-thread backends more than the single-threaded NumPy baselines.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import pope.estimators as E
from pope.backends import available_backends, get_backend


def _timeit(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best_s": min(times), "median_s": statistics.median(times), "repeats": repeats}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _row(rows: list, task: str, backend: str, t: dict, **extra) -> None:
    rows.append({"task": task, "backend": backend, **t, **extra})


def _bench_ips(mods: dict, args: argparse.Namespace, rng: np.random.Generator, rows: list) -> None:
    n = args.n
    lt = np.minimum(rng.normal(-30.0, 3.0, n), 0.0)
    ll = np.minimum(lt + rng.normal(0.0, 1.0, n), 0.0)
    rw = rng.random(n)
    dst = np.empty(n)
    log_clip = float(np.log(20.0))
    timed: dict[tuple[str, str], dict] = {}
    copies = [_timeit(lambda: np.copyto(dst, lt), args.repeats)]
    for b, mod in mods.items():
        reps = args.repeats if b != "reference" else max(2, args.repeats // 5)
        timed[("ips_moments_checked (kernel)", b)] = _timeit(
            lambda mod=mod: mod.ips_moments_checked(lt, ll, rw, log_clip), reps)
        for label, fn in (
            ("pope.estimators.ips(clip=20)", lambda b=b: E.ips(
                reward=rw, log_target=lt, log_logging=ll, clip=20.0, backend=b)),
            ("pope.estimators.ips()", lambda b=b: E.ips(
                reward=rw, log_target=lt, log_logging=ll, backend=b)),
            ("pope.estimators.snips()", lambda b=b: E.snips(
                reward=rw, log_target=lt, log_logging=ll, backend=b)),
        ):
            timed[(label, b)] = _timeit(fn, reps)
        copies.append(_timeit(lambda: np.copyto(dst, lt), args.repeats))  # yardstick again
    t_copy = min(copies, key=lambda t: t["best_s"])
    copy_gbs = 2 * 8 * n / t_copy["best_s"] / 1e9
    _row(rows, f"np.copyto n={n:.0e} (baseline)", "numpy", t_copy, **{"GB/s": copy_gbs})
    for (label, b), t in timed.items():
        gbs = 3 * 8 * n / t["best_s"] / 1e9
        extra = {"GB/s": gbs, "ratio": gbs / copy_gbs, "ratio_of": "copy bandwidth"}
        if label.startswith("pope.") and b != "reference":
            extra |= {"target": ">= 0.60", "met": gbs / copy_gbs >= 0.60}
        _row(rows, f"{label} n={n:.0e}", b, t, **extra)


def _numpy_bootstrap(values: np.ndarray, n_boot: int, seed: int, chunk: int = 20) -> np.ndarray:
    """The baseline: chunks of resamples, ``rng.integers`` indices, a fancy-index gather."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    out = np.empty(n_boot)
    for b0 in range(0, n_boot, chunk):
        b1 = min(n_boot, b0 + chunk)
        idx = rng.integers(0, n, size=(b1 - b0, n))
        out[b0:b1] = values[idx].sum(axis=1)
    return out


def _bench_bootstrap(mods: dict, args: argparse.Namespace, rng: np.random.Generator,
                     rows: list) -> None:
    n, B = args.boot_n, args.boot_b
    values = rng.random((n, 1))
    v1 = values[:, 0].copy()
    k = args.np_boot
    t_np = _timeit(lambda: _numpy_bootstrap(v1, k, 1), 2)
    t_np = {key: (v * B / k if key.endswith("_s") else v) for key, v in t_np.items()}
    task = f"bootstrap n={n:.0e} B={B}"
    _row(rows, f"{task} (baseline)", "numpy chunked gather", t_np, extrapolated_from=k)
    try:
        from obp.utils import estimate_confidence_interval_by_bootstrap
    except ImportError:
        rows.append({"task": f"{task} (OBP 0.5.7)", "backend": "obp", "best_s": None,
                     "median_s": None, "note": "obp not importable here; not compared"})
        estimate_confidence_interval_by_bootstrap = None
    if estimate_confidence_interval_by_bootstrap is not None:  # pragma: no cover
        t_obp = _timeit(lambda: estimate_confidence_interval_by_bootstrap(
            v1, n_bootstrap_samples=B, random_state=1), 1)
        _row(rows, f"{task} (OBP 0.5.7)", "obp", t_obp)
    for b, mod in mods.items():
        if b == "reference":
            continue  # the reference is a definition (a Python loop over stream steps)
        t = _timeit(lambda mod=mod: mod.bootstrap_sums(values, B, 1), args.boot_repeats)
        ratio = t_np["best_s"] / t["best_s"]
        _row(rows, task, b, t, ratio=ratio, ratio_of="numpy gather time / this",
             target=">= 25", met=ratio >= 25)


def _bench_coverage(mods: dict, args: argparse.Namespace, rng: np.random.Generator,
                    rows: list) -> None:
    C, P = args.cov_c, args.cov_p
    counts = rng.integers(4, 13, P)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    N = int(ptr[-1])
    lw = rng.normal(0.0, 1.0, N)
    labels = rng.integers(0, C, N)
    soft = rng.dirichlet(np.ones(C), N)
    seg = np.repeat(np.arange(P), counts)

    def numpy_plugin() -> np.ndarray:
        """Plain NumPy: per-prompt max shift, bincount histogram, normalise, -sum p log p."""
        mx = np.maximum.reduceat(lw, ptr[:-1])
        w = np.exp(lw - mx[seg])
        hist = np.bincount(seg * C + labels, weights=w, minlength=P * C).reshape(P, C)
        z = np.bincount(seg, weights=w, minlength=P)
        p = hist / z[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)

    tag = f"N={N:.2e} P={P:.0e} C={C}"
    t_base = _timeit(numpy_plugin, args.repeats)
    _row(rows, f"coverage entropy hard {tag} (baseline)", "numpy bincount", t_base)
    for kind in ("hard", "soft"):
        if kind == "hard":
            plug = lambda m: m.segment_coverage_hard(ptr, lw, labels, C, True)  # noqa: E731
            jack = lambda m: m.segment_jackknife_entropy_hard(ptr, lw, labels, C, True)  # noqa: E731
        else:
            plug = lambda m: m.segment_coverage_soft(ptr, lw, soft, True)  # noqa: E731
            jack = lambda m: m.segment_jackknife_entropy_soft(ptr, lw, soft, True)  # noqa: E731
        for b, mod in mods.items():
            reps = args.repeats if b != "reference" else 2
            tp = _timeit(lambda mod=mod, f=plug: f(mod), reps)
            extra = {}
            if kind == "hard":
                r = t_base["best_s"] / tp["best_s"]
                extra = {"ratio": r, "ratio_of": "numpy bincount time / this"}
                if b != "reference":
                    extra |= {"target": ">= 10", "met": r >= 10}
            _row(rows, f"coverage entropy plug-in {kind} {tag}", b, tp, **extra)
            tj = _timeit(lambda mod=mod, f=jack: f(mod), reps)
            r = tj["best_s"] / tp["best_s"]
            extra = {"ratio": r, "ratio_of": "this / plug-in time (same backend)"}
            if b != "reference":
                extra |= {"target": "<= 2", "met": r <= 2}
            _row(rows, f"coverage entropy jackknife {kind} {tag}", b, tj, **extra)


def run(args: argparse.Namespace) -> dict:
    """Run every benchmark; returns the JSON-able results."""
    rng = np.random.default_rng(args.seed)
    names = args.backends or available_backends()
    mods = {b: get_backend(b) for b in names}
    res: dict = {
        "machine": {
            "cpu": _cpu_model(),
            "nproc": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "loadavg_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "POPE_NUM_THREADS": os.environ.get("POPE_NUM_THREADS"),
        },
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "backends": names,
        "rows": [],
    }
    try:
        import numba

        res["machine"]["numba"] = numba.__version__
        res["machine"]["numba_threads"] = numba.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    rows = res["rows"]
    _bench_ips(mods, args, rng, rows)
    _bench_bootstrap(mods, args, rng, rows)
    _bench_coverage(mods, args, rng, rows)
    res["machine"]["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return res


def to_markdown(res: dict) -> str:
    """Markdown table of the rows."""
    lines = ["| task | backend | best | median | ratio | target |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if r.get("best_s") is None:
            lines.append(f"| {r['task']} | {r['backend']} | | | {r.get('note', '')} | |")
            continue

        def fmt(s: float) -> str:
            return f"{s * 1e3:.1f} ms" if s < 1.0 else f"{s:.3f} s"

        ratio = ""
        if "ratio" in r:
            ratio = f"{r['ratio']:.2f} ({r['ratio_of']})"
        elif "GB/s" in r:
            ratio = f"{r['GB/s']:.1f} GB/s"
        if "extrapolated_from" in r:
            ratio = f"scaled from B={r['extrapolated_from']}"
        met = r.get("met")
        tgt = "" if met is None else f"{r['target']}: {'met' if met else 'NOT met'}"
        lines.append(f"| {r['task']} | {r['backend']} | {fmt(r['best_s'])} | "
                     f"{fmt(r['median_s'])} | {ratio} | {tgt} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=lambda s: int(float(s)), default=10_000_000)
    ap.add_argument("--out", type=Path, default=Path("bench/cpu_results.json"))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--boot-n", type=lambda s: int(float(s)), default=100_000)
    ap.add_argument("--boot-b", type=int, default=10_000)
    ap.add_argument("--boot-repeats", type=int, default=5)
    ap.add_argument("--np-boot", type=int, default=200)
    ap.add_argument("--cov-p", type=lambda s: int(float(s)), default=125_000)
    ap.add_argument("--cov-c", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", nargs="*", default=None, help="default: all available")
    ap.add_argument(
        "--threads", type=int, default=0, help="set POPE_NUM_THREADS (default: leave as is)"
    )
    args = ap.parse_args(argv)
    if args.threads > 0:
        os.environ["POPE_NUM_THREADS"] = str(args.threads)
    res = run(args)
    m = res["machine"]
    print(
        f"{m['cpu']}, nproc={m['nproc']}, POPE_NUM_THREADS={m['POPE_NUM_THREADS']}, "
        f"loadavg before {m['loadavg_before']} after {m['loadavg_after']}"
    )
    print(to_markdown(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
