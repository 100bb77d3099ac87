"""Plain-torch references of the ops in :mod:`pope.ops` (fallback on CPU, oracle in tests)."""

from __future__ import annotations

import torch

__all__ = ["sequence_logprob"]


def sequence_logprob(
    logits: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = -100,
    return_token_logprobs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`pope.ops.sequence_logprob` (fp32 log-softmax, gather, index_add)."""
    mask = targets != ignore_index
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe[:, None]).squeeze(-1)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    seq = torch.zeros(num_seqs, dtype=torch.float32, device=logits.device)
    seq = seq.index_add(0, seq_index, logp)
    return (seq, logp) if return_token_logprobs else seq
