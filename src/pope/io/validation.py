"""Row-by-row validation of a log frame (:func:`validate_logs`) and reading + validating in
one call (:func:`load_logs`).

A row with a missing required field, a NaN or negative signal, a ``log_logging`` above 0, or an
unknown aspect is *bad*: :func:`validate_logs` reports it with its row number and the reason;
``on_error="fail"`` raises :class:`LogFormatError`, ``on_error="skip"`` drops the bad rows and
keeps the report, so that nothing is dropped silently. Each ``_check_*`` function below reads
one schema field, adds its problems to the report and returns the typed values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeGuard, cast

import numpy as np

from pope.io.columns import (
    encode_aspects,
    list_column,
    numeric_column,
    prompt_id_column,
    text_column,
)
from pope.io.errors import LogFormatError
from pope.io.formats import Format, read_table
from pope.io.logdata import LogData
from pope.io.report import ValidationReport
from pope.io.schema import LogColumns

__all__ = ["OnError", "drop_bad_rows", "load_logs", "validate_logs"]

OnError = Literal["fail", "skip"]


def validate_logs(
    frame: Any,
    *,
    columns: LogColumns | None = None,
    require_text: bool = True,
    require_log_logging: bool = True,
    aspect_names: Sequence[Any] | None = None,
    n_aspects: int | None = None,
    use_aspects: bool = True,
    embedding_dim: int | None = None,
    row_offset: int = 0,
) -> LogData:
    """Check every row of a log frame and convert the columns to typed arrays.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per logged response.
    columns : LogColumns, optional
        Column names (defaults: the schema field names).
    require_text : bool
        Whether ``prompt`` and ``response`` are required (to score with a model).
    require_log_logging : bool
        Whether ``log_logging`` (or ``token_log_logging``) is required; set ``False`` when the
        logging log-probs come from a logging model.
    aspect_names : sequence, optional
        The known aspect labels (code ``c`` is ``aspect_names[c]``); other labels are unknown.
    n_aspects : int, optional
        ``C``; integer labels outside ``[0, C)`` are unknown.
    use_aspects : bool
        Read the ``aspect``/``aspect_probs`` columns (``False`` when aspects come from
        embeddings).
    embedding_dim : int, optional
        The expected length of ``embedding`` rows (checked when given).
    row_offset : int
        Number of the first row (for chunks of a larger log).

    Returns
    -------
    LogData
        *All* rows, typed, with ``report`` listing the bad ones; use :func:`load_logs` (or
        ``data.select(keep)``) to drop them.

    Raises
    ------
    LogFormatError
        A required column is missing, or a column has the wrong overall type.
    """
    cols = columns or LogColumns()
    present = set(frame.columns)
    n = len(frame)
    rows = np.arange(row_offset, row_offset + n, dtype=np.int64)
    report = ValidationReport(n)

    def has(name: str | None) -> TypeGuard[str]:
        return name is not None and name in present

    _check_required_columns(present, has, cols, require_text, require_log_logging)
    prompt_id, pid_missing = _check_prompt_ids(frame[cols.prompt_id], rows, report, cols.prompt_id)
    sig = _check_signal(frame[cols.signal], rows, report)
    prompt = response = None
    if has(cols.prompt):
        prompt = _check_prompts(
            frame[cols.prompt], prompt_id, pid_missing, rows, report, require_text
        )
    if has(cols.response):
        response = text_column(frame[cols.response])
        if require_text:
            report.add("missing response", rows[np.array([r is None for r in response], bool)])
    log_logging = token_log_logging = None
    if has(cols.log_logging):
        required = require_log_logging and not has(cols.token_log_logging)
        log_logging = _check_log_logging(frame[cols.log_logging], rows, report, required)
    if has(cols.token_log_logging):
        log_logging, token_log_logging = _check_token_log_logging(
            frame[cols.token_log_logging], log_logging, rows, report, require_log_logging
        )
    aspect = aspect_probs = names = None
    c = n_aspects
    if use_aspects and has(cols.aspect_probs):
        aspect_probs, c = _check_aspect_probs(frame[cols.aspect_probs], rows, report, n_aspects)
    elif use_aspects and has(cols.aspect):
        aspect, names, c = encode_aspects(
            frame[cols.aspect], report, rows, aspect_names, n_aspects, cols.aspect
        )
    elif use_aspects and aspect_names is not None:
        raise LogFormatError(
            f"aspect names were given but the log has no aspect column {cols.aspect!r}"
        )
    position = embedding = log_target = None
    if has(cols.position):
        position = _check_position(frame[cols.position], rows, report)
    if has(cols.embedding):
        embedding = _check_embedding(frame[cols.embedding], rows, report, embedding_dim)
    if has(cols.log_target):
        lt, miss, notnum = numeric_column(frame[cols.log_target])
        report.add("log_target is missing, not a number or > 0", rows[miss | notnum | (lt > 0)])
        log_target = lt

    return LogData(
        rows=rows,
        prompt_id=prompt_id,
        signal=np.where(np.isfinite(sig), sig, 0.0),
        report=report,
        # None only on rows without the text: reported bad under require_text (and dropped by
        # load_logs); with require_text=False the texts are not used
        prompt=cast("list[str] | None", prompt),
        response=cast("list[str] | None", response),
        log_logging=log_logging,
        aspect=aspect,
        aspect_probs=aspect_probs,
        aspect_names=names,
        n_aspects=c if (aspect is not None or aspect_probs is not None) else n_aspects,
        position=position,
        token_log_logging=token_log_logging,
        embedding=embedding,
        log_target=log_target,
    )


def _check_required_columns(
    present: set[Any],
    has: Callable[[str | None], bool],
    cols: LogColumns,
    require_text: bool,
    require_log_logging: bool,
) -> None:
    """Raise :class:`LogFormatError` naming the required columns the frame lacks."""
    required = [("prompt_id", cols.prompt_id), ("signal", cols.signal)]
    if require_text:
        required += [("prompt", cols.prompt), ("response", cols.response)]
    missing_cols = [(f, c) for f, c in required if c not in present]
    if require_log_logging and not (has(cols.log_logging) or has(cols.token_log_logging)):
        missing_cols.append(("log_logging", cols.log_logging or "log_logging"))
    if missing_cols:
        what = ", ".join(f"{c!r}" if f == c else f"{c!r} (for {f})" for f, c in missing_cols)
        hint = ""
        if any(f == "log_logging" for f, _ in missing_cols):
            hint = "; without logged log-probs, give a logging model (--logging-model)"
        raise LogFormatError(
            f"required column(s) {what} not found; the log has columns {sorted(map(str, present))}"
            f" (map names with --column FIELD=NAME){hint}"
        )


def _check_prompt_ids(
    s: Any, rows: np.ndarray, report: ValidationReport, col: str
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt ids, missing mask); a missing id is stored as -1 (int ids) or "" (str ids)."""
    prompt_id, pid_missing = prompt_id_column(s, rows, col)
    report.add("missing prompt_id", rows[pid_missing])
    return prompt_id, pid_missing


