"""The branch-free ``exp1`` / ``log1`` of the Numba kernels against NumPy (libm), in ulp.

Both are documented as about 2 ulp; the bound here is 4 ulp of the result (a relative error
of 4 * 2^-52), over the whole normal range and into the subnormals, where an absolute bound
of a few subnormal steps (4 * 2^-1074) applies instead.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from pope.backends.numba_math import exp1, log1

ULP = 2.0**-52
TINY = 2.0**-1074


@njit(cache=False)
def _exp_all(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = exp1(x[i])
    return out


@njit(cache=False)
def _log_all(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = log1(x[i])
    return out


def _x_exp(rng):
    grid = np.linspace(-745.0, 709.7, 200_001)
    near = rng.uniform(-1e-6, 1e-6, 10_000)
    return np.concatenate([grid, rng.uniform(-745.0, 709.7, 100_000), near, [0.0, -0.0]])


def test_exp1_within_4_ulp():
    x = _x_exp(np.random.default_rng(0))
    got, ref = _exp_all(x), np.exp(x)
    err = np.abs(got - ref)
    assert np.all(err <= 4 * ULP * ref + 4 * TINY), float(np.max(err / np.maximum(ref, TINY)))


def test_exp1_limits():
    got = _exp_all(np.array([-np.inf, -800.0, 800.0, np.inf]))
    assert got[0] == 0.0 and got[1] == 0.0
    assert np.isinf(got[2]) or got[2] >= np.finfo(np.float64).max  # saturates, never NaN
    assert not np.isnan(got).any()


@pytest.mark.parametrize("lo,hi", [(-1074, -1022), (-1022, 1023)])
def test_log1_within_4_ulp(lo, hi):
    rng = np.random.default_rng(1)
    x = np.ldexp(rng.uniform(1.0, 2.0, 200_000), rng.integers(lo, hi, 200_000))
    x = np.concatenate([x[x > 0], [1.0, np.nextafter(1.0, 2.0), np.nextafter(1.0, 0.0)]])
    got, ref = _log_all(x), np.log(x)
    err = np.abs(got - ref)
    # near x = 1, log x -> 0: the absolute error is a few ulp of 1 (the rounding of x itself)
    assert np.all(err <= 4 * ULP * np.maximum(np.abs(ref), 1e-16) + 4 * ULP * np.abs(x - 1) + TINY)
