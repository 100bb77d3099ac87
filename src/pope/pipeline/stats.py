r"""Mergeable statistics of an evaluation: :class:`EvalStats`, :func:`merge`, the estimates.

Every estimate of a run is backed by sufficient statistics that add over disjoint sets of
whole prompts (``stats_a + stats_b`` are the statistics of the union), so a log can be
evaluated in chunks (streamed) or in buckets (Ray/Spark) and merged; :meth:`EvalStats.finalize`
turns the merged statistics into an :class:`~pope.pipeline.result.EvalResult`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pope.io import LogFormatError, ValidationReport
from pope.pipeline.prepared import Prepared
from pope.pipeline.result import EvalResult
from pope.pipeline.spec import EvalSpec, pope_kwargs

__all__ = ["EvalStats", "estimates", "merge", "stats_of", "total_reward"]


def estimates(prep: Prepared, spec: EvalSpec) -> tuple[Any, dict[str, Any]]:
    """(POPE estimate, {baseline: Estimate}) of a prepared chunk."""
    import pope
    from pope import estimators as est

    fb = prep.feedback
    kwargs = pope_kwargs(spec)
    token = spec.weighting == "token_mean"
    res = pope.evaluate(
        fb,
        None if token else prep.log_target,
        token_log_target=prep.token_log_target if token else None,
        **kwargs,
    )
    base: dict[str, Any] = {}
    if spec.estimators:
        reward = total_reward(res, fb, prep, spec)
        ll = fb.log_logging
        lt = prep.log_target
        for name in spec.estimators:
            if name == "ips":
                base[name] = est.ips(reward=reward, log_target=lt, log_logging=ll)
            elif name == "snips":
                base[name] = est.snips(reward=reward, log_target=lt, log_logging=ll)
            elif name == "clipped_ips":
                base[name] = est.ips(
                    reward=reward, log_target=lt, log_logging=ll, clip=spec.clipped_ips_clip
                )
            elif name == "sub_gaussian_ips":
                base[name] = est.sub_gaussian_ips(
                    reward=reward, log_target=lt, log_logging=ll, lam=0.5
                )
    return res, base


def total_reward(res: Any, fb: Any, prep: Prepared, spec: EvalSpec) -> np.ndarray:
    """Per-response total reward :math:`r + \\lambda d` used by the baselines."""
    r = (
        res.reward
        if res.reward is not None
        else fb.rewards(pope_kwargs(spec)["reward_normalization"])
    )
    if spec.lam == 0 or res.diversity_reward is None:
        return np.asarray(r, dtype=np.float64)
    return np.asarray(r + spec.lam * res.diversity_reward, dtype=np.float64)


@dataclass
class EvalStats:
    """Mergeable statistics of an evaluation over a set of whole prompts.

    ``a + b`` merges disjoint sets of prompts; :meth:`finalize` gives the estimates.
    """

    pope: Any
    baselines: dict[str, Any]
    report: ValidationReport
    n_prompts: int = 0
    n_responses: int = 0

    def __add__(self, other: EvalStats) -> EvalStats:
        if not isinstance(other, EvalStats):
            return NotImplemented
        if self.pope is None:
            pope_s = other.pope
        elif other.pope is None:
            pope_s = self.pope
        else:
            pope_s = self.pope + other.pope
        keys = set(self.baselines) | set(other.baselines)
        base = {}
        for k in keys:
            a, b = self.baselines.get(k), other.baselines.get(k)
            base[k] = a if b is None else b if a is None else a + b
        return EvalStats(
            pope=pope_s,
            baselines=base,
            report=self.report + other.report,
            n_prompts=self.n_prompts + other.n_prompts,
            n_responses=self.n_responses + other.n_responses,
        )

    def finalize(self, spec: EvalSpec) -> EvalResult:
        """The estimates these statistics determine."""
        if self.pope is None:
            raise LogFormatError(
                f"no valid rows to evaluate ({self.report.summary()})", self.report
            )
        return EvalResult(
            pope=self.pope.estimate(spec.alpha),
            baselines={k: v.estimate(spec.alpha) for k, v in self.baselines.items()},
            report=self.report,
            n_prompts=self.n_prompts,
            n_responses=self.n_responses,
            spec=spec,
        )


def stats_of(prep: Prepared, spec: EvalSpec) -> EvalStats:
    """Statistics of one prepared set of whole prompts (empty when no row is valid)."""
    fb = prep.feedback
    if fb.n_responses == 0:
        return EvalStats(None, {}, prep.report)
    res, base = estimates(prep, spec)
    return EvalStats(
        pope=res.stats,
        baselines={k: v.stats for k, v in base.items()},
        report=prep.report,
        n_prompts=fb.n_prompts,
        n_responses=fb.n_responses,
    )


def merge(stats: Iterable[EvalStats]) -> EvalStats:
    """Add partition statistics (the reduce step); order does not matter."""
    total: EvalStats | None = None
    for s in stats:
        total = s if total is None else total + s
    if total is None:
        raise ValueError("merge needs at least one EvalStats")
    return total
