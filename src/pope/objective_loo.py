"""Deprecated location of the torch leave-one-out rewards: use :mod:`pope.objective.loo`.

Kept so that ``pope.objective_loo.<name>`` keeps working; it re-exports
:mod:`pope.objective.loo`.
"""

from __future__ import annotations

from pope.objective.loo import (
    coefficient_table,
    local_states,
    loo_rewards,
    merge_ranks,
    polymul,
    power_sums,
)

__all__ = [
    "coefficient_table",
    "local_states",
    "loo_rewards",
    "merge_ranks",
    "polymul",
    "power_sums",
]
