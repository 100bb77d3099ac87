r"""Plain-torch references of the ops in :mod:`pope.ops` (fallback on CPU, oracle in tests).

Every function here is differentiable through ordinary torch autograd and computes in fp32
whatever the input dtype. They materialise fp32 copies of the logits (``log_softmax``), so
they cost several ``N x V`` temporaries; the fused Triton path in :mod:`pope.ops` does not.
No input validation happens here: :mod:`pope.ops` validates before dispatching.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "PopeLossOutput",
    "linear_sequence_logprob",
    "pope_loss",
    "sequence_logprob",
    "token_counts",
]


class PopeLossOutput(NamedTuple):
    """Result of :func:`pope.ops.pope_loss`.

    Attributes
    ----------
    loss : () fp32 tensor, differentiable w.r.t. the logits.
    logp : (S,) fp32 :math:`\\log\\pi_\\theta(y_s)`, detached.
    weights : (S,) fp32 raw importance weights :math:`w_s` (before any clipping; may be
        ``inf`` when the ratio overflows fp32), detached.
    clipped : (S,) bool, True where the ratio control replaced :math:`w_s` by a constant
        (those sequences get zero gradient).
    """

    loss: torch.Tensor
    logp: torch.Tensor
    weights: torch.Tensor
    clipped: torch.Tensor


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
    safe = torch.where(mask, targets, torch.zeros_like(targets)).long()
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe[:, None]).squeeze(-1)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    seq = torch.zeros(num_seqs, dtype=torch.float32, device=logits.device)
    seq = seq.index_add(0, seq_index.long(), logp)
    return (seq, logp) if return_token_logprobs else seq


def token_counts(
    targets: torch.Tensor, seq_index: torch.Tensor, num_seqs: int, ignore_index: int = -100
) -> torch.Tensor:
    """(S,) fp32 number of unmasked tokens of each sequence."""
    mask = (targets != ignore_index).float()
    out = torch.zeros(num_seqs, dtype=torch.float32, device=targets.device)
    return out.index_add(0, seq_index.long(), mask)


def pope_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    log_logging: torch.Tensor,
    advantages: torch.Tensor,
    *,
    ignore_index: int = -100,
    weighting: str = "sequence",
    clip: float | None = None,
    ppo_eps: float | None = None,
    normalizer: float | None = None,
) -> PopeLossOutput:
    """Reference of :func:`pope.ops.pope_loss` (see there for the formulas).

    The clip decision is taken on the fp32 log-ratio against the fp32-rounded log bound, as
    the kernel does; clipped (and zero-advantage) sequences get their log-ratio replaced by a
    constant before ``exp``, so the gradient there is exactly zero even if :math:`w_s` would
    overflow.
    """
    logp = sequence_logprob(logits, targets, seq_index, num_seqs, ignore_index=ignore_index)
    assert isinstance(logp, torch.Tensor)  # no per-token output asked for
    ll = log_logging.detach().float()
    adv = advantages.detach().float()
    r = logp - ll
    if weighting == "token_mean":
        r = r / token_counts(targets, seq_index, num_seqs, ignore_index).clamp_min(1.0)
    rd = r.detach()
    zeros_b = torch.zeros_like(rd, dtype=torch.bool)
    if clip is not None:
        hi, lo = float(clip), 1.0
        clip_hi = rd > math.log(hi)
        clip_lo = zeros_b
    elif ppo_eps is not None:
        hi, lo = 1.0 + float(ppo_eps), 1.0 - float(ppo_eps)
        clip_hi = (adv > 0) & (rd > math.log(hi))
        clip_lo = (adv < 0) & (rd < math.log(lo))
    else:
        hi = lo = 1.0
        clip_hi = clip_lo = zeros_b
    clipped = clip_hi | clip_lo
    live = adv != 0
    frozen = clipped | ~live
    w_live = torch.exp(torch.where(frozen, torch.zeros_like(r), r))
    w_eff = torch.where(clip_hi, torch.full_like(rd, hi), w_live)
    w_eff = torch.where(clip_lo, torch.full_like(rd, lo), w_eff)
    f = torch.where(live, w_eff * adv, torch.zeros_like(rd))
    z = float(num_seqs) if normalizer is None else float(normalizer)
    loss = -f.sum() / z
    return PopeLossOutput(loss, logp.detach(), torch.exp(rd), clipped)


def _chunk_token_logprob(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    mask = targets != ignore_index
    safe = torch.where(mask, targets, torch.zeros_like(targets)).long()
    logits = (hidden @ weight.t()).float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, safe[:, None]).squeeze(-1)
    return torch.where(mask, logp, torch.zeros_like(logp))


def linear_sequence_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    return_token_logprobs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`pope.ops.linear_sequence_logprob`.

    Chunks of rows go through :func:`torch.utils.checkpoint.checkpoint`, so autograd keeps
    no ``(N, V)`` activation (each chunk's logits are recomputed in the backward); the largest
    temporaries are a few fp32 ``(chunk_size, V)`` buffers. With ``chunk_size=None`` the whole
    batch is one chunk (the op passes its default chunk size). ``return_token_logprobs``: also
    the (N,) fp32 per-token log-probs (0 where masked), differentiable.
    """
    n_rows = hidden.shape[0]
    step = n_rows if chunk_size is None else int(chunk_size)
    parts = []
    for start in range(0, n_rows, max(step, 1)):
        end = min(start + step, n_rows)
        args = (hidden[start:end], weight, targets[start:end], ignore_index)
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            parts.append(checkpoint(_chunk_token_logprob, *args, use_reentrant=False))
        else:
            parts.append(_chunk_token_logprob(*args))
    tok = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    seq = torch.zeros(num_seqs, dtype=torch.float32, device=hidden.device)
    seq = seq.index_add(0, seq_index.long(), tok)
    return (seq, tok) if return_token_logprobs else seq
