"""The block boundaries of the compiled cores' fast paths, against the NumPy reference.

* Hard-label jackknife: self-normalised, the deletions' log terms come from logs of products
  of 32 factors d_k (csrc/jackknife.cpp and its Numba twin); prompts of 31 to 97 rows cross
  one to three product boundaries.
* Bootstrap: the counts of a block are packed two 16-bit halves to a 32-bit word; a stream
  with more than 65535 drawn rows over all blocks (n > 16 * 65535 rows) would overflow without
  a flush per block. Groups of resamples: B = 70 leaves the last group partial.
"""

from __future__ import annotations

import numpy as np
import pytest

from pope.backends import get_backend
from pope.backends import reference as ref

RTOL = 1e-12  # as tests/test_backends.py


@pytest.fixture(params=("cpp", "numba"))
def be(request: pytest.FixtureRequest):
    return get_backend(request.param)


@pytest.mark.parametrize("self_normalize", [True, False])
def test_jackknife_hard_across_product_blocks(be, self_normalize) -> None:
    rng = np.random.default_rng(11)
    sizes = np.array([31, 32, 33, 63, 64, 65, 97, 1, 2, 0, 40, 96])
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(ptr[-1])
    lw = rng.normal(0.0, 2.0, n)
    if not self_normalize:
        lw = np.minimum(lw, 0.0) - 0.1
    lw[rng.random(n) < 0.1] = -np.inf
    lw[ptr[10] : ptr[10] + 3] = lw[ptr[10] : ptr[11]].max() + 0.5  # a tie for the largest
    for C in (2, 7):
        labels = rng.integers(0, C, n)
        got = be.segment_jackknife_entropy_hard(ptr, lw, labels, C, self_normalize)
        want = ref.segment_jackknife_entropy_hard(ptr, lw, labels, C, self_normalize)
        # as tests/test_backends.py: leave-one-out entropies summed in another order, the
        # rounding of each (a few ulp of log z) multiplied by up to 2 K
        k = np.maximum(sizes, 1)
        np.testing.assert_array_less(np.abs(got - want), RTOL * k * (np.abs(want) + 1.0))


@pytest.fixture(scope="module")
def long_counts() -> tuple[np.ndarray, np.ndarray]:
    """Integer columns of n = 1.15e6 rows and the definition's counts of 3 resamples (each
    stream draws about n / 16 > 65535 rows per half word)."""
    n = 1_150_000
    i = np.arange(n)
    values = np.stack([i % 7, i % 1000], axis=1).astype(np.float64)
    return values, ref.bootstrap_counts(n, 2**63 + 5, 0, 3)


def test_bootstrap_counts_past_16_bits(be, long_counts) -> None:
    values, counts = long_counts
    n = values.shape[0]
    # integer sums below 2^53 are exact in any order; the rescaling is the same expression
    want = (counts.astype(np.float64) @ values) * (n / counts.sum(axis=1).astype(np.float64))[
        :, None
    ]
    np.testing.assert_array_equal(be.bootstrap_sums(values, 3, 2**63 + 5), want)


@pytest.mark.parametrize("n", [255, 256, 257, 4097])
def test_bootstrap_partial_groups_and_blocks(be, n) -> None:
    """B = 70 resamples (groups of 16 or 32: the last one partial), n across block ends."""
    rng = np.random.default_rng(n)
    values = rng.integers(0, 1000, (n, 2)).astype(np.float64)
    np.testing.assert_array_equal(
        be.bootstrap_sums(values, 70, 99), ref.bootstrap_sums(values, 70, 99)
    )
