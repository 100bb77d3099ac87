r"""The evaluation pipeline: logs from files evaluated in memory, streamed in chunks, or on
Ray / Spark partitions.

One pipeline turns rows of a log into estimates:

1. read and validate the rows (:mod:`pope.io`); bad rows fail or are skipped and reported;
2. assign aspects (given labels, or k-means on embeddings, :mod:`pope.aspects`);
3. score the responses with the target policy (and, if asked, the logging policy) with
   :func:`pope.scoring.score_responses`, unless the log carries the log-probs;
4. estimate with :func:`pope.evaluate` and the baseline estimators.

Every estimate is backed by *mergeable* sufficient statistics (``stats_a + stats_b`` are the
statistics of the union of two disjoint sets of prompts), so the same pipeline runs

- in memory (:func:`evaluate_logs`);
- streamed (:func:`evaluate_stream`): chunks of rows are read one at a time (Parquet row
  batches, JSON Lines line chunks, CSV chunks); the rows of the prompt at the end of a chunk
  are carried over to the next chunk, so no prompt is split and the merged result equals the
  in-memory one (up to float rounding); memory is bounded by the chunk size plus the largest
  prompt, plus one id per prompt seen (the contiguity check below);
- on many machines: :func:`map_partition` turns a partition of *whole prompts* into statistics
  and :func:`merge` adds them. :mod:`pope.engines` (``evaluate_ray``, ``evaluate_spark``,
  ``evaluate_with_engine``) assigns prompts to buckets by a stable hash of ``prompt_id``
  (:func:`bucket_of`), groups by bucket, maps each bucket and merges.

Prompts must be contiguous in a streamed file (all rows of a prompt next to each other, e.g.
sorted by ``prompt_id``); a prompt that reappears after its rows were processed is an error.
Statistics that are not sums (bootstrap intervals, per-response contributions) exist only for
in-memory results.

Modules: :mod:`~pope.pipeline.spec` (:class:`EvalSpec`, the run's options),
:mod:`~pope.pipeline.models` (the model cache and scoring), :mod:`~pope.pipeline.prepared`
(validate, assign aspects and score one chunk), :mod:`~pope.pipeline.stats` (the estimates and
the mergeable :class:`EvalStats`), :mod:`~pope.pipeline.result` (:class:`EvalResult`, table
and JSON), :mod:`~pope.pipeline.chunks` (chunks of whole prompts),
:mod:`~pope.pipeline.prepass` (settings fixed over the whole log) and
:mod:`~pope.pipeline.run` (the runs). The engines live in :mod:`pope.engines`.
"""

from __future__ import annotations

from typing import Any

from pope.io import iter_raw_chunks
from pope.pipeline.chunks import iter_prompt_chunks
from pope.pipeline.models import clear_model_cache
from pope.pipeline.prepared import Prepared, prepare
from pope.pipeline.prepass import prepare_spec
from pope.pipeline.result import EvalResult
from pope.pipeline.run import bucket_of, evaluate_logs, evaluate_stream, map_partition
from pope.pipeline.spec import BASELINES, EvalSpec
from pope.pipeline.stats import EvalStats, merge

__all__ = [
    "BASELINES",
    "EvalResult",
    "EvalSpec",
    "EvalStats",
    "Prepared",
    "bucket_of",
    "clear_model_cache",
    "evaluate_logs",
    "evaluate_stream",
    "iter_prompt_chunks",
    "iter_raw_chunks",
    "map_partition",
    "merge",
    "prepare",
    "prepare_spec",
]


def __getattr__(name: str) -> Any:
    """``evaluate_ray`` / ``evaluate_spark`` live in :mod:`pope.engines` (re-exported here)."""
    if name in ("evaluate_ray", "evaluate_spark"):
        from pope import engines

        return getattr(engines, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
