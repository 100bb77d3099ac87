r"""Triton kernels: per-token log-probabilities of target tokens and their logit gradient.

Forward (:func:`_logprob_fwd_kernel`), one program per row ``t`` of the ``(N, V)`` logits:

.. math::

    \mathrm{lse}_t = \log \sum_v e^{z_{t,v}}, \qquad
    \ell_t = z_{t, y_t} - \mathrm{lse}_t, \qquad
    \log\pi(y_s) = \sum_{t:\, s(t) = s,\ y_t \neq \mathrm{ignore}} \ell_t .

The log-sum-exp is computed online over blocks of ``BLOCK_V`` columns in fp32, in base 2
(``exp2`` of logits pre-multiplied by :math:`\log_2 e`), so the row is read once. The target
logit is loaded by index. Masked rows (``y_t == ignore_index``) read nothing and write
:math:`\ell_t = 0`, :math:`\mathrm{lse}_t = 0`. The per-sequence sums are accumulated with fp32
atomics into a zeroed ``(S,)`` buffer (the order of the additions, hence the last bits, is not
deterministic on a GPU).

Backward (:func:`_logprob_bwd_kernel`), one program per row, from the saved LSE:

.. math::

    \frac{\partial L}{\partial z_{t,v}} = g_t \left(\mathbb{1}[v = y_t]
        - e^{z_{t,v} - \mathrm{lse}_t}\right), \qquad
    g_t = \mathbb{1}[y_t \neq \mathrm{ignore}]
        \left(\bar g_{s(t)} + \bar\ell_t\right),

where :math:`\bar g` is the incoming gradient of the per-sequence sums and
:math:`\bar\ell` the optional incoming gradient of the per-token outputs. A row with
:math:`g_t = 0` (masked, or all of its sequence's weight clipped) writes zeros without reading
the logits. The gradient may be written over the logits buffer itself (``DX_ptr == X_ptr``):
each element is read before it is written by the same program.

Traffic: forward = one read of the logits; backward = one read + one write.

The launchers (:func:`logprob_fwd`, :func:`logprob_bwd`) take torch tensors and perform no
validation: :mod:`pope.ops` validates. Every loaded value is cast to fp32 before any
arithmetic (the interpreter computes garbage on bf16 arithmetic, and fp32 is wanted anyway).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["LOG2_E", "MAX_BLOCK_V", "logprob_bwd", "logprob_fwd"]

#: :math:`\log_2 e`: ``exp(x) == exp2(x * LOG2_E)``. Module globals read inside ``@triton.jit``
#: code must be ``tl.constexpr`` objects: the GPU compiler rejects plain floats (the
#: interpreter does not, so only the ahead-of-time compile test catches this).
LOG2_E = tl.constexpr(1.4426950408889634)
#: :math:`\ln 2`: ``log(x) == log2(x) * LN_2``.
LN_2 = tl.constexpr(0.6931471805599453)
#: Contract ``a * b + c`` into FMAs (the online LSE is one FMA + ``exp2`` per logit). Passed
#: explicitly: Triton 3.9 warns when it is left to the default, which 3.10 turns off.
FP_FUSION = True
#: Largest column block. 8192 fp32 values over 8 warps are 32 registers per thread; larger
#: blocks only add register pressure once the row is streamed (not tuned on a GPU here).
MAX_BLOCK_V = 8192


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate an uninitialised output buffer (a hook: tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch_config(n_cols: int, block_v: int | None, num_warps: int | None) -> tuple[int, int]:
    """``(BLOCK_V, num_warps)`` for a row of ``n_cols`` columns, unless given explicitly."""
    if block_v is None:
        block_v = min(MAX_BLOCK_V, triton.next_power_of_2(max(n_cols, 1)))
    if num_warps is None:
        num_warps = 8 if block_v >= 4096 else (4 if block_v >= 1024 else 2)
    return block_v, num_warps


@triton.jit
def _logprob_fwd_kernel(
    X_ptr,
    X_stride,
    Y_ptr,
    SEQ_ptr,
    LSE_ptr,
    TOK_ptr,
    SEQSUM_ptr,
    CNT_ptr,
    n_cols,
    ignore_index,
    HAS_CNT: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One row: online LSE, target gather, masked atomic per-sequence sum.

    Parameters
    ----------
    X_ptr : logits, row ``t`` starts at ``X_ptr + t * X_stride``; unit column stride.
    Y_ptr : (N,) int32/int64 targets. SEQ_ptr : (N,) int32/int64 sequence ids.
    LSE_ptr, TOK_ptr : (N,) fp32 outputs (0 on masked rows).
    SEQSUM_ptr : (S,) fp32, zeroed, accumulated atomically.
    CNT_ptr : (S,) fp32, zeroed, number of unmasked tokens (only if ``HAS_CNT``).
    """
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(Y_ptr + row).to(tl.int64)
    if y != ignore_index:
        x_row = X_ptr + row * X_stride
        cols = tl.arange(0, BLOCK_V)
        m = float("-inf")  # running max of the logits
        d = 0.0  # running sum of exp(x - m), as exp2(x * log2e - m * log2e): one FMA + exp2
        for start in range(0, n_cols, BLOCK_V):
            offs = start + cols
            x = tl.load(x_row + offs, mask=offs < n_cols, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            # A block (or row prefix) of -inf logits keeps m_new == -inf: shift by 0 instead,
            # so exp2(-inf - -inf) never produces NaN.
            m2 = tl.where(m_new == float("-inf"), 0.0, m_new) * LOG2_E
            d = d * tl.exp2(m * LOG2_E - m2) + tl.sum(tl.exp2(x * LOG2_E - m2), axis=0)
            m = m_new
        # max + log(sum): exact for a single dominant logit (and logp == 0 when V == 1)
        lse = m + tl.log2(d) * LN_2
        x_y = tl.load(x_row + y).to(tl.float32)
        logp = x_y - lse
        tl.store(LSE_ptr + row, lse)
        tl.store(TOK_ptr + row, logp)
        s = tl.load(SEQ_ptr + row).to(tl.int64)
        tl.atomic_add(SEQSUM_ptr + s, logp, sem="relaxed")
        if HAS_CNT:
            tl.atomic_add(CNT_ptr + s, 1.0, sem="relaxed")
    else:
        tl.store(LSE_ptr + row, 0.0)
        tl.store(TOK_ptr + row, 0.0)


@triton.jit
def _logprob_bwd_kernel(
    X_ptr,
    X_stride,
    DX_ptr,
    DX_stride,
    Y_ptr,
    SEQ_ptr,
    LSE_ptr,
    GSEQ_ptr,
    GTOK_ptr,
    n_cols,
    ignore_index,
    HAS_GSEQ: tl.constexpr,
    HAS_GTOK: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One row: ``dx = g_t * (onehot(y_t) - exp(x - lse_t))`` in one sweep.

    Parameters
    ----------
    X_ptr : logits (read); DX_ptr : gradient (written, same dtype; may equal ``X_ptr``).
    LSE_ptr : (N,) fp32 saved by the forward.
    GSEQ_ptr : (S,) fp32 gradient of the sequence sums (only if ``HAS_GSEQ``).
    GTOK_ptr : (N,) fp32 gradient of the per-token log-probs (only if ``HAS_GTOK``).
    """
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(Y_ptr + row).to(tl.int64)
    g = 0.0
    if HAS_GSEQ:
        s = tl.load(SEQ_ptr + row).to(tl.int64)
        g += tl.load(GSEQ_ptr + s).to(tl.float32)
    if HAS_GTOK:
        g += tl.load(GTOK_ptr + row).to(tl.float32)
    g = tl.where(y != ignore_index, g, 0.0)
    x_row = X_ptr + row * X_stride
    dx_row = DX_ptr + row * DX_stride
    cols = tl.arange(0, BLOCK_V)
    if g != 0.0:
        lse2 = tl.load(LSE_ptr + row).to(tl.float32) * LOG2_E
        for start in range(0, n_cols, BLOCK_V):
            offs = start + cols
            valid = offs < n_cols
            x = tl.load(x_row + offs, mask=valid, other=0.0).to(tl.float32)
            p = tl.exp2(x * LOG2_E - lse2)
            dx = tl.where(offs == y, g - g * p, -g * p)
            tl.store(dx_row + offs, dx.to(DX_ptr.dtype.element_ty), mask=valid)
    else:
        zero = tl.zeros([BLOCK_V], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK_V):
            offs = start + cols
            tl.store(dx_row + offs, zero.to(DX_ptr.dtype.element_ty), mask=offs < n_cols)


def logprob_fwd(
    logits: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    ignore_index: int = -100,
    *,
    count_tokens: bool = False,
    out_seq: torch.Tensor | None = None,
    out_tok: torch.Tensor | None = None,
    out_lse: torch.Tensor | None = None,
    block_v: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch :func:`_logprob_fwd_kernel`.

    Parameters
    ----------
    logits : (N, V) fp32/bf16/fp16, ``stride(1) == 1``, any ``stride(0)``.
    targets, seq_index : (N,) int32/int64 (validated by the caller).
    num_seqs : S.
    ignore_index : target value that masks a token.
    count_tokens : also return the (S,) fp32 count of unmasked tokens per sequence.
    out_seq : optional (S,) fp32 buffer to accumulate into (it is *not* zeroed: chunked
        callers pass the same buffer for every chunk); default a fresh zeroed buffer.
    out_tok, out_lse : optional contiguous (N,) fp32 buffers for the per-token outputs.
    block_v, num_warps : launch overrides (benchmarks); defaults from the row length.

    Returns
    -------
    seq_logp : (S,) fp32, tok_logp : (N,) fp32, lse : (N,) fp32, counts : (S,) fp32 or None.
    """
    n_rows, n_cols = logits.shape
    device = logits.device
    if out_seq is None:
        out_seq = torch.zeros(num_seqs, dtype=torch.float32, device=device)
    seq_logp = out_seq
    counts = torch.zeros(num_seqs, dtype=torch.float32, device=device) if count_tokens else None
    tok_logp = _empty((n_rows,), torch.float32, device) if out_tok is None else out_tok
    lse = _empty((n_rows,), torch.float32, device) if out_lse is None else out_lse
    if n_rows == 0:
        return seq_logp, tok_logp, lse, counts
    block, warps = _launch_config(n_cols, block_v, num_warps)
    _logprob_fwd_kernel[(n_rows,)](
        logits,
        logits.stride(0),
        targets,
        seq_index,
        lse,
        tok_logp,
        seq_logp,
        counts if counts is not None else seq_logp,
        n_cols,
        ignore_index,
        HAS_CNT=count_tokens,
        BLOCK_V=block,
        num_warps=warps,
        enable_fp_fusion=FP_FUSION,
    )
    return seq_logp, tok_logp, lse, counts


def logprob_bwd(
    logits: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    lse: torch.Tensor,
    grad_seq: torch.Tensor | None,
    grad_tok: torch.Tensor | None,
    ignore_index: int = -100,
    *,
    inplace: bool = False,
    block_v: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Launch :func:`_logprob_bwd_kernel`; returns ``grad_logits`` (same dtype as ``logits``).

    Parameters
    ----------
    logits : (N, V) the forward's logits (unchanged since the forward).
    lse : (N,) fp32 from :func:`logprob_fwd`.
    grad_seq : (S,) fp32 or None; grad_tok : (N,) fp32 or None (None: zero).
    inplace : write the gradient over ``logits`` and return it (the logits are destroyed).
    """
    n_rows, n_cols = logits.shape
    if inplace:
        grad = logits
    else:
        grad = _empty((n_rows, n_cols), logits.dtype, logits.device)
    if n_rows == 0:
        return grad
    block, warps = _launch_config(n_cols, block_v, num_warps)
    dummy = lse  # any fp32 pointer for a disabled operand
    _logprob_bwd_kernel[(n_rows,)](
        logits,
        logits.stride(0),
        grad,
        grad.stride(0),
        targets,
        seq_index,
        lse,
        grad_seq if grad_seq is not None else dummy,
        grad_tok if grad_tok is not None else dummy,
        n_cols,
        ignore_index,
        HAS_GSEQ=grad_seq is not None,
        HAS_GTOK=grad_tok is not None,
        BLOCK_V=block,
        num_warps=warps,
        enable_fp_fusion=FP_FUSION,
    )
    return grad
