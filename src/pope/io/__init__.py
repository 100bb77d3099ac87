"""Read logged responses from files and frames, check them row by row, and build ``LoggedFeedback``.

The schema (one row per logged response; see ``docs/data-format.md``):

- ``prompt_id`` (int or str, required): groups the responses of one prompt;
- ``prompt``, ``response`` (str): the texts (required to score with a model);
- ``signal`` (float >= 0, required): upvotes, helpful votes, a relevance grade;
- ``aspect`` (int or str) or ``aspect_probs`` (list of C floats on the simplex), optional;
- ``log_logging`` (float <= 0): log pi0(y|x), optional when a logging model scores the log;
- ``position`` (int >= 0): list position, optional;
- ``token_log_logging`` (list of floats <= 0): per-token logging log-probs, optional;
- ``embedding`` (list of floats): a response embedding for k-means aspects, optional;
- ``log_target`` (float <= 0): precomputed log pi_theta(y|x), optional.

Sources: Parquet files or directories (pyarrow), JSON Lines (``.jsonl``, ``.ndjson``,
optionally ``.gz``), CSV/TSV (list columns as JSON text), a local Hugging Face ``datasets``
directory written by ``save_to_disk`` (needs the optional ``datasets`` package), a
``pandas.DataFrame`` or a ``pyarrow.Table``.

Rows are numbered from 0 in the order they are read (for CSV, row 0 is the first line after
the header). A row with a missing required field, a NaN or negative signal, a ``log_logging``
above 0, or an unknown aspect is *bad*: :func:`validate_logs` reports it with its row number and
the reason; ``on_error="fail"`` raises :class:`LogFormatError`, ``on_error="skip"`` drops the bad
rows and keeps the report, so that nothing is dropped silently.

Modules: :mod:`pope.io.formats` (file formats, the NA rule, whole-file reading and writing),
:mod:`pope.io.chunks` (chunked reading for streaming), :mod:`pope.io.jsonl` (JSON Lines:
the Arrow reader and the Python fallback), :mod:`pope.io.schema` (column names),
:mod:`pope.io.columns` (typed column parsers), :mod:`pope.io.validation` (row checks,
:func:`load_logs`), :mod:`pope.io.report`, :mod:`pope.io.logdata`, :mod:`pope.io.errors`,
:mod:`pope.io.memory` (the Arrow pool between reads).
The readers of public formats live in :mod:`pope.readers` and are re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pope.io.chunks import iter_raw_chunks
from pope.io.errors import LogFormatError
from pope.io.formats import (
    CSV_NA,
    FORMATS,
    Format,
    detect_format,
    is_missing,
    iter_jsonl_frames,
    load_hf_dataset,
    read_table,
    write_logs,
)
from pope.io.logdata import LogData
from pope.io.report import ValidationReport
from pope.io.schema import LIST_COLUMNS, LogColumns
from pope.io.validation import OnError, drop_bad_rows, load_logs, validate_logs

if TYPE_CHECKING:  # defined in pope.readers, imported on first use (see __getattr__)
    from pope.readers import read_logs, read_oasst, read_pairwise, read_ratings, read_trl

__all__ = [
    "CSV_NA",
    "FORMATS",
    "LIST_COLUMNS",
    "Format",
    "LogColumns",
    "LogData",
    "LogFormatError",
    "OnError",
    "ValidationReport",
    "detect_format",
    "drop_bad_rows",
    "is_missing",
    "iter_jsonl_frames",
    "iter_raw_chunks",
    "load_hf_dataset",
    "load_logs",
    "read_logs",
    "read_oasst",
    "read_pairwise",
    "read_ratings",
    "read_table",
    "read_trl",
    "validate_logs",
    "write_logs",
]

# The private names of the single-module ``pope.io`` that other modules used, kept as aliases.
_CSV_NA = CSV_NA
_FORMATS = FORMATS
_isna = is_missing

#: Readers of public formats, defined in :mod:`pope.readers` (imported on first use, because
#: that package builds on this one).
_PUBLIC_READERS = ("read_logs", "read_oasst", "read_pairwise", "read_ratings", "read_trl")


def __getattr__(name: str) -> Any:
    if name in _PUBLIC_READERS:
        from pope import readers

        return getattr(readers, name)
    raise AttributeError(f"module 'pope.io' has no attribute {name!r}")
