r"""The fused POPE off-policy loss on ``(N, V)`` logits (:func:`pope_loss`).

The three pieces of the op, side by side:

* kernels: :func:`pope.kernels.logprob.logprob_fwd` (sequence log-probs and the LSE), then
  :func:`pope.kernels.pope_loss.pope_weights` (weights, ratio control, per-sequence gradient
  coefficients); the backward is the log-prob sweep :func:`pope.ops.logprob.logits_backward`;
* autograd: :class:`_PopeLossFunction`;
* reference: :func:`pope.ops.reference.pope_loss`.

:func:`pope_loss` raises :class:`pope.WeightOverflowError` (an ``OverflowError``) instead of
returning an infinite loss when an unclipped weight :math:`\exp(\log\pi_\theta -
\log\pi_0)` of a sequence with :math:`A_s \ne 0` overflows fp32. That can only happen if some
``-log_logging`` exceeds :math:`\log(\mathrm{FLT\_MAX}) \approx 88.7` (because
:math:`\log\pi_\theta \le 0`); only then does the op synchronise a second time, after the
forward, to look at the loss.
"""

from __future__ import annotations

import math
import numbers

import torch

from pope.estimate import WeightOverflowError
from pope.ops import reference
from pope.ops.dispatch import kernel_modules, resolve_op_backend
from pope.ops.logprob import logits_backward, prepare_logits_for_triton
from pope.ops.reference import PopeLossOutput
from pope.ops.validation import LOGPROB_TOL, check_common, check_seq_vector, check_values
from pope.options import WEIGHTINGS

__all__ = ["PopeLossOutput", "pope_loss"]

#: log of the largest fp32: a weight exp(r) with r above it is inf.
_LOG_FLT_MAX = math.log(torch.finfo(torch.float32).max)