def _check_signal(s: Any, rows: np.ndarray, report: ValidationReport) -> np.ndarray:
    """The signal values (NaN where missing or not a number); bad ones are reported."""
    sig, miss, notnum = numeric_column(s)
    report.add("missing or NaN signal", rows[miss | (np.isnan(sig) & ~notnum)])
    report.add("signal is not a number", rows[notnum])
    report.add("signal is infinite", rows[np.isinf(sig)])
    report.add("negative signal", rows[sig < 0])
    return sig


def _check_prompts(
    s: Any,
    prompt_id: np.ndarray,
    pid_missing: np.ndarray,
    rows: np.ndarray,
    report: ValidationReport,
    require_text: bool,
) -> list[str | None]:
    """The prompt texts; every row of a prompt_id must carry the same text as its first row."""
    prompt = text_column(s)
    n = len(prompt)
    if require_text:
        report.add("missing prompt", rows[np.array([p is None for p in prompt], bool)])
    if n:
        first: dict[Any, str | None] = {}
        differs = np.zeros(n, dtype=bool)
        for i in range(n):
            if pid_missing[i] or prompt[i] is None:
                continue
            key = prompt_id[i]
            if key not in first:
                first[key] = prompt[i]
            elif first[key] != prompt[i]:
                differs[i] = True
        report.add("prompt text differs from the first row of its prompt_id", rows[differs])
    return prompt


