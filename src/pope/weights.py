r"""Importance weights in log space, and their diagnostics.

The importance weight of a logged response :math:`y` for prompt :math:`x` is

.. math::

    w = \frac{\pi_\theta(y \mid x)}{\pi_0(y \mid x)}
      = \exp\bigl(\log \pi_\theta(y \mid x) - \log \pi_0(y \mid x)\bigr).

It is never formed as a ratio of probabilities: a 200-token response at 0.05 per token has
probability :math:`10^{-261}`, far below float32 and close to the float64 limit. Everything in
this module works on the log-ratio :math:`\ell = \log\pi_\theta - \log\pi_0`; clipping
:math:`\min(w, M)` is :math:`\min(\ell, \log M)`.

Conventions
-----------
* Log-probabilities are ``<= 0``; the logging log-probability of a logged response is finite
  (it was sampled, so :math:`\pi_0 > 0`); the target log-probability may be ``-inf``
  (:math:`\pi_\theta(y|x) = 0`, weight 0).
* ``clip=None`` means no clipping (:math:`M = \infty`); a clip must be ``> 0``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pope._validation import as_float_array, check_log_prob, check_prompt_ptr
from pope.backends import get_backend
from pope.estimate import Diagnostics, WeightMoments, WeightOverflowError

__all__ = [
    "LOG_FLOAT64_MAX",
    "check_clip",
    "importance_weights",
    "log_importance_weights",
    "moments",
    "sub_gaussian_log_weights",
    "token_mean_log_ratio",
    "validate_log_probs",
    "weight_diagnostics",
]

#: :math:`\log` of the largest float64, about 709.78: weights with a larger log overflow.
LOG_FLOAT64_MAX = float(np.log(np.finfo(np.float64).max))


def check_clip(clip: Any, name: str = "clip") -> float:
    r"""Validate a clipping threshold :math:`M` and return :math:`\log M`.

    ``None`` (no clipping) and ``inf`` give ``inf``; otherwise ``clip`` must be a real number
    ``> 0`` (``TypeError`` / ``ValueError`` otherwise).
    """
    if clip is None:
        return math.inf
    if isinstance(clip, bool) or not isinstance(clip, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive real number or None, got {type(clip).__name__}")
    c = float(clip)
    if math.isnan(c) or c <= 0:
        raise ValueError(f"{name} must be > 0 (or None for no clipping), got {clip!r}")
    return math.log(c)


def validate_log_probs(
    log_target: Any, log_logging: Any, *, ndim: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of aligned log-probability arrays.

    ``log_target`` may hold ``-inf`` (zero target probability); ``log_logging`` must be finite.
    Both must be ``<= 0``, free of NaN and ``+inf``, and have the same shape.

    Returns
    -------
    (log_target, log_logging) as C-contiguous float64 arrays (fresh copies or the caller's
    arrays untouched).
    """
    lt = as_float_array(log_target, "log_target", ndim=ndim, allow_neginf=True)
    ll = as_float_array(log_logging, "log_logging", ndim=ndim)
    check_log_prob(lt.ravel(), "log_target")
    check_log_prob(ll.ravel(), "log_logging")
    if lt.shape != ll.shape:
        raise ValueError(f"log_target has shape {lt.shape} but log_logging has shape {ll.shape}")
    return lt, ll


def log_importance_weights(log_target: Any, log_logging: Any, *, clip: Any = None) -> np.ndarray:
    r"""Clipped log importance weights :math:`\min(\log\pi_\theta - \log\pi_0,\ \log M)`.

    Parameters
    ----------
    log_target, log_logging : (N,) array_like
        Sequence log-probabilities of the logged responses under the target and the logging
        policy.
    clip : float, optional
        Truncation :math:`M > 0` of the weight (``None``: none).

    Returns
    -------
    (N,) float64, ``-inf`` where the target probability is 0.
    """
    lt, ll = validate_log_probs(log_target, log_logging)
    return np.minimum(lt - ll, check_clip(clip))


def importance_weights(log_target: Any, log_logging: Any, *, clip: Any = None) -> np.ndarray:
    r"""Clipped importance weights :math:`\min(w, M)` as float64.

    Raises
    ------
    WeightOverflowError
        If a weight exceeds the float64 range (:math:`\ell > 709.78`); use ``clip``, or a
        self-normalised estimator (which works with scaled weights and never overflows).
    """
    lw = log_importance_weights(log_target, log_logging, clip=clip)
    if lw.size and lw.max() > LOG_FLOAT64_MAX:
        raise WeightOverflowError(
            f"an importance weight is exp({lw.max():.1f}), beyond float64; pass clip=M "
            "or use a self-normalised estimator (snips)"
        )
    return np.exp(lw)


