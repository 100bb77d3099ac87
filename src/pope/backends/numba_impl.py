"""Numba backend: ``@njit`` twins of :mod:`pope.backends.reference`.

Same functions, signatures and semantics as the reference (the contract and the test oracle).
Design, shared with the C++ backend:

* ``ips_moments`` makes one pass over the data. Chunks of ``_CHUNK`` samples run in parallel
  (``prange``); each keeps a running max ``M`` of the clipped log-ratio, updated once per block
  of ``_BLOCK`` samples, and rescales its sums by ``exp(M_old - M_new)`` when ``M`` grows (as in
  an online softmax). Partials are merged in chunk order, so the result does not depend on the
  number of threads.
* ``exp`` and ``log`` are branch-free polynomial kernels (:func:`_exp1`, :func:`_log1`; the
  float/int bit casts are LLVM ``bitcast`` intrinsics) that LLVM inlines and vectorises in the
  loops; ``math.exp`` / ``math.log`` would be scalar library calls. Both are accurate to about
  2 ulp.
* Coverage and diversity run in parallel over batches of whole prompts; every accumulation
  stays in response order, as ``np.bincount`` / ``np.add.at`` in the reference.
* ``bootstrap_sums`` runs in parallel over resamples; the 8 xoshiro128++ streams of a resample
  and their SplitMix64 seeding are computed with ``uint64`` arithmetic only (every constant is a
  ``np.uint64``: mixing ``uint64`` with ``int64`` would promote to ``float64``; 32-bit words are
  masked), so indices are bit-identical to the reference.

Fast-math flags are limited to ``reassoc`` on the reductions of ``ips_moments`` (lane-wise
partial sums) and ``contract`` (FMA) inside ``exp`` / ``log``; nothing assumes finite values,
since ``-inf`` log-weights are legal. ``error_model="numpy"`` drops Python's zero-division
checks, which would block vectorisation (every division here is guarded).

``POPE_NUM_THREADS`` (a positive integer) caps the Numba threads, as it sets the C++ threads.
"""

from __future__ import annotations

import math
import os

import numpy as np
from llvmlite import ir as llvm_ir
from numba import config as _numba_config
from numba import njit, parallel_chunksize, prange, set_num_threads, types
from numba.extending import intrinsic

from pope.backends.reference import IPS_CHECKS, MOMENT_NAMES, splitmix64

__all__ = [
    "IPS_CHECKS",
    "MOMENT_NAMES",
    "bootstrap_sums",
    "diversity_reward_hard",
    "diversity_reward_soft",
    "ips_moments",
    "ips_moments_checked",
    "segment_coverage_hard",
    "segment_coverage_soft",
    "segment_jackknife_entropy_hard",
    "segment_jackknife_entropy_soft",
    "splitmix64",
]

_U64_MAX = (1 << 64) - 1

# ips_moments partition (fixed, so results do not depend on the thread count)
_CHUNK = 1 << 16
_BLOCK = 512
# coverage / diversity batches of whole prompts
_BATCH_RESP = 4096
_BATCH_CELLS = 8192
# bootstrap index buffer (a multiple of the 8 lanes)
_BOOT_BLOCK = 512

