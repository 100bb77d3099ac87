r"""Triton kernel: per-sequence importance weights, ratio control and the POPE loss terms.

Runs after :func:`pope.kernels.logprob.logprob_fwd` has reduced the logits to per-sequence
log-probabilities :math:`\log\pi_\theta(y_s)` (the weight of a sequence needs the sum over all
of its tokens, i.e. a grid-wide reduction, so this is a second, ``(S,)``-sized launch; it never
touches the logits). For each sequence ``s`` (:func:`_pope_weight_kernel`):

.. math::

    r_s = \frac{\log\pi_\theta(y_s) - \log\pi_0(y_s)}{T_s^{\,\kappa}}, \qquad
    w_s = e^{r_s},

with :math:`\kappa = 0` for ``weighting="sequence"`` and :math:`\kappa = 1`,
:math:`T_s = \max(1, \#\text{unmasked tokens})` for ``"token_mean"``. Ratio control
(``MODE``):

* ``0`` none: :math:`f_s = w_s A_s`;
* ``1`` truncation at :math:`M`: :math:`f_s = \min(w_s, M) A_s`, clipped iff
  :math:`r_s > \log M`;
* ``2`` PPO: :math:`f_s = \min(w_s A_s,\ \mathrm{clip}(w_s, 1-\epsilon, 1+\epsilon) A_s)`,
  clipped iff :math:`(A_s > 0 \wedge r_s > \log(1+\epsilon)) \vee
  (A_s < 0 \wedge r_s < \log(1-\epsilon))`, where the pessimistic minimum takes the constant
  bound.

A sequence with :math:`A_s = 0` contributes :math:`f_s = 0` and no gradient (even when
:math:`w_s` overflows). Outputs per sequence: the loss term :math:`-f_s / Z`, the raw weight
:math:`w_s`, the clipped flag and the gradient coefficient

.. math::

    c_s = \frac{\partial(-f_s/Z)}{\partial \log\pi_\theta(y_s)}
        = -\mathbb{1}[\text{not clipped}]\ \frac{w_s A_s}{Z\, T_s^{\,\kappa}},

which the backward scales by the incoming gradient of the loss and broadcasts to the tokens
of the sequence (:func:`pope.kernels.logprob.logprob_bwd`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .logprob import FP_FUSION

__all__ = ["MODE_NONE", "MODE_PPO", "MODE_TRUNCATE", "pope_weights"]

MODE_NONE = 0
MODE_TRUNCATE = 1
MODE_PPO = 2
#: Sequences per program. The kernel is latency-bound on a few KB; one block covers most
#: batches in a single program.
BLOCK_S = 1024


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate an uninitialised output buffer (a hook: tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _pope_weight_kernel(
    LOGP_ptr,
    LOGQ_ptr,
    ADV_ptr,
    CNT_ptr,
    W_ptr,
    CLIPPED_ptr,
    LOSS_ptr,
    GCOEF_ptr,
    n_seqs,
    inv_norm,
    log_bound_hi,
    log_bound_lo,
    bound_hi,
    bound_lo,
    MODE: tl.constexpr,
    TOKEN_MEAN: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Per-sequence weights, ratio control, loss terms and gradient coefficients.

    Parameters
    ----------
    LOGP_ptr : (S,) fp32 policy log-probs. LOGQ_ptr : (S,) logging log-probs.
    ADV_ptr : (S,) advantages. CNT_ptr : (S,) fp32 unmasked token counts (``TOKEN_MEAN``).
    W_ptr : (S,) fp32 raw weights. CLIPPED_ptr : (S,) uint8. LOSS_ptr : (S,) fp32 ``-f/Z``.
    GCOEF_ptr : (S,) fp32 ``d(-f/Z)/d logp``.
    inv_norm : 1/Z. log_bound_hi/lo, bound_hi/lo : clip bounds (``MODE`` 1: hi = M;
        ``MODE`` 2: hi = 1+eps, lo = 1-eps), in log space and linear space.
    """
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK_S + tl.arange(0, BLOCK_S)
    valid = offs < n_seqs
    logp = tl.load(LOGP_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    logq = tl.load(LOGQ_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    adv = tl.load(ADV_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    r = logp - logq
    if TOKEN_MEAN:
        cnt = tl.load(CNT_ptr + offs, mask=valid, other=1.0).to(tl.float32)
        denom = tl.maximum(cnt, 1.0)
        r = r / denom
    else:
        denom = tl.full([BLOCK_S], 1.0, tl.float32)
    w = tl.exp(r)
    if MODE == 1:
        clipped = r > log_bound_hi
        w_eff = tl.where(clipped, bound_hi, w)
    elif MODE == 2:
        clip_hi = (adv > 0.0) & (r > log_bound_hi)
        clip_lo = (adv < 0.0) & (r < log_bound_lo)
        clipped = clip_hi | clip_lo
        w_eff = tl.where(clip_hi, bound_hi, tl.where(clip_lo, bound_lo, w))
    else:
        clipped = r != r  # all False (r is never NaN: inputs are validated finite)
        w_eff = w
    live = adv != 0.0
    f = tl.where(live, w_eff * adv, 0.0)
    gcoef = tl.where(live, -(w * adv) * inv_norm / denom, 0.0)
    gcoef = tl.where(clipped, 0.0, gcoef)
    tl.store(W_ptr + offs, w, mask=valid)
    tl.store(CLIPPED_ptr + offs, clipped.to(tl.uint8), mask=valid)
    tl.store(LOSS_ptr + offs, -f * inv_norm, mask=valid)
    tl.store(GCOEF_ptr + offs, gcoef, mask=valid)


def pope_weights(
    seq_logp: torch.Tensor,
    log_logging: torch.Tensor,
    advantages: torch.Tensor,
    counts: torch.Tensor | None,
    normalizer: float,
    *,
    clip: float | None = None,
    ppo_eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch :func:`_pope_weight_kernel` over the ``S`` sequences.

    Parameters
    ----------
    seq_logp : (S,) fp32 :math:`\\log\\pi_\\theta(y_s)`.
    log_logging, advantages : (S,) float (fp32 recommended), finite.
    counts : (S,) fp32 unmasked token counts for ``token_mean``; None for ``sequence``.
    normalizer : Z > 0.
    clip : truncation level M > 0, or None. ppo_eps : PPO epsilon in (0, 1), or None
        (at most one of the two).

    Returns
    -------
    loss_terms : (S,) fp32 ``-f_s/Z`` (sum them for the loss), weights : (S,) fp32 raw
    :math:`w_s`, clipped : (S,) bool, grad_coef : (S,) fp32 :math:`c_s`.
    """
    n = seq_logp.shape[0]
    device = seq_logp.device
    weights = _empty((n,), torch.float32, device)
    clipped = _empty((n,), torch.uint8, device)
    loss_terms = _empty((n,), torch.float32, device)
    gcoef = _empty((n,), torch.float32, device)
    if n == 0:
        return loss_terms, weights, clipped.view(torch.bool), gcoef
    if clip is not None and ppo_eps is not None:
        raise ValueError("clip and ppo_eps are mutually exclusive")
    if clip is not None:
        mode, hi, lo = MODE_TRUNCATE, float(clip), 1.0
    elif ppo_eps is not None:
        mode, hi, lo = MODE_PPO, 1.0 + float(ppo_eps), 1.0 - float(ppo_eps)
    else:
        mode, hi, lo = MODE_NONE, 1.0, 1.0
    grid = (triton.cdiv(n, BLOCK_S),)
    _pope_weight_kernel[grid](
        seq_logp,
        log_logging,
        advantages,
        counts if counts is not None else seq_logp,
        weights,
        clipped,
        loss_terms,
        gcoef,
        n,
        1.0 / float(normalizer),
        math.log(hi),
        math.log(lo),
        hi,
        lo,
        MODE=mode,
        TOKEN_MEAN=counts is not None,
        BLOCK_S=BLOCK_S,
        num_warps=4,
        enable_fp_fusion=FP_FUSION,
    )
    return loss_terms, weights, clipped.view(torch.bool), gcoef