def _check_log_logging(
    s: Any, rows: np.ndarray, report: ValidationReport, required: bool
) -> np.ndarray:
    """log pi0(y|x) per row (NaN where missing); must be <= 0 and not -inf."""
    ll, miss, notnum = numeric_column(s)
    if required:
        report.add("missing or NaN log_logging", rows[miss | (np.isnan(ll) & ~notnum)])
    report.add("log_logging is not a number", rows[notnum])
    report.add("log_logging > 0 (a probability above 1)", rows[ll > 0])
    report.add("log_logging is -inf (probability 0 for a logged response)", rows[np.isneginf(ll)])
    return ll


def _check_token_log_logging(
    s: Any,
    log_logging: np.ndarray | None,
    rows: np.ndarray,
    report: ValidationReport,
    require_log_logging: bool,
) -> tuple[np.ndarray | None, list[np.ndarray] | None]:
    """(log_logging, per-token log-probs): token sums fill a missing or NaN ``log_logging``.

    ``log_logging`` (the sequence column, or None) is not modified.
    """
    parsed, invalid = list_column(s)
    report.add("token_log_logging is not a list of numbers", rows[invalid])
    none = np.array([p is None for p in parsed], bool) & ~invalid
    bad_vals = np.array(
        [p is not None and (not np.isfinite(p).all() or (p > 0).any()) for p in parsed], bool
    )
    report.add("token_log_logging has values > 0, NaN or inf", rows[bad_vals])
    if log_logging is None:
        if require_log_logging:
            report.add("missing token_log_logging", rows[none])
    elif none.any() and not none.all():
        report.add("missing token_log_logging", rows[none])
    if none.all():
        return log_logging, None
    token_log_logging = [np.zeros(0) if p is None else p for p in parsed]
    if log_logging is None:
        log_logging = np.array([float(np.sum(t)) for t in token_log_logging])
    else:
        fill = np.isnan(log_logging) & ~none
        log_logging = log_logging.copy()
        log_logging[fill] = [float(np.sum(token_log_logging[i])) for i in np.flatnonzero(fill)]
        if require_log_logging:
            report.add("missing or NaN log_logging", rows[np.isnan(log_logging)])
    return log_logging, token_log_logging


def _check_aspect_probs(
    s: Any, rows: np.ndarray, report: ValidationReport, n_aspects: int | None
) -> tuple[np.ndarray | None, int | None]:
    """(N, C) aspect probabilities (uniform rows where bad) and ``C``; (None, n_aspects) if empty.

    ``C`` is ``n_aspects`` when given, else the longest row.
    """
    parsed, invalid = list_column(s)
    report.add("aspect_probs is not a list of numbers", rows[invalid])
    none = np.array([p is None for p in parsed], bool) & ~invalid
    lengths = {p.shape[0] for p in parsed if p is not None}
    if none.all():
        return None, n_aspects
    c = max(lengths) if n_aspects is None else n_aspects
    bad_len = np.array([p is not None and p.shape[0] != c for p in parsed], bool)
    report.add(f"aspect_probs does not have {c} entries", rows[bad_len])
    report.add("missing aspect_probs", rows[none])
    q = np.full((len(parsed), c), 1.0 / c)
    for i, p in enumerate(parsed):
        if p is not None and p.shape[0] == c:
            q[i] = p
    bad = ~(np.isfinite(q).all(axis=1) & (q >= 0).all(axis=1)) | (np.abs(q.sum(axis=1) - 1) > 1e-6)
    report.add(
        "aspect_probs is not a probability row (>= 0, sums to 1)",
        rows[bad & ~bad_len & ~invalid & ~none],
    )
    return q, c


