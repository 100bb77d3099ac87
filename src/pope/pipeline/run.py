"""Evaluation runs: in memory (:func:`evaluate_logs`), streamed (:func:`evaluate_stream`), and
the map step of distributed runs (:func:`map_partition`, :func:`bucket_of`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from pope.io import (
    Format,
    LogFormatError,
    ValidationReport,
    drop_bad_rows,
    iter_raw_chunks,
    read_table,
)
from pope.io.memory import release_arrow_memory
from pope.pipeline.chunks import iter_prompt_chunks, prompt_key
from pope.pipeline.models import clear_model_cache
from pope.pipeline.prepared import chunk_embeddings, prepare, validate_chunk
from pope.pipeline.prepass import complete_spec, fit_centers, needs_prepass
from pope.pipeline.result import EvalResult
from pope.pipeline.spec import EvalSpec
from pope.pipeline.stats import EvalStats, estimates, stats_of

__all__ = ["bucket_of", "evaluate_logs", "evaluate_stream", "map_partition"]


def evaluate_logs(
    source: Any,
    spec: EvalSpec,
    *,
    format: Format | None = None,
    split: str | None = None,
) -> EvalResult:
    """Evaluate a whole log in memory (full estimates: bootstrap intervals, contributions).

    The models of ``spec`` are dropped from the model cache when the run ends
    (:func:`pope.pipeline.models.clear_model_cache`).

    Parameters
    ----------
    source : path, pandas.DataFrame, pyarrow.Table or datasets.Dataset
    spec : EvalSpec
    format, split
        See :func:`pope.io.read_table`.

    Returns
    -------
    EvalResult
    """
    cols = spec.columns
    frame = read_table(
        source,
        format=format,
        split=split,
        text_columns=(cols.prompt_id, cols.prompt, cols.response),
    )
    n_raw = len(frame)
    if spec.kmeans and spec.centers is None:
        kept = drop_bad_rows(validate_chunk(frame, spec, 0), spec.on_error)
        spec = replace(spec, centers=fit_centers(chunk_embeddings(kept, spec, n_raw), spec))
    try:
        prep = prepare(frame, spec, n_raw_rows=n_raw)
    finally:
        clear_model_cache()
    del frame  # its rows are typed in prep: free the table before the estimators run
    release_arrow_memory()
    if prep.feedback.n_responses == 0:
        raise LogFormatError(f"no valid rows to evaluate ({prep.report.summary()})", prep.report)
    res, base = estimates(prep, spec)
    return EvalResult(
        pope=res,
        baselines=base,
        report=prep.report,
        n_prompts=prep.feedback.n_prompts,
        n_responses=prep.feedback.n_responses,
        spec=spec,
        prepared=prep,
    )


def evaluate_stream(
    source: Any,
    spec: EvalSpec,
    *,
    chunk_rows: int = 50_000,
    format: Format | None = None,
    split: str | None = None,
    fit_rows: int = 100_000,
) -> EvalResult:
    """Evaluate a log too large for memory, chunk by chunk, merging statistics.

    A first pass without scoring runs only when needed: for ``global_max`` normalisation (the
    global signal maximum), for aspect labels without ``aspect_names``/``n_aspects`` (the label
    vocabulary), and for k-means aspects without ``spec.centers`` (fitted on the embeddings of
    the first ``fit_rows`` valid rows; in memory, on all rows). The models of ``spec`` are
    dropped from the model cache when the run ends.

    Parameters
    ----------
    source : path (Parquet file or directory, JSON Lines, CSV/TSV, datasets dir) or frame
    spec : EvalSpec
    chunk_rows : int
        Rows read at a time (a prompt spanning a chunk boundary is carried over).
    format, split
        See :func:`pope.io.read_table`.
    fit_rows : int
        Rows used to fit k-means centers when they are not given.

    Returns
    -------
    EvalResult
        Point estimates, standard errors, normal/t intervals and diagnostics equal (up to
        rounding) to :func:`evaluate_logs`; no bootstrap or per-sample contributions.
    """
    cols = spec.columns
    text = (cols.prompt_id, cols.prompt, cols.response)

    def chunks() -> Iterator[tuple[int, Any]]:
        raw = iter_raw_chunks(source, chunk_rows, format=format, split=split, text_columns=text)
        return iter_prompt_chunks(raw, cols.prompt_id)

    n_raw = None
    if spec.aspects == "npy":
        n_raw = sum(len(f) for _, f in chunks())
    if needs_prepass(spec):
        spec = complete_spec(chunks(), spec, fit_rows=fit_rows, n_raw_rows=n_raw)
    total: EvalStats | None = None
    try:
        for offset, frame in chunks():
            s = stats_of(prepare(frame, spec, row_offset=offset, n_raw_rows=n_raw), spec)
            total = s if total is None else total + s
    finally:
        clear_model_cache()
    if total is None:
        raise LogFormatError("the log has no rows")
    return total.finalize(spec)


def map_partition(frame: Any, spec: EvalSpec) -> EvalStats:
    """Statistics of one partition of *whole prompts* (engine-agnostic map step).

    ``spec`` must be complete (see :func:`pope.pipeline.prepare_spec`): fixed aspect vocabulary
    or ``n_aspects``, k-means ``centers`` and ``signal_scale`` where needed, so every partition
    uses the same settings. A ``__row__`` column, if present, gives global row numbers for the
    data report. Models stay cached between the partitions a worker maps.
    """
    if len(frame) == 0:  # an empty partition adds nothing
        return EvalStats(None, {}, ValidationReport(0, {}))
    return stats_of(prepare(frame, spec), spec)


def bucket_of(prompt_ids: Any, num_buckets: int) -> np.ndarray:
    """Stable bucket ``0..num_buckets-1`` of each prompt id (same in every process).

    The bucket is a hash of the id's string under the one id rule (3 and 3.0 are one id).
    Integer and all-string columns (a ``pandas.Series`` or a typed array) are hashed without a
    Python loop; other arrays are normalised element by element.
    """
    import pandas as pd

    s = prompt_ids if isinstance(prompt_ids, pd.Series) else pd.Series(np.asarray(prompt_ids))
    if pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        keys = pd.Series(s.to_numpy().astype(str), dtype=object)
    elif pd.api.types.infer_dtype(s, skipna=False) == "string":
        keys = pd.Series(s.to_numpy(dtype=object), dtype=object)
    else:
        keys = pd.Series([str(prompt_key(v)) for v in s.to_numpy(dtype=object)], dtype=object)
    h = pd.util.hash_pandas_object(keys, index=False).to_numpy()
    return (h % np.uint64(num_buckets)).astype(np.int64)
