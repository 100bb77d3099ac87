"""The C++ and Numba backends against the NumPy reference, and the dispatch rules.

Every compiled backend must agree with :mod:`pope.backends.reference` to a relative tolerance
of 1e-12 in float64 on fresh random ragged data (sums are taken in a different order, and
``exp`` / ``log`` may differ by an ulp, so bit equality is not expected), and must reproduce the
bootstrap resample indices bit for bit (checked with integer-valued data whose sums are exact
in any order). Where a quantity can cancel (signed rewards) the tolerance is relative to the
same sum taken over absolute values. Entropies and cross-entropies are compared with the scale
``|H| + 1`` (nats): a relative error ``e`` in ``p`` moves ``-sum p log p`` by at most about
``e * (H + 1)`` and ``-log p`` by ``e``, so near ``H = 0`` (``p`` within an ulp of 1, where
NumPy's ``bincount`` and ``add.at`` already disagree by an ulp) only an absolute bound means
anything.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import pope.backends as backends
from pope.backends import available_backends, get_backend, resolve_backend
from pope.backends import reference as ref

COMPILED = ("cpp", "numba")
RTOL = 1e-12


def test_compiled_backends_are_available() -> None:
    """A broken C++ build or Numba install must fail here, not skip silently."""
    avail = available_backends()
    for name in COMPILED:
        assert name in avail, f"backend {name!r} failed to import: {backends._load(name)!r}"
    assert avail[-1] == "reference"


@pytest.fixture(params=COMPILED)
def be(request: pytest.FixtureRequest):
    """The backend module under test (raises if it is unavailable)."""
    return get_backend(request.param)


@pytest.fixture(autouse=True)
def _default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POPE_NUM_THREADS", raising=False)
    monkeypatch.delenv("POPE_BACKEND", raising=False)


def assert_close(got: np.ndarray, want: np.ndarray, scale: np.ndarray | float | None = None):
    """``|got - want| <= RTOL * scale`` elementwise (scale defaults to ``|want|``), no NaN."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    assert not np.isnan(got).any(), "backend produced NaN"
    assert np.array_equal(np.isnan(want), np.isnan(got))
    same_inf = np.isinf(want) | np.isinf(got)
    np.testing.assert_array_equal(got[same_inf], want[same_inf])
    finite = ~same_inf
    s = np.abs(want) if scale is None else np.broadcast_to(np.abs(scale), want.shape)
    err = np.abs(got[finite] - want[finite])
    bound = RTOL * s[finite]
    bad = err > bound
    assert not bad.any(), (
        f"max err {err.max():.3e}; worst rel {np.max(err / np.maximum(s[finite], 1e-300)):.3e}"
    )


def test_same_public_api_as_reference() -> None:
    for name in COMPILED:
        mod = get_backend(name)
        assert tuple(mod.MOMENT_NAMES) == ref.MOMENT_NAMES
        assert tuple(mod.IPS_CHECKS) == ref.IPS_CHECKS
        for fn in ref.__all__:
            if fn in ("MOMENT_NAMES", "IPS_CHECKS"):
                continue
            assert hasattr(mod, fn), f"{name} lacks {fn}"
            want = list(inspect.signature(getattr(ref, fn)).parameters)
            got = list(inspect.signature(getattr(mod, fn)).parameters)
            assert got == want, f"{name}.{fn} has parameters {got}, reference {want}"


# ---------------------------------------------------------------------------------------------
# ips_moments
# ---------------------------------------------------------------------------------------------


def _ips_case(rng: np.random.Generator, n: int, signed: bool = False):
    lt = rng.normal(-20.0, 2.0, n)
    ll = lt + rng.normal(0.0, 1.0, n)
    r = rng.normal(size=n) if signed else rng.random(n)
    return lt, ll, r


def _check_ips(be, lt, ll, r, clip) -> None:
    args = [a.copy() for a in (lt, ll, r)]
    got = be.ips_moments(lt, ll, r, clip)
    for a, b in zip(args, (lt, ll, r)):
        np.testing.assert_array_equal(a, b)  # inputs untouched
    want = ref.ips_moments(lt, ll, r, clip)
    scale = ref.ips_moments(lt, ll, np.abs(r), clip)  # same sums without cancellation
    assert_close(got, want, scale=np.where(np.isfinite(scale), np.abs(scale), 1.0))


@pytest.mark.parametrize("n", [1, 2, 5, 511, 512, 513, 4099, (1 << 16) + 7, 3 * (1 << 16) + 1])
@pytest.mark.parametrize("clip", [np.inf, 0.25, -0.5])
def test_ips_moments_random(be, rng, n, clip) -> None:
    lt, ll, r = _ips_case(rng, n)
    _check_ips(be, lt, ll, r, clip)


