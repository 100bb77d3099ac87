"""Differentiable log-prob and POPE-loss ops on LM logits (torch).

Public functions dispatch to the Triton kernels in :mod:`pope.kernels` on CUDA tensors and to
the torch reference in :mod:`pope.ops_reference` otherwise. (Triton dispatch: issue 3.)
"""

from __future__ import annotations

import torch

from pope import ops_reference

__all__ = ["sequence_logprob"]


def sequence_logprob(
    logits: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = -100,
    return_token_logprobs: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Per-sequence log-probabilities of target tokens.

    .. math:: \log\pi(y_s) = \sum_{t: s(t)=s,\ y_t \ne \text{ignore}} z_t[y_t] - \log\sum_v e^{z_t[v]}

    Parameters
    ----------
    logits : (N, V) float tensor (fp32, bf16, fp16); any row stride, last-dim stride 1.
    targets : (N,) int64; ``ignore_index`` masks a token.
    seq_index : (N,) int64 in ``[0, num_seqs)``: the sequence each token belongs to.
    num_seqs : int
    return_token_logprobs : bool
        Also return the (N,) fp32 per-token log-probs (0 where masked).

    Returns
    -------
    (num_seqs,) fp32 tensor, differentiable w.r.t. ``logits``.
    """
    return ops_reference.sequence_logprob(
        logits,
        targets,
        seq_index,
        num_seqs,
        ignore_index=ignore_index,
        return_token_logprobs=return_token_logprobs,
    )
