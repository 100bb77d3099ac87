r"""POPE: decomposed off-policy evaluation of relevance and pluralistic diversity.

The value of a policy :math:`\pi` is :math:`V(\pi) = U(\pi) + \lambda D(\pi)` with the
collaborative utility (relevance) :math:`U` and the aspect-coverage diversity :math:`D`
(see ``docs/method.md``). From a log of prompts :math:`i = 1..n`, each with :math:`K_i \ge 0`
responses :math:`y_{ik}\sim\pi_0` carrying a reward :math:`r_{ik}\in[0,1]` and aspect rows
:math:`q_{ik}`, and the (clipped) importance weights :math:`w_{ik}`:

* relevance (``relevance="snips"``, default):
  :math:`\hat U = \sum_{i,k} w_{ik} r_{ik} / \sum_{i,k} w_{ik}`; (``"ips"``):
  :math:`\hat U = \frac1N\sum_{i,k} w_{ik} r_{ik}` with :math:`N = \sum_i K_i`;
* diversity: :math:`\hat D = \frac{1}{|\mathcal D|}\sum_{i\in\mathcal D} h_i` with
  (``diversity="coverage"``) the coverage entropy of prompt :math:`i`, either its
  delete-one-response jackknife (``diversity_estimator="jackknife"``, default)
  :math:`h_i = [K_i H(\hat p_i) - \frac{K_i-1}{K_i}\sum_k H(\hat p_{i,-k})]/\log C`, or the
  plug-in :math:`h_i = H(\hat p(\cdot|x_i))/\log C` (``"plugin"``), see :mod:`pope.coverage`;
  or :math:`h_i = \sum_k w_{ik} H(q_{ik})/\log C / \sum_k w_{ik}`
  (``diversity="response_entropy"``, a lower bound by Jensen's inequality), over the set
  :math:`\mathcal D` of prompts with :math:`K_i \ge 1` and (for self-normalised coverage)
  a positive total weight;
* total: :math:`\hat V = \hat U + \lambda\hat D`.

Uncertainty: prompts are the independent units (responses to the same prompt are dependent),
so the standard errors are cluster (prompt-level) delta-method standard errors. With
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
from typing import Any, Literal

import numpy as np

from pope._validation import as_float_array
from pope.backends import get_backend, resolve_backend
from pope.coverage import (
    DIVERSITY_ESTIMATORS,
    DiversityEstimator,
    check_log_weight,
    coverage_core,
    diversity_core,
    jackknife_entropy_core,
    resolve_aspects,
)
from pope.data import LoggedFeedback, RewardNormalization
from pope.estimate import Estimate, WeightMoments, _factor, _scaled
from pope.estimators.intervals import check_alpha
from pope.estimators.single import _scaled_weights, ratio_of_columns, times_exp
from pope.weights import check_clip, moments, token_mean_log_ratio, validate_log_probs

__all__ = ["PopeEstimate", "PopeStats", "evaluate", "pope_stats"]

_NO_BOUND = (
    "POPE's relevance is a ratio over prompts with random K_i and its diversity a plug-in "
    "or jackknife entropy, neither a mean of bounded i.i.d. terms; use "
    "ci('normal'|'t'|'bootstrap'), or pope.estimators.ips with clip on the rewards for a "
    "bound on the relevance."
)
_SUMS = ("sum_a", "sum_b", "sum_aa", "sum_ab", "sum_bb", "sum_h", "sum_hh", "sum_ah",
         "sum_bh", "sum_a_div", "sum_b_div")
# powers of the weight scale carried by each sum: (power of a-scale, power of b-scale)
_POWERS = {"sum_a": (1, 0), "sum_b": (0, 1), "sum_aa": (2, 0), "sum_ab": (1, 1),
           "sum_bb": (0, 2), "sum_h": (0, 0), "sum_hh": (0, 0), "sum_ah": (1, 0),
           "sum_bh": (0, 1), "sum_a_div": (1, 0), "sum_b_div": (0, 1)}


@dataclass(frozen=True)
class PopeStats:
    r"""Mergeable sufficient statistics of a POPE evaluation (sums over prompts).

    Per prompt :math:`i` with :math:`K_i \ge 1`: :math:`a_i = \sum_k\tilde w_{ik}r_{ik}`,
    :math:`b_i = \sum_k\tilde w_{ik}` (or :math:`K_i` for IPS relevance), and
    :math:`h_i^D = \mathbb 1\{i\in\mathcal D\}h_i`, :math:`\mathbb 1_i^D`; stored are
    :math:`\sum a`, :math:`\sum b`, :math:`\sum a^2`, :math:`\sum ab`, :math:`\sum b^2`,
    :math:`\sum h^D`, :math:`\sum (h^D)^2`, :math:`\sum a h^D`, :math:`\sum b h^D`,
    :math:`\sum a\mathbb 1^D`, :math:`\sum b\mathbb 1^D`, the counts :math:`n_u` and
    :math:`|\mathcal D|`, and the response-level weight moments, with weights scaled by
    :math:`e^{-m}` (``log_scale`` :math:`m`). ``a + b`` merges two disjoint prompt shards
    evaluated with the same options; :meth:`estimate` gives the :class:`PopeEstimate`.
    """

    lam: float
    relevance: str
    options: tuple[tuple[str, Any], ...]
    n_aspects: int
    log_scale: float
    n_prompts: int
    n_units: int
    n_div: int
    sum_a: float
    sum_b: float
    sum_aa: float
    sum_ab: float
    sum_bb: float
    sum_h: float
    sum_hh: float
    sum_ah: float
    sum_bh: float
    sum_a_div: float
    sum_b_div: float
    weights: WeightMoments

    def __add__(self, other: PopeStats) -> PopeStats:
        if not isinstance(other, PopeStats):
            return NotImplemented
        for nm in ("lam", "relevance", "options", "n_aspects"):
            if getattr(self, nm) != getattr(other, nm):
                raise ValueError(
                    f"cannot merge POPE statistics with different {nm}: "
                    f"{getattr(self, nm)!r} != {getattr(other, nm)!r}"
                )
        m = max(self.log_scale, other.log_scale)
        fa, fb = _factor(self.log_scale, m), _factor(other.log_scale, m)
        b_scaled = self.relevance == "snips"
        kw = {}
        for nm in _SUMS:
            pa, pb = _POWERS[nm]
            pw = pa + (pb if b_scaled else 0)
            kw[nm] = fa**pw * getattr(self, nm) + fb**pw * getattr(other, nm)
        return PopeStats(
            lam=self.lam, relevance=self.relevance, options=self.options,
            n_aspects=self.n_aspects, log_scale=m, n_prompts=self.n_prompts + other.n_prompts,
            n_units=self.n_units + other.n_units, n_div=self.n_div + other.n_div,
            weights=self.weights + other.weights, **kw,
        )

    # ------------------------------------------------------------------ estimates
    def _scale(self) -> float:
        """:math:`s`: 1 for SNIPS relevance, :math:`e^m` for IPS relevance."""
        if self.relevance == "snips":
            return 1.0
        return _scaled(self.log_scale, 1.0, "pope relevance (ips)")

    def estimate(self, alpha: float = 0.05) -> PopeEstimate:
        """The relevance, diversity and total estimates (no contributions, no bootstrap)."""
        a_ = check_alpha(alpha)
        nu, nd, lam = self.n_units, self.n_div, self.lam
        if nu == 0:
            raise ValueError("no prompt has a logged response")
        snips = self.relevance == "snips"
        if self.sum_b <= 0 and snips:
            raise ValueError(
                "every importance weight is zero (the target gives probability 0 to every "
                "logged response); the self-normalised relevance is undefined"
            )
        if nd == 0:
            raise ValueError(
                "no prompt has a positive total weight; the self-normalised coverage and the "
                "diversity are undefined"
            )
        m = self.log_scale
        rt = self.sum_a / self.sum_b
        rel = rt if snips else _scaled(m, rt, "pope relevance (ips)")
        s = self._scale()
        bbar = self.sum_b / nu
        ss_rel = max(self.sum_aa - 2.0 * rt * self.sum_ab + rt * rt * self.sum_bb, 0.0) / bbar**2
        hbar = self.sum_h / nd
        ss_div = max(self.sum_hh - nd * hbar * hbar, 0.0)
        kappa = lam * nu / nd
        cross = kappa / bbar * (self.sum_ah - hbar * self.sum_a_div - rt * self.sum_bh
                                + rt * hbar * self.sum_b_div)
        if nu > 1:
            den_u = nu * (nu - 1.0)
            se_rel = s * math.sqrt(ss_rel / den_u)
            if s >= 1.0:
                inner = ss_rel + 2.0 * cross / s + kappa**2 * ss_div / s**2
                se_tot = s * math.sqrt(max(inner, 0.0) / den_u)
            else:
                inner = s * s * ss_rel + 2.0 * s * cross + kappa**2 * ss_div
                se_tot = math.sqrt(max(inner, 0.0) / den_u)
        else:
            se_rel = se_tot = math.nan
        se_div = math.sqrt(ss_div / (nd * (nd - 1.0))) if nd > 1 else math.nan
        diag = self.weights.diagnostics(
            n_units=nu,
            extra={"n_prompts": self.n_prompts, "n_diversity_prompts": nd,
                   "n_aspects": self.n_aspects, "lam": lam},
        )

        def mk(name: str, value: float, se: float, n: int) -> Estimate:
            return Estimate(value=value, stderr=se, n=n, diagnostics=diag,
                            estimator=f"pope.{name}", alpha=a_, stats=self,
                            bound_range=None, bound_note=_NO_BOUND)

        div = hbar
        return PopeEstimate(
            relevance=mk("relevance", rel, se_rel, nu),
            diversity=mk("diversity", div, se_div, nd),
            total=mk("total", rel + lam * div, se_tot, nu),
            lam=lam,
            stats=self,
        )


@dataclass(frozen=True, eq=False)
class PopeEstimate:
    r"""Result of :func:`evaluate`.

    Attributes
    ----------
    relevance, diversity, total : Estimate
        :math:`\hat U`, :math:`\hat D` and :math:`\hat V = \hat U + \lambda\hat D`, each with
        prompt-level standard errors, intervals (``ci``) and per-prompt ``contributions``
        (over the prompts with :math:`K_i \ge 1`, scaled so that their mean is the estimate;
        ``total.contributions = relevance.contributions + lam * diversity.contributions``).
    lam : float
    stats : PopeStats
        Mergeable statistics (``stats.estimate()`` rebuilds the three estimates).
    p_hat : (n_prompts, C) ndarray or None
        Estimated coverage of the target policy per prompt (rows of excluded prompts are 0).
    prompt_diversity : (n_prompts,) ndarray or None
        :math:`h_i` (jackknife-corrected under ``diversity_estimator="jackknife"``); NaN for
        prompts outside :math:`\mathcal D` (no response, or zero weight).
    diversity_reward : (N,) ndarray or None
        Per-response :math:`d_{ik}` of the plug-in coverage, in stored row order: the
        weighted mean of :math:`d` over a prompt is the *plug-in* :math:`h_i` (the
        decomposition and the policy-gradient factor); it is the same under both
        ``diversity_estimator`` values.
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

    def summary(self, alpha: float | None = None, method: str = "normal") -> str:
        """A small text table of the three estimates with their intervals."""
        rows = []
        for name in ("relevance", "diversity", "total"):
            e: Estimate = getattr(self, name)
            lo, hi = e.ci(alpha, method)  # type: ignore[arg-type]
            rows.append(f"{name:<10} {e.value:>10.5f} {e.stderr:>10.5f} [{lo:.5f}, {hi:.5f}]")
        a = self.total.alpha if alpha is None else alpha
        d = self.diagnostics
        head = f"{'':<10} {'value':>10} {'stderr':>10} {100 * (1 - a):g}% CI ({method})"
        tail = (f"prompts={d.extra.get('n_prompts')}, responses={d.n}, ess={d.ess:.4g}, "
                f"max_weight={d.max_weight:.4g}, clipped={d.clipped_fraction:.3g}, "
                f"lam={self.lam:g}")
        return "\n".join([head, *rows, tail])

    def __repr__(self) -> str:
        return f"PopeEstimate(\n{self.summary()}\n)"


