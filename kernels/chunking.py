"""Rows per chunk of the chunked hidden-state log-prob (plain Python, no Triton import).

Shared by the launchers of :mod:`pope.kernels.linear_logprob` and the torch reference path of
:func:`pope.ops.linear_sequence_logprob`, so both backends cut the batch the same way. Importing
this module does not import ``triton`` and does not decorate any kernel.
"""

from __future__ import annotations

__all__ = ["default_chunk_size"]


def default_chunk_size(n_rows: int, hidden_size: int, vocab_size: int) -> int:
    """Rows per chunk so that a ``(C, V)`` logits chunk is about as large as ``(N, H)``.

    :math:`C = 2^{\\lceil \\log_2 \\lceil N / \\lceil V/H \\rceil \\rceil \\rceil}`, clipped to
    ``[1, N]``: the transient chunk then costs roughly one more copy of the hidden states.
    """
    ratio = max(1, -(-vocab_size // max(hidden_size, 1)))
    rows = max(1, -(-n_rows // ratio))
    chunk = 1 << (rows - 1).bit_length()  # next power of two >= rows
    return max(1, min(chunk, n_rows))
