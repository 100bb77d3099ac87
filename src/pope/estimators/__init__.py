r"""Off-policy estimators: one function per estimator, keyword arrays, an ``Estimate`` back.

Single response per sample (:mod:`pope.estimators.single`):
:func:`ips`, :func:`snips`, :func:`dm`, :func:`dr`, :func:`sndr`, :func:`switch_dr`,
:func:`sub_gaussian_ips`.

Lists of :math:`L` responses (:mod:`pope.estimators.lists`): :func:`sips` (joint list
propensity), :func:`iips` (per-position marginals), :func:`rips` (cascade prefixes).

POPE (:mod:`pope.estimators.pope`): :func:`evaluate` (relevance, diversity and their sum, with
prompt-level uncertainty) and the mergeable :class:`PopeStats`; :func:`compare` (paired
differences of two policies on one log, :mod:`pope.estimators.compare`).

Interval maths: :mod:`pope.intervals` (also importable as ``pope.estimators.intervals``);
sufficient statistics of the single-response and list estimators:
:mod:`pope.estimators.sufficient_stats`.
"""

from __future__ import annotations

from pope.estimators.compare import PopeComparison, compare
from pope.estimators.lists import (
    cascade_log_propensity,
    iips,
    joint_log_propensity,
    rips,
    sips,
)
from pope.estimators.pope import PopeEstimate, PopeStats, evaluate, pope_stats
from pope.estimators.single import dm, dr, ips, sndr, snips, sub_gaussian_ips, switch_dr

__all__ = [
    "PopeComparison",
    "PopeEstimate",
    "PopeStats",
    "cascade_log_propensity",
    "compare",
    "dm",
    "dr",
    "evaluate",
    "iips",
    "ips",
    "joint_log_propensity",
    "pope_stats",
    "rips",
    "sips",
    "sndr",
    "snips",
    "sub_gaussian_ips",
    "switch_dr",
]
