r"""Differentiable log-prob and POPE-loss ops on LM logits (torch).

Three public ops, and one helper for packed batches:

* :func:`sequence_logprob`: per-sequence sums of target-token log-probs from ``(N, V)``
  logits (packed, ragged sequences: a per-token ``seq_index``);
* :func:`pope_loss`: the off-policy POPE objective (importance weight, ratio control,
  advantage) fused with the log-prob reduction;
* :func:`linear_sequence_logprob`: :func:`sequence_logprob` from hidden states and the LM
  head weight, chunked so the ``(N, V)`` logits never exist at once;
* :func:`seq_index_from_cu_seqlens`: the per-token ``seq_index`` of a packed (varlen) batch
  from its cumulative sequence lengths, the layout of flash-attention's varlen kernels.

Backend dispatch (per call)
---------------------------
* ``backend=None`` (default): the ``POPE_BACKEND`` environment variable if it is ``"triton"``
  or ``"torch"``; otherwise automatic. (The CPU-routine names ``"cpp"``, ``"numba"``,
  ``"reference"`` and ``"auto"`` in ``POPE_BACKEND`` mean automatic here.)
* automatic: CUDA tensors and an importable ``triton`` give the Triton kernels of
  :mod:`pope.kernels`; anything else gives the torch reference :mod:`pope.ops_reference`.
* ``"triton"`` explicitly: the kernels, on CUDA tensors, or on CPU tensors through the Triton
  interpreter, which must have been selected (``TRITON_INTERPRET=1``) before
  :mod:`pope.kernels` was first imported; otherwise ``RuntimeError``.
* ``"torch"``: the reference, on any device.

An explicitly requested backend that cannot run raises; the automatic choice never does.
All inputs are validated (``TypeError`` / ``ValueError`` naming the argument) before
dispatch; the value checks (index ranges, finiteness) cost one device synchronisation.

Non-finite values (the rule, the same for every op)
---------------------------------------------------
* ``logits``: NaN and ``+inf`` are rejected anywhere (masked rows included: the torch
  reference would spread a NaN of a masked row into its gradient). ``-inf`` is allowed, as a
  vocabulary mask, except at the target of an unmasked token (its log-prob would be
  ``-inf``). Checked with one ``amax`` reduction (no ``N x V`` temporary) and a gather of the
  ``N`` target logits.
* ``hidden`` / ``weight`` of :func:`linear_sequence_logprob`: finite (one ``aminmax`` each).
* ``log_logging``, ``advantages``: finite; ``log_logging <= 1e-6`` (log-probabilities are
  ``<= 0``; the ``1e-6`` absorbs rounding of a sum of per-token log-probs near 0).
* :func:`pope_loss` raises :class:`pope.WeightOverflowError` (an ``OverflowError``) instead
  of returning an infinite loss when an unclipped weight :math:`\exp(\log\pi_\theta -
  \log\pi_0)` of a sequence with :math:`A_s \ne 0` overflows fp32. That can only happen if
  some ``-log_logging`` exceeds :math:`\log(\mathrm{FLT\_MAX}) \approx 88.7` (because
  :math:`\log\pi_\theta \le 0`); only then does the op synchronise a second time, after the
  forward, to look at the loss.
"""

from __future__ import annotations

import math
import numbers
import os
from types import ModuleType
from typing import Any

import torch

from pope import ops_reference
from pope.estimate import WeightOverflowError
from pope.ops_reference import PopeLossOutput

__all__ = [
    "OP_BACKENDS",
    "PopeLossOutput",
    "linear_sequence_logprob",
    "pope_loss",
    "resolve_op_backend",
    "seq_index_from_cu_seqlens",
    "sequence_logprob",
]

#: Backends of the torch ops.
OP_BACKENDS = ("triton", "torch")
#: ``POPE_BACKEND`` values that steer the CPU routines (:mod:`pope.backends`) and mean
#: "automatic" for these ops.
_AUTO_ENV = frozenset({"", "auto", "cpp", "numba", "reference"})
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INDEX_DTYPES = (torch.int32, torch.int64)
_WEIGHTINGS = ("sequence", "token_mean")
#: log of the largest fp32: a weight exp(r) with r above it is inf.
_LOG_FLT_MAX = math.log(torch.finfo(torch.float32).max)
#: log-probabilities above this are rejected (0 plus rounding of a sum of per-token values).
LOGPROB_TOL = 1e-6

