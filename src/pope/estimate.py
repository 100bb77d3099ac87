r"""Estimates, their diagnostics, and mergeable sufficient statistics.

Every estimator of :mod:`pope.estimators` returns an :class:`Estimate`: the point value, a
standard error, intervals (:meth:`Estimate.ci`), a high-confidence lower bound
(:meth:`Estimate.lower_bound`), per-sample contributions (:attr:`Estimate.contributions`, computed
on first access), weight :class:`Diagnostics`, and the estimator's sufficient statistics
(:attr:`Estimate.stats`; the classes live in :mod:`pope.estimators.sufficient_stats` and
:mod:`pope.estimators.pope_stats`, above this module).

Sufficient statistics are sums over samples. They are *mergeable*: the statistics of two
disjoint shards add (``a + b``) to the statistics of their union, up to float rounding, so a log
can be processed in pieces (streaming, several machines) and merged. Weighted sums are stored
*scaled*: with :math:`m` the largest (clipped) log weight seen, the stored weights are
:math:`\tilde w = e^{\ell - m}\le 1`; merging rescales both sides to the larger :math:`m`.
Self-normalised estimators only need ratios of scaled sums, so they never overflow; linear
estimators multiply by :math:`e^m` at the end and raise :class:`WeightOverflowError` if the
result leaves the float64 range.

Standard errors
---------------
For a linear estimator :math:`\hat V = \frac1n\sum_i X_i` the standard error is
:math:`\sqrt{s^2/n}` with the unbiased sample variance :math:`s^2` of the :math:`X_i`.
For a ratio (self-normalised) estimator it is the delta-method (linearisation) standard error
:math:`\sqrt{\sum_i \psi_i^2 / (n(n-1))}` with the influence terms :math:`\psi_i` given with each
statistics class.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pope import intervals as iv

__all__ = [
    "Diagnostics",
    "Estimate",
    "InsufficientDataWarning",
    "IntervalMethod",
    "WeightMoments",
    "WeightOverflowError",
]

IntervalMethod = Literal["normal", "t", "bootstrap", "hoeffding", "bernstein"]
BoundMethod = Literal["auto", "hoeffding", "bernstein"]

_LOG_MAX = float(np.log(np.finfo(np.float64).max))
#: below this effective sample size (or fraction of the weights) the normal interval is widened
LOW_ESS = 30.0
LOW_ESS_FRACTION = 0.05
#: pair estimates (Gini-Simpson): the pair-ESS fraction under which intervals under-covered
#: (90-92% at 0.22-0.28 in bench/accuracy.py) and the floor applies
LOW_PAIR_ESS_FRACTION = 0.3


class InsufficientDataWarning(UserWarning):
    """An estimate's uncertainty is not supported by the data (n < 2, zero variance, low ESS)."""


class WeightOverflowError(OverflowError):
    """An importance-weighted quantity does not fit in float64.

    Raised by linear (non-self-normalised) estimators when a weight or the estimate exceeds
    about :math:`e^{709.78}`. Pass ``clip=M`` or use a self-normalised estimator (``snips``,
    ``sndr``), which works with scaled weights and never overflows.
    """


def _factor(m_from: float, m_to: float) -> float:
    """:math:`e^{m_{from} - m_{to}}` with ``m_from = -inf`` (empty or all-zero side) giving 0."""
    if m_from == -math.inf:
        return 0.0
    return math.exp(m_from - m_to)


def _scaled(m: float, x: float, what: str) -> float:
    r""":math:`x e^m` computed in log space; :class:`WeightOverflowError` beyond float64."""
    if x == 0.0 or m == -math.inf:
        return 0.0
    lv = m + math.log(abs(x))
    if lv > _LOG_MAX:
        raise WeightOverflowError(
            f"{what}: the importance weights reach exp({m:.1f}) and the estimate exceeds the "
            "float64 range; pass clip=M or use a self-normalised estimator (snips / sndr)"
        )
    return math.copysign(math.exp(lv), x)


def _check_same(a: Any, b: Any, names: tuple[str, ...]) -> None:
    if type(a) is not type(b):
        raise TypeError(f"cannot merge {type(a).__name__} with {type(b).__name__}")
    for nm in names:
        x, y = getattr(a, nm), getattr(b, nm)
        if x != y and not (isinstance(x, float) and math.isnan(x) and math.isnan(y)):
            raise ValueError(
                f"cannot merge statistics computed with different {nm}: {x!r} != {y!r}"
            )


