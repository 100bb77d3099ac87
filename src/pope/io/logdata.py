"""The valid rows of a log as typed arrays: :class:`LogData`, grouped by prompt on demand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pope.data import LoggedFeedback
from pope.io.errors import LogFormatError
from pope.io.report import ValidationReport

__all__ = ["LogData"]


@dataclass
class LogData:
    """The valid rows of a log, as typed arrays in their original order.

    Attributes
    ----------
    rows : (N,) int64
        Row number of each kept row in the source (0-based, plus any streaming offset).
    prompt_id : (N,) array
    prompt, response : list[str] or None
    signal : (N,) float64
    log_logging : (N,) float64 or None
    aspect : (N,) int64 or None
        Codes ``0..C-1``; ``aspect_names[c]`` is the original label of code ``c``.
    aspect_probs : (N, C) float64 or None
    aspect_names : list or None
    n_aspects : int or None
    position : (N,) int64 or None
    token_log_logging : list of (T_j,) float64 arrays, or None
    embedding : (N, D) float64 or None
    log_target : (N,) float64 or None
    report : ValidationReport
        What was found when reading (including the rows that were skipped).
    """

    rows: np.ndarray
    prompt_id: np.ndarray
    signal: np.ndarray
    report: ValidationReport
    prompt: list[str] | None = None
    response: list[str] | None = None
    log_logging: np.ndarray | None = None
    aspect: np.ndarray | None = None
    aspect_probs: np.ndarray | None = None
    aspect_names: list[Any] | None = None
    n_aspects: int | None = None
    position: np.ndarray | None = None
    token_log_logging: list[np.ndarray] | None = None
    embedding: np.ndarray | None = None
    log_target: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.signal.shape[0])

    def select(self, index: Any) -> LogData:
        """The rows at ``index`` (integer positions or a boolean mask), report unchanged."""
        idx = np.asarray(index)
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)

        def arr(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        def lst(a: list[Any] | None) -> list[Any] | None:
            return None if a is None else [a[i] for i in idx]

        return replace(
            self,
            rows=self.rows[idx],
            prompt_id=self.prompt_id[idx],
            signal=self.signal[idx],
            prompt=lst(self.prompt),
            response=lst(self.response),
            log_logging=arr(self.log_logging),
            aspect=arr(self.aspect),
            aspect_probs=arr(self.aspect_probs),
            position=arr(self.position),
            token_log_logging=lst(self.token_log_logging),
            embedding=arr(self.embedding),
            log_target=arr(self.log_target),
        )

    def to_feedback(
        self,
        *,
        log_logging: np.ndarray | None = None,
        aspect: np.ndarray | None = None,
        aspect_probs: np.ndarray | None = None,
        n_aspects: int | None = None,
        token_log_logging: Sequence[np.ndarray] | None = None,
        use_token_log_logging: bool = True,
    ) -> LoggedFeedback:
        """Group the rows by prompt into a :class:`~pope.data.LoggedFeedback`.

        Arguments override the stored fields (all aligned with the rows of this ``LogData``).
        ``fb.row_index`` maps each stored response to its position in this ``LogData``: align a
        per-row array ``a`` with the feedback as ``a[fb.row_index]``.

        Raises
        ------
        LogFormatError
            No logging log-probabilities are available.
        """
        ll = self.log_logging if log_logging is None else np.asarray(log_logging, np.float64)
        tok = self.token_log_logging if token_log_logging is None else list(token_log_logging)
        if not use_token_log_logging:
            tok = None
        if ll is None and tok is not None:
            ll = np.array([float(np.sum(t)) for t in tok])
        if ll is None:
            raise LogFormatError(
                "no logging log-probabilities: add a 'log_logging' (or 'token_log_logging') "
                "column or score the responses with the logging model"
            )
        probs = self.aspect_probs if aspect_probs is None else aspect_probs
        labels = self.aspect if aspect is None else aspect
        if aspect_probs is not None:
            labels = None
        elif aspect is not None:
            probs = None
        c = n_aspects if n_aspects is not None else self.n_aspects
        return LoggedFeedback.from_arrays(
            prompt_id=self.prompt_id,
            signal=self.signal,
            log_logging=ll,
            aspect=labels if probs is None else None,
            aspect_probs=probs,
            n_aspects=c if (labels is not None or probs is not None) else None,
            position=self.position,
            token_log_logging=tok,
        )
