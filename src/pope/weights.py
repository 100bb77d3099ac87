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
    "checked_moments",
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
        denom = np.logaddexp(
            math.log1p(-lam) if lam < 1 else -math.inf,
            (math.log(lam) if lam > 0 else -math.inf) + lw,
        )
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


def _zero_weight_sums(out: np.ndarray) -> np.ndarray:
    """All weights zero (scale ``-inf``): the sums are exactly 0 (no NaN from ``0 * inf``)."""
    if out[0] == -np.inf:
        out[2:8] = 0.0
    return out


def moments(
    be: Any, log_target: np.ndarray, log_logging: np.ndarray, reward: np.ndarray, log_clip: float
) -> np.ndarray:
    """``be.ips_moments`` with the all-zero-weight case handled (scale ``-inf``, sums 0)."""
    out = np.array(
        be.ips_moments(log_target, log_logging, reward, float(log_clip)), dtype=np.float64
    )
    return _zero_weight_sums(out)


# (argument, kind) of each entry of IPS_CHECKS, and the order in which errors are reported
# (that of validate_log_probs followed by the reward's checks).
_CHECK_ARGS = (
    ("log_target", "NaN"),
    ("log_target", "+inf"),
    ("log_target", "positive"),
    ("log_logging", "NaN"),
    ("log_logging", "+inf"),
    ("log_logging", "-inf"),
    ("log_logging", "positive"),
    ("reward", "NaN"),
    ("reward", "+inf"),
    ("reward", "-inf"),
)
_CHECK_PRIORITY = (0, 1, 3, 4, 5, 2, 6, 7, 8, 9)


def raise_first_bad(first_bad: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    """Raise the ``ValueError`` of the first failed check (see ``IPS_CHECKS``), if any.

    The messages are those of :func:`validate_log_probs` and
    :func:`pope._validation.as_float_array`: the argument, the problem and the first bad
    (flat) index.
    """
    for c in _CHECK_PRIORITY:
        i = int(first_bad[c])
        if i < 0:
            continue
        name, kind = _CHECK_ARGS[c]
        if kind == "positive":
            v = arrays[name].ravel()[i]
            raise ValueError(
                f"{name} must be log-probabilities (<= 0); element {i} is {v!r} (a probability > 1)"
            )
        raise ValueError(f"{name} contains {kind} (first at flat index {i})")


def checked_moments(
    be: Any,
    log_target: np.ndarray,
    log_logging: np.ndarray,
    reward: np.ndarray,
    log_clip: float,
) -> tuple[np.ndarray, bool]:
    """Moments of :func:`moments` and whether the rewards lie in [0, 1], from one validating
    pass.

    The backend's ``ips_moments_checked`` checks the values while it sums (``log_target``
    ``<= 0`` or ``-inf``; ``log_logging`` finite and ``<= 0``; ``reward`` finite); on a bad
    value this raises the ``ValueError`` naming the argument and the first bad index.
    Inputs are 1-D float64 arrays of one length (shapes and dtypes checked by the caller).

    Returns
    -------
    (moments (9,), whether every reward lies in [0, 1])
    """
    out, first_bad = be.ips_moments_checked(log_target, log_logging, reward, float(log_clip))
    first_bad = np.asarray(first_bad)
    if (first_bad >= 0).any():
        raise_first_bad(
            first_bad, {"log_target": log_target, "log_logging": log_logging, "reward": reward}
        )
    out = np.array(out, dtype=np.float64)
    return _zero_weight_sums(out[:9]), bool(out[9] == 0)
