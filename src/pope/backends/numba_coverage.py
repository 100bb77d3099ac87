"""Numba coverage and diversity reward over prompt segments (the jackknife entropy:
:mod:`pope.backends.numba_jackknife`).

Parallel over batches of whole prompts (:func:`prompt_batches`: at most ``BATCH_RESP``
responses or ``BATCH_CELLS`` response x aspect cells per batch); every accumulation stays in
response order, as ``np.bincount`` / ``np.add.at`` in :mod:`pope.backends.reference`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, parallel_chunksize, prange

from pope.backends.numba_math import exp1, log1
from pope.backends.numba_threads import apply_thread_cap

__all__ = [
    "diversity_reward_hard",
    "diversity_reward_soft",
    "segment_coverage_hard",
    "segment_coverage_soft",
]

# batches of whole prompts
BATCH_RESP = 4096
BATCH_CELLS = 8192
NINF = -np.inf
PINF = np.inf
U1 = np.uint64(1)
NONE = np.uint64(0xFFFFFFFFFFFFFFFF)  # no largest row


@njit(cache=True, error_model="numpy")
def prompt_batches(ptr, n_cols, max_resp, max_cells):  # pragma: no cover - compiled
    """Starts of batches of whole prompts (at least one prompt per batch), plus the end P."""
    n_prompts = ptr.shape[0] - 1
    starts = np.empty(n_prompts + 1, np.int64)
    nb = 0
    i = 0
    while i < n_prompts:
        starts[nb] = i
        nb += 1
        j = i + 1
        while (
            j < n_prompts and ptr[j + 1] - ptr[i] <= max_resp and (j + 1 - i) * n_cols <= max_cells
        ):
            j += 1
        i = j
    starts[nb] = n_prompts
    return starts[: nb + 1].copy()


# The kernels below index with uint64 (prompt offsets, labels viewed as uint64): signed indices
# make Numba emit a negative-index wraparound select at every access, which costs about a third
# of the time of these short, ragged loops. A negative label becomes a huge uint64 and fails the
# ``a < C`` test like any other out-of-range label.


@njit(cache=True, error_model="numpy")
def _batch_weights(uptr, lw, i, j, self_normalize, w):  # pragma: no cover - compiled
    """w[k - uptr[i]] = exp(l_k - shift_q) for the responses of prompts [i, j) (uint64)."""
    r0 = uptr[i]
    n = np.int64(uptr[j] - r0)
    if self_normalize:
        q = i
        while q < j:
            s = uptr[q]
            e = uptr[q + U1]
            mx = NINF
            k = s
            while k < e:
                v = lw[k]
                mx = v if v > mx else mx
                k += U1
            shift = mx if (mx > NINF and mx < PINF) else 0.0
            k = s
            while k < e:
                w[k - r0] = lw[k] - shift
                k += U1
            q += U1
        for t in range(n):
            w[t] = exp1(w[t])
    else:
        for t in range(n):
            w[t] = exp1(lw[r0 + np.uint64(t)])


@njit(cache=True, error_model="numpy")
def _batch_normalise_entropy(pf, H, i, j, uC, norm):  # pragma: no cover - compiled
    """Rows [i, j) of the flat (P*C) histogram become p = hist / norm; H = -sum p log p."""
    nrow = np.int64(j - i)
    C = np.int64(uC)
    c0 = i * uC
    t = np.empty(nrow * C)
    for q in range(nrow):
        nq = norm[q]
        safe = nq if nq > 0.0 else 1.0
        base = c0 + np.uint64(q) * uC
        for c in range(C):
            v = pf[base + np.uint64(c)] / safe
            pf[base + np.uint64(c)] = v if nq > 0.0 else 0.0
    for k in range(nrow * C):
        v = pf[c0 + np.uint64(k)]
        lg = log1(v if v > 0.0 else 1.0)
        t[k] = v * lg if v > 0.0 else 0.0
    for q in range(nrow):
        acc = 0.0
        for c in range(C):
            acc += t[q * C + c]
        H[i + np.uint64(q)] = -acc


@njit(cache=True, parallel=True, error_model="numpy")
def _coverage_hard(uptr, lw, ulabels, C, self_normalize, ustarts, pf, H, bad):  # pragma: no cover
    uC = np.uint64(C)
    for bi in prange(ustarts.shape[0] - 1):
        i = ustarts[bi]
        j = ustarts[bi + 1]
        r0 = uptr[i]
        w = np.empty(np.int64(uptr[j] - r0))
        _batch_weights(uptr, lw, i, j, self_normalize, w)
        norm = np.empty(np.int64(j - i))
        flag = False
        q = i
        while q < j:
            row = q * uC
            for c in range(C):
                pf[row + np.uint64(c)] = 0.0
            s = uptr[q]
            e = uptr[q + U1]
            z = 0.0
            k = s
            while k < e:
                a = ulabels[k]
                if a < uC:
                    wk = w[k - r0]
                    pf[row + a] += wk
                    z += wk
                else:
                    flag = True
                k += U1
            norm[q - i] = z if self_normalize else float(e - s)
            q += U1
        if flag:
            bad[bi] = True
        _batch_normalise_entropy(pf, H, i, j, uC, norm)


@njit(cache=True, parallel=True, error_model="numpy")
def _coverage_soft(uptr, lw, soft, self_normalize, ustarts, pf, H):  # pragma: no cover - compiled
    C = soft.shape[1]
    uC = np.uint64(C)
    sf = soft.ravel()
    for bi in prange(ustarts.shape[0] - 1):
        i = ustarts[bi]
        j = ustarts[bi + 1]
        r0 = uptr[i]
        w = np.empty(np.int64(uptr[j] - r0))
        _batch_weights(uptr, lw, i, j, self_normalize, w)
        norm = np.empty(np.int64(j - i))
        q = i
        while q < j:
            row = q * uC
            for c in range(C):
                pf[row + np.uint64(c)] = 0.0
            s = uptr[q]
            e = uptr[q + U1]
            z = 0.0
            k = s
            while k < e:
                wk = w[k - r0]
                qk = k * uC
                for c in range(C):
                    pf[row + np.uint64(c)] += sf[qk + np.uint64(c)] * wk
                z += wk
                k += U1
            norm[q - i] = z if self_normalize else float(e - s)
            q += U1
        _batch_normalise_entropy(pf, H, i, j, uC, norm)


@njit(cache=True, parallel=True, error_model="numpy")
def _diversity_hard(uptr, p, ulabels, ustarts, d, bad):  # pragma: no cover - compiled
    uC = np.uint64(p.shape[1])
    pf = p.ravel()
    for bi in prange(ustarts.shape[0] - 1):
        i = ustarts[bi]
        j = ustarts[bi + 1]
        flag = False
        q = i
        while q < j:  # gather p[i(k), a_k] into d
            row = q * uC
            k = uptr[q]
            e = uptr[q + U1]
            while k < e:
                a = ulabels[k]
                if a < uC:
                    d[k] = pf[row + a]
                else:
                    d[k] = 0.0
                    flag = True
                k += U1
            q += U1
        if flag:
            bad[bi] = True
        r0 = uptr[i]
        for t in range(np.int64(uptr[j] - r0)):  # in place: d = -log p (0 where p == 0)
            kk = r0 + np.uint64(t)
            v = d[kk]
            lg = log1(v if v > 0.0 else 1.0)
            d[kk] = -lg if v > 0.0 else 0.0


@njit(cache=True, parallel=True, error_model="numpy")
def _diversity_soft(uptr, p, soft, ustarts, d):  # pragma: no cover - compiled
    C = p.shape[1]
    uC = np.uint64(C)
    pf = p.ravel()
    sf = soft.ravel()
    for bi in prange(ustarts.shape[0] - 1):
        i = ustarts[bi]
        j = ustarts[bi + 1]
        c0 = i * uC
        ncell = np.int64(j - i) * C
        lg = np.empty(ncell)
        for t in range(ncell):
            v = pf[c0 + np.uint64(t)]
            lv = log1(v if v > 0.0 else 1.0)
            lg[t] = lv if v > 0.0 else 0.0
        q = i
        while q < j:
            lrow = (q - i) * uC
            k = uptr[q]
            e = uptr[q + U1]
            while k < e:
                qk = k * uC
                acc = 0.0
                for c in range(C):
                    acc += sf[qk + np.uint64(c)] * lg[lrow + np.uint64(c)]
                d[k] = -acc
                k += U1
            q += U1


# ---------------------------------------------------------------------------------------------
# Jackknife of the coverage entropy (the algorithm of pope.coverage.jackknife_entropy_core,
# prompt by prompt; see csrc/jackknife.cpp)
# ---------------------------------------------------------------------------------------------


def check_ptr(prompt_ptr: np.ndarray, n_rows: int, name: str) -> int:
    if prompt_ptr.ndim != 1 or prompt_ptr.shape[0] < 1:
        raise ValueError(f"{name}: prompt_ptr must be 1-D with at least one entry")
    if prompt_ptr[0] != 0 or prompt_ptr[-1] != n_rows:
        raise ValueError(f"{name}: prompt_ptr must start at 0 and end at {n_rows}")
    if prompt_ptr.shape[0] > 1 and np.any(prompt_ptr[1:] < prompt_ptr[:-1]):
        raise ValueError(f"{name}: prompt_ptr must be non-decreasing")
    return prompt_ptr.shape[0] - 1


def segment_coverage_hard(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    labels: np.ndarray,
    n_aspects: int,
    self_normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Numba twin of :func:`pope.backends.reference.segment_coverage_hard`."""
    n_aspects = int(n_aspects)
    if n_aspects < 1:
        raise ValueError("segment_coverage_hard: n_aspects must be >= 1")
    if log_weight.ndim != 1 or labels.shape != log_weight.shape:
        raise ValueError("segment_coverage_hard: log_weight and labels must be (N,) arrays")
    ptr = np.ascontiguousarray(prompt_ptr, dtype=np.int64)
    n_prompts = check_ptr(ptr, log_weight.shape[0], "segment_coverage_hard")
    apply_thread_cap()
    starts = prompt_batches(ptr, n_aspects, BATCH_RESP, BATCH_CELLS)
    pf = np.empty(n_prompts * n_aspects)
    H = np.empty(n_prompts)
    bad = np.zeros(max(starts.shape[0] - 1, 1), dtype=np.bool_)
    with parallel_chunksize(2):
        _coverage_hard(
            ptr.view(np.uint64),
            np.ascontiguousarray(log_weight, dtype=np.float64),
            np.ascontiguousarray(labels, dtype=np.int64).view(np.uint64),
            n_aspects,
            bool(self_normalize),
            starts.view(np.uint64),
            pf,
            H,
            bad,
        )
    if bad.any():
        raise ValueError("segment_coverage_hard: labels must lie in [0, n_aspects)")
    return pf.reshape(n_prompts, n_aspects), H


