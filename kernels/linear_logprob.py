r"""Chunked sequence log-probabilities from hidden states and the LM head weight.

The ``(N, V)`` logits :math:`Z = H W^\top` never exist at once: rows are processed in chunks
of ``C`` tokens, and for each chunk the ``(C, V)`` logits are produced by a torch matmul and
reduced by the Triton kernels of :mod:`pope.kernels.logprob`.

Forward, per chunk ``c``: :math:`Z_c = H_c W^\top` (input dtype, fp32 accumulation inside the
GEMM), then :func:`~pope.kernels.logprob.logprob_fwd` accumulates
:math:`\log\pi(y_s) \mathrel{+}= \sum_{t \in c} z_{t,y_t} - \mathrm{lse}_t` into the shared
``(S,)`` buffer and stores :math:`\mathrm{lse}_t` (``N`` fp32 values: the only thing kept for the
backward besides the inputs) and the per-token log-prob :math:`\ell_t` (``N`` fp32 values,
returned on request: the per-token output needed e.g. for a KL penalty).

Backward (recompute strategy), per chunk: :math:`Z_c` is recomputed, the gradient

.. math:: \bar Z_c = g_t\,(\mathrm{onehot}(y_t) - \mathrm{softmax}(z_t)), \qquad
          g_t = (\bar g_{s(t)} + \bar\ell_t)\,\mathbb{1}[y_t \ne \mathrm{ignore}]

(:math:`\bar g` and :math:`\bar\ell` the incoming gradients of the per-sequence and, when
requested, per-token outputs) is written over the recomputed :math:`Z_c` in place (one Triton
sweep from the saved LSE), then
:math:`\bar H_c = \bar Z_c W` and :math:`\bar W \mathrel{+}= \bar Z_c^\top H_c`.

Why recompute rather than compute the gradients inside the forward (the fused-linear
cross-entropy approach): the output here is a vector of per-sequence log-probs whose incoming
gradient :math:`\bar g` is unknown at forward time, so the gradient cannot be formed then without
fixing the loss. Cost: forward one GEMM, backward three GEMMs (recompute,
:math:`\bar H`, :math:`\bar W`), i.e. about 4/3 of the unchunked FLOPs; peak extra memory is
one ``(C, V)`` chunk plus, for 16-bit weights, an fp32 ``(V, H)`` accumulator for
:math:`\bar W` and one 16-bit ``(V, H)`` partial per chunk (chunk partial sums are added in
fp32 and cast once at the end, so the rounding does not grow with the number of chunks).
"""

from __future__ import annotations

import torch

from .chunking import default_chunk_size
from .logprob import logprob_bwd, logprob_fwd

__all__ = ["default_chunk_size", "linear_logprob_bwd", "linear_logprob_fwd"]


def linear_logprob_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    *,
    return_token_logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Chunked forward.

    Parameters
    ----------
    hidden : (N, H); weight : (V, H), same dtype; targets, seq_index : (N,) int.
    chunk_size : rows per chunk (default :func:`default_chunk_size`).
    return_token_logprobs : also return the (N,) fp32 per-token log-probs
        :math:`\ell_t = z_{t,y_t} - \mathrm{lse}_t` (0 where masked), which the kernel writes
        anyway: an ``N``-vector, no ``(N, V)`` buffer.

    Returns
    -------
    seq_logp : (S,) fp32; lse : (N,) fp32 (for :func:`linear_logprob_bwd`);
    ``(seq_logp, tok_logp, lse)`` if ``return_token_logprobs``.
    """
    n_rows = hidden.shape[0]
    device = hidden.device
    if chunk_size is None:
        chunk_size = default_chunk_size(n_rows, hidden.shape[1], weight.shape[0])
    seq_logp = torch.zeros(num_seqs, dtype=torch.float32, device=device)
    lse = torch.empty(n_rows, dtype=torch.float32, device=device)
    tok = torch.empty(n_rows, dtype=torch.float32, device=device)
    for start in range(0, n_rows, chunk_size):
        end = min(start + chunk_size, n_rows)
        logits = hidden[start:end] @ weight.t()
        logprob_fwd(
            logits,
            targets[start:end],
            seq_index[start:end],
            num_seqs,
            ignore_index,
            out_seq=seq_logp,
            out_tok=tok[start:end],
            out_lse=lse[start:end],
        )
        del logits
    if return_token_logprobs:
        return seq_logp, tok, lse
    return seq_logp, lse


def linear_logprob_bwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    lse: torch.Tensor,
    grad_seq: torch.Tensor | None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    *,
    grad_tok: torch.Tensor | None = None,
    need_hidden: bool = True,
    need_weight: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    r"""Chunked backward (recomputes each logits chunk).

    The logit gradient of token ``t`` is :math:`g_t(\mathrm{onehot}(y_t) -
    \mathrm{softmax}(z_t))` with :math:`g_t = \bar g_{s(t)} + \bar\ell_t` (either term may
    be absent).

    Parameters
    ----------
    lse : (N,) fp32 from :func:`linear_logprob_fwd`.
    grad_seq : (S,) fp32 gradient of the sequence log-probs, or None (zero).
    grad_tok : (N,) fp32 gradient of the per-token log-probs, or None (zero).
    need_hidden, need_weight : which gradients to form.

    Returns
    -------
    grad_hidden : (N, H) in ``hidden.dtype`` or None; grad_weight : (V, H) in
    ``weight.dtype`` or None.
    """
    n_rows = hidden.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(n_rows, hidden.shape[1], weight.shape[0])
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = None
    if need_weight:
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    for start in range(0, n_rows, chunk_size):
        end = min(start + chunk_size, n_rows)
        h = hidden[start:end]
        logits = h @ weight.t()
        dlogits = logprob_bwd(
            logits,
            targets[start:end],
            seq_index[start:end],
            lse[start:end],
            grad_seq,
            None if grad_tok is None else grad_tok[start:end],
            ignore_index,
            inplace=True,
        )
        if grad_hidden is not None:
            torch.mm(dlogits, weight, out=grad_hidden[start:end])
        if grad_weight is not None:
            if grad_weight.dtype == h.dtype:
                grad_weight.addmm_(dlogits.t(), h)
            else:  # 16-bit inputs: one (V, H) 16-bit partial, added into the fp32 accumulator
                grad_weight.add_(dlogits.t() @ h)
        del logits, dlogits
    if grad_weight is not None and grad_weight.dtype != weight.dtype:
        grad_weight = grad_weight.to(weight.dtype)
    return grad_hidden, grad_weight