_triton_state: dict[str, object] = {}


# ----------------------------------------------------------------------------- dispatch


def _triton_import_error() -> BaseException | None:
    """None if ``triton`` imports, else the import error (cached)."""
    if "err" not in _triton_state:
        try:
            import triton  # noqa: F401

            _triton_state["err"] = None
        except ImportError as exc:  # pragma: no cover - triton is installed in CI
            _triton_state["err"] = exc
    err = _triton_state["err"]
    return err if isinstance(err, BaseException) else None


def _kernels() -> tuple[ModuleType, ModuleType, ModuleType]:
    """The kernel modules (imported lazily: the interpreter choice happens at import)."""
    from pope.kernels import linear_logprob, logprob, pope_loss

    return logprob, pope_loss, linear_logprob


def _requested_backend(backend: str | None) -> str | None:
    """The explicitly requested backend, or None for automatic."""
    if backend is None:
        env = os.environ.get("POPE_BACKEND", "")
        if env in OP_BACKENDS:
            return env
        if env in _AUTO_ENV:
            return None
        raise ValueError(
            f"POPE_BACKEND must be one of {OP_BACKENDS} (or a CPU backend name, meaning "
            f"automatic for the torch ops), got {env!r}"
        )
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
    if backend == "auto":
        return None
    if backend not in OP_BACKENDS:
        raise ValueError(f"backend must be one of {OP_BACKENDS}, 'auto' or None, got {backend!r}")
    return backend


def resolve_op_backend(backend: str | None, device: torch.device | str) -> str:
    """Name of the backend (``"triton"`` or ``"torch"``) an op would use on ``device``.

    Parameters
    ----------
    backend : ``None`` (``POPE_BACKEND``, then automatic), ``"auto"``, ``"triton"`` or
        ``"torch"``.
    device : device of the op's tensors.

    Raises
    ------
    RuntimeError
        ``"triton"`` was requested explicitly and cannot run: triton does not import, the
        device is neither CUDA nor CPU, or the device is CPU and the Triton interpreter was
        not selected (``TRITON_INTERPRET=1`` before the kernels were imported).
    """
    device = torch.device(device)
    requested = _requested_backend(backend)
    if requested is None:
        if device.type == "cuda" and _triton_import_error() is None:
            return "triton"
        return "torch"
    if requested == "torch":
        return "torch"
    err = _triton_import_error()
    if err is not None:
        raise RuntimeError(f"backend 'triton' was requested but triton cannot be imported: {err}")
    if device.type == "cuda":
        return "triton"
    if device.type != "cpu":
        raise RuntimeError(f"backend 'triton' needs CUDA (or CPU) tensors, got device {device}")
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "backend 'triton' on CPU tensors runs the kernels through the Triton interpreter, "
            "but TRITON_INTERPRET is not '1'. Set TRITON_INTERPRET=1 in the environment "
            "before pope.kernels is first imported, or use backend='torch' / a CUDA device."
        )
    logprob, _, _ = _kernels()
    if type(logprob._logprob_fwd_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "backend 'triton' on CPU tensors: TRITON_INTERPRET=1 is set, but pope.kernels was "
            "imported before it was, so the kernels were compiled for a GPU. Set the variable "
            "before the first import (e.g. at the top of conftest.py or in the shell)."
        )
    return "triton"


# --------------------------------------------------------------------------- validation


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _check_logits(logits: object, name: str = "logits") -> torch.Tensor:
    logits = _check_tensor(name, logits)
    if logits.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, V), got shape {tuple(logits.shape)}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column (V >= 1), got V = 0")
    return logits


def _check_index(name: str, t: object, n: int, device: torch.device) -> torch.Tensor:
    t = _check_tensor(name, t)
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (the device of the logits)")
    return t


def _check_num_seqs(num_seqs: object) -> int:
    if not _is_int(num_seqs):
        raise TypeError(f"num_seqs must be an int, got {type(num_seqs).__name__}")
    if int(num_seqs) < 1:  # type: ignore[call-overload]
        raise ValueError(f"num_seqs must be >= 1, got {num_seqs}")
    return int(num_seqs)  # type: ignore[call-overload]