def test_ips_moments_signed_rewards(be, rng) -> None:
    lt, ll, r = _ips_case(rng, 100_003, signed=True)
    _check_ips(be, lt, ll, r, np.inf)
    _check_ips(be, lt, ll, r, 1.0)


def test_ips_moments_n0(be) -> None:
    e = np.empty(0)
    got = be.ips_moments(e, e, e, np.inf)
    want = ref.ips_moments(e, e, e, np.inf)
    np.testing.assert_array_equal(got, want)
    assert got[0] == -np.inf and got[8] == -np.inf and got[1] == 0


@pytest.mark.parametrize("clip", [np.inf, 3.0])
def test_ips_moments_extreme_log_propensities(be, rng, clip) -> None:
    n = 70_001
    vals = np.array([-1e4, -1e-9])
    lt = vals[rng.integers(0, 2, n)]
    ll = vals[rng.integers(0, 2, n)]
    r = rng.random(n)
    _check_ips(be, lt, ll, r, clip)
    # the max sits at the very end of the data: every chunk is rescaled during the merge
    lt2 = np.full(n, -1e4)
    lt2[-1] = -1e-9
    _check_ips(be, lt2, np.full(n, -1e-9), r, clip)


def test_ips_moments_increasing_max(be, rng) -> None:
    """Sorted log-ratios: the running max grows at every block and every chunk."""
    n = 200_000
    lt = np.sort(rng.normal(0.0, 30.0, n))
    ll = np.zeros(n)
    _check_ips(be, lt, ll, rng.random(n), np.inf)
    _check_ips(be, lt, ll, rng.random(n), 10.0)


def test_ips_moments_some_zero_weights(be, rng) -> None:
    lt, ll, r = _ips_case(rng, 5000)
    lt[rng.random(5000) < 0.3] = -np.inf
    lt[:700] = -np.inf  # a fully zero-weight first block
    _check_ips(be, lt, ll, r, np.inf)
    _check_ips(be, lt, ll, r, 0.0)


@pytest.mark.parametrize("name", ("reference", *COMPILED))
def test_ips_moments_all_zero_weights_no_nan(name: str) -> None:
    """All l_i = -inf: every backend (the reference too) reports zero sums and
    log_scale = -inf, never NaN."""
    n = 1000
    got = get_backend(name).ips_moments(np.full(n, -np.inf), np.zeros(n), np.ones(n), np.inf)
    assert not np.isnan(got).any()
    assert got[0] == -np.inf and got[8] == -np.inf
    np.testing.assert_array_equal(got[2:8], 0.0)
    assert got[1] == n


def test_ips_moments_thread_count_invariant(be, rng, monkeypatch) -> None:
    lt, ll, r = _ips_case(rng, 5 * (1 << 16) + 3)
    monkeypatch.setenv("POPE_NUM_THREADS", "1")
    one = be.ips_moments(lt, ll, r, 0.5)
    monkeypatch.setenv("POPE_NUM_THREADS", "3")
    three = be.ips_moments(lt, ll, r, 0.5)
    np.testing.assert_array_equal(one, three)
    _check_ips(be, lt, ll, r, 0.5)


def test_ips_moments_shape_errors(be) -> None:
    with pytest.raises(ValueError):
        be.ips_moments(np.zeros(3), np.zeros(4), np.zeros(3), np.inf)
    with pytest.raises(ValueError):
        be.ips_moments(np.zeros(3), np.zeros(3), np.zeros(2), np.inf)


# ---------------------------------------------------------------------------------------------
# ips_moments_checked: the value checks fused into the pass
# ---------------------------------------------------------------------------------------------

_BAD_VALUES = {  # IPS_CHECKS that each bad value fails, per argument
    0: (np.nan, np.inf, 0.5),  # log_target (-inf is legal)
    1: (np.nan, np.inf, -np.inf, 1e-300),  # log_logging
    2: (np.nan, np.inf, -np.inf),  # reward
}


def _check_checked(be, lt, ll, r, clip) -> None:
    args = [a.copy() for a in (lt, ll, r)]
    got, got_bad = be.ips_moments_checked(lt, ll, r, clip)
    for a, b in zip(args, (lt, ll, r)):
        np.testing.assert_array_equal(a, b)  # inputs untouched
    want, want_bad = ref.ips_moments_checked(lt, ll, r, clip)
    np.testing.assert_array_equal(got_bad, want_bad)  # first bad index of each check, exact
    assert got.shape == want.shape == (len(ref.MOMENT_NAMES) + 1,)
    if (want_bad >= 0).any():
        assert np.isnan(got).all()
        return
    assert got[9] == want[9]  # count of rewards outside [0, 1]: exact
    scale = ref.ips_moments(lt, ll, np.abs(r), clip)
    assert_close(got[:9], want[:9], scale=np.where(np.isfinite(scale), np.abs(scale), 1.0))


