"""The estimates of an evaluation run: :class:`EvalResult`, as a text table or JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pope.io import ValidationReport
from pope.pipeline.spec import EvalSpec

if TYPE_CHECKING:
    from pope.pipeline.prepared import Prepared

__all__ = ["EvalResult"]


@dataclass
class EvalResult:
    """Estimates of an evaluation run, with the data report.

    Attributes
    ----------
    pope : PopeEstimate
        ``.relevance``, ``.diversity``, ``.total`` estimates.
    baselines : dict[str, Estimate]
    report : ValidationReport
        Rows read and the bad rows (skipped).
    n_prompts, n_responses : int
        Evaluated (after skipping bad rows).
    spec : EvalSpec
    """

    pope: Any
    baselines: dict[str, Any]
    report: ValidationReport
    n_prompts: int
    n_responses: int
    spec: EvalSpec
    prepared: Prepared | None = None  # in memory only: the rows behind the estimates

    def rows(self) -> list[tuple[str, Any]]:
        """``(label, Estimate)`` rows of the results table."""
        out = [
            ("POPE relevance", self.pope.relevance),
            ("POPE diversity", self.pope.diversity),
            ("POPE total", self.pope.total),
        ]
        labels = {
            "ips": "IPS (total reward)",
            "snips": "SNIPS (total reward)",
            "clipped_ips": f"clipped IPS, M={self.spec.clipped_ips_clip:g} (total)",
            "sub_gaussian_ips": "sub-Gaussian IPS (total reward)",
        }
        for k in self.spec.estimators:
            if k in self.baselines:
                out.append((labels[k], self.baselines[k]))
        return [(k, v) for k, v in out if v is not None]

    def warnings(self, ess_fraction: float = 0.1) -> list[str]:
        """Warnings for the user: small effective sample sizes, skipped rows."""
        msgs = []
        seen = set()
        for label, e in self.rows():
            d = e.diagnostics
            n = d.n
            if n and math.isfinite(d.ess) and d.ess < ess_fraction * n:
                key = (round(d.ess, 6), n)
                if key in seen:
                    continue
                seen.add(key)
                msgs.append(
                    f"{label}: effective sample size {d.ess:.1f} is below "
                    f"{100 * ess_fraction:g}% of n={n}; the target policy is far from the "
                    "logging policy and the estimate is unreliable (consider clip=M)"
                )
        if self.report.n_bad:
            msgs.append(
                f"{self.report.n_bad} of {self.report.n_rows} rows were skipped as bad "
                "(see the data report)"
            )
        return msgs

    def table(self, method: str = "normal") -> str:
        """The estimates as an aligned text table (intervals by ``method``)."""
        a = self.spec.alpha
        head = (
            f"{'estimator':<34} {'value':>9} {'stderr':>9} "
            f"{f'{100 * (1 - a):g}% CI':>21} {'ESS':>9} {'max w':>9} {'clipped':>7}"
        )
        lines = [head, "-" * len(head)]
        for label, e in self.rows():
            lo, hi = e.ci(method=method)
            d = e.diagnostics
            lines.append(
                f"{label:<34} {e.value:>9.4f} {e.stderr:>9.4f} "
                f"{f'[{lo:.4f}, {hi:.4f}]':>21} {_fmt(d.ess):>9} {_fmt(d.max_weight):>9} "
                f"{_fmt(d.clipped_fraction, pct=True):>7}"
            )
        ex = self.pope.diversity.diagnostics.extra
        deg = ex.get("diversity_degree")
        lines.append(
            f"POPE diversity: {self.spec.diversity}, estimator {ex.get('diversity_estimator')}"
            + (f", degree {deg}" if deg else "")
            + ("; baselines estimate r + lambda d with the plug-in d" if self.baselines else "")
        )
        for label, e in self.rows():
            note = e.interval_note()
            if note:
                lines.append(f"  {label}: {note}")
        return "\n".join(lines)

    def to_dict(self, method: str = "normal", ess_fraction: float = 0.1) -> dict[str, Any]:
        """JSON-friendly results (estimates, diagnostics, data report, settings)."""

        def est(e: Any) -> dict[str, Any]:
            d = dict(e.to_dict())
            d["ci_lower"], d["ci_upper"] = e.ci(method=method)
            d["ci_method"] = method
            ex = e.diagnostics.extra
            for key in (
                "diversity_estimator",
                "diversity_degree",
                "pair_ess_fraction",
                "single_response_prompt_fraction",
            ):
                if key in ex:
                    d[key] = ex[key]
            return {k: _json_float(v) for k, v in d.items()}

        return {
            "pope": {
                "relevance": est(self.pope.relevance),
                "diversity": est(self.pope.diversity),
                "total": est(self.pope.total),
            },
            "baselines": {k: est(v) for k, v in self.baselines.items()},
            "n_prompts": self.n_prompts,
            "n_responses": self.n_responses,
            "data": self.report.to_dict(),
            "warnings": self.warnings(ess_fraction),
            "settings": self.spec.to_dict(),
        }


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if pct:
        return f"{100 * x:.1f}%"
    return f"{x:.4g}"


def _json_float(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v