def _check_seq_vector(name: str, t: object, num_seqs: int, device: torch.device) -> torch.Tensor:
    t = _check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != num_seqs:
        raise ValueError(f"{name} must have shape ({num_seqs},) (num_seqs), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (the device of the logits)")
    return t


def _check_values(
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    vocab: int,
    ignore_index: int,
    finite: dict[str, torch.Tensor] | None = None,
    logits: torch.Tensor | None = None,
    extra: list[tuple[torch.Tensor, str]] | None = None,
    info: torch.Tensor | None = None,
) -> bool:
    """Value checks that need the data (one device synchronisation for all of them).

    ``finite``: tensors that must hold no NaN / inf (small: one ``isfinite`` each, or an
    ``aminmax`` for large ones). ``logits``: the NaN / ``+inf`` / target ``-inf`` rule of the
    module docstring. ``extra``: further (flag, message) pairs. ``info``: a flag that is
    returned, not raised on (synchronised together with the checks).
    """
    flags: list[torch.Tensor] = []
    names: list[str] = []
    if targets.numel():
        bad_t = ((targets < 0) | (targets >= vocab)) & (targets != ignore_index)
        flags.append(bad_t.any())
        names.append(f"targets must lie in [0, {vocab}) (V) or equal ignore_index={ignore_index}")
        flags.append(((seq_index < 0) | (seq_index >= num_seqs)).any())
        names.append(f"seq_index must lie in [0, num_seqs={num_seqs})")
    for name, t in (finite or {}).items():
        if t.numel() == 0:
            continue
        lo, hi = torch.aminmax(t.detach())
        # NaN propagates through aminmax, and NaN compares False
        flags.append(~((lo > -math.inf) & (hi < math.inf)))
        names.append(f"{name} must be finite (no NaN or inf)")
    if logits is not None and logits.numel():
        flags.append(~(torch.amax(logits.detach()) < math.inf))
        names.append(
            "logits must not contain NaN or +inf (-inf is allowed as a vocabulary mask, "
            "except at the target of an unmasked token)"
        )
        mask = targets != ignore_index
        safe = torch.where(mask, targets, torch.zeros_like(targets)).long().clamp(0, vocab - 1)
        target_logit = logits.detach().gather(1, safe[:, None]).squeeze(1)
        flags.append((mask & (target_logit == -math.inf)).any())
        names.append(
            "logits must be > -inf at the target of every unmasked token (its log-prob would "
            "be -inf); mask such tokens with ignore_index"
        )
    for flag, msg in extra or []:
        flags.append(flag)
        names.append(msg)
    if info is not None:
        flags.append(info)
    if not flags:
        return False
    bad = torch.stack([f.reshape(()) for f in flags]).tolist()
    for is_bad, msg in zip(bad, names):
        if is_bad:
            raise ValueError(msg)
    return bool(bad[-1]) if info is not None else False


