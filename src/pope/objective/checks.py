"""Argument checks of :class:`pope.objective.PopeObjective` (errors name the argument)."""

from __future__ import annotations

from typing import Any, TypeVar

import torch

_S = TypeVar("_S", bound=str)

__all__ = [
    "check_finite",
    "check_float",
    "check_int",
    "check_shape",
    "check_tensor",
    "choice",
    "first_bad",
    "work_dtype",
]


def check_tensor(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float(x: Any, name: str) -> torch.Tensor:
    x = check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def check_int(x: Any, name: str) -> torch.Tensor:
    x = check_tensor(x, name)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x.long()


def check_shape(x: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")


def first_bad(mask: torch.Tensor) -> int:
    return int(torch.nonzero(mask.reshape(-1))[0, 0])


def check_finite(x: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        i = first_bad(bad)
        raise ValueError(f"{name} must be finite; element {i} is {x.reshape(-1)[i].item()!r}")


def work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def choice(value: Any, name: str, allowed: tuple[_S, ...]) -> _S:
    """``value`` if it is one of ``allowed`` (typed as the option's Literal), else ValueError."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value
