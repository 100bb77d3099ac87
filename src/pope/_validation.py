"""Input checks shared by the public API: clear errors naming the argument, never silent NaN.

Every function returns a fresh or read-only-safe array; inputs are never modified.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "MAX_ASPECTS",
    "as_float_array",
    "as_index_array",
    "check_lengths",
    "check_log_prob",
    "check_n_aspects_size",
    "check_prompt_ptr",
    "check_same_length",
    "normalize_id",
    "normalize_ids",
]


#: The prompt-id rule, shared by the in-memory constructors (:mod:`pope.data`), the log
#: reader (:mod:`pope.io`) and streaming (:mod:`pope.pipeline`):
ID_RULE = (
    "prompt ids must be str or int (numpy ints, and floats with an integral value such as "
    "3.0, count as int; bool, NaN/None, dicts, lists and other objects are rejected), and "
    "one log must not mix int and str ids (0 and '0' would silently merge or split)"
)


#: Largest number of aspects C. Coverage arrays are dense (prompts x C) and one-hot aspect rows
#: (responses x C); a label such as 1e9 is an identifier, not a code in 0..C-1, and would
#: otherwise ask for gigabytes. Remap identifiers to codes (``np.unique(labels,
#: return_inverse=True)``) first.
MAX_ASPECTS = 65_536


def check_n_aspects_size(c: int, name: str = "n_aspects", label: bool = False) -> int:
    """``c`` (the number of aspects) if it is at most :data:`MAX_ASPECTS`, else ``ValueError``."""
    if c > MAX_ASPECTS:
        what = (
            f"the largest aspect label is {c - 1}, which would make n_aspects = {c}"
            if label
            else f"{name} = {c}"
        )
        raise ValueError(
            f"{what}, above the supported maximum of {MAX_ASPECTS} aspects (coverage is stored "
            "densely per prompt and aspect). Aspect labels must be codes 0..C-1: remap "
            "identifiers with np.unique(aspect, return_inverse=True)"
        )
    return c


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isnan(v))
    return type(v).__name__ in ("NAType", "NaTType")


def normalize_id(v: Any, name: str = "prompt_id", row: int | None = None) -> int | str:
    """One prompt id under :data:`ID_RULE`: an ``int`` or a ``str``, or a clear error.

    Raises
    ------
    ValueError
        The id is missing (None, NaN, ``pd.NA``).
    TypeError
        The id is a bool, a non-integral or infinite float, or not a str / number.
    """
    at = "" if row is None else f" at row {row}"
    if isinstance(v, (str, np.str_)):
        return str(v)
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}{at} is a bool ({v!r}); {ID_RULE}")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if _is_missing(v):
        raise ValueError(f"{name}{at} is missing ({v!r}); every row needs a prompt id")
    if isinstance(v, (float, np.floating)):
        if np.isfinite(v) and float(v).is_integer():
            return int(v)
        raise TypeError(f"{name}{at} is the float {v!r}; {ID_RULE}")
    raise TypeError(f"{name}{at} has type {type(v).__name__} ({v!r:.60}); {ID_RULE}")


def normalize_ids(values: Any, name: str = "prompt_id", rows: Any = None) -> np.ndarray:
    """A 1-d array of prompt ids under :data:`ID_RULE`: int64, or an object array of str.

    ``rows`` (optional) gives the row number reported for each value (default: position).
    Vectorised for numeric and string arrays; object arrays are checked element by element.

    Raises
    ------
    ValueError
        Missing ids (naming the first row), mixed int and str ids (naming a row of each), or
        not 1-dimensional.
    TypeError
        An id of another type (naming the row).
    """
    arr = values if isinstance(values, np.ndarray) else None
    if arr is None:
        items = list(values)
        arr = np.empty(len(items), dtype=object)
        for i, v in enumerate(items):  # keep each element's type ([0, "0"] stays mixed)
            arr[i] = v
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")

    def row(i: int) -> int:
        return int(rows[i]) if rows is not None else i

    kind = arr.dtype.kind
    if kind == "b":
        raise TypeError(f"{name} is a bool array; {ID_RULE}")
    if kind in "iu":
        return np.ascontiguousarray(arr, dtype=np.int64)
    if kind in "US":
        if kind == "S":
            raise TypeError(f"{name} holds bytes; {ID_RULE}")
        return arr.astype(object)
    if kind == "f":
        nan = np.isnan(arr)
        if nan.any():
            raise ValueError(
                f"{name} at row {row(int(np.flatnonzero(nan)[0]))} is missing (NaN); every row "
                "needs a prompt id"
            )
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TypeError(f"{name} at row {row(i)} is the float {arr[i]!r}; {ID_RULE}")
        return arr.astype(np.int64)
    if arr.size and set(map(type, arr)) == {str}:  # all str (a C-level pass): nothing to convert
        return arr.copy()
    out = [normalize_id(v, name, row(i)) for i, v in enumerate(arr)]
    is_str = np.fromiter((isinstance(v, str) for v in out), dtype=bool, count=len(out))
    if is_str.all() and len(out):
        res = np.empty(len(out), dtype=object)
        res[:] = out
        return res
    if is_str.any():
        i, j = int(np.flatnonzero(~is_str)[0]), int(np.flatnonzero(is_str)[0])
        raise ValueError(
            f"{name} mixes int and str values (row {row(i)} is {out[i]!r}, row {row(j)} is "
            f"{out[j]!r}); use one type for all ids"
        )
    return np.array(out, dtype=np.int64)


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


def check_lengths(prompt_ptr: np.ndarray | None = None, **arrays: np.ndarray | None) -> int:
    """All per-response arrays (and ``prompt_ptr[-1]``) have one length ``N``; returns it.

    When they disagree the error names the argument(s) whose length differs from the
    majority, e.g. ``"signal has length 80, but log_logging, prompt_ptr have 79"``; with no
    majority it lists every length.
    """
    lengths = {k: int(a.shape[0]) for k, a in arrays.items() if a is not None}
    if prompt_ptr is not None and prompt_ptr.shape[0]:
        lengths["prompt_ptr"] = int(prompt_ptr[-1])
    values = list(lengths.values())
    if not values:
        return 0
    if len(set(values)) == 1:
        return values[0]

    def say(k: str) -> str:
        return (
            f"prompt_ptr ends at {lengths[k]}"
            if k == "prompt_ptr"
            else (f"{k} has length {lengths[k]}")
        )

    counts: dict[int, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    if ranked[0][1] > ranked[1][1]:
        n = ranked[0][0]
        odd = [k for k, v in lengths.items() if v != n]
        agree = [k for k, v in lengths.items() if v == n]
        raise ValueError(
            f"{'; '.join(say(k) for k in odd)}, but {', '.join(agree)} "
            f"{'has' if len(agree) == 1 else 'have'} {n} (one entry per response)"
        )
    raise ValueError(
        "per-response lengths disagree: "
        + "; ".join(say(k) for k in lengths)
        + " (every per-response array needs one entry per response, and prompt_ptr must end "
        "at that number)"
    )


def check_log_prob(arr: np.ndarray, name: str) -> None:
    """Log-probabilities must be ``<= 0`` (a probability above 1 is a data error)."""
    if arr.size and (arr > 0).any():
        i = int(np.flatnonzero(arr > 0)[0])
        raise ValueError(
            f"{name} must be log-probabilities (<= 0); element {i} is {arr[i]!r} "
            "(a probability > 1)"
        )


def check_prompt_ptr(
    prompt_ptr: Any, n_responses: int | None, name: str = "prompt_ptr"
) -> np.ndarray:
    """CSR offsets: int64, starts at 0, non-decreasing, ends at ``n_responses``.

    ``n_responses=None`` skips the last check (use :func:`check_lengths` to compare the end
    with the lengths of the per-response arrays and name the one that differs).
    """
    ptr = as_index_array(prompt_ptr, name)
    if ptr.shape[0] < 1:
        raise ValueError(f"{name} must have at least one element (0)")
    if ptr[0] != 0:
        raise ValueError(f"{name} must start at 0, got {ptr[0]}")
    d = np.diff(ptr)
    if (d < 0).any():
        i = int(np.flatnonzero(d < 0)[0])
        raise ValueError(f"{name} must be non-decreasing; {name}[{i + 1}] < {name}[{i}]")
    if n_responses is not None and ptr[-1] != n_responses:
        raise ValueError(f"{name} must end at the number of responses {n_responses}, got {ptr[-1]}")
    return ptr
