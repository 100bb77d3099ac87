"""Read a log in chunks of rows, in file order, under the NA rules of :mod:`pope.io.formats`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pope.io.formats import (
    Format,
    csv_read_options,
    detect_format,
    iter_jsonl_frames,
    load_hf_dataset,
    read_errors,
    read_table,
)
from pope.io.memory import release_arrow_memory

__all__ = ["iter_raw_chunks"]


def iter_raw_chunks(
    source: Any,
    chunk_rows: int,
    *,
    format: Format | None = None,
    split: str | None = None,
    text_columns: Sequence[str] = ("prompt_id", "prompt", "response"),
) -> Iterator[Any]:
    """Read a log as ``pandas.DataFrame`` chunks of about ``chunk_rows`` rows, in file order.

    Parquet: row batches of each file (files of a directory in sorted path order); JSON Lines:
    line chunks; CSV/TSV: ``pandas.read_csv`` chunks; a Hugging Face dataset: batches of the
    memory-mapped table; a frame or table: slices. Missing values and text columns follow the
    rules of :func:`pope.io.read_table` (:data:`pope.io.formats.CSV_NA`).

    Raises
    ------
    LogFormatError
        Missing or unreadable file.
    """
    import pandas as pd

    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if isinstance(source, pd.DataFrame) or type(source).__module__.startswith(
        ("pyarrow", "datasets")
    ):
        frame = read_table(source)
        for i in range(0, len(frame), chunk_rows):
            yield frame.iloc[i : i + chunk_rows].reset_index(drop=True)
        return
    p = Path(source)
    fmt = format or detect_format(p)
    with read_errors(p, fmt):
        if fmt == "parquet":
            import pyarrow.parquet as pq

            files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
            for f in files:
                # pages read as decoded (no pre-buffered column chunks), on this thread; the
                # pool's freed blocks go back to the system between chunks
                batches = pq.ParquetFile(f, pre_buffer=False).iter_batches(
                    batch_size=chunk_rows, use_threads=False
                )
                for batch in batches:
                    yield batch.to_pandas(split_blocks=True)
                    release_arrow_memory()
        elif fmt == "jsonl":
            yield from iter_jsonl_frames(p, chunk_rows)
        elif fmt in ("csv", "tsv"):
            opts = csv_read_options(p, "\t" if fmt == "tsv" else ",", text_columns)
            yield from pd.read_csv(p, chunksize=chunk_rows, **opts)
        elif fmt == "hf":
            ds = load_hf_dataset(p, split)  # memory-mapped Arrow; batches are read lazily
            yield from ds.to_pandas(batch_size=chunk_rows, batched=True)
        else:
            raise ValueError(f"unknown format {fmt!r}")
