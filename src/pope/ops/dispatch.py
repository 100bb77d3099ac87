r"""Backend choice of the torch ops (:mod:`pope.ops`): Triton kernels or the torch reference.

* ``backend=None`` (default): the ``POPE_BACKEND`` environment variable if it is ``"triton"``
  or ``"torch"``; otherwise automatic. (The CPU-routine names ``"cpp"``, ``"numba"``,
  ``"reference"`` and ``"auto"`` in ``POPE_BACKEND`` mean automatic here.)
* automatic: CUDA tensors and an importable ``triton`` give the Triton kernels of
  :mod:`pope.kernels`; anything else gives the torch reference :mod:`pope.ops.reference`.
* ``"triton"`` explicitly: the kernels, on CUDA tensors, or on CPU tensors through the Triton
  interpreter, which must have been selected (``TRITON_INTERPRET=1``) before
  :mod:`pope.kernels` was first imported; otherwise ``RuntimeError``.
* ``"torch"``: the reference, on any device.

An explicitly requested backend that cannot run raises; the automatic choice never does.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

__all__ = ["OP_BACKENDS", "kernel_modules", "resolve_op_backend"]

#: Backends of the torch ops.
OP_BACKENDS = ("triton", "torch")
#: ``POPE_BACKEND`` values that steer the CPU routines (:mod:`pope.backends`) and mean
#: "automatic" for these ops.
_AUTO_ENV = frozenset({"", "auto", "cpp", "numba", "reference"})

_triton_state: dict[str, object] = {}


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


def kernel_modules() -> tuple[ModuleType, ModuleType, ModuleType]:
    """The kernel modules ``(logprob, pope_loss, linear_logprob)`` of :mod:`pope.kernels`.

    Imported lazily: the Triton interpreter choice (``TRITON_INTERPRET``) happens at import.
    """
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
    logprob, _, _ = kernel_modules()
    if type(logprob._logprob_fwd_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "backend 'triton' on CPU tensors: TRITON_INTERPRET=1 is set, but pope.kernels was "
            "imported before it was, so the kernels were compiled for a GPU. Set the variable "
            "before the first import (e.g. at the top of conftest.py or in the shell)."
        )
    return "triton"
