r"""Mergeable first and second moments of per-prompt feature vectors (the delta method).

Every POPE estimate is a smooth function :math:`\theta = g(\bar X)` of the mean of a
per-prompt feature vector :math:`X_i \in \mathbb R^F` (weighted reward and weight sums, power
sums, indicators; prompts are the independent units). Its delta-method standard error is

.. math::

    \widehat{\mathrm{se}}(\hat\theta)^2 = \frac{\nabla g^\top \hat\Sigma\,\nabla g}{n},
    \qquad \hat\Sigma = \frac{1}{n-1}\sum_i (X_i - \bar X)(X_i - \bar X)^\top ,

which equals :math:`\sum_i\psi_i^2/(n(n-1))` with the per-prompt influence values
:math:`\psi_i = \nabla g^\top (X_i - \bar X)`.

:class:`PromptMoments` stores :math:`n`, :math:`\bar X` and the centred cross-product matrix
:math:`M = \sum_i (X_i-\bar X)(X_i-\bar X)^\top`; two disjoint shards merge exactly with the
parallel update of Chan, Golub & LeVeque (1979),
:math:`M = M_a + M_b + \delta\delta^\top n_a n_b / n`, :math:`\delta = \bar X_b - \bar X_a`.
Features built from importance weights are stored scaled by :math:`e^{-p_f m}` (``powers``
:math:`p_f`, the weight's power in the feature; ``log_scale`` :math:`m`, the largest clipped
log weight); merging rescales both sides to the larger :math:`m`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PromptMoments"]


def _rescale(powers: np.ndarray, m_from: float, m_to: float) -> np.ndarray:
    """Per-feature factors :math:`e^{p (m_{from} - m_{to})}` (0 for a weighted feature of an
    all-zero side, ``m_from = -inf``; 1 for unweighted features)."""
    if m_from == -math.inf:
        return np.where(powers == 0, 1.0, 0.0)
    if m_to == -math.inf:
        return np.ones(powers.shape)
    return np.exp(powers * (m_from - m_to))


@dataclass(frozen=True, eq=False)
class PromptMoments:
    """``n``, the mean and the centred cross-products of per-prompt feature rows."""

    names: tuple[str, ...]
    powers: tuple[int, ...]
    log_scale: float
    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def from_rows(
        cls, names: tuple[str, ...], powers: tuple[int, ...], log_scale: float, rows: np.ndarray
    ) -> PromptMoments:
        """From the ``(n, F)`` feature rows of ``n`` prompts (columns named ``names``)."""
        x = np.asarray(rows, dtype=np.float64).reshape(-1, len(names))
        n = x.shape[0]
        mean = x.mean(axis=0) if n else np.zeros(len(names))
        dev = x - mean
        # einsum without BLAS: a (n x F)^T (n x F) product with small F, where a threaded
        # BLAS call costs more in thread start-up and contention than it saves
        m2 = np.einsum("ni,nj->ij", dev, dev)
        for a in (mean, m2):
            a.flags.writeable = False
        return cls(tuple(names), tuple(int(p) for p in powers), float(log_scale), n, mean, m2)

    def index(self, name: str) -> int:
        """Column of feature ``name``."""
        return self.names.index(name)

    def __add__(self, other: PromptMoments) -> PromptMoments:
        if not isinstance(other, PromptMoments):
            return NotImplemented
        if self.names != other.names or self.powers != other.powers:
            raise ValueError(
                "cannot merge prompt moments with different features: "
                f"{self.names} != {other.names}"
            )
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        m = max(self.log_scale, other.log_scale)
        p = np.asarray(self.powers, dtype=np.float64)
        fa, fb = _rescale(p, self.log_scale, m), _rescale(p, other.log_scale, m)
        ma, mb = self.mean * fa, other.mean * fb
        n = self.n + other.n
        delta = mb - ma
        mean = ma + delta * (other.n / n)
        m2 = (
            self.m2 * np.outer(fa, fa)
            + other.m2 * np.outer(fb, fb)
            + np.outer(delta, delta) * (self.n * other.n / n)
        )
        for a in (mean, m2):
            a.flags.writeable = False
        return PromptMoments(self.names, self.powers, m, n, mean, m2)

    def stderr(self, grad: np.ndarray) -> float:
        r""":math:`\sqrt{\nabla^\top M \nabla / (n(n-1))}`; NaN with fewer than two prompts."""
        if self.n < 2:
            return math.nan
        g = np.asarray(grad, dtype=np.float64)
        q = float(g @ self.m2 @ g)
        return math.sqrt(max(q, 0.0) / (self.n * (self.n - 1.0)))
