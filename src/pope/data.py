"""The logged-feedback data model: prompts with ragged lists of responses (CSR, never padded).

A log holds ``n`` prompts; prompt ``i`` has ``K_i >= 0`` logged responses stored contiguously at
rows ``prompt_ptr[i]:prompt_ptr[i+1]`` of every per-response array.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pope._validation import (
    as_float_array,
    as_index_array,
    check_lengths,
    check_log_prob,
    check_n_aspects_size,
    check_prompt_ptr,
    check_same_length,
    normalize_ids,
)
from pope.options import RewardNormalization

__all__ = ["LoggedFeedback", "RewardNormalization", "RowGroups", "group_rows", "normalize_signal"]


@dataclass(frozen=True)
class RowGroups:
    """Rows grouped by prompt id (:func:`group_rows`).

    Attributes
    ----------
    order : (N,) int64
        Stored row ``r`` is input row ``order[r]``: prompts in order of first appearance,
        each prompt's rows in input order.
    prompt_ptr : (G+1,) int64
        The rows of prompt ``g`` are ``order[prompt_ptr[g]:prompt_ptr[g+1]]``.
    group : (N,) int64
        Prompt (``0..G-1``, numbered in order of first appearance) of each *input* row.
    first : (G,) int64
        The input row where each prompt first appears (``ids[first]`` are the prompt ids).
    """

    order: np.ndarray
    prompt_ptr: np.ndarray
    group: np.ndarray
    first: np.ndarray


def group_rows(ids: Sequence[Hashable] | np.ndarray) -> RowGroups:
    """Group rows by id: prompts in order of first appearance, rows in input order.

    Ids compare as Python objects compare (``==`` and ``hash``). A numeric array is grouped
    with :func:`numpy.unique`; anything else (str/object arrays, lists of hashables) with a
    dict, which is faster for Python objects and accepts any hashable id.

    Parameters
    ----------
    ids : (N,) array or sequence of hashable ids

    Returns
    -------
    RowGroups
    """
    if isinstance(ids, np.ndarray) and ids.dtype != object:
        uniq, first, inv = np.unique(ids, return_index=True, return_inverse=True)
        rank = np.empty(uniq.shape[0], dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(uniq.shape[0])
        group = rank[inv.ravel()]
        first = np.sort(first).astype(np.int64)
    else:
        keys = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        # distinct ids in order of first appearance, numbered; then one C-level lookup a row
        index: dict[Hashable, int] = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        group = np.fromiter(map(index.__getitem__, keys), dtype=np.int64, count=len(keys))
        # prompts are numbered by first appearance: a row opens one when it exceeds all before
        seen = np.maximum.accumulate(np.concatenate([[-1], group]))[:-1]
        first = np.flatnonzero(group > seen).astype(np.int64)
    order = np.argsort(group, kind="stable").astype(np.int64)
    counts = np.bincount(group, minlength=first.shape[0])
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return RowGroups(order=order, prompt_ptr=ptr, group=group.astype(np.int64), first=first)


def _segments(prompt_ptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(prompt_ptr.shape[0] - 1), np.diff(prompt_ptr))


def _segment_max(values: np.ndarray, prompt_ptr: np.ndarray) -> np.ndarray:
    out = np.zeros(prompt_ptr.shape[0] - 1)
    nonempty = np.diff(prompt_ptr) > 0
    if values.size:
        out[nonempty] = np.maximum.reduceat(values, prompt_ptr[:-1][nonempty])
    return out


def normalize_signal(
    signal: np.ndarray, prompt_ptr: np.ndarray, method: RewardNormalization = "max"
) -> np.ndarray:
    r"""Map raw human signals ``u >= 0`` to rewards in ``[0, 1]``.

    ``"max"``: :math:`r = u / \max_{k} u_{ik}` within the prompt (0 when the max is 0);
    ``"log1p"``: :math:`r = \log(1+u) / \max_k \log(1+u_{ik})`;
    ``"rank"``: average rank within the prompt scaled to ``[0, 1]``
    (:math:`(\mathrm{rank}-1)/(K_i-1)`, 1 for ``K_i = 1``);
    ``"global_max"``: :math:`u / \max u` over the whole log;
    ``"none"``: as given (must already lie in ``[0, 1]``).
    """
    signal = as_float_array(signal, "signal")
    if method == "none":
        if signal.size and (signal.min() < 0 or signal.max() > 1):
            raise ValueError("signal must lie in [0, 1] with reward normalization 'none'")
        return signal.copy()
    if method == "global_max":
        mx = signal.max() if signal.size else 0.0
        return signal / mx if mx > 0 else np.zeros_like(signal)
    seg = _segments(prompt_ptr)
    if method in ("max", "log1p"):
        v = signal if method == "max" else np.log1p(signal)
        mx = _segment_max(v, prompt_ptr)[seg]
        return np.where(mx > 0, v / np.where(mx > 0, mx, 1.0), 0.0)
    if method == "rank":
        out = np.empty_like(signal)
        for i in range(prompt_ptr.shape[0] - 1):
            lo, hi = prompt_ptr[i], prompt_ptr[i + 1]
            k = hi - lo
            if k == 0:
                continue
            if k == 1:
                out[lo] = 1.0
                continue
            v = signal[lo:hi]
            order = np.argsort(v, kind="stable")
            ranks = np.empty(k)
            ranks[order] = np.arange(k, dtype=np.float64)
            # average the ranks of ties
            _, inv = np.unique(v, return_inverse=True)
            sums = np.bincount(inv, weights=ranks)
            cnt = np.bincount(inv)
            out[lo:hi] = (sums / cnt)[inv] / (k - 1)
        return out
    raise ValueError(
        "reward normalization must be one of 'max', 'log1p', 'rank', 'global_max', 'none', "
        f"got {method!r}"
    )


@dataclass(frozen=True, eq=False)
class LoggedFeedback:
    r"""Logged responses grouped by prompt, with human signals, aspects and logging propensities.

    Parameters
    ----------
    prompt_ptr : (n+1,) int64
        CSR offsets: responses of prompt ``i`` are rows ``prompt_ptr[i]:prompt_ptr[i+1]``.
    signal : (N,) float64
        Human signal :math:`u_{ik} \ge 0` (upvotes, relevance grade, ...).
    log_logging : (N,) float64
        Sequence-level logging log-propensity :math:`\log \pi_0(y_{ik} \mid x_i) \le 0`.
    aspect : (N,) int64, optional
        Hard aspect label :math:`a_{ik} \in \{0..C-1\}`.
    aspect_probs : (N, C) float64, optional
        Soft aspect rows :math:`q_{ik}` on the simplex (each row sums to 1 within 1e-6).
    n_aspects : int, optional
        ``C``; inferred from ``aspect_probs`` or ``max(aspect) + 1`` when omitted.
    token_log_logging : (T,) float64, optional
        Per-token logging log-probs, response ``j`` owning ``token_ptr[j]:token_ptr[j+1]``.
    token_ptr : (N+1,) int64, optional
    position : (N,) int64, optional
        List position of each response (for slate estimators), ``>= 0``.
    prompt_ids : (n,) array, optional
        The user's prompt identifiers, in prompt order.
    row_index : (N,) int64, optional
        For each stored response, its row in the user's original input (set by the
        constructors that group rows by prompt). Use it to align arrays computed on the
        original rows: ``aligned = original[fb.row_index]``.
    """

    prompt_ptr: np.ndarray
    signal: np.ndarray
    log_logging: np.ndarray
    aspect: np.ndarray | None = None
    aspect_probs: np.ndarray | None = None
    n_aspects: int | None = None
    token_log_logging: np.ndarray | None = None
    token_ptr: np.ndarray | None = None
    position: np.ndarray | None = None
    prompt_ids: np.ndarray | None = None
    row_index: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        signal = as_float_array(self.signal, "signal")
        n = signal.shape[0]
        if n and signal.min() < 0:
            raise ValueError(f"signal must be >= 0, got minimum {signal.min()!r}")
        set_(self, "signal", signal)
        ptr = check_prompt_ptr(self.prompt_ptr, None)
        ll = as_float_array(self.log_logging, "log_logging")
        check_lengths(ptr, signal=signal, log_logging=ll)
        set_(self, "prompt_ptr", ptr)
        check_log_prob(ll, "log_logging")
        set_(self, "log_logging", ll)
        self._validate_aspects(n)
        self._validate_tokens(n)
        if self.position is not None:
            pos = as_index_array(self.position, "position")
            check_same_length(n, position=pos)
            if pos.size and pos.min() < 0:
                raise ValueError("position must be >= 0")
            set_(self, "position", pos)
        if self.prompt_ids is not None:
            ids = np.asarray(self.prompt_ids)
            if ids.shape != (self.n_prompts,):
                raise ValueError(f"prompt_ids must have shape ({self.n_prompts},), got {ids.shape}")
            set_(self, "prompt_ids", ids)
        if self.row_index is not None:
            ri = as_index_array(self.row_index, "row_index")
            check_same_length(n, row_index=ri)
            set_(self, "row_index", ri)
        for name in (
            "prompt_ptr",
            "signal",
            "log_logging",
            "aspect",
            "aspect_probs",
            "token_log_logging",
            "token_ptr",
            "position",
            "row_index",
        ):
            arr = getattr(self, name)
            if arr is not None and arr.flags.writeable:
                # own a private copy before freezing it: the caller's array stays as it was
                arr = arr.copy()
                arr.flags.writeable = False
                set_(self, name, arr)

    def _validate_aspects(self, n: int) -> None:
        set_ = object.__setattr__
        c = self.n_aspects
        if c is not None and (not isinstance(c, (int, np.integer)) or isinstance(c, bool)):
            raise TypeError(f"n_aspects must be an int, got {type(c).__name__}")
        if c is not None and c < 1:
            raise ValueError(f"n_aspects must be >= 1, got {c}")
        if c is not None:
            check_n_aspects_size(int(c))
        if self.aspect is not None and self.aspect_probs is not None:
            raise ValueError(
                "give either aspect (hard labels) or aspect_probs (soft rows), not both"
            )
        if self.aspect is not None:
            a = as_index_array(self.aspect, "aspect")
            check_same_length(n, aspect=a)
            if a.size and a.min() < 0:
                raise ValueError(f"aspect labels must be >= 0, got {a.min()}")
            if c is None:
                c = check_n_aspects_size(int(a.max()) + 1, label=True) if a.size else 1
            elif a.size and a.max() >= c:
                raise ValueError(f"aspect label {a.max()} out of range for n_aspects={c}")
            set_(self, "aspect", a)
        elif self.aspect_probs is not None:
            q = as_float_array(self.aspect_probs, "aspect_probs", ndim=2)
            check_same_length(n, aspect_probs=q)
            if c is None:
                c = q.shape[1]
            elif q.shape[1] != c:
                raise ValueError(f"aspect_probs has {q.shape[1]} columns, n_aspects={c}")
            if q.size and q.min() < 0:
                raise ValueError("aspect_probs must be >= 0")
            if q.size and np.abs(q.sum(axis=1) - 1).max() > 1e-6:
                i = int(np.argmax(np.abs(q.sum(axis=1) - 1)))
                raise ValueError(f"aspect_probs rows must sum to 1; row {i} sums to {q[i].sum()!r}")
            set_(self, "aspect_probs", q)
        set_(self, "n_aspects", None if c is None else int(c))

    def _validate_tokens(self, n: int) -> None:
        if (self.token_log_logging is None) != (self.token_ptr is None):
            raise ValueError("token_log_logging and token_ptr must be given together")
        if self.token_log_logging is None:
            return
        t = as_float_array(self.token_log_logging, "token_log_logging")
        check_log_prob(t, "token_log_logging")
        ptr = check_prompt_ptr(self.token_ptr, t.shape[0], "token_ptr")
        if ptr.shape[0] != n + 1:
            raise ValueError(f"token_ptr must have {n + 1} elements, got {ptr.shape[0]}")
        object.__setattr__(self, "token_log_logging", t)
        object.__setattr__(self, "token_ptr", ptr)

    # ------------------------------------------------------------------ properties
    @property
    def n_prompts(self) -> int:
        """Number of prompts ``n``."""
        return int(self.prompt_ptr.shape[0] - 1)

    @property
    def n_responses(self) -> int:
        """Number of logged responses ``N = sum_i K_i``."""
        return int(self.signal.shape[0])

    @property
    def counts(self) -> np.ndarray:
        """Responses per prompt ``K_i``."""
        return np.diff(self.prompt_ptr)

    @property
    def prompt_index(self) -> np.ndarray:
        """The prompt of each response, ``(N,)`` int64."""
        return _segments(self.prompt_ptr)

    @property
    def token_counts(self) -> np.ndarray | None:
        """Tokens per response ``T_ik`` when per-token logging log-probs are present."""
        return None if self.token_ptr is None else np.diff(self.token_ptr)

    def rewards(self, normalize: RewardNormalization = "max") -> np.ndarray:
        """Rewards in ``[0, 1]`` from the signals (see :func:`normalize_signal`)."""
        return normalize_signal(self.signal, self.prompt_ptr, normalize)

    def aspect_rows(self) -> np.ndarray:
        """Soft aspect rows ``(N, C)`` (one-hot for hard labels)."""
        if self.aspect_probs is not None:
            return self.aspect_probs
        if self.aspect is None:
            raise ValueError("this LoggedFeedback has no aspects (aspect or aspect_probs)")
        assert self.n_aspects is not None  # set with aspect (_validate_aspects)
        q = np.zeros((self.n_responses, self.n_aspects))
        q[np.arange(self.n_responses), self.aspect] = 1.0
        return q

    def select_prompts(self, prompts: Any) -> LoggedFeedback:
        """A new ``LoggedFeedback`` holding only the given prompts (indices), in that order."""
        idx = as_index_array(prompts, "prompts")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_prompts):
            raise ValueError(f"prompt indices must lie in [0, {self.n_prompts})")
        counts = self.counts[idx]
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = (
            np.concatenate([np.arange(self.prompt_ptr[i], self.prompt_ptr[i + 1]) for i in idx])
            if idx.size
            else np.zeros(0, dtype=np.int64)
        ).astype(np.int64)
        tok, tptr = None, None
        if self.token_ptr is not None:
            tc = np.diff(self.token_ptr)[rows]
            tptr = np.concatenate([[0], np.cumsum(tc)]).astype(np.int64)
            tll, tp = self.token_log_logging, self.token_ptr
            assert tll is not None  # given with token_ptr (_validate_tokens)
            tok = np.concatenate([tll[tp[r] : tp[r + 1]] for r in rows]) if rows.size else None
            tok = np.zeros(0) if tok is None else tok

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return replace(
            self,
            prompt_ptr=ptr,
            signal=self.signal[rows],
            log_logging=self.log_logging[rows],
            aspect=take(self.aspect),
            aspect_probs=take(self.aspect_probs),
            token_log_logging=tok,
            token_ptr=tptr,
            position=take(self.position),
            prompt_ids=None if self.prompt_ids is None else self.prompt_ids[idx],
            row_index=rows if self.row_index is None else self.row_index[rows],
        )

    def split(self, n_shards: int) -> list[LoggedFeedback]:
        """Split by prompts into ``n_shards`` contiguous shards (for merge/stream tests)."""
        if n_shards < 1:
            raise ValueError(f"n_shards must be >= 1, got {n_shards}")
        return [self.select_prompts(p) for p in np.array_split(np.arange(self.n_prompts), n_shards)]

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_arrays(
        cls,
        *,
        prompt_id: Any,
        signal: Any,
        log_logging: Any,
        aspect: Any = None,
        aspect_probs: Any = None,
        n_aspects: int | None = None,
        position: Any = None,
        token_log_logging: Any = None,
    ) -> LoggedFeedback:
        """Build from one row per response, grouping rows by ``prompt_id``.

        Prompts keep the order of their first appearance and responses their input order;
        ``row_index`` records where each stored row came from.

        Parameters
        ----------
        prompt_id : (N,) array of str or int ids
            One rule for ids everywhere (:data:`pope._validation.ID_RULE`): str or int
            (integral floats count as int); missing (None/NaN), bool, dict/list ids and a
            mix of int and str ids raise, naming a row.
        signal, log_logging : (N,) float
        aspect : (N,) int, optional
        aspect_probs : (N, C) float, optional
        position : (N,) int, optional
        token_log_logging : sequence of N 1-d float arrays, optional
        """
        if prompt_id is None:
            raise TypeError("prompt_id is required, got None")
        if np.ndim(prompt_id) == 0 or isinstance(prompt_id, (str, bytes, dict)):
            raise TypeError(f"prompt_id must be a 1-d array of ids, got {type(prompt_id).__name__}")
        pid = normalize_ids(prompt_id, "prompt_id")
        n = pid.shape[0]
        sig = as_float_array(signal, "signal")
        ll = as_float_array(log_logging, "log_logging")
        check_lengths(prompt_id=pid, signal=sig, log_logging=ll)
        groups = group_rows(pid)
        order, ptr, ids = groups.order, groups.prompt_ptr, pid[groups.first]

        def take(a: Any, name: str, ndim: int = 1, index: bool = False) -> np.ndarray | None:
            if a is None:
                return None
            arr = as_index_array(a, name) if index else as_float_array(a, name, ndim=ndim)
            check_lengths(prompt_id=pid, **{name: arr})
            return arr[order]

        tok, tptr = None, None
        if token_log_logging is not None:
            seqs = list(token_log_logging)
            if len(seqs) != n:
                raise ValueError(f"token_log_logging has {len(seqs)} entries, expected {n}")
            arrs = [as_float_array(seqs[j], f"token_log_logging[{j}]") for j in order]
            tptr = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrs])]).astype(np.int64)
            tok = np.concatenate(arrs) if arrs else np.zeros(0)
        return cls(
            prompt_ptr=ptr,
            signal=sig[order],
            log_logging=ll[order],
            aspect=take(aspect, "aspect", index=True),
            aspect_probs=take(aspect_probs, "aspect_probs", ndim=2),
            n_aspects=n_aspects,
            token_log_logging=tok,
            token_ptr=tptr,
            position=take(position, "position", index=True),
            prompt_ids=ids,
            row_index=order,
        )

    @classmethod
    def from_pandas(
        cls,
        df: Any,
        *,
        prompt_id: str = "prompt_id",
        signal: str = "signal",
        log_logging: str = "log_logging",
        aspect: str | None = "aspect",
        aspect_probs: str | list[str] | None = None,
        n_aspects: int | None = None,
        position: str | None = "position",
        token_log_logging: str | None = None,
    ) -> LoggedFeedback:
        """Build from a pandas DataFrame with one row per response.

        Column arguments name the columns; optional ones (``aspect``, ``position``) are used
        when present. ``aspect_probs`` is a column of per-row sequences or a list of columns.
        """
        import pandas as pd

        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"df must be a pandas.DataFrame, got {type(df).__name__}")
        cols = set(df.columns)
        required = (("prompt_id", prompt_id), ("signal", signal), ("log_logging", log_logging))
        for arg, col in required:
            if col not in cols:
                raise ValueError(f"column {col!r} ({arg}) not found; columns are {sorted(cols)}")

        def col_or_none(c: str | None) -> Any:
            return df[c].to_numpy() if c is not None and c in cols else None

        probs = None
        if isinstance(aspect_probs, list):
            missing = [c for c in aspect_probs if c not in cols]
            if missing:
                raise ValueError(f"aspect_probs columns not found: {missing}")
            probs = df[aspect_probs].to_numpy(dtype=np.float64)
        elif aspect_probs is not None:
            if aspect_probs not in cols:
                raise ValueError(f"column {aspect_probs!r} (aspect_probs) not found")
            probs = np.stack([np.asarray(v, dtype=np.float64) for v in df[aspect_probs]])
        tok = None
        if token_log_logging is not None:
            if token_log_logging not in cols:
                raise ValueError(f"column {token_log_logging!r} (token_log_logging) not found")
            tok = [np.asarray(v, dtype=np.float64) for v in df[token_log_logging]]
        return cls.from_arrays(
            prompt_id=df[prompt_id].to_numpy(),
            signal=df[signal].to_numpy(),
            log_logging=df[log_logging].to_numpy(),
            aspect=None if probs is not None else col_or_none(aspect),
            aspect_probs=probs,
            n_aspects=n_aspects,
            position=col_or_none(position),
            token_log_logging=tok,
        )

    @classmethod
    def from_arrow(cls, table: Any, **columns: Any) -> LoggedFeedback:
        """Build from a ``pyarrow.Table`` (same column arguments as :meth:`from_pandas`)."""
        import pyarrow as pa

        if not isinstance(table, (pa.Table, pa.RecordBatch)):
            raise TypeError(
                f"table must be a pyarrow.Table or RecordBatch, got {type(table).__name__}"
            )
        return cls.from_pandas(table.to_pandas(), **columns)
