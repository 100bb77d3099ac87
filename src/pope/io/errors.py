"""The error of the log readers: :class:`LogFormatError` (a file or rows that cannot be used)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pope.io.report import ValidationReport

__all__ = ["LogFormatError"]


class LogFormatError(ValueError):
    """A log cannot be read or fails validation (bad file, missing columns, bad rows).

    Parameters
    ----------
    message : str
    report : ValidationReport, optional
        The row-level problems when the error comes from validation.
    """

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report
