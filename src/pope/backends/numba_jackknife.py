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


# factors per product of the d_k (each in [1, K]: 32 of them stay finite for K < 2^31)
_PROD_ROWS = 32
# batches of prompts per task of the parallel loop (its buffers allocated once per task)
_JK_TASK_BATCHES = 8


@njit(cache=True, error_model="numpy")
def _jk_weights_star(uptr, lw, i0, nq, self_normalize, w, star):  # pragma: no cover
    """w[k - r0] = exp(l_k - max l) (self-normalised) or exp(l_k) for the rows of prompts
    [i0, i0 + nq); star[q] = the (first) row of the largest log weight, ``NONE`` when it is not
    finite."""
    r0 = uptr[i0]
    for q in range(nq):
        uq = np.uint64(q)
        s = uptr[i0 + uq]
        e = uptr[i0 + uq + U1]
        mx = NINF
        st = NONE
        k = s
        while k < e:
            v = lw[k]
            st = k - r0 if v > mx else st
            mx = v if v > mx else mx
            k += U1
        finite = mx > NINF and mx < PINF
        star[uq] = st if finite else NONE
        shift = mx if (self_normalize and finite) else 0.0
        k = s
        while k < e:
            w[k - r0] = lw[k] - shift
            k += U1
    for k in range(np.int64(uptr[i0 + np.uint64(nq)] - r0)):
        w[k] = exp1(w[k])


@njit(cache=True, error_model="numpy")
def _jk_cells(
    uptr, ulabels, uC, i0, nq, self_normalize, w, star, A, cell, vals, den, pz
):  # pragma: no cover - compiled
    """Per prompt of the batch: the histogram A (nq, C), each row's cell and the weight sum T;
    then per row a_k, n_k = max(a_k - w_k, 0) (``vals``, R4 apart) and d_k = Z - w_k
    (``den``, used self-normalised only). Into ``pz`` (blocks of nq): Z (T self-normalised,
    else K), Z_ex (the weights outside the largest row's cell plus a*_ex, that cell without
    it: no cancellation; IPS K - 1), a*_ex, the last product of the d_k of the other rows
    (IPS K - 1), the weights outside the largest row's cell, the logs of the earlier products
    (each of _PROD_ROWS factors). Returns whether a label lay outside [0, C)."""
    unq = np.uint64(nq)
    r0 = uptr[i0]
    R = uptr[i0 + unq] - r0
    R4 = (R + np.uint64(3)) & ~np.uint64(3)
    flag = False
    for q in range(nq):
        uq = np.uint64(q)
        base = uq * uC
        for c in range(uC):
            A[base + c] = 0.0
        s = uptr[i0 + uq] - r0
        e = uptr[i0 + uq + U1] - r0
        tot = 0.0
        k = s
        while k < e:
            lab = ulabels[r0 + k]
            if lab >= uC:
                flag = True
                lab = np.uint64(0)
            ck = base + lab
            cell[k] = ck
            wk = w[k]
            A[ck] += wk
            tot += wk
            k += U1
        st = star[uq]
        cs = cell[st] if st != NONE else NONE
        Kf = float(e - s)
        z = tot if self_normalize else Kf
        a_ex = 0.0
        t0 = 0.0
        prod = 1.0
        lprod = 0.0
        k = s
        while k < e:  # products of _PROD_ROWS factors, logs of all but the last in lprod
            if k > s:
                lprod += log1(prod)
                prod = 1.0
            kend = min(k + np.uint64(_PROD_ROWS), e)
            while k < kend:
                wk = w[k]
                ck = cell[k]
                a = A[ck]
                vals[k] = a
                vals[R4 + k] = max(a - wk, 0.0)
                ns = k != st
                ins = ck == cs
                a_ex += wk if (ins and ns) else 0.0
                t0 += 0.0 if ins else wk
                d = z - wk
                den[k] = d
                prod *= d if ns else 1.0
                k += U1
        pz[uq] = z
        pz[unq + uq] = t0 + a_ex if self_normalize else Kf - 1.0
        pz[np.uint64(2) * unq + uq] = a_ex
        pz[np.uint64(3) * unq + uq] = prod if self_normalize else Kf - 1.0
        pz[np.uint64(4) * unq + uq] = t0
        pz[np.uint64(5) * unq + uq] = lprod
    return flag


