r"""Interval and bound maths shared by every estimate (pure Python / NumPy, no SciPy).

All intervals are two-sided at level :math:`1-\alpha`; one-sided bounds at level
:math:`1-\delta`.

* Normal (CLT): :math:`\hat V \pm z_{1-\alpha/2}\,\widehat{\mathrm{se}}` with the standard normal
  quantile :math:`z_{1-\alpha/2}` (1.95996... for :math:`\alpha = 0.05`).
* Student t: :math:`\hat V \pm t_{n-1,\,1-\alpha/2}\,\widehat{\mathrm{se}}`. The quantile is
  computed exactly for integer degrees of freedom (closed-form CDF, Abramowitz & Stegun
  26.7.3-4, inverted by bisection) up to 1000 degrees of freedom and by the Cornish-Fisher
  expansion (A&S 26.7.5, error below 1e-12 there) above.
* Bootstrap percentile: the :math:`\alpha/2` and :math:`1-\alpha/2` empirical quantiles of the
  bootstrap replicates.
* Hoeffding: for i.i.d. terms in an interval of length :math:`R`,
  :math:`P(\bar X - \mathbb E X \ge \varepsilon) \le \exp(-2n\varepsilon^2/R^2)`, so the
  one-sided half-width at level :math:`1-\delta` is :math:`R\sqrt{\log(1/\delta)/(2n)}`.
* Bias-aware (Armstrong & Kolesar 2020): for an estimator with
  :math:`|\mathbb E\hat V - V| \le B`, :math:`\hat V \pm \widehat{\mathrm{se}}\,
  \mathrm{cv}_{1-\alpha}(B/\widehat{\mathrm{se}})`, where :math:`\mathrm{cv}_{1-\alpha}(b)` is
  the :math:`1-\alpha` quantile of :math:`|N(b, 1)|` (the solution :math:`c` of
  :math:`\Phi(c - b) - \Phi(-c - b) = 1 - \alpha`; :math:`z_{1-\alpha/2}` at :math:`b = 0`,
  about :math:`b + z_{1-\alpha}` for large :math:`b`). It covers :math:`V` with probability
  :math:`\ge 1-\alpha` (asymptotically) whatever the bias within the bound.
* Empirical Bernstein (Maurer & Pontil 2009, Theorem 4): with the unbiased sample variance
  :math:`V_n`, with probability at least :math:`1-\delta`,
  :math:`\mathbb E X \ge \bar X - \sqrt{2 V_n \log(2/\delta)/n} - 7R\log(2/\delta)/(3(n-1))`.

References
----------
Armstrong, T. B. and Kolesar, M. (2020). Simple and honest confidence intervals in nonparametric
regression. Quantitative Economics 11(1).
Abramowitz, M. and Stegun, I. (1964). Handbook of Mathematical Functions, §26.7.
Maurer, A. and Pontil, M. (2009). Empirical Bernstein bounds and sample variance penalization.
COLT.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np

__all__ = [
    "bias_aware_critical_value",
    "bias_aware_halfwidth",
    "check_alpha",
    "empirical_bernstein_halfwidth",
    "hoeffding_halfwidth",
    "normal_quantile",
    "percentile_interval",
    "t_quantile",
]

_EXACT_T_MAX_DF = 1000


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """``alpha`` as a float strictly inside ``(0, 1)``, else ``ValueError``."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(alpha).__name__}")
    a = float(alpha)
    if not (0.0 < a < 1.0):
        raise ValueError(f"{name} must lie in (0, 1), got {alpha!r}")
    return a


def normal_quantile(p: float) -> float:
    r"""Standard normal quantile :math:`\Phi^{-1}(p)`, ``0 < p < 1``."""
    return NormalDist().inv_cdf(p)