def _check_position(s: Any, rows: np.ndarray, report: ValidationReport) -> np.ndarray | None:
    """List positions as int64 (0 where missing), or None when the column is all missing."""
    pos, miss, notnum = numeric_column(s)
    bad = ~miss & (notnum | (pos < 0) | (pos != np.round(pos)))
    report.add("position is not a non-negative integer", rows[bad])
    if miss.all():
        return None
    report.add("missing position", rows[miss])
    return np.where(np.isfinite(pos), pos, 0).astype(np.int64)


def _check_embedding(
    s: Any, rows: np.ndarray, report: ValidationReport, embedding_dim: int | None
) -> np.ndarray | None:
    """(N, D) embeddings (zero rows where bad), or None when the column is all missing.

    ``D`` is ``embedding_dim`` when given, else the longest row.
    """
    parsed, _invalid = list_column(s)
    if all(p is None for p in parsed):
        return None
    dim = embedding_dim or max(p.shape[0] for p in parsed if p is not None)
    bad = np.array(
        [p is None or p.shape[0] != dim or not np.isfinite(p).all() for p in parsed], bool
    )
    report.add(f"embedding is missing, not finite or not of length {dim}", rows[bad])
    embedding = np.zeros((len(parsed), dim))
    for i, p in enumerate(parsed):
        if p is not None and p.shape[0] == dim and np.isfinite(p).all():
            embedding[i] = p
    return embedding


def drop_bad_rows(data: LogData, on_error: OnError, source: str | None = None) -> LogData:
    """The rows of ``data`` without a problem in ``data.report`` (``on_error="skip"``).

    With ``on_error="fail"`` a bad row raises :class:`LogFormatError` with the report (its
    message starts with ``source``, when given); the report is kept either way.
    """
    rep = data.report
    if rep.ok:
        return data
    if on_error == "fail":
        where = f"{source}: " if source else ""
        raise LogFormatError(
            f"{where}{rep.summary()}\n(use --on-error skip / on_error='skip' to drop the bad "
            "rows and go on)",
            rep,
        )
    if on_error != "skip":
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    return data.select(~np.isin(data.rows, rep.bad_rows))


def load_logs(
    source: Any,
    *,
    columns: LogColumns | dict[str, str | None] | None = None,
    format: Format | None = None,
    split: str | None = None,
    on_error: OnError = "fail",
    require_text: bool = True,
    require_log_logging: bool = True,
    aspect_names: Sequence[Any] | None = None,
    n_aspects: int | None = None,
    use_aspects: bool = True,
) -> LogData:
    """Read and validate a log; bad rows either raise or are dropped (and reported).

    Parameters
    ----------
    source : path, pandas.DataFrame, pyarrow.Table or datasets.Dataset
        See :func:`read_table`.
    columns : LogColumns or dict, optional
        Column names (a dict overrides the defaults field by field).
    on_error : {"fail", "skip"}
        ``"fail"``: raise :class:`LogFormatError` listing the bad rows; ``"skip"``: drop them
        (``data.report`` keeps the list, ``data.rows`` the original numbers of the kept rows).
    require_text, require_log_logging, aspect_names, n_aspects, use_aspects
        See :func:`validate_logs`.

    Returns
    -------
    LogData
    """
    cols = columns if isinstance(columns, LogColumns) else LogColumns.from_mapping(columns or {})
    text = (cols.prompt_id, cols.prompt, cols.response)
    frame = read_table(source, format=format, split=split, text_columns=text)
    data = validate_logs(
        frame,
        columns=cols,
        require_text=require_text,
        require_log_logging=require_log_logging,
        aspect_names=aspect_names,
        n_aspects=n_aspects,
        use_aspects=use_aspects,
    )
    name = Path(source).name if isinstance(source, (str, os.PathLike)) else "log"
    return drop_bad_rows(data, on_error, name)
