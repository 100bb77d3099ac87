"""CPU backends benchmark: every figure a ratio against a baseline timed in the same run.

Usage::

    python bench/bench_cpu.py [--n 1e7] [--repeats 25] [--runs 3] [--out bench/cpu_results.json]

Timing: within a group, the baseline and the timed functions are called in turn, repeat after
repeat (interleaved, in an order shuffled at each repeat), after one warm-up call each
(Numba's compile excluded), so load from other processes hits them alike. Each function's best
and median time over the repeats are kept; a ratio is formed from the best times (the run's
estimate of the uncontended time) and, for comparison, from the medians. With ``--runs R``
the whole benchmark runs R times and the summary gives the median over the runs of each
ratio (the per-run tables are in the JSON).

Figures:

* IPS at ``n`` samples: ``np.copyto`` of ``n`` float64 (2 * 8 * n bytes moved) is the bandwidth
  yardstick; the backends' ``ips_moments_checked`` and the public ``pope.estimators.ips``
  (``clip=20`` and none) and ``snips`` read 3 * 8 * n bytes once. Ratio: their GB/s over the
  copy's (target >= 0.60 for the public functions).
* Bootstrap, ``--boot-b`` resamples of ``--boot-n`` rows (one column): against a chunked NumPy
  gather bootstrap (``rng.integers`` indices, ``values[idx].sum(axis=1)``, 20 resamples per
  chunk, timed on ``--np-boot`` resamples and scaled linearly; target >= 25x), and against
  OBP 0.5.7's ``estimate_confidence_interval_by_bootstrap`` when ``obp`` is importable (the
  public ``ips(...).ci(method="bootstrap")`` and the backends' ``bootstrap_sums`` on the same
  IPS contributions, n and B, one timed call each; target >= 60x). OBP declares Python < 3.11;
  on 3.11 ``pip install --no-deps --ignore-requires-python --target DIR obp==0.5.7 seaborn``
  and ``PYTHONPATH=DIR`` make it importable (its bootstrap needs only numpy and sklearn).
* Coverage entropy on ``--cov-p`` prompts of K uniform in [4, 12] (about 1e6 responses),
  C = ``--cov-c``, self-normalised: the plug-in (``segment_coverage_hard`` / ``_soft``) against
  a plain NumPy ``bincount`` plug-in (target >= 10x, hard labels); the jackknife
  (``segment_jackknife_entropy_*``) against the same backend's plug-in (target <= 2x, hard
  labels; soft rows need C logs per deletion against C per prompt for the plug-in, no target).
  The NumPy reference of both is timed apart (slow), without a target.

The 1-minute load average before and after each run is recorded; a busy machine slows the
2-thread backends more than the single-threaded NumPy baselines.
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

Timing = dict[str, float]


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, Timing]:
    """Best and median wall time of each function, calls interleaved over the repeats in an
    order shuffled at each repeat (fixed seed): a call's time depends on what ran before it
    (a large temporary freed by the previous call is mapped again, with fresh pages to fault),
    so no function always follows the same one."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = np.random.default_rng(12345)
    names = list(fns)
    for _ in range(repeats):
        for name in order.permutation(names):
            fn = fns[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {
        k: {"best_s": min(v), "median_s": statistics.median(v), "repeats": repeats}
        for k, v in times.items()
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _row(rows: list, task: str, backend: str, t: Timing, **extra) -> None:
    rows.append({"task": task, "backend": backend, **t, **extra})


def _ratio(
    rows: list,
    task: str,
    backend: str,
    t: Timing,
    base: Timing,
    of: str,
    invert: bool = False,
    target: str | None = None,
    **extra,
) -> None:
    """Row with ratio = base / t (or t / base with ``invert``) from best and median times."""

    def r(key: str) -> float:
        return t[key] / base[key] if invert else base[key] / t[key]

    row = {"ratio": r("best_s"), "ratio_median": r("median_s"), "ratio_of": of, **extra}
    if target is not None:
        bound = float(target.split()[-1])
        row |= {
            "target": target,
            "met": row["ratio"] <= bound if target.startswith("<=") else row["ratio"] >= bound,
        }
    _row(rows, task, backend, t, **row)


def _bench_ips(mods: dict, args: argparse.Namespace, rng: np.random.Generator, rows: list) -> None:
    n = args.n
    lt = np.minimum(rng.normal(-30.0, 3.0, n), 0.0)
    ll = np.minimum(lt + rng.normal(0.0, 1.0, n), 0.0)
    rw = rng.random(n)
    dst = np.empty(n)
    log_clip = float(np.log(20.0))
    fns: dict[str, Callable[[], object]] = {"copy": lambda: np.copyto(dst, lt)}
    public = {
        "pope.estimators.ips(clip=20)": lambda b: E.ips(
            reward=rw, log_target=lt, log_logging=ll, clip=20.0, backend=b
        ),
        "pope.estimators.ips()": lambda b: E.ips(
            reward=rw, log_target=lt, log_logging=ll, backend=b
        ),
        "pope.estimators.snips()": lambda b: E.snips(
            reward=rw, log_target=lt, log_logging=ll, backend=b
        ),
    }
    for b, mod in mods.items():
        if b == "reference":
            continue
        fns[f"ips_moments_checked (kernel)|{b}"] = lambda mod=mod: mod.ips_moments_checked(
            lt, ll, rw, log_clip
        )
        for label, f in public.items():
            fns[f"{label}|{b}"] = lambda f=f, b=b: f(b)
    timed = _interleaved(fns, args.repeats)
    if "reference" in mods:  # slow: apart, a few repeats, against a copy timed alongside
        ref = mods["reference"]
        rfns: dict[str, Callable[[], object]] = {"copy": lambda: np.copyto(dst, lt)}
        rfns["ips_moments_checked (kernel)|reference"] = lambda: ref.ips_moments_checked(
            lt, ll, rw, log_clip
        )
        for label, f in public.items():
            rfns[f"{label}|reference"] = lambda f=f: f("reference")
        ref_timed = _interleaved(rfns, max(2, args.repeats // 8))
    t_copy = timed.pop("copy")
    copy_gbs = 2 * 8 * n / t_copy["best_s"] / 1e9
    _row(rows, f"np.copyto n={n:.0e} (baseline)", "numpy", t_copy, **{"GB/s": copy_gbs})

    def add(label_b: str, t: Timing, base: Timing) -> None:
        label, b = label_b.split("|")
        # GB/s over the copy's: (3 * 8 n / t) / (2 * 8 n / t_copy) = 1.5 t_copy / t
        row = {
            "GB/s": 3 * 8 * n / t["best_s"] / 1e9,
            "ratio": 1.5 * base["best_s"] / t["best_s"],
            "ratio_median": 1.5 * base["median_s"] / t["median_s"],
            "ratio_of": "copy bandwidth",
        }
        if label.startswith("pope.") and b != "reference":
            row |= {"target": ">= 0.60", "met": row["ratio"] >= 0.60}
        _row(rows, f"{label} n={n:.0e}", b, t, **row)

    for key, t in timed.items():
        add(key, t, t_copy)
    if "reference" in mods:
        r_copy = ref_timed.pop("copy")
        for key, t in ref_timed.items():
            add(key, t, r_copy)


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


def _bench_bootstrap(
    mods: dict, args: argparse.Namespace, rng: np.random.Generator, rows: list
) -> None:
    n, B = args.boot_n, args.boot_b
    values = rng.random((n, 1))
    v1 = values[:, 0].copy()
    k = args.np_boot
    fns: dict[str, Callable[[], object]] = {"numpy": lambda: _numpy_bootstrap(v1, k, 1)}
    for b, mod in mods.items():
        if b != "reference":  # the reference is a definition (a Python loop over stream steps)
            fns[b] = lambda mod=mod: mod.bootstrap_sums(values, B, 1)
    timed = _interleaved(fns, args.boot_repeats)
    t_np = {key: (v * B / k if key.endswith("_s") else v) for key, v in timed.pop("numpy").items()}
    task = f"bootstrap n={n:.0e} B={B}"
    _row(rows, f"{task} (baseline)", "numpy chunked gather", t_np, extrapolated_from=k)
    for b, t in timed.items():
        _ratio(rows, task, b, t, t_np, "numpy gather time / this", target=">= 25")
    _bench_obp(mods, args, rows, task, v1, rng)


def _bench_obp(
    mods: dict, args: argparse.Namespace, rows: list, task: str, v1: np.ndarray, rng
) -> None:
    """OBP 0.5.7's percentile bootstrap against ``Estimate.ci(method="bootstrap")`` and the
    backends' ``bootstrap_sums``, same n, B and data, when ``obp`` is importable (it declares
    Python < 3.11; ``pip install --no-deps --ignore-requires-python --target DIR obp==0.5.7
    seaborn`` and ``PYTHONPATH=DIR`` make it importable on 3.11)."""
    try:
        from obp.utils import estimate_confidence_interval_by_bootstrap
    except ImportError:
        rows.append(
            {
                "task": f"{task} (OBP 0.5.7)",
                "backend": "obp",
                "best_s": None,
                "median_s": None,
                "note": "obp not importable here; not compared",
            }
        )
        return
    import pope.estimators as est

    n, B = v1.shape[0], args.boot_b
    # an IPS log whose contributions w_i r_i are what OBP resamples
    lt = np.minimum(rng.normal(-1.0, 0.3, n), 0.0)
    ll = np.minimum(rng.normal(-1.0, 0.3, n), 0.0)
    contrib = np.exp(lt - ll) * v1
    fns: dict[str, Callable[[], object]] = {
        "obp": lambda: estimate_confidence_interval_by_bootstrap(
            contrib, n_bootstrap_samples=B, random_state=1
        )
    }
    for b, mod in mods.items():
        if b == "reference":
            continue
        fns[f"kernel|{b}"] = lambda mod=mod: mod.bootstrap_sums(contrib[:, None], B, 1)
        fns[f"public|{b}"] = lambda b=b: est.ips(
            reward=v1, log_target=lt, log_logging=ll, backend=b
        ).ci(method="bootstrap", n_boot=B, seed=1)
    timed = _interleaved(fns, 1)
    t_obp = timed.pop("obp")
    _row(rows, f"{task} (OBP 0.5.7 estimate_confidence_interval_by_bootstrap)", "obp", t_obp)
    for key, t in timed.items():
        kind, b = key.split("|")
        label = (
            f"{task} bootstrap_sums (kernel)"
            if kind == "kernel"
            else f"{task} ips(...).ci(method='bootstrap')"
        )
        _ratio(rows, label, b, t, t_obp, "OBP time / this", target=">= 60")


def _coverage_case(args: argparse.Namespace, rng: np.random.Generator):
    C, P = args.cov_c, args.cov_p
    counts = rng.integers(4, 13, P)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    N = int(ptr[-1])
    lw = rng.normal(0.0, 1.0, N)
    labels = rng.integers(0, C, N)
    soft = rng.dirichlet(np.ones(C), N)
    seg = np.repeat(np.arange(P), counts)
    return C, P, ptr, N, lw, labels, soft, seg


def _bench_coverage(
    mods: dict, args: argparse.Namespace, rng: np.random.Generator, rows: list
) -> None:
    C, P, ptr, N, lw, labels, soft, seg = _coverage_case(args, rng)

    def numpy_plugin() -> np.ndarray:
        """Plain NumPy: per-prompt max shift, bincount histogram, normalise, -sum p log p."""
        mx = np.maximum.reduceat(lw, ptr[:-1])
        w = np.exp(lw - mx[seg])
        hist = np.bincount(seg * C + labels, weights=w, minlength=P * C).reshape(P, C)
        z = np.bincount(seg, weights=w, minlength=P)
        p = hist / z[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)

    kinds = {
        "hard": (
            lambda m: m.segment_coverage_hard(ptr, lw, labels, C, True),
            lambda m: m.segment_jackknife_entropy_hard(ptr, lw, labels, C, True),
        ),
        "soft": (
            lambda m: m.segment_coverage_soft(ptr, lw, soft, True),
            lambda m: m.segment_jackknife_entropy_soft(ptr, lw, soft, True),
        ),
    }
    tag = f"N={N:.2e} P={P:.0e} C={C}"
    fns: dict[str, Callable[[], object]] = {"numpy": numpy_plugin}
    for b, mod in mods.items():
        if b == "reference":
            continue
        for kind, (plug, jack) in kinds.items():
            fns[f"plug|{kind}|{b}"] = lambda mod=mod, f=plug: f(mod)
            fns[f"jack|{kind}|{b}"] = lambda mod=mod, f=jack: f(mod)
    timed = _interleaved(fns, args.repeats)
    if "reference" in mods:
        ref = mods["reference"]
        rfns = {"numpy": numpy_plugin}
        for kind, (plug, jack) in kinds.items():
            rfns[f"plug|{kind}|reference"] = lambda f=plug: f(ref)
            rfns[f"jack|{kind}|reference"] = lambda f=jack: f(ref)
        ref_timed = _interleaved(rfns, 2)
    t_base = timed.pop("numpy")
    _row(rows, f"coverage entropy hard {tag} (baseline)", "numpy bincount", t_base)
    groups = [(timed, t_base, True)]
    if "reference" in mods:
        groups.append((ref_timed, ref_timed.pop("numpy"), False))
    for tt, base, compiled in groups:
        for kind in kinds:
            for b in [k.split("|")[2] for k in tt if k.startswith(f"plug|{kind}|")]:
                tp, tj = tt[f"plug|{kind}|{b}"], tt[f"jack|{kind}|{b}"]
                task = f"coverage entropy %s {kind} {tag}"
                if kind == "hard":
                    _ratio(
                        rows,
                        task % "plug-in",
                        b,
                        tp,
                        base,
                        "numpy bincount time / this",
                        target=">= 10" if compiled else None,
                    )
                else:
                    _row(rows, task % "plug-in", b, tp)
                _ratio(
                    rows,
                    task % "jackknife",
                    b,
                    tj,
                    tp,
                    "this / plug-in time (same backend)",
                    invert=True,
                    target="<= 2" if compiled and kind == "hard" else None,
                )


def run(args: argparse.Namespace) -> dict:
    """Run every benchmark once; returns the JSON-able results."""
    rng = np.random.default_rng(args.seed)
    names = args.backends or available_backends()
    mods = {b: get_backend(b) for b in names}
    res: dict = {
        "loadavg_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "rows": [],
    }
    rows = res["rows"]
    if "ips" in args.only:
        _bench_ips(mods, args, rng, rows)
    if "bootstrap" in args.only:
        _bench_bootstrap(mods, args, rng, rows)
    if "coverage" in args.only:
        _bench_coverage(mods, args, rng, rows)
    res["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return res


def summarize(runs: list[dict]) -> list[dict]:
    """Per (task, backend): the median over the runs of the best-time ratio and of the time."""
    out = []
    for i, r0 in enumerate(runs[0]["rows"]):
        same = [run["rows"][i] for run in runs]
        row = {"task": r0["task"], "backend": r0["backend"]}
        for key in ("best_s", "median_s", "ratio", "ratio_median", "GB/s"):
            vals = [r[key] for r in same if r.get(key) is not None]
            if vals:
                row[key] = statistics.median(vals)
        for key in ("ratio_of", "target", "note", "extrapolated_from"):
            if key in r0:
                row[key] = r0[key]
        if "ratio" in row and "target" in row:
            bound = float(row["target"].split()[-1])
            row["met"] = (
                row["ratio"] <= bound if row["target"].startswith("<=") else row["ratio"] >= bound
            )
            row["per_run"] = [r["ratio"] for r in same]
        out.append(row)
    return out


def to_markdown(rows: list[dict]) -> str:
    """Markdown table of (summary) rows."""
    lines = [
        "| task | backend | best | median | ratio (best) | ratio (median) | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("best_s") is None:
            lines.append(f"| {r['task']} | {r['backend']} | | | {r.get('note', '')} | | |")
            continue

        def fmt(s: float) -> str:
            return f"{s * 1e3:.1f} ms" if s < 1.0 else f"{s:.3f} s"

        ratio = ratio_med = ""
        if "ratio" in r:
            ratio = f"{r['ratio']:.2f} ({r['ratio_of']})"
            ratio_med = f"{r['ratio_median']:.2f}"
        elif "GB/s" in r:
            ratio = f"{r['GB/s']:.1f} GB/s"
        if "extrapolated_from" in r:
            ratio = f"scaled from B={r['extrapolated_from']}"
        met = r.get("met")
        tgt = "" if met is None else f"{r['target']}: {'met' if met else 'NOT met'}"
        if "per_run" in r and len(r["per_run"]) > 1:
            tgt += " (runs: " + ", ".join(f"{x:.2f}" for x in r["per_run"]) + ")"
        lines.append(
            f"| {r['task']} | {r['backend']} | {fmt(r['best_s'])} | "
            f"{fmt(r['median_s'])} | {ratio} | {ratio_med} | {tgt} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=lambda s: int(float(s)), default=10_000_000)
    ap.add_argument("--out", type=Path, default=Path("bench/cpu_results.json"))
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--runs", type=int, default=1, help="whole-benchmark runs (median)")
    ap.add_argument("--boot-n", type=lambda s: int(float(s)), default=100_000)
    ap.add_argument("--boot-b", type=int, default=10_000)
    ap.add_argument("--boot-repeats", type=int, default=5)
    ap.add_argument("--np-boot", type=int, default=200)
    ap.add_argument("--cov-p", type=lambda s: int(float(s)), default=125_000)
    ap.add_argument("--cov-c", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", nargs="*", default=None, help="default: all available")
    ap.add_argument(
        "--only",
        nargs="*",
        default=["ips", "bootstrap", "coverage"],
        choices=["ips", "bootstrap", "coverage"],
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="set POPE_NUM_THREADS (default: leave as is)"
    )
    args = ap.parse_args(argv)
    if args.threads > 0:
        os.environ["POPE_NUM_THREADS"] = str(args.threads)
    machine = {
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "POPE_NUM_THREADS": os.environ.get("POPE_NUM_THREADS"),
    }
    try:
        import numba

        machine["numba"] = numba.__version__
        machine["numba_threads"] = numba.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    runs = []
    for i in range(args.runs):
        runs.append(run(args))
        print(
            f"run {i + 1}/{args.runs}: loadavg before {runs[-1]['loadavg_before']} "
            f"after {runs[-1]['loadavg_after']}",
            flush=True,
        )
    summary = summarize(runs)
    res = {
        "machine": machine,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "backends": args.backends or available_backends(),
        "summary": summary,
        "runs": runs,
    }
    print(
        f"{machine['cpu']}, nproc={machine['nproc']}, "
        f"POPE_NUM_THREADS={machine['POPE_NUM_THREADS']}, {args.runs} run(s)"
    )
    print(to_markdown(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
