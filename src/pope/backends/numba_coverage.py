"""Numba coverage, diversity reward and jackknife entropy over prompt segments.

Parallel over batches of whole prompts (:func:`_prompt_batches`: at most ``_BATCH_RESP``
responses or ``_BATCH_CELLS`` response x aspect cells per batch); every accumulation stays in
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
    "segment_jackknife_entropy_hard",
    "segment_jackknife_entropy_soft",
]

# batches of whole prompts
_BATCH_RESP = 4096
_BATCH_CELLS = 8192
# the hard jackknife's batches (a dozen arrays of the batch's rows stay in L1/L2)
_JK_BATCH_RESP = 512
_JK_BATCH_CELLS = 1024
_NINF = -np.inf
_PINF = np.inf
_U1 = np.uint64(1)
_NONE = np.uint64(0xFFFFFFFFFFFFFFFF)  # no largest row


@njit(cache=True, error_model="numpy")
def _prompt_batches(ptr, n_cols, max_resp, max_cells):  # pragma: no cover - compiled
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
            e = uptr[q + _U1]
            mx = _NINF
            k = s
            while k < e:
                v = lw[k]
                mx = v if v > mx else mx
                k += _U1
            shift = mx if (mx > _NINF and mx < _PINF) else 0.0
            k = s
            while k < e:
                w[k - r0] = lw[k] - shift
                k += _U1
            q += _U1
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
            e = uptr[q + _U1]
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
                k += _U1
            norm[q - i] = z if self_normalize else float(e - s)
            q += _U1
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
            e = uptr[q + _U1]
            z = 0.0
            k = s
            while k < e:
                wk = w[k - r0]
                qk = k * uC
                for c in range(C):
                    pf[row + np.uint64(c)] += sf[qk + np.uint64(c)] * wk
                z += wk
                k += _U1
            norm[q - i] = z if self_normalize else float(e - s)
            q += _U1
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
            e = uptr[q + _U1]
            while k < e:
                a = ulabels[k]
                if a < uC:
                    d[k] = pf[row + a]
                else:
                    d[k] = 0.0
                    flag = True
                k += _U1
            q += _U1
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
            e = uptr[q + _U1]
            while k < e:
                qk = k * uC
                acc = 0.0
                for c in range(C):
                    acc += sf[qk + np.uint64(c)] * lg[lrow + np.uint64(c)]
                d[k] = -acc
                k += _U1
            q += _U1


# ---------------------------------------------------------------------------------------------
# Jackknife of the coverage entropy (the algorithm of pope.coverage.jackknife_entropy_core,
# prompt by prompt; see csrc/jackknife.cpp)
# ---------------------------------------------------------------------------------------------


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
    mx = _NINF
    star = -1
    for k in range(s, e):
        if lw[k] > mx:
            mx = lw[k]
            star = k
    if not (mx > _NINF and mx < _PINF):
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


@njit(cache=True, parallel=True, error_model="numpy")
def _jackknife_hard(uptr, lw, ulabels, C, self_normalize, ustarts, out, bad):  # pragma: no cover
    """Batches of prompts, the algorithm of csrc/jackknife.cpp: per prompt one loop builds the
    histogram, finds the (first) largest row and sums the others' weights (Z_ex); a second
    forms a_k, the numerator a_k - w_k and the denominator Z - t_k of each deletion; the logs
    of the batch run in flat loops; a last loop per prompt adds the deletions as
    T S1 - G S2 + S3 (no log). Indices are uint64 (see above); no row: index ``_NONE``."""
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
            e = uptr[i0 + uq + _U1]
            mx = _NINF
            k = s
            while k < e:
                v = lw[k]
                mx = v if v > mx else mx
                k += _U1
            pmx[uq] = mx
            shift = mx if (self_normalize and mx > _NINF and mx < _PINF) else 0.0
            k = s
            while k < e:
                x[k - r0] = lw[k] - shift
                k += _U1
        for k in range(R):
            w[k] = exp1(x[k])
        flag = False
        for q in range(nq):
            uq = np.uint64(q)
            base = uq * uC
            for c in range(C):
                A[base + np.uint64(c)] = 0.0
            s = uptr[i0 + uq] - r0
            e = uptr[i0 + uq + _U1] - r0
            mx = pmx[uq]
            finite = mx > _NINF and mx < _PINF
            xm = 0.0 if (self_normalize and finite) else mx
            st = _NONE
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
                is_star = st == _NONE and x[k] == xm
                st = k if is_star else st
                z_ex += 0.0 if is_star else wk
                k += _U1
            if not finite:
                st = _NONE
            star[uq] = st
            z = z_ex + w[st] if st != _NONE else z_ex
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
            e = uptr[i0 + uq + _U1] - r0
            z = pz[uq]
            st = star[uq]
            cs = cell[st] if st != _NONE else _NONE
            a_ex = 0.0
            k = s
            while k < e:
                wk = w[k]
                a = A[cell[k]]
                vals[k] = a
                vals[uR + k] = max(a - wk, 0.0)
                vals[np.uint64(2) * uR + k] = z - (wk if self_normalize else 1.0)
                a_ex += wk if (cell[k] == cs and k != st) else 0.0
                k += _U1
            pz[np.uint64(2) * unq + uq] = a_ex
        for k in range(R):
            d = vals[2 * R + k]
            inv[k] = 1.0 / d if d > 0.0 else 0.0
        _log_pos_into(vals, 3 * R, logs)
        _log_pos_into(pz, 3 * nq, lz)
        for q in range(nq):
            uq = np.uint64(q)
            s = uptr[i0 + uq] - r0
            e = uptr[i0 + uq + _U1] - r0
            K = np.int64(e - s)
            if K == 0:
                out[i0 + uq] = 0.0
                continue
            st = star[uq]
            cs = cell[st] if st != _NONE else _NONE
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
                k += _U1
            a_cs = vals[st] if st != _NONE else 0.0
            tot = t0 + a_cs
            g = g0 + a_cs * logs[st] if st != _NONE else g0
            z = pz[uq]
            z_ex = pz[unq + uq]
            a_ex = pz[np.uint64(2) * unq + uq]
            h = (tot * lz[uq] - g) / z if z > 0.0 else 0.0
            if K == 1 or not z > 0.0:
                out[i0 + uq] = h if K == 1 else 0.0
                continue
            h_ex = h
            if st != _NONE and z_ex > 0.0:
                h_ex = ((t0 + a_ex) * lz[unq + uq] - (g0 + a_ex * lz[np.uint64(2) * unq + uq])) / z_ex
            acc = tot * s1 - g * s2 + s3 + nf * h
            if st != _NONE:
                acc += h_ex
            out[i0 + uq] = K * h - (K - 1.0) / K * acc


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


def _check_ptr(prompt_ptr: np.ndarray, n_rows: int, name: str) -> int:
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
    n_prompts = _check_ptr(ptr, log_weight.shape[0], "segment_coverage_hard")
    apply_thread_cap()
    starts = _prompt_batches(ptr, n_aspects, _BATCH_RESP, _BATCH_CELLS)
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
    n_prompts = _check_ptr(ptr, log_weight.shape[0], "segment_coverage_soft")
    n_aspects = soft.shape[1]
    apply_thread_cap()
    starts = _prompt_batches(ptr, n_aspects, _BATCH_RESP, _BATCH_CELLS)
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
    n_prompts = _check_ptr(ptr, log_weight.shape[0], "segment_jackknife_entropy_hard")
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    out = np.zeros(n_prompts)
    if n_aspects == 1 or lab.size == 0:
        if lab.size and (lab.min() < 0 or lab.max() >= n_aspects):
            raise ValueError("segment_jackknife_entropy_hard: labels must lie in [0, n_aspects)")
        return out
    apply_thread_cap()
    starts = _prompt_batches(ptr, n_aspects, _JK_BATCH_RESP, _JK_BATCH_CELLS)
    bad = np.zeros(starts.shape[0], dtype=np.bool_)
    with parallel_chunksize(2):
        _jackknife_hard(ptr.view(np.uint64), np.ascontiguousarray(log_weight, dtype=np.float64),
                        lab.view(np.uint64), n_aspects, bool(self_normalize),
                        starts.view(np.uint64), out, bad)
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
            "segment_jackknife_entropy_soft: soft must be (N, C) with N = len(log_weight)")
    if soft.shape[1] < 1:
        raise ValueError("segment_jackknife_entropy_soft: soft needs at least one aspect")
    ptr = np.ascontiguousarray(prompt_ptr, dtype=np.int64)
    n_prompts = _check_ptr(ptr, log_weight.shape[0], "segment_jackknife_entropy_soft")
    out = np.zeros(n_prompts)
    if soft.shape[1] == 1 or soft.shape[0] == 0:
        return out
    apply_thread_cap()
    starts = _prompt_batches(ptr, soft.shape[1], _BATCH_RESP, _BATCH_CELLS)
    with parallel_chunksize(2):
        _jackknife_soft(ptr, np.ascontiguousarray(log_weight, dtype=np.float64),
                        np.ascontiguousarray(soft, dtype=np.float64), bool(self_normalize),
                        starts, out)
    return out


def diversity_reward_hard(prompt_ptr: np.ndarray, p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Numba twin of :func:`pope.backends.reference.diversity_reward_hard`."""
    if p.ndim != 2 or p.shape[1] < 1 or labels.ndim != 1:
        raise ValueError("diversity_reward_hard: p must be (P, C) and labels (N,)")
    ptr = np.ascontiguousarray(prompt_ptr, dtype=np.int64)
    n_prompts = _check_ptr(ptr, labels.shape[0], "diversity_reward_hard")
    if p.shape[0] != n_prompts:
        raise ValueError("diversity_reward_hard: p must have one row per prompt")
    apply_thread_cap()
    starts = _prompt_batches(ptr, 1, _BATCH_RESP, _BATCH_CELLS)
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
    n_prompts = _check_ptr(ptr, soft.shape[0], "diversity_reward_soft")
    if p.shape[0] != n_prompts:
        raise ValueError("diversity_reward_soft: p must have one row per prompt")
    apply_thread_cap()
    starts = _prompt_batches(ptr, p.shape[1], _BATCH_RESP, _BATCH_CELLS)
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
