r"""A chunk of whole prompts made ready for the estimators: validate, assign aspects, score.

:func:`prepare` turns a frame of rows (a whole log, a streamed chunk or a Ray/Spark bucket)
into a :class:`Prepared`: the valid rows (bad ones fail or are skipped and reported), their
aspects (given labels, or k-means on embeddings with fixed centers), the target (and, if asked,
the logging) log-probabilities, grouped by prompt into a :class:`~pope.data.LoggedFeedback`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pope.io import LogData, LogFormatError, ValidationReport, drop_bad_rows, validate_logs
from pope.pipeline.models import score_with_model
from pope.pipeline.spec import EvalSpec

__all__ = ["Prepared", "chunk_embeddings", "prepare", "validate_chunk"]


@dataclass
class Prepared:
    """A chunk of valid rows made ready for the estimators.

    Attributes
    ----------
    data : LogData
        The kept rows (original order).
    feedback : LoggedFeedback
        Grouped by prompt.
    log_target : (N,) float64
        :math:`\\log\\pi_\\theta(y|x)` aligned with ``feedback``.
    token_log_target : (T,) float64 or None
        Per-token target log-probs aligned with ``feedback.token_ptr`` (``token_mean``).
    report : ValidationReport
    embeddings : (N, D) float64 or None
        k-means aspects: the rows' embeddings (``data`` order).
    """

    data: LogData
    feedback: Any
    log_target: np.ndarray
    token_log_target: np.ndarray | None
    report: ValidationReport
    embeddings: np.ndarray | None = None


def chunk_embeddings(data: LogData, spec: EvalSpec, n_raw_rows: int | None = None) -> np.ndarray:
    """Embeddings of the kept rows (aligned with ``data``) from ``spec.aspects``' source.

    The ``embedding`` column, the rows ``data.rows`` of a ``.npy`` file (memory-mapped; it
    must have ``n_raw_rows`` rows when that is given), or a local embedding model.
    """
    if spec.aspects == "embedding":
        if data.embedding is None:
            raise LogFormatError(
                f"aspects from embeddings need an embedding column "
                f"({spec.columns.embedding!r}); it is missing or empty"
            )
        return data.embedding
    if spec.aspects == "npy":
        from pope.aspects import load_embeddings

        if spec.embeddings_path is None:  # EvalSpec requires it with aspects="npy"
            raise ValueError("aspects='npy' needs embeddings_path")
        emb = np.load(spec.embeddings_path, mmap_mode="r", allow_pickle=False)
        if emb.ndim != 2:
            raise LogFormatError(f"embeddings {spec.embeddings_path} must be 2-dimensional")
        if n_raw_rows is not None and emb.shape[0] != n_raw_rows:
            load_embeddings(str(spec.embeddings_path), n_raw_rows)  # raises with a clear message
        if len(data) and int(data.rows.max()) >= emb.shape[0]:
            raise LogFormatError(
                f"embeddings {spec.embeddings_path} have {emb.shape[0]} rows but the log has "
                f"at least {int(data.rows.max()) + 1}"
            )
        out = np.asarray(emb[data.rows], dtype=np.float64)
        if not np.isfinite(out).all():
            raise LogFormatError(f"embeddings {spec.embeddings_path} contain NaN or inf")
        return out
    from pope.aspects import embed_texts

    if spec.embedding_model is None:
        raise ValueError("aspects='embedding' needs embedding_model (--embedding-model)")
    return embed_texts(
        data.response or [], spec.embedding_model, device=spec.device, progress=spec.progress
    )


def validate_chunk(frame: Any, spec: EvalSpec, row_offset: int) -> LogData:
    """All rows of ``frame`` checked with the fields ``spec`` needs (:func:`pope.io.validate_logs`).

    A ``__row__`` column (Ray/Spark buckets) gives the global row numbers, otherwise the rows
    are numbered from ``row_offset``.

    Raises
    ------
    LogFormatError
        No target log-probabilities (neither a policy nor a ``log_target`` column), or no
        aspects where they are needed.
    """
    cols = spec.columns
    if "__row__" in frame.columns:
        row_offset = 0
    data = validate_logs(
        frame,
        columns=cols,
        require_text=spec.policy is not None
        or spec.logging_model is not None
        or spec.aspects == "model",
        require_log_logging=spec.logging_model is None,
        aspect_names=spec.aspect_names,
        n_aspects=spec.n_aspects if spec.aspects == "labels" else None,
        use_aspects=spec.aspects == "labels",
        row_offset=row_offset,
    )
    if "__row__" in frame.columns:  # global row numbers carried by the frame (Ray/Spark)
        rows = frame["__row__"].to_numpy(dtype=np.int64)
        rep = ValidationReport(
            data.report.n_rows, {k: rows[v] for k, v in data.report.issues.items()}
        )
        data = replace(data, rows=rows, report=rep)
    if spec.policy is None and data.log_target is None:
        raise LogFormatError(
            f"no target policy: give a policy model directory, or a column "
            f"{cols.log_target!r} with precomputed log pi_theta(y|x)"
        )
    if (
        spec.aspects == "labels"
        and data.aspect is None
        and data.aspect_probs is None
        and spec.lam != 0
    ):
        raise LogFormatError(
            f"no aspects: the log has no {cols.aspect!r} (or {cols.aspect_probs!r}) column; "
            "assign aspects from embeddings (k-means) or evaluate relevance only (no aspects)"
        )
    return data


def _assign_aspects(
    data: LogData, spec: EvalSpec, n_raw_rows: int | None
) -> tuple[np.ndarray | None, np.ndarray | None, int | None, np.ndarray | None]:
    """``(labels, probs, C, embeddings)``: k-means on the rows' embeddings, or the labels."""
    aspect = probs = emb = None
    n_aspects = spec.n_aspects
    if spec.kmeans and len(data):
        from pope.aspects import assign_aspects

        emb = chunk_embeddings(data, spec, n_raw_rows)
        if spec.centers is None or n_aspects is None:
            raise ValueError("k-means centers are not fitted (internal: fit them first)")
        a = assign_aspects(
            emb,
            int(n_aspects),
            centers=spec.centers,
            soft=spec.soft_aspects,
            temperature=spec.temperature,
        )
        aspect, probs = (None, a.probs) if spec.soft_aspects else (a.labels, None)
    elif spec.aspects == "labels":
        n_aspects = data.n_aspects if spec.n_aspects is None else spec.n_aspects
    no_labels = spec.aspects == "labels" and data.aspect is None and data.aspect_probs is None
    if spec.aspects == "none" or (spec.lam == 0 and no_labels):
        # one aspect: the diversity is 0, the total is the relevance (lambda = 0 needs none)
        aspect, probs, n_aspects = np.zeros(len(data), dtype=np.int64), None, 1
    return aspect, probs, n_aspects, emb


