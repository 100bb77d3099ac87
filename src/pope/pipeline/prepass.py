"""Settings every chunk must share, found in one pass without scoring: :func:`complete_spec`.

Streamed and distributed runs evaluate each chunk or bucket on its own, so whatever depends on
the whole log is fixed first: the global signal maximum (``global_max`` normalisation), the
aspect label vocabulary (labels without ``aspect_names``/``n_aspects``) and the k-means
centers (fitted on the first ``fit_rows`` valid rows).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from pope.io import LogFormatError, drop_bad_rows, iter_raw_chunks
from pope.pipeline.chunks import iter_prompt_chunks
from pope.pipeline.prepared import chunk_embeddings, validate_chunk
from pope.pipeline.spec import EvalSpec

__all__ = ["complete_spec", "fit_centers", "needs_prepass", "prepare_spec"]


def needs_prepass(spec: EvalSpec) -> bool:
    """Whether ``spec`` lacks a setting that depends on the whole log (see the module)."""
    return (
        (spec.kmeans and spec.centers is None)
        or (spec.reward_normalization == "global_max" and spec.signal_scale is None)
        or (spec.aspects == "labels" and spec.aspect_names is None and spec.n_aspects is None)
    )


def fit_centers(emb: np.ndarray, spec: EvalSpec) -> np.ndarray:
    """k-means centers (``spec.n_aspects`` of them, ``spec.seed``) of the embeddings ``emb``."""
    from pope.aspects import kmeans

    if spec.n_aspects is None:  # EvalSpec requires it with k-means aspects
        raise ValueError("k-means aspects need n_aspects")
    if emb.shape[0] < spec.n_aspects:
        raise LogFormatError(
            f"k-means with {spec.n_aspects} aspects needs at least that many valid rows, "
            f"got {emb.shape[0]}"
        )
    return kmeans(emb, int(spec.n_aspects), seed=spec.seed).centers


def complete_spec(
    chunks: Iterable[tuple[int, Any]], spec: EvalSpec, *, fit_rows: int, n_raw_rows: int | None
) -> EvalSpec:
    """One pass without scoring: global signal max, aspect vocabulary, k-means centers.

    ``chunks`` are ``(first_row_number, frame)`` pairs of whole prompts
    (:func:`pope.pipeline.chunks.iter_prompt_chunks`).
    """
    sig_max = 0.0
    vocab: set[Any] = set()
    max_label = -1
    labels_are_text = False
    sample: list[np.ndarray] = []
    n_sample = 0
    for offset, frame in chunks:
        # validity is judged as in the real pass (same required fields and checks)
        full = validate_chunk(frame, spec, offset)
        kept = drop_bad_rows(full, spec.on_error)
        if len(kept):
            sig_max = max(sig_max, float(kept.signal.max()))
        # the aspect vocabulary is taken over all rows with a label, as in memory
        if spec.aspects == "labels" and full.aspect is not None:
            if full.aspect_names is not None:
                labels_are_text = True
                vocab.update(full.aspect_names)
            elif full.aspect.size:
                max_label = max(max_label, int(full.aspect.max()))
        if spec.kmeans and n_sample < fit_rows and len(kept):
            take = kept.select(np.arange(min(len(kept), fit_rows - n_sample)))
            sample.append(chunk_embeddings(take, spec, n_raw_rows))
            n_sample += len(take)
    upd: dict[str, Any] = {}
    if spec.reward_normalization == "global_max" and spec.signal_scale is None:
        upd["signal_scale"] = sig_max
    if spec.aspects == "labels" and spec.aspect_names is None and spec.n_aspects is None:
        if labels_are_text:
            upd["aspect_names"] = tuple(sorted(vocab))
        else:
            upd["n_aspects"] = max(max_label + 1, 1)
    if spec.kmeans and spec.centers is None:
        if not sample:
            raise LogFormatError("no valid rows to fit the k-means aspects on")
        upd["centers"] = fit_centers(np.concatenate(sample), spec)
    return replace(spec, **upd)


def prepare_spec(
    source: Any, spec: EvalSpec, *, chunk_rows: int = 50_000, fit_rows: int = 100_000
) -> EvalSpec:
    """Complete ``spec`` for distributed runs with one local streaming pass when needed."""
    if not needs_prepass(spec):
        return spec
    cols = spec.columns
    raw = iter_raw_chunks(
        source, chunk_rows, text_columns=(cols.prompt_id, cols.prompt, cols.response)
    )
    return complete_spec(
        iter_prompt_chunks(raw, cols.prompt_id), spec, fit_rows=fit_rows, n_raw_rows=None
    )
