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
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pope._validation import check_n_aspects_size, normalize_ids
from pope.data import LoggedFeedback

if TYPE_CHECKING:  # defined in pope.readers, imported on first use (see __getattr__)
    from pope.readers import read_logs, read_oasst, read_pairwise, read_ratings, read_trl

__all__ = [
    "LIST_COLUMNS",
    "LogColumns",
    "LogData",
    "LogFormatError",
    "OnError",
    "ValidationReport",
    "detect_format",
    "iter_jsonl_frames",
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

OnError = Literal["fail", "skip"]
Format = Literal["parquet", "jsonl", "csv", "tsv", "hf"]

#: Schema fields whose values are lists (stored as JSON text in CSV).
LIST_COLUMNS = ("aspect_probs", "token_log_logging", "embedding")

_FORMATS = ("parquet", "jsonl", "csv", "tsv", "hf")


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


# --------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class LogColumns:
    """Column names of the log schema (map your own names onto the schema fields).

    Every attribute is the column holding that field; ``None`` disables an optional field.
    Optional fields whose column is absent from the data are simply not used.
    """

    prompt_id: str = "prompt_id"
    prompt: str = "prompt"
    response: str = "response"
    signal: str = "signal"
    aspect: str | None = "aspect"
    aspect_probs: str | None = "aspect_probs"
    log_logging: str | None = "log_logging"
    position: str | None = "position"
    token_log_logging: str | None = "token_log_logging"
    embedding: str | None = "embedding"
    log_target: str | None = "log_target"

    @classmethod
    def from_mapping(cls, mapping: dict[str, str | None]) -> LogColumns:
        """Defaults overridden by ``{field: column}`` (unknown fields raise ``ValueError``)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - names)
        if unknown:
            raise ValueError(f"unknown schema field(s) {unknown}; fields are {sorted(names)}")
        return replace(cls(), **mapping)

    def as_dict(self) -> dict[str, str | None]:
        """``{field: column}`` for every schema field."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- reading
def detect_format(path: str | os.PathLike[str]) -> Format:
    """The format of a log file or directory from its name (and, for directories, its files).

    Raises
    ------
    LogFormatError
        The path does not exist or its format cannot be told.
    """
    p = Path(path)
    if not p.exists():
        raise LogFormatError(f"log file not found: {p}")
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (
            p / "state.json"
        ).exists():
            return "hf"
        if any(p.rglob("*.parquet")):
            return "parquet"
        raise LogFormatError(
            f"cannot tell the format of directory {p}: expected Parquet files or a Hugging Face "
            "datasets directory (save_to_disk)"
        )
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    table = {
        ".parquet": "parquet",
        ".pq": "parquet",
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".json": "jsonl",
        ".csv": "csv",
        ".tsv": "tsv",
    }
    if ext not in table:
        raise LogFormatError(
            f"cannot tell the format of {p.name!r} from its extension; use one of .parquet, "
            ".jsonl, .ndjson, .csv, .tsv (optionally .gz) or pass format= "
            f"({', '.join(_FORMATS)})"
        )
    return table[ext]  # type: ignore[return-value]


def _open_text(path: Path) -> Any:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl_frames(
    path: str | os.PathLike[str], chunk_rows: int, columns: Sequence[str] | None = None
) -> Iterator[Any]:
    """Read a JSON Lines file as ``pandas.DataFrame`` chunks of at most ``chunk_rows`` rows.

    Blank lines are skipped; a line that is not a JSON object raises :class:`LogFormatError`
    naming its line number.
    """
    import pandas as pd

    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    p = Path(path)
    buf: list[dict[str, Any]] = []
    with _open_text(p) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise LogFormatError(f"{p.name}: line {lineno} is not valid JSON ({e.msg})") from e
            if not isinstance(rec, dict):
                raise LogFormatError(
                    f"{p.name}: line {lineno} is a JSON {type(rec).__name__}, expected an object"
                )
            if columns is not None:
                rec = {k: rec.get(k) for k in columns}
            buf.append(rec)
            if len(buf) >= chunk_rows:
                yield pd.DataFrame.from_records(buf)
                buf = []
    if buf:
        yield pd.DataFrame.from_records(buf)


def _read_csv(path: Path, sep: str, text_columns: Sequence[str]) -> Any:
    import pandas as pd

    header = pd.read_csv(path, sep=sep, nrows=0).columns
    text = [c for c in text_columns if c in header]
    df = pd.read_csv(
        path,
        sep=sep,
        dtype=dict.fromkeys(text, str),
        keep_default_na=False,
        na_values={c: ([""] if c in text else _CSV_NA) for c in header},
    )
    return df


_CSV_NA = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "#N/A", "-nan", "n/a"]


