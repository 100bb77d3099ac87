r"""``pope report``: figures and a self-contained HTML page from ``pope evaluate`` results.

Reads the JSON that ``pope evaluate --out`` writes (one policy: ``pope``/``baselines`` keys;
several: a ``policies`` mapping of such results) and writes into ``--out DIR``:

* ``estimates.png`` — every estimate (POPE relevance, diversity, total; the baselines) of
  every policy with its interval (as reported: level and method in the JSON);
* ``weights.png`` — histogram of the log importance weights, when the JSON has them;
* ``ess.png`` — effective sample size of each policy's importance weights,
  :math:`(\sum w)^2/\sum w^2`, against the number of logged responses;
* ``aspects.png`` — logging vs target coverage per aspect, when the JSON has the table;
* ``report.html`` — one page embedding the figures (base64 PNG) and the numbers.

Files of an earlier report in DIR are replaced only with ``--overwrite``. Matplotlib runs on
the Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["REPORT_FILES", "add_arguments", "load_results", "run", "write_report"]

REPORT_FILES = ("estimates.png", "weights.png", "ess.png", "aspects.png", "report.html")


def load_results(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{policy name: results}`` from a ``pope evaluate`` JSON file.

    Raises
    ------
    ValueError
        Not JSON, or no ``pope`` estimates in it.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"results file not found: {p}")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a JSON results file ({e})") from e
    if isinstance(d, dict) and isinstance(d.get("policies"), dict):
        out = {str(k): v for k, v in d["policies"].items() if isinstance(v, dict) and "pope" in v}
    elif isinstance(d, dict) and "pope" in d:
        name = (d.get("settings") or {}).get("policy") or "policy"
        out = {str(name): d}
    else:
        out = {}
    if not out:
        raise ValueError(f"{p}: no 'pope' estimates in it (write it with pope evaluate --out)")
    return out


def _estimates(res: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [
        (f"POPE {k}", res["pope"][k])
        for k in ("relevance", "diversity", "total")
        if isinstance(res["pope"].get(k), dict)
    ]
    rows += [(k, v) for k, v in (res.get("baselines") or {}).items() if isinstance(v, dict)]
    return rows


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _fig_estimates(plt: Any, results: dict[str, dict[str, Any]]) -> bytes:
    labels = [lab for lab, _ in _estimates(next(iter(results.values())))]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(labels) * len(results)))
    y = 0.0
    ticks, names = [], []
    for pi, (pol, res) in enumerate(results.items()):
        for lab, e in _estimates(res):
            v, lo, hi = _num(e.get("value")), _num(e.get("ci_lower")), _num(e.get("ci_upper"))
            if math.isfinite(lo) and math.isfinite(hi):  # the interval as reported (a
                # bias-aware one need not be centred on the value)
                ax.hlines(y, lo, hi, color=f"C{pi}", lw=2)
            ax.plot([v], [y], "o", color=f"C{pi}", label=pol if lab == labels[0] else None)
            ticks.append(y)
            names.append(lab)
            y -= 1
        y -= 0.5
    ax.set_yticks(ticks, names)
    ax.set_xlabel("estimate with its interval")
    ax.grid(axis="x", alpha=0.3)
    if len(results) > 1:
        ax.legend(loc="best")
    return _png(fig)


def _fig_weights(plt: Any, results: dict[str, dict[str, Any]]) -> bytes | None:
    import numpy as np

    have = {
        k: np.asarray(v["log_weights"], dtype=float)
        for k, v in results.items()
        if isinstance(v.get("log_weights"), list) and v["log_weights"]
    }
    if not have:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (pol, lw) in enumerate(have.items()):
        ax.hist(lw[np.isfinite(lw)] / math.log(10), bins=40, alpha=0.6, color=f"C{i}", label=pol)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel("log10 importance weight (0: target and logging agree)")
    ax.set_ylabel("responses")
    if len(have) > 1:
        ax.legend()
    return _png(fig)


def _fig_ess(plt: Any, results: dict[str, dict[str, Any]]) -> bytes:
    # one ESS per policy: that of its importance weights over the logged responses (shared by
    # the POPE estimates and the baselines), against the number of responses
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(results)), 3.5))
    names = list(results)
    ess = [_num(r["pope"]["total"].get("ess")) for r in results.values()]
    n = [_num(r.get("n_responses")) for r in results.values()]
    ax.bar(range(len(names)), n, color="0.85", label="responses n")
    ax.bar(range(len(names)), ess, width=0.5, color="C0", label="ESS of the weights")
    for i, (e, k) in enumerate(zip(ess, n)):
        if math.isfinite(e) and k:
            ax.text(i, e, f"{100 * e / k:.0f}%", ha="center", va="bottom")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("effective sample size")
    ax.legend()
    return _png(fig)


def _fig_aspects(plt: Any, results: dict[str, dict[str, Any]]) -> bytes | None:
    pol, res = next(
        ((k, v) for k, v in results.items() if (v.get("aspects") or {}).get("table")), (None, None)
    )
    if res is None or len(res["aspects"]["table"]) < 2:
        return None
    table = res["aspects"]["table"]
    names = [r["name"] if r.get("name") is not None else str(r["aspect"]) for r in table]
    x = list(range(len(table)))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(table)), 3.5))
    ax.bar(
        [i - 0.2 for i in x],
        [_num(r["logging_coverage"]) for r in table],
        0.4,
        label="logging (logged responses)",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [_num(r.get("target_coverage")) for r in table],
        0.4,
        label=f"target ({pol}, plug-in)",
    )
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("coverage (mean over prompts)")
    ax.legend()
    return _png(fig)


def _html(results: dict[str, dict[str, Any]], figures: dict[str, bytes], source: str) -> str:
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>pope report: "
        f"{esc(source)}</title><style>body{{font-family:sans-serif;max-width:60em;margin:"
        "auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:"
        "2px 6px;text-align:right}}</style></head><body>",
        f"<h1>pope report</h1><p>results: {esc(source)}</p>",
    ]
    for pol, res in results.items():
        parts.append(
            f"<h2>{esc(pol)}</h2><table><tr><th>estimate</th><th>value</th>"
            "<th>stderr</th><th>interval</th><th>ESS</th><th>n</th></tr>"
        )
        for lab, e in _estimates(res):
            parts.append(
                f"<tr><td>{esc(lab)}</td><td>{_num(e.get('value')):.4f}</td>"
                f"<td>{_num(e.get('stderr')):.4f}</td><td>[{_num(e.get('ci_lower')):.4f}, "
                f"{_num(e.get('ci_upper')):.4f}] {esc(str(e.get('ci_method', '')))}</td>"
                f"<td>{_num(e.get('ess')):.4g}</td><td>{e.get('n')}</td></tr>"
            )
        parts.append("</table>")
        for w in res.get("warnings") or []:
            parts.append(f"<p><b>warning:</b> {esc(str(w))}</p>")
        note = (res.get("propensity") or {}).get("meaning")
        if note:
            parts.append(f"<p>propensities: {esc(str(note))}</p>")
    for name, png in figures.items():
        b64 = base64.b64encode(png).decode()
        parts.append(
            f"<h2>{esc(name)}</h2><img alt='{esc(name)}' src='data:image/png;base64,{b64}'>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    results_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write the figures and ``report.html`` for ``results_path`` into ``out_dir``.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    FileExistsError
        ``out_dir`` holds files of an earlier report and ``overwrite`` is false.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load_results(results_path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; the report is a directory")
    old = [n for n in REPORT_FILES if (out / n).exists()]
    if old and not overwrite:
        raise FileExistsError(
            f"{out} holds an earlier report ({', '.join(old)}); pass --overwrite to replace it"
        )
    figs: dict[str, bytes] = {}
    try:
        figs["estimates"] = _fig_estimates(plt, results)
        w = _fig_weights(plt, results)
        if w is not None:
            figs["weights"] = w
        figs["ess"] = _fig_ess(plt, results)
        a = _fig_aspects(plt, results)
        if a is not None:
            figs["aspects"] = a
    finally:
        plt.close("all")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:  # a figure the new report lacks must not linger from the old one
        for n in REPORT_FILES:
            (out / n).unlink(missing_ok=True)
    written = []
    for name, png in figs.items():
        (out / f"{name}.png").write_bytes(png)
        written.append(out / f"{name}.png")
    (out / "report.html").write_text(_html(results, figs, str(results_path)))
    written.append(out / "report.html")
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``pope report`` options."""
    p.add_argument("results", metavar="RESULTS.json", help="output of pope evaluate --out")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the report")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the files of an earlier report in DIR"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``pope report``."""
    files = write_report(args.results, args.out, overwrite=args.overwrite)
    for f in files:
        print(f)
    return 0
