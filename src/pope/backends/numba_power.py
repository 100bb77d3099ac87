"""Numba twin of :func:`pope.power_sums.power_sums_reference` (elementary symmetric sums).

Same recursion as the reference, in response order per prompt (serial: a parallel Numba
region in the parent process deadlocks forked workers of a process pool); returns
the un-normalised :math:`e_j` sums (``_normalise`` of :mod:`pope.power_sums` divides by
:math:`\\binom{K}{j}`). Hard labels keep one ``(C, L+1)`` state per prompt and touch only the
labelled aspect; soft rows update every aspect.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["elementary_sums"]

_BLOCK = 256  # prompts per state reset block


@njit(cache=True, nogil=True)
def _hard(ptr, w, labels, c, degree):  # pragma: no cover - compiled
    n_prompts = ptr.shape[0] - 1
    e_p = np.zeros((n_prompts, degree + 1))
    e_s = np.zeros((n_prompts, degree + 1))
    n_blocks = (n_prompts + _BLOCK - 1) // _BLOCK
    for b in range(n_blocks):
        st = np.empty((c, degree + 1))  # one state per block of prompts, reset per prompt
        ws = np.empty(degree + 1)
        for i in range(b * _BLOCK, min(n_prompts, (b + 1) * _BLOCK)):
            st[:, :] = 0.0
            st[:, 0] = 1.0
            ws[:] = 0.0
            ws[0] = 1.0
            k0 = ptr[i]
            for t in range(ptr[i + 1] - k0):
                r = k0 + t
                wt = w[r]
                lab = labels[r]
                for j in range(min(degree, t + 1), 0, -1):
                    ws[j] += wt * ws[j - 1]
                    st[lab, j] += wt * st[lab, j - 1]
            for j in range(1, degree + 1):
                acc = 0.0
                for a in range(c):
                    acc += st[a, j]
                e_p[i, j] = acc
                e_s[i, j] = ws[j]
            e_p[i, 0] = 1.0
            e_s[i, 0] = 1.0
    return e_p, e_s


@njit(cache=True, nogil=True)
def _soft(ptr, w, soft, degree):  # pragma: no cover - compiled
    n_prompts = ptr.shape[0] - 1
    c = soft.shape[1]
    e_p = np.zeros((n_prompts, degree + 1))
    e_s = np.zeros((n_prompts, degree + 1))
    n_blocks = (n_prompts + _BLOCK - 1) // _BLOCK
    for b in range(n_blocks):
        st = np.empty((degree + 1, c))
        ws = np.empty(degree + 1)
        for i in range(b * _BLOCK, min(n_prompts, (b + 1) * _BLOCK)):
            st[:, :] = 0.0
            st[0, :] = 1.0
            ws[:] = 0.0
            ws[0] = 1.0
            k0 = ptr[i]
            for t in range(ptr[i + 1] - k0):
                r = k0 + t
                wt = w[r]
                for j in range(min(degree, t + 1), 0, -1):
                    ws[j] += wt * ws[j - 1]
                    for a in range(c):
                        st[j, a] += wt * soft[r, a] * st[j - 1, a]
            for j in range(1, degree + 1):
                acc = 0.0
                for a in range(c):
                    acc += st[j, a]
                e_p[i, j] = acc
                e_s[i, j] = ws[j]
            e_p[i, 0] = 1.0
            e_s[i, 0] = 1.0
    return e_p, e_s


def elementary_sums(
    ptr: np.ndarray,
    w: np.ndarray,
    labels: np.ndarray | None,
    soft: np.ndarray | None,
    c: int,
    degree: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Un-normalised ``(sum_c e_j(x_c), e_j(w))`` per prompt, ``(P, degree + 1)`` each."""
    if labels is not None:
        return _hard(ptr, w, labels, c, degree)
    return _soft(ptr, w, soft, degree)
