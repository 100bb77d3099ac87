"""Numba ``bootstrap_sums``: parallel over resamples, indices bit-identical to the reference.

The 8 xoshiro128++ streams of a resample and their SplitMix64 seeding are computed with
``uint64`` arithmetic only (every constant is a ``np.uint64``: mixing ``uint64`` with ``int64``
would promote to ``float64``; 32-bit words are masked).
"""

from __future__ import annotations

import numpy as np
from numba import njit, parallel_chunksize, prange

from pope.backends.numba_threads import apply_thread_cap
from pope.backends.reference import splitmix64

__all__ = ["bootstrap_sums"]

_U64_MAX = (1 << 64) - 1
# index buffer (a multiple of the 8 lanes)
_BOOT_BLOCK = 512
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
    with parallel_chunksize(max(1, (1 << 20) // n)):  # blocks of about 2^20 draws
        _bootstrap(np.ascontiguousarray(values, dtype=np.float64), n_boot, key, out)
    return out
