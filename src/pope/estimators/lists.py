r"""Off-policy estimators for lists (slates) of :math:`L` responses.

Sample :math:`i` is a prompt :math:`x_i` with a logged ordered list
:math:`s_i = (y_{i1}, \dots, y_{iL})` and a reward per position :math:`r_{il}`; the list reward
is :math:`\sum_l r_{il}` and the value of a policy is :math:`V = \mathbb E\sum_l r_l`.

Inputs are ``(n, L)`` arrays: ``reward[i, l]`` :math:`= r_{il}`, and per-position
log-propensities ``log_target[i, l]``, ``log_logging[i, l]`` whose meaning depends on the
estimator:

* :func:`sips` and :func:`rips` take the *conditional* log-probabilities
  :math:`\log\pi(y_{il} \mid x_i, y_{i,<l})` of the item placed at position :math:`l` given the
  items above it (what an autoregressive or Plackett–Luce policy produces). The joint list
  propensity is their sum over positions (:func:`joint_log_propensity`) and the cascade
  (prefix) propensity their cumulative sum (:func:`cascade_log_propensity`).
* :func:`iips` takes the *marginal* log-probabilities :math:`\log\pi(y_{il}\text{ at }l
  \mid x_i)` that the item appears at position :math:`l` (e.g. from the policy's
  item-position marginals, or by enumeration/sampling).

For uniformly random lists of 3 out of 10 items without replacement the conditionals are
:math:`(1/10, 1/9, 1/8)`, so the joint is :math:`1/720`, the cascade prefixes are
:math:`1/10, 1/90, 1/720`, and every item-position marginal is :math:`1/10`.

Shorter lists can be padded with positions of reward 0 and log-probabilities 0 under both
policies (ratio 1): they add nothing to any estimate.

References
----------
Swaminathan, A. et al. (2017). Off-policy evaluation for slate recommendation. NeurIPS.
Li, S. et al. (2018). Offline evaluation of ranking policies with click models (IIPS). KDD.
McInerney, J. et al. (2020). Counterfactual evaluation of slate recommendations with sequential
reward interactions (RIPS). KDD.
Kiyohara, H. et al. (2022). Doubly robust off-policy evaluation for ranking policies under the
cascade behavior model. WSDM.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pope._validation import as_float_array
from pope.estimate import Estimate, WeightMoments, WeightOverflowError
from pope.estimators.single import (
    _in_unit,
    _prepare,
    _scaled_weights,
    attach,
    ips_family,
    times_exp,
)
from pope.estimators.sufficient_stats import MeanStats
from pope.weights import moments

__all__ = ["cascade_log_propensity", "iips", "joint_log_propensity", "rips", "sips"]


def joint_log_propensity(log_cond: Any) -> np.ndarray:
    r"""Joint log-propensity of each list: :math:`\sum_l \log\pi(y_l \mid x, y_{<l})`.

    Parameters
    ----------
    log_cond : (n, L) array_like of conditional log-probabilities (``-inf`` allowed)

    Returns
    -------
    (n,) float64
    """
    a = as_float_array(log_cond, "log_cond", ndim=2, allow_neginf=True)
    return a.sum(axis=1)


def cascade_log_propensity(log_cond: Any) -> np.ndarray:
    r"""Prefix (cascade) log-propensities: :math:`\sum_{j \le l}\log\pi(y_j \mid x, y_{<j})`.

    Parameters
    ----------
    log_cond : (n, L) array_like of conditional log-probabilities (``-inf`` allowed)

    Returns
    -------
    (n, L) float64: entry ``[i, l]`` is the log-probability of the prefix ``1..l+1``.
    """
    a = as_float_array(log_cond, "log_cond", ndim=2, allow_neginf=True)
    return np.cumsum(a, axis=1)


def sips(
    *,
    reward: Any,
    log_target: Any,
    log_logging: Any,
    clip: float | None = None,
    backend: str | None = None,
) -> Estimate:
    r"""Standard slate IPS with the joint list propensity.

    .. math::

        \hat V_{\mathrm{SIPS}} = \frac1n\sum_i w_i \sum_{l=1}^L r_{il},\qquad
        w_i = \min\Bigl(\exp\sum_{l}\bigl[\log\pi_\theta(y_{il}|x_i,y_{i,<l})
              - \log\pi_0(y_{il}|x_i,y_{i,<l})\bigr],\ M\Bigr).

    Unbiased under no assumption on the reward, with the highest variance of the three.

    Parameters
    ----------
    reward : (n, L) array_like
        Per-position rewards (in :math:`[0,1]` for the finite-sample bounds; the list reward
        then lies in :math:`[0, L]`).
    log_target, log_logging : (n, L) array_like
        Per-position *conditional* log-probabilities under the target and logging policy.
    clip : float, optional
        Truncation :math:`M` of the joint weight.
    backend : str, optional

    Returns
    -------
    Estimate
        ``stats`` is an :class:`~pope.estimators.sufficient_stats.IPSStats` of kind
        ``"sips"``; contributions are :math:`w_i\sum_l r_{il}`.
    """
    r, lt, ll, lc, name, be = _prepare(reward, log_target, log_logging, clip, backend, ndim=2)
    return ips_family(
        "sips",
        r.sum(axis=1),
        lt.sum(axis=1),
        ll.sum(axis=1),
        lc,
        name,
        be,
        list_length=r.shape[1],
        rewards_in_range=_in_unit(r),
    )


def _positionwise(
    kind: str, r: np.ndarray, lt: np.ndarray, ll: np.ndarray, lc: float, name: str, be: Any
) -> Estimate:
    n, L = r.shape
    mom = moments(be, lt.ravel(), ll.ravel(), r.ravel(), lc)
    wm = WeightMoments.from_moments(mom)
    m = wm.log_scale
    log_w = np.minimum(lt - ll, lc)
    x = (_scaled_weights(log_w, m) * r).sum(axis=1)
    stats = MeanStats(
        kind=kind,
        log_scale=m,
        n=n,
        sum_x=float(x.sum()),
        sum_x2=float((x * x).sum()),
        weights=wm,
        log_clip=lc,
        list_length=L,
        rewards_in_range=_in_unit(r),
    )
    est = stats.estimate()

    def contrib() -> np.ndarray:
        c = times_exp(x, m)
        if not np.isfinite(c).all():
            raise WeightOverflowError(f"{kind}: a contribution exceeds float64; pass clip=M")
        return c

    return attach(est, contrib, lambda: (x[:, None], lambda s: times_exp(s[:, 0] / n, m)), name)


def iips(
    *,
    reward: Any,
    log_target: Any,
    log_logging: Any,
    clip: float | None = None,
    backend: str | None = None,
) -> Estimate:
    r"""Independent (item-position) IPS with per-position marginal propensities.

    .. math::

        \hat V_{\mathrm{IIPS}} = \frac1n\sum_i\sum_{l=1}^L w_{il} r_{il},\qquad
        w_{il} = \min\Bigl(\frac{\pi_\theta(y_{il}\text{ at }l\mid x_i)}
                                {\pi_0(y_{il}\text{ at }l\mid x_i)},\ M\Bigr).

    Unbiased when the reward at a position depends only on the item there (independence
    assumption); much lower variance than :func:`sips`.

    Parameters
    ----------
    reward : (n, L) array_like
    log_target, log_logging : (n, L) array_like
        Per-position *marginal* log-probabilities of the logged item at its position.
    clip : float, optional
        Truncation of each position weight.
    backend : str, optional

    Returns
    -------
    Estimate
        ``stats`` is a :class:`~pope.estimators.sufficient_stats.MeanStats` of kind
        ``"iips"``; diagnostics describe the :math:`nL` position weights.
    """
    r, lt, ll, lc, name, be = _prepare(reward, log_target, log_logging, clip, backend, ndim=2)
    return _positionwise("iips", r, lt, ll, lc, name, be)


def rips(
    *,
    reward: Any,
    log_target: Any,
    log_logging: Any,
    clip: float | None = None,
    backend: str | None = None,
) -> Estimate:
    r"""Reward-interaction (cascade) IPS: each position weighted by its prefix propensity.

    .. math::

        \hat V_{\mathrm{RIPS}} = \frac1n\sum_i\sum_{l=1}^L w_{i,1:l}\, r_{il},\qquad
        w_{i,1:l} = \min\Bigl(\exp\sum_{j\le l}\bigl[\log\pi_\theta(y_{ij}|x_i,y_{i,<j})
                    - \log\pi_0(y_{ij}|x_i,y_{i,<j})\bigr],\ M\Bigr).

    Unbiased under the cascade assumption (the reward at position :math:`l` depends only on
    the items at positions :math:`1..l`); between IIPS and SIPS in bias and variance.

    Parameters
    ----------
    reward : (n, L) array_like
    log_target, log_logging : (n, L) array_like
        Per-position *conditional* log-probabilities (as for :func:`sips`).
    clip : float, optional
        Truncation of each prefix weight.
    backend : str, optional
    """
    r, lt, ll, lc, name, be = _prepare(reward, log_target, log_logging, clip, backend, ndim=2)
    return _positionwise("rips", r, np.cumsum(lt, axis=1), np.cumsum(ll, axis=1), lc, name, be)
