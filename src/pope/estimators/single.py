r"""Off-policy estimators for one logged response per sample (contextual-bandit form).

Notation: sample :math:`i = 1..n` is a prompt :math:`x_i` with one logged response
:math:`y_i \sim \pi_0(\cdot|x_i)` and reward :math:`r_i`; the log importance weight is
:math:`\ell_i = \log\pi_\theta(y_i|x_i) - \log\pi_0(y_i|x_i)` and the (clipped) weight
:math:`w_i = \min(e^{\ell_i}, M)` (``clip=M``; no clipping by default). Reward-model inputs:
``reward_hat`` :math:`\hat r_i = \hat r(x_i, y_i)` (the model's prediction for the logged
response) and ``value_hat`` :math:`\hat v_i = \mathbb E_{y\sim\pi_\theta}\hat r(x_i, y)` (the
model's value of the target policy at :math:`x_i`).

Every estimator takes keyword arrays, forms weights in log space, computes its sufficient
statistics with the selected CPU backend (``backend=None``: automatic, see
:mod:`pope.backends`) and returns an :class:`~pope.estimate.Estimate`. Inputs are validated
(NaN, ``+inf``, log-probabilities above 0, length mismatches raise) and never modified.

References
----------
Horvitz, D. G. and Thompson, D. J. (1952). A generalization of sampling without replacement
from a finite universe. JASA.
Swaminathan, A. and Joachims, T. (2015). The self-normalized estimator for counterfactual
learning. NeurIPS.
Dudík, M., Langford, J. and Li, L. (2011). Doubly robust policy evaluation and learning. ICML.
Wang, Y.-X., Agarwal, A. and Dudík, M. (2017). Optimal and adaptive off-policy evaluation in
contextual bandits (Switch-DR). ICML.
Metelli, A. M., Russo, A. and Restelli, M. (2021). Subgaussian and differentiable importance
sampling for off-policy evaluation and learning. NeurIPS.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pope._validation import as_float_array
from pope.backends import get_backend, resolve_backend
from pope.estimate import Estimate, WeightMoments, WeightOverflowError
from pope.estimators.sufficient_stats import DRStats, IPSStats, MeanStats
from pope.weights import (
    LOG_FLOAT64_MAX,
    check_clip,
    checked_moments,
    moments,
    sub_gaussian_log_weights,
    validate_log_probs,
)

__all__ = ["dm", "dr", "ips", "sndr", "snips", "sub_gaussian_ips", "switch_dr"]


# ----------------------------------------------------------------------------- helpers
def _in_unit(*arrays: np.ndarray) -> bool:
    return all(a.size == 0 or (a.min() >= 0.0 and a.max() <= 1.0) for a in arrays)


def _check_real(x: Any, name: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    v = float(x)
    if math.isnan(v) or v < lo or v > hi or (lo_open and v == lo):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ValueError(f"{name} must lie in {interval}, got {x!r}")
    return v


def _prepare(
    reward: Any,
    log_target: Any,
    log_logging: Any,
    clip: Any,
    backend: str | None,
    ndim: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, str, Any]:
    lt, ll = validate_log_probs(log_target, log_logging, ndim=ndim)
    r = as_float_array(reward, "reward", ndim=ndim)
    if r.shape != lt.shape:
        raise ValueError(f"reward has shape {r.shape}, log_target has shape {lt.shape}")
    if lt.shape[0] == 0:
        raise ValueError("no samples: the arrays are empty")
    log_clip = check_clip(clip)
    name = resolve_backend(backend)
    return r, lt, ll, log_clip, name, get_backend(name)


def _as_float64(x: Any, name: str) -> np.ndarray:
    """1-D float64 C-contiguous view of ``x`` (no copy when it already is one); values are
    checked later, in the backend's fused pass."""
    return as_float_array(x, name, allow_nan=True, allow_posinf=True, allow_neginf=True)


