r"""Branch-free ``exp`` / ``log`` for the Numba kernels (LLVM inlines and vectorises them).

``math.exp`` / ``math.log`` would be scalar library calls inside the loops. ``exp1``: Cody-Waite
reduction :math:`x = k\ln 2 + r`, :math:`e^r` by its degree-13 Taylor polynomial,
:math:`2^k = 2^{k_1} 2^{k_2}` from exponent bits; ``log1``: :math:`x = 2^e m`,
:math:`\log m = 2\,\mathrm{atanh}((m - 1)/(m + 1))`. Both about 2 ulp; the float/int bit
casts are LLVM ``bitcast`` intrinsics.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["exp1", "exp_into", "log1"]

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
def exp1(x):  # pragma: no cover - compiled
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
    # numba's @intrinsic stub types the call as (typingctx, x); numba passes typingctx
    f1 = _bits_f64(_f64_bits(k1 + _SHIFTER_BIAS) << _U52)  # type: ignore[call-arg, var-annotated]
    f2 = _bits_f64(_f64_bits(k2 + _SHIFTER_BIAS) << _U52)
    return (p * f1) * f2


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def log1(x):  # pragma: no cover - compiled
    """``log(x)`` for finite ``x > 0``, branch-free, about 2 ulp.

    ``x = 2^e m``, ``m`` in ``[sqrt(1/2), sqrt(2))`` (subnormals scaled by ``2^52`` first);
    ``log m = 2 atanh(s)``, ``s = (m - 1) / (m + 1)``, series to ``s^19`` in Estrin form.
    """
    sub = x < _DBL_MIN
    xs = x * _TWO52 if sub else x
    eadj = -52.0 if sub else 0.0
    b = _f64_bits(xs)  # type: ignore[call-arg, var-annotated]  # numba @intrinsic, as above
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
def exp_into(x, shift, out, n):  # pragma: no cover - compiled
    """``out[:n] = exp(x[:n] - shift)``."""
    for j in range(n):
        out[j] = exp1(x[j] - shift)
