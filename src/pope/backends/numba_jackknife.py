"""Numba jackknife of the coverage entropy over prompt segments (hard labels and soft rows).

The algorithm of ``csrc/jackknife.cpp``: batches of whole prompts; per prompt one histogram,
leave-one-out entropies from its counts in closed form. Shared batching and constants come from
:mod:`pope.backends.numba_coverage`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, parallel_chunksize, prange

from pope.backends.numba_coverage import (
    BATCH_CELLS,
    BATCH_RESP,
    NINF,
    NONE,
    PINF,
    U1,
    check_ptr,
    prompt_batches,
)
from pope.backends.numba_math import exp1, log1
from pope.backends.numba_threads import apply_thread_cap

__all__ = ["segment_jackknife_entropy_hard", "segment_jackknife_entropy_soft"]

# the hard jackknife's batches (a dozen arrays of the batch's rows stay in L1/L2)
_JK_BATCH_RESP = 512
_JK_BATCH_CELLS = 1024


@njit(cache=True, error_model="numpy")
def _xlogx(x):  # pragma: no cover - compiled
    return x * log1(x) if x > 0.0 else 0.0


@njit(cache=True, error_model="numpy")
def _hist_entropy(tot, g, z, fallback):  # pragma: no cover - compiled
    """(tot log z - g) / z for z > 0, else ``fallback``."""
    return (tot * log1(z) - g) / z if z > 0.0 else fallback


@njit(cache=True, error_model="numpy")
def _jk_weights(lw, s, e, self_normalize, w):  # pragma: no cover - compiled
    """w[k - s] for rows [s, e); returns the (first) largest finite log weight's row or -1."""
    mx = NINF
    star = -1
    for k in range(s, e):
        if lw[k] > mx:
            mx = lw[k]
            star = k
    if not (mx > NINF and mx < PINF):
        star = -1
    shift = mx if (self_normalize and star >= 0) else 0.0
    for k in range(s, e):
        w[k - s] = exp1(lw[k] - shift)
    return star


@njit(cache=True, error_model="numpy")
def _log_pos_into(x, n, y):  # pragma: no cover - compiled
    """y[k] = log x[k] for x[k] > 0, else 0 (k < n); a loop LLVM vectorises."""
    for k in range(n):
        v = x[k]
        lg = log1(v if v > 0.0 else 1.0)
        y[k] = lg if v > 0.0 else 0.0


@njit(cache=True, error_model="numpy")
def _jk_deletions(
    uptr, i0, nq, r0, w, cell, star, vals, logs, inv, pz, lz, out
):  # pragma: no cover
    """The last loop of :func:`_jackknife_hard`: per prompt of the batch, the deletions added
    as T S1 - G S2 + S3 (no log) and the jackknife value written to ``out``."""
    unq = np.uint64(nq)
    uR = np.uint64(uptr[i0 + unq] - r0)
    for q in range(nq):
        uq = np.uint64(q)
        s = uptr[i0 + uq] - r0
        e = uptr[i0 + uq + U1] - r0
        K = np.int64(e - s)
        if K == 0:
            out[i0 + uq] = 0.0
            continue
        st = star[uq]
        cs = cell[st] if st != NONE else NONE
        t0 = 0.0
        g0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        nf = 0.0
        k = s
        while k < e:
            wk = w[k]
            la = logs[k]
            other = cell[k] != cs
            t0 += wk if other else 0.0
            g0 += wk * la if other else 0.0
            iv = inv[k] if k != st else 0.0
            a = vals[k]
            nk = max(a - wk, 0.0)
            ld = logs[np.uint64(2) * uR + k]
            s1 += ld * iv
            s2 += iv
            s3 += ((nk - a) * ld + a * la - nk * logs[uR + k]) * iv
            nf += 1.0 if (k != st and not inv[k] > 0.0) else 0.0
            k += U1
        a_cs = vals[st] if st != NONE else 0.0
        tot = t0 + a_cs
        g = g0 + a_cs * logs[st] if st != NONE else g0
        z = pz[uq]
        z_ex = pz[unq + uq]
        a_ex = pz[np.uint64(2) * unq + uq]
        h = (tot * lz[uq] - g) / z if z > 0.0 else 0.0
        if K == 1 or not z > 0.0:
            out[i0 + uq] = h if K == 1 else 0.0
            continue
        h_ex = h
        if st != NONE and z_ex > 0.0:
            h_ex = ((t0 + a_ex) * lz[unq + uq] - (g0 + a_ex * lz[np.uint64(2) * unq + uq])) / z_ex
        acc = tot * s1 - g * s2 + s3 + nf * h
        if st != NONE:
            acc += h_ex
        out[i0 + uq] = K * h - (K - 1.0) / K * acc


