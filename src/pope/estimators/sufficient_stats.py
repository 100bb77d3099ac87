r"""Mergeable sufficient statistics of the single-response and list estimators.

:class:`IPSStats` (IPS, SNIPS, clipped and sub-Gaussian IPS), :class:`DRStats` (DM/DR/SNDR/
Switch-DR) and :class:`MeanStats` (means of per-sample terms): sums over samples with weights
stored scaled by :math:`e^{-m}` (see :mod:`pope.estimate`), so that ``a + b`` merges two
disjoint shards and ``.estimate()`` gives the :class:`~pope.estimate.Estimate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pope.estimate import (
    _LOG_MAX,
    Diagnostics,
    Estimate,
    WeightMoments,
    _check_same,
    _factor,
    _scaled,
)

__all__ = ["DRStats", "IPSStats", "MeanStats"]


# ----------------------------------------------------------------------------- statistics
def _linear(m: float, n: int, s1: float, s2: float, what: str) -> tuple[float, float]:
    r"""Value and standard error of a mean from the scaled sums of :math:`X = e^m\tilde X`."""
    value = _scaled(m, s1 / n, what)
    if n < 2:
        return value, math.nan
    var = max(s2 - s1 * s1 / n, 0.0) / (n - 1)
    return value, _scaled(m, math.sqrt(var / n), what)


def _sg_log_cap(log_clip: float, lam: float) -> float | None:
    """log of the largest possible smoothed weight ``w_lam`` (None if unbounded)."""
    if math.isfinite(log_clip):
        a = math.log1p(-lam) if lam < 1 else -math.inf
        b = (math.log(lam) if lam > 0 else -math.inf) + log_clip
        return log_clip - float(np.logaddexp(a, b))
    if lam > 0:
        return -math.log(lam)
    return None


_NO_CLIP_NOTE = "The weights are unbounded (no clip), so the range of the terms is unknown."
_REWARD_NOTE = "Finite-sample bounds need rewards (and reward models) in [0, 1]."


def _bound(
    lo_hi: Callable[[float], tuple[float, float]],
    log_cap: float | None,
    log_observed: float,
    rewards_ok: bool,
) -> tuple[tuple[float, float] | None, bool, str]:
    if not rewards_ok:
        return None, False, _REWARD_NOTE
    if log_cap is None:
        with np.errstate(over="ignore"):
            return lo_hi(float(np.exp(log_observed))), True, _NO_CLIP_NOTE
    with np.errstate(over="ignore"):
        return lo_hi(float(np.exp(log_cap))), False, ""


@dataclass(frozen=True)
class IPSStats:
    r"""Sufficient statistics of the IPS family (IPS, SNIPS, SIPS, sub-Gaussian IPS).

    Sums of the scaled weights :math:`\tilde w_i = e^{\ell_i - m}` and rewards :math:`r_i`:
    ``sum_w`` :math:`=\sum\tilde w`, ``sum_w2`` :math:`=\sum\tilde w^2`, ``sum_wr``
    :math:`=\sum\tilde w r`, ``sum_w2r2`` :math:`=\sum(\tilde w r)^2`, ``sum_w2r``
    :math:`=\sum\tilde w^2 r`, with ``log_scale`` :math:`m`.

    Estimates
    ---------
    Linear kinds (``"ips"``, ``"sips"``, ``"sub_gaussian_ips"``):
    :math:`\hat V = e^m \sum\tilde w r / n`, standard error from the sample variance of
    :math:`w r`.

    ``"snips"``: :math:`\hat V = \sum\tilde w r/\sum\tilde w` with influence terms
    :math:`\psi_i = w_i(r_i - \hat V)/\bar w`, so
    :math:`\sum\psi_i^2 = (\sum\tilde w^2r^2 - 2\hat V\sum\tilde w^2 r
    + \hat V^2\sum\tilde w^2)/\bar{\tilde w}^2`.

    ``a + b`` merges two shards (same kind and parameters).
    """

    kind: str
    log_scale: float
    n: int
    sum_w: float
    sum_w2: float
    sum_wr: float
    sum_w2r2: float
    sum_w2r: float
    n_clipped: int
    max_log_ratio: float
    log_clip: float = math.inf
    lam: float = 0.0
    list_length: int = 1
    rewards_in_range: bool = True

    _PARAMS = ("kind", "log_clip", "lam", "list_length")

    @classmethod
    def from_moments(cls, kind: str, mom: np.ndarray, **params: Any) -> IPSStats:
        """From the 9-vector of ``ips_moments``."""
        return cls(
            kind=kind,
            log_scale=float(mom[0]),
            n=int(mom[1]),
            sum_w=float(mom[2]),
            sum_w2=float(mom[3]),
            sum_wr=float(mom[4]),
            sum_w2r2=float(mom[5]),
            sum_w2r=float(mom[6]),
            n_clipped=int(mom[7]),
            max_log_ratio=float(mom[8]),
            **params,
        )

    @property
    def weights(self) -> WeightMoments:
        """The weight moments alone (for diagnostics)."""
        return WeightMoments(
            self.log_scale, self.n, self.sum_w, self.sum_w2, self.n_clipped, self.max_log_ratio
        )

    def __add__(self, other: IPSStats) -> IPSStats:
        if not isinstance(other, IPSStats):
            return NotImplemented
        _check_same(self, other, self._PARAMS)
        m = max(self.log_scale, other.log_scale)
        fa, fb = _factor(self.log_scale, m), _factor(other.log_scale, m)
        fa2, fb2 = fa * fa, fb * fb
        return IPSStats(
            kind=self.kind,
            log_scale=m,
            n=self.n + other.n,
            sum_w=fa * self.sum_w + fb * other.sum_w,
            sum_w2=fa2 * self.sum_w2 + fb2 * other.sum_w2,
            sum_wr=fa * self.sum_wr + fb * other.sum_wr,
            sum_w2r2=fa2 * self.sum_w2r2 + fb2 * other.sum_w2r2,
            sum_w2r=fa2 * self.sum_w2r + fb2 * other.sum_w2r,
            n_clipped=self.n_clipped + other.n_clipped,
            max_log_ratio=max(self.max_log_ratio, other.max_log_ratio),
            log_clip=self.log_clip,
            lam=self.lam,
            list_length=self.list_length,
            rewards_in_range=self.rewards_in_range and other.rewards_in_range,
        )

    def estimate(self, alpha: float = 0.05) -> Estimate:
        """The :class:`Estimate` these statistics determine (no contributions or bootstrap)."""
        n, m = self.n, self.log_scale
        if n == 0:
            raise ValueError(f"{self.kind}: no samples")
        extra = {}
        if self.kind == "snips":
            if self.sum_w <= 0:
                raise ValueError(
                    "snips: every importance weight is zero (the target gives probability 0 "
                    "to every logged response); the self-normalised estimate is undefined"
                )
            v = self.sum_wr / self.sum_w
            wbar = self.sum_w / n
            ss = (self.sum_w2r2 - 2.0 * v * self.sum_w2r + v * v * self.sum_w2) / wbar**2
            se = math.sqrt(max(ss, 0.0) / (n * (n - 1))) if n > 1 else math.nan
            rng, heur, note = (
                None,
                False,
                (
                    "Self-normalised estimators are ratios, not means of bounded i.i.d. terms; "
                    "use ci('normal'|'t'|'bootstrap'), or ips/sub_gaussian_ips with clip."
                ),
            )
        else:
            v, se = _linear(m, n, self.sum_wr, self.sum_w2r2, self.kind)
            if self.kind == "sub_gaussian_ips":
                log_cap = _sg_log_cap(self.log_clip, self.lam)
                extra["lam"] = self.lam
            else:
                log_cap = self.log_clip if math.isfinite(self.log_clip) else None
            L = self.list_length
            rng, heur, note = _bound(lambda M: (0.0, M * L), log_cap, m, self.rewards_in_range)
        return Estimate(
            value=v,
            stderr=se,
            n=n,
            diagnostics=self.weights.diagnostics(extra=extra),
            estimator=self.kind,
            alpha=alpha,
            stats=self,
            bound_range=rng,
            bound_heuristic=heur,
            bound_note=note,
        )


@dataclass(frozen=True)
class DRStats:
    r"""Sufficient statistics of the doubly robust family (DR, SNDR, Switch-DR).

    With :math:`\delta_i = r_i - \hat r_i` (set to 0 where Switch-DR falls back to DM,
    i.e. where :math:`w_i > \tau`) and the model value :math:`\hat v_i`, the scaled sums
    ``sum_wd`` :math:`=\sum\tilde w\delta`, ``sum_w2d2`` :math:`=\sum\tilde w^2\delta^2`,
    ``sum_w2d`` :math:`=\sum\tilde w^2\delta`, ``sum_wvd`` :math:`=\sum\tilde w\hat v\delta`,
    ``sum_wv`` :math:`=\sum\tilde w\hat v`, and the unscaled ``sum_v``, ``sum_v2``.

    Estimates
    ---------
    DR / Switch-DR: :math:`X_i = \hat v_i + w_i\delta_i`, :math:`\hat V = \bar X`; the sample
    variance expands to
    :math:`(n-1)s^2 = \sum(\hat v-\bar v)^2 + 2e^m(\sum\tilde w\hat v\delta - \bar v\sum\tilde
    w\delta) + e^{2m}(\sum\tilde w^2\delta^2 - (\sum\tilde w\delta)^2/n)`.

    SNDR: :math:`\hat V = \bar v + D`, :math:`D = \sum\tilde w\delta/\sum\tilde w`; influence
    :math:`\psi_i = (\hat v_i - \bar v) + w_i(\delta_i - D)/\bar w`, whose squares sum to
    :math:`\sum(\hat v-\bar v)^2 + \frac{2}{\bar w}(\sum w\hat v\delta - D\sum w\hat v)
    + \frac{1}{\bar w^2}(\sum w^2\delta^2 - 2D\sum w^2\delta + D^2\sum w^2)`.
    """

    kind: str
    log_scale: float
    n: int
    sum_w: float
    sum_w2: float
    sum_wd: float
    sum_w2d2: float
    sum_w2d: float
    sum_wvd: float
    sum_wv: float
    sum_v: float
    sum_v2: float
    n_clipped: int
    max_log_ratio: float
    n_switched: int = 0
    log_clip: float = math.inf
    log_tau: float = math.inf
    rewards_in_range: bool = True

    _PARAMS = ("kind", "log_clip", "log_tau")
    _SCALED1 = ("sum_w", "sum_wd", "sum_wvd", "sum_wv")
    _SCALED2 = ("sum_w2", "sum_w2d2", "sum_w2d")

    @property
    def weights(self) -> WeightMoments:
        """The weight moments alone (for diagnostics)."""
        return WeightMoments(
            self.log_scale, self.n, self.sum_w, self.sum_w2, self.n_clipped, self.max_log_ratio
        )

    def __add__(self, other: DRStats) -> DRStats:
        if not isinstance(other, DRStats):
            return NotImplemented
        _check_same(self, other, self._PARAMS)
        m = max(self.log_scale, other.log_scale)
        fa, fb = _factor(self.log_scale, m), _factor(other.log_scale, m)
        kw: dict[str, Any] = {}
        for nm in self._SCALED1:
            kw[nm] = fa * getattr(self, nm) + fb * getattr(other, nm)
        for nm in self._SCALED2:
            kw[nm] = fa * fa * getattr(self, nm) + fb * fb * getattr(other, nm)
        return DRStats(
            kind=self.kind,
            log_scale=m,
            n=self.n + other.n,
            sum_v=self.sum_v + other.sum_v,
            sum_v2=self.sum_v2 + other.sum_v2,
            n_clipped=self.n_clipped + other.n_clipped,
            max_log_ratio=max(self.max_log_ratio, other.max_log_ratio),
            n_switched=self.n_switched + other.n_switched,
            log_clip=self.log_clip,
            log_tau=self.log_tau,
            rewards_in_range=self.rewards_in_range and other.rewards_in_range,
            **kw,
        )

    def estimate(self, alpha: float = 0.05) -> Estimate:
        """The :class:`Estimate` these statistics determine (no contributions or bootstrap)."""
        n, m = self.n, self.log_scale
        if n == 0:
            raise ValueError(f"{self.kind}: no samples")
        vbar = self.sum_v / n
        a = max(self.sum_v2 - self.sum_v * vbar, 0.0)  # sum (v - vbar)^2
        extra: dict[str, float] = {}
        if self.kind == "switch_dr":
            extra["switched_fraction"] = self.n_switched / n
            extra["tau"] = math.exp(self.log_tau) if self.log_tau < _LOG_MAX else math.inf
        if self.kind == "sndr":
            if self.sum_w <= 0:
                raise ValueError("sndr: every importance weight is zero; the estimate is undefined")
            d = self.sum_wd / self.sum_w
            v = vbar + d
            wbar = self.sum_w / n
            ss = (
                a
                + 2.0 * (self.sum_wvd - d * self.sum_wv) / wbar
                + (self.sum_w2d2 - 2.0 * d * self.sum_w2d + d * d * self.sum_w2) / wbar**2
            )
            se = math.sqrt(max(ss, 0.0) / (n * (n - 1))) if n > 1 else math.nan
            rng, heur, note = (
                None,
                False,
                (
                    "Self-normalised estimators are ratios, not means of bounded i.i.d. terms; "
                    "use ci('normal'|'t'|'bootstrap'), or dr/switch_dr with clip."
                ),
            )
        else:
            v = vbar + _scaled(m, self.sum_wd / n, self.kind)
            if n > 1:
                e = _scaled(m, 1.0, self.kind) if self.sum_wd or self.sum_w2d2 else 0.0
                b = self.sum_wvd - vbar * self.sum_wd
                c = max(self.sum_w2d2 - self.sum_wd**2 / n, 0.0)
                if e >= 1.0:
                    se = e * math.sqrt(max(a / e**2 + 2.0 * b / e + c, 0.0) / (n * (n - 1)))
                else:
                    se = math.sqrt(max(a + 2.0 * e * b + e * e * c, 0.0) / (n * (n - 1)))
            else:
                se = math.nan
            log_cap = min(self.log_clip, self.log_tau)
            rng, heur, note = _bound(
                lambda M: (-M, 1.0 + M),
                log_cap if math.isfinite(log_cap) else None,
                m,
                self.rewards_in_range,
            )
        return Estimate(
            value=v,
            stderr=se,
            n=n,
            diagnostics=self.weights.diagnostics(extra=extra),
            estimator=self.kind,
            alpha=alpha,
            stats=self,
            bound_range=rng,
            bound_heuristic=heur,
            bound_note=note,
        )


@dataclass(frozen=True)
class MeanStats:
    r"""Sufficient statistics of an estimator that is a plain mean of per-sample terms.

    Used by DM (:math:`X_i = \hat v_i`), IIPS and RIPS (:math:`X_i = \sum_l w_{il} r_{il}`).
    Stores :math:`\sum\tilde X` and :math:`\sum\tilde X^2` of the scaled terms
    :math:`\tilde X = e^{-m}X` (``log_scale`` :math:`m`, 0 for DM), and the weight moments of
    the per-position weights (``None`` for DM).
    """

    kind: str
    log_scale: float
    n: int
    sum_x: float
    sum_x2: float
    weights: WeightMoments | None = None
    log_clip: float = math.inf
    list_length: int = 1
    rewards_in_range: bool = True

    _PARAMS = ("kind", "log_clip", "list_length")

    def __add__(self, other: MeanStats) -> MeanStats:
        if not isinstance(other, MeanStats):
            return NotImplemented
        _check_same(self, other, self._PARAMS)
        m = max(self.log_scale, other.log_scale)
        fa, fb = _factor(self.log_scale, m), _factor(other.log_scale, m)
        sw, ow = self.weights, other.weights
        if (sw is None) != (ow is None):
            raise ValueError("cannot merge statistics with and without weights")
        w = sw + ow if sw is not None and ow is not None else None
        return MeanStats(
            kind=self.kind,
            log_scale=m,
            n=self.n + other.n,
            sum_x=fa * self.sum_x + fb * other.sum_x,
            sum_x2=fa * fa * self.sum_x2 + fb * fb * other.sum_x2,
            weights=w,
            log_clip=self.log_clip,
            list_length=self.list_length,
            rewards_in_range=self.rewards_in_range and other.rewards_in_range,
        )

    def estimate(self, alpha: float = 0.05) -> Estimate:
        """The :class:`Estimate` these statistics determine (no contributions or bootstrap)."""
        n, m = self.n, self.log_scale
        if n == 0:
            raise ValueError(f"{self.kind}: no samples")
        v, se = _linear(m, n, self.sum_x, self.sum_x2, self.kind)
        diag = (
            Diagnostics.without_weights(n)
            if self.weights is None
            else self.weights.diagnostics(n_units=n)
        )
        if self.kind == "dm":
            rng, heur, note = (
                ((0.0, 1.0), False, "") if self.rewards_in_range else (None, False, _REWARD_NOTE)
            )
        else:
            if self.weights is None:
                raise ValueError(f"{self.kind}: weight moments are required")
            L = self.list_length
            log_cap = self.log_clip if math.isfinite(self.log_clip) else None
            rng, heur, note = _bound(
                lambda M: (0.0, M * L), log_cap, self.weights.log_scale, self.rewards_in_range
            )
        return Estimate(
            value=v,
            stderr=se,
            n=n,
            diagnostics=diag,
            estimator=self.kind,
            alpha=alpha,
            stats=self,
            bound_range=rng,
            bound_heuristic=heur,
            bound_note=note,
        )
