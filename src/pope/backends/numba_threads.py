"""The Numba thread count: ``POPE_NUM_THREADS`` (a positive integer) caps it, as for C++."""

from __future__ import annotations

import os

from numba import config as _numba_config
from numba import set_num_threads

__all__ = ["apply_thread_cap"]


def apply_thread_cap() -> None:
    """Honour ``POPE_NUM_THREADS`` (capped by Numba's pool size)."""
    env = os.environ.get("POPE_NUM_THREADS", "")
    try:
        req = int(env)
    except ValueError:
        req = 0
    cap = _numba_config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # set by numba at import
    set_num_threads(min(req, cap) if req > 0 else cap)
