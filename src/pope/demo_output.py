"""Printed tables, JSON conversion and the figure of ``pope demo`` (:mod:`pope.demo`)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["make_figure", "print_evaluation", "print_training", "to_jsonable"]


def _fmt(x: float, nd: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{nd}f}"


def print_evaluation(ev: dict[str, Any], file: Any = None) -> None:
    """The per-target tables of part 1."""
    file = file or sys.stdout
    e = ev["env"]
    print(
        f"\n== Part 1: off-policy evaluation (response level; {e['log_prompts']} logged "
        f"prompts x K={e['k']} = {e['n_responses']} responses, {e['n_candidates']} candidates,"
        f" C={e['n_aspects']} aspects; 95% normal intervals)",
        file=file,
    )
    hdr = (
        f"{'estimator':24s} {'qty':3s} {'truth':>7s} {'estimate':>8s} "
        f"{'95% CI':>19s} {'cov':>3s} {'ESS':>8s} {'error':>8s}"
    )
    for p in ev["policies"]:
        t = p["truth"]
        print(
            f"\n-- target {p['policy']}: KL(pi||pi0)={t['kl']:.3f}  U={t['relevance']:.4f} "
            f"D={t['diversity']:.4f} V={t['total']:.4f}  (K-list: D_K={t['list_diversity']:.4f}"
            f" V_K={t['list_total']:.4f})",
            file=file,
        )
        print(hdr, file=file)
        for r in p["estimates"]:
            ci = f"[{_fmt(r['ci_lower'])}, {_fmt(r['ci_upper'])}]"
            print(
                f"{r['estimator']:24s} {r['quantity']:3s} {r['truth']:7.4f} "
                f"{r['estimate']:8.4f} {ci:>19s} {'yes' if r['covered'] else 'no':>3s} "
                f"{_fmt(r['ess'], 1):>8s} {r['error']:+8.4f}",
                file=file,
            )


def print_training(tr: dict[str, Any], lam: float, file: Any = None) -> None:
    """The before/after table of part 2."""
    file = file or sys.stdout
    e = tr["env"]
    b = tr["before"]
    print(
        f"\n== Part 2: off-policy training of a tiny GPT-2 ({e['n_prompts']} prompts x "
        f"K={e['k']} logged responses, {e['steps']} full-batch Adam steps, lr={e['lr']:g}, "
        f"clip={e['clip']:g}; lambda={lam:g})",
        file=file,
    )
    print(
        "TRUE values measured on-policy by sampling (+- standard error), before -> after:",
        file=file,
    )
    print(f"{'method':26s} {'relevance U':>25s} {'diversity D':>25s} {'total V':>25s}", file=file)

    def cell(k: str, a: dict[str, float]) -> str:
        return f"{b[k]:.3f} -> {a[k]:.3f}+-{a[k + '_stderr']:.4f}"

    for m in tr["methods"].values():
        a = m["after"]
        print(
            f"{m['label']:26s} {cell('relevance', a):>25s} {cell('diversity', a):>25s} "
            f"{cell('total', a):>25s}",
            file=file,
        )
    print("\nPOPE estimate of each trained policy's total V from logs vs its truth:", file=file)
    print(
        f"{'method':26s} {'truth V':>8s} {'est. (train log)':>17s} {'est. (held-out)':>16s} "
        f"{'ESS held-out':>12s}",
        file=file,
    )
    for m in tr["methods"].values():
        pe = m["pope_estimate"]
        print(
            f"{m['label']:26s} {m['after']['total']:8.3f} {pe['train_log']['total']:17.3f} "
            f"{pe['heldout_log']['total']:16.3f} {pe['heldout_log']['ess']:12.1f}",
            file=file,
        )


# ----------------------------------------------------------------------------- outputs
def to_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def make_figure(results: dict[str, Any], path: Path) -> None:
    """``demo.png``: true U, D, V vs training step per method; estimate vs truth scatter."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    tr = results["training"]
    for ax, key, title in zip(
        axes.flat[:3],
        ("relevance", "diversity", "total"),
        (
            "true relevance U",
            "true diversity D",
            f"true value V = U + {results['config']['lam']:g} D",
        ),
    ):
        for m in tr["methods"].values():
            h = m["history"]
            st = np.array([p["step"] for p in h])
            y = np.array([p[key] for p in h])
            se = np.array([p[key + "_stderr"] for p in h])
            line = ax.plot(st, y, marker="o", ms=3, label=m["label"])[0]
            ax.fill_between(st, y - 2 * se, y + 2 * se, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_title(title + " (on-policy MC, +-2 se)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    ax = axes[1, 1]
    colors = {"U": "tab:blue", "D": "tab:green", "V": "tab:red"}
    markers = {
        "relevance": ("o", "single-response"),
        "list": ("^", "SIPS/IIPS/RIPS"),
        "pope": ("s", "POPE decomposed"),
        "joint": ("x", "joint (list/total)"),
    }
    for fam, (mk, fam_label) in markers.items():
        for q, c in colors.items():
            pts = [
                (r["truth"], r["estimate"])
                for p in results["evaluation"]["policies"]
                for r in p["estimates"]
                if r["quantity"] == q and r["family"] == fam
            ]
            if pts:
                t, est = np.array(pts).T
                ax.scatter(
                    t,
                    np.clip(est, -1, 3),
                    s=18,
                    alpha=0.7,
                    color=c,
                    marker=mk,
                    label=f"{fam_label}: {q}",
                )
    for m in tr["methods"].values():
        ax.scatter(
            [m["after"]["total"]],
            [m["pope_estimate"]["heldout_log"]["total"]],
            marker="*",
            s=120,
            edgecolor="k",
            label=f"LM {m['label']}: POPE total, held-out log",
        )
    lims = ax.get_xlim()
    ax.plot(lims, lims, "k--", lw=1)
    ax.set_xlabel("truth")
    ax.set_ylabel("estimate (clipped to [-1, 3])")
    ax.set_title("estimate vs truth")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI
