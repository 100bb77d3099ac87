r"""Readers for public human-feedback formats, each returning the log table of :mod:`pope.io`.

Every reader returns a ``pandas.DataFrame`` with one row per logged response in the schema of
``docs/data-format.md`` (``prompt_id``, ``prompt``, ``response``, ``signal`` and extra columns
that keep the source's ids and annotations). The frame is *not* validated here: pass it to
:func:`pope.io.load_logs` or to ``pope evaluate`` (which validate it row by row), so there is a
single validation layer. A value the reader cannot turn into a number (a rating ``"N/A"``)
becomes a NaN signal and is reported by that validation as a bad row, never dropped silently.
What a reader drops by design (unranked OpenAssistant replies, deleted messages, tied pairs)
is counted in ``frame.attrs["reader"]``.

Formats and their signal rules:

- **OpenAssistant message trees** (:func:`read_oasst`): each prompter turn with at least one
  assistant reply is a prompt; each assistant reply a response. ``signal="rank"``:
  :math:`s = 1 - \rho/(K-1)` with :math:`\rho \in \{0..K-1\}` the reply's position in the
  human ranking of its :math:`K` ranked siblings (0 = best; ties share the average position;
  :math:`s = 1` when :math:`K = 1`). ``signal="votes"``: the Laplace-smoothed approval
  :math:`s = (u + 1) / (u + d + 2)` of the ``+1`` (:math:`u`) and ``-1`` (:math:`d`) emoji
  counts.
- **Per-completion ratings** (:func:`read_ratings`, UltraFeedback style): a prompt and a list of
  completions with scores; the signal is the score as given.
- **Pairwise preferences** (:func:`read_pairwise`, SHP / Anthropic HH / TRL preference style):
  the signal of a response is its empirical win rate :math:`s_j = W_j / N_j` over the
  :math:`N_j` pairs of its prompt it appears in (:math:`W_j` of which it won). This is a
  count, not a Bradley–Terry fit: with an incomplete design it depends on the opponents.
- **TRL prompt/completion** (:func:`read_trl`): ``prompt`` and ``completion`` columns (text or
  conversational message lists) with a ``label`` (KTO, True/False -> 1/0) or a numeric signal
  column.

Prompt texts of multi-turn conversations are written as a transcript
``"User: ...\n\nAssistant: ...\n\nUser: ..."`` (roles capitalised, turns separated by a blank
line, ending with the last user turn); a single user turn is its text alone. Where the source
has no prompt id, ``prompt_id`` is the first 16 hex digits of the SHA-1 of the prompt text
(stable across runs and files).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pope.io import read_table
from pope.io.formats import FORMATS, Format, is_format
from pope.readers.oasst import read_oasst
from pope.readers.preferences import read_pairwise, read_ratings, read_trl

__all__ = [
    "LOG_FORMATS",
    "PUBLIC_FORMATS",
    "detect_public_format",
    "read_logs",
    "read_oasst",
    "read_pairwise",
    "read_ratings",
    "read_trl",
    "reader_summary",
    "resolve_logs",
]

#: Formats read by this package (``"auto"`` tells them apart by their columns).
PUBLIC_FORMATS = ("oasst", "ratings", "pairwise", "trl")

#: Every ``format=`` / ``--format`` value: the file formats of :mod:`pope.io`, the public ones,
#: and ``"auto"``.
LOG_FORMATS = (*FORMATS, *PUBLIC_FORMATS, "auto")


# ----------------------------------------------------------------------------- dispatch
_READERS: dict[str, Callable[..., Any]] = {
    "oasst": read_oasst,
    "ratings": read_ratings,
    "pairwise": read_pairwise,
    "trl": read_trl,
}


def detect_public_format(columns: Iterable[str]) -> str:
    """``"oasst"``, ``"ratings"``, ``"pairwise"``, ``"trl"`` or ``"log"`` from field names.

    Rules, in order: ``message_tree_id`` or ``message_id``+``parent_id``+``role``+``text``
    -> oasst; ``completions`` -> ratings; ``chosen``+``rejected`` or SHP's ``human_ref_A``+
    ``human_ref_B`` -> pairwise; ``prompt_id``+``signal`` -> log (the native schema);
    ``prompt``+``completion`` -> trl; anything else -> log (validation then names the missing
    columns).
    """
    c = set(columns)
    if "message_tree_id" in c or {"message_id", "parent_id", "role", "text"} <= c:
        return "oasst"
    if "completions" in c:
        return "ratings"
    if {"chosen", "rejected"} <= c or {"human_ref_A", "human_ref_B"} <= c:
        return "pairwise"
    if {"prompt_id", "signal"} <= c:
        return "log"
    if {"prompt", "completion"} <= c:
        return "trl"
    return "log"


def _peek_columns(path: Path, fmt: Format, split: str | None) -> list[str]:
    """Field names of a file without reading all of it."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        first = path if path.is_file() else min(path.rglob("*.parquet"))
        return list(pq.read_schema(first).names)
    if fmt == "jsonl":
        from pope.io import iter_jsonl_frames

        for frame in iter_jsonl_frames(path, 1):
            return list(frame.columns)
        return []
    if fmt == "hf":
        from pope.io import load_hf_dataset

        return list(load_hf_dataset(path, split).column_names)
    return list(read_table(path, format=fmt).columns)


