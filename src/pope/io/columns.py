"""Typed views of one log column each: missing masks, numbers, lists, text, ids, aspect codes.

The building blocks of :func:`pope.io.validate_logs`; a cell is missing under
:func:`pope.io.formats.is_missing`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from pope._validation import check_n_aspects_size, normalize_ids
from pope.io.errors import LogFormatError
from pope.io.formats import is_missing
from pope.io.memory import release_arrow_memory
from pope.io.report import ValidationReport

__all__ = [
    "encode_aspects",
    "factorize_column",
    "list_column",
    "normalise_prompt_ids",
    "null_mask",
    "numeric_column",
    "parse_list",
    "prompt_id_column",
    "text_column",
]


def null_mask(s: Any) -> np.ndarray:
    """True where a value is missing (None, NaN, pd.NA), elementwise for object columns."""
    import pandas as pd

    if s.dtype == object:
        return np.fromiter((is_missing(v) for v in s), dtype=bool, count=len(s))
    return pd.isna(s).to_numpy()


def numeric_column(s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, missing, not_numeric) of a column that should hold numbers."""
    import pandas as pd

    missing = null_mask(s)
    if s.dtype == bool:
        vals = np.full(len(s), np.nan)
        return vals, missing, ~missing
    vals = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if s.dtype == object:
        isbool = np.fromiter((isinstance(v, (bool, np.bool_)) for v in s), bool, len(s))
        vals = np.where(isbool, np.nan, vals)
    notnum = np.isnan(vals) & ~missing
    return vals, missing, notnum


def parse_list(v: Any) -> np.ndarray | None:
    """A list-like cell as a float array (JSON text accepted), or None if missing/invalid."""
    if is_missing(v):
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            return None
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 1 else None


def list_column(s: Any) -> tuple[list[np.ndarray | None], np.ndarray]:
    """(parsed cells, invalid mask) for a list column; missing cells give None and not invalid."""
    parsed: list[np.ndarray | None] = []
    invalid = np.zeros(len(s), dtype=bool)
    for i, v in enumerate(s):
        if is_missing(v):
            parsed.append(None)
            continue
        a = parse_list(v)
        parsed.append(a)
        invalid[i] = a is None
    return parsed, invalid


def text_column(s: Any) -> list[str | None]:
    """The cells as str, None where missing."""
    return [None if is_missing(v) else str(v) for v in s]


def normalise_prompt_ids(values: np.ndarray, rows: np.ndarray, col: str) -> np.ndarray:
    """Prompt ids (present values) under the one id rule, :func:`pope._validation.normalize_ids`.

    int64 if all are int-like, an object array of str if all are str; a dict / list / bool /
    non-integral float id, or a mix of int and str ids, is a :class:`LogFormatError` naming
    the row (the same rule as in memory and in streaming).
    """
    try:
        return normalize_ids(values, f"prompt_id ({col!r})", rows=rows)
    except (TypeError, ValueError) as e:
        raise LogFormatError(str(e)) from None


def _is_object(dt: Any) -> bool:
    """Whether ``dt`` is NumPy's object dtype (pandas' string dtypes are not)."""
    return isinstance(dt, np.dtype) and dt.kind == "O"