# ----------------------------------------------------------------------------- diagnostics
@dataclass(frozen=True)
class Diagnostics:
    r"""Importance-weight diagnostics of an estimate.

    Attributes
    ----------
    n : int
        Number of importance weights (responses, lists or list positions).
    ess : float
        Effective sample size :math:`(\sum_i w_i)^2 / \sum_i w_i^2 \in [1, n]` (scale-free);
        NaN without weights.
    max_weight : float
        Largest weight actually used (after clipping/smoothing); may be ``inf`` when it
        exceeds float64 (see ``log_max_weight``).
    mean_weight : float
        :math:`\frac1n\sum_i w_i`; close to 1 when the log supports the target policy.
    clipped_fraction : float
        Fraction of weights with :math:`w > M` (0 without clipping).
    log_max_weight : float
        :math:`\log` of ``max_weight``, always finite unless every weight is 0.
    n_units : int
        Independent units the standard error is computed over (samples, or prompts for POPE).
    extra : Mapping[str, float]
        Estimator-specific entries (e.g. ``max_unclipped_weight``, ``switched_fraction``).
    """

    n: int
    ess: float
    max_weight: float
    mean_weight: float
    clipped_fraction: float
    log_max_weight: float
    n_units: int
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def ess_fraction(self) -> float:
        """``ess / n``: 1 when all weights are equal."""
        return self.ess / self.n if self.n else math.nan

    @classmethod
    def without_weights(cls, n: int) -> Diagnostics:
        """Diagnostics of an estimator that uses no importance weight (DM)."""
        nan = math.nan
        return cls(
            n=n,
            ess=nan,
            max_weight=nan,
            mean_weight=nan,
            clipped_fraction=nan,
            log_max_weight=nan,
            n_units=n,
        )


@dataclass(frozen=True)
class WeightMoments:
    r"""Mergeable moments of a sample of (clipped) importance weights.

    Weights are stored scaled: :math:`\sum \tilde w` and :math:`\sum \tilde w^2` with
    :math:`\tilde w = e^{\ell - m}`, ``log_scale`` :math:`= m` (``-inf`` when empty or all 0).
    """

    log_scale: float
    n: int
    sum_w: float
    sum_w2: float
    n_clipped: int
    max_log_ratio: float

    @classmethod
    def from_moments(cls, mom: np.ndarray) -> WeightMoments:
        """From the vector of :func:`pope.backends.reference.ips_moments`."""
        return cls(
            log_scale=float(mom[0]),
            n=int(mom[1]),
            sum_w=float(mom[2]),
            sum_w2=float(mom[3]),
            n_clipped=int(mom[7]),
            max_log_ratio=float(mom[8]),
        )

    def __add__(self, other: WeightMoments) -> WeightMoments:
        if not isinstance(other, WeightMoments):
            return NotImplemented
        m = max(self.log_scale, other.log_scale)
        fa, fb = _factor(self.log_scale, m), _factor(other.log_scale, m)
        return WeightMoments(
            log_scale=m,
            n=self.n + other.n,
            sum_w=fa * self.sum_w + fb * other.sum_w,
            sum_w2=fa * fa * self.sum_w2 + fb * fb * other.sum_w2,
            n_clipped=self.n_clipped + other.n_clipped,
            max_log_ratio=max(self.max_log_ratio, other.max_log_ratio),
        )

    def diagnostics(
        self, n_units: int | None = None, extra: Mapping[str, float] | None = None
    ) -> Diagnostics:
        """The :class:`Diagnostics` of these weights."""
        n, m = self.n, self.log_scale
        ess = self.sum_w**2 / self.sum_w2 if self.sum_w2 > 0 else 0.0
        with np.errstate(over="ignore"):
            max_w = float(np.exp(m)) if n else math.nan
            mean_w = (
                (float(np.exp(m + math.log(self.sum_w / n))) if self.sum_w > 0 else 0.0)
                if n
                else math.nan
            )
            max_raw = float(np.exp(self.max_log_ratio)) if n else math.nan
        ex = {"max_unclipped_weight": max_raw}
        ex.update(extra or {})
        return Diagnostics(
            n=n,
            ess=ess,
            max_weight=max_w,
            mean_weight=mean_w,
            clipped_fraction=self.n_clipped / n if n else math.nan,
            log_max_weight=m,
            n_units=n if n_units is None else n_units,
            extra=ex,
        )