def read_logs(
    source: Any, format: str = "auto", *, split: str | None = None, **options: Any
) -> Any:
    """Read any supported log into the log table (``pandas.DataFrame``, not validated).

    Parameters
    ----------
    source : path, pandas.DataFrame, pyarrow.Table, datasets.Dataset or list of dicts
    format : {"auto", "oasst", "ratings", "pairwise", "trl", "log", "parquet", "jsonl", "csv",
        "tsv", "hf"}
        A public format (its reader is called with ``options``), ``"log"``/a file format (the
        native schema, :func:`pope.io.read_table`), or ``"auto"``
        (:func:`detect_public_format` on the field names).
    """
    if is_format(format):  # one of FORMATS
        return read_table(source, format=format, split=split)
    if format == "auto":
        if isinstance(source, list):
            cols = list(source[0]) if source else []
        elif isinstance(source, (str, os.PathLike)):
            from pope.io import detect_format

            cols = _peek_columns(Path(source), detect_format(source), split)
        else:
            cols = list(read_table(source).columns)
        format = detect_public_format(cols)
    if format == "log":
        if options:
            raise TypeError(f"options {sorted(options)} only apply to the public formats")
        return read_table(source, split=split)
    if format not in _READERS:
        raise ValueError(
            f"format must be 'auto', 'log', one of {PUBLIC_FORMATS} or a file format "
            f"{FORMATS}, got {format!r}"
        )
    return _READERS[format](source, split=split, **options)


def resolve_logs(path: Any, format: str | None, split: str | None = None) -> tuple[Any, Any]:
    """``(source, file_format)`` for :func:`pope.pipeline.evaluate_logs` from CLI options.

    A native log keeps its path (so ``--chunk-rows`` streams it); a public format (or one
    that ``"auto"`` recognises) is read into the log table first. The table's
    ``attrs["reader"]`` says what the reader dropped.
    """
    if format is None or format in FORMATS:
        return path, format
    if format == "auto":
        from pope.io import detect_format

        p = Path(path)
        fmt = detect_format(p)
        if detect_public_format(_peek_columns(p, fmt, split)) == "log":
            return path, fmt
    return read_logs(path, format, split=split), None


def reader_summary(frame: Any) -> str | None:
    """One line on what a public-format reader read and left out (``frame.attrs["reader"]``)."""
    info = getattr(frame, "attrs", {}).get("reader")
    if not info:
        return None
    parts = [f"{k}={v}" for k, v in info.items() if k != "format"]
    return f"read as {info.get('format')}: {len(frame)} responses ({', '.join(parts)})"
