"""NumPy reference of every CPU hot routine: the fallback backend and the test oracle.

Every backend module (``reference``, ``numba``, ``cpp``) exposes the same functions with the
same signatures and semantics. Inputs have already been validated by the public API: arrays
are C-contiguous, float64 / int64, finite where finiteness is required, and shapes agree.
Backends never modify their inputs.

Conventions shared by all backends
----------------------------------
``ips_moments`` scales weights by their running maximum so that nothing overflows: with the
clipped log-ratio ``l_i = min(log_target_i - log_logging_i, log_clip)`` and ``m = max_i l_i``
the scaled weight is ``w~_i = exp(l_i - m)`` and the true weight is ``w_i = exp(m) w~_i``.

``bootstrap_sums`` is a Poisson bootstrap (Hanley and MacGibbon 2006; Chamandy et al. 2012):
row ``i`` of resample ``b`` is drawn ``c_bi`` times, independently over rows and resamples,
and the replicate's column sums are rescaled to ``n`` rows::

    out[b] = (n / N_b) sum_i c_bi values[i],   N_b = sum_i c_bi

so ``out[b] / n`` is the mean of the resample (rows counted ``c_bi`` times). Conditionally on
``N_b`` the counts of Poisson(1) draws are multinomial (the classical bootstrap of ``N_b``
rows); the replicate mean has expectation the sample mean and variance ``s^2 E[1/N_b]``
(``s^2`` the sample variance with divisor ``n``), ``s^2/n (1 + O(1/n))``. A resample with
``N_b = 0`` is drawn again with the next attempt's key. Each count comes from one 16-bit
uniform ``u_bi`` by ``c_bi = #{k : u_bi >= 65536 - T_k}`` with the tail table
``POISSON_TAILS`` ``T = (41426, 17318, 5263, 1244, 240, 39, 5, 1)``, ``T_k / 65536`` close to
``P(Poisson(1) >= k)`` and chosen so that the mean and the variance of ``c`` are exactly 1
(third central moment 0.99985, fourth 3.9991; Poisson: 1, 4). The uniforms come from 8
xoshiro128++ streams per resample, keyed by (seed, attempt ``a``, resample ``b``, lane ``l``),
so that every backend draws the same counts whatever the number of threads::

    key_0     = splitmix64(seed),  key_a = splitmix64(key_0 + a * 0x9E3779B97F4A7C15)
    w_k(b, l) = splitmix64(key_a + (16 b + 2 l + k + 1) * 0x9E3779B97F4A7C15),  k = 0, 1
    state     = (lo32 w_0, hi32 w_0, lo32 w_1, hi32 w_1)   (all zero: s0 = 1)
    u_bi      = (x_{i // 16}(b, (i // 2) % 8) >> (16 (i % 2))) & 0xFFFF

where ``x_t(b, l)`` is the ``t``-th 32-bit output of lane ``l``'s xoshiro128++ generator
(Blackman and Vigna): ``x = rotl(s0 + s3, 7) + s0``, then ``u = s1 << 9; s2 ^= s0;
s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= u; s3 = rotl(s3, 11)`` (32-bit wrapping arithmetic).
One step of the 8 streams gives the counts of 16 consecutive rows. All arithmetic mod
``2**64`` (keys) or ``2**32`` (streams), with ``splitmix64(z) = f3(f2(f1(z)))``,
``f1(z) = (z ^ z>>30) * 0xBF58476D1CE4E5B9``, ``f2(z) = (z ^ z>>27) * 0x94D049BB133111EB``,
``f3(z) = z ^ z>>31``. The counts are integers, so they agree bit for bit between backends;
the sums agree to rounding (each backend adds in its own order).
"""

from __future__ import annotations

import numpy as np

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

#: Layout of the vector returned by :func:`ips_moments`.
MOMENT_NAMES = (
    "log_scale",  # m = max_i l_i (-inf when n == 0)
    "n",  # number of samples
    "sum_w",  # sum w~
    "sum_w2",  # sum w~^2
    "sum_wr",  # sum w~ r
    "sum_w2r2",  # sum (w~ r)^2
    "sum_w2r",  # sum w~^2 r
    "n_clipped",  # count of log_target - log_logging > log_clip
    "max_log_ratio",  # max_i (log_target_i - log_logging_i), unclipped (-inf when n == 0)
)

