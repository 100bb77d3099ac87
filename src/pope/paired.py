"""Several target policies on one log: the logging side scored once, paired differences.

``pope evaluate --policy A --policy B ...`` runs :func:`evaluate_policies`: the log is read,
validated, its aspects assigned and its logging log-probabilities scored (or read) **once**;
each policy is then scored on the same rows and evaluated, and every policy after the first is
compared with the first by :func:`pope.compare` (paired differences with per-prompt influence
standard errors, one polynomial degree for both, bias bounds added). In memory only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pope.io import LogFormatError, read_table
from pope.pipeline import EvalResult, EvalSpec, prepare
from pope.pipeline.models import clear_model_cache, score_with_model
from pope.pipeline.spec import pope_kwargs
from pope.pipeline.stats import estimates

__all__ = ["PairedResult", "evaluate_policies"]


@dataclass
class PairedResult:
    """Per-policy :class:`~pope.pipeline.EvalResult` and the comparisons with the first."""

    policies: list[str]
    results: list[EvalResult]
    comparisons: list[Any]

    def table(self, method: str = "normal") -> str:
        """One results table per policy, then the paired-difference table."""
        out = []
        for name, res in zip(self.policies, self.results, strict=True):
            out += [f"policy: {name}", res.table(method=method), ""]
        base = self.policies[0]
        for name, cmp in zip(self.policies[1:], self.comparisons, strict=True):
            out += [
                f"paired difference: {name} - {base} (same prompts, influence stderr; "
                f"both diversities at degree {cmp.a.degree or '-'})",
                cmp.summary(),
                "",
            ]
        return "\n".join(out).rstrip()

    def to_dict(self, method: str = "normal", ess_fraction: float = 0.1) -> dict[str, Any]:
        """JSON-friendly: ``policies`` (policy -> ``EvalResult.to_dict``, the layout
        ``pope report`` reads) and ``paired`` (each later policy minus the first)."""

        def clean(d: dict[str, Any]) -> dict[str, Any]:
            return {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in d.items()
            }

        return {
            "policies": {
                p: r.to_dict(method=method, ess_fraction=ess_fraction)
                for p, r in zip(self.policies, self.results, strict=True)
            },
            "paired": [
                {"a": p, "b": self.policies[0], **{k: clean(v) for k, v in c.to_dict().items()}}
                for p, c in zip(self.policies[1:], self.comparisons, strict=True)
            ],
        }

    def warnings(self, ess_fraction: float = 0.1) -> list[str]:
        """The warnings of every policy's evaluation, prefixed with the policy."""
        return [
            f"{p}: {w}"
            for p, r in zip(self.policies, self.results, strict=True)
            for w in r.warnings(ess_fraction)
        ]


def evaluate_policies(
    source: Any,
    spec: EvalSpec,
    policies: list[str],
    *,
    format: Any = None,
    split: str | None = None,
) -> PairedResult:
    """Evaluate every policy directory in ``policies`` on one log and compare them (paired).

    Parameters
    ----------
    source : path, DataFrame, Table or Dataset
        The log (as :func:`pope.pipeline.evaluate_logs`).
    spec : EvalSpec
        Options; ``spec.policy`` is ignored (``policies`` give the targets).
    policies : list of str
        At least two local model directories.
    """
    import pope

    if len(policies) < 2:
        raise ValueError("evaluate_policies needs at least two policies")
    if spec.weighting != "sequence":
        raise ValueError("several policies are compared with weighting='sequence' only")
    if spec.kmeans and spec.centers is None:
        raise ValueError(
            "several policies need fixed aspects (labels, or k-means centres from "
            "a saved aspect model: --aspect-model), so that every policy sees the "
            "same clustering"
        )
    cols = spec.columns
    frame = read_table(
        source,
        format=format,
        split=split,
        text_columns=(cols.prompt_id, cols.prompt, cols.response),
    )
    first = replace(spec, policy=policies[0])
    try:  # the models are dropped from the cache once every policy has scored the log
        prep = prepare(frame, first, n_raw_rows=len(frame))
        if prep.feedback.n_responses == 0:
            raise LogFormatError(
                f"no valid rows to evaluate ({prep.report.summary()})", prep.report
            )
        order = prep.feedback.row_index
        targets = [prep.log_target]
        for i, path in enumerate(policies[1:], start=1):
            seq, _ = score_with_model(path, prep.data, spec, False, f"target {i + 1}")
            targets.append(np.asarray(seq, dtype=np.float64)[order])
    finally:
        clear_model_cache()
    results = []
    for path, lt in zip(policies, targets, strict=True):
        p_i = replace(prep, log_target=lt)
        res, base = estimates(p_i, replace(spec, policy=path))
        results.append(
            EvalResult(
                pope=res,
                baselines=base,
                report=prep.report,
                n_prompts=prep.feedback.n_prompts,
                n_responses=prep.feedback.n_responses,
                spec=replace(spec, policy=path),
            )
        )
    kw = pope_kwargs(spec)
    alpha = kw.pop("alpha")
    kw.pop("weighting")
    comparisons = [
        pope.compare(prep.feedback, lt, targets[0], alpha=alpha, **kw) for lt in targets[1:]
    ]
    return PairedResult(policies=list(policies), results=results, comparisons=comparisons)
