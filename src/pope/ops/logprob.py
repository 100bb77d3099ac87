r"""Per-sequence log-probabilities of target tokens from ``(N, V)`` logits.

The three pieces of the op, side by side:

* kernel: :func:`pope.kernels.logprob.logprob_fwd` / :func:`~pope.kernels.logprob.logprob_bwd`
  (Triton; one row per program, online log-sum-exp);
* autograd: :class:`_SequenceLogprobFunction` (forward saves the LSE, backward is one sweep
  :func:`logits_backward`);
* reference: :func:`pope.ops.reference.sequence_logprob` (plain torch, the CPU fallback and
  the test oracle).

:func:`sequence_logprob` validates (:mod:`pope.ops.validation`), picks the backend
(:func:`pope.ops.dispatch.resolve_op_backend`) and runs one of the two.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import torch

from pope.ops import reference
from pope.ops.dispatch import kernel_modules, resolve_op_backend
from pope.ops.validation import check_common, check_values

__all__ = ["logits_backward", "prepare_logits_for_triton", "sequence_logprob"]


def prepare_logits_for_triton(logits: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Logits with unit column stride (any row stride); copies only if the columns are strided."""
    if logits.stride(1) == 1 and (logits.shape[0] <= 1 or logits.stride(0) >= logits.shape[1]):
        return logits
    if inplace:
        raise ValueError(
            "inplace_backward=True needs logits with unit column stride and non-overlapping rows "
            f"(got strides {tuple(logits.stride())}); pass logits.contiguous() or disable it"
        )
    return logits.contiguous()


def logits_backward(
    ctx: Any, grad_seq: torch.Tensor | None, grad_tok: torch.Tensor | None
) -> torch.Tensor:
    """``d/d logits`` of the saved forward, from the sequence / token gradients (fp32).

    With ``ctx.inplace_backward`` the gradient overwrites the saved logits, and autograd's
    version counter of that tensor is bumped, so any other saved use of it fails loudly.
    """
    logits, targets, seq_index, lse = ctx.saved_tensors[:4]
    logprob, _, _ = kernel_modules()
    grad = logprob.logprob_bwd(
        logits, targets, seq_index, lse, grad_seq, grad_tok, ctx.ignore_index,
        inplace=ctx.inplace_backward,
    )  # fmt: skip
    if ctx.inplace_backward:
        torch.autograd.graph.increment_version(logits)
    return grad


class _SequenceLogprobFunction(torch.autograd.Function):
    """Triton forward/backward of :func:`sequence_logprob`."""

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        seq_index: torch.Tensor,
        num_seqs: int,
        ignore_index: int,
        inplace_backward: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logprob, _, _ = kernel_modules()
        seq, tok, lse, _ = logprob.logprob_fwd(logits, targets, seq_index, num_seqs, ignore_index)
        ctx.save_for_backward(logits, targets, seq_index, lse)
        ctx.ignore_index = ignore_index
        ctx.inplace_backward = inplace_backward
        ctx.set_materialize_grads(False)
        return seq, tok

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_seq: torch.Tensor | None, grad_tok: torch.Tensor | None):
        if grad_seq is None and grad_tok is None:
            return None, None, None, None, None, None
        gs = None if grad_seq is None else grad_seq.float().contiguous()
        gt = None if grad_tok is None else grad_tok.float().contiguous()
        return logits_backward(ctx, gs, gt), None, None, None, None, None


@overload
def sequence_logprob(
    logits: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = ...,
    return_token_logprobs: Literal[False] = ...,
    inplace_backward: bool = ...,
    backend: str | None = ...,
) -> torch.Tensor: ...


@overload
def sequence_logprob(
    logits: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = ...,
    return_token_logprobs: Literal[True],
    inplace_backward: bool = ...,
    backend: str | None = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def sequence_logprob(
    logits: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = ...,
    return_token_logprobs: bool,
    inplace_backward: bool = ...,
    backend: str | None = ...,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def sequence_logprob(
    logits: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = -100,
    return_token_logprobs: bool = False,
    inplace_backward: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Per-sequence log-probabilities of target tokens.

    .. math::

        \ell_t = z_t[y_t] - \log\sum_v e^{z_t[v]}, \qquad
        \log\pi(y_s) = \sum_{t:\ s(t)=s,\ y_t \ne \mathrm{ignore}} \ell_t .

    Gradient: :math:`\partial L / \partial z_{t,v} = g_t(\mathbb{1}[v = y_t] -
    \mathrm{softmax}(z_t)_v)` with :math:`g_t = \bar g_{s(t)} + \bar\ell_t` on unmasked tokens
    (0 on masked ones), written in one pass from the log-sum-exp saved by the forward.

    Parameters
    ----------
    logits : (N, V) tensor, float32 / bfloat16 / float16
        Any row stride (e.g. a slice of a model's output, no copy); the column stride should
        be 1 (otherwise the Triton path makes a contiguous copy).
    targets : (N,) int32 / int64 tensor
        Target ids in ``[0, V)``, or ``ignore_index`` to mask a token.
    seq_index : (N,) int32 / int64 tensor
        The sequence of each token, in ``[0, num_seqs)``; tokens of a sequence need not be
        contiguous.
    num_seqs : int
        S >= 1. A sequence with no (unmasked) token gets log-prob 0.
    ignore_index : int, default -100
    return_token_logprobs : bool, default False
        Also return the (N,) fp32 per-token log-probs :math:`\ell_t` (0 where masked).
    inplace_backward : bool, default False
        Triton path only: the backward writes the gradient over ``logits`` (no extra N x V
        buffer). The logits tensor is **consumed**: after the backward it holds the gradient;
        autograd's version counter is bumped, so another autograd use of the same tensor
        raises instead of silently reading the gradient. The saving is real when the logits
        are produced by an autograd graph (a model output, or a view); a leaf tensor passed
        directly gets its gradient *copied* into ``.grad`` by autograd. Ignored by the torch
        reference.
    backend : {None, "auto", "triton", "torch"}
        See the module docstring.

    Returns
    -------
    seq_logp : (S,) fp32 tensor, differentiable w.r.t. ``logits``;
    (seq_logp, token_logp) if ``return_token_logprobs``.

    Raises
    ------
    TypeError, ValueError
        Invalid argument types, shapes, dtypes, devices, out-of-range ``targets`` /
        ``seq_index``, or non-finite ``logits`` (NaN / ``+inf`` anywhere, ``-inf`` at an
        unmasked target; see the module docstring).
    RuntimeError
        An explicitly requested backend cannot run.
    """
    logits, targets, seq_index, num_seqs, ignore_index = check_common(
        logits, targets, seq_index, num_seqs, ignore_index
    )
    check_values(targets, seq_index, num_seqs, logits.shape[1], ignore_index, logits=logits)
    if resolve_op_backend(backend, logits.device) == "torch":
        return reference.sequence_logprob(
            logits,
            targets,
            seq_index,
            num_seqs,
            ignore_index=ignore_index,
            return_token_logprobs=return_token_logprobs,
        )
    x = prepare_logits_for_triton(logits, bool(inplace_backward))
    seq, tok = _SequenceLogprobFunction.apply(
        x,
        targets.contiguous(),
        seq_index.contiguous(),
        num_seqs,
        ignore_index,
        bool(inplace_backward),
    )
    return (seq, tok) if return_token_logprobs else seq