@pytest.mark.parametrize("n", [1, 7, 513, 3 * (1 << 16) + 5])
def test_ips_moments_checked_valid(be, rng, n) -> None:
    lt, ll, r = _ips_case(rng, n, signed=True)
    lt, ll = np.minimum(lt, 0.0), np.minimum(ll, 0.0)
    lt[rng.random(n) < 0.1] = -np.inf  # legal: zero target probability
    ll[rng.random(n) < 0.1] = 0.0  # legal: probability 1
    lt[rng.random(n) < 0.05] = -0.0
    for clip in (np.inf, 0.5):
        _check_checked(be, lt, ll, r, clip)
    _check_checked(be, lt, ll, np.abs(r) / np.abs(r).max(), np.inf)  # all rewards in [0, 1]


@pytest.mark.parametrize("arg", [0, 1, 2])
def test_ips_moments_checked_first_bad(be, rng, arg) -> None:
    """Every bad value, at the start, in a later chunk and at the tail, alone or twice, and
    mixed with bad values of another kind: the first index of each check, as the reference."""
    n = 3 * (1 << 16) + 5
    base = _ips_case(rng, n)
    base = [np.minimum(base[0], 0.0), np.minimum(base[1], 0.0), base[2]]
    for v in _BAD_VALUES[arg]:
        for pos in ([0], [n - 1], [(1 << 16) + 3, 2 * (1 << 16)], list(rng.integers(0, n, 5))):
            a = [x.copy() for x in base]
            a[arg][pos] = v
            _check_checked(be, *a, 1.0)
            other = (arg + 1) % 3
            a[other][rng.integers(0, n, 2)] = _BAD_VALUES[other][0]
            _check_checked(be, *a, 1.0)


def test_ips_moments_checked_rewards_outside_some_blocks(be, rng) -> None:
    """Rewards in [0, 1] except a few, in some blocks only (the compiled passes count a block
    element by element only when its min or max is out of range): exact count, as the
    reference; 0 and 1 themselves are inside."""
    n = 3 * (1 << 16) + 5
    lt, ll, _ = (np.minimum(a, 0.0) for a in _ips_case(rng, n))
    r = rng.random(n)
    r[[0, 1, 511, 512, 70_000, n - 1]] = [-0.5, 1.5, -1e-300, 1.0 + 2**-52, 7.0, -3.0]
    r[[2, 3, 600]] = [0.0, 1.0, -0.0]
    _check_checked(be, lt, ll, r, np.inf)
    got, _ = be.ips_moments_checked(lt, ll, r, np.inf)
    assert got[9] == 6


def test_ips_moments_checked_subnormal_weights(be, rng) -> None:
    """Log-ratios spread over [-740, 0]: scaled weights below e^-708 are subnormal in NumPy and
    may count 0 in a compiled pass; each sum holds a weight of 1, so the difference is below
    1e-307 of it, far inside RTOL."""
    n = 70_001
    lt = -rng.random(n) * 740.0
    ll = np.zeros(n)
    lt[12_345] = 0.0
    _check_checked(be, lt, ll, rng.random(n), np.inf)


def test_ips_moments_checked_read_only(be, rng) -> None:
    lt, ll, r = (np.minimum(a, 0.0) for a in _ips_case(rng, 70_001))
    for a in (lt, ll, r):
        a.flags.writeable = False
    _check_checked(be, lt, ll, r, 1.0)


def test_ips_moments_checked_n0(be) -> None:
    e = np.empty(0)
    got, bad = be.ips_moments_checked(e, e, e, np.inf)
    want, want_bad = ref.ips_moments_checked(e, e, e, np.inf)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(bad, want_bad)


# ---------------------------------------------------------------------------------------------
# Coverage and diversity
# ---------------------------------------------------------------------------------------------


def _ragged(rng: np.random.Generator, n_prompts: int, k_max: int, p_empty: float = 0.1):
    counts = rng.integers(1, k_max + 1, n_prompts)
    counts[rng.random(n_prompts) < p_empty] = 0
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _log_weights(rng, ptr: np.ndarray, self_normalize: bool) -> np.ndarray:
    n = int(ptr[-1])
    lw = rng.normal(0.0, 2.0, n)
    if not self_normalize:
        lw = np.minimum(lw, 0.0) - 0.1  # IPS form: p <= 1, so entropy terms do not cancel
    lw[rng.random(n) < 0.1] = -np.inf
    # a few prompts with only zero weights
    n_prompts = ptr.shape[0] - 1
    for i in rng.choice(n_prompts, size=min(3, n_prompts), replace=False):
        lw[ptr[i] : ptr[i + 1]] = -np.inf
    return lw


