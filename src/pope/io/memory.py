"""The Arrow memory pool between reads: :func:`release_arrow_memory`.

pyarrow allocates from its own pool (mimalloc or jemalloc), which keeps freed blocks for
reuse; NumPy allocates with the C allocator and cannot use them. After a read or an Arrow
computation whose buffers are gone, the readers hand the cached blocks back to the system, so
that the peak resident memory of a run is its data, not its data plus Arrow's cache
(``bench/bench_memory.py`` measures it).
"""

from __future__ import annotations

import sys

__all__ = ["release_arrow_memory"]


def release_arrow_memory() -> None:
    """Return the blocks the default Arrow memory pool keeps cached (a no-op without pyarrow)."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()
