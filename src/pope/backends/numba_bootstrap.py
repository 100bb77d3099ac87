"""Numba ``bootstrap_sums``: parallel over groups of resamples, counts bit-identical to the
reference.

The Poisson-bootstrap counts come from the 8 xoshiro128++ streams of a resample (16 rows per
step, one 16-bit uniform per row, see :mod:`pope.backends.reference`). The algorithm of
``csrc/bootstrap.cpp``: a group of ``_GROUP`` resamples goes through the rows together, a
block of ``_BLOCK_STEPS`` steps at a time (its streams, counts and partial sums stay in L1):
one vector loop per step advances the group's ``8 _GROUP`` streams (32-bit lanes, 8 to a
vector), one loop over the block's 16-bit halves turns each into its row's count (16-bit
compares, 16 to a vector), and one loop per step and lane adds count times value into 16
partial sums per column (row ``i`` into lane ``i mod 16``), vectorised over the group. The
streams are stepped and counted through small LLVM intrinsics (Numba's own integer arithmetic
is 64-bit, a quarter as wide in a vector); the seeding and the redraw of a resample that drew
no row use ``uint64`` arithmetic (every constant a ``np.uint64``: mixing ``uint64`` with
``int64`` would promote to ``float64``; 32-bit words masked).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, parallel_chunksize, prange, types
from numba.extending import intrinsic

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
    """Partial sums acc (m, 16) of resample b drawn with `key`; returns the number of rows
    (one resample at a time, scalar: for the redraws of resamples that drew no row)."""
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


# The group kernel: _GROUP resamples go through the rows together, a block of _BLOCK_STEPS
# steps (16 rows each) at a time. Its xoshiro128++ steps and counts use 32-bit and 16-bit
# LLVM integers through the intrinsics below, so that LLVM vectorises the loops over the
# group's 8 * _GROUP streams 8 lanes wide and over their 16-bit halves 16 wide.
_GROUP = 32  # resamples per group (passed to the kernel as a run-time value)
_BLOCK_STEPS = 16  # steps per block: the block's counts (16 KiB) stay in L1
_TH = tuple(65536 - t for t in POISSON_TAILS)  # u >= _TH[k] <=> count > k
# (u ^ 0x8000) > _TH16[k] (signed 16-bit) <=> count > k, passed to the kernel as run-time
# values (against constants LLVM may turn the compares into unsigned ones)
_TH16 = np.array([(t - 1) ^ 0x8000 for t in _TH], dtype=np.uint16).view(np.int16)
_U32 = types.uint32
_I32 = llvm_ir.IntType(32)
_I16 = llvm_ir.IntType(16)


def _binop32(op: str):
    def typer(typingctx, a, b):  # pragma: no cover - compile time
        def codegen(context, builder, signature, args):
            return getattr(builder, op)(args[0], args[1])

        return _U32(_U32, _U32), codegen

    return intrinsic(typer)


_add32 = _binop32("add")
_xor32 = _binop32("xor")


def _rotl32(k: int):
    def typer(typingctx, a):  # pragma: no cover - compile time
        def codegen(context, builder, signature, args):
            x = args[0]
            hi = builder.shl(x, llvm_ir.Constant(_I32, k))
            return builder.or_(hi, builder.lshr(x, llvm_ir.Constant(_I32, 32 - k)))

        return _U32(_U32), codegen

    return intrinsic(typer)


_rotl7 = _rotl32(7)
_rotl11 = _rotl32(11)


@intrinsic
def _shl9(typingctx, a):  # pragma: no cover - compile time
    def codegen(context, builder, signature, args):
        return builder.shl(args[0], llvm_ir.Constant(_I32, 9))

    return _U32(_U32), codegen


def _half_f64(shift: int):
    def typer(typingctx, c):  # pragma: no cover - compile time
        def codegen(context, builder, signature, args):
            h = builder.and_(builder.lshr(args[0], _I32(shift)), _I32(0xFFFF))
            return builder.sitofp(h, llvm_ir.DoubleType())

        return types.float64(_U32), codegen

    return intrinsic(typer)


_lo_f64 = _half_f64(0)
_hi_f64 = _half_f64(16)
_LOW16_32 = np.uint32(0xFFFF)
_ULANES = np.uint64(_LANES)
_U2 = np.uint64(2)
_U16 = np.uint64(16)
_S16_32 = np.uint32(16)


@njit(cache=True, error_model="numpy")
def _seed_group(key, b0, G, st, s0, s1, s2, s3):  # pragma: no cover - compiled
    """The streams of resamples b0 .. b0 + G, lane-major: stream i = G l + g."""
    for g in range(G):
        _seed_streams(key, b0 + g, st)
        for l in range(_LANES):
            s0[l * G + g] = st[0, l]
            s1[l * G + g] = st[1, l]
            s2[l * G + g] = st[2, l]
            s3[l * G + g] = st[3, l]


@intrinsic
def _count8(typingctx, u, t0, t1, t2, t3, t4, t5, t6, t7):  # pragma: no cover - compile time
    """#{k : u ^ 0x8000 > t_k} for a 16-bit uniform u (signed 16-bit compares of the
    sign-flipped u, as csrc/bootstrap.cpp: AVX2 has no unsigned ones), a 16-bit count."""

    def codegen(context, builder, signature, args):
        us = builder.xor(args[0], _I16(0x8000 - 65536))
        n = _I16(0)
        for t in args[1:]:
            n = builder.sub(n, builder.sext(builder.icmp_signed(">", us, t), _I16))
        return n

    return types.uint16(types.uint16, *([types.int16] * 8)), codegen


@njit(cache=True, error_model="numpy")
def _group_counts(s0, s1, s2, s3, cnt, steps, G, th):  # pragma: no cover - compiled
    """``steps`` steps of the group's streams: cnt[t 8 G + i] = the output of stream i at
    step t; then, in place, its two 16-bit halves replaced by their counts (one loop over
    the block's halves, 16 to a vector), so that cnt[t 8 G + i] = lo | hi << 16 holds the
    counts of its rows 2 l and 2 l + 1 of step t (l = i / G)."""
    uns = np.uint64(_LANES * G)
    for t in range(np.uint64(steps)):
        o = t * uns
        for i in range(uns):
            a0 = s0[i]
            a1 = s1[i]
            a2 = s2[i]
            a3 = s3[i]
            cnt[o + i] = _add32(_rotl7(_add32(a0, a3)), a0)
            u = _shl9(a1)  # type: ignore[call-arg, var-annotated]  # numba @intrinsic
            a2 = _xor32(a2, a0)
            a3 = _xor32(a3, a1)
            a1 = _xor32(a1, a2)
            a0 = _xor32(a0, a3)
            a2 = _xor32(a2, u)
            s0[i] = a0
            s1[i] = a1
            s2[i] = a2
            s3[i] = _rotl11(a3)
    h = cnt.view(np.uint16)  # little endian: half 2 i is the low one
    t0, t1, t2, t3, t4, t5, t6, t7 = th[0], th[1], th[2], th[3], th[4], th[5], th[6], th[7]
    for j in range(np.uint64(2) * np.uint64(steps) * uns):
        h[j] = _count8(h[j], t0, t1, t2, t3, t4, t5, t6, t7)  # type: ignore[call-arg]  # @intrinsic


@njit(cache=True, error_model="numpy")
def _block_sums(values, r0, cnt, steps, G, acc, pk):  # pragma: no cover - compiled
    """Adds the block's rows r0 .. r0 + 16 steps into the group's partial sums
    acc[(16 col + j) G + g] (lane j = row mod 16 = 2 l + h) and its packed counts into
    pk[g]. The loops over the group run G (a run-time value) wide: with a constant trip
    count LLVM unrolls them and leaves them scalar; indices are uint64 (see
    :mod:`pope.backends.numba_coverage`)."""
    m = np.uint64(values.shape[1])
    uG = np.uint64(G)
    ur0 = np.uint64(r0)
    for t in range(np.uint64(steps)):
        for l in range(_ULANES):
            o = (t * _ULANES + l) * uG
            for g in range(uG):
                pk[g] = _add32(pk[g], cnt[o + g])
    for col in range(m):
        for t in range(np.uint64(steps)):
            for l in range(_ULANES):
                r = ur0 + _U16 * t + _U2 * l
                ve = values[r, col]
                vo = values[r + _U1, col]
                o = (t * _ULANES + l) * uG
                ae = (_U16 * col + _U2 * l) * uG
                ao = ae + uG
                for g in range(uG):
                    c = cnt[o + g]
                    acc[ae + g] += _lo_f64(c) * ve
                    acc[ao + g] += _hi_f64(c) * vo


@njit(cache=True, error_model="numpy")
def _tail_sums(values, r0, cnt, G, acc, ntot):  # pragma: no cover - compiled
    """The last, partial step (rows r0 .. n, counts in cnt[:8 G]) of the group."""
    n = values.shape[0]
    m = values.shape[1]
    for j in range(n - r0):
        l = j // 2
        sh = np.uint32(16 * (j % 2))
        for g in range(G):
            k = np.int64((cnt[l * G + g] >> sh) & _LOW16_32)
            ntot[g] += k
            for col in range(m):
                acc[(16 * col + j) * G + g] += np.float64(k) * values[r0 + j, col]


@njit(cache=True, error_model="numpy")
def _group_out(values, key0, b0, G, n_boot, acc, ntot, out):  # pragma: no cover - compiled
    """out[b] = (n / N_b) sum16(partial sums) for the group's resamples b < n_boot; a
    resample that drew no row is drawn again, alone, with the next attempts' keys."""
    n = values.shape[0]
    m = values.shape[1]
    a16 = np.empty(16)
    accb = np.empty((m, 16))
    c = np.empty(16, np.uint64)
    for g in range(min(G, n_boot - b0)):
        b = b0 + g
        nb = ntot[g]
        if nb == 0:
            att = np.uint64(1)
            while nb == 0:
                nb = _one_resample(values, _splitmix64_1(key0 + att * _GOLDEN), b, accb, c)
                att += np.uint64(1)
            for col in range(m):
                out[b, col] = _sum16(accb[col]) * (n / nb)
            continue
        for col in range(m):
            for j in range(16):
                a16[j] = acc[(16 * col + j) * G + g]
            out[b, col] = _sum16(a16) * (n / nb)


@njit(cache=True, parallel=True, error_model="numpy")
def _bootstrap(values, n_boot, key0, G, th, out):  # pragma: no cover - compiled
    """Groups of G resamples in parallel; within a group, blocks of _BLOCK_STEPS steps: the
    outputs of all its streams and their counts, then the block's partial sums."""
    n = values.shape[0]
    m = values.shape[1]
    n_full = n // 16
    for gi in prange((n_boot + G - 1) // G):
        b0 = gi * G
        s0 = np.empty(_LANES * G, np.uint32)
        s1 = np.empty(_LANES * G, np.uint32)
        s2 = np.empty(_LANES * G, np.uint32)
        s3 = np.empty(_LANES * G, np.uint32)
        _seed_group(key0, b0, G, np.empty((4, _LANES), np.uint64), s0, s1, s2, s3)
        cnt = np.empty(_BLOCK_STEPS * _LANES * G, np.uint32)
        acc = np.zeros(16 * m * G)
        ntot = np.zeros(G, np.int64)
        pk = np.empty(G, np.uint32)  # packed counts of a block: <= 8 * 8 * _BLOCK_STEPS a half
        for t0 in range(0, n_full, _BLOCK_STEPS):
            steps = min(_BLOCK_STEPS, n_full - t0)
            _group_counts(s0, s1, s2, s3, cnt, steps, G, th)
            pk[:] = 0
            _block_sums(values, 16 * t0, cnt, steps, G, acc, pk)
            for g in range(G):
                ntot[g] += np.int64(pk[g] & _LOW16_32) + np.int64(pk[g] >> _S16_32)
        if n > 16 * n_full:
            _group_counts(s0, s1, s2, s3, cnt, 1, G, th)
            _tail_sums(values, 16 * n_full, cnt, G, acc, ntot)
        _group_out(values, key0, b0, G, n_boot, acc, ntot, out)


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
    # tasks of about 2^20 row draws (a group draws n _GROUP)
    with parallel_chunksize(max(1, (1 << 20) // (n * _GROUP))):
        values = np.ascontiguousarray(values, dtype=np.float64)
        _bootstrap(values, n_boot, key, _GROUP, _TH16, out)
    return out
