"""Packed (varlen) batches: the per-token ``seq_index`` the ops of :mod:`pope.ops` take."""

from __future__ import annotations

import torch

from pope.ops.validation import INDEX_DTYPES, check_tensor

__all__ = ["seq_index_from_cu_seqlens"]


def seq_index_from_cu_seqlens(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, int]:
    r"""Per-token sequence index of a packed batch, from cumulative sequence lengths.

    .. math::

        \mathrm{seq\_index}_t = s \quad\text{for}\quad
        \mathrm{cu}_s \le t < \mathrm{cu}_{s+1}, \qquad s = 0, \dots, S-1,

    so ``sequence_logprob(logits, targets, *seq_index_from_cu_seqlens(cu))`` sums the tokens
    ``cu[s]:cu[s+1]`` of each sequence. A sequence of length 0 gets log-prob 0.

    Parameters
    ----------
    cu_seqlens : (S + 1,) int32 / int64 tensor
        ``[0, cu_1, ..., N]``, non-decreasing, ``S >= 1`` (the ``cu_seqlens`` of
        flash-attention's varlen interface). Rows ``N`` and beyond of the logits, if any, are
        not covered: slice the logits to ``cu_seqlens[-1]`` rows.

    Returns
    -------
    seq_index : (N,) int64 tensor on the device of ``cu_seqlens``
    num_seqs : int
        S.

    Raises
    ------
    TypeError
        ``cu_seqlens`` is not an integer tensor.
    ValueError
        Not 1-D with at least 2 entries, not starting at 0, or decreasing.

    Notes
    -----
    One device synchronisation: the checks and the length ``N = cu_seqlens[-1]``.
    """
    cu = check_tensor("cu_seqlens", cu_seqlens)
    if cu.dtype not in INDEX_DTYPES:
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu.dtype}")
    if cu.dim() != 1 or cu.shape[0] < 2:
        raise ValueError(
            f"cu_seqlens must be 1-D with S + 1 >= 2 entries, got shape {tuple(cu.shape)}"
        )
    lengths = (cu[1:] - cu[:-1]).to(torch.int64)
    first, total, negative = torch.stack(
        [cu[0].to(torch.int64), cu[-1].to(torch.int64), (lengths < 0).any().to(torch.int64)]
    ).tolist()
    if first != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {first}")
    if negative:
        raise ValueError("cu_seqlens must be non-decreasing (sequence lengths >= 0)")
    num_seqs = int(cu.shape[0] - 1)
    seq_index = torch.repeat_interleave(
        torch.arange(num_seqs, device=cu.device), lengths, output_size=int(total)
    )
    return seq_index, num_seqs
