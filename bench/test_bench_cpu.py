"""pytest-benchmark suite of the CPU backends (``pytest bench/ --benchmark-only``).

Same workloads as ``bench/bench_cpu.py`` (clipped IPS moments over 1e7 samples, bootstrap of
n = 1e5 rows, segmented coverage on ~1e6 responses in 1e5 prompts, C = 8), one benchmark per
backend, grouped by task. Each benchmark warms the backend up first (Numba compile or cache
load) and checks its result against the NumPy reference, so a fast wrong answer fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from pope.backends import available_backends, get_backend

BACKENDS = available_backends()
REF = get_backend("reference")
RTOL = 1e-12


@pytest.fixture(scope="module")
def ips_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(0)
    n = 10_000_000
    lt = rng.normal(-30.0, 3.0, n)
    ll = lt + rng.normal(0.0, 1.0, n)
    return lt, ll, rng.random(n), float(np.log(20.0))


@pytest.fixture(scope="module")
def coverage_data():
    rng = np.random.default_rng(1)
    n_prompts, k_max, C = 100_000, 19, 8
    counts = rng.integers(1, k_max + 1, n_prompts)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(ptr[-1])
    lw = rng.normal(0.0, 2.0, n)
    labels = rng.integers(0, C, n)
    soft = rng.dirichlet(np.ones(C), n)
    return ptr, lw, labels, soft, C


def _close(got: np.ndarray, want: np.ndarray, atol_scale: float = 0.0) -> None:
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * atol_scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_ips_moments(benchmark, backend, ips_data) -> None:
    benchmark.group = "ips_moments n=1e7"
    mod = get_backend(backend)
    mod.ips_moments(*ips_data)
    if backend == "reference":
        out = benchmark.pedantic(mod.ips_moments, args=ips_data, rounds=3, iterations=1)
    else:
        out = benchmark(mod.ips_moments, *ips_data)
    _close(out, REF.ips_moments(*ips_data))
    benchmark.extra_info["GB_read"] = 3 * 8 * ips_data[0].shape[0] / 1e9


@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_bootstrap(benchmark, backend) -> None:
    benchmark.group = "bootstrap_sums n=1e5 m=1 B=1000"
    values = np.random.default_rng(2).random((100_000, 1))
    mod = get_backend(backend)
    mod.bootstrap_sums(values, 2, 7)
    out = benchmark.pedantic(
        mod.bootstrap_sums, args=(values, 1000, 7), rounds=2 if backend == "reference" else 5
    )
    want = out if backend == "reference" else REF.bootstrap_sums(values, 20, 7)
    _close(out[:20], want[:20])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_coverage_hard(benchmark, backend, coverage_data) -> None:
    benchmark.group = "segment_coverage_hard N~1e6 P=1e5 C=8"
    ptr, lw, labels, _, C = coverage_data
    mod = get_backend(backend)
    mod.segment_coverage_hard(ptr, lw, labels, C, True)
    p, H = benchmark(mod.segment_coverage_hard, ptr, lw, labels, C, True)
    p_ref, h_ref = REF.segment_coverage_hard(ptr, lw, labels, C, True)
    _close(p, p_ref)
    _close(H, h_ref, atol_scale=1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_coverage_soft(benchmark, backend, coverage_data) -> None:
    benchmark.group = "segment_coverage_soft N~1e6 P=1e5 C=8"
    ptr, lw, _, soft, _ = coverage_data
    mod = get_backend(backend)
    mod.segment_coverage_soft(ptr, lw, soft, True)
    if backend == "reference":
        p, H = benchmark.pedantic(
            mod.segment_coverage_soft, args=(ptr, lw, soft, True), rounds=3, iterations=1
        )
    else:
        p, H = benchmark(mod.segment_coverage_soft, ptr, lw, soft, True)
    p_ref, h_ref = REF.segment_coverage_soft(ptr, lw, soft, True)
    _close(p, p_ref)
    _close(H, h_ref, atol_scale=1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_diversity_hard(benchmark, backend, coverage_data) -> None:
    benchmark.group = "diversity_reward_hard N~1e6 P=1e5 C=8"
    ptr, lw, labels, _, C = coverage_data
    p, _ = REF.segment_coverage_hard(ptr, lw, labels, C, True)
    mod = get_backend(backend)
    mod.diversity_reward_hard(ptr, p, labels)
    d = benchmark(mod.diversity_reward_hard, ptr, p, labels)
    _close(d, REF.diversity_reward_hard(ptr, p, labels), atol_scale=1.0)
