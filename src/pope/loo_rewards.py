r"""Per-response diversity rewards from leave-one-out U-statistics (NumPy reference).

Training maximises :math:`V(\pi_\theta) = U + \lambda D`, with :math:`D` the mean over prompts
of a coverage functional :math:`D(p_\theta(\cdot\mid x))` (``DIVERSITY.md`` §4,
``docs/training.md``). With importance weights :math:`w_k = \pi_\theta(y_k\mid x)/\pi_0(y_k\mid
x)` and aspect rows :math:`q_k`, the coverage is :math:`p_\theta(c) = \mathbb E_{\pi_0}[w q(c)]`
and its score-function gradient :math:`\nabla p_\theta(c) = \mathbb E_{\pi_0}[w\,q(c)\,\nabla
\log\pi_\theta(y)]`. For a polynomial functional

.. math::

    D_L(p) = c_0 + \sum_{j=2}^{L} g_j P_j(p), \qquad P_j(p) = \sum_c p_c^j,
    \qquad \frac{\partial D_L}{\partial p_c} = \sum_{j=2}^L j g_j p_c^{j-1},

(the minimax Shannon coefficients of :mod:`pope.polynomial`, or Gini-Simpson
:math:`D_{GS} = (1 - P_2)/(1 - 1/C)`: :math:`c_0 = -g_2 = C/(C-1)`, :math:`L = 2`), an unbiased
gradient needs an unbiased estimate of :math:`p_c^{j-1}` that is *independent of response k*.
The other :math:`K-1` responses of the prompt give it: with :math:`x_{lc} = w_l q_l(c)`,

.. math::

    T^{(-k)}_m(c) = \frac{e_m(x_{-k,c})}{\binom{K-1}{m}}, \qquad
    \mathbb E\,T^{(-k)}_m(c) = p_c^m \quad (m \le K - 1),

:math:`e_m(x_{-k,c})` the elementary symmetric polynomial of :math:`\{x_{lc}: l \ne k\}`
(:math:`T_0 = 1`). Per response :math:`k` of prompt :math:`i` (degree
:math:`L_i = \min(L, K_i)`, since :math:`K_i` responses identify degree :math:`K_i` at most):

* value reward :math:`d_{ik} = c_0 + \sum_{j=2}^{L_i} g_j\, q_{ik}\cdot T^{(-k)}_{j-1}`
  (for Gini-Simpson :math:`d_{ik} = (1 - q_{ik}\cdot\hat p_{i,-k})/(1 - 1/C)`,
  :math:`\hat p_{i,-k} = \sum_{l\ne k} w_{il} q_{il}/(K_i - 1)`);
* gradient reward :math:`\rho_{ik} = c_0 + \sum_{j=2}^{L_i} j\,g_j\, q_{ik}\cdot
  T^{(-k)}_{j-1}`, so :math:`\mathbb E[\frac1K\sum_k w_k\rho_k\nabla\log\pi_\theta(y_k)] =
  \nabla D_{L_i}(p_\theta)` exactly (independence of :math:`y_k` and the others; the constant
  :math:`c_0` adds :math:`c_0\mathbb E[w\nabla\log\pi_\theta] = c_0\nabla 1 = 0`). For
  Gini-Simpson :math:`\rho = 2d - c_0`: the reward :math:`2\lambda d` of ``DIVERSITY.md`` §4 up
  to a constant, which neither the expectation nor (exactly) the per-prompt baseline sees.

Exact identities (tested): :math:`\sum_k x_{kc} e_{j-1}(x_{-k,c}) = j\,e_j(x_c)` and
:math:`K\binom{K-1}{j-1} = j\binom{K}{j}` give

.. math::

    \frac1K\sum_k w_k d_k = c_0\bar w + \sum_j g_j\hat P_j, \qquad
    \frac1K\sum_k w_k \rho_k = c_0\bar w + \sum_j j\,g_j\hat P_j,

with :math:`\hat P_j` the unbiased power sums of :mod:`pope.power_sums`; for Gini-Simpson
:math:`\frac1K\sum_k w_k d_k = (\bar w - \hat P_2)/(1 - 1/C)`.

Normalisation of :math:`T` (``normalization``):

* ``"ips"``: as above, exactly unbiased;
* ``"pooled"``: :math:`T_m` times :math:`f_m = n_m / \sum_{i: K_i > m}\hat S_{m,i}`, the
  inverse of the batch mean of the weight U-statistics :math:`\hat S_{m,i} =
  e_m(w_i)/\binom{K_i}{m}` (:math:`\mathbb E\hat S = 1`) over the :math:`n_m` prompts that use
  degree :math:`m` (those with :math:`K_i > m`): self-normalised *across prompts*, as
  :func:`pope.evaluate` does; bias :math:`O(1/n)`, scale-free;
* ``"prompt"``: :math:`T_m(c)` divided by :math:`e_m(w_{-k})/\binom{K-1}{m}` (for
  Gini-Simpson :math:`\hat p_{i,-k} = \sum_{l\ne k} w_l q_l / \sum_{l\ne k} w_l`):
  self-normalised within the prompt; a ratio of :math:`K-1` responses, so biased at finite
  :math:`K` (bias not shrinking with the number of prompts). A zero denominator gives 0.

Edge cases: :math:`K_i = 1` gives no leave-one-out information: :math:`L_i = 1`,
:math:`d = \rho = 1/2` (the degree-1 constant of :func:`pope.polynomial.entropy_polynomial`),
which the per-prompt baseline removes; :math:`C = 1` gives :math:`d = \rho = 0`; empty prompts
have no rows; zero weights are allowed (:math:`T = 0` when all others weigh 0).

:math:`e_m(x_{-k})` is computed by the non-negative recursion :math:`e_m \leftarrow e_m +
x_l e_{m-1}` over the others, recomputed for every :math:`k` (:math:`O(K^2 L C)` per prompt; a
reference, not a kernel: the torch twin :mod:`pope.objective_loo` uses prefix/suffix products).
No deletion formula, so no cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pope.estimators.pope_features import Family, coefficients
from pope.polynomial import EntropyPolynomial

__all__ = ["LooRewards", "loo_rewards_reference", "reward_coefficients"]

LooDiversity = Literal["coverage", "gini_simpson"]
LooNormalization = Literal["ips", "pooled", "prompt"]

#: degree of the Shannon reward when none is given (DIVERSITY.md §2: L > 4 rarely pays off)
DEFAULT_DEGREE = 4


@dataclass(frozen=True)
class LooRewards:
    """Result of :func:`loo_rewards_reference`.

    Attributes
    ----------
    value : (N,) float64
        :math:`d_{ik}`.
    gradient : (N,) float64
        :math:`\\rho_{ik}`, the policy-gradient reward.
    degree : (n_prompts,) int64
        :math:`L_i = \\min(L, K_i)` (0 for an empty prompt).
    """

    value: np.ndarray
    gradient: np.ndarray
    degree: np.ndarray


def reward_coefficients(
    diversity: LooDiversity, n_aspects: int, degree: int | None
) -> tuple[int, dict[int, EntropyPolynomial]]:
    """``(L, {L': coefficients of degree L'})`` for ``L' = 1..L``.

    ``diversity="gini_simpson"`` has degree 2 (``degree`` must be ``None`` or 2);
    ``"coverage"`` the minimax Shannon polynomial of degree ``degree`` (default 4).
    """
    if diversity not in ("coverage", "gini_simpson"):
        raise ValueError(f"diversity must be 'coverage' or 'gini_simpson', got {diversity!r}")
    family: Family
    if diversity == "gini_simpson":
        if degree not in (None, 2):
            raise ValueError(f"the Gini-Simpson reward has degree 2, got diversity_degree={degree}")
        lmax, family = 2, "gini_simpson"
    else:
        lmax = DEFAULT_DEGREE if degree is None else degree
        if isinstance(lmax, bool) or not isinstance(lmax, (int, np.integer)) or not 1 <= lmax <= 8:
            raise ValueError(f"diversity_degree must be an int in [1, 8] or None, got {degree!r}")
        lmax, family = int(lmax), "shannon"
    return lmax, {d: coefficients(family, n_aspects, d) for d in range(1, lmax + 1)}


def _binom(n: int, k: int) -> float:
    from math import comb

    return float(comb(n, k)) if 0 <= k <= n else 0.0


def _esym(x: np.ndarray, degree: int) -> np.ndarray:
    """``e_0..e_degree`` of the rows of ``x`` (R, F), column-wise: (degree + 1, F)."""
    e = np.zeros((degree + 1, x.shape[1]))
    e[0] = 1.0
    for row in x:
        for m in range(degree, 0, -1):
            e[m] = e[m] + row * e[m - 1]
    return e


def loo_rewards_reference(
    prompt_ptr: np.ndarray,
    weight: np.ndarray,
    q: np.ndarray,
    *,
    diversity: LooDiversity = "coverage",
    degree: int | None = None,
    normalization: LooNormalization = "ips",
) -> LooRewards:
    r"""Leave-one-out value and gradient rewards :math:`d_{ik}`, :math:`\rho_{ik}`.

    Parameters
    ----------
    prompt_ptr : (n+1,) int
        CSR offsets of the prompts' rows.
    weight : (N,) float
        Importance weights :math:`w_{ik} \ge 0` (finite).
    q : (N, C) float
        Aspect rows on the simplex (one-hot for hard labels).
    diversity : {"coverage", "gini_simpson"}
        Polynomial Shannon coverage entropy of degree ``degree`` (default 4), or Gini-Simpson.
    degree : int, optional
    normalization : {"ips", "pooled", "prompt"}
        See the module docstring.

    Returns
    -------
    LooRewards
    """
    ptr = np.asarray(prompt_ptr, dtype=np.int64)
    w = np.asarray(weight, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] != w.shape[0] or ptr[-1] != w.shape[0]:
        raise ValueError("q must be (N, C) and weight (N,) with N = prompt_ptr[-1]")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weight must be finite and >= 0")
    if normalization not in ("ips", "pooled", "prompt"):
        raise ValueError(
            f"normalization must be 'ips', 'pooled' or 'prompt', got {normalization!r}"
        )
    c = q.shape[1]
    lmax, polys = reward_coefficients(diversity, c, degree)
    counts = np.diff(ptr)
    deg = np.minimum(counts, lmax)
    # pooled normalisers f_m = n_m / sum_{i: K_i > m} S_{m,i}
    f = np.ones(lmax)
    if normalization == "pooled":
        for m in range(1, lmax):
            s = [
                _esym(w[ptr[i] : ptr[i + 1], None], m)[m, 0] / _binom(counts[i], m)
                for i in range(counts.size)
                if counts[i] > m
            ]
            f[m] = len(s) / sum(s) if s and sum(s) > 0 else 0.0
    value = np.zeros(w.shape[0])
    grad = np.zeros(w.shape[0])
    for i in range(counts.size):
        k_i, lo = int(counts[i]), int(ptr[i])
        if k_i == 0:
            continue
        poly = polys[int(deg[i])]
        x = np.concatenate([w[lo : lo + k_i, None] * q[lo : lo + k_i], w[lo : lo + k_i, None]], 1)
        for k in range(k_i):
            others = np.delete(x, k, axis=0)
            e = _esym(others, int(deg[i]) - 1)  # (L_i, C + 1)
            v, g = poly.c0, poly.c0
            for j in range(2, int(deg[i]) + 1):
                m = j - 1
                t = q[lo + k] @ e[m, :c] / _binom(k_i - 1, m)
                if normalization == "pooled":
                    t = t * f[m]
                elif normalization == "prompt":
                    s = e[m, c] / _binom(k_i - 1, m)
                    t = t / s if s > 0 else 0.0
                v += poly.g[j - 2] * t
                g += j * poly.g[j - 2] * t
            value[lo + k], grad[lo + k] = v, g
    return LooRewards(value, grad, deg.astype(np.int64))
