r"""Unbiased importance-weighted power sums of each prompt's coverage (U-statistics).

For prompt :math:`i` with :math:`K` responses drawn i.i.d. from :math:`\pi_0`, importance weights
:math:`w_k = \pi(y_k|x)/\pi_0(y_k|x)` and aspect rows :math:`q_k`, put
:math:`x_{kc} = w_k q_k(c)`. For :math:`j` *distinct* responses,
:math:`\mathbb E[\prod_m x_{k_m c}] = p_\pi(c|x)^j`, so the U-statistics

.. math::

    \hat P_j = \sum_c \frac{e_j(x_{1c},\dots,x_{Kc})}{\binom{K}{j}}, \qquad
    \hat S_j = \frac{e_j(w_1,\dots,w_K)}{\binom{K}{j}}

(:math:`e_j` the elementary symmetric polynomial) satisfy
:math:`\mathbb E\hat P_j = P_j = \sum_c p_\pi(c|x)^j` and :math:`\mathbb E\hat S_j = 1` for
:math:`j \le K`. :math:`e_j` is computed by the recursion
:math:`e_j \leftarrow e_j + x_k e_{j-1}` over the responses (descending :math:`j`): only sums of
non-negative products, so no cancellation, :math:`O(K L)` per aspect.

The weights passed here are the *scaled* weights :math:`\tilde w = e^{\ell - m}` (a common
:math:`m` for the whole log), so :math:`\hat P_j` and :math:`\hat S_j` carry the factor
:math:`e^{-jm}`, which cancels in the self-normalised ratios of :mod:`pope.estimators.pope`.

``power_sums_reference`` is the NumPy reference (vectorised over prompts, one position at a
time); ``power_sums`` dispatches to the C++ (``pope._ext.elementary_sums_*``) or Numba twin
(:mod:`pope.backends.numba_power`) like the other CPU routines.
"""

from __future__ import annotations

import numpy as np

__all__ = ["power_sums", "power_sums_reference"]


def _binom_table(kmax: int, degree: int) -> np.ndarray:
    """``tab[K, j] = C(K, j)`` as float64 for ``K <= kmax``, ``j <= degree``."""
    tab = np.zeros((kmax + 1, degree + 1))
    tab[:, 0] = 1.0
    for k in range(1, kmax + 1):
        tab[k, 1:] = tab[k - 1, 1:] + tab[k - 1, :-1]
    return tab


def _normalise(
    e_p: np.ndarray, e_s: np.ndarray, counts: np.ndarray, degree: int
) -> tuple[np.ndarray, np.ndarray]:
    kmax = int(counts.max()) if counts.size else 0
    tab = _binom_table(kmax, degree)[counts]  # (P, L+1)
    ok = tab > 0
    den = np.where(ok, tab, 1.0)
    return np.where(ok, e_p / den, 0.0), np.where(ok, e_s / den, 0.0)


def power_sums_reference(
    prompt_ptr: np.ndarray,
    weight: np.ndarray,
    labels: np.ndarray | None,
    soft: np.ndarray | None,
    n_aspects: int,
    degree: int,
) -> tuple[np.ndarray, np.ndarray]:
    r"""``(P, S)`` of shape ``(n_prompts, degree + 1)``: :math:`\hat P_j`, :math:`\hat S_j`.

    Column :math:`j` is 0 where :math:`j > K_i`; column 0 is 1 for every prompt (the
    convention :math:`\hat P_0 = \hat S_0 = 1`). ``weight`` are non-negative (scaled)
    weights, ``labels`` hard aspects or ``soft`` rows (exactly one).
    """
    ptr = np.asarray(prompt_ptr, dtype=np.int64)
    counts = np.diff(ptr)
    n_prompts = counts.shape[0]
    c = int(n_aspects)
    e_p = np.zeros((n_prompts, degree + 1))
    e_s = np.zeros((n_prompts, degree + 1))
    # chunks of prompts keep the (prompts, C, L+1) state small
    step = max(1, (1 << 20) // max(1, c * (degree + 1)))
    for p0 in range(0, n_prompts, step):
        p1 = min(n_prompts, p0 + step)
        cnt = counts[p0:p1]
        state = np.zeros((p1 - p0, c, degree + 1))
        state[:, :, 0] = 1.0
        ws = np.zeros((p1 - p0, degree + 1))
        ws[:, 0] = 1.0
        kmax = int(cnt.max()) if cnt.size else 0
        for t in range(kmax):
            idx = np.flatnonzero(cnt > t)
            rows = ptr[p0 + idx] + t
            wt = weight[rows]
            for j in range(min(degree, t + 1), 0, -1):
                ws[idx, j] += wt * ws[idx, j - 1]
                if labels is not None:
                    lab = labels[rows]
                    state[idx, lab, j] += wt * state[idx, lab, j - 1]
                else:
                    assert soft is not None  # labels or soft, checked by the caller
                    state[idx, :, j] += (wt[:, None] * soft[rows]) * state[idx, :, j - 1]
        e_p[p0:p1] = state.sum(axis=1)
        e_s[p0:p1] = ws
    e_p[:, 0] = 1.0
    return _normalise(e_p, e_s, counts, degree)


def power_sums(
    prompt_ptr: np.ndarray,
    weight: np.ndarray,
    labels: np.ndarray | None,
    soft: np.ndarray | None,
    n_aspects: int,
    degree: int,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`power_sums_reference` or a compiled twin: C++ ``pope._ext`` (threads), Numba.

    ``backend``: ``"cpp"``, ``"numba"``, ``"reference"`` or ``None`` (automatic, as
    :func:`pope.backends.resolve_backend`).
    """
    from pope.backends import resolve_backend

    name = resolve_backend(backend)
    if name == "reference":
        return power_sums_reference(prompt_ptr, weight, labels, soft, n_aspects, degree)
    ptr = np.ascontiguousarray(prompt_ptr, dtype=np.int64)
    w = np.ascontiguousarray(weight, dtype=np.float64)
    lab = None if labels is None else np.ascontiguousarray(labels, dtype=np.int64)
    q = None if soft is None else np.ascontiguousarray(soft, dtype=np.float64)
    if name == "cpp":
        import pope._ext as ext

        e_p, e_s = (
            ext.elementary_sums_hard(ptr, w, lab, int(n_aspects), int(degree))
            if lab is not None
            else ext.elementary_sums_soft(ptr, w, q, int(degree))
        )
    else:
        from pope.backends import numba_power

        e_p, e_s = numba_power.elementary_sums(ptr, w, lab, q, int(n_aspects), int(degree))
    return _normalise(np.asarray(e_p), np.asarray(e_s), np.diff(ptr), degree)