@njit(cache=True, error_model="numpy")
def _jk_deletions(
    uptr, i0, nq, self_normalize, w, cell, star, vals, logs, inv, pz, lz, out
):  # pragma: no cover - compiled
    """Per prompt of the batch: the deletions of the rows other than the largest added as
    L - G S2 + S3 (no log per row), the largest row's from the sums without it, and the
    jackknife value K H - (K - 1) / K sum_k H_{-k} written to ``out``.

    With H_{-k} = ((T - w_k) log d_k - (G - a_k log a_k + n_k log n_k)) / d_k, G = sum_k
    w_k log a_k, S2 = sum_k 1 / d_k, S3 = sum_k (a_k log a_k - n_k log n_k) / d_k (k other
    than the largest row): self-normalised, Z = T so T - w_k = d_k and L = sum_k log d_k, the
    logs of the products of the d_k (each in [1, K]); IPS, d_k = K - 1 and
    L = log(K - 1) / (K - 1) sum_k (T - a_k + n_k)."""
    unq = np.uint64(nq)
    r0 = uptr[i0]
    R = uptr[i0 + unq] - r0
    R4 = (R + np.uint64(3)) & ~np.uint64(3)
    for q in range(nq):
        uq = np.uint64(q)
        s = uptr[i0 + uq] - r0
        e = uptr[i0 + uq + U1] - r0
        Kn = np.int64(e - s)
        if Kn == 0:
            out[i0 + uq] = 0.0
            continue
        st = star[uq]
        cs = cell[st] if st != NONE else NONE
        g0 = 0.0
        s2 = 0.0
        s3 = 0.0
        sa = 0.0
        k = s
        while k < e:
            la = logs[k]
            g0 += w[k] * la if cell[k] != cs else 0.0
            a = vals[k]
            nk = vals[R4 + k]
            ns = k != st
            iv = (inv[k] if self_normalize else 1.0) if ns else 0.0
            s2 += iv
            s3 += (a * la - nk * logs[R4 + k]) * iv
            sa += (nk - a) if ns else 0.0
            k += U1
        K = float(Kn)
        z = pz[uq]
        z_ex = pz[unq + uq]
        a_ex = pz[np.uint64(2) * unq + uq]
        t0 = pz[np.uint64(4) * unq + uq]
        a_cs = vals[st] if st != NONE else 0.0
        g = g0 + a_cs * logs[st] if st != NONE else g0
        tot = z if self_normalize else t0 + a_cs
        h = (tot * lz[uq] - g) / z if z > 0.0 else 0.0
        if Kn == 1 or not z > 0.0:
            out[i0 + uq] = h if Kn == 1 else 0.0
            continue
        h_ex = h
        if st != NONE and z_ex > 0.0:
            h_ex = ((t0 + a_ex) * lz[unq + uq] - (g0 + a_ex * lz[np.uint64(2) * unq + uq])) / z_ex
        lpd = lz[np.uint64(3) * unq + uq]  # log of the last product of d_k; IPS: log(K - 1)
        if self_normalize:
            lsum = lpd + pz[np.uint64(5) * unq + uq]
        else:  # d_k = K - 1 for every row
            nns = K - 1.0 if st != NONE else K
            lsum = lpd / (K - 1.0) * (nns * tot + sa)
            s2 /= K - 1.0
            s3 /= K - 1.0
        acc = lsum - g * s2 + s3
        if st != NONE:
            acc += h_ex
        out[i0 + uq] = K * h - (K - 1.0) / K * acc


@njit(cache=True, parallel=True, error_model="numpy")
def _jackknife_hard(uptr, lw, ulabels, C, self_normalize, ustarts, out, bad):  # pragma: no cover
    """Tasks of _JK_TASK_BATCHES batches of prompts (buffers allocated once per task), the
    algorithm of csrc/jackknife.cpp: per prompt the weights and the (first) largest row, the
    histogram and each row's a_k, n_k, d_k, the products of the d_k; the batch's logs
    (two per row) and reciprocals in flat loops; a last loop per prompt adds the deletions.
    Indices are uint64 (see numba_coverage); no row: index ``NONE``."""
    uC = np.uint64(C)
    nb = ustarts.shape[0] - 1
    ntask = (nb + _JK_TASK_BATCHES - 1) // _JK_TASK_BATCHES
    for ti in prange(ntask):
        b0 = ti * _JK_TASK_BATCHES
        b1 = min(b0 + _JK_TASK_BATCHES, nb)
        mr = 0
        mq = 0
        for bi in range(b0, b1):
            mr = max(mr, np.int64(uptr[ustarts[bi + 1]] - uptr[ustarts[bi]]))
            mq = max(mq, np.int64(ustarts[bi + 1] - ustarts[bi]))
        mr4 = (mr + 3) & ~3
        w = np.empty(mr)
        inv = np.empty(mr)
        den = np.empty(mr)
        cell = np.empty(mr, np.uint64)
        vals = np.empty(2 * mr4)  # a_k, n_k
        logs = np.empty(2 * mr4)
        A = np.empty(mq * C)
        star = np.empty(mq, np.uint64)
        pz = np.empty(6 * mq)
        lz = np.empty(4 * mq)
        for bi in range(b0, b1):
            i0 = ustarts[bi]
            nq = np.int64(ustarts[bi + 1] - i0)
            R = np.int64(uptr[i0 + np.uint64(nq)] - uptr[i0])
            R4 = (R + 3) & ~3
            _jk_weights_star(uptr, lw, i0, nq, self_normalize, w, star)
            if _jk_cells(
                uptr, ulabels, uC, i0, nq, self_normalize, w, star, A, cell, vals, den, pz
            ):
                bad[bi] = True
            if self_normalize:
                for k in range(R):
                    d = den[k]
                    inv[k] = 1.0 / (d if d > 0.0 else 1.0) if d > 0.0 else 0.0
            for k in range(R, R4):
                vals[k] = 0.0
                vals[R4 + k] = 0.0
            _log_pos_into(vals, 2 * R4, logs)
            _log_pos_into(pz, 4 * nq, lz)
            _jk_deletions(uptr, i0, nq, self_normalize, w, cell, star, vals, logs, inv, pz, lz, out)


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