def token_mean_log_ratio(
    token_log_target: Any, token_log_logging: Any, token_ptr: Any
) -> np.ndarray:
    r"""Length-normalised log-ratio per response (``weighting="token_mean"``).

    .. math::

        \ell_j = \frac{1}{T_j} \sum_{t \in j} \bigl(\log\pi_\theta(y_t \mid \cdot)
                 - \log\pi_0(y_t \mid \cdot)\bigr),

    over the tokens ``token_ptr[j]:token_ptr[j+1]`` of response ``j``. A response with no
    token gets :math:`\ell_j = 0` (weight 1). The weight :math:`e^{\ell_j}` is the geometric
    mean of the per-token ratios: lower variance than the sequence ratio, and biased.

    Parameters
    ----------
    token_log_target, token_log_logging : (T,) array_like
        Per-token log-probabilities, flat, in the same layout.
    token_ptr : (N+1,) array_like
        CSR offsets of the responses' tokens.

    Returns
    -------
    (N,) float64
    """
    tlt = as_float_array(token_log_target, "token_log_target", allow_neginf=True)
    tll = as_float_array(token_log_logging, "token_log_logging")
    check_log_prob(tlt, "token_log_target")
    check_log_prob(tll, "token_log_logging")
    if tlt.shape != tll.shape:
        raise ValueError(
            f"token_log_target has length {tlt.shape[0]}, token_log_logging {tll.shape[0]}"
        )
    ptr = check_prompt_ptr(token_ptr, tlt.shape[0], "token_ptr")
    counts = np.diff(ptr)
    out = np.zeros(counts.shape[0])
    nonempty = counts > 0
    if nonempty.any():
        sums = np.add.reduceat(tlt - tll, ptr[:-1][nonempty])
        out[nonempty] = sums / counts[nonempty]
    return out


def sub_gaussian_log_weights(log_weight: np.ndarray, lam: float) -> np.ndarray:
    r"""Log of the power-mean smoothed weights of Metelli et al. (2021).

    .. math::

        w_\lambda = \frac{w}{1 - \lambda + \lambda w},\qquad
        \log w_\lambda = \ell - \operatorname{logaddexp}\bigl(\log(1-\lambda),
                         \log\lambda + \ell\bigr),

    for :math:`\lambda \in [0, 1]`: :math:`\lambda = 0` gives the plain weight, :math:`\lambda
    = 1` gives 1, and :math:`w_\lambda \le 1/\lambda`. Zero weights stay zero.

    Parameters
    ----------
    log_weight : (N,) float64 log weights (``-inf`` allowed)
    lam : float in [0, 1]
    """
    lw = np.asarray(log_weight, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.logaddexp(math.log1p(-lam) if lam < 1 else -math.inf,
                             (math.log(lam) if lam > 0 else -math.inf) + lw)
        out = lw - denom
    return np.where(np.isneginf(lw), -np.inf, out)


def weight_diagnostics(
    log_target: Any, log_logging: Any, *, clip: Any = None, backend: str | None = None
) -> Diagnostics:
    r"""Diagnostics of the (clipped) importance weights of a sample.

    Effective sample size :math:`(\sum w)^2/\sum w^2`, max weight, mean weight (should be near
    1 when the target is supported by the log), fraction of clipped weights. Computed from the
    scaled moments of the backend, so it never overflows (``max_weight`` may be ``inf``;
    ``log_max_weight`` stays finite).
    """
    lt, ll = validate_log_probs(log_target, log_logging)
    log_clip = check_clip(clip)
    be = get_backend(backend)
    mom = moments(be, lt, ll, np.zeros_like(lt), log_clip)
    return WeightMoments.from_moments(mom).diagnostics()


def moments(be: Any, log_target: np.ndarray, log_logging: np.ndarray, reward: np.ndarray,
            log_clip: float) -> np.ndarray:
    """``be.ips_moments`` with the all-zero-weight case handled (scale ``-inf``, sums 0)."""
    n = log_target.shape[0]
    if n and np.isneginf(log_target).all():
        out = np.zeros(9)
        out[0] = -np.inf
        out[1] = n
        out[8] = -np.inf
        return out
    return np.asarray(be.ips_moments(log_target, log_logging, reward, float(log_clip)),
                      dtype=np.float64)