def _t_abs_cdf_from_theta(theta: float, df: int) -> float:
    r""":math:`P(|T_\nu| \le t)` with :math:`\theta = \arctan(t/\sqrt\nu)` (A&S 26.7.3-4)."""
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    if df % 2 == 1:
        # (2/pi) [theta + sin cos (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ... up to c^(df-3))]
        total, term = 0.0, 1.0
        if df > 1:
            total = 1.0
            for j in range(1, (df - 3) // 2 + 1):
                term *= (2.0 * j) / (2.0 * j + 1.0) * c2
                total += term
        return (2.0 / math.pi) * (theta + s * c * total)
    # sin [1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... up to c^(df-2)]
    total, term = 1.0, 1.0
    for j in range(1, (df - 2) // 2 + 1):
        term *= (2.0 * j - 1.0) / (2.0 * j) * c2
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    r"""Quantile :math:`t_{\nu}(p)` of Student's t with integer ``df`` :math:`\nu \ge 1`.

    Parameters
    ----------
    p : float in (0, 1)
    df : int >= 1

    Returns
    -------
    float
        The ``t`` with :math:`P(T_\nu \le t) = p`.
    """
    if not (0.0 < p < 1.0):
        raise ValueError(f"p must lie in (0, 1), got {p!r}")
    if isinstance(df, bool) or int(df) != df or df < 1:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    return _t_quantile(float(p), int(df))


@lru_cache(maxsize=256)
def _t_quantile(p: float, df: int) -> float:
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -_t_quantile(1.0 - p, df)
    if df > _EXACT_T_MAX_DF:
        z = normal_quantile(p)
        z2 = z * z
        g1 = (z2 + 1.0) * z / 4.0
        g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0
        g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0
        g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0
        v = float(df)
        return z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4
    target = 2.0 * p - 1.0  # P(|T| <= t)
    lo, hi = 0.0, math.pi / 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_abs_cdf_from_theta(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-16:
            break
    theta = 0.5 * (lo + hi)
    return math.sqrt(df) * math.tan(theta)


def percentile_interval(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    r"""Percentile bootstrap interval: the :math:`\alpha/2` and :math:`1-\alpha/2` quantiles.

    Non-finite replicates (a resample with a zero denominator) are dropped; ``ValueError`` if
    none is left.
    """
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        raise ValueError("no finite bootstrap replicate")
    lo, hi = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def hoeffding_halfwidth(value_range: float, n: int, delta: float) -> float:
    r"""One-sided Hoeffding half-width :math:`R\sqrt{\log(1/\delta)/(2n)}`."""
    if n < 1:
        return math.inf
    return value_range * math.sqrt(math.log(1.0 / delta) / (2.0 * n))


def empirical_bernstein_halfwidth(
    value_range: float, variance: float, n: int, delta: float
) -> float:
    r"""One-sided empirical Bernstein half-width (Maurer & Pontil 2009, Thm 4).

    :math:`\sqrt{2 V_n \log(2/\delta)/n} + 7 R \log(2/\delta) / (3(n-1))`, with ``variance``
    the unbiased sample variance :math:`V_n` of the ``n`` terms; ``inf`` for ``n < 2``.
    """
    if n < 2 or not math.isfinite(variance):
        return math.inf
    lg = math.log(2.0 / delta)
    return math.sqrt(2.0 * max(variance, 0.0) * lg / n) + 7.0 * value_range * lg / (3.0 * (n - 1))


def bias_aware_critical_value(b: float, alpha: float) -> float:
    r""":math:`\mathrm{cv}_{1-\alpha}(b)`: the :math:`1-\alpha` quantile of :math:`|N(b, 1)|`.

    Solves :math:`\Phi(c - b) - \Phi(-c - b) = 1 - \alpha` by bisection (the left side
    increases in :math:`c`); ``b`` is the bias bound in standard errors (``b >= 0``; ``inf``
    gives ``inf``).
    """
    b = abs(float(b))
    if math.isnan(b):
        raise ValueError("the bias bound must not be NaN")
    if math.isinf(b):
        return math.inf
    nd = NormalDist()
    target = 1.0 - alpha
    lo, hi = max(0.0, b + nd.inv_cdf(1.0 - alpha) - 1e-9), b + nd.inv_cdf(1.0 - alpha / 2.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if nd.cdf(mid - b) - nd.cdf(-mid - b) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def bias_aware_halfwidth(stderr: float, bias: float, alpha: float) -> float:
    r"""Half-width :math:`\mathrm{se}\,\mathrm{cv}_{1-\alpha}(B/\mathrm{se})` of the
    bias-aware interval (:math:`B` when the standard error is 0)."""
    if stderr > 0:
        return stderr * bias_aware_critical_value(bias / stderr, alpha)
    return bias