def load_hf_dataset(path: str | os.PathLike[str], split: str | None = None) -> Any:
    """A ``datasets.Dataset`` (memory-mapped) from a ``save_to_disk`` directory.

    A ``DatasetDict`` directory needs ``split`` unless it holds a single split.
    """
    path = Path(path)
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise LogFormatError(
            f"{path} is a Hugging Face datasets directory but the 'datasets' package is not "
            "installed (pip install 'pope[hf]')"
        ) from e
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise LogFormatError(f"cannot read Hugging Face dataset {path}: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        if split is None:
            if len(splits) != 1:
                raise LogFormatError(
                    f"{path} holds several splits {splits}; choose one with split="
                )
            split = splits[0]
        if split not in ds:
            raise LogFormatError(f"split {split!r} not in {path}; splits are {splits}")
        ds = ds[split]
    return ds


def _read_hf(path: Path, split: str | None) -> Any:
    return load_hf_dataset(path, split).to_pandas()


def read_table(
    source: Any,
    *,
    format: Format | None = None,
    split: str | None = None,
    text_columns: Sequence[str] = ("prompt_id", "prompt", "response"),
) -> Any:
    """Read a whole log into a ``pandas.DataFrame`` (no validation).

    Parameters
    ----------
    source : path, ``pandas.DataFrame``, ``pyarrow.Table`` or ``datasets.Dataset``
    format : {"parquet", "jsonl", "csv", "tsv", "hf"}, optional
        Overrides the format detected from the file name.
    split : str, optional
        The split of a ``DatasetDict`` directory.
    text_columns : sequence of str
        CSV/TSV columns read as text (so ``"007"`` stays ``"007"``); only empty fields are
        missing in them.

    Raises
    ------
    LogFormatError
        Missing or unreadable file.
    """
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True)
    mod = type(source).__module__
    if mod.startswith("pyarrow"):
        return source.to_pandas()
    if mod.startswith("datasets"):
        return source.to_pandas()
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "source must be a path, a pandas.DataFrame, a pyarrow.Table or a datasets.Dataset, "
            f"got {type(source).__name__}"
        )
    p = Path(source)
    if not p.exists():
        raise LogFormatError(f"log file not found: {p}")
    fmt = format or detect_format(p)
    if fmt not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {fmt!r}")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pandas()
        if fmt == "jsonl":
            frames = list(iter_jsonl_frames(p, 1 << 16))
            return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if fmt in ("csv", "tsv"):
            return _read_csv(p, "\t" if fmt == "tsv" else ",", text_columns)
        return _read_hf(p, split)
    except LogFormatError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise LogFormatError(f"cannot read {p.name} as {fmt}: {e}") from e
    except Exception as e:  # pyarrow / pandas parser errors have many types
        raise LogFormatError(f"cannot read {p.name} as {fmt}: {type(e).__name__}: {e}") from e


