"""Numba backend: ``@njit`` twins of :mod:`pope.backends.reference`.

Same functions, signatures and semantics as the reference (the contract and the test oracle).
Design, shared with the C++ backend:

* ``ips_moments`` makes one pass over the data. Chunks of ``_CHUNK`` samples run in parallel
  (``prange``); each keeps a running max ``M`` of the clipped log-ratio, updated once per block
  of ``_BLOCK`` samples, and rescales its sums by ``exp(M_old - M_new)`` when ``M`` grows (as in
  an online softmax). Partials are merged in chunk order, so the result does not depend on the
  number of threads.
* ``exp`` and ``log`` are branch-free polynomial kernels (:mod:`pope.backends.numba_math`; the
  float/int bit casts are LLVM ``bitcast`` intrinsics) that LLVM inlines and vectorises in the
  loops; ``math.exp`` / ``math.log`` would be scalar library calls. Both are accurate to about
  2 ulp.
* Coverage and diversity run in parallel over batches of whole prompts; every accumulation
  stays in response order, as ``np.bincount`` / ``np.add.at`` in the reference.
* ``bootstrap_sums`` runs in parallel over groups of 32 resamples, which go through the rows
  together in blocks of 16 steps (256 rows: streams, counts and partial sums in L1); the
  group's xoshiro128++ streams are stepped with 32-bit LLVM intrinsics (add, xor, shift,
  rotate; 8 streams per vector instruction) and the counts come from signed 16-bit compares of
  the uniforms against run-time thresholds; the SplitMix64 seeding uses ``uint64`` arithmetic
  (every constant a ``np.uint64``: mixing with ``int64`` would promote to ``float64``). The
  Poisson-bootstrap counts are bit-identical to the reference
  (:mod:`pope.backends.numba_bootstrap`).

Fast-math flags are limited to ``reassoc`` on the reductions of ``ips_moments`` (lane-wise
partial sums) and ``contract`` (FMA) inside ``exp`` / ``log``; nothing assumes finite values,
since ``-inf`` log-weights are legal. ``error_model="numpy"`` drops Python's zero-division
checks, which would block vectorisation (every division here is guarded).

``POPE_NUM_THREADS`` (a positive integer) caps the Numba threads, as it sets the C++ threads.

This module is the contract the backend registry loads (``pope.backends.get_backend("numba")``);
the kernels live in :mod:`pope.backends.numba_ips`, :mod:`pope.backends.numba_coverage` (coverage,
diversity reward), :mod:`pope.backends.numba_jackknife`, :mod:`pope.backends.numba_bootstrap`,
:mod:`pope.backends.numba_math` (exp / log) and :mod:`pope.backends.numba_threads`. Every kernel is
compiled with ``cache=True`` (the cache sits next to the module that defines it).
"""

from __future__ import annotations

from pope.backends.numba_bootstrap import bootstrap_sums
from pope.backends.numba_coverage import (
    diversity_reward_hard,
    diversity_reward_soft,
    segment_coverage_hard,
    segment_coverage_soft,
)
from pope.backends.numba_ips import ips_moments, ips_moments_checked
from pope.backends.numba_jackknife import (
    segment_jackknife_entropy_hard,
    segment_jackknife_entropy_soft,
)
from pope.backends.reference import IPS_CHECKS, MOMENT_NAMES, splitmix64

__all__ = [
    "IPS_CHECKS",
    "MOMENT_NAMES",
    "bootstrap_sums",
    "diversity_reward_hard",
    "diversity_reward_soft",
    "ips_moments",
    "ips_moments_checked",
    "segment_coverage_hard",
    "segment_coverage_soft",
    "segment_jackknife_entropy_hard",
    "segment_jackknife_entropy_soft",
    "splitmix64",
]
