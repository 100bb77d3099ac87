r"""True values of policies: :func:`entropy`, :class:`PolicyValue` (relevance, diversity, total)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PolicyValue", "entropy", "log_softmax"]


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    r"""Shannon entropy in nats, :math:`H(p) = -\sum_c p_c \log p_c` with :math:`0\log 0 = 0`.

    Parameters
    ----------
    p : array, probability vectors along ``axis``
    axis : int

    Returns
    -------
    array with ``axis`` removed.
    """
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return t.sum(axis=axis)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise :math:`z - \\log\\sum e^z` (``-inf`` entries stay ``-inf``)."""
    m = np.max(z, axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class PolicyValue:
    r"""The true value of a policy (exact, or an on-policy Monte Carlo estimate).

    Attributes
    ----------
    relevance : float
        :math:`U = \mathbb E_x U_\pi(x)`.
    diversity : float
        :math:`D = \mathbb E_x H(p_\pi(\cdot\mid x)) / \log C`.
    lam : float
        :math:`\lambda` used for ``total``.
    relevance_stderr, diversity_stderr, total_stderr : float
        Monte Carlo standard errors (0 for exact values).
    per_prompt_relevance, per_prompt_diversity : (P,) float
    coverage : (P, C) float
        :math:`p_\pi(c\mid x)`.
    n_samples : int
        Monte Carlo samples per prompt (0 for exact values).
    """

    relevance: float
    diversity: float
    lam: float
    per_prompt_relevance: np.ndarray
    per_prompt_diversity: np.ndarray
    coverage: np.ndarray
    relevance_stderr: float = 0.0
    diversity_stderr: float = 0.0
    total_stderr: float = 0.0
    n_samples: int = 0

    @property
    def total(self) -> float:
        r""":math:`V_\lambda = U + \lambda D`."""
        return float(self.relevance + self.lam * self.diversity)

    def as_dict(self) -> dict[str, float]:
        """Scalars only (JSON-friendly)."""
        return {
            "relevance": float(self.relevance),
            "diversity": float(self.diversity),
            "total": self.total,
            "lam": float(self.lam),
            "relevance_stderr": float(self.relevance_stderr),
            "diversity_stderr": float(self.diversity_stderr),
            "total_stderr": float(self.total_stderr),
            "n_samples": int(self.n_samples),
        }