def write_logs(
    frame: Any, path: str | os.PathLike[str], *, format: Format | None = None
) -> Path:
    """Write a log frame to Parquet, JSON Lines, CSV/TSV or a Hugging Face datasets directory.

    List columns are written natively (Parquet, JSON Lines, datasets) or as JSON text (CSV).
    A path without a known extension needs ``format``; ``"hf"`` writes a directory.
    """
    import pandas as pd

    p = Path(path)
    if format is None:
        ext = p.suffix.lower()
        format = {  # type: ignore[assignment]
            ".parquet": "parquet",
            ".pq": "parquet",
            ".jsonl": "jsonl",
            ".ndjson": "jsonl",
            ".csv": "csv",
            ".tsv": "tsv",
        }.get(ext, "hf" if ext == "" else None)
        if format is None:
            raise ValueError(f"cannot tell the format of {p.name!r}; pass format=")
    df = pd.DataFrame(frame)
    if format == "parquet":
        df.to_parquet(p, index=False)
    elif format == "jsonl":
        with open(p, "w", encoding="utf-8") as fh:
            for rec in df.to_dict(orient="records"):
                fh.write(json.dumps({k: _jsonable(v) for k, v in rec.items()}) + "\n")
    elif format in ("csv", "tsv"):
        out = df.copy()
        for c in out.columns:
            if out[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
                out[c] = out[c].map(lambda v: None if _isna(v) else json.dumps(_jsonable(v)))
        out.to_csv(p, index=False, sep="\t" if format == "tsv" else ",")
    elif format == "hf":
        import datasets

        datasets.Dataset.from_pandas(df, preserve_index=False).save_to_disk(str(p))
    else:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    return p


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _isna(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float):
        return math.isnan(v)
    if isinstance(v, (np.floating,)):
        return bool(np.isnan(v))
    try:
        import pandas as pd

        return v is pd.NA or v is pd.NaT
    except ImportError:  # pragma: no cover
        return False


# --------------------------------------------------------------------------- validation
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


def _null_mask(s: Any) -> np.ndarray:
    """True where a value is missing (None, NaN, pd.NA), elementwise for object columns."""
    import pandas as pd

    if s.dtype == object:
        return np.fromiter((_isna(v) for v in s), dtype=bool, count=len(s))
    return pd.isna(s).to_numpy()


def _numeric(s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, missing, not_numeric) of a column that should hold numbers."""
    import pandas as pd

    missing = _null_mask(s)
    if s.dtype == bool:
        vals = np.full(len(s), np.nan)
        return vals, missing, ~missing
    vals = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if s.dtype == object:
        isbool = np.fromiter((isinstance(v, (bool, np.bool_)) for v in s), bool, len(s))
        vals = np.where(isbool, np.nan, vals)
    notnum = np.isnan(vals) & ~missing
    return vals, missing, notnum


def _parse_list(v: Any) -> np.ndarray | None:
    """A list-like cell as a float array (JSON text accepted), or None if missing/invalid."""
    if _isna(v):
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


def _list_column(s: Any) -> tuple[list[np.ndarray | None], np.ndarray]:
    """(parsed cells, invalid mask) for a list column; missing cells give None and not invalid."""
    parsed = []
    invalid = np.zeros(len(s), dtype=bool)
    for i, v in enumerate(s):
        if _isna(v):
            parsed.append(None)
            continue
        a = _parse_list(v)
        parsed.append(a)
        invalid[i] = a is None
    return parsed, invalid


def _text_column(s: Any) -> list[str | None]:
    return [None if _isna(v) else str(v) for v in s]


def _normalise_ids(values: np.ndarray, rows: np.ndarray, col: str) -> np.ndarray:
    """Prompt ids (present values) under the one id rule, :func:`pope._validation.normalize_ids`.

    int64 if all are int-like, an object array of str if all are str; a dict / list / bool /
    non-integral float id, or a mix of int and str ids, is a :class:`LogFormatError` naming
    the row (the same rule as in memory and in streaming).
    """
    try:
        return normalize_ids(values, f"prompt_id ({col!r})", rows=rows)
    except (TypeError, ValueError) as e:
        raise LogFormatError(str(e)) from None


def _encode_aspects(
    s: Any,
    report: ValidationReport,
    rows: np.ndarray,
    aspect_names: Sequence[Any] | None,
    n_aspects: int | None,
    col: str,
) -> tuple[np.ndarray, list[Any] | None, int]:
    """Aspect codes (-1 where bad), the label vocabulary, and ``C``."""
    missing = _null_mask(s)
    report.add(f"missing aspect ({col!r})", rows[missing])
    codes = np.full(len(s), -1, dtype=np.int64)
    vals = s.to_numpy(dtype=object)
    if aspect_names is not None:
        names = list(aspect_names)
        lookup = {str(n): i for i, n in enumerate(names)}
        if n_aspects is not None and n_aspects != len(names):
            raise LogFormatError(
                f"{len(names)} aspect names given but n_aspects={n_aspects}"
            )
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

    def has(name: str | None) -> bool:
        return name is not None and name in present

    required = [("prompt_id", cols.prompt_id), ("signal", cols.signal)]
    if require_text:
        required += [("prompt", cols.prompt), ("response", cols.response)]
    missing_cols = [(f, c) for f, c in required if c not in present]
    if require_log_logging and not (has(cols.log_logging) or has(cols.token_log_logging)):
        missing_cols.append(("log_logging", cols.log_logging or "log_logging"))
    if missing_cols:
        what = ", ".join(
            f"{c!r}" if f == c else f"{c!r} (for {f})" for f, c in missing_cols
        )
        hint = ""
        if any(f == "log_logging" for f, _ in missing_cols):
            hint = "; without logged log-probs, give a logging model (--logging-model)"
        raise LogFormatError(
            f"required column(s) {what} not found; the log has columns {sorted(map(str, present))}"
            f" (map names with --column FIELD=NAME){hint}"
        )

    # prompt ids
    pid_missing = _null_mask(frame[cols.prompt_id])
    report.add("missing prompt_id", rows[pid_missing])
    pid_obj = frame[cols.prompt_id].to_numpy(dtype=object)
    pid_norm = _normalise_ids(pid_obj[~pid_missing], rows[~pid_missing], cols.prompt_id)
    prompt_id = np.empty(n, dtype=pid_norm.dtype)
    prompt_id[~pid_missing] = pid_norm
    prompt_id[pid_missing] = -1 if pid_norm.dtype != object else ""

    # signal
    sig, miss, notnum = _numeric(frame[cols.signal])
    report.add("missing or NaN signal", rows[miss | (np.isnan(sig) & ~notnum)])
    report.add("signal is not a number", rows[notnum])
    report.add("signal is infinite", rows[np.isinf(sig)])
    report.add("negative signal", rows[sig < 0])

    # text
    prompt = response = None
    if has(cols.prompt):
        prompt = _text_column(frame[cols.prompt])
        if require_text:
            report.add("missing prompt", rows[np.array([p is None for p in prompt], bool)])
    if prompt is not None and n:
        # every row of a prompt_id must carry the same prompt text
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
    if has(cols.response):
        response = _text_column(frame[cols.response])
        if require_text:
            report.add("missing response", rows[np.array([r is None for r in response], bool)])

    # logging propensities
    log_logging = None
    if has(cols.log_logging):
        ll, miss, notnum = _numeric(frame[cols.log_logging])
        if require_log_logging and not has(cols.token_log_logging):
            report.add("missing or NaN log_logging", rows[miss | (np.isnan(ll) & ~notnum)])
        report.add("log_logging is not a number", rows[notnum])
        report.add("log_logging > 0 (a probability above 1)", rows[ll > 0])
        report.add("log_logging is -inf (probability 0 for a logged response)",
                   rows[np.isneginf(ll)])
        log_logging = ll
    token_log_logging = None
    if has(cols.token_log_logging):
        parsed, invalid = _list_column(frame[cols.token_log_logging])
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
            parsed = None
        else:
            token_log_logging = [np.zeros(0) if p is None else p for p in parsed]
            if log_logging is None:
                log_logging = np.array([float(np.sum(t)) for t in token_log_logging])
            else:
                fill = np.isnan(log_logging) & ~none
                log_logging = log_logging.copy()
                log_logging[fill] = [float(np.sum(token_log_logging[i]))
                                     for i in np.flatnonzero(fill)]
                if require_log_logging:
                    report.add("missing or NaN log_logging", rows[np.isnan(log_logging)])

    # aspects
    aspect = aspect_probs = names = None
    c = n_aspects
    if use_aspects and has(cols.aspect_probs):
        parsed, invalid = _list_column(frame[cols.aspect_probs])
        report.add("aspect_probs is not a list of numbers", rows[invalid])
        none = np.array([p is None for p in parsed], bool) & ~invalid
        lengths = {p.shape[0] for p in parsed if p is not None}
        if none.all():
            pass
        else:
            if c is None:
                c = max(lengths)
            bad_len = np.array([p is not None and p.shape[0] != c for p in parsed], bool)
            report.add(f"aspect_probs does not have {c} entries", rows[bad_len])
            report.add("missing aspect_probs", rows[none])
            q = np.full((n, c), 1.0 / c)
            for i, p in enumerate(parsed):
                if p is not None and p.shape[0] == c:
                    q[i] = p
            bad = ~(np.isfinite(q).all(axis=1) & (q >= 0).all(axis=1)) | (
                np.abs(q.sum(axis=1) - 1) > 1e-6
            )
            report.add("aspect_probs is not a probability row (>= 0, sums to 1)",
                       rows[bad & ~bad_len & ~invalid & ~none])
            aspect_probs = q
    elif use_aspects and has(cols.aspect):
        aspect, names, c = _encode_aspects(
            frame[cols.aspect], report, rows, aspect_names, n_aspects, cols.aspect
        )
    elif use_aspects and aspect_names is not None:
        raise LogFormatError(
            f"aspect names were given but the log has no aspect column {cols.aspect!r}"
        )

    # position
    position = None
    if has(cols.position):
        pos, miss, notnum = _numeric(frame[cols.position])
        bad = ~miss & (notnum | (pos < 0) | (pos != np.round(pos)))
        report.add("position is not a non-negative integer", rows[bad])
        if miss.all():
            position = None
        else:
            report.add("missing position", rows[miss])
            position = np.where(np.isfinite(pos), pos, 0).astype(np.int64)

    # embeddings
    embedding = None
    if has(cols.embedding):
        parsed, invalid = _list_column(frame[cols.embedding])
        if not all(p is None for p in parsed):
            dim = embedding_dim or max(p.shape[0] for p in parsed if p is not None)
            bad = np.array(
                [p is None or p.shape[0] != dim or not np.isfinite(p).all() for p in parsed], bool
            )
            report.add(f"embedding is missing, not finite or not of length {dim}", rows[bad])
            embedding = np.zeros((n, dim))
            for i, p in enumerate(parsed):
                if p is not None and p.shape[0] == dim and np.isfinite(p).all():
                    embedding[i] = p

    log_target = None
    if has(cols.log_target):
        lt, miss, notnum = _numeric(frame[cols.log_target])
        report.add("log_target is missing, not a number or > 0", rows[miss | notnum | (lt > 0)])
        log_target = lt

    return LogData(
        rows=rows,
        prompt_id=prompt_id,
        signal=np.where(np.isfinite(sig), sig, 0.0),
        report=report,
        prompt=prompt,
        response=response,
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


def _drop_bad(data: LogData, on_error: OnError, source: str) -> LogData:
    rep = data.report
    if rep.ok:
        return data
    if on_error == "fail":
        raise LogFormatError(
            f"{source}: {rep.summary()}\n(use --on-error skip / on_error='skip' to drop the bad "
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
    return _drop_bad(data, on_error, name)


# --------------------------------------------------------------------------- public formats
#: Readers of public formats, defined in :mod:`pope.readers` (imported on first use, because
#: that module builds on this one).
_PUBLIC_READERS = ("read_logs", "read_oasst", "read_pairwise", "read_ratings", "read_trl")


def __getattr__(name: str) -> Any:
    if name in _PUBLIC_READERS:
        from pope import readers

        return getattr(readers, name)
    raise AttributeError(f"module 'pope.io' has no attribute {name!r}")
