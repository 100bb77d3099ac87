"""C++ backend: thin wrappers around the pybind11 module :mod:`pope._ext`.

Same functions, signatures and semantics as :mod:`pope.backends.reference` (the contract and
the test oracle). The C++ routines release the GIL and split the work over ``std::thread``
workers: ``min(hardware_concurrency, work / threshold)`` threads, or ``POPE_NUM_THREADS`` when
that variable holds a positive integer. Importing this module raises :class:`ImportError` when
the extension was not built, so that backend dispatch falls back to Numba or NumPy.
"""

from __future__ import annotations

import numpy as np

from pope.backends.reference import MOMENT_NAMES, splitmix64

try:
    from pope import _ext
except ImportError as exc:  # pragma: no cover - exercised only without a compiled extension
    raise ImportError(f"pope._ext (the C++ backend) is not available: {exc}") from exc

__all__ = [
    "MOMENT_NAMES",
    "bootstrap_sums",
    "diversity_reward_hard",
    "diversity_reward_soft",
    "ips_moments",
    "segment_coverage_hard",
    "segment_coverage_soft",
    "splitmix64",
]

_U64_MAX = (1 << 64) - 1


def ips_moments(
    log_target: np.ndarray, log_logging: np.ndarray, reward: np.ndarray, log_clip: float
) -> np.ndarray:
    r"""Scaled weighted moments of a clipped importance-weighted sample.

    With :math:`l_i = \min(\log\pi_\theta(y_i) - \log\pi_0(y_i), \log M)`,
    :math:`m = \max_i l_i` and :math:`\tilde w_i = e^{l_i - m}` (so :math:`w_i = e^m \tilde w_i`)
    the result is

    .. math::

        [m,\ n,\ \sum \tilde w,\ \sum \tilde w^2,\ \sum \tilde w r,\ \sum (\tilde w r)^2,\
        \sum \tilde w^2 r,\ \#\{\ell_i > \log M\},\ \max_i \ell_i]

    where :math:`\ell_i` is the unclipped log-ratio. Computed in one pass over the data with a
    running maximum (accumulators rescaled by :math:`e^{m_{old} - m_{new}}` when it grows).

    Parameters
    ----------
    log_target, log_logging, reward : numpy.ndarray
        ``(n,)`` float64.
    log_clip : float
        ``log(M)`` for truncation ``min(w, M)``; ``inf`` for none.

    Returns
    -------
    numpy.ndarray
        ``(9,)`` float64 in the order of :data:`MOMENT_NAMES`. When every weight is zero
        (all ``l_i == -inf``) the sums are 0 and ``log_scale`` is ``-inf``.
    """
    return _ext.ips_moments(log_target, log_logging, reward, float(log_clip))


def segment_coverage_hard(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    labels: np.ndarray,
    n_aspects: int,
    self_normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Weighted aspect histogram per prompt and its entropy, hard labels.

    .. math::

        \hat p(c \mid x_i) = \frac{1}{Z_i} \sum_{k \in i} w_k [a_k = c], \qquad
        H_i = -\sum_c \hat p(c \mid x_i) \log \hat p(c \mid x_i)

    with :math:`w_k = e^{l_k - \max_{k' \in i} l_{k'}}` and :math:`Z_i = \sum_k w_k`
    (self-normalised) or :math:`w_k = e^{l_k}`, :math:`Z_i = K_i` (IPS); rows with
    :math:`Z_i = 0` are zero and :math:`0 \log 0 = 0`.

    Parameters
    ----------
    prompt_ptr : numpy.ndarray
        ``(P+1,)`` int64 CSR offsets of the responses of each prompt.
    log_weight : numpy.ndarray
        ``(N,)`` float64 log importance weights, may hold ``-inf``.
    labels : numpy.ndarray
        ``(N,)`` int64 aspect of each response, in ``[0, n_aspects)``.
    n_aspects : int
        Number of aspects ``C``.
    self_normalize : bool
        Self-normalised (``True``) or IPS (``False``) histogram.

    Returns
    -------
    p : numpy.ndarray
        ``(P, C)`` float64.
    H : numpy.ndarray
        ``(P,)`` float64.
    """
    return _ext.segment_coverage_hard(
        prompt_ptr, log_weight, labels, int(n_aspects), bool(self_normalize)
    )


def segment_coverage_soft(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    soft: np.ndarray,
    self_normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    r"""As :func:`segment_coverage_hard` with soft aspect rows.

    :math:`\hat p(c \mid x_i) = Z_i^{-1} \sum_{k \in i} w_k q_k(c)`, ``soft`` is ``(N, C)``.

    Parameters
    ----------
    prompt_ptr : numpy.ndarray
        ``(P+1,)`` int64 CSR offsets.
    log_weight : numpy.ndarray
        ``(N,)`` float64, may hold ``-inf``.
    soft : numpy.ndarray
        ``(N, C)`` float64 aspect distributions ``q_k``.
    self_normalize : bool
        Self-normalised (``True``) or IPS (``False``) histogram.

    Returns
    -------
    p : numpy.ndarray
        ``(P, C)`` float64.
    H : numpy.ndarray
        ``(P,)`` float64.
    """
    return _ext.segment_coverage_soft(prompt_ptr, log_weight, soft, bool(self_normalize))


def diversity_reward_hard(prompt_ptr: np.ndarray, p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    r"""Per-response coverage cross-entropy, hard labels.

    :math:`d_k = -\log \hat p(a_k \mid x_{i(k)})`, and 0 where that probability is 0.

    Parameters
    ----------
    prompt_ptr : numpy.ndarray
        ``(P+1,)`` int64 CSR offsets.
    p : numpy.ndarray
        ``(P, C)`` float64 coverage histograms.
    labels : numpy.ndarray
        ``(N,)`` int64 in ``[0, C)``.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` float64.
    """
    return _ext.diversity_reward_hard(prompt_ptr, p, labels)


def diversity_reward_soft(prompt_ptr: np.ndarray, p: np.ndarray, soft: np.ndarray) -> np.ndarray:
    r"""Per-response coverage cross-entropy, soft labels.

    :math:`d_k = -\sum_c q_k(c) \log \hat p(c \mid x_{i(k)})`; terms with
    :math:`\hat p = 0` count 0.

    Parameters
    ----------
    prompt_ptr : numpy.ndarray
        ``(P+1,)`` int64 CSR offsets.
    p : numpy.ndarray
        ``(P, C)`` float64 coverage histograms.
    soft : numpy.ndarray
        ``(N, C)`` float64.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` float64.
    """
    return _ext.diversity_reward_soft(prompt_ptr, p, soft)


def bootstrap_sums(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    r"""Column sums of ``n_boot`` with-replacement resamples of the rows of ``values``.

    :math:`S_{b} = \sum_{i=0}^{n-1} v_{\mathrm{idx}(b, i)}` with the counter-based index
    stream of :mod:`pope.backends.reference` (bit-identical across backends):
    :math:`\mathrm{idx}(b, i) = ((\mathrm{sm}(\mathrm{sm}(s) + bG + i) \gg 32) \cdot n) \gg 32`.

    Parameters
    ----------
    values : numpy.ndarray
        ``(n, m)`` float64, ``1 <= n < 2**32``.
    n_boot : int
        Number of resamples.
    seed : int
        In ``[0, 2**64)``.

    Returns
    -------
    numpy.ndarray
        ``(n_boot, m)`` float64.
    """
    seed = int(seed)
    if not 0 <= seed <= _U64_MAX:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
    return _ext.bootstrap_sums(values, int(n_boot), seed)
