r"""Evaluate logs on an engine: one process (local), a Ray cluster or a Spark cluster.

:func:`evaluate_with_engine` is the one entry point; ``engine`` names where it runs:

- ``"local"``: this process, in memory (:func:`pope.pipeline.evaluate_logs`) or streamed in
  chunks (:func:`pope.pipeline.evaluate_stream`);
- ``"ray"`` (:func:`evaluate_ray`) and ``"spark"`` (:func:`evaluate_spark`): rows are assigned to
  ``num_buckets`` buckets by a stable hash of ``prompt_id`` (:func:`pope.pipeline.bucket_of`),
  so every prompt lies whole in one bucket; each bucket is mapped to mergeable statistics
  (:func:`pope.pipeline.map_partition`) on a worker, and the driver adds them
  (:func:`pope.pipeline.merge`).

The statistics are sums over prompts (:class:`pope.estimators.prompt_moments.PromptMoments`
merges means and centred cross-products exactly), so for any assignment of prompts to buckets

.. math::

    \mathrm{finalize}\Big(\sum_b S(\text{bucket}_b)\Big) = \mathrm{finalize}(S(\text{log}))

up to floating-point rounding of the merge; the result equals the in-memory one.

Rows carry their global row number (``__row__``) to the workers, so the data report and the
errors name the same rows as a local run: for Parquet paths it is the row's position in the
files read in sorted path order (as :func:`pope.io.read_table` and the streaming reader do),
computed from the Parquet metadata (no data pass). A worker error comes back to the driver as
the same exception type, prefixed with the bucket and its rows.

Each bucket must fit in a worker's memory (the rows of its prompts, about ``rows / num_buckets``
rows); models are loaded once per worker process and score each bucket in token-budget batches,
as the local path does.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from pope.estimate import InsufficientDataWarning
from pope.io import Format, LogFormatError, detect_format
from pope.pipeline import (
    EvalResult,
    EvalSpec,
    EvalStats,
    bucket_of,
    evaluate_logs,
    evaluate_stream,
    map_partition,
    merge,
    prepare_spec,
)
from pope.pipeline.prepass import needs_prepass

__all__ = [
    "ENGINES",
    "Engine",
    "ParquetFile",
    "check_engine_options",
    "evaluate_ray",
    "evaluate_spark",
    "evaluate_with_engine",
    "parquet_files",
]

Engine = Literal["local", "ray", "spark"]
#: Engines :func:`evaluate_with_engine` runs on.
ENGINES: tuple[Engine, ...] = get_args(Engine)

_ROW, _BUCKET = "__row__", "__bucket__"


# ----------------------------------------------------------------------------- entry point
def evaluate_with_engine(
    source: Any,
    spec: EvalSpec,
    *,
    engine: Engine = "local",
    address: str | None = None,
    num_buckets: int = 64,
    chunk_rows: int | None = None,
    format: Format | None = None,
    split: str | None = None,
) -> EvalResult:
    """Evaluate a log on ``engine``; the result is the same whichever engine runs it.

    Parameters
    ----------
    source : path, pandas.DataFrame, ray.data.Dataset or pyspark DataFrame
        The ray and spark engines read Parquet paths (a file or a directory of files) or
        take a frame / a dataset of their own engine.
    spec : EvalSpec
        A pre-pass (global maximum, aspect vocabulary, k-means centers) runs locally first
        when the spec needs one (:func:`pope.pipeline.prepare_spec`); the result reports the
        settings as given.
    engine : {"local", "ray", "spark"}
    address : str, optional
        Ray: the cluster address for ``ray.init`` (``"auto"``, ``"ray://host:10001"``; default:
        the running cluster, else a local one). Spark: the master URL (``"local[2]"``,
        ``"spark://host:7077"``, ``"yarn"``; default: the active session, the master set by
        ``spark-submit``, else ``local[*]``).
    num_buckets : int
        Buckets of prompts (ray/spark); each must fit in a worker's memory.
    chunk_rows : int, optional
        Local engine: stream in chunks of this many rows instead of reading all in memory.
    format, split
        Local engine: see :func:`pope.io.read_table`.

    Raises
    ------
    ValueError
        Unknown engine, ``num_buckets < 1``, options that do not apply to the engine
        (:func:`check_engine_options`).
    LogFormatError
        Bad input, also when found by a worker (the message names the bucket and rows).
    """
    check_engine_options(engine, source, address=address, chunk_rows=chunk_rows, format=format)
    if engine == "local":
        if chunk_rows:
            return evaluate_stream(source, spec, chunk_rows=chunk_rows, format=format, split=split)
        return evaluate_logs(source, spec, format=format, split=split)
    full = prepare_spec(source, spec) if needs_prepass(spec) else spec
    if engine == "ray":
        res = evaluate_ray(source, full, num_buckets=num_buckets, address=address)
    else:
        res = evaluate_spark(source, full, num_buckets=num_buckets, master=address)
    return replace(res, spec=spec)


def check_engine_options(
    engine: str,
    source: Any,
    *,
    address: str | None = None,
    chunk_rows: int | None = None,
    format: str | None = None,
) -> None:
    """Raise ``ValueError`` when the options do not fit the engine (checked before any work).

    ``address`` is for ray/spark; ``chunk_rows`` for local; ray/spark read Parquet paths.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "local":
        if address is not None:
            raise ValueError("an engine address is for the ray and spark engines, not local")
        return
    if chunk_rows:
        raise ValueError(f"chunk_rows is for the local engine; {engine} reads by buckets")
    if format not in (None, "parquet"):
        raise ValueError(f"the {engine} engine reads Parquet logs, not format={format!r}")
    if _is_path(source):
        _check_parquet_path(source, engine)