def _prepare_fused(
    reward: Any,
    log_target: Any,
    log_logging: Any,
    clip: Any,
    backend: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, str, Any, np.ndarray, bool]:
    """As :func:`_prepare` for 1-D inputs, with the value checks, the moments and the
    reward range computed in one pass of the backend (``ips_moments_checked``)."""
    lt = _as_float64(log_target, "log_target")
    ll = _as_float64(log_logging, "log_logging")
    r = _as_float64(reward, "reward")
    if lt.shape != ll.shape:
        raise ValueError(f"log_target has shape {lt.shape} but log_logging has shape {ll.shape}")
    if r.shape != lt.shape:
        raise ValueError(f"reward has shape {r.shape}, log_target has shape {lt.shape}")
    if lt.shape[0] == 0:
        raise ValueError("no samples: the arrays are empty")
    log_clip = check_clip(clip)
    name = resolve_backend(backend)
    be = get_backend(name)
    mom, in_unit = checked_moments(be, lt, ll, r, log_clip)
    return r, lt, ll, log_clip, name, be, mom, in_unit


def _model(x: Any, name: str, n: int) -> np.ndarray:
    a = as_float_array(x, name)
    if a.shape[0] != n:
        raise ValueError(f"{name} has length {a.shape[0]}, expected {n}")
    return a


def _exp_checked(log_w: np.ndarray, what: str) -> np.ndarray:
    if log_w.size and log_w.max() > LOG_FLOAT64_MAX:
        raise WeightOverflowError(
            f"{what}: an importance weight is exp({log_w.max():.1f}), beyond float64; pass "
            "clip=M or use a self-normalised estimator (snips / sndr)"
        )
    return np.exp(log_w)


def _scaled_weights(log_w: np.ndarray, m: float) -> np.ndarray:
    """:math:`e^{\\ell - m}` (all zeros when every weight is zero, ``m = -inf``)."""
    if m == -math.inf:
        return np.zeros_like(log_w)
    return np.exp(log_w - m)


def times_exp(x: np.ndarray, m: float) -> np.ndarray:
    """``x * exp(m)`` in log space (``inf`` where it overflows, 0 where ``x == 0``)."""
    if m == -math.inf:
        return np.zeros_like(x)
    with np.errstate(divide="ignore", over="ignore"):
        return np.sign(x) * np.exp(m + np.log(np.abs(x)))


