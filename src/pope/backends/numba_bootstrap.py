"""Numba ``bootstrap_sums``: parallel over resamples, counts bit-identical to the reference.

The Poisson-bootstrap counts come from the 8 xoshiro128++ streams of a resample (16 rows per
step, one 16-bit uniform per row, see :mod:`pope.backends.reference`), computed with
``uint64`` arithmetic only (every constant is a ``np.uint64``: mixing ``uint64`` with
``int64`` would promote to ``float64``; 32-bit words are masked). Each resample adds its rows
in order into 16 partial sums per column (row ``i`` into lane ``i mod 16``), as the C++ core.
"""

from __future__ import annotations

import numpy as np
from numba import njit, parallel_chunksize, prange

from pope.backends.numba_threads import apply_thread_cap
from pope.backends.reference import POISSON_TAILS, splitmix64

__all__ = ["bootstrap_sums"]

_U64_MAX = (1 << 64) - 1
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
_U1 = np.uint64(1)


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


_S16 = np.uint64(16)
_LOW16 = np.uint64(0xFFFF)
_THRESH = np.array([65536 - t for t in POISSON_TAILS], dtype=np.uint64)


@njit(cache=True, error_model="numpy")
def _step_counts(st, c):  # pragma: no cover - compiled
    """One step of the 8 streams: c[j] = count of row j of the next 16 (j = 2 l + half)."""
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
        lo = x & _LOW16
        hi = x >> _S16
        klo = 0
        khi = 0
        for t in range(_THRESH.shape[0]):
            klo += lo >= _THRESH[t]
            khi += hi >= _THRESH[t]
        c[2 * l] = klo
        c[2 * l + 1] = khi


@njit(cache=True, error_model="numpy")
def _one_resample(values, key, b, acc, c):  # pragma: no cover - compiled
    """Partial sums acc (m, 16) of resample b drawn with `key`; returns the number of rows."""
    n = values.shape[0]
    m = values.shape[1]
    st = np.empty((4, _LANES), np.uint64)
    _seed_streams(key, b, st)
    acc[:, :] = 0.0
    ntot = 0
    for r0 in range(0, n, 16):
        _step_counts(st, c)
        ln = min(16, n - r0)
        if m == 1 and ln == 16:
            for j in range(16):
                acc[0, j] += np.float64(c[j]) * values[r0 + j, 0]
                ntot += c[j]
        else:
            for j in range(ln):
                cj = np.float64(c[j])
                ntot += c[j]
                for col in range(m):
                    acc[col, j] += cj * values[r0 + j, col]
    return ntot


@njit(cache=True, error_model="numpy")
def _sum16(a):  # pragma: no cover - compiled
    s0 = (a[0] + a[4]) + (a[8] + a[12])
    s1 = (a[1] + a[5]) + (a[9] + a[13])
    s2 = (a[2] + a[6]) + (a[10] + a[14])
    s3 = (a[3] + a[7]) + (a[11] + a[15])
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, parallel=True, error_model="numpy")
def _bootstrap(values, n_boot, key0, out):  # pragma: no cover - compiled
    n = values.shape[0]
    m = values.shape[1]
    for b in prange(n_boot):
        acc = np.empty((m, 16))
        c = np.empty(16, np.uint64)
        ntot = _one_resample(values, key0, b, acc, c)
        att = np.uint64(1)
        while ntot == 0:  # no row drawn: the next attempt's key
            ntot = _one_resample(values, _splitmix64_1(key0 + att * _GOLDEN), b, acc, c)
            att += np.uint64(1)
        scale = n / ntot
        for col in range(m):
            out[b, col] = _sum16(acc[col]) * scale


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
    apply_thread_cap()
    key = splitmix64(np.array([seed], dtype=np.uint64))[0]
    with parallel_chunksize(max(1, (1 << 20) // n)):  # blocks of about 2^20 row draws
        _bootstrap(np.ascontiguousarray(values, dtype=np.float64), n_boot, key, out)
    return out
