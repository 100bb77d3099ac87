r"""Mergeable statistics of a POPE evaluation and the estimates they determine.

:class:`PopeStats` holds the :class:`~pope.estimators.prompt_moments.PromptMoments` of the
per-prompt features (:mod:`pope.estimators.pope_features`) and the weight moments. Shards of
disjoint prompts merge exactly (``a + b``); :meth:`PopeStats.estimate` gives the relevance,
diversity and total with delta-method standard errors (prompts are the units), the bias bound
of the diversity and, for the polynomial estimator, the degree chosen among the candidates
with the choice accounted for (Bonferroni over the candidates: every candidate's interval is
computed at level :math:`\alpha/m`, and the narrowest is reported, so the reported interval
covers with probability :math:`\ge 1-\alpha` whichever is chosen).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pope.estimate import Estimate, InsufficientDataWarning, WeightMoments, _scaled
from pope.estimators.pope_features import DiversitySpec, diversity_value, relevance_value
from pope.estimators.prompt_moments import PromptMoments
from pope.intervals import bias_aware_halfwidth, check_alpha

__all__ = ["PAIR_ESS_WARN", "PopeStats", "QuantityParts", "narrowest_degree"]

#: Gini-Simpson: warn when the pair-ESS fraction is below this (the interval is widened there,
#: see :data:`pope.estimate.LOW_PAIR_ESS_FRACTION`)
PAIR_ESS_WARN = 0.3

_NO_BOUND = (
    "POPE's relevance is a ratio over prompts with random K_i and its diversity a smooth "
    "function of prompt means, neither a mean of bounded i.i.d. terms; use "
    "ci('normal'|'t'|'bootstrap'), or pope.estimators.ips with clip on the rewards for a "
    "bound on the relevance."
)


def narrowest_degree(
    candidates: tuple[int, ...] | list[int],
    alpha: float,
    se_bias: Callable[[int], tuple[float, float]],
) -> int:
    """The candidate whose bias-aware interval, at level :math:`\alpha/m` for :math:`m`
    candidates, is the narrowest; ``se_bias(degree)`` gives its stderr and bias bound."""
    if len(candidates) == 1:
        return candidates[0]
    a = alpha / len(candidates)
    best, best_w = candidates[0], math.inf
    for degree in candidates:
        w = bias_aware_halfwidth(*se_bias(degree), a)
        if w < best_w:
            best, best_w = degree, w
    return best


@dataclass(frozen=True)
class QuantityParts:
    """Value, gradient (w.r.t. the feature means), standard error and bias bound of one
    quantity at one degree."""

    value: float
    grad: np.ndarray
    stderr: float
    bias: float | None


@dataclass(frozen=True, eq=False)
class PopeStats:
    r"""Mergeable sufficient statistics of a POPE evaluation (see the module docstring).

    ``a + b`` merges two disjoint prompt shards evaluated with the same options;
    :meth:`estimate` gives the :class:`~pope.estimators.pope.PopeEstimate`.
    """

    lam: float
    relevance: str
    options: tuple[tuple[str, Any], ...]
    n_aspects: int
    n_prompts: int
    diversity_spec: DiversitySpec
    moments: PromptMoments
    weights: WeightMoments

    @property
    def n_units(self) -> int:
        """Prompts with at least one response (the independent units)."""
        return self.moments.n

    @property
    def log_scale(self) -> float:
        return self.moments.log_scale

    @property
    def n_div(self) -> int:
        """Prompts that enter the diversity."""
        if self.diversity_spec.kind == "power":
            return self.n_units
        return round(float(self.moments.mean[self.moments.index("in_div")]) * self.n_units)

    def __add__(self, other: PopeStats) -> PopeStats:
        if not isinstance(other, PopeStats):
            return NotImplemented
        for nm in ("lam", "relevance", "options", "n_aspects", "diversity_spec"):
            if getattr(self, nm) != getattr(other, nm):
                raise ValueError(
                    f"cannot merge POPE statistics with different {nm}: "
                    f"{getattr(self, nm)!r} != {getattr(other, nm)!r}"
                )
        return PopeStats(
            lam=self.lam,
            relevance=self.relevance,
            options=self.options,
            n_aspects=self.n_aspects,
            n_prompts=self.n_prompts + other.n_prompts,
            diversity_spec=self.diversity_spec,
            moments=self.moments + other.moments,
            weights=self.weights + other.weights,
        )

    # ------------------------------------------------------------------ pieces
    def scale(self) -> float:
        """:math:`s`: 1 for SNIPS relevance, :math:`e^m` for IPS relevance."""
        if self.relevance == "snips":
            return 1.0
        return _scaled(self.log_scale, 1.0, "pope relevance (ips)")

    def candidate_degrees(self) -> tuple[int, ...]:
        """Degrees the diversity is chosen among (classes present in the data only)."""
        spec = self.diversity_spec
        if spec.kind == "values":
            return (0,)
        mo = self.moments
        present = [d for d in range(1, spec.max_degree + 1) if mo.mean[mo.index(f"n{d}")] > 0]
        top = max(present) if present else 1
        cands = tuple(L for L in spec.degrees if L <= top)
        return cands or (min(top, min(spec.degrees)),)

    def relevance_parts(self) -> QuantityParts:
        v, g = relevance_value(self.moments.mean, self.moments.names, self.scale())
        return QuantityParts(float(v), g, self.moments.stderr(g), None)

    def diversity_parts(self, degree: int) -> QuantityParts:
        v, g, b = diversity_value(
            self.moments.mean, self.moments.names, self.diversity_spec, degree, self.log_scale
        )
        return QuantityParts(float(v), g, self.moments.stderr(g), None if math.isnan(b) else b)

    def choose_degree(self, alpha: float) -> int:
        """The candidate degree with the narrowest bias-aware diversity interval, every
        candidate at level :math:`\alpha/m` (so the reported interval stays valid)."""

        def se_bias(degree: int) -> tuple[float, float]:
            d = self.diversity_parts(degree)
            return d.stderr, d.bias or 0.0

        return narrowest_degree(self.candidate_degrees(), alpha, se_bias)

    def pair_ess_fraction(self) -> float:
        r"""Gini-Simpson pair ESS / n: :math:`(\sum_i\hat S_{2,i})^2/(n\sum_i\hat S_{2,i}^2)`."""
        mo = self.moments
        cols = [mo.index(f"S{d}.2") for d in range(2, self.diversity_spec.max_degree + 1)]
        if not cols or mo.n == 0:
            return math.nan
        mean = mo.mean[cols].sum()
        # classes are disjoint, so the square of the sum is the sum of the squares
        sq = sum(mo.m2[c, c] / mo.n + mo.mean[c] ** 2 for c in cols)
        return float(mean**2 / sq) if sq > 0 else math.nan

    # ------------------------------------------------------------------ estimates
    def estimate(self, alpha: float = 0.05, *, degree: int | None = None) -> Any:
        """The relevance, diversity and total estimates (no contributions, no bootstrap).

        ``degree`` fixes the polynomial degree (no choice, multiplicity 1); by default it is
        chosen among :meth:`candidate_degrees` with the choice accounted for.
        """
        from pope.estimators.pope import PopeEstimate

        a_ = check_alpha(alpha)
        nu, lam = self.n_units, self.lam
        if nu == 0:
            raise ValueError("no prompt has a logged response")
        mo = self.moments
        if self.relevance == "snips" and mo.mean[mo.index("b")] <= 0:
            raise ValueError(
                "every importance weight is zero (the target gives probability 0 to every "
                "logged response); the self-normalised relevance is undefined"
            )
        if self.diversity_spec.kind == "values" and self.n_div == 0:
            raise ValueError(
                "no prompt has a positive total weight; the self-normalised coverage and the "
                "diversity are undefined"
            )
        mult = 1 if degree is not None else len(self.candidate_degrees())
        deg = degree if degree is not None else self.choose_degree(a_)
        rel = self.relevance_parts()
        div = self.diversity_parts(deg)
        tot_grad = rel.grad + lam * div.grad
        tot_bias = None if div.bias is None else lam * div.bias
        extra: dict[str, Any] = {
            "n_prompts": self.n_prompts,
            "n_diversity_prompts": self.n_div,
            "n_aspects": self.n_aspects,
            "lam": lam,
            "diversity_estimator": dict(self.options).get("diversity_estimator"),
        }
        if self.diversity_spec.kind == "power":
            extra["diversity_degree"] = deg
            extra["diversity_degree_candidates"] = self.candidate_degrees()
            extra["diversity_bias_bound"] = div.bias
            k1 = mo.mean[mo.index("n1")]
            extra["single_response_prompt_fraction"] = float(k1)
            if self.diversity_spec.family == "gini_simpson":
                extra["pair_ess_fraction"] = self.pair_ess_fraction()
        diag = self.weights.diagnostics(n_units=nu, extra=extra)
        self._warn(extra)

        def mk(
            name: str,
            value: float,
            se: float,
            n: int,
            bias: float | None,
            m: int,
            rng: tuple[float, float],
        ) -> Estimate:
            return Estimate(
                value=value,
                stderr=se,
                n=n,
                diagnostics=diag,
                estimator=f"pope.{name}",
                alpha=a_,
                stats=self,
                bound_range=None,
                bound_note=_NO_BOUND,
                bias_bound=bias,
                multiplicity=m,
                parameter_range=rng,
            )

        rel_rng = (0.0, 1.0)
        diversity = mk("diversity", div.value, div.stderr, self.n_div, div.bias, mult, (0.0, 1.0))
        pf = extra.get("pair_ess_fraction")
        if pf is not None and np.isfinite(pf):
            diversity = dataclasses.replace(diversity, pair_ess=float(pf) * nu)
        return PopeEstimate(
            relevance=mk("relevance", rel.value, rel.stderr, nu, None, 1, rel_rng),
            diversity=diversity,
            total=mk(
                "total",
                rel.value + lam * div.value,
                mo.stderr(tot_grad),
                nu,
                tot_bias,
                mult,
                (0.0, 1.0 + lam),
            ),
            lam=lam,
            stats=self,
            degree=deg,
        )

    @staticmethod
    def _warn(extra: dict[str, Any]) -> None:
        k1 = extra.get("single_response_prompt_fraction", 0.0)
        if k1 and k1 > 0:
            warnings.warn(
                f"{100 * k1:.3g}% of the prompts have a single response, which identifies "
                "nothing about their coverage diversity: they enter D with the value 1/2 and "
                "the bias bound 1/2 (the interval says so)",
                InsufficientDataWarning,
                stacklevel=4,
            )
        pf = extra.get("pair_ess_fraction")
        if pf is not None and np.isfinite(pf) and pf < PAIR_ESS_WARN:
            warnings.warn(
                f"Gini-Simpson pair-ESS is {pf:.3g} of the prompts (< {PAIR_ESS_WARN}): the "
                "pair weights are heavy-tailed; the interval is widened to the Hoeffding floor "
                "at n = pair ESS where that is wider",
                InsufficientDataWarning,
                stacklevel=4,
            )