def _soft(rng, n: int, C: int) -> np.ndarray:
    q = rng.dirichlet(np.ones(C), n) if n else np.zeros((0, C))
    if n and C > 1:
        q[rng.random(n) < 0.2, 0] = 0.0  # some exact zeros
        q /= q.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(q)


def assert_close_nats(got: np.ndarray, want: np.ndarray) -> None:
    """Entropy-like values: tolerance RTOL * (|want| + 1)."""
    assert_close(got, want, scale=np.abs(want) + 1.0)


def _check_coverage(be, ptr, lw, labels, soft, C, self_normalize) -> None:
    inputs = [a.copy() for a in (ptr, lw, labels, soft)]
    p_got, h_got = be.segment_coverage_hard(ptr, lw, labels, C, self_normalize)
    p_hard, h_want = ref.segment_coverage_hard(ptr, lw, labels, C, self_normalize)
    assert_close(p_got, p_hard)
    assert_close_nats(h_got, h_want)
    p_got, h_got = be.segment_coverage_soft(ptr, lw, soft, self_normalize)
    p_soft, h_want = ref.segment_coverage_soft(ptr, lw, soft, self_normalize)
    assert_close(p_got, p_soft)
    assert_close_nats(h_got, h_want)
    assert_close_nats(
        be.diversity_reward_hard(ptr, p_hard, labels),
        ref.diversity_reward_hard(ptr, p_hard, labels),
    )
    assert_close_nats(
        be.diversity_reward_soft(ptr, p_soft, soft), ref.diversity_reward_soft(ptr, p_soft, soft)
    )
    for a, b in zip(inputs, (ptr, lw, labels, soft)):
        np.testing.assert_array_equal(a, b)  # inputs untouched


@pytest.mark.parametrize("self_normalize", [True, False])
@pytest.mark.parametrize(
    ("n_prompts", "k_max", "C"),
    [(1, 1, 3), (50, 1, 4), (200, 6, 1), (300, 9, 8), (3000, 9, 5), (4, 3000, 6)],
)
def test_coverage_random(be, rng, self_normalize, n_prompts, k_max, C) -> None:
    ptr = _ragged(rng, n_prompts, k_max)
    n = int(ptr[-1])
    lw = _log_weights(rng, ptr, self_normalize)
    labels = rng.integers(0, C, n)
    _check_coverage(be, ptr, lw, labels, _soft(rng, n, C), C, self_normalize)


@pytest.mark.parametrize("self_normalize", [True, False])
def test_coverage_degenerate_prompts(be, rng, self_normalize) -> None:
    """Empty prompts, all -inf prompts, K=1 prompts, a single big prompt, no prompts."""
    ptr = np.array([0, 0, 1, 1, 4, 4, 4, 9, 10, 10], dtype=np.int64)
    lw = rng.normal(size=10) - 3.0
    lw[1:4] = -np.inf  # prompt 3: all zero weights
    lw[9] = -np.inf  # prompt 7: one response, zero weight
    labels = rng.integers(0, 3, 10)
    soft = _soft(rng, 10, 3)
    _check_coverage(be, ptr, lw, labels, soft, 3, self_normalize)
    p, H = be.segment_coverage_hard(ptr, lw, labels, 3, self_normalize)
    for i in (0, 2, 4, 5, 8):  # empty
        np.testing.assert_array_equal(p[i], 0.0)
        assert H[i] == 0.0
    if self_normalize:
        np.testing.assert_array_equal(p[3], 0.0)
        assert H[3] == 0.0

    empty_ptr = np.zeros(1, dtype=np.int64)
    e = np.empty(0)
    ei = np.empty(0, dtype=np.int64)
    p, H = be.segment_coverage_hard(empty_ptr, e, ei, 4, self_normalize)
    assert p.shape == (0, 4) and H.shape == (0,)
    p, H = be.segment_coverage_soft(empty_ptr, e, np.zeros((0, 4)), self_normalize)
    assert p.shape == (0, 4) and H.shape == (0,)
    assert be.diversity_reward_hard(empty_ptr, np.zeros((0, 4)), ei).shape == (0,)


def test_coverage_ips_form_positive_log_weights(be, rng) -> None:
    """IPS histograms can exceed 1: compare against the scale of the entropy terms."""
    ptr = _ragged(rng, 400, 8)
    n = int(ptr[-1])
    lw = rng.normal(0.0, 1.5, n)
    labels = rng.integers(0, 4, n)
    p_want, h_want = ref.segment_coverage_hard(ptr, lw, labels, 4, False)
    p_got, h_got = be.segment_coverage_hard(ptr, lw, labels, 4, False)
    assert_close(p_got, p_want)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p_want > 0, np.abs(p_want * np.log(p_want)), 0.0).sum(axis=1)
    assert_close(h_got, h_want, scale=terms + 1.0)


