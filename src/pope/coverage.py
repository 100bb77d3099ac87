r"""Importance-weighted aspect coverage per prompt, its entropy, and the diversity reward.

For prompt :math:`i` with logged responses :math:`k = 1..K_i`, log weights :math:`\ell_{ik}`
(:math:`w = e^\ell`) and aspect rows :math:`q_{ik}` on the simplex over :math:`C` aspects (a
one-hot row for a hard label :math:`a_{ik}`):

* self-normalised coverage (``mode="self_normalized"``, default)
  :math:`\hat p(c|x_i) = \sum_k w_{ik} q_{ik}(c) / \sum_k w_{ik}`;
* IPS coverage (``mode="ips"``) :math:`\hat p(c|x_i) = \frac{1}{K_i}\sum_k w_{ik} q_{ik}(c)`
  (unbiased for :math:`p_\pi(c|x_i)`, but a row need not sum to 1);
* normalised coverage entropy :math:`h_i = H(\hat p(\cdot|x_i))/\log C
  = -\sum_c \hat p_c\log\hat p_c/\log C \in [0, 1]`;
* per-response diversity reward
  :math:`d_{ik} = -\sum_c q_{ik}(c)\log\hat p(c|x_i)/\log C`, which satisfies
  :math:`\sum_k w_{ik} d_{ik} / \sum_k w_{ik} = h_i` exactly under self-normalised coverage
  (and :math:`\frac{1}{K_i}\sum_k w_{ik} d_{ik} = h_i` under IPS coverage).

Conventions: :math:`0\log 0 = 0` (an aspect with :math:`\hat p = 0` contributes nothing, also to
:math:`d`); a prompt whose weights are all zero (the target gives probability 0 to all its
logged responses), or that has no response, has an all-zero coverage row and :math:`h_i = 0`;
with a single aspect (:math:`C = 1`) the entropy and the diversity reward are 0 (no division by
:math:`\log 1`).

Every function takes either a :class:`~pope.data.LoggedFeedback` (whose ``prompt_ptr`` and
aspects are used) or the CSR offsets ``prompt_ptr`` with ``aspect`` (hard labels, plus
``n_aspects``) or ``aspect_probs`` (soft rows). ``log_weight`` is the log importance weight of
each response in stored row order; ``None`` means all weights 1 (the logging policy's own
coverage). Work is dispatched to the CPU backend (``backend=None``: automatic).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from pope._validation import (
    as_float_array,
    as_index_array,
    check_lengths,
    check_n_aspects_size,
    check_prompt_ptr,
)
from pope.backends import get_backend
from pope.data import LoggedFeedback
from pope.options import COVERAGES, Coverage, DiversityEstimator, check_choice

__all__ = [
    "CoverageMode",
    "DiversityEstimator",
    "coverage",
    "coverage_entropy",
    "diversity_reward",
]

CoverageMode = Coverage  # the name this module used before pope.options

#: per-prompt entropy estimators of :func:`coverage_entropy` (the polynomial estimator pools
#: prompts, see :func:`pope.evaluate`)
PROMPT_ENTROPY_ESTIMATORS: tuple[str, ...] = ("plugin", "jackknife")

_LOG_MAX = float(np.log(np.finfo(np.float64).max))
_SOFT_TOL = 1e-6


def resolve_aspects(
    source: Any, aspect: Any, aspect_probs: Any, n_aspects: Any
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int]:
    """Validated ``(prompt_ptr, labels, soft, C)`` from a feedback object or from arrays."""
    if isinstance(source, LoggedFeedback):
        if aspect is not None or aspect_probs is not None or n_aspects is not None:
            raise ValueError(
                "aspects come from the LoggedFeedback; do not also pass aspect, aspect_probs "
                "or n_aspects"
            )
        if source.aspect is None and source.aspect_probs is None:
            raise ValueError("this LoggedFeedback has no aspects (aspect or aspect_probs)")
        assert source.n_aspects is not None  # LoggedFeedback sets it with its aspects
        c = int(source.n_aspects)
        return source.prompt_ptr, source.aspect, source.aspect_probs, c
    if (aspect is None) == (aspect_probs is None):
        raise ValueError("give exactly one of aspect (hard labels) or aspect_probs (soft rows)")
    if aspect is not None:
        labels = as_index_array(aspect, "aspect")
        n = labels.shape[0]
        if n_aspects is None:
            raise ValueError("n_aspects is required with hard aspect labels")
        c = _check_n_aspects(n_aspects)
        if n and (labels.min() < 0 or labels.max() >= c):
            bad = labels[(labels < 0) | (labels >= c)][0]
            raise ValueError(f"aspect label {bad} out of range [0, {c})")
        ptr = check_prompt_ptr(source, None)
        check_lengths(ptr, aspect=labels)
        return ptr, labels, None, c
    soft = as_float_array(aspect_probs, "aspect_probs", ndim=2)
    n, c = soft.shape
    if n_aspects is not None and _check_n_aspects(n_aspects) != c:
        raise ValueError(f"aspect_probs has {c} columns, n_aspects={n_aspects}")
    if c < 1:
        raise ValueError("aspect_probs must have at least one column")
    if n and soft.min() < 0:
        raise ValueError("aspect_probs must be >= 0")
    if n:
        err = np.abs(soft.sum(axis=1) - 1.0)
        if err.max() > _SOFT_TOL:
            i = int(np.argmax(err))
            raise ValueError(f"aspect_probs rows must sum to 1; row {i} sums to {soft[i].sum()!r}")
    ptr = check_prompt_ptr(source, None)
    check_lengths(ptr, aspect_probs=soft)
    return ptr, None, soft, c


def _check_n_aspects(c: Any) -> int:
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
        raise TypeError(f"n_aspects must be an int, got {type(c).__name__}")
    if c < 1:
        raise ValueError(f"n_aspects must be >= 1, got {c}")
    return check_n_aspects_size(int(c))


def check_log_weight(log_weight: Any, n: int, mode: str) -> np.ndarray:
    """Validated log weights (``-inf`` allowed; NaN and ``+inf`` not); zeros for ``None``."""
    check_choice(mode, "mode", COVERAGES)
    if log_weight is None:
        return np.zeros(n)
    lw = as_float_array(log_weight, "log_weight", allow_neginf=True)
    if lw.shape[0] != n:
        raise ValueError(f"log_weight has length {lw.shape[0]}, expected {n}")
    if mode == "ips" and lw.size and lw.max() > _LOG_MAX:
        raise ValueError(
            f"a weight is exp({lw.max():.1f}), beyond float64, which IPS coverage cannot use; "
            "use mode='self_normalized' or clip the weights"
        )
    return lw


def coverage_core(
    be: Any,
    ptr: np.ndarray,
    lw: np.ndarray,
    labels: np.ndarray | None,
    soft: np.ndarray | None,
    c: int,
    self_normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Backend dispatch on validated inputs: ``(p (P, C), H (P,))``, H in nats."""
    if labels is not None:
        p, h = be.segment_coverage_hard(ptr, lw, labels, c, self_normalize)
    else:
        p, h = be.segment_coverage_soft(ptr, lw, soft, self_normalize)
    return np.asarray(p, dtype=np.float64), np.asarray(h, dtype=np.float64)