# ----------------------------------------------------------------------------- estimate
BootstrapData = tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True, eq=False)
class Estimate:
    r"""An off-policy estimate with its uncertainty.

    Attributes
    ----------
    value : float
        The point estimate :math:`\hat V`.
    stderr : float
        Estimated standard error (NaN with fewer than 2 units).
    n : int
        Number of independent units (samples; prompts for POPE).
    diagnostics : Diagnostics
    estimator : str
        Name of the estimator (``"ips"``, ``"snips"``, ``"pope.total"``, ...).
    alpha : float
        Default :math:`\alpha` of :meth:`ci`.
    stats : object
        The mergeable sufficient statistics (``IPSStats``, ``DRStats``, ``MeanStats``,
        ``PopeStats``); ``stats.estimate()`` reproduces this estimate.
    bound_range : (float, float) or None
        A priori range :math:`[a, b]` of each unit's term, used by :meth:`lower_bound` and the
        ``"hoeffding"`` / ``"bernstein"`` intervals; ``None`` when no finite-sample bound
        applies (self-normalised and POPE estimates).
    bound_heuristic : bool
        The range uses the largest *observed* weight because no clip bounds the weights; such a
        bound is heuristic and is only returned with ``heuristic=True``.
    bound_note : str
        Why no (exact) bound is available.
    backend : str or None
        CPU backend used for the bootstrap.
    bias_bound : float or None
        :math:`B`: a bound on the estimator's bias, :math:`|\mathbb E\hat V - V| \le B`, that
        every interval includes (bias-aware critical value, see :meth:`ci`); ``None`` when the
        estimator carries no bound (unbiased or consistent estimators; the plug-in and
        jackknife diversity, whose bias is not bounded: see ``docs/method.md``).
    multiplicity : int
        The interval is simultaneous over this many candidate estimators the estimate was
        chosen among (e.g. polynomial degrees): :meth:`ci` works at level
        :math:`\alpha/\text{multiplicity}` (Bonferroni), so the choice is accounted for.
    pair_ess : float or None
        For estimates built on pairs of responses (Gini-Simpson): the pair effective sample
        size :math:`(\sum_i\hat S_{2,i})^2/\sum_i\hat S_{2,i}^2`, which then decides
        :attr:`low_ess` (below 30, or below :data:`LOW_PAIR_ESS_FRACTION` of the units) and
        sizes the low-ESS floor instead of the response ESS.
    parameter_range : (float, float) or None
        A priori range of the estimated quantity (e.g. :math:`[0, 1]` for a diversity);
        intervals are intersected with it, and with too few effective samples they are
        widened to at least the range a Hoeffding bound at :math:`n = \mathrm{ESS}` allows
        (see :meth:`ci`).
    """

    value: float
    stderr: float
    n: int
    diagnostics: Diagnostics
    estimator: str = "estimate"
    alpha: float = 0.05
    stats: Any = None
    bound_range: tuple[float, float] | None = None
    bound_heuristic: bool = False
    bound_note: str = ""
    backend: str | None = None
    bias_bound: float | None = None
    multiplicity: int = 1
    parameter_range: tuple[float, float] | None = None
    pair_ess: float | None = None
    _contrib_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _boot_fn: Callable[[], BootstrapData] | None = field(default=None, repr=False)
    _cache: dict = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        note = self.uncertainty_note
        if note:
            warnings.warn(f"{self.estimator}: {note}", InsufficientDataWarning, stacklevel=3)

    # ------------------------------------------------------------------ basic views
    @property
    def uncertainty_note(self) -> str:
        """Why the standard error says little ('' when it is usable): n < 2 or zero variance."""
        if self.n < 2:
            return (
                f"only {self.n} independent unit(s): the standard error is undefined, "
                "so the normal and t intervals are the a priori range (or undefined)"
            )
        if self.stderr == 0.0 and math.isfinite(self.value):
            return (
                "zero sample variance: the standard error is 0 and the normal interval "
                "has zero width"
            )
        return ""

    @property
    def low_ess(self) -> bool:
        """True when the weights' effective sample size is too small for the normal interval.

        The rule: ESS below 30, or below 5% of the number of weights (for pair estimates,
        the pair ESS below 30 or below 30% of the prompts, see :attr:`pair_ess`).
        """
        if self.pair_ess is not None:
            return bool(self.pair_ess < LOW_ESS or self.pair_ess < LOW_PAIR_ESS_FRACTION * self.n)
        d = self.diagnostics
        ess = d.ess
        if not (isinstance(ess, float) and math.isfinite(ess)) or not d.n:
            return False
        return ess < LOW_ESS or ess < LOW_ESS_FRACTION * d.n

    @property
    def variance(self) -> float:
        """``stderr ** 2``: estimated variance of :attr:`value`."""
        return self.stderr**2

    @property
    def contributions(self) -> np.ndarray:
        r"""Per-unit contributions :math:`X_i` whose mean is :attr:`value`.

        Linear estimators: the summands (e.g. :math:`w_i r_i` for IPS). Self-normalised ones:
        :math:`n\,w_i r_i / \sum_j w_j` (SNIPS) and the like, so that
        :math:`\frac1n\sum_i X_i = \hat V` still holds. Computed on first access (read-only
        array). Not available for an estimate rebuilt from merged statistics.
        """
        if "contributions" not in self._cache:
            if self._contrib_fn is None:
                raise ValueError(
                    f"{self.estimator}: per-sample contributions need the data; this estimate "
                    "was built from (merged) sufficient statistics only"
                )
            c = np.asarray(self._contrib_fn(), dtype=np.float64)
            c.flags.writeable = False
            self._cache["contributions"] = c
        return self._cache["contributions"]

    # ------------------------------------------------------------------ bootstrap
    def bootstrap(self, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
        """Bootstrap replicates of the estimate, ``(n_boot,)``.

        Resamples units with replacement through the backend's ``bootstrap_sums`` (the same
        resamples on every backend for a given ``seed``). Ratio estimators resample their
        numerator and denominator together (one row per unit holds both).
        """
        if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
            raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
        if (
            isinstance(seed, bool)
            or not isinstance(seed, (int, np.integer))
            or not 0 <= int(seed) < 2**64
        ):
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        key = ("bootstrap", int(n_boot), int(seed))
        if key not in self._cache:
            if self._boot_fn is None:
                raise ValueError(
                    f"{self.estimator}: the bootstrap needs the data; this estimate was built "
                    "from (merged) sufficient statistics only"
                )
            from pope.backends import get_backend

            values, fn = self._boot_fn()
            values = np.ascontiguousarray(values, dtype=np.float64)
            sums = get_backend(self.backend).bootstrap_sums(values, int(n_boot), int(seed))
            reps = np.asarray(fn(np.asarray(sums)), dtype=np.float64)
            reps.flags.writeable = False
            self._cache[key] = reps
        return self._cache[key]

    # ------------------------------------------------------------------ intervals
    def ci(
        self,
        alpha: float | None = None,
        method: IntervalMethod = "normal",
        *,
        n_boot: int = 2000,
        seed: int = 0,
        heuristic: bool = False,
    ) -> tuple[float, float]:
        r"""Two-sided :math:`1-\alpha` confidence interval.

        Parameters
        ----------
        alpha : float in (0, 1), optional
            Defaults to :attr:`alpha`. With :attr:`multiplicity` :math:`m > 1` the interval is
            computed at level :math:`\alpha/m`.
        method : {"normal", "t", "bootstrap", "hoeffding", "bernstein"}
            ``"normal"``: :math:`\hat V \pm \mathrm{se}\,\mathrm{cv}_{1-\alpha}(B/\mathrm{se})`
            with the bias bound :math:`B` (:attr:`bias_bound`, 0 when ``None``), which is
            :math:`\hat V \pm z_{1-\alpha/2}\,\mathrm{se}` at :math:`B = 0`;
            ``"t"``: :math:`\hat V \pm (t_{n-1,1-\alpha/2}\,\mathrm{se} + B)`;
            ``"bootstrap"``: percentile interval of ``n_boot`` resamples (``seed``), widened by
            :math:`B` on each side;
            ``"hoeffding"`` / ``"bernstein"``: :math:`\hat V \pm h` with the one-sided
            half-width :math:`h` of :meth:`lower_bound` at level :math:`\alpha/2` (needs a
            bounded estimator, see :attr:`bound_range`).
            With a known :attr:`parameter_range` :math:`[l, u]` (width :math:`R`) the interval
            is intersected with it, and when the effective sample size is low (:attr:`low_ess`)
            the normal and t half-widths are at least
            :math:`R\sqrt{\log(2/\alpha)/(2\,\mathrm{ESS})} + B` (Hoeffding's bound with the
            ESS as the sample size: a floor that stops a collapsed weight distribution from
            printing a narrow interval; :meth:`interval_note` says when it applied).
        n_boot, seed : int
            Bootstrap size and seed.
        heuristic : bool
            Allow a concentration interval whose range uses the largest observed weight.

        Returns
        -------
        (lower, upper)

        Raises
        ------
        ValueError
            For the normal and t intervals when the standard error is undefined (fewer than
            two units) and no :attr:`parameter_range` is known.
        """
        a = iv.check_alpha(self.alpha if alpha is None else alpha) / max(1, self.multiplicity)
        v, se = self.value, self.stderr
        b = 0.0 if self.bias_bound is None else float(self.bias_bound)
        if method in ("normal", "t"):
            if not math.isfinite(se) or self.n < 2:
                if self.parameter_range is not None:
                    return self.parameter_range
                raise ValueError(
                    f"{self.estimator}: {self.uncertainty_note or 'the standard error is NaN'};"
                    " no interval can be computed from the data"
                )
            if method == "normal":
                h = iv.bias_aware_halfwidth(se, b, a)
            else:
                h = iv.t_quantile(1.0 - a / 2.0, self.n - 1) * se + b
            h = max(h, self._ess_floor(a) + b)
            return self._clamp(v - h, v + h)
        if method == "bootstrap":
            lo, hi = iv.percentile_interval(self.bootstrap(n_boot, seed), a)
            return self._clamp(lo - b, hi + b)
        if method in ("hoeffding", "bernstein"):
            h = self._halfwidth(method, a / 2.0, heuristic)
            return self._clamp(v - h, v + h)
        raise ValueError(
            "method must be one of 'normal', 't', 'bootstrap', 'hoeffding', 'bernstein', "
            f"got {method!r}"
        )

    def _ess_floor(self, alpha: float) -> float:
        """The low-ESS floor of the half-width (0 when the ESS is adequate or no range)."""
        if self.parameter_range is None or not self.low_ess:
            return 0.0
        lo, hi = self.parameter_range
        ess = max(self.diagnostics.ess if self.pair_ess is None else self.pair_ess, 1.0)
        return (hi - lo) * math.sqrt(math.log(2.0 / alpha) / (2.0 * ess))

    def _clamp(self, lo: float, hi: float) -> tuple[float, float]:
        if self.parameter_range is None:
            return (lo, hi)
        pl, ph = self.parameter_range
        return (max(lo, pl), min(hi, ph))

    def interval_note(self, alpha: float | None = None) -> str:
        """What the default (normal) interval includes beyond z times the standard error: the bias
        bound, the multiplicity, the low-ESS floor ('' when nothing)."""
        a = iv.check_alpha(self.alpha if alpha is None else alpha) / max(1, self.multiplicity)
        notes = []
        if self.uncertainty_note:
            notes.append(self.uncertainty_note)
        if self.bias_bound:
            notes.append(f"includes a worst-case bias bound {self.bias_bound:.3g}")
        if self.parameter_range is not None and not (
            self.parameter_range[0] <= self.value <= self.parameter_range[1]
        ):
            lo, hi = self.parameter_range
            notes.append(
                f"the estimate {self.value:.4g} lies outside the range [{lo:g}, {hi:g}] "
                "of the quantity (it is not clipped, which would bias it); the "
                "interval is intersected with the range"
            )
        if self.multiplicity > 1:
            notes.append(
                f"simultaneous over {self.multiplicity} candidates (level alpha/"
                f"{self.multiplicity})"
            )
        if self._ess_floor(a) > 0 and math.isfinite(self.stderr):
            z = iv.normal_quantile(1.0 - a / 2.0)
            if self._ess_floor(a) > z * self.stderr:
                d = self.diagnostics
                if self.pair_ess is not None:
                    notes.append(
                        f"widened: pair ESS {self.pair_ess:.3g} of {self.n} prompts is "
                        "too small for the normal approximation (Hoeffding floor at "
                        "n = pair ESS)"
                    )
                else:
                    notes.append(
                        f"widened: ESS {d.ess:.3g} of {d.n} weights is too small for "
                        "the normal approximation (Hoeffding floor at n = ESS)"
                    )
        return "; ".join(notes)

    def _value_range(self, heuristic: bool) -> float:
        if self.bound_range is None:
            raise ValueError(f"{self.estimator}: no finite-sample bound. {self.bound_note}")
        if self.bound_heuristic and not heuristic:
            raise ValueError(
                f"{self.estimator}: {self.bound_note} Pass clip=M for a valid bound, or "
                "heuristic=True to use the largest observed weight (not a guaranteed bound)."
            )
        lo, hi = self.bound_range
        return hi - lo

    def _halfwidth(self, method: str, delta: float, heuristic: bool) -> float:
        rng = self._value_range(heuristic)
        var = self.n * self.stderr**2 if self.n > 1 else math.nan
        if method == "hoeffding":
            return iv.hoeffding_halfwidth(rng, self.n, delta)
        if method == "bernstein":
            return iv.empirical_bernstein_halfwidth(rng, var, self.n, delta)
        if method == "auto":
            return min(
                iv.hoeffding_halfwidth(rng, self.n, delta / 2.0),
                iv.empirical_bernstein_halfwidth(rng, var, self.n, delta / 2.0),
            )
        raise ValueError(f"method must be one of 'auto', 'hoeffding', 'bernstein', got {method!r}")

    def lower_bound(
        self, delta: float = 0.05, *, method: BoundMethod = "auto", heuristic: bool = False
    ) -> float:
        r"""High-confidence lower bound: :math:`P(\mathbb E\hat V \ge L) \ge 1-\delta`.

        For an estimator that is a mean of i.i.d. terms in a known range :math:`[a, b]`
        (:attr:`bound_range`, :math:`R = b - a`):

        * ``"hoeffding"``: :math:`L = \hat V - R\sqrt{\log(1/\delta)/(2n)}`. For IPS clipped at
          :math:`M` with rewards in :math:`[0,1]`, :math:`R = M` and this is
          :math:`\hat V - M\sqrt{\log(1/\delta)/(2N)}`.
        * ``"bernstein"``: the empirical Bernstein bound of Maurer & Pontil (2009),
          :math:`L = \hat V - \sqrt{2 s^2\log(2/\delta)/n} - 7R\log(2/\delta)/(3(n-1))`;
          much tighter when the variance :math:`s^2` is small compared with :math:`R^2`.
        * ``"auto"`` (default): the larger of the two, each at level :math:`\delta/2` (a union
          bound, so the result is still valid at :math:`1-\delta`).

        The bound holds for the *expectation of the estimator*: the policy value for unbiased
        estimators; for IPS clipped at :math:`M` with rewards :math:`\ge 0` that expectation is
        itself :math:`\le V`, so the bound is also a lower bound of :math:`V`.

        Without clipping no a priori range exists; then ``ValueError`` is raised unless
        ``heuristic=True``, which uses the largest observed weight (not a guaranteed bound).
        Self-normalised and POPE estimates have no bound (``ValueError``).
        """
        d = iv.check_alpha(delta, "delta")
        return self.value - self._halfwidth(method, d, heuristic)

    # ------------------------------------------------------------------ display
    def _ci_or_nan(self) -> tuple[float, float]:
        try:
            return self.ci()
        except ValueError:
            return (math.nan, math.nan)

    def __repr__(self) -> str:
        lo, hi = self._ci_or_nan()
        a = self.alpha
        return (
            f"Estimate({self.estimator}: {self.value:.6g} ± {self.stderr:.3g} (se), "
            f"{100 * (1 - a):g}% CI [{lo:.6g}, {hi:.6g}], n={self.n}, "
            f"ess={self.diagnostics.ess:.4g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary (value, stderr, default CI and what it includes, diagnostics).

        ``ci_lower``/``ci_upper`` are ``None`` when no interval exists (fewer than two units
        and no a priori range); ``interval_note`` says why and what the interval includes.
        """
        lo, hi = self._ci_or_nan()
        d = self.diagnostics
        return {
            "estimator": self.estimator,
            "value": self.value,
            "stderr": self.stderr if math.isfinite(self.stderr) else None,
            "ci_lower": lo if math.isfinite(lo) else None,
            "ci_upper": hi if math.isfinite(hi) else None,
            "bias_bound": self.bias_bound,
            "multiplicity": self.multiplicity,
            "interval_note": self.interval_note(),
            "alpha": self.alpha,
            "n": self.n,
            "ess": d.ess,
            "max_weight": d.max_weight,
            "mean_weight": d.mean_weight,
            "clipped_fraction": d.clipped_fraction,
        }
