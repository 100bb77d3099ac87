"""Numba ``ips_moments`` / ``ips_moments_checked``: one parallel pass with an online max.

Chunks of ``_CHUNK`` samples run in parallel (``prange``); each keeps a running max ``M`` of the
clipped log-ratio, updated once per block of ``_BLOCK`` samples, and rescales its sums by
``exp(M_old - M_new)`` when ``M`` grows (as in an online softmax). Partials are merged in chunk
order, so the result does not depend on the number of threads. Fast-math is limited to
``reassoc`` on the reductions (lane-wise partial sums).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, parallel_chunksize, prange

from pope.backends.numba_math import exp1
from pope.backends.numba_threads import apply_thread_cap
from pope.backends.reference import IPS_CHECKS, MOMENT_NAMES

__all__ = ["ips_moments", "ips_moments_checked"]

# partition (fixed, so results do not depend on the thread count)
_CHUNK = 1 << 16
_BLOCK = 512
_NINF = -np.inf
_PINF = np.inf
_N_CHECKS = len(IPS_CHECKS)


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def _ips_accumulate(buf, m, clip, rw, off, n):  # pragma: no cover - compiled
    """Sums of w, w^2, w r, (w r)^2, w^2 r with ``w = exp(min(buf, clip) - m)`` over ``n``
    samples.

    ``reassoc`` lets LLVM keep lane-wise partial sums; :func:`exp1` keeps its own flags.
    """
    a = 0.0
    b = 0.0
    c = 0.0
    d = 0.0
    f = 0.0
    for j in range(n):
        lj = buf[j]
        wj = exp1((lj if lj < clip else clip) - m)
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
            np.isnan(t),
            t == _PINF,
            t > 0.0,
            np.isnan(l),
            l == _PINF,
            l == _NINF,
            l > 0.0,
            np.isnan(r),
            r == _PINF,
            r == _NINF,
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
    apply_thread_cap()
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