def factorize_column(s: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(codes, uniques)`` of a column of str or of numbers: ``uniques[codes]`` is the column.

    ``codes`` are int64, -1 where a cell is missing (:func:`null_mask`), and number the
    distinct values in order of first appearance; ``uniques`` is an object array. Computed in
    C (``pandas.factorize``: Arrow for Arrow-backed strings), so a column of ``N`` rows and
    ``G`` distinct values costs ``N`` codes and ``G`` Python objects. Other columns (bool,
    objects of mixed types, lists) give None: their cells are checked one by one.
    """
    import pandas as pd

    dt = s.dtype
    if _is_object(dt):
        vals = s.to_numpy(dtype=object)
        present = vals[~null_mask(s)]
        if not set(map(type, present)) <= {str}:
            return None
    elif not (dt.kind in "iuf" or pd.api.types.is_string_dtype(dt)):
        return None
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    out = np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object)
    if not isinstance(dt, np.dtype):  # Arrow-backed: its hash table goes back to the system
        release_arrow_memory()
    return out


def prompt_id_column(s: Any, rows: np.ndarray, col: str) -> tuple[np.ndarray, np.ndarray]:
    """(prompt ids, missing mask) of a ``prompt_id`` column under the one id rule.

    Present ids go through :func:`normalise_prompt_ids` (int64, or an object array of str); a
    missing id is stored as -1 (int ids) or "" (str ids). ``rows`` are the row numbers that
    errors name. A column of str is factorised (:func:`factorize_column`): the rows of one
    prompt share one str object, so ``N`` rows of ``G`` prompts hold ``G`` strings.
    """
    dt = s.dtype
    f = factorize_column(s) if _is_object(dt) or dt.kind not in "iuf" else None
    if f is not None:
        codes, uniques = f
        missing = codes < 0
        if uniques.size == 0 or isinstance(uniques[0], str):
            return np.append(uniques, "")[codes], missing  # code -1 (missing) picks ""
    missing = null_mask(s)
    present = normalise_prompt_ids(s.to_numpy(dtype=object)[~missing], rows[~missing], col)
    ids = np.empty(len(s), dtype=present.dtype)
    ids[~missing] = present
    ids[missing] = -1 if present.dtype != object else ""
    return ids, missing


def encode_aspects(
    s: Any,
    report: ValidationReport,
    rows: np.ndarray,
    aspect_names: Sequence[Any] | None,
    n_aspects: int | None,
    col: str,
) -> tuple[np.ndarray, list[Any] | None, int]:
    """Aspect codes (-1 where bad), the label vocabulary, and ``C``.

    A column of str or of numbers is encoded once per distinct label (:func:`factorize_column`)
    and the codes and problems are spread to its rows; other columns cell by cell.
    """
    import pandas as pd

    f = factorize_column(s)
    if f is None:
        return _encode_aspect_cells(s, report, rows, aspect_names, n_aspects, col)
    inv, uniques = f
    missing = inv < 0
    report.add(f"missing aspect ({col!r})", rows[missing])
    per_label = ValidationReport(uniques.size)
    codes_u, names, c = _encode_aspect_cells(
        pd.Series(uniques, dtype=object),
        per_label,
        np.arange(uniques.size),
        aspect_names,
        n_aspects,
        col,
    )
    for reason, labels in per_label.issues.items():
        report.add(reason, rows[np.isin(inv, labels)])
    codes = np.append(codes_u, -1)[inv]  # code -1 (missing) picks -1
    return codes.astype(np.int64), names, c


def _encode_aspect_cells(
    s: Any,
    report: ValidationReport,
    rows: np.ndarray,
    aspect_names: Sequence[Any] | None,
    n_aspects: int | None,
    col: str,
) -> tuple[np.ndarray, list[Any] | None, int]:
    """:func:`encode_aspects` cell by cell."""
    missing = null_mask(s)
    report.add(f"missing aspect ({col!r})", rows[missing])
    codes = np.full(len(s), -1, dtype=np.int64)
    vals = s.to_numpy(dtype=object)
    if aspect_names is not None:
        names = list(aspect_names)
        lookup = {str(n): i for i, n in enumerate(names)}
        if n_aspects is not None and n_aspects != len(names):
            raise LogFormatError(f"{len(names)} aspect names given but n_aspects={n_aspects}")
        for i, v in enumerate(vals):
            if missing[i]:
                continue
            key = str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v)
            codes[i] = lookup.get(key, -1)
        unknown = ~missing & (codes < 0)
        report.add(f"unknown aspect ({col!r} not in the {len(names)} aspect names)", rows[unknown])
        return codes, names, len(names)
    present = vals[~missing]
    numeric = all(
        isinstance(v, (int, np.integer, float, np.floating)) and not isinstance(v, bool)
        for v in present
    )
    if numeric:
        f = np.array([float(v) for v in vals[~missing]]) if present.size else np.zeros(0)
        ok = np.isfinite(f) & (f == np.round(f)) & (f >= 0)
        if n_aspects is not None:
            ok &= f < n_aspects
        idx = np.flatnonzero(~missing)
        codes[idx[ok]] = f[ok].astype(np.int64)
        bad = idx[~ok]
        rng = f"[0, {n_aspects})" if n_aspects is not None else "non-negative integers"
        report.add(f"unknown aspect ({col!r} must be one of {rng})", rows[bad])
        c = n_aspects if n_aspects is not None else (int(codes.max()) + 1 if codes.size else 1)
        try:
            check_n_aspects_size(max(c, 1), label=n_aspects is None)
        except ValueError as e:
            raise LogFormatError(f"{col!r}: {e}") from None
        return codes, None, max(c, 1)
    # string labels without a vocabulary: sorted unique labels. Labels are str or int (as for
    # prompt ids): a list / dict cell is a bad row, and int and str labels must not mix
    # (0 and "0" would merge).
    is_str = np.fromiter((isinstance(v, str) for v in vals), bool, len(vals))
    is_num = np.fromiter(
        (isinstance(v, (int, np.integer, float, np.floating)) and not isinstance(v, bool)
         for v in vals), bool, len(vals),
    )  # fmt: skip
    not_label = ~missing & ~is_str & ~is_num
    report.add(f"aspect is not a label ({col!r} must hold str or int values)", rows[not_label])
    if (is_str & ~missing).any() and (is_num & ~missing).any():
        i, j = int(np.flatnonzero(is_num & ~missing)[0]), int(np.flatnonzero(is_str)[0])
        raise LogFormatError(
            f"{col!r} mixes number and str aspect labels (row {rows[i]} is {vals[i]!r}, row "
            f"{rows[j]} is {vals[j]!r}); use one type, or pass the aspect names"
        )
    missing = missing | not_label
    present = vals[~missing]
    labels = sorted({str(v) for v in present})
    if n_aspects is not None and len(labels) > n_aspects:
        raise LogFormatError(
            f"{col!r} has {len(labels)} distinct labels but n_aspects={n_aspects}; pass the "
            "aspect names to map labels to aspects"
        )
    lookup = {n: i for i, n in enumerate(labels)}
    for i, v in enumerate(vals):
        if not missing[i]:
            codes[i] = lookup[str(v)]
    c = n_aspects if n_aspects is not None else max(len(labels), 1)
    return codes, labels, c
