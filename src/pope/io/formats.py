"""File formats of a log and the NA rule: detect, read whole (:func:`read_table`), write.

Formats: Parquet files or directories (pyarrow), JSON Lines (``.jsonl``, ``.ndjson``,
optionally ``.gz``), CSV/TSV (list columns as JSON text), a local Hugging Face ``datasets``
directory written by ``save_to_disk``. One NA rule for every reader: :data:`CSV_NA` are the
missing-value spellings of a non-text CSV field (only the empty field is missing in a text
column), and :func:`is_missing` is the missing test of one cell (None, NaN, ``pd.NA``,
``pd.NaT``). The chunked reader (:mod:`pope.io.chunks`) uses the same rules.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeGuard, get_args

import numpy as np

from pope.io.errors import LogFormatError
from pope.io.jsonl import iter_jsonl_frames, read_jsonl
from pope.io.memory import release_arrow_memory

__all__ = [
    "CSV_NA",
    "FORMATS",
    "Format",
    "csv_read_options",
    "detect_format",
    "is_format",
    "is_missing",
    "iter_jsonl_frames",
    "load_hf_dataset",
    "read_errors",
    "read_table",
    "write_logs",
]

Format = Literal["parquet", "jsonl", "csv", "tsv", "hf"]

#: The formats :func:`read_table` and :func:`write_logs` know.
FORMATS: tuple[Format, ...] = get_args(Format)


def is_format(value: object) -> TypeGuard[Format]:
    """Whether ``value`` is one of :data:`FORMATS` (for a type checker: a :data:`Format`)."""
    return isinstance(value, str) and value in FORMATS


#: Missing-value spellings of a non-text CSV/TSV field (in a text column only "" is missing).
CSV_NA = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "#N/A", "-nan", "n/a"]


def is_missing(v: Any) -> bool:
    """Whether one cell is missing: None, a float NaN, ``pd.NA`` or ``pd.NaT``."""
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
        if (
            (p / "dataset_info.json").exists()
            or (p / "dataset_dict.json").exists()
            or (p / "state.json").exists()
        ):
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
    table: dict[str, Format] = {
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
            f"({', '.join(FORMATS)})"
        )
    return table[ext]


def csv_read_options(path: Path, sep: str, text_columns: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments of ``pandas.read_csv`` under the NA rule (:data:`CSV_NA`).

    ``text_columns`` present in the header are read as ``str`` (so ``"007"`` stays ``"007"``)
    and only their empty fields are missing; the other columns treat every :data:`CSV_NA`
    spelling as missing.
    """
    import pandas as pd

    header = pd.read_csv(path, sep=sep, nrows=0).columns
    text = [c for c in text_columns if c in header]
    return {
        "sep": sep,
        "dtype": dict.fromkeys(text, str),
        "keep_default_na": False,
        "na_values": {c: ([""] if c in text else CSV_NA) for c in header},
    }


def _read_csv(path: Path, sep: str, text_columns: Sequence[str]) -> Any:
    import pandas as pd

    return pd.read_csv(path, **csv_read_options(path, sep, text_columns))


@contextmanager
def read_errors(path: Path, fmt: str) -> Iterator[None]:
    """Turn the errors of a file reader into :class:`LogFormatError` naming the file and format."""
    try:
        yield
    except LogFormatError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise LogFormatError(f"cannot read {path.name} as {fmt}: {e}") from e
    except Exception as e:  # pyarrow / pandas parser errors have many types
        raise LogFormatError(f"cannot read {path.name} as {fmt}: {type(e).__name__}: {e}") from e


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
    if mod.startswith("pyarrow"):  # float columns without nulls stay zero-copy views
        return source.to_pandas(split_blocks=True)
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
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    with read_errors(p, fmt):
        if fmt == "parquet":
            import pyarrow.parquet as pq

            # one column at a time, each freed once converted (no 2-D block of all floats);
            # then the pool's freed blocks go back to the system (numpy allocates elsewhere)
            frame = pq.read_table(p, pre_buffer=False).to_pandas(
                split_blocks=True, self_destruct=True
            )
            release_arrow_memory()
            return frame
        if fmt == "jsonl":
            return read_jsonl(p)
        if fmt in ("csv", "tsv"):
            return _read_csv(p, "\t" if fmt == "tsv" else ",", text_columns)
        return _read_hf(p, split)


def write_logs(frame: Any, path: str | os.PathLike[str], *, format: Format | None = None) -> Path:
    """Write a log frame to Parquet, JSON Lines, CSV/TSV or a Hugging Face datasets directory.

    List columns are written natively (Parquet, JSON Lines, datasets) or as JSON text (CSV).
    A path without a known extension needs ``format``; ``"hf"`` writes a directory.
    """
    import pandas as pd

    p = Path(path)
    if format is None:
        ext = p.suffix.lower()
        by_ext: dict[str, Format] = {
            ".parquet": "parquet",
            ".pq": "parquet",
            ".jsonl": "jsonl",
            ".ndjson": "jsonl",
            ".csv": "csv",
            ".tsv": "tsv",
        }
        format = by_ext.get(ext, "hf" if ext == "" else None)
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
                out[c] = out[c].map(lambda v: None if is_missing(v) else json.dumps(_jsonable(v)))
        out.to_csv(p, index=False, sep="\t" if format == "tsv" else ",")
    elif format == "hf":
        import datasets

        datasets.Dataset.from_pandas(df, preserve_index=False).save_to_disk(str(p))
    else:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
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