@njit(cache=True, parallel=True, error_model="numpy")
def _jackknife_hard(uptr, lw, ulabels, C, self_normalize, ustarts, out, bad):  # pragma: no cover
    """Batches of prompts, the algorithm of csrc/jackknife.cpp: per prompt one loop builds the
    histogram, finds the (first) largest row and sums the others' weights (Z_ex); a second
    forms a_k, the numerator a_k - w_k and the denominator Z - t_k of each deletion; the logs
    of the batch run in flat loops; a last loop per prompt adds the deletions as
    T S1 - G S2 + S3 (no log). Indices are uint64 (see above); no row: index ``NONE``."""
    uC = np.uint64(C)
    for bi in prange(ustarts.shape[0] - 1):
        i0 = ustarts[bi]
        i1 = ustarts[bi + 1]
        nq = np.int64(i1 - i0)
        unq = np.uint64(nq)
        r0 = uptr[i0]
        R = np.int64(uptr[i1] - r0)
        uR = np.uint64(R)
        x = np.empty(R)
        w = np.empty(R)
        pz = np.empty(3 * nq)
        lz = np.empty(3 * nq)
        pmx = np.empty(nq)
        star = np.empty(nq, np.uint64)
        cell = np.empty(R, np.uint64)
        A = np.empty(nq * C)
        vals = np.empty(3 * R)  # a_k, numerators, denominators
        logs = np.empty(3 * R)
        inv = np.empty(R)
        for q in range(nq):
            uq = np.uint64(q)
            s = uptr[i0 + uq]
            e = uptr[i0 + uq + U1]
            mx = NINF
            k = s
            while k < e:
                v = lw[k]
                mx = v if v > mx else mx
                k += U1
            pmx[uq] = mx
            shift = mx if (self_normalize and mx > NINF and mx < PINF) else 0.0
            k = s
            while k < e:
                x[k - r0] = lw[k] - shift
                k += U1
        for k in range(R):
            w[k] = exp1(x[k])
        flag = False
        for q in range(nq):
            uq = np.uint64(q)
            base = uq * uC
            for c in range(C):
                A[base + np.uint64(c)] = 0.0
            s = uptr[i0 + uq] - r0
            e = uptr[i0 + uq + U1] - r0
            mx = pmx[uq]
            finite = mx > NINF and mx < PINF
            xm = 0.0 if (self_normalize and finite) else mx
            st = NONE
            z_ex = 0.0
            k = s
            while k < e:
                lab = ulabels[r0 + k]
                if lab >= uC:  # a negative label is a huge uint64
                    flag = True
                    lab = np.uint64(0)
                wk = w[k]
                ck = base + lab
                cell[k] = ck
                A[ck] += wk
                is_star = st == NONE and x[k] == xm
                st = k if is_star else st
                z_ex += 0.0 if is_star else wk
                k += U1
            if not finite:
                st = NONE
            star[uq] = st
            z = z_ex + w[st] if st != NONE else z_ex
            if not self_normalize:
                z = float(e - s)
                z_ex = z - 1.0
            pz[uq] = z
            pz[unq + uq] = z_ex
        if flag:
            bad[bi] = True
        for q in range(nq):
            uq = np.uint64(q)
            s = uptr[i0 + uq] - r0
            e = uptr[i0 + uq + U1] - r0
            z = pz[uq]
            st = star[uq]
            cs = cell[st] if st != NONE else NONE
            a_ex = 0.0
            k = s
            while k < e:
                wk = w[k]
                a = A[cell[k]]
                vals[k] = a
                vals[uR + k] = max(a - wk, 0.0)
                vals[np.uint64(2) * uR + k] = z - (wk if self_normalize else 1.0)
                a_ex += wk if (cell[k] == cs and k != st) else 0.0
                k += U1
            pz[np.uint64(2) * unq + uq] = a_ex
        for k in range(R):
            d = vals[2 * R + k]
            inv[k] = 1.0 / d if d > 0.0 else 0.0
        _log_pos_into(vals, 3 * R, logs)
        _log_pos_into(pz, 3 * nq, lz)
        _jk_deletions(uptr, i0, nq, r0, w, cell, star, vals, logs, inv, pz, lz, out)