def ratio_of_columns(s: np.ndarray) -> np.ndarray:
    """``s[:, 0] / s[:, 1]`` (NaN/inf for a zero denominator, dropped by the percentile CI)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return s[:, 0] / s[:, 1]


def attach(
    est: Estimate,
    contrib_fn: Callable[[], np.ndarray] | None,
    boot_fn: Callable[[], tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]] | None,
    backend: str,
) -> Estimate:
    """``est`` with lazily evaluated per-sample contributions and bootstrap data attached."""
    return dataclasses.replace(est, _contrib_fn=contrib_fn, _boot_fn=boot_fn, backend=backend)


def ips_family(
    kind: str,
    reward: np.ndarray,
    log_target: np.ndarray,
    log_logging: np.ndarray,
    log_clip: float,
    backend: str,
    be: Any,
    *,
    lam: float = 0.0,
    list_length: int = 1,
    rewards_in_range: bool | None = None,
    mom: np.ndarray | None = None,
) -> Estimate:
    """Shared body of IPS / SNIPS / SIPS / sub-Gaussian IPS on validated arrays.

    ``mom``: the moments of the clipped weights when already computed (by the fused pass of
    :func:`_prepare_fused`); the per-sample log weights are then formed only if the
    contributions or the bootstrap are asked for.
    """
    n = reward.shape[0]
    ok = _in_unit(reward / list_length) if rewards_in_range is None else rewards_in_range
    if kind == "sub_gaussian_ips":
        lr = log_target - log_logging
        log_w_sg = sub_gaussian_log_weights(np.minimum(lr, log_clip), lam)
        mom = moments(be, log_w_sg, np.zeros_like(log_w_sg), reward, math.inf)
        mom[7] = np.count_nonzero(lr > log_clip)
        mom[8] = lr.max()

        def log_weights() -> np.ndarray:
            return log_w_sg
    else:
        if mom is None:
            mom = moments(be, log_target, log_logging, reward, log_clip)

        def log_weights() -> np.ndarray:
            return np.minimum(log_target - log_logging, log_clip)

    stats = IPSStats.from_moments(
        kind, mom, log_clip=log_clip, lam=lam, list_length=list_length, rewards_in_range=ok
    )
    est = stats.estimate()
    m = stats.log_scale

    if kind == "snips":

        def contrib() -> np.ndarray:
            w = _scaled_weights(log_weights(), m)
            return n * w * reward / w.sum()

        def boot() -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
            w = _scaled_weights(log_weights(), m)
            return np.column_stack([w * reward, w]), ratio_of_columns

    else:

        def contrib() -> np.ndarray:
            return _exp_checked(log_weights(), kind) * reward

        def boot() -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
            x = _scaled_weights(log_weights(), m) * reward
            return x[:, None], lambda s: times_exp(s[:, 0] / n, m)

    return attach(est, contrib, boot, backend)


# ----------------------------------------------------------------------------- IPS family
def ips(
    *,
    reward: Any,
    log_target: Any,
    log_logging: Any,
    clip: float | None = None,
    backend: str | None = None,
) -> Estimate:
    r"""Inverse propensity scoring (Horvitz–Thompson), optionally clipped.

    .. math::

        \hat V_{\mathrm{IPS}} = \frac1n \sum_{i=1}^n w_i r_i,\qquad
        w_i = \min\bigl(e^{\log\pi_\theta(y_i|x_i) - \log\pi_0(y_i|x_i)},\ M\bigr).

    Unbiased without clipping (when :math:`\pi_0` covers :math:`\pi_\theta`); with
    clipping and :math:`r \ge 0` its expectation is :math:`\le V`.

    Parameters
    ----------
    reward : (n,) array_like
        Rewards :math:`r_i` (in :math:`[0, 1]` for the finite-sample bounds).
    log_target : (n,) array_like
        :math:`\log\pi_\theta(y_i|x_i) \le 0`; ``-inf`` allowed.
    log_logging : (n,) array_like
        :math:`\log\pi_0(y_i|x_i) \le 0`, finite.
    clip : float, optional
        :math:`M > 0`.
    backend : str, optional
        ``"cpp"``, ``"numba"``, ``"reference"``, ``"auto"`` or ``None``.

    Returns
    -------
    Estimate
        ``stats`` is an :class:`~pope.estimators.sufficient_stats.IPSStats`;
        ``contributions`` are :math:`w_i r_i`.

    Raises
    ------
    WeightOverflowError
        If the estimate (or a weight needed for the contributions) exceeds float64: pass
        ``clip`` or use :func:`snips`.
    """
    r, lt, ll, lc, name, be, mom, ok = _prepare_fused(
        reward, log_target, log_logging, clip, backend
    )
    return ips_family("ips", r, lt, ll, lc, name, be, rewards_in_range=ok, mom=mom)


def snips(
    *,
    reward: Any,
    log_target: Any,
    log_logging: Any,
    clip: float | None = None,
    backend: str | None = None,
) -> Estimate:
    r"""Self-normalised IPS.

    .. math::

        \hat V_{\mathrm{SNIPS}} = \frac{\sum_i w_i r_i}{\sum_i w_i}.

    A weighted mean of the rewards, so it always lies in :math:`[\min r, \max r]`; computed from
    weights scaled by their maximum (:math:`\tilde w = e^{\ell - \max\ell}`), so it never
    overflows, whatever the weights. Consistent, with :math:`O(1/n)` bias. Standard error by
    the delta method with :math:`\psi_i = w_i (r_i - \hat V)/\bar w`; contributions are
    :math:`n w_i r_i / \sum_j w_j`. No finite-sample bound (``lower_bound`` raises).

    Parameters are those of :func:`ips`. Raises ``ValueError`` if every weight is zero.
    """
    r, lt, ll, lc, name, be, mom, ok = _prepare_fused(
        reward, log_target, log_logging, clip, backend
    )
    return ips_family("snips", r, lt, ll, lc, name, be, rewards_in_range=ok, mom=mom)


def sub_gaussian_ips(
    *,
    reward: Any,
    log_target: Any,
    log_logging: Any,
    lam: float,
    clip: float | None = None,
    backend: str | None = None,
) -> Estimate:
    r"""Sub-Gaussian IPS with power-mean weight smoothing (Metelli et al., 2021).

    .. math::

        \hat V = \frac1n\sum_i w_{\lambda,i} r_i,\qquad
        w_\lambda = \frac{w}{1 - \lambda + \lambda w},\quad \lambda\in[0,1],

    computed in log space (:func:`pope.weights.sub_gaussian_log_weights`); ``clip`` is applied
    to :math:`w` before smoothing. :math:`\lambda = 0` is IPS; :math:`w_\lambda \le 1/\lambda`,
    so for :math:`\lambda > 0` the estimator is bounded and :meth:`Estimate.lower_bound` is
    exact even without clipping. The bias is :math:`O(\lambda)`; Metelli et al. suggest
    :math:`\lambda \approx \sqrt{\log(1/\delta) / (n\, d_2)}` with :math:`d_2` the exponentiated
    2-Rényi divergence.

    Parameters are those of :func:`ips`, plus ``lam`` (:math:`\lambda`).
    """
    lam_ = _check_real(lam, "lam", 0.0, 1.0)
    r, lt, ll, lc, name, be = _prepare(reward, log_target, log_logging, clip, backend)
    return ips_family("sub_gaussian_ips", r, lt, ll, lc, name, be, lam=lam_)


# ----------------------------------------------------------------------------- DM / DR
def dm(
    *,
    value_hat: Any,
    reward: Any = None,
    log_target: Any = None,
    log_logging: Any = None,
    reward_hat: Any = None,
    clip: float | None = None,
    backend: str | None = None,
) -> Estimate:
    r"""Direct method: the reward model's value of the target policy.

    .. math::

        \hat V_{\mathrm{DM}} = \frac1n\sum_i \hat v_i,\qquad
        \hat v_i = \mathbb E_{y\sim\pi_\theta(\cdot|x_i)}\,\hat r(x_i, y).

    Only ``value_hat`` is used. ``reward`` and ``reward_hat`` are accepted (and length-checked)
    so that DM, DR, SNDR and Switch-DR share one call signature; when ``log_target`` and
    ``log_logging`` are given, the diagnostics describe the (clipped) importance weights.
    Low variance, biased by the model error.
    """
    v = as_float_array(value_hat, "value_hat")
    n = v.shape[0]
    if n == 0:
        raise ValueError("no samples: the arrays are empty")
    for nm, x in (("reward", reward), ("reward_hat", reward_hat)):
        if x is not None:
            _model(x, nm, n)
    name = resolve_backend(backend)
    weights = None
    if (log_target is None) != (log_logging is None):
        raise ValueError("give both log_target and log_logging, or neither")
    log_clip = check_clip(clip)
    if log_target is not None:
        lt, ll = validate_log_probs(log_target, log_logging)
        if lt.shape[0] != n:
            raise ValueError(f"log_target has length {lt.shape[0]}, expected {n}")
        weights = WeightMoments.from_moments(
            moments(get_backend(name), lt, ll, np.zeros(n), log_clip)
        )
    stats = MeanStats(
        kind="dm",
        log_scale=0.0,
        n=n,
        sum_x=float(v.sum()),
        sum_x2=float((v * v).sum()),
        weights=weights,
        log_clip=log_clip,
        rewards_in_range=_in_unit(v),
    )
    return attach(
        stats.estimate(), lambda: v.copy(), lambda: (v[:, None], lambda s: s[:, 0] / n), name
    )


def _dr_family(
    kind: str,
    reward: Any,
    log_target: Any,
    log_logging: Any,
    reward_hat: Any,
    value_hat: Any,
    clip: Any,
    backend: str | None,
    log_tau: float = math.inf,
) -> Estimate:
    r, lt, ll, lc, name, be = _prepare(reward, log_target, log_logging, clip, backend)
    n = r.shape[0]
    rh = _model(reward_hat, "reward_hat", n)
    vh = _model(value_hat, "value_hat", n)
    lr = lt - ll
    delta = r - rh
    n_switched = 0
    if kind == "switch_dr":
        keep = lr <= log_tau
        n_switched = int(n - np.count_nonzero(keep))
        delta = np.where(keep, delta, 0.0)
    m1 = moments(be, lt, ll, delta, lc)
    m2 = moments(be, lt, ll, vh * delta, lc)
    m3 = moments(be, lt, ll, vh, lc)
    stats = DRStats(
        kind=kind,
        log_scale=float(m1[0]),
        n=n,
        sum_w=float(m1[2]),
        sum_w2=float(m1[3]),
        sum_wd=float(m1[4]),
        sum_w2d2=float(m1[5]),
        sum_w2d=float(m1[6]),
        sum_wvd=float(m2[4]),
        sum_wv=float(m3[4]),
        sum_v=float(vh.sum()),
        sum_v2=float((vh * vh).sum()),
        n_clipped=int(m1[7]),
        max_log_ratio=float(m1[8]),
        n_switched=n_switched,
        log_clip=lc,
        log_tau=log_tau,
        rewards_in_range=_in_unit(r, rh, vh),
    )
    est = stats.estimate()
    m = stats.log_scale
    log_w = np.minimum(lr, lc)

    if kind == "sndr":

        def contrib() -> np.ndarray:
            w = _scaled_weights(log_w, m)
            return vh + n * w * delta / w.sum()

        def boot() -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
            w = _scaled_weights(log_w, m)
            return (
                np.column_stack([vh, w * delta, w]),
                lambda s: s[:, 0] / n + ratio_of_columns(s[:, 1:]),
            )
    else:

        def contrib() -> np.ndarray:
            return vh + _exp_checked(log_w, kind) * delta

        def boot() -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
            return contrib()[:, None], lambda s: s[:, 0] / n

    return attach(est, contrib, boot, name)


def dr(
    *,
    reward: Any,
    log_target: Any,
    log_logging: Any,
    reward_hat: Any,
    value_hat: Any,
    clip: float | None = None,
    backend: str | None = None,
) -> Estimate:
    r"""Doubly robust estimator (Dudík et al., 2011).

    .. math::

        \hat V_{\mathrm{DR}} = \frac1n\sum_i \bigl[\hat v_i + w_i (r_i - \hat r_i)\bigr].

    Unbiased if either the weights (unclipped) or the reward model is correct; zero model and
    zero reward give exactly 0.

    Parameters
    ----------
    reward, log_target, log_logging, clip, backend
        As in :func:`ips`.
    reward_hat : (n,) array_like
        :math:`\hat r(x_i, y_i)` for the logged response.
    value_hat : (n,) array_like
        :math:`\hat v_i = \mathbb E_{y\sim\pi_\theta}\hat r(x_i, y)`.
    """
    return _dr_family("dr", reward, log_target, log_logging, reward_hat, value_hat, clip, backend)


def sndr(
    *,
    reward: Any,
    log_target: Any,
    log_logging: Any,
    reward_hat: Any,
    value_hat: Any,
    clip: float | None = None,
    backend: str | None = None,
) -> Estimate:
    r"""Self-normalised doubly robust estimator.

    .. math::

        \hat V_{\mathrm{SNDR}} = \frac1n\sum_i \hat v_i
        + \frac{\sum_i w_i (r_i - \hat r_i)}{\sum_i w_i}.

    Never overflows (scaled weights); with rewards and model in :math:`[0,1]` it lies in
    :math:`[-1, 2]`. Standard error by the delta method (see
    :class:`~pope.estimators.sufficient_stats.DRStats`). Parameters as in :func:`dr`.
    """
    return _dr_family("sndr", reward, log_target, log_logging, reward_hat, value_hat, clip, backend)


def switch_dr(
    *,
    reward: Any,
    log_target: Any,
    log_logging: Any,
    reward_hat: Any,
    value_hat: Any,
    tau: float,
    clip: float | None = None,
    backend: str | None = None,
) -> Estimate:
    r"""Switch-DR (Wang et al., 2017): DR where the weight is at most :math:`\tau`, DM elsewhere.

    .. math::

        \hat V = \frac1n\sum_i \bigl[\hat v_i
        + \mathbb 1\{e^{\ell_i} \le \tau\}\, w_i (r_i - \hat r_i)\bigr].

    :math:`\tau = 0` gives DM (only zero weights pass), :math:`\tau \ge \max w` gives DR. The
    test uses the unclipped ratio :math:`e^{\ell_i}`; the weight of the DR term is clipped by
    ``clip`` if given. The terms lie in :math:`[-\min(\tau, M), 1 + \min(\tau, M)]`, so a finite
    :math:`\tau` makes the lower bound exact. ``diagnostics.extra["switched_fraction"]`` is the
    fraction of samples that fell back to DM. Parameters as in :func:`dr`, plus ``tau``
    (:math:`\ge 0`, ``inf`` allowed).
    """
    t = _check_real(tau, "tau", 0.0, math.inf)
    log_tau = math.log(t) if t > 0 else -math.inf
    return _dr_family(
        "switch_dr",
        reward,
        log_target,
        log_logging,
        reward_hat,
        value_hat,
        clip,
        backend,
        log_tau=log_tau,
    )