def segment_coverage_soft(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    soft: np.ndarray,
    self_normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Numba twin of :func:`pope.backends.reference.segment_coverage_soft`."""
    if log_weight.ndim != 1 or soft.ndim != 2 or soft.shape[0] != log_weight.shape[0]:
        raise ValueError("segment_coverage_soft: soft must be (N, C) with N = len(log_weight)")
    if soft.shape[1] < 1:
        raise ValueError("segment_coverage_soft: soft needs at least one aspect")
    ptr = np.ascontiguousarray(prompt_ptr, dtype=np.int64)
    n_prompts = check_ptr(ptr, log_weight.shape[0], "segment_coverage_soft")
    n_aspects = soft.shape[1]
    apply_thread_cap()
    starts = prompt_batches(ptr, n_aspects, BATCH_RESP, BATCH_CELLS)
    pf = np.empty(n_prompts * n_aspects)
    H = np.empty(n_prompts)
    with parallel_chunksize(2):
        _coverage_soft(
            ptr.view(np.uint64),
            np.ascontiguousarray(log_weight, dtype=np.float64),
            np.ascontiguousarray(soft, dtype=np.float64),
            bool(self_normalize),
            starts.view(np.uint64),
            pf,
            H,
        )
    return pf.reshape(n_prompts, n_aspects), H


def diversity_reward_hard(prompt_ptr: np.ndarray, p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Numba twin of :func:`pope.backends.reference.diversity_reward_hard`."""
    if p.ndim != 2 or p.shape[1] < 1 or labels.ndim != 1:
        raise ValueError("diversity_reward_hard: p must be (P, C) and labels (N,)")
    ptr = np.ascontiguousarray(prompt_ptr, dtype=np.int64)
    n_prompts = check_ptr(ptr, labels.shape[0], "diversity_reward_hard")
    if p.shape[0] != n_prompts:
        raise ValueError("diversity_reward_hard: p must have one row per prompt")
    apply_thread_cap()
    starts = prompt_batches(ptr, 1, BATCH_RESP, BATCH_CELLS)
    d = np.empty(labels.shape[0])
    bad = np.zeros(max(starts.shape[0] - 1, 1), dtype=np.bool_)
    with parallel_chunksize(2):
        _diversity_hard(
            ptr.view(np.uint64),
            np.ascontiguousarray(p, dtype=np.float64),
            np.ascontiguousarray(labels, dtype=np.int64).view(np.uint64),
            starts.view(np.uint64),
            d,
            bad,
        )
    if bad.any():
        raise ValueError("diversity_reward_hard: labels must lie in [0, C)")
    return d


def diversity_reward_soft(prompt_ptr: np.ndarray, p: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """Numba twin of :func:`pope.backends.reference.diversity_reward_soft`."""
    if p.ndim != 2 or p.shape[1] < 1 or soft.ndim != 2 or soft.shape[1] != p.shape[1]:
        raise ValueError("diversity_reward_soft: p must be (P, C) and soft (N, C)")
    ptr = np.ascontiguousarray(prompt_ptr, dtype=np.int64)
    n_prompts = check_ptr(ptr, soft.shape[0], "diversity_reward_soft")
    if p.shape[0] != n_prompts:
        raise ValueError("diversity_reward_soft: p must have one row per prompt")
    apply_thread_cap()
    starts = prompt_batches(ptr, p.shape[1], BATCH_RESP, BATCH_CELLS)
    d = np.empty(soft.shape[0])
    with parallel_chunksize(2):
        _diversity_soft(
            ptr.view(np.uint64),
            np.ascontiguousarray(p, dtype=np.float64),
            np.ascontiguousarray(soft, dtype=np.float64),
            starts.view(np.uint64),
            d,
        )
    return d