# ----------------------------------------------------------------------------- computation
def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _row_entropy(q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return -t.sum(axis=1)


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
    weighting: str,
    token_log_target: Any,
    clip: Any,
    backend: str | None,
) -> tuple[PopeStats, dict[str, Any]]:
    if not isinstance(feedback, LoggedFeedback):
        raise TypeError(f"feedback must be a LoggedFeedback, got {type(feedback).__name__}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)):
        raise TypeError(f"lam must be a real number, got {type(lam).__name__}")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
    _check_choice(relevance, "relevance", ("snips", "ips"))
    _check_choice(coverage, "coverage", ("self_normalized", "ips"))
    _check_choice(diversity, "diversity", ("coverage", "response_entropy"))
    _check_choice(diversity_estimator, "diversity_estimator", DIVERSITY_ESTIMATORS)
    _check_choice(weighting, "weighting", ("sequence", "token_mean"))
    fb = feedback
    n_resp = fb.n_responses
    log_clip = check_clip(clip)
    bname = resolve_backend(backend)
    be = get_backend(bname)
    ptr, labels, soft, c = resolve_aspects(fb, None, None, None)
    r = fb.rewards(reward_normalization)

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
        lt, ll = validate_log_probs(lt0, fb.log_logging)
    else:
        if log_target is not None:
            raise ValueError(
                "weighting='token_mean' uses token_log_target; pass log_target=None")
        if fb.token_log_logging is None:
            raise ValueError(
                "weighting='token_mean' needs per-token logging log-probs in the feedback "
                "(token_log_logging, token_ptr)"
            )
        if token_log_target is None:
            raise TypeError("token_log_target is required with weighting='token_mean'")
        lt = token_mean_log_ratio(token_log_target, fb.token_log_logging, fb.token_ptr)
        ll = np.zeros(n_resp)

    selfn = coverage == "self_normalized"
    lw = np.minimum(lt - ll, log_clip)
    check_log_weight(lw, n_resp, coverage)
    wm = WeightMoments.from_moments(moments(be, lt, ll, r, log_clip))
    m = wm.log_scale
    n_prompts = fb.n_prompts
    counts = fb.counts
    seg = fb.prompt_index
    wt = _scaled_weights(lw, m)
    a = np.bincount(seg, weights=wt * r, minlength=n_prompts)
    b = (np.bincount(seg, weights=wt, minlength=n_prompts) if relevance == "snips"
         else counts.astype(np.float64))

    p, ent = coverage_core(be, ptr, lw, labels, soft, c, selfn)
    log_c = math.log(c) if c > 1 else 1.0
    if diversity == "coverage":
        if diversity_estimator == "jackknife":
            ent = jackknife_entropy_core(ptr, lw, labels, soft, c, selfn)
        h = ent / log_c if c > 1 else np.zeros(n_prompts)
        d = diversity_core(be, ptr, p, labels, soft, c)
    else:
        e = _row_entropy(fb.aspect_rows()) / log_c if c > 1 else np.zeros(n_resp)
        d = e
        h = np.zeros(n_prompts)
        units_ = counts > 0
        if selfn:
            mx = np.full(n_prompts, -np.inf)
            if n_resp:
                mx[units_] = np.maximum.reduceat(lw, ptr[:-1][units_])
            shift = np.where(np.isfinite(mx), mx, 0.0)
            wl = np.exp(lw - shift[seg])
            num = np.bincount(seg, weights=wl * e, minlength=n_prompts)
            den = np.bincount(seg, weights=wl, minlength=n_prompts)
            h = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        else:
            num = np.bincount(seg, weights=np.exp(lw) * e, minlength=n_prompts)
            h = np.where(counts > 0, num / np.maximum(counts, 1), 0.0)

    units = counts > 0
    if selfn:
        mx = np.full(n_prompts, -np.inf)
        if n_resp:
            mx[units] = np.maximum.reduceat(lw, ptr[:-1][units])
        in_div = units & (mx > -np.inf)
    else:
        in_div = units.copy()

    au, bu = a[units], b[units]
    du = in_div[units].astype(np.float64)
    hu = np.where(in_div, h, 0.0)[units]
    stats = PopeStats(
        lam=lam, relevance=relevance,
        options=(("coverage", coverage), ("diversity", diversity),
                 ("diversity_estimator", diversity_estimator), ("weighting", weighting),
                 ("log_clip", log_clip), ("reward_normalization", reward_normalization)),
        n_aspects=c, log_scale=m, n_prompts=n_prompts, n_units=int(units.sum()),
        n_div=int(in_div.sum()),
        sum_a=float(au.sum()), sum_b=float(bu.sum()), sum_aa=float((au * au).sum()),
        sum_ab=float((au * bu).sum()), sum_bb=float((bu * bu).sum()), sum_h=float(hu.sum()),
        sum_hh=float((hu * hu).sum()), sum_ah=float((au * hu).sum()),
        sum_bh=float((bu * hu).sum()), sum_a_div=float((au * du).sum()),
        sum_b_div=float((bu * du).sum()), weights=wm,
    )
    arrays = {
        "units": (au, bu, hu, du),
        "p_hat": p,
        "prompt_diversity": np.where(in_div, h, np.nan),
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
    relevance: Literal["snips", "ips"] = "snips",
    coverage: Literal["self_normalized", "ips"] = "self_normalized",
    diversity: Literal["coverage", "response_entropy"] = "coverage",
    diversity_estimator: DiversityEstimator = "jackknife",
    weighting: Literal["sequence", "token_mean"] = "sequence",
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
        feedback, log_target, lam=lam, reward_normalization=reward_normalization,
        relevance=relevance, coverage=coverage, diversity=diversity,
        diversity_estimator=diversity_estimator, weighting=weighting,
        token_log_target=token_log_target, clip=clip, backend=backend,
    )
    return stats


def evaluate(
    feedback: LoggedFeedback,
    log_target: Any = None,
    *,
    lam: float = 1.0,
    reward_normalization: RewardNormalization = "max",
    relevance: Literal["snips", "ips"] = "snips",
    coverage: Literal["self_normalized", "ips"] = "self_normalized",
    diversity: Literal["coverage", "response_entropy"] = "coverage",
    diversity_estimator: DiversityEstimator = "jackknife",
    weighting: Literal["sequence", "token_mean"] = "sequence",
    token_log_target: Any = None,
    clip: float | None = None,
    alpha: float = 0.05,
    backend: str | None = None,
) -> PopeEstimate:
    r"""Evaluate a target policy on logged feedback with POPE.

    Parameters
    ----------
    feedback : LoggedFeedback
        The log (must have aspects: ``aspect`` or ``aspect_probs``).
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
        Normaliser of the per-prompt coverage (:mod:`pope.coverage`).
    diversity : {"coverage", "response_entropy"}
        Coverage entropy (default), or the weighted mean per-response entropy
        :math:`H(q_{ik})/\log C` (a Jensen lower bound of the coverage entropy, useful with
        soft aspects; 0 for hard labels).
    diversity_estimator : {"jackknife", "plugin"}
        Estimator of each prompt's coverage entropy (``diversity="coverage"`` only; the
        response entropy is a weighted mean and is used as is). ``"jackknife"`` (default):
        the delete-one-response jackknife
        :math:`K_i H(\hat p_i) - \frac{K_i-1}{K_i}\sum_k H(\hat p_{i,-k})` with the
        leave-one-out coverage :math:`\hat p_{i,-k}` (self-normalised or IPS like
        :math:`\hat p_i`); it removes the :math:`O(1/K_i)` term of the plug-in's downward
        bias, at a larger variance, and is not clipped to :math:`[0, 1]` (clipping would
        bias it down again). Prompts with :math:`K_i = 1` (or, for self-normalised
        coverage, a single positive weight) get the plug-in. ``"plugin"``:
        :math:`H(\hat p_i)/\log C`, which estimates the expected coverage entropy of
        :math:`K_i` responses rather than :math:`D` (biased low for small :math:`K_i`).
        Measured in ``bench/RESULTS.md`` (accuracy section).
    weighting : {"sequence", "token_mean"}
        Sequence ratio :math:`\exp(\log\pi_\theta - \log\pi_0)`, or the length-normalised
        :math:`\exp(\frac1T\sum_t[\log\pi_\theta(y_t|\cdot) - \log\pi_0(y_t|\cdot)])`
        (lower variance, biased) which needs ``feedback.token_log_logging`` and
        ``token_log_target`` in the same flat layout (``feedback.token_ptr``).
    token_log_target : (T,) array_like, optional
        Per-token target log-probs for ``weighting="token_mean"``.
    clip : float, optional
        Truncation :math:`M` of every weight (relevance and coverage).
    alpha : float
        Default level of the intervals of the returned estimates.
    backend : str, optional
        CPU backend (``None``: automatic).

    Returns
    -------
    PopeEstimate
        ``.relevance``, ``.diversity``, ``.total`` (each an :class:`~pope.estimate.Estimate`),
        per-prompt coverage ``.p_hat``, per-response ``.diversity_reward``, diagnostics and
        the mergeable ``.stats``.
    """
    a_ = check_alpha(alpha)
    stats, arr = _compute(
        feedback, log_target, lam=lam, reward_normalization=reward_normalization,
        relevance=relevance, coverage=coverage, diversity=diversity,
        diversity_estimator=diversity_estimator, weighting=weighting,
        token_log_target=token_log_target, clip=clip, backend=backend,
    )
    est = stats.estimate(a_)
    au, bu, hu, du = arr["units"]
    nu, nd, lam_, m = stats.n_units, stats.n_div, stats.lam, stats.log_scale
    snips = relevance == "snips"
    values = np.column_stack([au, bu, hu, du])

    def rel_of(s: np.ndarray) -> np.ndarray:
        q = ratio_of_columns(s[:, :2])
        return q if snips else times_exp(q, m)

    def div_of(s: np.ndarray) -> np.ndarray:
        return ratio_of_columns(s[:, 2:4])

    def rel_contrib() -> np.ndarray:
        q = nu * au / stats.sum_b
        return q if snips else times_exp(q, m)

    def div_contrib() -> np.ndarray:
        return (nu / nd) * hu

    fns: dict[str, tuple[Callable[[], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
        "relevance": (rel_contrib, rel_of),
        "diversity": (div_contrib, div_of),
        "total": (lambda: rel_contrib() + lam_ * div_contrib(),
                  lambda s: rel_of(s) + lam_ * div_of(s)),
    }
    parts = {}
    for name, (cf, bf) in fns.items():
        parts[name] = dataclasses.replace(
            getattr(est, name), _contrib_fn=cf,
            _boot_fn=(lambda bf=bf: (values, bf)), backend=arr["backend"],
        )
    return PopeEstimate(
        relevance=parts["relevance"], diversity=parts["diversity"], total=parts["total"],
        lam=lam_, stats=stats, p_hat=arr["p_hat"], prompt_diversity=arr["prompt_diversity"],
        diversity_reward=arr["diversity_reward"], reward=arr["reward"],
        log_weight=arr["log_weight"],
    )