def _check_jackknife(be, ptr, lw, labels, soft, C, self_normalize) -> None:
    inputs = [a.copy() for a in (ptr, lw, labels, soft)]
    got = be.segment_jackknife_entropy_hard(ptr, lw, labels, C, self_normalize)
    want = ref.segment_jackknife_entropy_hard(ptr, lw, labels, C, self_normalize)
    # Tolerance in nats: the leave-one-out entropies are (tot log z - sum a log a) / z in both,
    # summed in another order; K_i H - (K_i-1)/K_i sum_k H_{-k} multiplies their rounding
    # (a few ulp of log z) by up to 2 K_i, so the scale is K_i (|H| + 1).
    k = np.maximum(np.diff(ptr), 1)
    assert_close(got, want, scale=k * (np.abs(want) + 1.0))
    got_s = be.segment_jackknife_entropy_soft(ptr, lw, soft, self_normalize)
    want_s = ref.segment_jackknife_entropy_soft(ptr, lw, soft, self_normalize)
    assert_close(got_s, want_s, scale=k * (np.abs(want_s) + 1.0))
    for a, b in zip(inputs, (ptr, lw, labels, soft)):
        np.testing.assert_array_equal(a, b)  # inputs untouched


@pytest.mark.parametrize("self_normalize", [True, False])
@pytest.mark.parametrize(
    ("n_prompts", "k_max", "C"),
    [(1, 1, 3), (50, 1, 4), (200, 6, 1), (300, 9, 8), (3000, 9, 5), (4, 3000, 6)],
)
def test_jackknife_random(be, rng, self_normalize, n_prompts, k_max, C) -> None:
    """Ragged prompts (10% empty), -inf weights, a few all-zero-weight prompts, soft rows with
    exact zeros."""
    ptr = _ragged(rng, n_prompts, k_max)
    n = int(ptr[-1])
    lw = _log_weights(rng, ptr, self_normalize)
    labels = rng.integers(0, C, n)
    _check_jackknife(be, ptr, lw, labels, _soft(rng, n, C), C, self_normalize)


@pytest.mark.parametrize("self_normalize", [True, False])
def test_jackknife_degenerate_prompts(be, rng, self_normalize) -> None:
    """Empty prompts, K = 1, a single positive weight, all-zero weights, ties for the largest
    weight, extreme log weights (-1e4, -1e-9), a one-aspect histogram, no prompts."""
    ptr = np.array([0, 0, 1, 1, 4, 4, 7, 10, 14, 14, 20], dtype=np.int64)
    lw = rng.normal(size=20) - 3.0
    lw[1:4] = -np.inf  # prompt 3: all zero weights
    lw[4:7] = [-np.inf, -1.0, -np.inf]  # prompt 5: one positive weight
    lw[7:10] = -0.5  # prompt 6: a three-way tie for the largest weight
    lw[10:14] = [-1e4, -1e-9, -1e4, -1e-9]  # prompt 7: extreme log weights
    labels = rng.integers(0, 3, 20)
    labels[14:20] = 1  # prompt 9: every response in one aspect
    soft = _soft(rng, 20, 3)
    _check_jackknife(be, ptr, lw, labels, soft, 3, self_normalize)
    h = be.segment_jackknife_entropy_hard(ptr, lw, labels, 3, self_normalize)
    for i in (0, 2, 4, 8):  # empty
        assert h[i] == 0.0
    empty = np.zeros(1, dtype=np.int64)
    assert be.segment_jackknife_entropy_hard(
        empty, np.empty(0), np.empty(0, np.int64), 3, self_normalize
    ).shape == (0,)
    assert be.segment_jackknife_entropy_soft(
        empty, np.empty(0), np.zeros((0, 3)), self_normalize
    ).shape == (0,)


@pytest.mark.parametrize("self_normalize", [True, False])
def test_jackknife_tiny_weights(be, rng, self_normalize) -> None:
    """Prompts whose other weights are e^-690..e^-707 below the largest (near the smallest
    normal number; deeper, the weights are subnormal with a few significant bits and the
    leave-one-out entropy of what is left is not defined to 1e-12 by any exp): the largest
    row's deletion leaves only such weights, summed afresh, not by cancellation."""
    ptr = _ragged(rng, 2000, 9, p_empty=0.05)
    n = int(ptr[-1])
    lw = -rng.uniform(690.0, 707.0, n)
    starts = ptr[:-1][np.diff(ptr) > 0]
    lw[starts] = 0.0  # one large weight per prompt
    labels = rng.integers(0, 4, n)
    _check_jackknife(be, ptr, lw, labels, _soft(rng, n, 4), 4, self_normalize)