@njit(cache=True, parallel=True, error_model="numpy")
def _jackknife_soft(ptr, lw, soft, self_normalize, ustarts, out):  # pragma: no cover
    C = soft.shape[1]
    for bi in prange(ustarts.shape[0] - 1):
        a = np.empty(C)
        a_ex = np.empty(C)
        w = np.empty(16)
        for i in range(ustarts[bi], ustarts[bi + 1]):
            s = ptr[i]
            e = ptr[i + 1]
            K = e - s
            if K == 0:
                out[i] = 0.0
                continue
            if w.shape[0] < K:
                w = np.empty(K)
            star = _jk_weights(lw, s, e, self_normalize, w)
            a_ex[:] = 0.0
            z_ex = 0.0
            for k in range(s, e):
                if k != star:
                    wk = w[k - s]
                    for c in range(C):
                        a_ex[c] += soft[k, c] * wk
                    z_ex += wk
            a[:] = a_ex
            w_star = 0.0
            if star >= 0:
                w_star = w[star - s]
                for c in range(C):
                    a[c] += soft[star, c] * w_star
            if self_normalize:
                z = z_ex + w_star
            else:
                z = float(K)
                z_ex = K - 1.0
            tot = 0.0
            g = 0.0
            tot_ex = 0.0
            g_ex = 0.0
            for c in range(C):
                tot += a[c]
                g += _xlogx(a[c])
                tot_ex += a_ex[c]
                g_ex += _xlogx(a_ex[c])
            h = _hist_entropy(tot, g, z, 0.0)
            if K == 1:
                out[i] = h
                continue
            if not z > 0.0:
                out[i] = 0.0
                continue
            h_ex = _hist_entropy(tot_ex, g_ex, z_ex, h) if star >= 0 else h
            s_del = 0.0
            for k in range(s, e):
                if k == star:
                    s_del += h_ex
                    continue
                wk = w[k - s]
                den = z - (wk if self_normalize else 1.0)
                if not den > 0.0:
                    s_del += h
                    continue
                tn = 0.0
                gn = 0.0
                for c in range(C):
                    nc = max(a[c] - soft[k, c] * wk, 0.0)
                    tn += nc
                    gn += _xlogx(nc)
                s_del += (tn * log1(den) - gn) / den
            out[i] = K * h - (K - 1.0) / K * s_del


def segment_jackknife_entropy_hard(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    labels: np.ndarray,
    n_aspects: int,
    self_normalize: bool,
) -> np.ndarray:
    """Numba twin of :func:`pope.backends.reference.segment_jackknife_entropy_hard`."""
    n_aspects = int(n_aspects)
    if n_aspects < 1:
        raise ValueError("segment_jackknife_entropy_hard: n_aspects must be >= 1")
    if log_weight.ndim != 1 or labels.shape != log_weight.shape:
        raise ValueError("segment_jackknife_entropy_hard: log_weight and labels must be (N,)")
    ptr = np.ascontiguousarray(prompt_ptr, dtype=np.int64)
    n_prompts = check_ptr(ptr, log_weight.shape[0], "segment_jackknife_entropy_hard")
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    out = np.zeros(n_prompts)
    if n_aspects == 1 or lab.size == 0:
        if lab.size and (lab.min() < 0 or lab.max() >= n_aspects):
            raise ValueError("segment_jackknife_entropy_hard: labels must lie in [0, n_aspects)")
        return out
    apply_thread_cap()
    starts = prompt_batches(ptr, n_aspects, _JK_BATCH_RESP, _JK_BATCH_CELLS)
    bad = np.zeros(starts.shape[0], dtype=np.bool_)
    with parallel_chunksize(2):
        _jackknife_hard(
            ptr.view(np.uint64),
            np.ascontiguousarray(log_weight, dtype=np.float64),
            lab.view(np.uint64),
            n_aspects,
            bool(self_normalize),
            starts.view(np.uint64),
            out,
            bad,
        )
    if bad.any():  # checked in the pass
        raise ValueError("segment_jackknife_entropy_hard: labels must lie in [0, n_aspects)")
    return out


def segment_jackknife_entropy_soft(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    soft: np.ndarray,
    self_normalize: bool,
) -> np.ndarray:
    """Numba twin of :func:`pope.backends.reference.segment_jackknife_entropy_soft`."""
    if log_weight.ndim != 1 or soft.ndim != 2 or soft.shape[0] != log_weight.shape[0]:
        raise ValueError(
            "segment_jackknife_entropy_soft: soft must be (N, C) with N = len(log_weight)"
        )
    if soft.shape[1] < 1:
        raise ValueError("segment_jackknife_entropy_soft: soft needs at least one aspect")
    ptr = np.ascontiguousarray(prompt_ptr, dtype=np.int64)
    n_prompts = check_ptr(ptr, log_weight.shape[0], "segment_jackknife_entropy_soft")
    out = np.zeros(n_prompts)
    if soft.shape[1] == 1 or soft.shape[0] == 0:
        return out
    apply_thread_cap()
    starts = prompt_batches(ptr, soft.shape[1], BATCH_RESP, BATCH_CELLS)
    with parallel_chunksize(2):
        _jackknife_soft(
            ptr,
            np.ascontiguousarray(log_weight, dtype=np.float64),
            np.ascontiguousarray(soft, dtype=np.float64),
            bool(self_normalize),
            starts,
            out,
        )
    return out