def _check_common(
    logits: object,
    targets: object,
    seq_index: object,
    num_seqs: object,
    ignore_index: object,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    logits = _check_logits(logits)
    n = logits.shape[0]
    targets = _check_index("targets", targets, n, logits.device)
    seq_index = _check_index("seq_index", seq_index, n, logits.device)
    num_seqs = _check_num_seqs(num_seqs)
    if not _is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return logits, targets, seq_index, num_seqs, int(ignore_index)  # type: ignore[call-overload]


def _prepare_logits_for_triton(logits: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Logits with unit column stride (any row stride); copies only if the columns are strided."""
    if logits.stride(1) == 1 and (logits.shape[0] <= 1 or logits.stride(0) >= logits.shape[1]):
        return logits
    if inplace:
        raise ValueError(
            "inplace_backward=True needs logits with unit column stride and non-overlapping rows "
            f"(got strides {tuple(logits.stride())}); pass logits.contiguous() or disable it"
        )
    return logits.contiguous()


def _logits_backward(
    ctx: Any, grad_seq: torch.Tensor | None, grad_tok: torch.Tensor | None
) -> torch.Tensor:
    """``d/d logits`` of the saved forward, from the sequence / token gradients (fp32).

    With ``ctx.inplace_backward`` the gradient overwrites the saved logits, and autograd's
    version counter of that tensor is bumped, so any other saved use of it fails loudly.
    """
    logits, targets, seq_index, lse = ctx.saved_tensors[:4]
    logprob, _, _ = _kernels()
    grad = logprob.logprob_bwd(
        logits, targets, seq_index, lse, grad_seq, grad_tok, ctx.ignore_index,
        inplace=ctx.inplace_backward,
    )  # fmt: skip
    if ctx.inplace_backward:
        torch.autograd.graph.increment_version(logits)
    return grad


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
    cu = _check_tensor("cu_seqlens", cu_seqlens)
    if cu.dtype not in _INDEX_DTYPES:
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


# ------------------------------------------------------------------- autograd functions


class _SequenceLogprobFunction(torch.autograd.Function):
    """Triton forward/backward of :func:`sequence_logprob`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        seq_index: torch.Tensor,
        num_seqs: int,
        ignore_index: int,
        inplace_backward: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logprob, _, _ = _kernels()
        seq, tok, lse, _ = logprob.logprob_fwd(logits, targets, seq_index, num_seqs, ignore_index)
        ctx.save_for_backward(logits, targets, seq_index, lse)
        ctx.ignore_index = ignore_index
        ctx.inplace_backward = inplace_backward
        ctx.set_materialize_grads(False)
        return seq, tok

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_seq: torch.Tensor | None, grad_tok: torch.Tensor | None):  # type: ignore[override]
        if grad_seq is None and grad_tok is None:
            return None, None, None, None, None, None
        gs = None if grad_seq is None else grad_seq.float().contiguous()
        gt = None if grad_tok is None else grad_tok.float().contiguous()
        return _logits_backward(ctx, gs, gt), None, None, None, None, None


class _PopeLossFunction(torch.autograd.Function):
    """Triton forward/backward of :func:`pope_loss`."""

    @staticmethod
    def forward(  # type: ignore[override]
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
        logprob, pope_k, _ = _kernels()
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
    def backward(ctx, grad_loss: torch.Tensor | None, *_unused: object):  # type: ignore[override]
        nones = (None,) * 11
        if grad_loss is None:
            return (None, *nones)
        gcoef = ctx.saved_tensors[4]
        grad_seq = (gcoef * grad_loss.float()).contiguous()
        return (_logits_backward(ctx, grad_seq, None), *nones)


class _LinearSequenceLogprobFunction(torch.autograd.Function):
    """Chunked Triton forward/backward of :func:`linear_sequence_logprob`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        seq_index: torch.Tensor,
        num_seqs: int,
        ignore_index: int,
        chunk_size: int | None,
    ) -> torch.Tensor:
        _, _, linear = _kernels()
        seq, lse = linear.linear_logprob_fwd(
            hidden, weight, targets, seq_index, num_seqs, ignore_index, chunk_size
        )
        ctx.save_for_backward(hidden, weight, targets, seq_index, lse)
        ctx.ignore_index = ignore_index
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return seq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_seq: torch.Tensor | None):  # type: ignore[override]
        hidden, weight, targets, seq_index, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_seq is None or not (need_h or need_w):
            return None, None, None, None, None, None, None
        _, _, linear = _kernels()
        grad_h, grad_w = linear.linear_logprob_bwd(
            hidden, weight, targets, seq_index, lse, grad_seq.float().contiguous(),
            ctx.ignore_index, ctx.chunk_size, need_hidden=need_h, need_weight=need_w,
        )  # fmt: skip
        return grad_h, grad_w, None, None, None, None, None


# ---------------------------------------------------------------------------- public ops


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
    logits, targets, seq_index, num_seqs, ignore_index = _check_common(
        logits, targets, seq_index, num_seqs, ignore_index
    )
    _check_values(targets, seq_index, num_seqs, logits.shape[1], ignore_index, logits=logits)
    if resolve_op_backend(backend, logits.device) == "torch":
        return ops_reference.sequence_logprob(
            logits,
            targets,
            seq_index,
            num_seqs,
            ignore_index=ignore_index,
            return_token_logprobs=return_token_logprobs,
        )
    x = _prepare_logits_for_triton(logits, bool(inplace_backward))
    seq, tok = _SequenceLogprobFunction.apply(
        x,
        targets.contiguous(),
        seq_index.contiguous(),
        num_seqs,
        ignore_index,
        bool(inplace_backward),
    )
    return (seq, tok) if return_token_logprobs else seq


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
    logits, targets, seq_index, num_seqs, ignore_index = _check_common(
        logits, targets, seq_index, num_seqs, ignore_index
    )
    device = logits.device
    log_logging = _check_seq_vector("log_logging", log_logging, num_seqs, device)
    advantages = _check_seq_vector("advantages", advantages, num_seqs, device)
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
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
    ll_bad = (log_logging.detach() > LOGPROB_TOL).any()
    # w_s <= exp(-log_logging_s) because log pi_theta <= 0: overflow is possible only here
    may_overflow = (clip is None) and (
        (advantages.detach() != 0) & (-log_logging.detach().float() > _LOG_FLT_MAX)
    ).any()
    check_loss = _check_values(
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
        return ops_reference.pope_loss(
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
    x = _prepare_logits_for_triton(logits, bool(inplace_backward))
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


def linear_sequence_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    r""":func:`sequence_logprob` of the logits :math:`Z = H W^\top`, never materialising them.

    Rows are processed in chunks of ``chunk_size`` tokens: per chunk a torch matmul gives the
    ``(C, V)`` logits, which the Triton log-prob kernel reduces. The backward **recomputes**
    each chunk's logits from the saved inputs and the saved per-token log-sum-exp, writes
    :math:`\bar Z_c = g_t(\mathrm{onehot}(y_t) - \mathrm{softmax}(z_t))` over them in place,
    and forms :math:`\bar H_c = \bar Z_c W` and :math:`\bar W \mathrel{{+}{=}} \bar Z_c^\top
    H_c` (fp32 accumulation of :math:`\bar W`). Gradients cannot be formed in the forward
    because the incoming gradient of the (S,) output is unknown then. Cost: about 4/3 of the
    unchunked matmul FLOPs; extra memory: one ``(C, V)`` chunk (plus an fp32 ``(V, H)``
    accumulator for 16-bit weights).

    Parameters
    ----------
    hidden : (N, H) float32 / bfloat16 / float16 tensor
        Final hidden states (after the last norm), one row per token.
    weight : (V, H) tensor, same dtype and device
        LM head weight (no bias).
    targets, seq_index, num_seqs, ignore_index
        As in :func:`sequence_logprob`.
    chunk_size : int >= 1, optional
        Rows per chunk; default
        :math:`2^{\lceil\log_2\lceil N/\lceil V/H\rceil\rceil\rceil}` (a logits chunk about
        the size of ``hidden``). The torch reference processes the whole batch at once by
        default (with activation checkpointing per chunk when given).
    backend : {None, "auto", "triton", "torch"}

    Returns
    -------
    (S,) fp32 tensor, differentiable w.r.t. ``hidden`` and ``weight``.
    """
    hidden = _check_logits(hidden, "hidden")
    weight = _check_logits(weight, "weight")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} must match hidden dtype {hidden.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device}, expected {hidden.device}")
    if weight.shape[0] < 1:
        raise ValueError("weight must have at least one row (V >= 1), got V = 0")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must have shape (V, H) with H = hidden.shape[1] = {hidden.shape[1]}, "
            f"got {tuple(weight.shape)}"
        )
    n = hidden.shape[0]
    targets = _check_index("targets", targets, n, hidden.device)
    seq_index = _check_index("seq_index", seq_index, n, hidden.device)
    num_seqs = _check_num_seqs(num_seqs)
    if not _is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    ignore_index = int(ignore_index)
    if chunk_size is not None:
        if not _is_int(chunk_size):
            raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunk_size = int(chunk_size)
    _check_values(
        targets, seq_index, num_seqs, weight.shape[0], ignore_index,
        finite={"hidden": hidden, "weight": weight},
    )  # fmt: skip
    if resolve_op_backend(backend, hidden.device) == "torch":
        return ops_reference.linear_sequence_logprob(
            hidden,
            weight,
            targets,
            seq_index,
            num_seqs,
            ignore_index=ignore_index,
            chunk_size=chunk_size,
        )
    return _LinearSequenceLogprobFunction.apply(
        hidden.contiguous(),
        weight.contiguous(),
        targets.contiguous(),
        seq_index.contiguous(),
        num_seqs,
        ignore_index,
        chunk_size,
    )
