r"""Per-prompt features of a POPE evaluation and the functionals built on their means.

Every POPE quantity is a smooth function of the mean :math:`\bar X` of per-prompt feature rows
(:mod:`pope.estimators.prompt_moments`). The features of prompt :math:`i` (:math:`K_i \ge 1`,
scaled weights :math:`\tilde w = e^{\ell - m}`):

* ``a`` :math:`= \sum_k \tilde w_{ik} r_{ik}`, ``b`` :math:`= \sum_k \tilde w_{ik}` (SNIPS
  relevance) or :math:`K_i` (IPS relevance); relevance :math:`\hat U = s\,\bar a/\bar b`
  (:math:`s = 1` for SNIPS, :math:`e^m` for IPS);
* per-prompt diversity values (plug-in, jackknife, response entropy): ``h``
  :math:`= \mathbb 1_i^D h_i` and ``in_div`` :math:`= \mathbb 1_i^D`, with
  :math:`\hat D = \bar h / \overline{\mathbb 1^D}`;
* power sums (polynomial Shannon and Gini-Simpson): the degree class
  :math:`d_i = \min(K_i, L_{max})`, its indicator ``n{d}`` and, for :math:`2 \le j \le d`,
  ``P{d}.{j}`` :math:`= \hat P_{j,i}\mathbb 1\{d_i = d\}` and ``S{d}.{j}``
  :math:`= \hat S_{j,i}\mathbb 1\{d_i = d\}` (:mod:`pope.power_sums`).

Power-sum diversity of degree :math:`L \le L_{max}`: a prompt of class :math:`d` uses the
coefficients :math:`(c_0, g)` of degree :math:`L_d = \min(d, L)` (:math:`K_i` responses
identify degree :math:`K_i` at most); with :math:`\nu_d = \overline{n_d}` (class shares),
:math:`A_j = \sum_{d \ge j} g^{(L_d)}_j \overline{P_{d,j}}`,
:math:`S_j = \sum_{d\ge j}\overline{S_{d,j}}` and :math:`N_j = \sum_{d\ge j}\nu_d`,

.. math::

    \hat D = \sum_d \nu_d\, c_0^{(L_d)} + \sum_{j=2}^{L} A_j\,\frac{N_j}{S_j},

the self-normalised form (:math:`S_j/N_j` estimates :math:`\mathbb E\hat S_j = 1`; the IPS form
drops that factor). Its worst-case bias is :math:`B = \sum_d \nu_d B_{L_d}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pope.estimate import _scaled
from pope.polynomial import EntropyPolynomial, entropy_polynomial

__all__ = ["DiversitySpec", "coefficients", "diversity_value", "relevance_value"]

Family = Literal["shannon", "gini_simpson"]


@dataclass(frozen=True)
class DiversitySpec:
    """How the diversity is computed from the features.

    ``kind="values"``: per-prompt values ``h`` / ``in_div``; ``kind="power"``: power sums of
    ``family`` up to ``max_degree``, degree chosen among ``degrees``.
    """

    kind: Literal["values", "power"]
    n_aspects: int
    family: Family = "shannon"
    max_degree: int = 0
    degrees: tuple[int, ...] = ()
    self_normalized: bool = True


def coefficients(family: Family, n_aspects: int, degree: int) -> EntropyPolynomial:
    r"""Coefficients of degree ``degree`` for ``family``.

    ``"shannon"``: :func:`pope.polynomial.entropy_polynomial`. ``"gini_simpson"``:
    :math:`D_{GS} = (1 - P_2)/(1 - 1/C)`, exact (:math:`B = 0`) from degree 2; degree 1 (a
    single response) identifies nothing: :math:`1/2`, :math:`B = 1/2`.
    """
    if family == "shannon":
        return entropy_polynomial(n_aspects, degree)
    if n_aspects == 1:
        return EntropyPolynomial(1, degree, 0.0, (0.0,) * (degree - 1), 0.0)
    if degree == 1:
        return EntropyPolynomial(n_aspects, 1, 0.5, (), 0.5)
    k = n_aspects / (n_aspects - 1.0)
    return EntropyPolynomial(n_aspects, degree, k, (-k,) + (0.0,) * (degree - 2), 0.0)


def feature_names(
    relevance_b: bool, spec: DiversitySpec
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``(names, powers)`` of the features (``relevance_b``: ``b`` carries a weight)."""
    names, powers = ["a", "b"], [1, 1 if relevance_b else 0]
    if spec.kind == "values":
        names += ["h", "in_div"]
        powers += [0, 0]
    else:
        for d in range(1, spec.max_degree + 1):
            names.append(f"n{d}")
            powers.append(0)
            for j in range(2, d + 1):
                names += [f"P{d}.{j}", f"S{d}.{j}"]
                powers += [j, j]
    return tuple(names), tuple(powers)