def _log_probs(data: LogData, spec: EvalSpec) -> tuple[Any, Any, Any, Any]:
    """``(log_target, token_log_target, log_logging, token_log_logging)`` in ``data`` order.

    Scored with the models of ``spec`` where given, else read from the log (``None`` for the
    logging side means: the logged columns).
    """
    tokens = spec.weighting == "token_mean"
    log_logging: np.ndarray | None = None
    tok_logging: list[np.ndarray] | None = None
    log_target: np.ndarray | None
    if spec.logging_model is not None:
        log_logging, tok_logging = score_with_model(
            spec.logging_model, data, spec, tokens, "logging"
        )
    if spec.policy is not None:
        log_target, tok_target = score_with_model(spec.policy, data, spec, tokens, "target")
    else:
        log_target, tok_target = data.log_target, None
        if tokens:
            raise LogFormatError(
                "weighting='token_mean' needs per-token target log-probs: give a policy model"
            )
    if tokens and tok_logging is None and data.token_log_logging is None:
        raise LogFormatError(
            "weighting='token_mean' needs per-token logging log-probs: a token_log_logging "
            "column or a logging model"
        )
    return log_target, tok_target, log_logging, tok_logging


def _aligned_tokens(tok_target: list[np.ndarray], fb: Any) -> np.ndarray:
    """Per-token target log-probs in feedback order, checked against ``fb.token_ptr``."""
    tl = [tok_target[j] for j in fb.row_index]
    counts = np.array([t.shape[0] for t in tl], dtype=np.int64)
    if fb.token_ptr is None or not np.array_equal(counts, np.diff(fb.token_ptr)):
        raise LogFormatError(
            "per-token target and logging log-probs have different token counts: the "
            "logging log-probs must come from the same tokenizer as the policy"
        )
    return np.concatenate(tl) if tl else np.zeros(0)


def prepare(
    frame: Any, spec: EvalSpec, *, row_offset: int = 0, n_raw_rows: int | None = None
) -> Prepared:
    """Validate, assign aspects and score one set of whole prompts.

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows of whole prompts (a column ``__row__``, if present, gives the global row numbers).
    spec : EvalSpec
    row_offset : int
        Global number of the first row of ``frame``.
    n_raw_rows : int, optional
        Rows in the whole log (to check a ``.npy`` embeddings file).

    Raises
    ------
    LogFormatError
        Bad rows with ``on_error="fail"``, missing columns, inconsistent inputs.
    """
    data = drop_bad_rows(validate_chunk(frame, spec, row_offset), spec.on_error)
    report = data.report
    aspect, probs, n_aspects, emb = _assign_aspects(data, spec, n_raw_rows)
    log_target, tok_target, log_logging, tok_logging = _log_probs(data, spec)
    tokens = spec.weighting == "token_mean"
    if spec.signal_scale is not None:
        data = replace(
            data,
            signal=data.signal / spec.signal_scale
            if spec.signal_scale > 0
            else np.zeros_like(data.signal),
        )
    fb = data.to_feedback(
        log_logging=log_logging,
        aspect=aspect,
        aspect_probs=probs,
        n_aspects=n_aspects,
        token_log_logging=tok_logging,
        use_token_log_logging=tokens,
    )
    lt = np.asarray(log_target, dtype=np.float64)[fb.row_index]
    tt = _aligned_tokens(tok_target, fb) if tokens else None
    return Prepared(
        data=data, feedback=fb, log_target=lt, token_log_target=tt, report=report, embeddings=emb
    )
