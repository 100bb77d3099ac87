r"""Differentiable log-prob and POPE-loss ops on LM logits (torch).

Three public ops, and one helper for packed batches:

* :func:`sequence_logprob`: per-sequence sums of target-token log-probs from ``(N, V)``
  logits (packed, ragged sequences: a per-token ``seq_index``);
* :func:`pope_loss`: the off-policy POPE objective (importance weight, ratio control,
  advantage) fused with the log-prob reduction;
* :func:`linear_sequence_logprob`: :func:`sequence_logprob` from hidden states and the LM
  head weight, chunked so the ``(N, V)`` logits never exist at once;
* :func:`seq_index_from_cu_seqlens`: the per-token ``seq_index`` of a packed (varlen) batch
  from its cumulative sequence lengths, the layout of flash-attention's varlen kernels.

Layout: each op pairs a Triton kernel (:mod:`pope.kernels`), an autograd Function and a
plain-torch reference (:mod:`pope.ops.reference`), and its module shows the three together:

* :mod:`pope.ops.logprob`: kernels :mod:`pope.kernels.logprob`, autograd
  ``_SequenceLogprobFunction``, reference :func:`pope.ops.reference.sequence_logprob`;
* :mod:`pope.ops.pope_loss`: kernels :mod:`pope.kernels.logprob` +
  :mod:`pope.kernels.pope_loss`, autograd ``_PopeLossFunction``, reference
  :func:`pope.ops.reference.pope_loss`;
* :mod:`pope.ops.linear`: kernels :mod:`pope.kernels.linear_logprob`, autograd
  ``_LinearSequenceLogprobFunction``, reference
  :func:`pope.ops.reference.linear_sequence_logprob`.

:mod:`pope.ops.dispatch` chooses the backend per call (``backend=``, the ``POPE_BACKEND``
environment variable, automatic: Triton on CUDA, the reference elsewhere); an explicitly
requested backend that cannot run raises, the automatic choice never does.
:mod:`pope.ops.validation` holds the argument checks and the rule for non-finite values. All
inputs are validated (``TypeError`` / ``ValueError`` naming the argument) before dispatch;
the value checks (index ranges, finiteness) cost one device synchronisation.
"""

from __future__ import annotations

from pope.ops.dispatch import OP_BACKENDS, resolve_op_backend
from pope.ops.linear import linear_sequence_logprob
from pope.ops.logprob import sequence_logprob
from pope.ops.packing import seq_index_from_cu_seqlens
from pope.ops.pope_loss import PopeLossOutput, pope_loss
from pope.ops.validation import LOGPROB_TOL

__all__ = [
    "LOGPROB_TOL",
    "OP_BACKENDS",
    "PopeLossOutput",
    "linear_sequence_logprob",
    "pope_loss",
    "resolve_op_backend",
    "seq_index_from_cu_seqlens",
    "sequence_logprob",
]
