"""The causal LMs that score a log: a small process-wide cache and the scoring call.

A streamed run scores every chunk with the same target (and logging) model, and a Ray/Spark
worker maps many buckets: the models are loaded once per process and kept in a cache of at
most :data:`MODEL_CACHE_SIZE` entries (least recently used first out). The evaluation runs of
this package (:func:`pope.pipeline.evaluate_logs`, :func:`pope.pipeline.evaluate_stream`,
:func:`pope.paired.evaluate_policies`) empty it when they finish, so that a process does not
keep models it no longer uses; :func:`clear_model_cache` does it by hand.
"""

from __future__ import annotations

import functools
import gc
import sys
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from pope.io import LogData
    from pope.pipeline.spec import EvalSpec

__all__ = [
    "MODEL_CACHE_SIZE",
    "clear_model_cache",
    "load_model",
    "model_cache_info",
    "score_with_model",
]

#: Models kept loaded at once: a target and a logging policy.
MODEL_CACHE_SIZE = 2


@functools.lru_cache(maxsize=MODEL_CACHE_SIZE)
def _load(path: str, device: str | None, dtype: str) -> tuple[Any, Any]:
    from pope.scoring import load_causal_lm

    return load_causal_lm(path, device=device, dtype=dtype)


def load_model(path: str, spec: EvalSpec) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the model directory ``path`` on ``spec.device``/``spec.dtype``.

    Loaded once per process and cached (at most :data:`MODEL_CACHE_SIZE` models).
    """
    return _load(str(path), spec.device, str(spec.dtype))


def model_cache_info() -> Any:
    """Hits, misses and size of the model cache (``functools.lru_cache`` statistics)."""
    return _load.cache_info()


def clear_model_cache() -> None:
    """Drop every cached model (and the CUDA memory torch keeps for them, if any)."""
    if _load.cache_info().currsize == 0:
        return
    _load.cache_clear()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def score_with_model(
    path: str, data: LogData, spec: EvalSpec, tokens: bool, desc: str
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """``(log pi(y|x) per row, per-token log-probs or None)`` of ``data`` under ``path``.

    Rows in ``data`` order; the per-token log-probs only when ``tokens`` (``token_mean``
    weighting). Options from ``spec`` (:func:`pope.scoring.score_responses`).
    """
    from pope.scoring import score_responses

    model, tok = load_model(path, spec)
    out = score_responses(
        model,
        tok,
        data.prompt or [],
        data.response or [],
        batch_tokens=spec.batch_tokens,
        return_token_logprobs=tokens,
        chat_template=spec.chat_template,
        add_eos=spec.add_eos,
        head=spec.head,
        progress=spec.progress,
        desc=desc,
    )
    if tokens:
        seq, tok_lp = cast("tuple[np.ndarray, list[np.ndarray]]", out)
        return seq, tok_lp
    return cast("np.ndarray", out), None
