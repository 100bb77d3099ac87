"""Input checks shared by the public API: clear errors naming the argument, never silent NaN.

Every function returns a fresh or read-only-safe array; inputs are never modified.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "as_float_array",
    "as_index_array",
    "check_log_prob",
    "check_prompt_ptr",
    "check_same_length",
]


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _to_numpy(x: Any) -> Any:
    if _is_torch_tensor(x):
        return x.detach().cpu().numpy()
    return x


def as_float_array(
    x: Any,
    name: str,
    *,
    ndim: int = 1,
    allow_nan: bool = False,
    allow_posinf: bool = False,
    allow_neginf: bool = False,
) -> np.ndarray:
    """``x`` as a C-contiguous float64 array of ``ndim`` dimensions, or a clear error.

    Raises
    ------
    TypeError
        ``x`` is not numeric (strings, objects, booleans).
    ValueError
        Wrong number of dimensions or non-finite values that are not allowed.
    """
    if x is None:
        raise TypeError(f"{name} is required, got None")
    arr = np.asarray(_to_numpy(x))
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not allow_nan and np.isnan(arr).any():
        i = int(np.flatnonzero(np.isnan(arr.ravel()))[0])
        raise ValueError(f"{name} contains NaN (first at flat index {i})")
    if not allow_posinf and np.isposinf(arr).any():
        i = int(np.flatnonzero(np.isposinf(arr.ravel()))[0])
        raise ValueError(f"{name} contains +inf (first at flat index {i})")
    if not allow_neginf and np.isneginf(arr).any():
        i = int(np.flatnonzero(np.isneginf(arr.ravel()))[0])
        raise ValueError(f"{name} contains -inf (first at flat index {i})")
    return arr


def as_index_array(x: Any, name: str, *, ndim: int = 1) -> np.ndarray:
    """``x`` as a C-contiguous int64 array; floats are accepted only if integral."""
    if x is None:
        raise TypeError(f"{name} is required, got None")
    arr = np.asarray(_to_numpy(x))
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        return np.ascontiguousarray(arr, dtype=np.int64)
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.bool_:
        if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
            raise TypeError(f"{name} must hold integers, got non-integral floats")
        return np.ascontiguousarray(arr, dtype=np.int64)
    raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")


def check_same_length(n: int, **arrays: np.ndarray | None) -> None:
    """Raise ``ValueError`` naming each array whose first dimension is not ``n``."""
    for name, arr in arrays.items():
        if arr is not None and arr.shape[0] != n:
            raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")


def check_log_prob(arr: np.ndarray, name: str) -> None:
    """Log-probabilities must be ``<= 0`` (a probability above 1 is a data error)."""
    if arr.size and (arr > 0).any():
        i = int(np.flatnonzero(arr > 0)[0])
        raise ValueError(
            f"{name} must be log-probabilities (<= 0); element {i} is {arr[i]!r} "
            "(a probability > 1)"
        )


def check_prompt_ptr(prompt_ptr: Any, n_responses: int, name: str = "prompt_ptr") -> np.ndarray:
    """CSR offsets: int64, starts at 0, non-decreasing, ends at ``n_responses``."""
    ptr = as_index_array(prompt_ptr, name)
    if ptr.shape[0] < 1:
        raise ValueError(f"{name} must have at least one element (0)")
    if ptr[0] != 0:
        raise ValueError(f"{name} must start at 0, got {ptr[0]}")
    d = np.diff(ptr)
    if (d < 0).any():
        i = int(np.flatnonzero(d < 0)[0])
        raise ValueError(f"{name} must be non-decreasing; {name}[{i + 1}] < {name}[{i}]")
    if ptr[-1] != n_responses:
        raise ValueError(f"{name} must end at the number of responses {n_responses}, got {ptr[-1]}")
    return ptr