class _PopeLossFunction(torch.autograd.Function):
    """Triton forward/backward of :func:`pope_loss`."""

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        seq_index: torch.Tensor,
        num_seqs: int,
        log_logging: torch.Tensor,
        advantages: torch.Tensor,
        ignore_index: int,
        token_mean: bool,
        clip: float | None,
        ppo_eps: float | None,
        normalizer: float,
        inplace_backward: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logprob, pope_k, _ = kernel_modules()
        seq, _, lse, counts = logprob.logprob_fwd(
            logits, targets, seq_index, num_seqs, ignore_index, count_tokens=token_mean
        )
        terms, weights, clipped, gcoef = pope_k.pope_weights(
            seq, log_logging, advantages, counts, normalizer, clip=clip, ppo_eps=ppo_eps
        )
        loss = terms.sum()
        ctx.save_for_backward(logits, targets, seq_index, lse, gcoef)
        ctx.ignore_index = ignore_index
        ctx.inplace_backward = inplace_backward
        ctx.mark_non_differentiable(seq, weights, clipped)
        ctx.set_materialize_grads(False)
        return loss, seq, weights, clipped

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor | None, *_unused: object):
        nones = (None,) * 11
        if grad_loss is None:
            return (None, *nones)
        gcoef = ctx.saved_tensors[4]
        grad_seq = (gcoef * grad_loss.float()).contiguous()
        return (logits_backward(ctx, grad_seq, None), *nones)


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
    inplace_backward: bool = False,
    backend: str | None = None,
) -> PopeLossOutput:
    r"""The POPE off-policy objective, fused with the sequence log-prob reduction.

    .. math::

        L = -\frac{1}{Z} \sum_{s=1}^{S} f(w_s)\, A_s, \qquad
        w_s = \exp\!\left(\frac{\log\pi_\theta(y_s) - \log\pi_0(y_s)}{T_s^{\kappa}}\right),

    with :math:`\log\pi_\theta(y_s)` as in :func:`sequence_logprob`, :math:`\kappa = 0` for
    ``weighting="sequence"`` (the exact ratio) and :math:`\kappa = 1` for ``"token_mean"``
    (:math:`T_s` = number of unmasked tokens of ``s``, at least 1; then ``log_logging`` must
    hold the sum of the logging per-token log-probs over the same tokens). Ratio control
    :math:`f`:

    * none: :math:`f(w)A = wA`;
    * ``clip=M`` (truncation): :math:`f(w)A = \min(w, M)A`, zero gradient where
      :math:`w > M`;
    * ``ppo_eps=eps`` (pessimistic PPO clip):
      :math:`\min(wA,\ \mathrm{clip}(w, 1-\epsilon, 1+\epsilon)A)`, zero gradient where the
      clipped branch is the minimum (:math:`A>0, w>1+\epsilon` or :math:`A<0, w<1-\epsilon`).

    Sequences with :math:`A_s = 0` contribute nothing (even if :math:`w_s` overflows). The
    gradient w.r.t. the logits is :math:`g_{s(t)}(\mathrm{onehot}(y_t) -
    \mathrm{softmax}(z_t))` with one scalar per sequence
    :math:`g_s = -\mathbb{1}[\text{not clipped}]\, w_s A_s / (Z\, T_s^{\kappa})`; no gradient
    flows to ``log_logging`` or ``advantages`` (they are treated as data).

    Parameters
    ----------
    logits, targets, seq_index, num_seqs, ignore_index
        As in :func:`sequence_logprob`.
    log_logging : (S,) float tensor
        :math:`\log\pi_0(y_s)` of the logging policy; must be finite and ``<= 1e-6``
        (a log-probability; the tolerance absorbs rounding). Use log space: a long response
        has probability far below the fp32 range.
    advantages : (S,) float tensor
        :math:`A_s = R_s - b_s`; must be finite.
    weighting : {"sequence", "token_mean"}
    clip : float > 0, optional
        Truncation level :math:`M`. Mutually exclusive with ``ppo_eps``.
    ppo_eps : float in (0, 1), optional
    normalizer : float > 0, optional
        :math:`Z`; default ``num_seqs``.
    inplace_backward : bool, default False
        Triton path only: the backward writes the gradient over ``logits``, which is then
        **consumed** (see :func:`sequence_logprob`); the only ``N x V`` buffer is then the
        logits themselves.
    backend : {None, "auto", "triton", "torch"}

    Returns
    -------
    PopeLossOutput
        ``(loss, logp, weights, clipped)``: the scalar fp32 loss (differentiable w.r.t.
        ``logits``); detached (S,) fp32 :math:`\log\pi_\theta(y_s)`, raw weights
        :math:`w_s` (before clipping, ``inf`` on overflow) and the (S,) bool clipped mask.

    Raises
    ------
    TypeError, ValueError
        As :func:`sequence_logprob`; ``log_logging`` / ``advantages`` not finite, or
        ``log_logging > 1e-6``.
    pope.WeightOverflowError
        The loss is not finite: an unclipped weight of a sequence with :math:`A_s \ne 0`
        overflows fp32 (:math:`\log\pi_\theta - \log\pi_0 > 88.7`, e.g. ``log_logging =
        -1e4`` without ``clip``), or :math:`\sum f(w_s) A_s` does. With ``clip=M`` the
        weights are bounded by ``M`` and this cannot happen.
    """
    logits, targets, seq_index, num_seqs, ignore_index = check_common(
        logits, targets, seq_index, num_seqs, ignore_index
    )
    device = logits.device
    log_logging = check_seq_vector("log_logging", log_logging, num_seqs, device)
    advantages = check_seq_vector("advantages", advantages, num_seqs, device)
    clip, ppo_eps, normalizer = _check_controls(weighting, clip, ppo_eps, normalizer, num_seqs)
    ll_bad = (log_logging.detach() > LOGPROB_TOL).any()
    # w_s <= exp(-log_logging_s) because log pi_theta <= 0: overflow is possible only here
    may_overflow = (clip is None) and (
        (advantages.detach() != 0) & (-log_logging.detach().float() > _LOG_FLT_MAX)
    ).any()
    check_loss = check_values(
        targets,
        seq_index,
        num_seqs,
        logits.shape[1],
        ignore_index,
        finite={"log_logging": log_logging, "advantages": advantages},
        logits=logits,
        extra=[(ll_bad, f"log_logging must be <= 0 (log-probabilities; up to {LOGPROB_TOL:g} "
                        "is accepted as rounding)")],
        info=may_overflow if isinstance(may_overflow, torch.Tensor) else None,
    )  # fmt: skip
    out = _pope_loss_dispatch(
        logits, targets, seq_index, num_seqs, log_logging, advantages, ignore_index=ignore_index,
        weighting=weighting, clip=clip, ppo_eps=ppo_eps, normalizer=normalizer,
        inplace_backward=inplace_backward, backend=backend,
    )  # fmt: skip
    if check_loss and not bool(torch.isfinite(out.loss.detach())):
        _raise_overflow(out, log_logging, advantages)
    return out