def _xlogx(x: np.ndarray) -> np.ndarray:
    """:math:`x\\log x` elementwise with :math:`0\\log 0 = 0` (``x >= 0``)."""
    out = np.zeros(np.shape(x))
    np.log(x, out=out, where=x > 0)
    out *= x
    return out


def _segment_sum(x: np.ndarray, starts: np.ndarray, nonempty: np.ndarray) -> np.ndarray:
    """Per-prompt sums of the rows of ``x`` (CSR, grouped rows); 0 for empty prompts."""
    out = np.zeros((nonempty.shape[0], *x.shape[1:]))
    if starts.size:
        out[nonempty] = np.add.reduceat(x, starts, axis=0)
    return out


def jackknife_entropy_core(
    ptr: np.ndarray,
    lw: np.ndarray,
    labels: np.ndarray | None,
    soft: np.ndarray | None,
    c: int,
    self_normalize: bool,
) -> np.ndarray:
    r"""Delete-one-response jackknife of the coverage entropy per prompt (nats), ``(P,)``.

    :math:`H^J_i = K_i H(\hat p_i) - \frac{K_i-1}{K_i}\sum_k H(\hat p_{i,-k})` with the
    leave-one-out coverage :math:`\hat p_{i,-k} = (A_i - w_k q_k) / (Z_i - t_k)`, where
    :math:`A_i = \sum_k w_k q_k`, and :math:`Z_i = \sum_k w_k`, :math:`t_k = w_k`
    (self-normalised) or :math:`Z_i = K_i`, :math:`t_k = 1` (IPS). Conventions:
    :math:`K_i \le 1` gives the plug-in :math:`H(\hat p_i)`; a deletion that leaves no
    positive weight (self-normalised, the prompt's only positive-weight response) counts
    :math:`H(\hat p_{i,-k}) = H(\hat p_i)`, so a prompt with one positive weight also gets
    the plug-in; a zero-weight response deletes nothing (:math:`\hat p_{i,-k} = \hat p_i`);
    a prompt without positive weight (self-normalised) or response gets 0. No clipping.

    Numerics: self-normalised weights are shifted by the prompt's largest log-weight. Every
    deletion but that of the prompt's largest-weight response removes at most half of the
    prompt's weight, so subtracting it from the totals is accurate; the largest-weight
    response's leave-one-out sums are summed afresh from the other rows (no cancellation).
    Hard labels cost :math:`O(N + PC)` (only one component of the histogram changes per
    deletion), soft rows :math:`O(NC)`.
    """
    n_prompts = ptr.shape[0] - 1
    n = int(ptr[-1])
    counts = np.diff(ptr)
    nonempty = counts > 0
    starts = ptr[:-1][nonempty]
    seg = np.repeat(np.arange(n_prompts), counts)
    kf = counts.astype(np.float64)
    if c == 1 or n == 0:
        return np.zeros(n_prompts)
    mx = np.full(n_prompts, -np.inf)
    if starts.size:
        mx[nonempty] = np.maximum.reduceat(lw, starts)
    finite = np.isfinite(mx)
    if self_normalize:
        w = np.exp(lw - np.where(finite, mx, 0.0)[seg])
    else:
        w = np.exp(lw)
    # the (first) largest-weight row of each prompt: its deletion is summed afresh
    cand = np.flatnonzero((lw == mx[seg]) & finite[seg])
    sc = seg[cand]  # non-decreasing: keep the first candidate of each prompt
    first = np.ones(sc.shape[0], dtype=bool)
    first[1:] = sc[1:] != sc[:-1]
    star = np.zeros(n, dtype=bool)
    star[cand[first]] = True
    si = np.flatnonzero(star)
    sp = seg[si]  # at most one largest-weight row per prompt
    wk = np.where(star, 0.0, w)
    # sums without the largest-weight row (exact), then the full sums = those + that row
    if labels is not None:
        a_ex = np.bincount(seg * c + labels, weights=wk, minlength=n_prompts * c).reshape(
            n_prompts, c
        )
        a = a_ex.copy()
        a[sp, labels[si]] += w[si]
    else:
        assert soft is not None  # one of labels / soft is given (resolve_aspects)
        a_ex = _segment_sum(soft * wk[:, None], starts, nonempty)
        a = a_ex.copy()
        a[sp] += soft[si] * w[si, None]
    if self_normalize:
        z_ex = _segment_sum(wk, starts, nonempty)
        z = z_ex.copy()
        z[sp] += w[si]
        dec = w
    else:
        z = kf
        z_ex = np.maximum(kf - 1.0, 0.0)
        dec = np.ones(n)
    pos = z > 0
    h = -_xlogx(a / np.where(pos, z, 1.0)[:, None]).sum(axis=1)
    h = np.where(pos, h, 0.0)
    pos_ex = z_ex > 0
    h_ex = -_xlogx(a_ex / np.where(pos_ex, z_ex, 1.0)[:, None]).sum(axis=1)
    h_ex = np.where(pos_ex, h_ex, h)  # nothing left after the deletion: count the plug-in
    # leave-one-out entropies of the other rows: Z - t_k >= Z / 2 > 0 (or K - 1 >= 1)
    den = z[seg] - dec
    ok = ~star & (den > 0)
    dsafe = np.where(ok, den, 1.0)
    if labels is not None:
        aa = a[seg, labels]
        na = np.maximum(aa - w, 0.0)
        tot = a.sum(axis=1)
        g = _xlogx(a).sum(axis=1)
        sum_num = tot[seg] - aa + na
        sum_g = g[seg] - _xlogx(aa) + _xlogx(na)
        h_del = (sum_num * np.log(dsafe) - sum_g) / dsafe
    else:  # row blocks of ~64k numbers: temporaries stay small and in cache
        assert soft is not None  # one of labels / soft is given (resolve_aspects)
        h_del = np.empty(n)
        step = max(1, (1 << 16) // c)
        for s0 in range(0, n, step):
            sl = slice(s0, min(s0 + step, n))
            num = a[seg[sl]]
            num -= soft[sl] * w[sl, None]
            np.maximum(num, 0.0, out=num)
            num /= dsafe[sl, None]
            h_del[sl] = -_xlogx(num).sum(axis=1)
    h_del = np.where(ok, h_del, np.where(star, h_ex[seg], h[seg]))
    s_del = np.bincount(seg, weights=h_del, minlength=n_prompts)
    kk = np.maximum(kf, 1.0)
    hj = kf * h - (kf - 1.0) / kk * s_del
    return np.where(counts >= 2, np.where(pos, hj, 0.0), h)


def jackknife_core(
    be: Any,
    ptr: np.ndarray,
    lw: np.ndarray,
    labels: np.ndarray | None,
    soft: np.ndarray | None,
    c: int,
    self_normalize: bool,
) -> np.ndarray:
    """Backend dispatch of :func:`jackknife_entropy_core` (nats per prompt)."""
    if labels is not None:
        h = be.segment_jackknife_entropy_hard(ptr, lw, labels, c, self_normalize)
    else:
        h = be.segment_jackknife_entropy_soft(ptr, lw, soft, self_normalize)
    return np.asarray(h, dtype=np.float64)


def diversity_core(
    be: Any,
    ptr: np.ndarray,
    p: np.ndarray,
    labels: np.ndarray | None,
    soft: np.ndarray | None,
    c: int,
) -> np.ndarray:
    """Backend dispatch on validated inputs: ``d / log C`` per response (0 for ``C == 1``)."""
    if c == 1:
        return np.zeros(ptr[-1])
    if labels is not None:
        d = be.diversity_reward_hard(ptr, p, labels)
    else:
        d = be.diversity_reward_soft(ptr, p, soft)
    return np.asarray(d, dtype=np.float64) / math.log(c)


def coverage(
    source: LoggedFeedback | Any,
    log_weight: Any = None,
    *,
    aspect: Any = None,
    aspect_probs: Any = None,
    n_aspects: int | None = None,
    mode: CoverageMode = "self_normalized",
    backend: str | None = None,
) -> np.ndarray:
    r"""Importance-weighted aspect coverage :math:`\hat p(c|x_i)` of every prompt.

    Parameters
    ----------
    source : LoggedFeedback or (P+1,) array_like
        A feedback object, or the CSR offsets ``prompt_ptr`` (responses of prompt ``i`` are
        rows ``prompt_ptr[i]:prompt_ptr[i+1]``; non-decreasing, from 0 to ``N``).
    log_weight : (N,) array_like, optional
        Log importance weights :math:`\ell_{ik}` (``-inf`` = zero weight); ``None``: all 0.
    aspect : (N,) int array_like, optional
        Hard labels in ``[0, n_aspects)`` (with ``prompt_ptr`` only).
    aspect_probs : (N, C) array_like, optional
        Soft rows, non-negative, each summing to 1 within 1e-6 (with ``prompt_ptr`` only).
    n_aspects : int, optional
        :math:`C`; required with ``aspect``.
    mode : {"self_normalized", "ips"}
        Normaliser :math:`\sum_k w_{ik}` or :math:`K_i`.
    backend : str, optional

    Returns
    -------
    (P, C) float64
        Rows of zero-weight or empty prompts are all 0.
    """
    ptr, labels, soft, c = resolve_aspects(source, aspect, aspect_probs, n_aspects)
    lw = check_log_weight(log_weight, int(ptr[-1]), mode)
    p, _ = coverage_core(get_backend(backend), ptr, lw, labels, soft, c, mode == "self_normalized")
    return p


def coverage_entropy(
    source: LoggedFeedback | Any,
    log_weight: Any = None,
    *,
    aspect: Any = None,
    aspect_probs: Any = None,
    n_aspects: int | None = None,
    mode: CoverageMode = "self_normalized",
    normalize: bool = True,
    estimator: Literal["plugin", "jackknife"] = "plugin",
    backend: str | None = None,
) -> np.ndarray:
    r"""Entropy of each prompt's coverage, :math:`H(\hat p(\cdot|x_i))`.

    With ``normalize=True`` (default) divided by :math:`\log C`, so in :math:`[0, 1]` for
    self-normalised coverage (0 when :math:`C = 1`); otherwise in nats. ``estimator="plugin"``
    (default here) is the entropy of the estimated coverage; ``"jackknife"`` is its
    delete-one-response jackknife :math:`K_i H(\hat p_i) - \frac{K_i-1}{K_i}\sum_k
    H(\hat p_{i,-k})`, which removes the :math:`O(1/K_i)` term of the plug-in's downward
    bias (plug-in for :math:`K_i = 1`; not clipped, so a value may leave :math:`[0, 1]`;
    see ``docs/method.md`` §5; compiled twins in the C++ and Numba backends). Other arguments as
    in :func:`coverage`.

    Returns
    -------
    (P,) float64
    """
    ptr, labels, soft, c = resolve_aspects(source, aspect, aspect_probs, n_aspects)
    lw = check_log_weight(log_weight, int(ptr[-1]), mode)
    if estimator not in PROMPT_ENTROPY_ESTIMATORS:
        raise ValueError(
            f"estimator must be one of {PROMPT_ENTROPY_ESTIMATORS}, got {estimator!r} (the "
            "polynomial estimator pools prompts: use pope.evaluate)"
        )
    if estimator == "jackknife":
        h = jackknife_core(
            get_backend(backend), ptr, lw, labels, soft, c, mode == "self_normalized"
        )
    else:
        _, h = coverage_core(
            get_backend(backend), ptr, lw, labels, soft, c, mode == "self_normalized"
        )
    if normalize:
        return h / math.log(c) if c > 1 else np.zeros_like(h)
    return h


def diversity_reward(
    source: LoggedFeedback | Any,
    log_weight: Any = None,
    *,
    aspect: Any = None,
    aspect_probs: Any = None,
    n_aspects: int | None = None,
    mode: CoverageMode = "self_normalized",
    p: Any = None,
    backend: str | None = None,
) -> np.ndarray:
    r"""Per-response diversity reward :math:`d_{ik} = -\sum_c q_{ik}(c)\log\hat p(c|x_i)/\log C`.

    It decomposes the coverage entropy into per-response terms,
    :math:`\sum_k w_{ik} d_{ik} / \sum_k w_{ik} = H(\hat p_i)/\log C`, so that relevance and
    diversity share one importance-weighted form :math:`R = r + \lambda d`; it is also the
    per-response factor of the policy gradient of :math:`H(p_\pi)`. Terms with
    :math:`\hat p = 0` count 0; :math:`d = 0` when :math:`C = 1`.

    Parameters
    ----------
    source, log_weight, aspect, aspect_probs, n_aspects, mode, backend
        As in :func:`coverage`.
    p : (P, C) array_like, optional
        A coverage already computed (e.g. under a stop-gradient); by default computed from
        ``log_weight``. Entries ``>= 0``; with ``mode="self_normalized"`` each row must be
        on the simplex (summing to 1 within ``1e-6``) or all zero (a prompt without
        coverage, e.g. one with no responses), anything else is a ``ValueError`` naming the
        row. With ``mode="ips"`` the rows are unnormalised estimates and may sum to any value.

    Returns
    -------
    (N,) float64, in stored row order.
    """
    ptr, labels, soft, c = resolve_aspects(source, aspect, aspect_probs, n_aspects)
    be = get_backend(backend)
    if p is None:
        lw = check_log_weight(log_weight, int(ptr[-1]), mode)
        pp, _ = coverage_core(be, ptr, lw, labels, soft, c, mode == "self_normalized")
    else:
        pp = as_float_array(p, "p", ndim=2)
        if pp.shape != (ptr.shape[0] - 1, c):
            raise ValueError(f"p must have shape {(ptr.shape[0] - 1, c)}, got {pp.shape}")
        if pp.size and pp.min() < 0:
            raise ValueError("p must be >= 0")
        if pp.size and mode == "self_normalized":
            sums = pp.sum(axis=1)
            bad = (np.abs(sums - 1.0) > _SOFT_TOL) & (sums != 0.0)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"p rows must be coverages (sum to 1 within {_SOFT_TOL:g}, or all zero for "
                    f"a prompt without coverage); row {i} sums to {float(sums[i])!r}"
                )
    return diversity_core(be, ptr, pp, labels, soft, c)
