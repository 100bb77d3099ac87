r"""Sequence log-probs from hidden states and the LM head, in chunks of rows.

The three pieces of the op, side by side:

* kernels: :func:`pope.kernels.linear_logprob.linear_logprob_fwd` /
  :func:`~pope.kernels.linear_logprob.linear_logprob_bwd` (a torch matmul per chunk of rows,
  reduced by the log-prob kernels; the backward recomputes each chunk);
* autograd: :class:`_LinearSequenceLogprobFunction`;
* reference: :func:`pope.ops.reference.linear_sequence_logprob` (activation checkpointing per
  chunk).
"""

from __future__ import annotations

import torch

from pope.ops import reference
from pope.ops.dispatch import kernel_modules, resolve_op_backend
from pope.ops.validation import check_index, check_logits, check_num_seqs, check_values, is_int

__all__ = ["linear_sequence_logprob"]


class _LinearSequenceLogprobFunction(torch.autograd.Function):
    """Chunked Triton forward/backward of :func:`linear_sequence_logprob`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        seq_index: torch.Tensor,
        num_seqs: int,
        ignore_index: int,
        chunk_size: int | None,
    ) -> torch.Tensor:
        _, _, linear = kernel_modules()
        seq, lse = linear.linear_logprob_fwd(
            hidden, weight, targets, seq_index, num_seqs, ignore_index, chunk_size
        )
        ctx.save_for_backward(hidden, weight, targets, seq_index, lse)
        ctx.ignore_index = ignore_index
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return seq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_seq: torch.Tensor | None):  # type: ignore[override]
        hidden, weight, targets, seq_index, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_seq is None or not (need_h or need_w):
            return None, None, None, None, None, None, None
        _, _, linear = kernel_modules()
        grad_h, grad_w = linear.linear_logprob_bwd(
            hidden, weight, targets, seq_index, lse, grad_seq.float().contiguous(),
            ctx.ignore_index, ctx.chunk_size, need_hidden=need_h, need_weight=need_w,
        )  # fmt: skip
        return grad_h, grad_w, None, None, None, None, None


def linear_sequence_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    r""":func:`sequence_logprob` of the logits :math:`Z = H W^\top`, never materialising them.

    Rows are processed in chunks of ``chunk_size`` tokens: per chunk a torch matmul gives the
    ``(C, V)`` logits, which the Triton log-prob kernel reduces. The backward **recomputes**
    each chunk's logits from the saved inputs and the saved per-token log-sum-exp, writes
    :math:`\bar Z_c = g_t(\mathrm{onehot}(y_t) - \mathrm{softmax}(z_t))` over them in place,
    and forms :math:`\bar H_c = \bar Z_c W` and :math:`\bar W \mathrel{{+}{=}} \bar Z_c^\top
    H_c` (fp32 accumulation of :math:`\bar W`). Gradients cannot be formed in the forward
    because the incoming gradient of the (S,) output is unknown then. Cost: about 4/3 of the
    unchunked matmul FLOPs; extra memory: one ``(C, V)`` chunk (plus an fp32 ``(V, H)``
    accumulator for 16-bit weights).

    Parameters
    ----------
    hidden : (N, H) float32 / bfloat16 / float16 tensor
        Final hidden states (after the last norm), one row per token.
    weight : (V, H) tensor, same dtype and device
        LM head weight (no bias).
    targets, seq_index, num_seqs, ignore_index
        As in :func:`sequence_logprob`.
    chunk_size : int >= 1, optional
        Rows per chunk; default
        :math:`2^{\lceil\log_2\lceil N/\lceil V/H\rceil\rceil\rceil}` (a logits chunk about
        the size of ``hidden``). The torch reference processes the whole batch at once by
        default (with activation checkpointing per chunk when given).
    backend : {None, "auto", "triton", "torch"}

    Returns
    -------
    (S,) fp32 tensor, differentiable w.r.t. ``hidden`` and ``weight``.
    """
    hidden = check_logits(hidden, "hidden")
    weight = check_logits(weight, "weight")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} must match hidden dtype {hidden.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device}, expected {hidden.device}")
    if weight.shape[0] < 1:
        raise ValueError("weight must have at least one row (V >= 1), got V = 0")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must have shape (V, H) with H = hidden.shape[1] = {hidden.shape[1]}, "
            f"got {tuple(weight.shape)}"
        )
    n = hidden.shape[0]
    targets = check_index("targets", targets, n, hidden.device)
    seq_index = check_index("seq_index", seq_index, n, hidden.device)
    num_seqs = check_num_seqs(num_seqs)
    if not is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    ignore_index = int(ignore_index)
    if chunk_size is not None:
        if not is_int(chunk_size):
            raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunk_size = int(chunk_size)
    check_values(
        targets, seq_index, num_seqs, weight.shape[0], ignore_index,
        finite={"hidden": hidden, "weight": weight},
    )  # fmt: skip
    if resolve_op_backend(backend, hidden.device) == "torch":
        return reference.linear_sequence_logprob(
            hidden,
            weight,
            targets,
            seq_index,
            num_seqs,
            ignore_index=ignore_index,
            chunk_size=chunk_size,
        )
    return _LinearSequenceLogprobFunction.apply(
        hidden.contiguous(),
        weight.contiguous(),
        targets.contiguous(),
        seq_index.contiguous(),
        num_seqs,
        ignore_index,
        chunk_size,
    )