# exp: Cody-Waite reduction, Taylor polynomial of degree 13, 2^k = 2^k1 * 2^k2
_LOG2E = 1.4426950408889634
_LN2HI = 6.93147180369123816490e-01
_LN2LO = 1.90821492927058770002e-10
_SHIFTER = 6755399441055744.0  # 1.5 * 2^52
_SHIFTER_BIAS = _SHIFTER + 1023.0
_EXP_LO = -746.0
_EXP_HI = 710.0
_E2 = 1.0 / 2
_E3 = 1.0 / 6
_E4 = 1.0 / 24
_E5 = 1.0 / 120
_E6 = 1.0 / 720
_E7 = 1.0 / 5040
_E8 = 1.0 / 40320
_E9 = 1.0 / 362880
_E10 = 1.0 / 3628800
_E11 = 1.0 / 39916800
_E12 = 1.0 / 479001600
_E13 = 1.0 / 6227020800.0
# log: x = 2^e m, log m = 2 atanh((m - 1) / (m + 1))
_TWO52 = 4503599627370496.0
_EXP_OFFSET = _TWO52 + 1023.0
_DBL_MIN = 2.2250738585072014e-308
_SQRT2 = 1.4142135623730951
_L3 = 1.0 / 3
_L5 = 1.0 / 5
_L7 = 1.0 / 7
_L9 = 1.0 / 9
_L11 = 1.0 / 11
_L13 = 1.0 / 13
_L15 = 1.0 / 15
_L17 = 1.0 / 17
_L19 = 1.0 / 19
_MANT_MASK = np.uint64(0x000FFFFFFFFFFFFF)
_ONE_BITS = np.uint64(0x3FF0000000000000)
_EXP_TAG = np.uint64(0x4330000000000000)
_U52 = np.uint64(52)
# SplitMix64
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S27 = np.uint64(27)
_S30 = np.uint64(30)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_S7 = np.uint64(7)
_S9 = np.uint64(9)
_S11 = np.uint64(11)
_S21 = np.uint64(21)
_S25 = np.uint64(25)
_LANES = 8  # xoshiro128++ streams per resample

_NINF = -np.inf
_PINF = np.inf
_N_CHECKS = len(IPS_CHECKS)
_U1 = np.uint64(1)


# ---------------------------------------------------------------------------------------------
# Vectorisable exp / log over buffers
# ---------------------------------------------------------------------------------------------