def test_jackknife_thread_count_invariant_and_errors(be, rng, monkeypatch) -> None:
    ptr = _ragged(rng, 20_000, 12)
    n = int(ptr[-1])
    lw = _log_weights(rng, ptr, True)
    labels = rng.integers(0, 7, n)
    soft = _soft(rng, n, 7)
    outs = []
    for t in ("1", "3"):
        monkeypatch.setenv("POPE_NUM_THREADS", t)
        outs.append(
            (
                be.segment_jackknife_entropy_hard(ptr, lw, labels, 7, True),
                be.segment_jackknife_entropy_soft(ptr, lw, soft, True),
            )
        )
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    bad = labels.copy()
    bad[5] = 7
    with pytest.raises(ValueError):
        be.segment_jackknife_entropy_hard(ptr, lw, bad, 7, True)
    with pytest.raises(ValueError):  # last offset != N
        be.segment_jackknife_entropy_hard(ptr[:-1], lw, labels, 7, True)


def test_coverage_thread_count_invariant(be, rng, monkeypatch) -> None:
    ptr = _ragged(rng, 20_000, 12)
    n = int(ptr[-1])
    lw = _log_weights(rng, ptr, True)
    labels = rng.integers(0, 7, n)
    soft = _soft(rng, n, 7)
    outs = []
    for t in ("1", "3"):
        monkeypatch.setenv("POPE_NUM_THREADS", t)
        p, H = be.segment_coverage_hard(ptr, lw, labels, 7, True)
        ps, Hs = be.segment_coverage_soft(ptr, lw, soft, True)
        outs.append((p, H, ps, Hs, be.diversity_reward_soft(ptr, ps, soft)))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    _check_coverage(be, ptr, lw, labels, soft, 7, True)


def test_coverage_bad_labels_raise(be, rng) -> None:
    ptr = np.array([0, 2, 5], dtype=np.int64)
    lw = np.zeros(5)
    for bad in (3, -1):
        labels = np.array([0, 1, 2, bad, 0], dtype=np.int64)
        with pytest.raises(ValueError):
            be.segment_coverage_hard(ptr, lw, labels, 3, True)
        with pytest.raises(ValueError):
            be.diversity_reward_hard(ptr, np.full((2, 3), 1 / 3), labels)


def test_coverage_shape_errors(be) -> None:
    lw = np.zeros(5)
    labels = np.zeros(5, dtype=np.int64)
    with pytest.raises(ValueError):  # last offset != N
        be.segment_coverage_hard(np.array([0, 2, 4], dtype=np.int64), lw, labels, 2, True)
    with pytest.raises(ValueError):  # decreasing offsets
        be.segment_coverage_hard(np.array([0, 3, 2, 5], dtype=np.int64), lw, labels, 2, True)
    with pytest.raises(ValueError):  # soft rows != N
        be.segment_coverage_soft(np.array([0, 5], dtype=np.int64), lw, np.zeros((4, 2)), True)
    one_prompt = np.array([0, 5], dtype=np.int64)
    with pytest.raises(ValueError):  # p rows != P
        be.diversity_reward_soft(one_prompt, np.zeros((2, 2)), np.zeros((5, 2)))


# ---------------------------------------------------------------------------------------------
# bootstrap_sums
# ---------------------------------------------------------------------------------------------

SEEDS = [0, 1, 12345, 2**63, 2**64 - 2, 2**64 - 1]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 3, 15, 16, 17, 513, 2047, 2049, 4111])
def test_bootstrap_counts_bit_identical(be, rng, seed, n) -> None:
    """Integer-valued columns: the sums are exact in any order and the rescaling n / N_b is
    the same expression, so equality means equal counts (n = 1, 2 redraw often: N_b = 0 has
    probability 0.37, 0.14)."""
    values = np.stack([np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64) ** 2], axis=1)
    values = np.concatenate([values, rng.integers(0, 1000, (n, 1)).astype(np.float64)], axis=1)
    for cols in ([0], [1], [0, 1, 2]):
        v = np.ascontiguousarray(values[:, cols])
        np.testing.assert_array_equal(
            be.bootstrap_sums(v, 37, seed), ref.bootstrap_sums(v, 37, seed)
        )


_TAILS = (41426, 17318, 5263, 1244, 240, 39, 5, 1)  # the definition's table, restated


