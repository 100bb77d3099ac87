"""Backend selection for the CPU hot routines.

Three implementations of one contract (see :mod:`pope.backends.reference`):

* ``"cpp"``: the pybind11 module ``pope._ext`` (GIL released, threads);
* ``"numba"``: ``@njit`` twins in :mod:`pope.backends.numba_impl`;
* ``"reference"``: NumPy, the oracle and the last fallback.

``backend=None`` reads ``POPE_BACKEND`` and otherwise takes the first importable of
``cpp``, ``numba``, ``reference``. An explicitly requested backend that cannot be
imported raises ``RuntimeError``; an automatic choice falls back silently.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["BACKENDS", "available_backends", "get_backend", "resolve_backend"]

#: CPU backends in order of preference.
BACKENDS = ("cpp", "numba", "reference")

_MODULES = {
    "cpp": "pope.backends.cpp_impl",
    "numba": "pope.backends.numba_impl",
    "reference": "pope.backends.reference",
}
_TORCH_FAMILY = frozenset({"triton", "torch"})
_cache: dict[str, ModuleType | BaseException] = {}


def _load(name: str) -> ModuleType | BaseException:
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(_MODULES[name])
        except ImportError as exc:  # missing extension or numba
            _cache[name] = exc
    return _cache[name]


def available_backends() -> list[str]:
    """Names of the CPU backends that import on this machine, best first."""
    return [b for b in BACKENDS if isinstance(_load(b), ModuleType)]


def resolve_backend(backend: str | None = None) -> str:
    """Name of the backend to use for ``backend`` (``None``: env var, then automatic)."""
    requested = backend
    if requested is None:
        env = os.environ.get("POPE_BACKEND") or None
        # POPE_BACKEND also steers the torch ops ("triton", "torch"); those names mean
        # "automatic" for the CPU routines.
        requested = None if env in _TORCH_FAMILY else env
    if requested is None or requested == "auto":
        # the first that imports (not available_backends(): it would import numba, ~55 MiB
        # and a second of start-up, also when the C++ core is there)
        return next(b for b in BACKENDS if isinstance(_load(b), ModuleType))
    if not isinstance(requested, str):
        raise TypeError(f"backend must be a str or None, got {type(requested).__name__}")
    if requested not in _MODULES:
        raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {requested!r}")
    mod = _load(requested)
    if not isinstance(mod, ModuleType):
        raise RuntimeError(f"backend {requested!r} was requested but is unavailable: {mod}")
    return requested


def get_backend(backend: str | None = None) -> ModuleType:
    """The module implementing the routines for ``backend`` (see :func:`resolve_backend`)."""
    mod = _load(resolve_backend(backend))
    assert isinstance(mod, ModuleType)
    return mod