# ----------------------------------------------------------------------------- Parquet files
@dataclass(frozen=True)
class ParquetFile:
    """One Parquet file of a log: its path (as the engines name it), the global number of its
    first row, its row count and the first row of each row group (relative to the file)."""

    path: str
    first_row: int
    n_rows: int
    row_groups: tuple[tuple[int, int], ...]  # (first row in file, rows) of each row group


def parquet_files(source: str | os.PathLike[str]) -> list[ParquetFile]:
    """The Parquet files of a log in sorted path order, with global row offsets.

    ``source`` is a file or a directory (searched recursively for ``*.parquet``, as
    :func:`pope.pipeline.iter_raw_chunks` does); a URI (``s3://``, ``hdfs://``...) is listed
    with :mod:`pyarrow.fs`. Only the metadata is read.
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    s = os.fspath(source)
    if "://" in s:
        fs, root = pafs.FileSystem.from_uri(s)
        scheme = s.split("://", 1)[0]

        def name(p: str) -> str:
            return f"{scheme}://{p}"
    else:
        fs, root = pafs.LocalFileSystem(), os.path.abspath(s)

        def name(p: str) -> str:
            return p

    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise LogFormatError(f"log file not found: {s}")
    if info.type == pafs.FileType.Directory:
        sel = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        paths = sorted(
            f.path for f in sel if f.type == pafs.FileType.File and f.path.endswith(".parquet")
        )
        if not paths:
            raise LogFormatError(f"no *.parquet files under {s}")
    else:
        paths = [root]
    out, offset = [], 0
    for p in paths:
        try:
            with fs.open_input_file(p) as fh:
                md = pq.ParquetFile(fh).metadata
        except Exception as e:
            raise LogFormatError(f"cannot read {p} as parquet: {e}") from e
        groups, start = [], 0
        for i in range(md.num_row_groups):
            n = md.row_group(i).num_rows
            groups.append((start, n))
            start += n
        out.append(ParquetFile(name(p), offset, md.num_rows, tuple(groups)))
        offset += md.num_rows
    return out


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def _check_parquet_path(source: Any, engine: str) -> None:
    s = os.fspath(source)
    if "://" in s:
        return
    p = Path(s)
    if not p.exists():
        raise LogFormatError(f"log file not found: {p}")
    if detect_format(p) != "parquet":
        raise ValueError(
            f"the {engine} engine reads Parquet logs (a file or a directory of *.parquet); "
            f"{p} is {detect_format(p)}: write it as Parquet (pope.io.write_logs) or evaluate "
            "it with the local engine"
        )


# ----------------------------------------------------------------------------- the map step
def _bucket_stats(frame: Any, spec: EvalSpec, bucket: int, num_buckets: int) -> dict[str, Any]:
    """One output row of a bucket: its pickled statistics, or its pickled error.

    Errors are returned as data rather than raised so that the driver re-raises the worker's
    own exception (not the engine's wrapper), prefixed with the bucket and its rows.
    """
    try:
        frame = frame.drop(columns=[c for c in (_BUCKET,) if c in frame.columns])
        if _ROW in frame.columns and frame[_ROW].isna().any():
            raise LogFormatError(
                "rows without a row number: the engine read a file under a name not in the "
                "log's file list (internal: report this with the path)"
            )
        if _ROW in frame.columns:
            frame = frame.sort_values(_ROW, kind="stable")
        frame = frame.reset_index(drop=True)
        with warnings.catch_warnings():  # a bucket's partial estimates are not reported
            warnings.simplefilter("ignore", InsufficientDataWarning)
            stats = map_partition(frame, spec)
        return {"bucket": bucket, "stats": pickle.dumps(stats), "error": None}
    except Exception as e:
        rows = frame[_ROW].to_numpy() if _ROW in frame.columns else None
        where = _where(bucket, num_buckets, len(frame), rows)
        tb = "".join(traceback.format_exception(e))
        try:
            err = pickle.dumps((e, where, tb))
            pickle.loads(err)
        except Exception:
            err = pickle.dumps((RuntimeError(f"{type(e).__name__}: {e}"), where, tb))
        return {"bucket": bucket, "stats": None, "error": err}


def _where(bucket: int, num_buckets: int, n: int, rows: np.ndarray | None) -> str:
    if rows is None:
        return (
            f"bucket {bucket} of {num_buckets} ({n} rows; row numbers are within the "
            "bucket: the dataset has no __row__ column)"
        )
    shown = ", ".join(str(int(r)) for r in np.sort(rows)[:5])
    more = ", ..." if len(rows) > 5 else ""
    return f"bucket {bucket} of {num_buckets} ({n} rows: {shown}{more})"


def _collect(rows: list[tuple[int, Any, Any]], spec: EvalSpec) -> EvalResult:
    """Merge ``(bucket, stats, error)`` rows on the driver; re-raise the first error."""
    errors = sorted((b, e) for b, _, e in rows if e is not None)
    if errors:
        err, where, tb = pickle.loads(bytes(errors[0][1]))
        msg = str(err.args[0]) if err.args else str(err)
        err.args = (f"{where}: {msg}", *err.args[1:])
        if hasattr(err, "add_note"):
            err.add_note(f"worker traceback:\n{tb}")
        raise err
    parts: list[EvalStats] = [pickle.loads(bytes(s)) for _, s, _ in rows if s is not None]
    if not parts:
        raise LogFormatError("the log has no rows")
    return merge(parts).finalize(spec)


def _need_complete(spec: EvalSpec) -> None:
    if needs_prepass(spec):
        raise ValueError(
            "spec needs a pre-pass (global_max, aspect vocabulary or k-means centers): "
            "complete it with prepare_spec(source, spec) first"
        )


def _check_buckets(num_buckets: int) -> None:
    if (
        isinstance(num_buckets, bool)
        or not isinstance(num_buckets, (int, np.integer))
        or num_buckets < 1
    ):
        raise ValueError(f"num_buckets must be an integer >= 1, got {num_buckets!r}")


# ----------------------------------------------------------------------------- Ray
def _read_row_groups(units: Any) -> Any:
    """Read ``(path, row group, first global row)`` units into one frame with ``__row__``."""
    import pandas as pd
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    frames = []
    for path, rg, first in zip(units["path"], units["row_group"], units["first_row"]):
        path = str(path)
        if "://" in path:
            fs, p = pafs.FileSystem.from_uri(path)
        else:
            fs, p = pafs.LocalFileSystem(), path
        with fs.open_input_file(p) as fh:
            f = pq.ParquetFile(fh).read_row_group(int(rg)).to_pandas()
        frames.append(f.assign(**{_ROW: np.arange(int(first), int(first) + len(f))}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def evaluate_ray(
    dataset: Any,
    spec: EvalSpec,
    *,
    num_buckets: int = 64,
    init: bool = True,
    address: str | None = None,
) -> EvalResult:
    """Evaluate a log on a Ray cluster (``ray[data]``): bucket by prompt, map, merge.

    Parameters
    ----------
    dataset : Parquet path, pandas.DataFrame or ray.data.Dataset
        A path is read row group by row group on the workers, with global row numbers from
        the Parquet metadata; a frame gets its positions as row numbers; a Ray dataset keeps
        a ``__row__`` column if it has one.
    spec : EvalSpec
        Complete (see :func:`pope.pipeline.prepare_spec`).
    num_buckets : int
    init : bool
        Call ``ray.init(address)`` if Ray is not initialised.
    address : str, optional
        Passed to ``ray.init`` (default: a running cluster, else a new local one).
    """
    import pandas as pd

    try:
        import ray
        import ray.data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the ray engine needs Ray: pip install 'pope[ray]'") from e
    _need_complete(spec)
    _check_buckets(num_buckets)
    if _is_path(dataset):
        _check_parquet_path(dataset, "ray")
    if init and not ray.is_initialized():
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    ds: ray.data.Dataset
    if isinstance(dataset, pd.DataFrame):
        frame = dataset.reset_index(drop=True)
        if _ROW not in frame.columns:
            frame = frame.assign(**{_ROW: np.arange(len(frame))})
        ds = ray.data.from_pandas(frame)
    elif _is_path(dataset):
        units = [
            {"path": f.path, "row_group": i, "first_row": f.first_row + start}
            for f in parquet_files(dataset)
            for i, (start, n) in enumerate(f.row_groups)
            if n > 0
        ]
        if not units:
            raise LogFormatError("the log has no rows")
        ds = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
            _read_row_groups, batch_format="pandas", batch_size=1
        )
    else:
        ds = dataset
    pid = spec.columns.prompt_id

    def add_bucket(batch: pd.DataFrame) -> pd.DataFrame:
        return batch.assign(**{_BUCKET: bucket_of(batch[pid], num_buckets)})

    def stats_of_bucket(group: pd.DataFrame) -> pd.DataFrame:
        b = int(group[_BUCKET].iloc[0])
        return pd.DataFrame([_bucket_stats(group, spec, b, num_buckets)])

    out = (
        ds.map_batches(add_bucket, batch_format="pandas")
        .groupby(_BUCKET)
        .map_groups(stats_of_bucket, batch_format="pandas")
        .to_pandas()
    )
    return _collect(list(zip(out["bucket"], out["stats"], out["error"])), spec)


# ----------------------------------------------------------------------------- Spark
def _spark_session(master: str | None) -> Any:
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    b = SparkSession.builder.appName("pope-evaluate")
    if master is not None:
        b = b.master(master)
    if (master or "local").startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        # local workers run this interpreter (so they import this pope); on a cluster the
        # executors' Python is set by the cluster (PYSPARK_PYTHON / spark.pyspark.python)
        b = b.config("spark.pyspark.python", sys.executable)
    return b.getOrCreate()


def _spark_names(path: str) -> tuple[str, ...]:
    """The spellings Spark's ``_metadata.file_path`` may give a file the driver listed
    (``file:/a/b``, ``file:///a/b``, URL-quoted); a row of a file under another name gets no
    row number, which :func:`_bucket_stats` reports."""
    from urllib.parse import quote

    if "://" in path:
        return tuple(dict.fromkeys((path, quote(path, safe=":/"))))
    names = []
    for p in dict.fromkeys((path, quote(path))):
        names += [p, f"file:{p}", f"file://{p}"]
    return tuple(dict.fromkeys(names))


def evaluate_spark(
    df: Any,
    spec: EvalSpec,
    *,
    num_buckets: int = 64,
    master: str | None = None,
) -> EvalResult:
    """Evaluate a log on Spark (``pyspark``): bucket by prompt, map buckets, merge.

    The bucket of a row is ``pmod(xxhash64(string(prompt_id)), num_buckets)``, computed in
    Spark SQL; each bucket of whole prompts goes through :func:`pope.pipeline.map_partition` in
    ``groupBy(bucket).applyInPandas`` on the Python workers; the pickled statistics are merged
    on the driver.

    Parameters
    ----------
    df : Parquet path, pandas.DataFrame or pyspark DataFrame
        A path is read by Spark with global row numbers from the Parquet metadata
        (``_metadata.row_index`` plus the file's offset); a frame gets its positions; a Spark
        DataFrame keeps a ``__row__`` column if it has one.
    spec : EvalSpec
        Complete (see :func:`pope.pipeline.prepare_spec`).
    num_buckets : int
    master : str, optional
        Master URL of a new session (default: the active session, else the builder's default).
    """
    import pandas as pd

    try:
        from pyspark.sql import functions as F
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the spark engine needs pyspark: pip install 'pope[spark]'") from e
    _need_complete(spec)
    _check_buckets(num_buckets)
    if _is_path(df):
        _check_parquet_path(df, "spark")
    spark = _spark_session(master) if (_is_path(df) or isinstance(df, pd.DataFrame)) else None
    pid = spec.columns.prompt_id
    if isinstance(df, pd.DataFrame):
        frame = df.reset_index(drop=True)
        if _ROW not in frame.columns:
            frame = frame.assign(**{_ROW: np.arange(len(frame))})
        assert spark is not None  # started for a frame or a path
        sdf = spark.createDataFrame(frame)
    elif _is_path(df):
        files = [f for f in parquet_files(df) if f.n_rows > 0]
        if not files:
            raise LogFormatError("the log has no rows")
        offsets = F.create_map(
            *[F.lit(x) for f in files for name in _spark_names(f.path) for x in (name, f.first_row)]
        )
        assert spark is not None
        sdf = spark.read.parquet(*[f.path for f in files])
        sdf = sdf.withColumn(
            _ROW, F.element_at(offsets, F.col("_metadata.file_path")) + F.col("_metadata.row_index")
        )
    else:
        sdf = df
    # the bucket in Spark SQL (no Python pass): a stable hash of the id's string; one column
    # has one type, so all rows of a prompt get the same string and the same bucket
    sdf = sdf.withColumn(_BUCKET, F.pmod(F.xxhash64(F.col(pid).cast("string")), F.lit(num_buckets)))

    def stats_of_bucket(key: tuple[Any, ...], group: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame([_bucket_stats(group, spec, int(key[0]), num_buckets)])

    out = (
        sdf.groupBy(_BUCKET)
        .applyInPandas(stats_of_bucket, schema="bucket long, stats binary, error binary")
        .collect()
    )
    return _collect([(r["bucket"], r["stats"], r["error"]) for r in out], spec)