#: Checks of :func:`ips_moments_checked`, in the order of its ``first_bad`` vector. Each is a
#: condition that makes an element invalid: ``log_target`` may be ``-inf`` but not NaN or
#: above 0; ``log_logging`` must be finite and ``<= 0``; ``reward`` must be finite.
IPS_CHECKS = (
    "log_target_nan",
    "log_target_posinf",
    "log_target_positive",  # log_target > 0 (includes +inf)
    "log_logging_nan",
    "log_logging_posinf",
    "log_logging_neginf",
    "log_logging_positive",  # log_logging > 0 (includes +inf)
    "reward_nan",
    "reward_posinf",
    "reward_neginf",
)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def ips_moments(
    log_target: np.ndarray, log_logging: np.ndarray, reward: np.ndarray, log_clip: float
) -> np.ndarray:
    """Scaled weighted moments of a clipped importance-weighted sample.

    Parameters
    ----------
    log_target, log_logging, reward : (n,) float64
    log_clip : float
        ``log(M)`` for truncation ``min(w, M)``; ``inf`` for none.

    Returns
    -------
    (9,) float64 in the order of :data:`MOMENT_NAMES`.
    """
    out = np.zeros(len(MOMENT_NAMES))
    n = log_target.shape[0]
    out[1] = n
    if n == 0:
        out[0] = -np.inf
        out[8] = -np.inf
        return out
    lr = log_target - log_logging
    l = np.minimum(lr, log_clip)
    m = l.max()
    # every weight zero (all log-ratios -inf): sums of 0 with log_scale -inf, no NaN
    w = np.exp(l - m) if m > -np.inf else np.zeros_like(l)
    wr = w * reward
    out[0] = m
    out[2] = w.sum()
    out[3] = (w * w).sum()
    out[4] = wr.sum()
    out[5] = (wr * wr).sum()
    out[6] = (w * wr).sum()
    out[7] = np.count_nonzero(lr > log_clip)
    out[8] = lr.max()
    return out


def _first(mask: np.ndarray) -> int:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else -1