def _check_controls(
    weighting: str,
    clip: float | None,
    ppo_eps: float | None,
    normalizer: float | None,
    num_seqs: int,
) -> tuple[float | None, float | None, float]:
    """Validated ``(clip, ppo_eps, normalizer)`` of :func:`pope_loss` (``normalizer`` default S)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if clip is not None and ppo_eps is not None:
        raise ValueError("clip and ppo_eps are mutually exclusive (pass at most one)")
    if clip is not None:
        if not isinstance(clip, numbers.Real) or isinstance(clip, bool):
            raise TypeError(f"clip must be a float or None, got {type(clip).__name__}")
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip must be a finite number > 0, got {clip}")
        clip = float(clip)
    if ppo_eps is not None:
        if not isinstance(ppo_eps, numbers.Real) or isinstance(ppo_eps, bool):
            raise TypeError(f"ppo_eps must be a float or None, got {type(ppo_eps).__name__}")
        if not (0.0 < ppo_eps < 1.0):
            raise ValueError(f"ppo_eps must lie in (0, 1), got {ppo_eps}")
        ppo_eps = float(ppo_eps)
    if normalizer is None:
        normalizer = float(num_seqs)
    else:
        if not isinstance(normalizer, numbers.Real) or isinstance(normalizer, bool):
            raise TypeError(f"normalizer must be a float or None, got {type(normalizer).__name__}")
        if not (math.isfinite(normalizer) and normalizer > 0):
            raise ValueError(f"normalizer must be a finite number > 0, got {normalizer}")
        normalizer = float(normalizer)
    return clip, ppo_eps, normalizer


def _raise_overflow(
    out: PopeLossOutput, log_logging: torch.Tensor, advantages: torch.Tensor
) -> None:
    """Raise :class:`WeightOverflowError` naming the first sequence whose term overflows."""
    live = (advantages.detach() != 0) & ~out.clipped
    over = live & ~torch.isfinite(out.weights * advantages.detach().float())
    idx = int(torch.nonzero(over)[0, 0]) if bool(over.any()) else None
    where = (
        f"sequence {idx}: logp = {float(out.logp[idx]):.4g}, "
        f"log_logging = {float(log_logging[idx]):.4g}"
        if idx is not None
        else "the sum of the weighted advantages"
    )
    raise WeightOverflowError(
        f"pope_loss: the importance-weighted loss overflows float32 at {where} (a weight "
        f"exp(logp - log_logging) beyond exp({_LOG_FLT_MAX:.1f})). Pass clip=M to truncate "
        "the weights, or check log_logging (it must be the log-probability of the logged "
        "response under the logging policy)."
    )


def _pope_loss_dispatch(
    logits: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    log_logging: torch.Tensor,
    advantages: torch.Tensor,
    *,
    ignore_index: int,
    weighting: str,
    clip: float | None,
    ppo_eps: float | None,
    normalizer: float,
    inplace_backward: bool,
    backend: str | None,
) -> PopeLossOutput:
    """Run the validated :func:`pope_loss` on the resolved backend."""
    device = logits.device
    if resolve_op_backend(backend, device) == "torch":
        return reference.pope_loss(
            logits,
            targets,
            seq_index,
            num_seqs,
            log_logging,
            advantages,
            ignore_index=ignore_index,
            weighting=weighting,
            clip=clip,
            ppo_eps=ppo_eps,
            normalizer=normalizer,
        )
    x = prepare_logits_for_triton(logits, bool(inplace_backward))
    loss, seq, weights, clipped = _PopeLossFunction.apply(
        x,
        targets.contiguous(),
        seq_index.contiguous(),
        num_seqs,
        log_logging.detach().float().contiguous(),
        advantages.detach().float().contiguous(),
        ignore_index,
        weighting == "token_mean",
        clip,
        ppo_eps,
        normalizer,
        bool(inplace_backward),
    )
    return PopeLossOutput(loss, seq, weights, clipped)
