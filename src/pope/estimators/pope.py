r"""POPE: decomposed off-policy evaluation of relevance and pluralistic diversity.

The value of a policy :math:`\pi` is :math:`V(\pi) = U(\pi) + \lambda D(\pi)` with the
collaborative utility (relevance) :math:`U` and the aspect-coverage diversity :math:`D`
(see ``docs/method.md``). From a log of prompts :math:`i = 1..n`, each with :math:`K_i \ge 0`
responses :math:`y_{ik}\sim\pi_0` carrying a reward :math:`r_{ik}\in[0,1]` and aspect rows
:math:`q_{ik}`, and the (clipped) importance weights :math:`w_{ik}`:

* relevance (``relevance="snips"``, default):
  :math:`\hat U = \sum_{i,k} w_{ik} r_{ik} / \sum_{i,k} w_{ik}`; (``"ips"``):
  :math:`\hat U = \frac1N\sum_{i,k} w_{ik} r_{ik}` with :math:`N = \sum_i K_i`;
* diversity (``diversity="coverage"``, Shannon; ``diversity_estimator="polynomial"``,
  default): the minimax polynomial estimator
  :math:`\hat D = \sum_d\nu_d c_0^{(L_d)} + \sum_{j=2}^L A_j N_j/S_j` built on the unbiased
  importance-weighted power sums of each prompt (:mod:`pope.power_sums`,
  :mod:`pope.estimators.pope_features`), with the worst-case bias bound :math:`B_L`
  (:mod:`pope.polynomial`) carried by every interval; ``diversity="gini_simpson"``: the
  Gini-Simpson coverage :math:`(1 - \sum_c p_c^2)/(1 - 1/C)` from the same power sums
  (exactly unbiased pairwise form, self-normalised across prompts);
  or :math:`\hat D = \frac{1}{|\mathcal D|}\sum_{i\in\mathcal D} h_i` with
  the coverage entropy of prompt :math:`i`, either its
  delete-one-response jackknife (``diversity_estimator="jackknife"``)
  :math:`h_i = [K_i H(\hat p_i) - \frac{K_i-1}{K_i}\sum_k H(\hat p_{i,-k})]/\log C`, or the
  plug-in :math:`h_i = H(\hat p(\cdot|x_i))/\log C` (``"plugin"``), see :mod:`pope.coverage`;
  or :math:`h_i = \sum_k w_{ik} H(q_{ik})/\log C / \sum_k w_{ik}`
  (``diversity="response_entropy"``, a lower bound by Jensen's inequality), over the set
  :math:`\mathcal D` of prompts with :math:`K_i \ge 1` and (for self-normalised coverage)
  a positive total weight;
* total: :math:`\hat V = \hat U + \lambda\hat D`.

Uncertainty: prompts are the independent units (responses to the same prompt are dependent),
so the standard errors are cluster (prompt-level) delta-method standard errors
(:mod:`pope.estimators.prompt_moments`; the formulas below are the special case of the
per-prompt values ``h``). With
per-prompt sums :math:`a_i = \sum_k \tilde w_{ik} r_{ik}`, :math:`b_i = \sum_k \tilde w_{ik}`
(:math:`b_i = K_i` for IPS relevance), :math:`\bar b = \frac{1}{n_u}\sum_i b_i` over the
:math:`n_u` prompts with :math:`K_i\ge1`, :math:`\hat R = \sum a_i/\sum b_i` and
:math:`\kappa = \lambda n_u / |\mathcal D|`, the influence of prompt :math:`i` on the total is

.. math::

    \psi_i = s\,\frac{a_i - \hat R b_i}{\bar b}
             + \kappa\,\mathbb 1\{i\in\mathcal D\}\,(h_i - \hat D),

(:math:`s = 1` for SNIPS, :math:`s = e^m` for IPS; :math:`h_i` the corrected value under the
jackknife), and
:math:`\widehat{\mathrm{se}}(\hat V) = \sqrt{\sum_i\psi_i^2/(n_u(n_u-1))}`. This accounts for
the covariance of relevance and diversity within a prompt. The bootstrap resamples prompts.

All the sums above are mergeable over prompt shards (:class:`PopeStats`), so a large log can
be evaluated piece by piece and merged; the merged estimate equals the batch one up to float
rounding (for a per-prompt reward normalisation; ``"global_max"`` normalises with the
maximum of the whole log, which a shard does not know).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pope._validation import as_float_array
from pope.backends import get_backend, resolve_backend
from pope.coverage import (
    check_log_weight,
    coverage_core,
    diversity_core,
    jackknife_core,
    resolve_aspects,
)
from pope.data import LoggedFeedback
from pope.estimate import Estimate, IntervalMethod, WeightMoments
from pope.estimators.pope_features import (
    DiversitySpec,
    coefficients,
    diversity_value,
    feature_names,
    power_rows,
    relevance_value,
)
from pope.estimators.pope_stats import PopeStats
from pope.estimators.prompt_moments import PromptMoments
from pope.estimators.single import _scaled_weights
from pope.intervals import check_alpha
from pope.options import (
    COVERAGES,
    DIVERSITIES,
    DIVERSITY_ESTIMATORS,
    RELEVANCES,
    WEIGHTINGS,
    Coverage,
    Diversity,
    DiversityEstimator,
    Relevance,
    RewardNormalization,
    Weighting,
    check_choice,
)
from pope.power_sums import power_sums
from pope.weights import check_clip, moments, token_mean_log_ratio, validate_log_probs

__all__ = ["PopeEstimate", "PopeStats", "evaluate", "pope_stats"]

#: candidate degrees of the polynomial Shannon estimator when ``diversity_degree=None``
DEFAULT_DEGREES: tuple[int, ...] = (2, 3, 4)


@dataclass(frozen=True, eq=False)
class PopeEstimate:
    r"""Result of :func:`evaluate`.

    Attributes
    ----------
    relevance, diversity, total : Estimate
        :math:`\hat U`, :math:`\hat D` and :math:`\hat V = \hat U + \lambda\hat D`, each with
        prompt-level standard errors, intervals (``ci``, including the diversity's bias bound
        ``bias_bound`` where the estimator carries one), and per-prompt ``contributions``:
        pseudo-values :math:`\hat\theta + \psi_i` over the prompts with :math:`K_i \ge 1`,
        whose mean is the estimate and whose deviations are the influence values
        (``total.contributions = relevance.contributions + lam * diversity.contributions``).
    lam : float
    stats : PopeStats
        Mergeable statistics (``stats.estimate()`` rebuilds the three estimates).
    degree : int
        Polynomial degree used by the diversity (0 for the per-prompt estimators).
    p_hat : (n_prompts, C) ndarray or None
        Plug-in coverage of the target policy per prompt (rows of excluded prompts are 0).
    prompt_diversity : (n_prompts,) ndarray or None
        Per-prompt diversity values whose mean over the prompts in the diversity is
        :math:`\hat D` (for the power-sum estimators
        :math:`c_0 + \sum_j g_j\hat P_{j,i}N_j/S_j`); NaN for prompts outside it.
    diversity_reward : (N,) ndarray or None
        Per-response :math:`d_{ik}` of the plug-in coverage, in stored row order (the weighted
        mean over a prompt is the plug-in :math:`h_i`).
    reward : (N,) ndarray or None
        Normalised rewards :math:`r_{ik}` used for the relevance.
    log_weight : (N,) ndarray or None
        Clipped log importance weights :math:`\ell_{ik}` used.
    """

    relevance: Estimate
    diversity: Estimate
    total: Estimate
    lam: float
    stats: PopeStats
    degree: int = 0
    p_hat: np.ndarray | None = None
    prompt_diversity: np.ndarray | None = None
    diversity_reward: np.ndarray | None = None
    reward: np.ndarray | None = None
    log_weight: np.ndarray | None = None

    @property
    def diagnostics(self) -> Any:
        """Weight diagnostics (shared by the three estimates)."""
        return self.total.diagnostics

    @property
    def decomposed_reward(self) -> np.ndarray:
        r"""Per-response POPE reward :math:`R_{ik} = r_{ik} + \lambda d_{ik}`."""
        if self.reward is None or self.diversity_reward is None:
            raise ValueError("per-response arrays are not available from merged statistics")
        return self.reward + self.lam * self.diversity_reward

    def influence(self, name: str) -> np.ndarray:
        r"""Per-prompt influence values :math:`\psi_i` of ``name`` (mean 0;
        :math:`\mathrm{se} = \sqrt{\sum\psi_i^2/(n(n-1))}`)."""
        e: Estimate = getattr(self, name)
        return np.asarray(e.contributions) - e.value

    def summary(self, alpha: float | None = None, method: IntervalMethod = "normal") -> str:
        """A small text table of the three estimates with their intervals and what they
        include (bias bound, choice of degree, low-ESS widening)."""
        rows, notes = [], []
        for name in ("relevance", "diversity", "total"):
            e: Estimate = getattr(self, name)
            lo, hi = e.ci(alpha, method)
            rows.append(f"{name:<10} {e.value:>10.5f} {e.stderr:>10.5f} [{lo:.5f}, {hi:.5f}]")
            note = e.interval_note(alpha)
            if note:
                notes.append(f"  {name}: {note}")
        a = self.total.alpha if alpha is None else alpha
        d = self.diagnostics
        est = d.extra.get("diversity_estimator")
        deg = f", degree {self.degree}" if self.degree else ""
        head = f"{'':<10} {'value':>10} {'stderr':>10} {100 * (1 - a):g}% CI ({method})"
        tail = (
            f"prompts={d.extra.get('n_prompts')}, responses={d.n}, ess={d.ess:.4g}, "
            f"mean_weight={d.mean_weight:.4g}, max_weight={d.max_weight:.4g}, "
            f"clipped={d.clipped_fraction:.3g}, lam={self.lam:g}, "
            f"diversity estimator={est}{deg}"
        )
        return "\n".join([head, *rows, tail, *notes])

    def __repr__(self) -> str:
        return f"PopeEstimate(\n{self.summary()}\n)"


# ----------------------------------------------------------------------------- computation
def _row_entropy(q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return -t.sum(axis=1)


def _check_lam(lam: Any) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)):
        raise TypeError(f"lam must be a real number, got {type(lam).__name__}")
    try:
        out = float(lam)
    except OverflowError:
        raise ValueError(f"lam must be finite and >= 0, got {lam!r}") from None
    if not math.isfinite(out) or out < 0 or out > 1e12:
        raise ValueError(f"lam must be finite and >= 0 (at most 1e12), got {lam!r}")
    return out


def _check_degree(degree: Any) -> int | None:
    if degree is None:
        return None
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
        raise TypeError(f"diversity_degree must be an int or None, got {type(degree).__name__}")
    if not 1 <= int(degree) <= 8:
        raise ValueError(f"diversity_degree must be in [1, 8], got {degree}")
    return int(degree)


def _diversity_spec(
    diversity: str, estimator: str, c: int, degree: int | None, selfn: bool
) -> DiversitySpec:
    if diversity == "gini_simpson":
        return DiversitySpec("power", c, "gini_simpson", 2, (2,), selfn)
    if diversity == "coverage" and estimator == "polynomial":
        degs = DEFAULT_DEGREES if degree is None else (degree,)
        return DiversitySpec("power", c, "shannon", max(degs), degs, selfn)
    return DiversitySpec("values", c, self_normalized=selfn)


def _log_weights(
    fb: LoggedFeedback, log_target: Any, token_log_target: Any, weighting: str
) -> tuple[np.ndarray, np.ndarray]:
    n_resp = fb.n_responses
    if weighting == "sequence":
        if token_log_target is not None:
            raise ValueError("token_log_target is only used with weighting='token_mean'")
        if log_target is None:
            raise TypeError("log_target is required with weighting='sequence'")
        lt0 = as_float_array(log_target, "log_target", allow_neginf=True)
        if lt0.shape[0] != n_resp:
            raise ValueError(
                f"log_target has length {lt0.shape[0]}, expected {n_resp} (one per stored "
                "response, in the feedback's row order; see LoggedFeedback.row_index)"
            )
        return validate_log_probs(lt0, fb.log_logging)
    if log_target is not None:
        raise ValueError("weighting='token_mean' uses token_log_target; pass log_target=None")
    if fb.token_log_logging is None:
        raise ValueError(
            "weighting='token_mean' needs per-token logging log-probs in the feedback "
            "(token_log_logging, token_ptr)"
        )
    if token_log_target is None:
        raise TypeError("token_log_target is required with weighting='token_mean'")
    lt = token_mean_log_ratio(token_log_target, fb.token_log_logging, fb.token_ptr)
    return lt, np.zeros(n_resp)


def _values_diversity(
    be: Any,
    fb: LoggedFeedback,
    ptr: np.ndarray,
    lw: np.ndarray,
    labels: Any,
    soft: Any,
    c: int,
    selfn: bool,
    diversity: str,
    estimator: str,
    p: np.ndarray,
    ent: np.ndarray,
) -> np.ndarray:
    """Per-prompt :math:`h_i` of the plug-in, jackknife or response-entropy diversity."""
    n_prompts, seg, counts = fb.n_prompts, fb.prompt_index, fb.counts
    log_c = math.log(c) if c > 1 else 1.0
    if diversity == "coverage":
        if estimator == "jackknife":
            ent = jackknife_core(be, ptr, lw, labels, soft, c, selfn)
        return ent / log_c if c > 1 else np.zeros(n_prompts)
    e = _row_entropy(fb.aspect_rows()) / log_c if c > 1 else np.zeros(fb.n_responses)
    if selfn:
        mx = np.full(n_prompts, -np.inf)
        units = counts > 0
        if fb.n_responses:
            mx[units] = np.maximum.reduceat(lw, ptr[:-1][units])
        shift = np.where(np.isfinite(mx), mx, 0.0)
        wl = np.exp(lw - shift[seg])
        num = np.bincount(seg, weights=wl * e, minlength=n_prompts)
        den = np.bincount(seg, weights=wl, minlength=n_prompts)
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    num = np.bincount(seg, weights=np.exp(lw) * e, minlength=n_prompts)
    return np.where(counts > 0, num / np.maximum(counts, 1), 0.0)


def _compute(
    feedback: LoggedFeedback,
    log_target: Any,
    *,
    lam: float,
    reward_normalization: RewardNormalization,
    relevance: str,
    coverage: str,
    diversity: str,
    diversity_estimator: str,
    diversity_degree: int | None,
    weighting: str,
    token_log_target: Any,
    clip: Any,
    backend: str | None,
) -> tuple[PopeStats, dict[str, Any]]:
    if not isinstance(feedback, LoggedFeedback):
        raise TypeError(f"feedback must be a LoggedFeedback, got {type(feedback).__name__}")
    lam = _check_lam(lam)
    check_choice(relevance, "relevance", RELEVANCES)
    check_choice(coverage, "coverage", COVERAGES)
    check_choice(diversity, "diversity", DIVERSITIES)
    check_choice(diversity_estimator, "diversity_estimator", DIVERSITY_ESTIMATORS)
    check_choice(weighting, "weighting", WEIGHTINGS)
    degree = _check_degree(diversity_degree)
    fb = feedback
    n_resp = fb.n_responses
    log_clip = check_clip(clip)
    bname = resolve_backend(backend)
    be = get_backend(bname)
    labels: np.ndarray | None
    if lam == 0 and fb.aspect is None and fb.aspect_probs is None:
        # the diversity does not enter the value: one aspect (D = 0) stands in for the
        # aspects the log does not have
        ptr, labels, soft, c = fb.prompt_ptr, np.zeros(n_resp, dtype=np.int64), None, 1
    else:
        ptr, labels, soft, c = resolve_aspects(fb, None, None, None)
    r = fb.rewards(reward_normalization)
    lt, ll = _log_weights(fb, log_target, token_log_target, weighting)
    selfn = coverage == "self_normalized"
    lw = np.minimum(lt - ll, log_clip)
    check_log_weight(lw, n_resp, coverage)
    wm = WeightMoments.from_moments(moments(be, lt, ll, r, log_clip))
    m = wm.log_scale
    n_prompts, counts, seg = fb.n_prompts, fb.counts, fb.prompt_index
    wt = _scaled_weights(lw, m)
    a = np.bincount(seg, weights=wt * r, minlength=n_prompts)
    b = (
        np.bincount(seg, weights=wt, minlength=n_prompts)
        if relevance == "snips"
        else counts.astype(np.float64)
    )
    spec = _diversity_spec(diversity, diversity_estimator, c, degree, selfn)
    p, ent = coverage_core(be, ptr, lw, labels, soft, c, selfn)
    d = diversity_core(be, ptr, p, labels, soft, c)
    units = counts > 0
    names, powers = feature_names(relevance == "snips", spec)
    rows = np.empty((int(units.sum()), len(names)))
    rows[:, 0], rows[:, 1] = a[units], b[units]
    if spec.kind == "values":
        h = _values_diversity(
            be, fb, ptr, lw, labels, soft, c, selfn, diversity, diversity_estimator, p, ent
        )
        if selfn:
            mx = np.full(n_prompts, -np.inf)
            if n_resp:
                mx[units] = np.maximum.reduceat(lw, ptr[:-1][units])
            in_div = units & (mx > -np.inf)
        else:
            in_div = units.copy()
        rows[:, 2] = np.where(in_div, h, 0.0)[units]
        rows[:, 3] = in_div[units]
    else:
        p_hat, s_hat = power_sums(ptr, wt, labels, soft, c, spec.max_degree, backend=bname)
        power_rows(counts[units], p_hat[units], s_hat[units], spec.max_degree, rows)
        in_div = units
        h = None
    mom = PromptMoments.from_rows(names, powers, m, rows)
    options = (
        ("coverage", coverage),
        ("diversity", diversity),
        ("diversity_estimator", diversity_estimator),
        ("diversity_degree", degree),
        ("weighting", weighting),
        ("log_clip", log_clip),
        ("reward_normalization", reward_normalization),
    )
    stats = PopeStats(
        lam=lam,
        relevance=relevance,
        options=options,
        n_aspects=c,
        n_prompts=n_prompts,
        diversity_spec=spec,
        moments=mom,
        weights=wm,
    )
    arrays = {
        "rows": rows,
        "units": units,
        "in_div": in_div,
        "h": h,
        "p_hat": p,
        "diversity_reward": d,
        "reward": r,
        "log_weight": lw,
        "backend": bname,
    }
    return stats, arrays


def pope_stats(
    feedback: LoggedFeedback,
    log_target: Any = None,
    *,
    lam: float = 1.0,
    reward_normalization: RewardNormalization = "max",
    relevance: Relevance = "snips",
    coverage: Coverage = "self_normalized",
    diversity: Diversity = "coverage",
    diversity_estimator: DiversityEstimator = "polynomial",
    diversity_degree: int | None = None,
    weighting: Weighting = "sequence",
    token_log_target: Any = None,
    clip: float | None = None,
    backend: str | None = None,
) -> PopeStats:
    """The mergeable :class:`PopeStats` of a (shard of a) log; arguments as in :func:`evaluate`.

    ``sum(pope_stats(shard, ...) for shard in shards).estimate()`` equals
    ``evaluate(full_log, ...)`` up to float rounding (use ``functools.reduce(operator.add,
    ...)``; the shards must be disjoint sets of prompts evaluated with the same options).
    """
    stats, _ = _compute(
        feedback,
        log_target,
        lam=lam,
        reward_normalization=reward_normalization,
        relevance=relevance,
        coverage=coverage,
        diversity=diversity,
        diversity_estimator=diversity_estimator,
        diversity_degree=diversity_degree,
        weighting=weighting,
        token_log_target=token_log_target,
        clip=clip,
        backend=backend,
    )
    return stats


def _prompt_diversity(stats: PopeStats, arr: dict[str, Any], degree: int) -> np.ndarray:
    """Per-prompt diversity values whose mean over the diversity prompts is the estimate."""
    units, in_div = arr["units"], arr["in_div"]
    out = np.full(units.shape[0], np.nan)
    if stats.diversity_spec.kind == "values":
        out[in_div] = arr["h"][in_div]
        return out
    # D is linear in each prompt's features given the pooled normalisers N_j / S_j
    mo, spec = stats.moments, stats.diversity_spec
    coef = np.zeros(len(mo.names))
    for dcl in range(1, spec.max_degree + 1):
        poly = coefficients(spec.family, spec.n_aspects, min(dcl, degree))
        coef[mo.index(f"n{dcl}")] = poly.c0
        for j in range(2, min(dcl, degree) + 1):
            ds = range(j, spec.max_degree + 1)
            s_j = sum(mo.mean[mo.index(f"S{e}.{j}")] for e in ds)
            n_j = sum(mo.mean[mo.index(f"n{e}")] for e in ds)
            if spec.self_normalized:
                f = n_j / s_j if s_j > 0 else 0.0
            else:
                f = math.exp(j * stats.log_scale) if stats.log_scale > -math.inf else 0.0
            coef[mo.index(f"P{dcl}.{j}")] = poly.g[j - 2] * f
    out[units] = arr["rows"] @ coef
    return out


def evaluate(
    feedback: LoggedFeedback,
    log_target: Any = None,
    *,
    lam: float = 1.0,
    reward_normalization: RewardNormalization = "max",
    relevance: Relevance = "snips",
    coverage: Coverage = "self_normalized",
    diversity: Diversity = "coverage",
    diversity_estimator: DiversityEstimator = "polynomial",
    diversity_degree: int | None = None,
    weighting: Weighting = "sequence",
    token_log_target: Any = None,
    clip: float | None = None,
    alpha: float = 0.05,
    backend: str | None = None,
) -> PopeEstimate:
    r"""Evaluate a target policy on logged feedback with POPE.

    Parameters
    ----------
    feedback : LoggedFeedback
        The log (with aspects, ``aspect`` or ``aspect_probs``, unless ``lam == 0``: then a
        log without aspects gets the diversity 0 of a single aspect).
    log_target : (N,) array_like
        :math:`\log\pi_\theta(y_{ik}|x_i)` of every stored response, **in the feedback's stored
        row order** (grouped by prompt). Arrays computed on the original input rows are
        aligned with ``log_target_original[feedback.row_index]``. ``-inf`` allowed.
        Required for ``weighting="sequence"``; must be ``None`` for ``"token_mean"``.
    lam : float
        :math:`\lambda \ge 0`, weight of the diversity.
    reward_normalization : {"max", "log1p", "rank", "global_max", "none"}
        How the human signal becomes :math:`r\in[0,1]` (:meth:`LoggedFeedback.rewards`).
    relevance : {"snips", "ips"}
        Self-normalised (default; bounded, never overflows) or plain IPS relevance.
    coverage : {"self_normalized", "ips"}
        Self-normalised (default) or plain IPS importance weighting of the coverage: per prompt
        for the plug-in and jackknife, across prompts (the :math:`N_j/S_j` factors) for the
        power-sum estimators.
    diversity : {"coverage", "gini_simpson", "response_entropy"}
        ``"coverage"`` (default): the Shannon coverage entropy :math:`H(p_\pi)/\log C`;
        ``"gini_simpson"``: :math:`(1 - \sum_c p_\pi(c)^2)/(1 - 1/C)`, which :math:`K \ge 2`
        responses identify exactly (pair-ESS diagnostic ``pair_ess_fraction``, warning below
        0.2); ``"response_entropy"``: the weighted mean per-response entropy
        :math:`H(q_{ik})/\log C` (a Jensen lower bound of the coverage entropy, 0 for hard
        labels).
    diversity_estimator : {"polynomial", "jackknife", "plugin"}
        For ``diversity="coverage"``. ``"polynomial"`` (default): the minimax polynomial
        estimator of degree :math:`L` (``diversity_degree``; by default chosen among 2, 3, 4
        up to the largest :math:`K_i`, as the narrowest interval at level
        :math:`\alpha/m` over the :math:`m` candidates), whose interval includes the
        worst-case bias :math:`B_L` (``diversity.bias_bound``): what :math:`K` responses can
        identify about :math:`D` (``docs/method.md``). Prompts with :math:`K_i < L` use degree
        :math:`K_i`; a single response identifies nothing (value 1/2, bound 1/2, warning).
        ``"jackknife"``: the delete-one-response jackknife of the plug-in (lower bias, no
        bound). ``"plugin"``: :math:`H(\hat p_i)/\log C`, which estimates the expected
        coverage entropy of :math:`K_i` responses rather than :math:`D` (biased low).
        Neither of the last two intervals accounts for its bias (measured in
        ``bench/RESULTS.md``).
    diversity_degree : int, optional
        Fix the polynomial degree (1..8; no choice, so no multiplicity).
    weighting : {"sequence", "token_mean"}
        Sequence ratio :math:`\exp(\log\pi_\theta - \log\pi_0)`, or the length-normalised
        :math:`\exp(\frac1T\sum_t[\log\pi_\theta(y_t|\cdot) - \log\pi_0(y_t|\cdot)])`
        (lower variance, biased) which needs ``feedback.token_log_logging`` and
        ``token_log_target`` in the same flat layout (``feedback.token_ptr``).
    token_log_target : (T,) array_like, optional
        Per-token target log-probs for ``weighting="token_mean"``.
    clip : float, optional
        Truncation :math:`M` of every weight (relevance and coverage); biases the power sums.
    alpha : float
        Default level of the intervals of the returned estimates.
    backend : str, optional
        CPU backend (``None``: automatic).

    Returns
    -------
    PopeEstimate
        ``.relevance``, ``.diversity``, ``.total`` (each an :class:`~pope.estimate.Estimate`
        whose ``ci()`` includes its bias bound, degree choice and low-ESS floor, said by
        ``interval_note()``), per-prompt coverage ``.p_hat``, per-response
        ``.diversity_reward``, diagnostics and the mergeable ``.stats``.
    """
    a_ = check_alpha(alpha)
    stats, arr = _compute(
        feedback,
        log_target,
        lam=lam,
        reward_normalization=reward_normalization,
        relevance=relevance,
        coverage=coverage,
        diversity=diversity,
        diversity_estimator=diversity_estimator,
        diversity_degree=diversity_degree,
        weighting=weighting,
        token_log_target=token_log_target,
        clip=clip,
        backend=backend,
    )
    est = stats.estimate(a_)
    return attach_arrays(est, stats, arr)


def attach_arrays(est: PopeEstimate, stats: PopeStats, arr: dict[str, Any]) -> PopeEstimate:
    """``est`` with pseudo-value contributions, bootstrap data and per-prompt arrays."""
    rows, mo, lam_, deg = arr["rows"], stats.moments, stats.lam, est.degree
    names, spec = mo.names, stats.diversity_spec
    scale = stats.scale()

    def rel_of(mu: np.ndarray) -> np.ndarray:
        return relevance_value(mu, names, scale)[0]

    def div_of(mu: np.ndarray) -> np.ndarray:
        return diversity_value(mu, names, spec, deg, stats.log_scale)[0]

    grads = {
        "relevance": stats.relevance_parts().grad,
        "diversity": stats.diversity_parts(deg).grad,
    }
    grads["total"] = grads["relevance"] + lam_ * grads["diversity"]
    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "relevance": rel_of,
        "diversity": div_of,
        "total": lambda mu: rel_of(mu) + lam_ * div_of(mu),
    }
    n = rows.shape[0]
    parts = {}
    for name, fn in fns.items():
        e: Estimate = getattr(est, name)
        g = grads[name]

        def contrib(e: Estimate = e, g: np.ndarray = g) -> np.ndarray:
            return e.value + (rows - mo.mean) @ g

        def boot(
            fn: Callable[[np.ndarray], np.ndarray] = fn,
        ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
            return rows, lambda sums: fn(np.asarray(sums) / n)

        parts[name] = dataclasses.replace(
            e, _contrib_fn=contrib, _boot_fn=boot, backend=arr["backend"]
        )
    return dataclasses.replace(
        est,
        relevance=parts["relevance"],
        diversity=parts["diversity"],
        total=parts["total"],
        p_hat=arr["p_hat"],
        prompt_diversity=_prompt_diversity(stats, arr, deg),
        diversity_reward=arr["diversity_reward"],
        reward=arr["reward"],
        log_weight=arr["log_weight"],
    )
