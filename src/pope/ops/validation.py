r"""Argument checks shared by the torch ops of :mod:`pope.ops` (before any dispatch).

Non-finite values (the rule, the same for every op):

* ``logits``: NaN and ``+inf`` are rejected anywhere (masked rows included: the torch
  reference would spread a NaN of a masked row into its gradient). ``-inf`` is allowed, as a
  vocabulary mask, except at the target of an unmasked token (its log-prob would be
  ``-inf``). Checked with one ``amax`` reduction (no ``N x V`` temporary) and a gather of the
  ``N`` target logits.
* ``hidden`` / ``weight`` of :func:`pope.ops.linear_sequence_logprob`: finite (one
  ``aminmax`` each).
* ``log_logging``, ``advantages``: finite; ``log_logging <= 1e-6`` (:data:`LOGPROB_TOL`:
  log-probabilities are ``<= 0``; the tolerance absorbs rounding of a sum of per-token
  log-probs near 0).

All value checks of one call cost one device synchronisation (:func:`check_values`).
"""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard

import torch

__all__ = [
    "FLOAT_DTYPES",
    "INDEX_DTYPES",
    "LOGPROB_TOL",
    "check_common",
    "check_index",
    "check_logits",
    "check_num_seqs",
    "check_seq_vector",
    "check_tensor",
    "check_values",
    "is_int",
]

#: Floating dtypes the ops accept for logits / hidden states / weights.
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Integer dtypes of ``targets`` / ``seq_index`` / ``cu_seqlens``.
INDEX_DTYPES = (torch.int32, torch.int64)
#: log-probabilities above this are rejected (0 plus rounding of a sum of per-token values).
LOGPROB_TOL = 1e-6


def is_int(x: object) -> TypeGuard[numbers.Integral]:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_logits(logits: object, name: str = "logits") -> torch.Tensor:
    logits = check_tensor(name, logits)
    if logits.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, V), got shape {tuple(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column (V >= 1), got V = 0")
    return logits


def check_index(name: str, t: object, n: int, device: torch.device) -> torch.Tensor:
    t = check_tensor(name, t)
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (the device of the logits)")
    return t


def check_num_seqs(num_seqs: object) -> int:
    if not is_int(num_seqs):
        raise TypeError(f"num_seqs must be an int, got {type(num_seqs).__name__}")
    if int(num_seqs) < 1:
        raise ValueError(f"num_seqs must be >= 1, got {num_seqs}")
    return int(num_seqs)


def check_seq_vector(name: str, t: object, num_seqs: int, device: torch.device) -> torch.Tensor:
    t = check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != num_seqs:
        raise ValueError(f"{name} must have shape ({num_seqs},) (num_seqs), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (the device of the logits)")
    return t


def check_values(
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


def check_common(
    logits: object,
    targets: object,
    seq_index: object,
    num_seqs: object,
    ignore_index: object,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    logits = check_logits(logits)
    n = logits.shape[0]
    targets = check_index("targets", targets, n, logits.device)
    seq_index = check_index("seq_index", seq_index, n, logits.device)
    num_seqs = check_num_seqs(num_seqs)
    if not is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return logits, targets, seq_index, num_seqs, int(ignore_index)
