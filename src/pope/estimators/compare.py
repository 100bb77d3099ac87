r"""Paired comparison of two target policies evaluated on the same log.

Both policies are evaluated on the same prompts, so their estimates are dependent; the
difference :math:`\hat\theta_A - \hat\theta_B` of each component (relevance, diversity, total)
has the prompt-level influence values :math:`\psi^A_i - \psi^B_i` (the pseudo-value deviations
of :class:`~pope.estimators.pope.PopeEstimate`), and

.. math::

    \widehat{\mathrm{se}}(\hat\theta_A - \hat\theta_B)
      = \sqrt{\sum_i (\psi^A_i - \psi^B_i)^2 / (n(n-1))},

which is smaller than :math:`\sqrt{\mathrm{se}_A^2 + \mathrm{se}_B^2}` when the two estimates
are positively correlated (the usual case). Both policies use the same polynomial degree (the
one with the narrowest interval of the *difference* of the diversities, chosen with
Bonferroni over the candidates); the bias bound of a difference is the sum of the two bounds
(the approximation errors at two different coverages need not cancel).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pope.data import LoggedFeedback
from pope.estimate import Estimate
from pope.estimators.pope import PopeEstimate, _compute, attach_arrays
from pope.estimators.pope_stats import narrowest_degree
from pope.intervals import check_alpha

__all__ = ["PopeComparison", "compare"]

_PARTS = ("relevance", "diversity", "total")


@dataclass(frozen=True, eq=False)
class PopeComparison:
    """Result of :func:`compare`: ``a``, ``b`` (each a :class:`PopeEstimate`) and the paired
    differences ``relevance``, ``diversity``, ``total`` (each an :class:`Estimate` of A - B)."""

    a: PopeEstimate
    b: PopeEstimate
    relevance: Estimate
    diversity: Estimate
    total: Estimate

    def summary(self, alpha: float | None = None) -> str:
        """Text table: the two estimates and the paired difference of each component."""
        a = self.total.alpha if alpha is None else alpha
        head = (
            f"{'':<10} {'A':>10} {'B':>10} {'A - B':>10} {'stderr':>10} "
            f"{100 * (1 - a):g}% CI of A - B"
        )
        rows = []
        for name in _PARTS:
            d: Estimate = getattr(self, name)
            lo, hi = d.ci(alpha)
            rows.append(
                f"{name:<10} {getattr(self.a, name).value:>10.5f} "
                f"{getattr(self.b, name).value:>10.5f} {d.value:>10.5f} "
                f"{d.stderr:>10.5f} [{lo:.5f}, {hi:.5f}]"
            )
            note = d.interval_note(alpha)
            if note:
                rows.append(f"  {name}: {note}")
        return "\n".join([head, *rows])

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary of the differences."""
        return {name: getattr(self, name).to_dict() for name in _PARTS}


def _paired_stderr(psi: np.ndarray) -> float:
    r""":math:`\sqrt{\sum_i\psi_i^2/(n(n-1))}` of paired influence values (inf for n < 2)."""
    n = psi.shape[0]
    return math.sqrt(float(psi @ psi) / (n * (n - 1))) if n > 1 else math.inf


def _difference(
    name: str, ea: Estimate, eb: Estimate, lam: float, bias: float | None, mult: int, alpha: float
) -> Estimate:
    psi = np.asarray(ea.contributions) - ea.value - (np.asarray(eb.contributions) - eb.value)
    n = psi.shape[0]
    se = _paired_stderr(psi) if n > 1 else math.nan
    value = ea.value - eb.value
    span = {"relevance": 1.0, "diversity": 1.0, "total": 1.0 + lam}[name]

    def contrib(value: float = value, psi: np.ndarray = psi) -> np.ndarray:
        return value + psi

    diag = dataclasses.replace(
        ea.diagnostics, extra={**ea.diagnostics.extra, "compared_with_ess": eb.diagnostics.ess}
    )
    return Estimate(
        value=value,
        stderr=se,
        n=n,
        diagnostics=diag,
        estimator=f"pope.compare.{name}",
        alpha=alpha,
        bias_bound=bias,
        multiplicity=mult,
        parameter_range=(-span, span),
        _contrib_fn=contrib,
    )


def compare(
    feedback: LoggedFeedback,
    log_target_a: Any,
    log_target_b: Any,
    *,
    alpha: float = 0.05,
    **options: Any,
) -> PopeComparison:
    r"""Paired comparison of policies A and B on one log (see the module docstring).

    Parameters
    ----------
    feedback : LoggedFeedback
    log_target_a, log_target_b : (N,) array_like
        Log-probabilities of the logged responses under A and under B (stored row order).
    alpha : float
        Default level of the intervals.
    **options
        Any option of :func:`pope.evaluate` (``lam``, ``diversity``, ``diversity_estimator``,
        ``diversity_degree``, ``clip``, ...), applied to both.

    Returns
    -------
    PopeComparison
    """
    a_ = check_alpha(alpha)
    if "token_log_target" in options:
        raise TypeError("compare takes sequence log-probabilities (log_target_a/_b) only")
    kw: dict[str, Any] = {
        "lam": 1.0,
        "reward_normalization": "max",
        "relevance": "snips",
        "coverage": "self_normalized",
        "diversity": "coverage",
        "diversity_estimator": "polynomial",
        "diversity_degree": None,
        "weighting": "sequence",
        "token_log_target": None,
        "clip": None,
        "backend": None,
    }
    unknown = set(options) - set(kw)
    if unknown:
        raise TypeError(f"compare got unexpected option(s) {sorted(unknown)}")
    kw.update(options)
    sa, arr_a = _compute(feedback, log_target_a, **kw)
    sb, arr_b = _compute(feedback, log_target_b, **kw)
    fixed: int | None = kw["diversity_degree"]
    cands = sorted(set(sa.candidate_degrees()) | set(sb.candidate_degrees()))
    if fixed is not None:
        deg, mult = fixed, 1
    else:

        def se_bias(degree: int) -> tuple[float, float]:
            pa, pb = sa.diversity_parts(degree), sb.diversity_parts(degree)
            # both share the units: the moments of A - B need the rows, so use the rows
            psi = (arr_a["rows"] - sa.moments.mean) @ pa.grad - (
                arr_b["rows"] - sb.moments.mean
            ) @ pb.grad
            return _paired_stderr(psi), (pa.bias or 0.0) + (pb.bias or 0.0)

        deg, mult = narrowest_degree(cands, a_, se_bias), len(cands)
    ea = attach_arrays(sa.estimate(a_, degree=deg), sa, arr_a)
    eb = attach_arrays(sb.estimate(a_, degree=deg), sb, arr_b)
    lam = sa.lam
    diffs = {}
    for name in _PARTS:
        ba, bb = getattr(ea, name).bias_bound, getattr(eb, name).bias_bound
        bias = None if ba is None and bb is None else (ba or 0.0) + (bb or 0.0)
        m = 1 if name == "relevance" else mult
        diffs[name] = _difference(name, getattr(ea, name), getattr(eb, name), lam, bias, m, a_)
    return PopeComparison(a=ea, b=eb, **diffs)