def ips_moments_checked(
    log_target: np.ndarray, log_logging: np.ndarray, reward: np.ndarray, log_clip: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ips_moments` on unchecked values, with the checks and the reward range.

    The compiled backends run the checks in the same pass that sums; here they are separate.
    Inputs are (n,) float64 arrays of equal length, values unchecked.

    Returns
    -------
    moments : (10,) float64
        The 9 values of :data:`MOMENT_NAMES`, then the number of rewards outside ``[0, 1]``
        (for the finite-sample bounds). All NaN when ``first_bad`` flags a value.
    first_bad : (len(IPS_CHECKS),) int64
        For each check of :data:`IPS_CHECKS`, the index of the first element that fails it,
        or -1.
    """
    lt, ll, r = log_target, log_logging, reward
    bad = np.array(
        [
            _first(np.isnan(lt)),
            _first(np.isposinf(lt)),
            _first(lt > 0),
            _first(np.isnan(ll)),
            _first(np.isposinf(ll)),
            _first(np.isneginf(ll)),
            _first(ll > 0),
            _first(np.isnan(r)),
            _first(np.isposinf(r)),
            _first(np.isneginf(r)),
        ],
        dtype=np.int64,
    )
    out = np.empty(len(MOMENT_NAMES) + 1)
    if (bad >= 0).any():
        out[:] = np.nan
        return out, bad
    out[:9] = ips_moments(lt, ll, r, log_clip)
    out[9] = np.count_nonzero((r < 0) | (r > 1))
    return out, bad


def _segment_ids(prompt_ptr: np.ndarray) -> np.ndarray:
    counts = np.diff(prompt_ptr)
    return np.repeat(np.arange(counts.shape[0]), counts)


def _prompt_weights(prompt_ptr: np.ndarray, log_weight: np.ndarray, self_normalize: bool):
    """Per-response weights and per-prompt normalisers.

    Self-normalised: ``w_k = exp(l_k - max_k l_k)`` and the normaliser ``sum_k w_k`` (0 for a
    prompt whose weights are all zero, i.e. all ``l_k == -inf``). IPS: ``w_k = exp(l_k)`` and
    the normaliser ``K_i``.
    """
    n_prompts = prompt_ptr.shape[0] - 1
    seg = _segment_ids(prompt_ptr)
    counts = np.diff(prompt_ptr)
    if not self_normalize:
        return np.exp(log_weight), counts.astype(np.float64), seg
    mx = np.full(n_prompts, -np.inf)
    np.maximum.at(mx, seg, log_weight)
    shift = np.where(np.isfinite(mx), mx, 0.0)
    w = np.exp(log_weight - shift[seg])
    norm = np.bincount(seg, weights=w, minlength=n_prompts)
    return w, norm, seg


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -t.sum(axis=1)


def _normalise(hist: np.ndarray, norm: np.ndarray) -> np.ndarray:
    safe = np.where(norm > 0, norm, 1.0)
    return np.where(norm[:, None] > 0, hist / safe[:, None], 0.0)


def segment_coverage_hard(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    labels: np.ndarray,
    n_aspects: int,
    self_normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted aspect histogram per prompt and its entropy, hard labels.

    ``p[i, c] = sum_{k in i} w_k [a_k == c] / Z_i`` with ``Z_i = sum_k w_k`` (self-normalised,
    weights shifted by the prompt's max log-weight) or ``Z_i = K_i`` (IPS, ``w = exp(l)``);
    rows with ``Z_i == 0`` are all zero. ``H[i] = -sum_c p[i,c] log p[i,c]`` with
    ``0 log 0 = 0``.

    Parameters
    ----------
    prompt_ptr : (P+1,) int64 CSR offsets
    log_weight : (N,) float64, may hold ``-inf`` (zero weight)
    labels : (N,) int64 in ``[0, n_aspects)``
    n_aspects : int
    self_normalize : bool

    Returns
    -------
    p : (P, C) float64, H : (P,) float64
    """
    n_prompts = prompt_ptr.shape[0] - 1
    w, norm, seg = _prompt_weights(prompt_ptr, log_weight, self_normalize)
    hist = np.bincount(
        seg * n_aspects + labels, weights=w, minlength=n_prompts * n_aspects
    ).reshape(n_prompts, n_aspects)
    p = _normalise(hist, norm)
    return p, _entropy_rows(p)


def segment_coverage_soft(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    soft: np.ndarray,
    self_normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`segment_coverage_hard` with soft aspect rows ``soft`` (N, C)."""
    n_prompts = prompt_ptr.shape[0] - 1
    n_aspects = soft.shape[1]
    w, norm, seg = _prompt_weights(prompt_ptr, log_weight, self_normalize)
    hist = np.zeros((n_prompts, n_aspects))
    np.add.at(hist, seg, soft * w[:, None])
    p = _normalise(hist, norm)
    return p, _entropy_rows(p)


def segment_jackknife_entropy_hard(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    labels: np.ndarray,
    n_aspects: int,
    self_normalize: bool,
) -> np.ndarray:
    r"""Delete-one-response jackknife of the coverage entropy per prompt (nats), hard labels.

    :math:`H^J_i = K_i H(\hat p_i) - \frac{K_i-1}{K_i}\sum_k H(\hat p_{i,-k})`, with the
    conventions and numerics of :func:`pope.coverage.jackknife_entropy_core`, which this
    calls (it is the NumPy algorithm; the compiled twins follow it row by row).

    Parameters
    ----------
    prompt_ptr : (P+1,) int64 CSR offsets
    log_weight : (N,) float64, may hold ``-inf``
    labels : (N,) int64 in ``[0, n_aspects)``
    n_aspects : int
    self_normalize : bool

    Returns
    -------
    (P,) float64
    """
    from pope.coverage import jackknife_entropy_core  # pope.coverage imports the backends

    return jackknife_entropy_core(
        prompt_ptr, log_weight, labels, None, int(n_aspects), bool(self_normalize)
    )


def segment_jackknife_entropy_soft(
    prompt_ptr: np.ndarray,
    log_weight: np.ndarray,
    soft: np.ndarray,
    self_normalize: bool,
) -> np.ndarray:
    """As :func:`segment_jackknife_entropy_hard` with soft aspect rows ``soft`` (N, C)."""
    from pope.coverage import jackknife_entropy_core

    return jackknife_entropy_core(
        prompt_ptr, log_weight, None, soft, soft.shape[1], bool(self_normalize)
    )


def diversity_reward_hard(prompt_ptr: np.ndarray, p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-response coverage cross-entropy ``d_k = -log p[i(k), a_k]`` (0 where ``p == 0``)."""
    seg = _segment_ids(prompt_ptr)
    pk = p[seg, labels]
    with np.errstate(divide="ignore"):
        return np.where(pk > 0, -np.log(np.where(pk > 0, pk, 1.0)), 0.0)


def diversity_reward_soft(prompt_ptr: np.ndarray, p: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """``d_k = -sum_c q_k(c) log p[i(k), c]``; terms with ``p == 0`` count 0."""
    seg = _segment_ids(prompt_ptr)
    pk = p[seg]
    with np.errstate(divide="ignore"):
        logp = np.where(pk > 0, np.log(np.where(pk > 0, pk, 1.0)), 0.0)
    return -(soft * logp).sum(axis=1)


def splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


#: ``T_k = 65536 P(c >= k)``, k = 1..8, of the bootstrap counts (module docstring).
POISSON_TAILS = (41426, 17318, 5263, 1244, 240, 39, 5, 1)
_THRESHOLDS = np.array([65536 - t for t in POISSON_TAILS], dtype=np.uint16)


def _attempt_key(seed: int, attempt: int) -> np.uint64:
    key = splitmix64(np.array([seed], dtype=np.uint64))[0]
    if attempt:
        with np.errstate(over="ignore"):
            key = splitmix64(np.array([key + np.uint64(attempt) * _GOLDEN]))[0]
    return key


def bootstrap_streams(seed: int, b: np.ndarray, attempt: int = 0) -> list[np.ndarray]:
    """Initial xoshiro128++ states ``[s0, s1, s2, s3]`` of resamples ``b`` (1-D ints) at
    ``attempt``, each ``(len(b), 8)`` uint32."""
    key = _attempt_key(seed, attempt)
    c = (
        np.uint64(16) * np.asarray(b, dtype=np.uint64)[:, None]
        + np.uint64(2) * np.arange(8, dtype=np.uint64)[None, :]
    )
    with np.errstate(over="ignore"):
        u0 = splitmix64(key + (c + np.uint64(1)) * _GOLDEN)
        u1 = splitmix64(key + (c + np.uint64(2)) * _GOLDEN)
    lo = np.uint64(0xFFFFFFFF)
    s = [
        (u0 & lo).astype(np.uint32),
        (u0 >> np.uint64(32)).astype(np.uint32),
        (u1 & lo).astype(np.uint32),
        (u1 >> np.uint64(32)).astype(np.uint32),
    ]
    zero = (s[0] | s[1] | s[2] | s[3]) == 0
    s[0][zero] = 1
    return s


def _rotl32(x: np.ndarray, k: int) -> np.ndarray:
    return (x << np.uint32(k)) | (x >> np.uint32(32 - k))


def bootstrap_uniforms(n: int, seed: int, b: np.ndarray, attempt: int = 0) -> np.ndarray:
    """The 16-bit uniforms ``u_bi`` of rows ``i < n`` of resamples ``b``, ``(len(b), n)``
    uint16 (module docstring)."""
    s0, s1, s2, s3 = bootstrap_streams(seed, b, attempt)
    steps = -(-n // 16)
    x = np.empty((len(b), steps, 8), dtype=np.uint32)
    for t in range(steps):  # uint32 arrays wrap silently
        x[:, t] = _rotl32(s0 + s3, 7) + s0
        u = s1 << np.uint32(9)
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= u
        s3 = _rotl32(s3, 11)
    lo = (x & np.uint32(0xFFFF)).astype(np.uint16)
    hi = (x >> np.uint32(16)).astype(np.uint16)
    return np.stack([lo, hi], axis=-1).reshape(len(b), steps * 16)[:, :n]


def bootstrap_counts(n: int, seed: int, b0: int, b1: int) -> np.ndarray:
    """Counts ``c_bi`` of rows ``i < n`` in resamples ``b0..b1-1``, ``(b1 - b0, n)`` int64,
    after any redraw of a resample without rows (module docstring; not a backend routine: the
    compiled backends never materialise them)."""
    b = np.arange(b0, b1)
    counts = np.empty((b1 - b0, n), dtype=np.int64)
    todo = np.arange(b1 - b0)
    attempt = 0
    while todo.size:
        u = bootstrap_uniforms(n, seed, b[todo], attempt)
        c = (u[..., None] >= _THRESHOLDS).sum(axis=-1)
        counts[todo] = c
        todo = todo[c.sum(axis=1) == 0]
        attempt += 1
    return counts


def bootstrap_sums(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Column sums of ``n_boot`` Poisson-bootstrap resamples of the rows of ``values``,
    rescaled to ``n`` rows.

    Parameters
    ----------
    values : (n, m) float64, C-contiguous, finite, ``1 <= n < 2**32``
    n_boot : int
    seed : int in ``[0, 2**64)``

    Returns
    -------
    (n_boot, m) float64: ``out[b] = (n / N_b) sum_i c_bi values[i]`` (module docstring), so
    that ``out[b] / n`` is the resample's mean and ``out[b].sum()`` over a one-hot ``values``
    is ``n``.
    """
    n, m = values.shape
    out = np.empty((n_boot, m))
    step = max(1, (1 << 20) // n)  # resamples per batch: about 2^20 counts
    for b0 in range(0, n_boot, step):
        b1 = min(n_boot, b0 + step)
        c = bootstrap_counts(n, seed, b0, b1)
        sums = c.astype(np.float64) @ values
        out[b0:b1] = sums * (n / c.sum(axis=1).astype(np.float64))[:, None]
    return out
