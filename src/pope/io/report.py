"""What validation found: :class:`ValidationReport` (reason -> bad row numbers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ValidationReport"]


@dataclass
class ValidationReport:
    """Row-level problems found in a log.

    Attributes
    ----------
    n_rows : int
        Rows read.
    issues : dict[str, numpy.ndarray]
        ``reason -> sorted row numbers`` (0-based, in reading order).
    row_offset : int
        Added to the row numbers when printing (streaming chunks).
    """

    n_rows: int
    issues: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, reason: str, rows: np.ndarray) -> None:
        """Record ``reason`` for ``rows`` (ignored when empty)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        if reason in self.issues:
            rows = np.union1d(self.issues[reason], rows)
        self.issues[reason] = np.unique(rows)

    @property
    def bad_rows(self) -> np.ndarray:
        """Sorted row numbers with at least one problem."""
        if not self.issues:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(list(self.issues.values())))

    @property
    def n_bad(self) -> int:
        """Number of bad rows."""
        return int(self.bad_rows.size)

    @property
    def ok(self) -> bool:
        """Whether no row has a problem."""
        return not self.issues

    def shifted(self, offset: int) -> ValidationReport:
        """A copy with every row number increased by ``offset``."""
        return ValidationReport(self.n_rows, {k: v + offset for k, v in self.issues.items()})

    def __add__(self, other: ValidationReport) -> ValidationReport:
        """Merge two reports over disjoint row ranges (row numbers already global)."""
        out = ValidationReport(self.n_rows + other.n_rows, dict(self.issues))
        for k, v in other.issues.items():
            out.add(k, v)
        return out

    def summary(self, max_rows: int = 10) -> str:
        """Human-readable lines: one per reason, with its count and first row numbers."""
        if not self.issues:
            return f"{self.n_rows} rows read, no bad rows"
        lines = [f"{self.n_rows} rows read, {self.n_bad} bad:"]
        for reason, rows in sorted(self.issues.items(), key=lambda kv: int(kv[1][0])):
            shown = ", ".join(str(int(r)) for r in rows[:max_rows])
            more = f", ... ({rows.size - max_rows} more)" if rows.size > max_rows else ""
            lines.append(f"  {reason}: {rows.size} row(s): {shown}{more}")
        return "\n".join(lines)

    def to_dict(self, max_rows: int = 100) -> dict[str, Any]:
        """JSON-friendly form (row lists truncated to ``max_rows`` each)."""
        return {
            "n_rows": self.n_rows,
            "n_bad": self.n_bad,
            "issues": {
                k: {"count": int(v.size), "rows": [int(r) for r in v[:max_rows]]}
                for k, v in self.issues.items()
            },
        }
