"""Deprecated location of the torch references: use :mod:`pope.ops.reference`.

Kept so that ``from pope import ops_reference`` and ``pope.ops_reference.<name>`` keep working;
it re-exports the names of :mod:`pope.ops.reference`.
"""

from __future__ import annotations

from pope.ops.reference import (
    PopeLossOutput,
    linear_sequence_logprob,
    pope_loss,
    sequence_logprob,
    token_counts,
)

__all__ = [
    "PopeLossOutput",
    "linear_sequence_logprob",
    "pope_loss",
    "sequence_logprob",
    "token_counts",
]