def _poisson_counts_scalar(n: int, b: int, seed: int, attempt: int) -> list[int]:
    """c_bi, i < n, from the definition in the reference docstring, in plain Python ints
    (an independent implementation of the streams and the count table, not NumPy's)."""
    mask64, mask32 = (1 << 64) - 1, (1 << 32) - 1
    golden = 0x9E3779B97F4A7C15

    def sm(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask64
        return z ^ (z >> 31)

    def rotl(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & mask32

    key = sm(seed)
    if attempt:
        key = sm((key + attempt * golden) & mask64)
    lanes = []
    for lane in range(8):
        c = 16 * b + 2 * lane
        u0 = sm((key + (c + 1) * golden) & mask64)
        u1 = sm((key + (c + 2) * golden) & mask64)
        st = [u0 & mask32, u0 >> 32, u1 & mask32, u1 >> 32]
        if not any(st):
            st[0] = 1
        lanes.append(st)
    out = []
    for _ in range(-(-n // 16)):
        for s in lanes:
            x = (rotl((s[0] + s[3]) & mask32, 7) + s[0]) & mask32
            u = (s[1] << 9) & mask32
            s[2] ^= s[0]
            s[3] ^= s[1]
            s[1] ^= s[2]
            s[0] ^= s[3]
            s[2] ^= u
            s[3] = rotl(s[3], 11)
            for half in (x & 0xFFFF, x >> 16):
                out.append(sum(half >= 65536 - t for t in _TAILS))
    return out[:n]


@pytest.mark.parametrize("seed", [0, 12345, 2**64 - 1])
def test_bootstrap_reference_counts_match_definition(seed) -> None:
    assert tuple(ref.POISSON_TAILS) == _TAILS
    for n, b in ((1, 0), (9, 3), (37, 0), (1000, 17)):
        for attempt in (0, 2):
            u = ref.bootstrap_uniforms(n, seed, np.array([b]), attempt)[0]
            got = (u[:, None] >= 65536 - np.array(_TAILS)).sum(axis=1)
            np.testing.assert_array_equal(got, _poisson_counts_scalar(n, b, seed, attempt))
    # a resample without rows is drawn again with the next attempt
    c = ref.bootstrap_counts(1, 5, 0, 300)
    assert (c >= 1).all()
    redrawn = [b for b in range(300) if _poisson_counts_scalar(1, b, 5, 0) == [0]]
    assert 60 < len(redrawn) < 160  # P(c = 0) = 0.368
    for b in redrawn[:5]:
        a = 1
        while _poisson_counts_scalar(1, b, 5, a) == [0]:
            a += 1
        assert c[b, 0] == _poisson_counts_scalar(1, b, 5, a)[0]


def test_bootstrap_count_distribution() -> None:
    """Counts of 2000 resamples of n = 1000 rows: the frequencies of 0..8 match the table
    (chi-square within 5 sd of its mean), mean and variance are 1 within 5 standard errors,
    and neighbouring rows, lanes of a step and consecutive resamples are uncorrelated."""
    c = ref.bootstrap_counts(1000, 7, 0, 2000)
    tails = np.array((65536, *_TAILS, 0), dtype=float)
    pmf = (tails[:-1] - tails[1:]) / 65536.0
    np.testing.assert_allclose(pmf @ np.arange(9), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(pmf @ np.arange(9) ** 2 - 1.0, 1.0, rtol=0, atol=1e-15)
    freq = np.bincount(c.ravel(), minlength=9)
    assert freq.size == 9
    expect = pmf * c.size
    keep = expect > 20  # the chi-square approximation needs expected counts well above 5
    chi2 = ((freq[keep] - expect[keep]) ** 2 / expect[keep]).sum()
    df = keep.sum() - 1
    assert abs(chi2 - df) < 5 * math.sqrt(2 * df)
    x = c.ravel().astype(float)
    se_mean = 1.0 / math.sqrt(x.size)  # sd of c is 1
    assert abs(x.mean() - 1.0) < 5 * se_mean
    se_var = math.sqrt((3.9991 - 1.0) / x.size)  # Var(c^2 - ...) ~ (mu4 - sigma^4) / N
    assert abs(x.var() - 1.0) < 5 * se_var
    for a, b in ((c[:, :-1], c[:, 1:]), (c[:-1], c[1:]), (c[:, :-16], c[:, 16:])):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(r) < 5 / math.sqrt(a.size)


@pytest.mark.parametrize("seed", SEEDS)
def test_bootstrap_one_hot_columns(be, seed) -> None:
    """One-hot rows: out[b, i] = c_bi n / N_b, so each replicate sums to n and its ratios to
    the smallest positive entry are the counts."""
    n = 11
    got = be.bootstrap_sums(np.eye(n), 200, seed)
    np.testing.assert_array_equal(got, ref.bootstrap_sums(np.eye(n), 200, seed))
    np.testing.assert_allclose(got.sum(axis=1), n, rtol=4 * n * np.finfo(float).eps)
    counts = ref.bootstrap_counts(n, seed, 0, 200)
    np.testing.assert_allclose(
        got * counts.sum(axis=1, keepdims=True) / n, counts, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("m", [1, 4])
def test_bootstrap_float_values(be, rng, m) -> None:
    v = rng.random((20_011, m))
    assert_close(be.bootstrap_sums(v, 64, 2**64 - 3), ref.bootstrap_sums(v, 64, 2**64 - 3))
    vs = rng.normal(size=(3001, m))  # signed: tolerance relative to the sum of |v|
    scale = ref.bootstrap_sums(np.abs(vs), 16, 7)
    assert_close(be.bootstrap_sums(vs, 16, 7), ref.bootstrap_sums(vs, 16, 7), scale=scale)


def test_bootstrap_replicates_mean_and_variance(be, rng) -> None:
    """The replicate means out[b] / n of a skewed sample: their average is the sample mean and
    their variance s^2 E[1/N_b] (s^2 with divisor n; N_b ~ Poisson(n) given N_b > 0, so
    E[1/N_b] = (1 + 1/n + 2/n^2 + ...) / n), each within 5 standard errors of B replicates
    (normal replicate means: sd(mean) = sd / sqrt(B), sd(var) = var sqrt(2 / (B - 1)))."""
    n, B = 400, 20_000
    x = rng.exponential(1.0, n) ** 2
    reps = be.bootstrap_sums(x[:, None], B, 3)[:, 0] / n
    s2 = x.var()
    var_theory = s2 * (1.0 + 1.0 / n + 2.0 / n**2) / n
    assert abs(reps.mean() - x.mean()) < 5 * math.sqrt(var_theory / B)
    assert abs(reps.var(ddof=1) / var_theory - 1.0) < 5 * math.sqrt(2.0 / (B - 1)) + 0.02
    # 0.02: the replicate means of a skewed sample are not exactly normal (sd(var) larger)
    ratio = be.bootstrap_sums(np.column_stack([x, np.ones(n)]), 2000, 4)
    np.testing.assert_allclose(ratio[:, 1], n, rtol=1e-14)  # the count column is n exactly


def test_bootstrap_edge_cases(be, rng, monkeypatch) -> None:
    v = rng.random((10, 2))
    assert be.bootstrap_sums(v, 0, 3).shape == (0, 2)
    # one row: every resample has N_b = c_b1 >= 1 copies of it, rescaled to one row
    assert_close(be.bootstrap_sums(v[:1], 50, 3), np.repeat(v[:1], 50, 0))
    for bad_seed in (-1, 2**64):
        with pytest.raises((ValueError, TypeError, OverflowError)):
            be.bootstrap_sums(v, 3, bad_seed)
    with pytest.raises(ValueError):
        be.bootstrap_sums(np.zeros((0, 1)), 3, 0)
    for vals in (np.arange(4001.0).reshape(-1, 1), rng.random((4001, 3))):
        monkeypatch.setenv("POPE_NUM_THREADS", "1")
        one = be.bootstrap_sums(vals, 33, 99)
        monkeypatch.setenv("POPE_NUM_THREADS", "3")
        np.testing.assert_array_equal(be.bootstrap_sums(vals, 33, 99), one)
        # a resample does not depend on how many are drawn
        np.testing.assert_array_equal(be.bootstrap_sums(vals, 5, 99), one[:5])


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------


def test_dispatch_unknown_name() -> None:
    with pytest.raises(ValueError):
        resolve_backend("nope")
    with pytest.raises(ValueError):
        get_backend("nope")
    with pytest.raises(TypeError):
        resolve_backend(3)  # type: ignore[arg-type]


def test_dispatch_explicit_unavailable_raises(monkeypatch) -> None:
    monkeypatch.setitem(backends._cache, "cpp", ImportError("simulated missing extension"))
    with pytest.raises(RuntimeError, match="cpp"):
        get_backend("cpp")
    assert "cpp" not in available_backends()
    assert resolve_backend() == "numba"  # automatic choice falls back silently
    monkeypatch.setitem(backends._cache, "numba", ImportError("simulated missing numba"))
    assert resolve_backend(None) == "reference"
    assert get_backend("auto") is ref


def test_dispatch_auto_prefers_cpp() -> None:
    assert resolve_backend() == "cpp"
    assert resolve_backend("auto") == "cpp"
    assert get_backend().ips_moments is get_backend("cpp").ips_moments


@pytest.mark.parametrize("name", ["cpp", "numba", "reference"])
def test_dispatch_env_var(monkeypatch, name) -> None:
    monkeypatch.setenv("POPE_BACKEND", name)
    assert resolve_backend() == name
    assert resolve_backend("reference") == "reference"  # explicit argument wins


def test_dispatch_env_var_bad_name(monkeypatch) -> None:
    monkeypatch.setenv("POPE_BACKEND", "nope")
    with pytest.raises(ValueError):
        resolve_backend()


@pytest.mark.parametrize("torch_name", ["triton", "torch"])
def test_dispatch_env_var_torch_names_ignored(monkeypatch, torch_name) -> None:
    monkeypatch.setenv("POPE_BACKEND", torch_name)
    assert resolve_backend() == available_backends()[0]
