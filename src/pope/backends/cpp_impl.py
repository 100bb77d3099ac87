"""C++ backend: thin wrappers around the pybind11 module :mod:`pope._ext`.

Same functions, signatures and semantics as :mod:`pope.backends.reference` (the contract and
the test oracle). The C++ routines release the GIL and split the work over ``std::thread``
workers: ``min(hardware_concurrency, work / threshold)`` threads, or ``POPE_NUM_THREADS`` when
that variable holds a positive integer. Importing this module raises :class:`ImportError` when
the extension was not built, so that backend dispatch falls back to Numba or NumPy.
"""

from __future__ import annotations

import numpy as np

from pope.backends.reference import IPS_CHECKS, MOMENT_NAMES, splitmix64

try:
    import pope._ext as _ext
except ImportError as exc:  # pragma: no cover - exercised only without a compiled extension
    raise ImportError(f"pope._ext (the C++ backend) is not available: {exc}") from exc

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

_U64_MAX = (1 << 64) - 1


def ips_moments(
    log_target: np.ndarray, log_logging: np.ndarray, reward: np.ndarray, log_clip: float
) -> np.ndarray:
    """C++ twin of :func:`pope.backends.reference.ips_moments`."""
    return _ext.ips_moments(log_target, log_logging, reward, float(log_clip))


def ips_moments_checked(
    log_target: np.ndarray, log_logging: np.ndarray, reward: np.ndarray, log_clip: float
) -> tuple[np.ndarray, np.ndarray]:
    """C++ twin of :func:`pope.backends.reference.ips_moments_checked` (one fused pass)."""
    return _ext.ips_moments_checked(log_target, log_logging, reward, float(log_clip))


def segment_coverage_hard(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    labels: np.ndarray,
    n_aspects: int,
    self_normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """C++ twin of :func:`pope.backends.reference.segment_coverage_hard`."""
    return _ext.segment_coverage_hard(
        prompt_ptr, log_weight, labels, int(n_aspects), bool(self_normalize)
    )


def segment_coverage_soft(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    soft: np.ndarray,
    self_normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """C++ twin of :func:`pope.backends.reference.segment_coverage_soft`."""
    return _ext.segment_coverage_soft(prompt_ptr, log_weight, soft, bool(self_normalize))


def segment_jackknife_entropy_hard(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    labels: np.ndarray,
    n_aspects: int,
    self_normalize: bool,
) -> np.ndarray:
    """C++ twin of :func:`pope.backends.reference.segment_jackknife_entropy_hard`."""
    return _ext.segment_jackknife_entropy_hard(
        prompt_ptr, log_weight, labels, int(n_aspects), bool(self_normalize)
    )


def segment_jackknife_entropy_soft(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    soft: np.ndarray,
    self_normalize: bool,
) -> np.ndarray:
    """C++ twin of :func:`pope.backends.reference.segment_jackknife_entropy_soft`."""
    return _ext.segment_jackknife_entropy_soft(prompt_ptr, log_weight, soft, bool(self_normalize))


def diversity_reward_hard(prompt_ptr: np.ndarray, p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """C++ twin of :func:`pope.backends.reference.diversity_reward_hard`."""
    return _ext.diversity_reward_hard(prompt_ptr, p, labels)


def diversity_reward_soft(prompt_ptr: np.ndarray, p: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """C++ twin of :func:`pope.backends.reference.diversity_reward_soft`."""
    return _ext.diversity_reward_soft(prompt_ptr, p, soft)


def bootstrap_sums(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """C++ twin of :func:`pope.backends.reference.bootstrap_sums`."""
    seed = int(seed)
    if not 0 <= seed <= _U64_MAX:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
    return _ext.bootstrap_sums(values, int(n_boot), seed)
