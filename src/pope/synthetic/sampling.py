"""Drawing synthetic logs: seeds, responses per prompt, the human signal of a utility."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = ["SignalNoise", "as_rng", "counts_to_ptr", "draw_signal", "responses_per_prompt"]

SignalNoise = Literal["bernoulli", "none"]


def as_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def counts_to_ptr(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def responses_per_prompt(
    k: int | tuple[int, int] | Sequence[int] | np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Responses per prompt: an int, a ``(lo, hi)`` tuple (uniform, inclusive) or n ints."""
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return np.full(n, int(k), dtype=np.int64)
    if isinstance(k, tuple) and len(k) == 2:
        lo, hi = int(k[0]), int(k[1])
        if not 1 <= lo <= hi:
            raise ValueError(f"k=(lo, hi) needs 1 <= lo <= hi, got {k}")
        return rng.integers(lo, hi + 1, size=n).astype(np.int64)
    arr = np.asarray(k, dtype=np.int64)
    if arr.shape != (n,):
        raise ValueError(f"k must be an int, a (lo, hi) tuple or {n} ints, got shape {arr.shape}")
    if arr.size and arr.min() < 1:
        raise ValueError("every K_i must be >= 1")
    return arr


def draw_signal(utility: np.ndarray, noise: SignalNoise, rng: np.random.Generator) -> np.ndarray:
    if noise == "bernoulli":
        return (rng.random(utility.shape) < utility).astype(np.float64)
    if noise == "none":
        return utility.astype(np.float64).copy()
    raise ValueError(f"noise must be 'bernoulli' or 'none', got {noise!r}")