@intrinsic
def _f64_bits(typingctx, x):  # pragma: no cover - compiled
    """Bit pattern of a float64 as a uint64 (an LLVM bitcast)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.IntType(64))

    return types.uint64(types.float64), codegen


@intrinsic
def _bits_f64(typingctx, u):  # pragma: no cover - compiled
    """float64 with the bit pattern of a uint64 (an LLVM bitcast)."""
    if u != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())

    return types.float64(types.uint64), codegen


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _exp1(x):  # pragma: no cover - compiled
    """``exp(x)``, branch-free (vectorises when inlined in a loop), about 2 ulp.

    ``x = k ln2 + r`` (Cody-Waite), ``e^r`` by its degree-13 Taylor polynomial in Estrin form,
    ``2^k = 2^k1 2^k2`` built from exponent bits (correct down to the subnormals; -inf -> 0,
    +inf -> inf).
    """
    x = _EXP_LO if x < _EXP_LO else x
    x = _EXP_HI if x > _EXP_HI else x
    kd = x * _LOG2E + _SHIFTER
    kd = kd - _SHIFTER
    r = x - kd * _LN2HI
    r = r - kd * _LN2LO
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    s0 = (1.0 + r) + (_E2 + _E3 * r) * r2
    s1 = (_E4 + _E5 * r) + (_E6 + _E7 * r) * r2
    s2 = (_E8 + _E9 * r) + (_E10 + _E11 * r) * r2
    s3 = _E12 + _E13 * r
    p = (s0 + s1 * r4) + (s2 + s3 * r4) * r8
    k1 = (kd * 0.5 + _SHIFTER) - _SHIFTER
    k2 = kd - k1
    f1 = _bits_f64(_f64_bits(k1 + _SHIFTER_BIAS) << _U52)
    f2 = _bits_f64(_f64_bits(k2 + _SHIFTER_BIAS) << _U52)
    return (p * f1) * f2


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _log1(x):  # pragma: no cover - compiled
    """``log(x)`` for finite ``x > 0``, branch-free, about 2 ulp.

    ``x = 2^e m``, ``m`` in ``[sqrt(1/2), sqrt(2))`` (subnormals scaled by ``2^52`` first);
    ``log m = 2 atanh(s)``, ``s = (m - 1) / (m + 1)``, series to ``s^19`` in Estrin form.
    """
    sub = x < _DBL_MIN
    xs = x * _TWO52 if sub else x
    eadj = -52.0 if sub else 0.0
    b = _f64_bits(xs)
    m = _bits_f64((b & _MANT_MASK) | _ONE_BITS)
    e = (_bits_f64((b >> _U52) | _EXP_TAG) - _EXP_OFFSET) + eadj
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    f = m - 1.0
    s = f / (f + 2.0)
    z = s * s
    z2 = z * z
    z4 = z2 * z2
    z8 = z4 * z4
    a0 = (_L3 + _L5 * z) + (_L7 + _L9 * z) * z2
    a1 = (_L11 + _L13 * z) + (_L15 + _L17 * z) * z2
    r = ((a0 + a1 * z4) + _L19 * z8) * z
    s2 = s * 2.0
    return e * _LN2HI + ((s2 + s2 * r) + e * _LN2LO)


@njit(cache=True, error_model="numpy")
def _exp_into(x, shift, out, n):  # pragma: no cover - compiled
    """``out[:n] = exp(x[:n] - shift)``."""
    for j in range(n):
        out[j] = _exp1(x[j] - shift)


# ---------------------------------------------------------------------------------------------
# ips_moments
# ---------------------------------------------------------------------------------------------


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def _ips_accumulate(buf, m, clip, rw, off, n):  # pragma: no cover - compiled
    """Sums of w, w^2, w r, (w r)^2, w^2 r with ``w = exp(min(buf, clip) - m)`` over ``n``
    samples.

    ``reassoc`` lets LLVM keep lane-wise partial sums; :func:`_exp1` keeps its own flags.
    """
    a = 0.0
    b = 0.0
    c = 0.0
    d = 0.0
    f = 0.0
    for j in range(n):
        lj = buf[j]
        wj = _exp1((lj if lj < clip else clip) - m)
        wr = wj * rw[off + np.uint64(j)]  # uint64 offset: no wraparound select
        a += wj
        b += wj * wj
        c += wr
        d += wr * wr
        f += wj * wr
    return a, b, c, d, f


@njit(cache=True, error_model="numpy")
def _ips_scan(lt, ll, rw, off, n, clip, buf):  # pragma: no cover - compiled
    """buf[j] = log_target - log_logging over a block; counts of clipped log-ratios, of
    invalid values (IPS_CHECKS) and of rewards outside [0, 1].

    Integer reductions only, so that LLVM vectorises the loop without fast-math (a NaN must
    fail the checks, not be assumed away).
    """
    ncl = 0
    nbad = 0
    nout = 0
    for j in range(n):
        k = off + np.uint64(j)
        t = lt[k]
        l = ll[k]
        r = rw[k]
        lr = t - l
        buf[j] = lr
        ncl += lr > clip
        # NaN fails every comparison; r - r is 0 exactly for finite r
        nbad += (not t <= 0.0) | (not l <= 0.0) | (l == _NINF) | (not (r - r) == 0.0)
        nout += (r < 0.0) | (r > 1.0)
    return ncl, nbad, nout


@njit(cache=True, fastmath={"nnan", "nsz"}, error_model="numpy")
def _block_max(buf, n):  # pragma: no cover - compiled
    """max(buf[:n]); ``nnan``: a block with NaN fails the checks of :func:`_ips_scan`."""
    mx = _NINF
    for j in range(n):
        v = buf[j]
        mx = v if v > mx else mx
    return mx


@njit(cache=True, error_model="numpy")
def _scan_bad(lt, ll, rw, s, e, first):  # pragma: no cover - compiled
    """First failing index of each check of IPS_CHECKS in [s, e), where not yet set."""
    for k in range(s, e):
        t = lt[k]
        l = ll[k]
        r = rw[k]
        fails = (
            np.isnan(t), t == _PINF, t > 0.0, np.isnan(l), l == _PINF, l == _NINF, l > 0.0,
            np.isnan(r), r == _PINF, r == _NINF,
        )
        for c in range(_N_CHECKS):
            if fails[c] and first[c] < 0:
                first[c] = k


@njit(cache=True, error_model="numpy")
def _ips_chunk(lt, ll, rw, s, e, clip, out, buf, first):  # pragma: no cover - compiled
    """Partial of samples [s, e): out = [M, sw, sw2, swr, swr2, sw2r, n_clipped, max_lr,
    n_reward_outside_unit]; ``first`` gets the first failing index of each check
    (IPS_CHECKS)."""
    m_run = _NINF
    sw = 0.0
    sw2 = 0.0
    swr = 0.0
    swr2 = 0.0
    sw2r = 0.0
    ncl = 0
    nout = 0
    lrmax = _NINF
    for b0 in range(s, e, _BLOCK):
        ln = min(_BLOCK, e - b0)
        ub0 = np.uint64(b0)  # uint64 offsets: no negative-index wraparound select
        c_cl, c_bad, c_out = _ips_scan(lt, ll, rw, ub0, ln, clip, buf)
        ncl += c_cl
        nout += c_out
        if c_bad:  # (ips_moments, which skips the checks, sums such blocks all the same)
            _scan_bad(lt, ll, rw, b0, b0 + ln, first)
        blr = _block_max(buf, ln)
        lrmax = blr if blr > lrmax else lrmax
        bmax = blr if blr < clip else clip  # max_j min(lr_j, clip) = min(max_j lr_j, clip)
        if bmax > m_run:
            sc = math.exp(m_run - bmax)  # 0 on the first finite block
            sc2 = sc * sc
            sw *= sc
            swr *= sc
            sw2 *= sc2
            swr2 *= sc2
            sw2r *= sc2
            m_run = bmax
        if m_run == _NINF:
            continue  # every weight so far is zero
        a, b, c, d, f = _ips_accumulate(buf, m_run, clip, rw, ub0, ln)
        sw += a
        sw2 += b
        swr += c
        swr2 += d
        sw2r += f
    out[0] = m_run
    out[1] = sw
    out[2] = sw2
    out[3] = swr
    out[4] = swr2
    out[5] = sw2r
    out[6] = ncl
    out[7] = lrmax
    out[8] = nout


@njit(cache=True, parallel=True, error_model="numpy")
def _ips_partials(lt, ll, rw, clip, parts, first):  # pragma: no cover - compiled
    n = lt.shape[0]
    for ci in prange(parts.shape[0]):
        buf = np.empty(_BLOCK)
        s = ci * _CHUNK
        e = min(n, s + _CHUNK)
        _ips_chunk(lt, ll, rw, s, e, clip, parts[ci], buf, first[ci])


@njit(cache=True, error_model="numpy")
def _ips_merge(parts, n, out):  # pragma: no cover - compiled
    m = _NINF
    max_lr = _NINF
    ncl = 0.0
    for ci in range(parts.shape[0]):
        m = max(m, parts[ci, 0])
        max_lr = max(max_lr, parts[ci, 7])
        ncl += parts[ci, 6]
    sw = 0.0
    sw2 = 0.0
    swr = 0.0
    swr2 = 0.0
    sw2r = 0.0
    if m > _NINF:
        for ci in range(parts.shape[0]):
            pm = parts[ci, 0]
            if pm == _NINF:
                continue  # all weights of this chunk are zero
            sc = 1.0 if pm == m else math.exp(pm - m)
            sc2 = sc * sc
            sw += parts[ci, 1] * sc
            sw2 += parts[ci, 2] * sc2
            swr += parts[ci, 3] * sc
            swr2 += parts[ci, 4] * sc2
            sw2r += parts[ci, 5] * sc2
    out[0] = m
    out[1] = n
    out[2] = sw
    out[3] = sw2
    out[4] = swr
    out[5] = swr2
    out[6] = sw2r
    out[7] = ncl
    out[8] = max_lr


# ---------------------------------------------------------------------------------------------
# Coverage and diversity
# ---------------------------------------------------------------------------------------------


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
            w[t] = _exp1(w[t])
    else:
        for t in range(n):
            w[t] = _exp1(lw[r0 + np.uint64(t)])


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
        lg = _log1(v if v > 0.0 else 1.0)
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
            lg = _log1(v if v > 0.0 else 1.0)
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
            lv = _log1(v if v > 0.0 else 1.0)
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
    return x * _log1(x) if x > 0.0 else 0.0


@njit(cache=True, error_model="numpy")
def _hist_entropy(tot, g, z, fallback):  # pragma: no cover - compiled
    """(tot log z - g) / z for z > 0, else ``fallback``."""
    return (tot * _log1(z) - g) / z if z > 0.0 else fallback


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
        w[k - s] = _exp1(lw[k] - shift)
    return star


@njit(cache=True, parallel=True, error_model="numpy")
def _jackknife_hard(ptr, lw, labels, C, self_normalize, ustarts, out):  # pragma: no cover
    for bi in prange(ustarts.shape[0] - 1):
        a = np.empty(C)
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
            a[:] = 0.0
            z_ex = 0.0
            for k in range(s, e):
                if k != star:
                    a[labels[k]] += w[k - s]
                    z_ex += w[k - s]
            c_star = -1
            a_star_ex = 0.0
            w_star = 0.0
            if star >= 0:
                c_star = labels[star]
                w_star = w[star - s]
                a_star_ex = a[c_star]
                a[c_star] += w_star
            if self_normalize:
                z = z_ex + w_star
            else:
                z = float(K)
                z_ex = K - 1.0
            tot_o = 0.0
            g_o = 0.0
            for c in range(C):
                if c != c_star:
                    tot_o += a[c]
                    g_o += _xlogx(a[c])
            tot = tot_o
            g = g_o
            if star >= 0:
                tot += a[c_star]
                g += _xlogx(a[c_star])
            h = _hist_entropy(tot, g, z, 0.0)
            if K == 1:
                out[i] = h
                continue
            if not z > 0.0:
                out[i] = 0.0
                continue
            h_ex = h
            if star >= 0:  # summed afresh: no cancellation against the largest weight
                h_ex = _hist_entropy(tot_o + a_star_ex, g_o + _xlogx(a_star_ex), z_ex, h)
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
                aa = a[labels[k]]
                na = max(aa - wk, 0.0)
                s_del += ((tot - aa + na) * _log1(den) - (g - _xlogx(aa) + _xlogx(na))) / den
            out[i] = K * h - (K - 1.0) / K * s_del


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
                s_del += (tn * _log1(den) - gn) / den
            out[i] = K * h - (K - 1.0) / K * s_del


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def _seed_streams(key, b, st):  # pragma: no cover - compiled
    """st[k, l] = word k (a uint32 value in a uint64) of the xoshiro128++ state of lane l of
    resample b (see the reference)."""
    for l in range(_LANES):
        c = np.uint64(16) * np.uint64(b) + np.uint64(2 * l)
        u0 = _splitmix64_1(key + (c + _U1) * _GOLDEN)
        u1 = _splitmix64_1(key + (c + np.uint64(2)) * _GOLDEN)
        st[0, l] = u0 & _LOW32
        st[1, l] = u0 >> _S32
        st[2, l] = u1 & _LOW32
        st[3, l] = u1 >> _S32
        if (st[0, l] | st[1, l] | st[2, l] | st[3, l]) == 0:
            st[0, l] = _U1


@njit(cache=True, error_model="numpy")
def _splitmix64_1(z):  # pragma: no cover - compiled
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, error_model="numpy")
def _fill_indices(st, nn, steps, ib):  # pragma: no cover - compiled
    """ib[8 t + l] = (x_t(l) * n) >> 32 for t < steps: xoshiro128++ on 8 lanes, the 32-bit
    words held in uint64 and masked (Numba widens uint32 arithmetic), Lemire's multiply-shift.
    """
    for t in range(steps):
        for l in range(_LANES):
            s0 = st[0, l]
            s1 = st[1, l]
            s2 = st[2, l]
            s3 = st[3, l]
            a = (s0 + s3) & _LOW32
            x = ((((a << _S7) | (a >> _S25)) & _LOW32) + s0) & _LOW32
            u = (s1 << _S9) & _LOW32
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= u
            s3 = ((s3 << _S11) | (s3 >> _S21)) & _LOW32
            st[0, l] = s0
            st[1, l] = s1
            st[2, l] = s2
            st[3, l] = s3
            ib[np.uint64(t) * np.uint64(_LANES) + np.uint64(l)] = (x * nn) >> _S32


@njit(cache=True, parallel=True, error_model="numpy")
def _bootstrap(values, n_boot, key, out):  # pragma: no cover - compiled
    n = values.shape[0]
    m = values.shape[1]
    nn = np.uint64(n)
    mm = np.uint64(m)
    flat = values.ravel()  # C-contiguous: a view; uint64 indices skip wraparound checks
    for b in prange(n_boot):
        ib = np.empty(_BOOT_BLOCK, np.uint64)
        st = np.empty((4, _LANES), np.uint64)
        _seed_streams(key, b, st)
        if m == 1:
            acc = np.zeros(_LANES)
            for s in range(0, n, _BOOT_BLOCK):
                ln = min(_BOOT_BLOCK, n - s)
                _fill_indices(st, nn, (ln + _LANES - 1) // _LANES, ib)
                j = 0
                while j + _LANES <= ln:
                    for l in range(_LANES):
                        acc[l] += flat[ib[j + l]]
                    j += _LANES
                while j < ln:
                    acc[0] += flat[ib[j]]
                    j += 1
            out[b, 0] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + (
                (acc[4] + acc[5]) + (acc[6] + acc[7]))
        else:
            for c in range(m):
                out[b, c] = 0.0
            for s in range(0, n, _BOOT_BLOCK):
                ln = min(_BOOT_BLOCK, n - s)
                _fill_indices(st, nn, (ln + _LANES - 1) // _LANES, ib)
                for j in range(ln):
                    row = ib[j] * mm
                    for c in range(m):
                        out[b, c] += flat[row + np.uint64(c)]


# ---------------------------------------------------------------------------------------------
# Public API (reference signatures)
# ---------------------------------------------------------------------------------------------


def _apply_thread_cap() -> None:
    """Honour ``POPE_NUM_THREADS`` (capped by Numba's pool size)."""
    env = os.environ.get("POPE_NUM_THREADS", "")
    try:
        req = int(env)
    except ValueError:
        req = 0
    cap = _numba_config.NUMBA_NUM_THREADS
    set_num_threads(min(req, cap) if req > 0 else cap)


def _check_ptr(prompt_ptr: np.ndarray, n_rows: int, name: str) -> int:
    if prompt_ptr.ndim != 1 or prompt_ptr.shape[0] < 1:
        raise ValueError(f"{name}: prompt_ptr must be 1-D with at least one entry")
    if prompt_ptr[0] != 0 or prompt_ptr[-1] != n_rows:
        raise ValueError(f"{name}: prompt_ptr must start at 0 and end at {n_rows}")
    if prompt_ptr.shape[0] > 1 and np.any(prompt_ptr[1:] < prompt_ptr[:-1]):
        raise ValueError(f"{name}: prompt_ptr must be non-decreasing")
    return prompt_ptr.shape[0] - 1


def ips_moments(
    log_target: np.ndarray, log_logging: np.ndarray, reward: np.ndarray, log_clip: float
) -> np.ndarray:
    """Numba twin of :func:`pope.backends.reference.ips_moments`."""
    n = log_target.shape[0]
    if log_target.ndim != 1 or log_logging.shape != (n,) or reward.shape != (n,):
        raise ValueError("ips_moments: log_target, log_logging and reward must be (n,) arrays")
    log_clip = float(log_clip)
    if math.isnan(log_clip):
        raise ValueError("ips_moments: log_clip must not be NaN")
    out = np.zeros(len(MOMENT_NAMES))
    if n == 0:
        out[0] = -np.inf
        out[8] = -np.inf
        return out
    _ips_pass(log_target, log_logging, reward, log_clip, out)
    return out


def _ips_pass(log_target, log_logging, reward, log_clip, out) -> tuple[np.ndarray, np.ndarray]:
    """The parallel pass and the merge into ``out[:9]``; returns (partials, first-bad)."""
    n = log_target.shape[0]
    _apply_thread_cap()
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    parts = np.empty((n_chunks, 9))
    first = np.full((n_chunks, _N_CHECKS), -1, dtype=np.int64)
    with parallel_chunksize(1):  # dynamic hand-out of chunks: robust to a busy core
        _ips_partials(
            np.ascontiguousarray(log_target, dtype=np.float64),
            np.ascontiguousarray(log_logging, dtype=np.float64),
            np.ascontiguousarray(reward, dtype=np.float64),
            log_clip,
            parts,
            first,
        )
    _ips_merge(parts, float(n), out)
    fb = np.full(_N_CHECKS, -1, dtype=np.int64)
    for c in range(_N_CHECKS):  # chunks in order: the first one set wins
        hit = np.flatnonzero(first[:, c] >= 0)
        if hit.size:
            fb[c] = first[hit[0], c]
    return parts, fb


def ips_moments_checked(
    log_target: np.ndarray, log_logging: np.ndarray, reward: np.ndarray, log_clip: float
) -> tuple[np.ndarray, np.ndarray]:
    """Numba twin of :func:`pope.backends.reference.ips_moments_checked` (one fused pass)."""
    n = log_target.shape[0]
    if log_target.ndim != 1 or log_logging.shape != (n,) or reward.shape != (n,):
        raise ValueError("ips_moments: log_target, log_logging and reward must be (n,) arrays")
    log_clip = float(log_clip)
    if math.isnan(log_clip):
        raise ValueError("ips_moments: log_clip must not be NaN")
    out = np.zeros(len(MOMENT_NAMES) + 1)
    out[1] = n
    if n == 0:
        out[[0, 8]] = -np.inf
        return out, np.full(_N_CHECKS, -1, dtype=np.int64)
    parts, fb = _ips_pass(log_target, log_logging, reward, log_clip, out)
    if (fb >= 0).any():
        out[:] = np.nan
    else:
        out[9] = parts[:, 8].sum()
    return out, fb


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
    _apply_thread_cap()
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
    _apply_thread_cap()
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
    if lab.size and (lab.min() < 0 or lab.max() >= n_aspects):
        raise ValueError("segment_jackknife_entropy_hard: labels must lie in [0, n_aspects)")
    out = np.zeros(n_prompts)
    if n_aspects == 1 or lab.size == 0:
        return out
    _apply_thread_cap()
    starts = _prompt_batches(ptr, 1, _BATCH_RESP, _BATCH_CELLS)
    with parallel_chunksize(2):
        _jackknife_hard(ptr, np.ascontiguousarray(log_weight, dtype=np.float64), lab,
                        n_aspects, bool(self_normalize), starts, out)
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
    _apply_thread_cap()
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
    _apply_thread_cap()
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
    _apply_thread_cap()
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


def bootstrap_sums(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Numba twin of :func:`pope.backends.reference.bootstrap_sums`."""
    if values.ndim != 2:
        raise ValueError("bootstrap_sums: values must be 2-D (n, m)")
    n, m = values.shape
    if not 1 <= n < 2**32:
        raise ValueError("bootstrap_sums: need 1 <= n < 2**32 rows")
    n_boot = int(n_boot)
    if n_boot < 0:
        raise ValueError("bootstrap_sums: n_boot must be >= 0")
    seed = int(seed)
    if not 0 <= seed <= _U64_MAX:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
    out = np.zeros((n_boot, m))
    if n_boot == 0 or m == 0:
        return out
    _apply_thread_cap()
    key = splitmix64(np.array([seed], dtype=np.uint64))[0]
    with parallel_chunksize(max(1, (1 << 20) // n)):  # blocks of about 2^20 draws
        _bootstrap(np.ascontiguousarray(values, dtype=np.float64), n_boot, key, out)
    return out
