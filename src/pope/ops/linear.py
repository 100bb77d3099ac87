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

from typing import Literal, overload

import torch

from pope.kernels.chunking import default_chunk_size
from pope.ops import reference
from pope.ops.dispatch import kernel_modules, resolve_op_backend
from pope.ops.validation import check_index, check_logits, check_num_seqs, check_values, is_int

__all__ = ["linear_sequence_logprob"]


class _LinearSequenceLogprobFunction(torch.autograd.Function):
    r"""Chunked Triton forward/backward of :func:`linear_sequence_logprob`.

    Outputs ``(seq_logp, tok_logp)``; the backward takes the gradient of either or both (the
    per-token one adds :math:`\bar\ell_t` to the row coefficient of token ``t``).
    """

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        seq_index: torch.Tensor,
        num_seqs: int,
        ignore_index: int,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, linear = kernel_modules()
        seq, tok, lse = linear.linear_logprob_fwd(
            hidden, weight, targets, seq_index, num_seqs, ignore_index, chunk_size,
            return_token_logprobs=True,
        )  # fmt: skip
        ctx.save_for_backward(hidden, weight, targets, seq_index, lse)
        ctx.ignore_index = ignore_index
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return seq, tok

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_seq: torch.Tensor | None, grad_tok: torch.Tensor | None):
        hidden, weight, targets, seq_index, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nones = (None,) * 5
        if (grad_seq is None and grad_tok is None) or not (need_h or need_w):
            return (None, None, *nones)
        gs = None if grad_seq is None else grad_seq.float().contiguous()
        gt = None if grad_tok is None else grad_tok.float().contiguous()
        _, _, linear = kernel_modules()
        grad_h, grad_w = linear.linear_logprob_bwd(
            hidden, weight, targets, seq_index, lse, gs, ctx.ignore_index, ctx.chunk_size,
            grad_tok=gt, need_hidden=need_h, need_weight=need_w,
        )  # fmt: skip
        return (grad_h, grad_w, *nones)


@overload
def linear_sequence_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = ...,
    return_token_logprobs: Literal[False] = ...,
    chunk_size: int | None = ...,
    backend: str | None = ...,
) -> torch.Tensor: ...


@overload
def linear_sequence_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = ...,
    return_token_logprobs: Literal[True],
    chunk_size: int | None = ...,
    backend: str | None = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def linear_sequence_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = ...,
    return_token_logprobs: bool,
    chunk_size: int | None = ...,
    backend: str | None = ...,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def linear_sequence_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = -100,
    return_token_logprobs: bool = False,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r""":func:`pope.ops.sequence_logprob` of the logits :math:`Z = H W^\top`, never materialised.

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
        As in :func:`pope.ops.sequence_logprob`.
    return_token_logprobs : bool, default False
        Also return the (N,) fp32 per-token log-probs :math:`\ell_t = z_{t,y_t} -
        \log\sum_v e^{z_{t,v}}` (0 where masked), differentiable: the input of a per-token
        penalty such as the KL estimate of :class:`pope.objective.PopeObjective`. They are an
        ``N``-vector written chunk by chunk; no ``(N, V)`` buffer is formed for them.
    chunk_size : int >= 1, optional
        Rows per chunk, on both backends; default
        :math:`2^{\lceil\log_2\lceil N/\lceil V/H\rceil\rceil\rceil}` clipped to
        ``[1, N]`` (:func:`pope.kernels.chunking.default_chunk_size`: a logits chunk about the
        size of ``hidden``). The torch reference runs each chunk under activation
        checkpointing.
    backend : {None, "auto", "triton", "torch"}

    Returns
    -------
    seq_logp : (S,) fp32 tensor, differentiable w.r.t. ``hidden`` and ``weight``;
    (seq_logp, token_logp) if ``return_token_logprobs``.
    """
    hidden, weight = _check_hidden_weight(hidden, weight)
    n = hidden.shape[0]
    targets = check_index("targets", targets, n, hidden.device)
    seq_index = check_index("seq_index", seq_index, n, hidden.device)
    num_seqs = check_num_seqs(num_seqs)
    if not is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    ignore_index = int(ignore_index)
    if chunk_size is None:
        chunk_size = default_chunk_size(n, hidden.shape[1], weight.shape[0])
    else:
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
            hidden, weight, targets, seq_index, num_seqs, ignore_index=ignore_index,
            chunk_size=chunk_size, return_token_logprobs=return_token_logprobs,
        )  # fmt: skip
    seq, tok = _LinearSequenceLogprobFunction.apply(
        hidden.contiguous(),
        weight.contiguous(),
        targets.contiguous(),
        seq_index.contiguous(),
        num_seqs,
        ignore_index,
        chunk_size,
    )
    return (seq, tok) if return_token_logprobs else seq


def _check_hidden_weight(hidden: object, weight: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``hidden`` (N, H) and ``weight`` (V, H): float, same dtype and device, V >= 1."""
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
    return hidden, weight
