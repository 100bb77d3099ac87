r"""Best polynomial approximation of the normalised Shannon entropy on the simplex.

With :math:`K` responses per prompt only the power sums :math:`P_j(p) = \sum_c p_c^j`,
:math:`j \le K`, have unbiased estimates (``docs/method.md``, "What the data identify"), so an
estimator of :math:`D = H(p)/\log C` that is unbiased for *some* functional is a polynomial
:math:`\hat D = c_0 + \sum_{j=2}^{L} g_j P_j` of degree :math:`L \le K` (:math:`P_1 = 1` is
absorbed in :math:`c_0`). Its bias is the approximation error, and the smallest worst-case bias
over the simplex,

.. math::

    B_L = \min_{c_0, g}\ \max_{p\in\Delta_C}\
          \Big|c_0 + \sum_{j=2}^L g_j P_j(p) - H(p)/\log C\Big|,

is what an honest interval for :math:`D` must carry (Paninski 2003; Wu & Yang 2016).

How it is computed for any :math:`C` (hundreds included): the error is a sum of per-coordinate
terms, :math:`E(p) = \sum_c \delta(p_c)` with :math:`\delta(x) = f(x) - \phi(x)`,
:math:`f(x) = a_0 + a_1 x + \sum_{j\ge2} g_j x^j`, :math:`\phi(x) = -x\log x/\log C` (then
:math:`c_0 = C a_0 + a_1`). Because :math:`\sum_c (p_c - 1/C) = 0` on the simplex, for every
:math:`t` and :math:`s`

.. math::

    \sup_\Delta E \le C\max_{x\in[0,1]}\big[\delta(x) - t(x - 1/C)\big], \qquad
    \inf_\Delta E \ge C\min_{x\in[0,1]}\big[\delta(x) - s(x - 1/C)\big],

a one-dimensional problem (the Lagrangian dual of the moment problem over measures with mean
:math:`1/C`). Minimising the larger of the two over :math:`(a, t, s)` on a grid of
:math:`[0, 1]` (dense near 0, where :math:`\phi` has an infinite slope) is a linear programme
with :math:`L + 4` variables, solved by SciPy's HiGHS in milliseconds. The reported bound is
then re-evaluated on an independent, 20x finer grid with the solved :math:`(a, t, s)`, so it is
an upper bound of the worst case (not of the LP's discretisation); the tests check it against
random and extreme points of the simplex. The relaxation is tight to within a few thousandths
for :math:`L \ge 3` and conservative for :math:`L = 2` at small :math:`C` (0.15 against 0.10
for :math:`C = 4`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["EntropyPolynomial", "entropy_polynomial", "evaluate_polynomial"]

#: the largest degree the library computes coefficients for (K responses identify degree K)
MAX_DEGREE = 12


@dataclass(frozen=True)
class EntropyPolynomial:
    r"""Coefficients of :math:`\hat D = c_0 + \sum_{j=2}^{L} g_j P_j` and its bias bound.

    Attributes
    ----------
    n_aspects : int
        :math:`C`.
    degree : int
        :math:`L` (1: the constant 1/2, no information about the coverage).
    c0 : float
    g : tuple of float
        :math:`g_2, \dots, g_L` (empty for :math:`L = 1`).
    bias_bound : float
        :math:`B_L`: :math:`|\mathbb E\hat D - D| \le B_L` for every coverage :math:`p` when the
        power sums are estimated without bias.
    """

    n_aspects: int
    degree: int
    c0: float
    g: tuple[float, ...]
    bias_bound: float


def _phi(x: np.ndarray, log_c: float) -> np.ndarray:
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = -x[pos] * np.log(x[pos]) / log_c
    return out


def _grid(n_lin: int, n_geo: int) -> np.ndarray:
    return np.unique(
        np.concatenate([np.linspace(0.0, 1.0, n_lin), np.geomspace(1e-12, 1.0, n_geo)])
    )


def _sides(a: np.ndarray, t: float, s: float, x: np.ndarray, c: int) -> tuple[float, float]:
    """``C max[delta - t u]`` and ``-C min[delta - s u]`` on the points ``x``."""
    delta = np.polynomial.polynomial.polyval(x, a) - _phi(x, math.log(c))
    u = x - 1.0 / c
    return float(c * np.max(delta - t * u)), float(-c * np.min(delta - s * u))


def entropy_polynomial(n_aspects: int, degree: int) -> EntropyPolynomial:
    r"""Minimax coefficients and the bias bound :math:`B_L` for :math:`C` aspects, degree :math:`L`.

    Cached per ``(n_aspects, degree)``. ``degree = 1`` gives :math:`\hat D = 1/2`,
    :math:`B_1 = 1/2`; ``n_aspects = 1`` gives :math:`\hat D = 0`, :math:`B = 0` (one aspect
    has no diversity). Needs SciPy (``scipy.optimize.linprog``).
    """
    if isinstance(n_aspects, bool) or not isinstance(n_aspects, (int, np.integer)):
        raise TypeError(f"n_aspects must be an int, got {type(n_aspects).__name__}")
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
        raise TypeError(f"degree must be an int, got {type(degree).__name__}")
    c, deg = int(n_aspects), int(degree)
    if c < 1:
        raise ValueError(f"n_aspects must be >= 1, got {c}")
    if not 1 <= deg <= MAX_DEGREE:
        raise ValueError(f"degree must be in [1, {MAX_DEGREE}], got {deg}")
    return _entropy_polynomial(c, deg)


@lru_cache(maxsize=512)
def _entropy_polynomial(c: int, deg: int) -> EntropyPolynomial:
    if c == 1:
        return EntropyPolynomial(1, deg, 0.0, (0.0,) * (deg - 1), 0.0)
    if deg == 1:
        return EntropyPolynomial(c, 1, 0.5, (), 0.5)
    from scipy.optimize import linprog

    x = _grid(801, 400)
    phi = _phi(x, math.log(c))
    vand = np.vander(x, deg + 1, increasing=True)  # x^0 .. x^L
    u = (x - 1.0 / c)[:, None]
    one = np.ones((x.size, 1))
    zero = np.zeros((x.size, 1))
    # variables: a_0..a_L, t, s, eps ;  C(delta - t u) <= eps ;  -C(delta - s u) <= eps
    a_ub = np.vstack(
        [np.hstack([c * vand, -c * u, zero, -one]), np.hstack([-c * vand, zero, c * u, -one])]
    )
    b_ub = np.concatenate([c * phi, -c * phi])
    cost = np.zeros(deg + 4)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * (deg + 4), method="highs")
    if res.status != 0:  # pragma: no cover - HiGHS solves this small LP
        raise RuntimeError(f"entropy_polynomial(C={c}, L={deg}): LP failed: {res.message}")
    a, t, s = res.x[: deg + 1], float(res.x[deg + 1]), float(res.x[deg + 2])
    # re-evaluate the bound on an independent, finer grid (not the LP's points)
    hi, lo = _sides(a, t, s, _grid(16001, 8000) * (1 - 1e-9), c)
    hi2, lo2 = _sides(a, t, s, np.array([0.0, 1.0]), c)
    bound = max(hi, lo, hi2, lo2, float(res.x[-1]))
    return EntropyPolynomial(c, deg, float(c * a[0] + a[1]), tuple(float(v) for v in a[2:]), bound)


def evaluate_polynomial(poly: EntropyPolynomial, p: np.ndarray) -> np.ndarray:
    r""":math:`c_0 + \sum_j g_j P_j(p)` for coverage rows ``p`` of shape ``(..., C)``."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape[:-1], poly.c0)
    for j, gj in enumerate(poly.g, start=2):
        out = out + gj * np.sum(p**j, axis=-1)
    return out
