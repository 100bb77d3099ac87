r"""Accuracy of POPE's decomposed estimators against joint and standard OPE estimators.

Ground truth: :class:`pope.synthetic.CandidateEnv` (exact values by enumeration). For every
cell of two grids — sample size (``n`` logged prompts x ``K`` i.i.d. responses each, at a
fixed target) and target/logging divergence (targets tilted further and further from
:math:`\pi_0`, at fixed ``n``, ``K``) — ``--seeds`` independent logs are drawn and every
estimator of :func:`pope.demo.evaluation_suite` is run. Reported per estimator and cell: bias,
standard deviation, RMSE (against the true value), coverage of the 95% normal interval and
the mean ESS.

Definitions (also in bench/RESULTS.md):

* **decomposed (POPE)** — ``pope.evaluate``: :math:`\hat V = \hat U + \lambda\hat D`,
  :math:`\hat U = \sum w r/\sum w` over responses (or IPS), :math:`\hat D = \frac1n\sum_i
  h_i`, :math:`\hat p_i = \sum_k w_{ik} q_{ik}/\sum_k w_{ik}`: each response carries its own
  weight :math:`w_{ik} = \pi(y_{ik}|x_i)/\pi_0(y_{ik}|x_i)`. Two per-prompt entropy
  estimators: the plug-in :math:`h_i = H(\hat p_i)/\log C` (``diversity_estimator="plugin"``)
  and its delete-one-response jackknife :math:`h_i = [K_i H(\hat p_i) - \frac{K_i-1}{K_i}
  \sum_k H(\hat p_{i,-k})]/\log C` (``"jackknife"``); both rows are computed with the
  estimator named explicitly, whatever the library default. Bench-only rows: the
  jackknife clipped to :math:`[0, 1]` per prompt, and a Miller–Madow correction.
* **joint (list level)** — the list of prompt :math:`i` is one action with weight
  :math:`W_i = \prod_k w_{ik}` and total reward :math:`R_i = \bar r_i + \lambda H(\bar q_i)/\log
  C`; IPS (= SIPS on the total), SNIPS, clipped IPS, DM and DR on :math:`(W_i, R_i)`.
  Unbiased (IPS) for :math:`V_K = U + \lambda D_K`, the value of a :math:`K`-list
  (:math:`D_K` = expected coverage entropy of :math:`K` i.i.d. responses).
* **joint (per response)** — IPS on the per-response total :math:`r_{ik} + \lambda d_{ik}`,
  :math:`d_{ik} = -\sum_c q_{ik}(c)\log\hat p_i(c)/\log C` (POPE's diversity reward).

Usage::

    python bench/accuracy.py                    # recorded configuration (200 seeds)
    python bench/accuracy.py --seeds 20 --quick # smoke run
    python bench/accuracy.py --update-results   # also rewrite its block in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import pope
from pope.demo import _row, evaluation_suite, true_values
from pope.synthetic import CandidateEnv, SoftmaxPolicy

HERE = Path(__file__).resolve().parent
SECTION = "## Accuracy (synthetic ground truth)"

POLY_TOTAL = "POPE total, polynomial D (default)"
POLY_DIV = "POPE diversity, polynomial (default)"
JK_TOTAL = "POPE total, jackknife D"
PLUG_TOTAL = "POPE total, plug-in D"
JK_DIV = "POPE diversity, jackknife"
PLUG_DIV = "POPE diversity, plug-in"
GS_SN = "Gini-Simpson D_GS, self-normalised"
GS_IPS = "Gini-Simpson D_GS, IPS"
V_ESTIMATORS = [
    POLY_TOTAL,
    JK_TOTAL,
    PLUG_TOTAL,
    "POPE total (IPS rel.), jackknife D",
    "joint IPS (=SIPS)",
    "joint SNIPS",
    "joint IPS clip 10",
    "joint DM",
    "joint DR",
    "IPS r+lam*d",
    "POPE total, jackknife D clipped to [0,1] (bench-only)",
    "POPE total, D Miller-Madow (bench-only)",
]
D_ESTIMATORS = [POLY_DIV, JK_DIV, PLUG_DIV]
GS_ESTIMATORS = [GS_SN, GS_IPS]
U_ESTIMATORS = [
    "IPS",
    "SNIPS",
    "IPS clip 10",
    "SG-IPS",
    "DM",
    "DR",
    "SNDR",
    "Switch-DR tau 10",
    "SIPS/K",
    "IIPS/K",
    "RIPS/K",
]


def target(env: CandidateEnv, alpha: float) -> SoftmaxPolicy:
    r"""Targets along one direction: :math:`z = z^0 + 2\alpha\,r + \alpha\,d^{\pi_0}`."""
    return env.tilt(utility=2.0 * alpha, diversity=alpha, name=f"alpha={alpha:g}")


def cells(quick: bool) -> list[dict[str, Any]]:
    """The grid: sample size (n, K) at alpha = 1, and divergence (alpha) at n = 1000, K = 4."""
    if quick:
        size = [(250, 2), (1000, 4)]
        alphas = [0.0, 1.0, 4.0]
    else:
        size = [(n, k) for k in (2, 4, 8, 16) for n in (250, 1000, 4000)]
        alphas = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    out = [{"axis": "size", "n": n, "k": k, "alpha": 1.0} for n, k in size]
    out += [{"axis": "divergence", "n": 1000, "k": 4, "alpha": a} for a in alphas]
    return out


def _shifted_row(name: str, value: float, base: Any, truth: float) -> dict[str, Any]:
    """A bench-only V row: ``value`` with the interval of ``base`` (an Estimate) shifted to it."""
    shift = value - base.value
    lo, hi = (x + shift for x in base.ci(0.05))
    return {
        "estimator": name,
        "family": "pope",
        "quantity": "V",
        "truth": truth,
        "estimate": value,
        "stderr": base.stderr,
        "ci_lower": lo,
        "ci_upper": hi,
        "covered": bool(lo <= truth <= hi),
        "ess": base.diagnostics.ess,
        "error": value - truth,
    }


def pope_rows(
    log: Any, pol: SoftmaxPolicy, lam: float, truth: dict[str, float]
) -> list[dict[str, Any]]:
    """POPE's rows with the diversity estimator named explicitly (plug-in and jackknife).

    Also the bench-only jackknife clipped to [0, 1] per prompt (mean of the clipped values;
    interval = the jackknife total's, shifted) and the Miller-Madow row.
    """
    fb = log.feedback
    lt = log.log_prob(pol)
    kw = {"lam": lam, "reward_normalization": "none"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pope.estimate.InsufficientDataWarning)
        poly = pope.evaluate(fb, lt, diversity_estimator="polynomial", **kw)
        gs = pope.evaluate(fb, lt, diversity="gini_simpson", **kw)
        gs_ips = pope.evaluate(fb, lt, diversity="gini_simpson", coverage="ips", **kw)
    jk = pope.evaluate(fb, lt, diversity_estimator="jackknife", **kw)
    pl = pope.evaluate(fb, lt, diversity_estimator="plugin", **kw)
    jk_ips = pope.evaluate(fb, lt, diversity_estimator="jackknife", relevance="ips", **kw)
    d, v = truth["diversity"], truth["total"]
    gs_row = _row(GS_SN, "pope", "D_GS", gs.diversity, truth["gini_simpson"])
    gs_row["pair_ess_fraction"] = gs.diagnostics.extra["pair_ess_fraction"]
    rows = [
        _row(POLY_DIV, "pope", "D", poly.diversity, d),
        _row(POLY_TOTAL, "pope", "V", poly.total, v),
        gs_row,
        _row(GS_IPS, "pope", "D_GS", gs_ips.diversity, truth["gini_simpson"]),
        _row(JK_DIV, "pope", "D", jk.diversity, d),
        _row(PLUG_DIV, "pope", "D", pl.diversity, d),
        _row(JK_TOTAL, "pope", "V", jk.total, v),
        _row(PLUG_TOTAL, "pope", "V", pl.total, v),
        _row("POPE total (IPS rel.), jackknife D", "pope", "V", jk_ips.total, v),
    ]
    d_clip = float(np.nanmean(np.clip(np.asarray(jk.prompt_diversity), 0.0, 1.0)))
    rows.append(_shifted_row(V_ESTIMATORS[-2], jk.relevance.value + lam * d_clip, jk.total, v))
    rows.append(miller_madow_row(log, lam, truth, pl))
    return rows


def miller_madow_row(log: Any, lam: float, truth: dict[str, float], pe: Any) -> dict[str, Any]:
    r"""Bench-only variant: POPE total with a Miller–Madow correction of the plug-in entropy.

    :math:`\hat D_{MM} = \frac1n\sum_i [H(\hat p_i) + (C^+_i - 1)/(2 n^{eff}_i)]/\log C` with
    :math:`C^+_i` the aspects with :math:`\hat p_i > 0` and :math:`n^{eff}_i = (\sum_k
    w_{ik})^2/\sum_k w_{ik}^2` the prompt's effective sample size; interval = POPE's total
    interval shifted by the correction (its stderr ignores the correction's variability).
    Not a library estimator: it is here to size the plug-in bias. ``pe`` is the plug-in
    evaluation (``diversity_estimator="plugin"``) of the log.
    """
    fb = log.feedback
    lw = np.asarray(pe.log_weight)
    ptr = fb.prompt_ptr
    mx = np.maximum.reduceat(lw, ptr[:-1])
    w = np.exp(lw - np.repeat(mx, fb.counts))
    neff = np.add.reduceat(w, ptr[:-1]) ** 2 / np.add.reduceat(w * w, ptr[:-1])
    cplus = (np.asarray(pe.p_hat) > 0).sum(axis=1)
    logc = math.log(fb.n_aspects)
    h = np.asarray(pe.prompt_diversity) * logc
    d_mm = float(np.nanmean(h + (cplus - 1) / (2 * neff)) / logc)
    value = pe.relevance.value + lam * d_mm
    return _shifted_row(V_ESTIMATORS[-1], value, pe.total, truth["total"])


def run_cell(
    env: CandidateEnv, cell: dict[str, Any], seeds: int, lam: float, cell_id: int
) -> dict[str, Any]:
    """All seeds of one cell; returns the per-estimator summary."""
    pol = target(env, cell["alpha"])
    truth = true_values(env, pol, lam, cell["k"])
    cvg = env.coverage(pol)
    c = cvg.shape[1]
    truth["gini_simpson"] = float(np.mean((1.0 - (cvg**2).sum(axis=1)) / (1.0 - 1.0 / c)))
    dk = env.list_diversity_per_prompt(pol, cell["k"])[0]
    est: dict[str, list[float]] = {}
    cov: dict[str, list[bool]] = {}
    pess: dict[str, list[float]] = {}
    ess: dict[str, list[float]] = {}
    se: dict[str, list[float]] = {}
    meta: dict[str, tuple[str, str, float]] = {}
    for s in range(seeds):
        ss = np.random.SeedSequence([2026, cell_id, s])
        log = env.sample_logs(n_prompts=cell["n"], k=cell["k"], seed=np.random.default_rng(ss))
        rows = evaluation_suite(log, pol, lam=lam, truth=truth, list_diversity_prompt=dk)
        # the suite's POPE rows follow the library default; the bench names its estimators
        rows = [r for r in rows if r["family"] != "pope" or r["quantity"] == "U"]
        rows += pope_rows(log, pol, lam, truth)
        for r in rows:
            name = r["estimator"]
            est.setdefault(name, []).append(r["estimate"])
            cov.setdefault(name, []).append(r["covered"])
            if "pair_ess_fraction" in r:
                pess.setdefault(name, []).append(r["pair_ess_fraction"])
            ess.setdefault(name, []).append(r["ess"])
            se.setdefault(name, []).append(r["stderr"])
            meta[name] = (r["family"], r["quantity"], r["truth"])
    summary = {}
    for name, vals in est.items():
        v = np.asarray(vals, dtype=np.float64)
        fam, qty, tr = meta[name]
        summary[name] = {
            "family": fam,
            "quantity": qty,
            "truth": tr,
            "mean": float(v.mean()),
            "bias": float(v.mean() - tr),
            "sd": float(v.std(ddof=1)),
            "rmse": float(math.sqrt(np.mean((v - tr) ** 2))),
            "coverage": float(np.mean(cov[name])),
            "se_ratio": float(np.mean(se[name]) / v.std(ddof=1)) if v.std() > 0 else math.nan,
            "ess": float(np.nanmean(ess[name])) if np.isfinite(ess[name]).any() else math.nan,
            "pair_ess_fraction": float(np.mean(pess[name])) if name in pess else math.nan,
            "n_seeds": int(v.size),
        }
    return {**cell, "kl": truth["kl"], "truth": truth, "estimators": summary}


# ----------------------------------------------------------------------------- report
def _cell_label(c: dict[str, Any]) -> str:
    if c["axis"] == "size":
        return f"n={c['n']},K={c['k']}"
    return f"KL={c['kl']:.2f}"


def _fmt(x: float, nd: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if abs(x) >= 1000:
        return f"{x:.2e}"
    return f"{x:.{nd}f}"


def _metric_table(
    res: list[dict[str, Any]], names: list[str], metric: str, nd: int = 3, pct: bool = False
) -> str:
    hdr = "| estimator | " + " | ".join(_cell_label(c) for c in res) + " |"
    sep = "|---|" + "---:|" * len(res)
    lines = [hdr, sep]
    for nm in names:
        vals = []
        for c in res:
            e = c["estimators"].get(nm)
            if e is None:
                vals.append("n/a")
            else:
                x = e[metric]
                vals.append(f"{100 * x:.0f}%" if pct else _fmt(x, nd))
        lines.append(f"| {nm} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _ratio_table(res: list[dict[str, Any]], base_name: str = POLY_TOTAL) -> str:
    hdr = f"| SD ratio vs {base_name} | " + " | ".join(_cell_label(c) for c in res) + " |"
    lines = [hdr, "|---|" + "---:|" * len(res)]
    for nm in (
        "joint IPS (=SIPS)",
        "joint SNIPS",
        "joint IPS clip 10",
        "joint DR",
        "IPS r+lam*d",
        "POPE total (IPS rel.), jackknife D",
        PLUG_TOTAL,
    ):
        vals = []
        for c in res:
            base = c["estimators"][base_name]["sd"]
            vals.append(_fmt(c["estimators"][nm]["sd"] / base, 2) if base > 0 else "-")
        lines.append(f"| {nm} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _truth_table(res: list[dict[str, Any]]) -> str:
    hdr = (
        "| cell | KL | U | D | D_K | V | V_K | mean D-hat plug-in | plug-in D bias |"
        " mean D-hat jackknife | jackknife D bias |"
    )
    lines = [hdr, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in res:
        t = c["truth"]
        pl, jk = c["estimators"][PLUG_DIV], c["estimators"][JK_DIV]
        lines.append(
            f"| {_cell_label(c)} | {t['kl']:.3f} | {t['relevance']:.4f} | {t['diversity']:.4f} |"
            f" {t['list_diversity']:.4f} | {t['total']:.4f} | {t['list_total']:.4f} |"
            f" {pl['mean']:.4f} | {pl['bias']:+.4f} | {jk['mean']:.4f} | {jk['bias']:+.4f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, {platform.system()} {platform.release()}"
    )


def commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=HERE,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


def markdown(result: dict[str, Any]) -> str:
    size = [c for c in result["cells"] if c["axis"] == "size"]
    div = [c for c in result["cells"] if c["axis"] == "divergence"]
    cfg = result["config"]
    env = cfg["env"]
    out = [
        f"Machine: {result['machine']}. Date: {result['date']}. Commit: {result['commit']}.",
        f"Command: `{result['command']}` ({result['runtime_s']:.0f} s).",
        "",
        f"Environment: `CandidateEnv.make(n_prompts={env['n_prompts']}, n_candidates="
        f"{env['n_candidates']}, n_aspects={env['n_aspects']}, n_groups={env['n_groups']}, "
        f"seed={env['seed']})`, hard aspects, Bernoulli votes (E[u|x,y] = r(x,y)), "
        f"lambda = {cfg['lam']:g}. Each log draws `n` prompts uniformly with replacement from "
        "the population and `K` i.i.d. responses per prompt from pi0; the truth is the exact "
        "population value (enumeration). Targets: `z = z0 + 2*alpha*r + alpha*d_pi0` "
        "(towards utility and rarely covered aspects); the size grid uses alpha = 1. "
        f"{cfg['seeds']} independent logs per cell; clip M = 10, Switch-DR tau = 10, SG-IPS "
        "lambda = min(1, sqrt(log(20)/(N mean w^2))); DM/DR use a ridge reward model on "
        "observable features (aspect x quality) that cannot see the latent user group. "
        "Coverage = fraction of logs whose 95% normal interval (the estimator's own stderr) "
        "contains the truth.",
        "",
        "**What is compared.** *Decomposed (POPE)*: `pope.evaluate`, V = U_hat + lambda D_hat "
        "with U_hat = SNIPS over responses (or IPS: 'IPS rel.') and D_hat = mean over prompts "
        "of an estimate of the entropy of the self-normalised weighted coverage p_hat_i, each "
        "response carrying its own weight w_ik: the plug-in H(p_hat_i)/log C "
        '(`diversity_estimator="plugin"`) or its delete-one-response jackknife '
        '[K H(p_hat_i) - (K-1)/K sum_k H(p_hat_i,-k)]/log C (`"jackknife"`, the library '
        "default); the rows name the estimator explicitly. Bench-only rows: the jackknife "
        "with each prompt's value clipped to [0, 1], and a Miller-Madow correction "
        "(H + (C+ - 1)/(2 ESS_i)) of the plug-in; their intervals are the unclipped "
        "jackknife's (resp. the plug-in's) shifted to the corrected value. "
        "*Joint (list level)*: the K-list of a prompt is one action with weight "
        "W_i = prod_k w_ik and total reward R_i = mean_k r_ik + lambda "
        "H(mean_k q_ik)/log C; IPS on (W, R) is SIPS on the total; SNIPS, clipped IPS, DM and "
        "DR likewise (joint DM: reward model + exact aspect tagger, "
        "V_hat_i = v_hat(x_i) + lambda D_K(x_i)). Joint IPS is unbiased for V_K = U + lambda "
        "D_K, the value of a K-list, not for V. *Joint (per response)*: 'IPS r+lam*d', IPS on "
        "r_ik + lambda d_ik with POPE's per-response diversity reward d_ik. All errors below "
        "are against the true V (or U, D).",
        "",
        "### Total value V: vs sample size (alpha = 1)",
        "",
        "Standard deviation over logs:",
        "",
        _metric_table(size, V_ESTIMATORS, "sd"),
        "",
        "Bias:",
        "",
        _metric_table(size, V_ESTIMATORS, "bias"),
        "",
        "RMSE:",
        "",
        _metric_table(size, V_ESTIMATORS, "rmse"),
        "",
        "Coverage of the 95% interval:",
        "",
        _metric_table(size, V_ESTIMATORS, "coverage", pct=True),
        "",
        "Calibration of the standard errors: mean reported stderr / SD over logs (1 = "
        "calibrated; the intervals above miss because of bias, not because of the stderr):",
        "",
        _metric_table(size, V_ESTIMATORS, "se_ratio", nd=2),
        "",
        "Variance claim: SD of each alternative divided by the SD of POPE's decomposed total "
        "with the default (jackknife) diversity (> 1 means POPE has lower variance; the "
        "plug-in row shows what the bias correction costs in SD):",
        "",
        _ratio_table(size),
        "",
        "### Total value V: vs target/logging divergence (n = 1000, K = 4)",
        "",
        "RMSE:",
        "",
        _metric_table(div, V_ESTIMATORS, "rmse"),
        "",
        "Bias:",
        "",
        _metric_table(div, V_ESTIMATORS, "bias"),
        "",
        "Standard deviation:",
        "",
        _metric_table(div, V_ESTIMATORS, "sd"),
        "",
        "Coverage:",
        "",
        _metric_table(div, V_ESTIMATORS, "coverage", pct=True),
        "",
        _ratio_table(div),
        "",
        "### Relevance U (single-response and list estimators)",
        "",
        "RMSE vs divergence (n = 1000, K = 4):",
        "",
        _metric_table(div, U_ESTIMATORS, "rmse"),
        "",
        "Coverage vs divergence:",
        "",
        _metric_table(div, U_ESTIMATORS, "coverage", pct=True),
        "",
        "RMSE vs sample size (alpha = 1):",
        "",
        _metric_table(size, U_ESTIMATORS, "rmse"),
        "",
        "### Gini-Simpson diversity D_GS (exactly identified from K >= 2)",
        "",
        "Bias, coverage and the pair-ESS fraction vs sample size (alpha = 1):",
        "",
        _metric_table(size, GS_ESTIMATORS, "bias"),
        "",
        _metric_table(size, GS_ESTIMATORS, "coverage", pct=True),
        "",
        "Bias, coverage vs divergence (n = 1000, K = 4):",
        "",
        _metric_table(div, GS_ESTIMATORS, "bias"),
        "",
        _metric_table(div, GS_ESTIMATORS, "coverage", pct=True),
        "",
        _metric_table(div, [GS_SN], "pair_ess_fraction", nd=3),
        "",
        "### Diversity D: polynomial (default) vs jackknife vs plug-in",
        "",
        "Bias vs sample size (alpha = 1):",
        "",
        _metric_table(size, D_ESTIMATORS, "bias"),
        "",
        "RMSE vs sample size:",
        "",
        _metric_table(size, D_ESTIMATORS, "rmse"),
        "",
        "Standard deviation vs sample size:",
        "",
        _metric_table(size, D_ESTIMATORS, "sd"),
        "",
        "Coverage of the 95% interval vs sample size:",
        "",
        _metric_table(size, D_ESTIMATORS, "coverage", pct=True),
        "",
        "Stderr calibration (mean stderr / SD) vs sample size:",
        "",
        _metric_table(size, D_ESTIMATORS, "se_ratio", nd=2),
        "",
        "Bias, RMSE and coverage vs divergence (n = 1000, K = 4):",
        "",
        _metric_table(div, D_ESTIMATORS, "bias"),
        "",
        _metric_table(div, D_ESTIMATORS, "rmse"),
        "",
        _metric_table(div, D_ESTIMATORS, "coverage", pct=True),
        "",
        "### Truths and the diversity bias",
        "",
        _truth_table(result["cells"]),
        "",
        "Figures: `bench/accuracy_size.png` (RMSE and SD of the V estimators vs n, per K), "
        "`bench/accuracy_divergence.png` (bias, SD, RMSE, coverage vs KL).",
        "",
    ]
    return "\n".join(out)


BEGIN, END = "<!-- accuracy.py: begin generated -->", "<!-- accuracy.py: end generated -->"


def update_results(md: str, path: Path) -> None:
    """Rewrite only the generated block of this section of RESULTS.md.

    The section is ``SECTION`` (a ``##`` heading); inside it, the text between ``BEGIN`` and
    ``END`` is replaced (hand-written text around it, e.g. the findings, is kept). The section
    is appended when absent; the rest of the file is never touched.
    """
    block = f"{BEGIN}\n{md.rstrip()}\n{END}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(SECTION)
    if start < 0:
        path.write_text(text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n")
        return
    nxt = text.find("\n## ", start + len(SECTION))
    end = len(text) if nxt < 0 else nxt + 1
    sec = text[start:end]
    b, e = sec.find(BEGIN), sec.find(END)
    if b < 0 or e < 0:
        sec = sec.rstrip("\n") + f"\n\n{block}\n"
    else:
        sec = sec[:b] + block + sec[e + len(END) :]
    if nxt >= 0 and not sec.endswith("\n\n"):
        sec = sec.rstrip("\n") + "\n\n"
    path.write_text(text[:start] + sec + text[end:])


def _style(name: str) -> dict[str, Any]:
    """Line style of an estimator: a colour of its own, POPE thick, bench-only rows dashed."""
    i = V_ESTIMATORS.index(name)
    return {
        "color": f"C{i}" if i < 10 else "k",
        "lw": 2 if name.startswith("POPE") else 1,
        "ls": "--" if "bench-only" in name else "-",
    }


def plots(result: dict[str, Any], outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = V_ESTIMATORS
    size = [c for c in result["cells"] if c["axis"] == "size"]
    ks = sorted({c["k"] for c in size})
    fig, axes = plt.subplots(2, len(ks), figsize=(4 * len(ks), 7), squeeze=False)
    for j, k in enumerate(ks):
        cs = sorted([c for c in size if c["k"] == k], key=lambda c: c["n"])
        ns = [c["n"] for c in cs]
        for row, metric in enumerate(("rmse", "sd")):
            ax = axes[row, j]
            for nm in names:
                ax.plot(
                    ns,
                    [max(c["estimators"][nm][metric], 1e-4) for c in cs],
                    marker="o",
                    label=nm,
                    **_style(nm),
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.minorticks_off()
            ax.set_title(f"{metric.upper()} of V, K={k}")
            ax.set_xlabel("logged prompts n")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    p = outdir / "accuracy_size.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)

    div = sorted([c for c in result["cells"] if c["axis"] == "divergence"], key=lambda c: c["kl"])
    kl = [c["kl"] for c in div]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, metric in zip(axes.flat, ("bias", "sd", "rmse", "coverage")):
        for nm in names:
            ax.plot(
                kl,
                [c["estimators"][nm][metric] for c in div],
                marker="o",
                label=nm,
                **_style(nm),
            )
        ax.set_xlabel("KL(target || pi0)")
        ax.set_title(f"{metric} of V estimators (n=1000, K=4)")
        ax.grid(alpha=0.3)
        if metric in ("sd", "rmse"):
            ax.set_yscale("log")
        if metric == "coverage":
            ax.axhline(0.95, color="k", ls="--", lw=1)
            ax.set_ylim(-0.02, 1.02)
        if metric == "bias":
            ax.set_ylim(-1.0, 0.5)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    p = outdir / "accuracy_divergence.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    return paths


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=200, help="logs per cell (default 200)")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="a small grid (smoke test)")
    ap.add_argument("--out", type=Path, default=HERE, help="where the PNGs go (default bench/)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw summary here")
    ap.add_argument(
        "--update-results",
        action="store_true",
        help="rewrite the 'Accuracy (synthetic ground truth)' section of bench/RESULTS.md",
    )
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error("--seeds must be >= 2")
    t0 = time.perf_counter()
    env_cfg = {"n_prompts": 500, "n_candidates": 10, "n_aspects": 4, "n_groups": 3, "seed": 2026}
    env = CandidateEnv.make(**env_cfg)
    grid = cells(args.quick)
    res = []
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover

        def tqdm(x: Any, **_: Any) -> Any:
            return x

    for i, c in enumerate(tqdm(grid, desc="cells", file=sys.stderr)):
        res.append(run_cell(env, c, args.seeds, args.lam, i))
    runtime = time.perf_counter() - t0
    cmd = "python bench/accuracy.py" + ("" if argv is None else " " + " ".join(argv))
    if argv is None:
        cmd = "python bench/accuracy.py " + " ".join(sys.argv[1:])
    result = {
        "config": {"seeds": args.seeds, "lam": args.lam, "quick": args.quick, "env": env_cfg},
        "machine": machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "command": cmd.strip(),
        "runtime_s": runtime,
        "cells": res,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    pngs = plots(result, args.out)
    md = markdown(result)
    print(md)
    if args.update_results:
        update_results(md, HERE / "RESULTS.md")
        print(f"\nupdated {HERE / 'RESULTS.md'}", file=sys.stderr)
    print(f"\nwrote {', '.join(str(p) for p in pngs)} ({runtime:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