def power_rows(
    counts: np.ndarray, p_hat: np.ndarray, s_hat: np.ndarray, max_degree: int, out: np.ndarray
) -> None:
    """Write the power-sum feature columns (``out``'s columns after ``a``, ``b``)."""
    cls = np.minimum(counts, max_degree)
    col = 2
    for d in range(1, max_degree + 1):
        ind = cls == d
        out[:, col] = ind
        col += 1
        for j in range(2, d + 1):
            np.multiply(p_hat[:, j], ind, out=out[:, col])
            np.multiply(s_hat[:, j], ind, out=out[:, col + 1])
            col += 2


def relevance_value(
    mu: np.ndarray, names: tuple[str, ...], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    r""":math:`\hat U = s\bar a/\bar b` for means ``mu`` ``(..., F)``; gradient for 1-D ``mu``."""
    ia, ib = names.index("a"), names.index("b")
    a, b = mu[..., ia], mu[..., ib]
    with np.errstate(divide="ignore", invalid="ignore"):
        val = scale * a / b
    grad = np.zeros(mu.shape[-1])
    if mu.ndim == 1:
        grad[ia] = scale / b
        grad[ib] = -scale * a / b**2
    return val, grad


def diversity_value(
    mu: np.ndarray, names: tuple[str, ...], spec: DiversitySpec, degree: int, log_scale: float = 0.0
) -> tuple[np.ndarray, np.ndarray, float]:
    r""":math:`\hat D` for means ``mu`` ``(..., F)``, its gradient (1-D ``mu``) and bias bound.

    ``log_scale`` :math:`m` of the scaled weights: the IPS form multiplies the degree-:math:`j`
    sums by :math:`e^{jm}` (the self-normalised form is scale-free);
    :class:`~pope.estimate.WeightOverflowError` if that leaves float64.

    The bias bound is :math:`B = \sum_d \nu_d B_{L_d}` (``nan`` for ``kind="values"``: the
    plug-in and jackknife carry no bound).
    """
    grad = np.zeros(mu.shape[-1])
    if spec.kind == "values":
        ih, i1 = names.index("h"), names.index("in_div")
        h, one = mu[..., ih], mu[..., i1]
        with np.errstate(divide="ignore", invalid="ignore"):
            val = h / one
        if mu.ndim == 1:
            grad[ih] = 1.0 / one
            grad[i1] = -h / one**2
        return val, grad, math.nan
    lmax, c = spec.max_degree, spec.n_aspects
    polys = {d: coefficients(spec.family, c, min(d, degree)) for d in range(1, lmax + 1)}
    nu = {d: mu[..., names.index(f"n{d}")] for d in range(1, lmax + 1)}
    val = sum(nu[d] * polys[d].c0 for d in nu)
    bias = (
        float(sum(np.asarray(nu[d]).mean() * polys[d].bias_bound for d in nu))
        if mu.ndim == 1
        else math.nan
    )
    if mu.ndim == 1:
        for d in nu:
            grad[names.index(f"n{d}")] = polys[d].c0
    for j in range(2, degree + 1):
        ds = [d for d in range(j, lmax + 1)]
        if not ds:
            continue
        gj = {d: polys[d].g[j - 2] if len(polys[d].g) >= j - 1 else 0.0 for d in ds}
        a_j = sum(gj[d] * mu[..., names.index(f"P{d}.{j}")] for d in ds)
        if not spec.self_normalized:
            f = _scaled(j * log_scale, 1.0, "IPS power sums") if log_scale != -math.inf else 0.0
            val = val + f * a_j
            if mu.ndim == 1:
                for d in ds:
                    grad[names.index(f"P{d}.{j}")] += gj[d] * f
            continue
        s_j = sum(mu[..., names.index(f"S{d}.{j}")] for d in ds)
        n_j = sum(nu[d] for d in ds)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_j = np.where(s_j > 0, a_j * n_j / np.where(s_j > 0, s_j, 1.0), 0.0)
        val = val + t_j
        if mu.ndim == 1 and s_j > 0:
            for d in ds:
                grad[names.index(f"P{d}.{j}")] += gj[d] * n_j / s_j
                grad[names.index(f"S{d}.{j}")] += -a_j * n_j / s_j**2
                grad[names.index(f"n{d}")] += a_j / s_j
    return np.asarray(val, dtype=np.float64), grad, bias
