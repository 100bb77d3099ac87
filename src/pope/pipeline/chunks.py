"""Chunks of whole prompts from chunks of rows: :func:`iter_prompt_chunks`.

A streamed log is read in chunks of rows (:func:`pope.io.iter_raw_chunks`); the rows of the
prompt at the end of a chunk are carried over to the next one, so that no prompt is split.
Prompt ids follow the one id rule of the log reader (:func:`pope.io.columns.prompt_id_column`:
3 and 3.0 are one id, '3' is another, and a log must not mix int and str ids).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from pope._validation import normalize_id
from pope.io import LogFormatError, is_missing
from pope.io.columns import prompt_id_column

__all__ = ["iter_prompt_chunks", "prompt_key"]


def prompt_key(v: Any, row: int | None = None) -> Any:
    """The key of one raw prompt id under the one id rule (:func:`pope._validation.normalize_id`).

    Missing values are returned as they are (validation reports them); a dict / list / bool
    id is a :class:`LogFormatError` naming ``row``.
    """
    if is_missing(v):
        return v
    try:
        return normalize_id(v, "prompt_id", row)
    except (TypeError, ValueError) as e:
        raise LogFormatError(str(e)) from None


def _tail_start(keys: np.ndarray, missing: np.ndarray) -> int:
    """Position where the run of rows sharing the last row's prompt id (or its missing id)
    begins."""
    same = missing if missing[-1] else ~missing & (keys == keys[-1])
    other = np.flatnonzero(~same)
    return int(other[-1]) + 1 if other.size else 0


class _Emitted:
    """The prompts already emitted, to reject a prompt whose rows are not contiguous.

    Holds one key per prompt (exact: a streamed log of ``G`` prompts keeps ``G`` keys).
    """

    def __init__(self, col: str) -> None:
        self.col = col
        self.done: set[Any] = set()
        self.kind: tuple[str, int] | None = None  # ("int" | "str", first row with it)

    def add(self, keys: np.ndarray, missing: np.ndarray, start: int, n_rows: int) -> None:
        present = keys[~missing]
        if present.size == 0:
            return
        kind = "str" if present.dtype == object else "int"
        first = start + int(np.flatnonzero(~missing)[0])
        if self.kind is None:
            self.kind = (kind, first)
        elif self.kind[0] != kind:
            (k0, r0), (k1, r1) = sorted([self.kind, (kind, first)])
            raise LogFormatError(
                f"prompt_id ({self.col!r}) mixes int and str values (the first row {r0} is "
                f"{k0}, row {r1} is {k1}); use one type for all ids"
            )
        import pandas as pd

        ids = pd.unique(present).tolist()
        again = self.done.intersection(ids)
        if again:
            pid = sorted(map(str, again))[0]
            raise LogFormatError(
                f"prompt {pid!r} appears again in rows {start}..{start + n_rows - 1} after "
                "its earlier rows were processed: streaming needs the rows of each prompt to "
                "be contiguous (sort the log by prompt_id), or evaluate in memory"
            )
        self.done.update(ids)


def iter_prompt_chunks(
    chunks: Iterable[Any], prompt_id: str = "prompt_id"
) -> Iterator[tuple[int, Any]]:
    """Re-cut raw chunks so that no prompt is split: ``(first_row_number, frame)`` pairs.

    The rows of the prompt at the end of each chunk are carried over to the next chunk (a
    prompt larger than a chunk is carried until it ends). Rows with a missing ``prompt_id``
    are passed through (validation reports them).

    Raises
    ------
    LogFormatError
        A prompt reappears after its rows were emitted (rows of a prompt are not contiguous),
        an id breaks the id rule (naming its row), or ``prompt_id`` is not a column.
    """
    import pandas as pd

    emitted = _Emitted(prompt_id)
    carry: Any = None
    keys = missing = np.zeros(0)
    offset = 0
    for raw in chunks:
        if prompt_id not in raw.columns:
            raise LogFormatError(
                f"required column {prompt_id!r} not found; the log has columns "
                f"{sorted(map(str, raw.columns))}"
            )
        frame = raw if carry is None else pd.concat([carry, raw], ignore_index=True)
        if len(frame) == 0:
            continue
        rows = np.arange(offset, offset + len(frame), dtype=np.int64)
        keys, missing = prompt_id_column(frame[prompt_id], rows, prompt_id)
        j = _tail_start(keys, missing)
        if j == 0:
            carry = frame
            continue
        emitted.add(keys[:j], missing[:j], offset, j)
        yield offset, frame.iloc[:j].reset_index(drop=True)
        offset += j
        carry, keys, missing = frame.iloc[j:], keys[j:], missing[j:]
    if carry is not None and len(carry):
        emitted.add(keys, missing, offset, len(carry))
        yield offset, carry.reset_index(drop=True)
