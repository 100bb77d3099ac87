"""Coverage, coverage entropy and the per-response diversity reward vs naive per-prompt loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import entr

import pope
from pope.backends import available_backends

BACKENDS = available_backends()


def make_prompts(rng, n_prompts=40, c=4, soft=False, empty=True):
    k = rng.integers(0 if empty else 1, 6, n_prompts)
    ptr = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
    n = int(ptr[-1])
    lw = rng.normal(0, 1.5, n)
    if soft:
        q = rng.dirichlet(np.full(c, 0.5), n)
        q[: n // 4, 0] = 0.0  # exact zeros in some rows (0 log 0)
        q[: n // 4] /= q[: n // 4].sum(axis=1, keepdims=True)
        return ptr, lw, None, q
    a = rng.integers(0, c, n)
    return ptr, lw, a, np.eye(c)[a]


def naive_coverage(ptr, lw, q, mode):
    p = np.zeros((len(ptr) - 1, q.shape[1]))
    for i in range(len(ptr) - 1):
        lo, hi = ptr[i], ptr[i + 1]
        if hi == lo:
            continue
        w = np.exp(lw[lo:hi])
        z = w.sum() if mode == "self_normalized" else hi - lo
        if z > 0:
            p[i] = (w[:, None] * q[lo:hi]).sum(axis=0) / z
    return p


def aspects_kw(a, q, c):
    return {"aspect": a, "n_aspects": c} if a is not None else {"aspect_probs": q}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["self_normalized", "ips"])
@pytest.mark.parametrize("soft", [False, True])
def test_coverage_entropy_diversity_match_naive(rng, soft, mode, backend):
    c = 4
    ptr, lw, a, q = make_prompts(rng, c=c, soft=soft)
    kw = {**aspects_kw(a, q, c), "mode": mode, "backend": backend}
    p = pope.coverage(ptr, lw, **kw)
    p_ref = naive_coverage(ptr, lw, q, mode)
    np.testing.assert_allclose(p, p_ref, rtol=1e-12, atol=1e-15)
    h_ref = entr(p_ref).sum(axis=1)
    np.testing.assert_allclose(
        pope.coverage_entropy(ptr, lw, **kw), h_ref / math.log(c), rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        pope.coverage_entropy(ptr, lw, normalize=False, **kw), h_ref, rtol=1e-12, atol=1e-15
    )
    d = pope.diversity_reward(ptr, lw, **kw)
    seg = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    pk = p_ref[seg]
    with np.errstate(divide="ignore"):
        logp = np.where(pk > 0, np.log(np.where(pk > 0, pk, 1)), 0.0)
    np.testing.assert_allclose(d, -(q * logp).sum(axis=1) / math.log(c), rtol=1e-12, atol=1e-15)
    # the same through a precomputed coverage
    np.testing.assert_allclose(pope.diversity_reward(ptr, p=p_ref, **kw), d, rtol=1e-12)


@pytest.mark.parametrize("soft", [False, True])
def test_decomposition_identity(rng, soft):
    """sum_k w d / sum_k w == H(p_hat)/log C (self-normalised); (1/K) sum_k w d == H (IPS)."""
    c = 5
    ptr, lw, a, q = make_prompts(rng, c=c, soft=soft, empty=False)
    kw = aspects_kw(a, q, c)
    seg = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    w = np.exp(lw)
    for mode in ("self_normalized", "ips"):
        h = pope.coverage_entropy(ptr, lw, mode=mode, **kw)
        d = pope.diversity_reward(ptr, lw, mode=mode, **kw)
        num = np.bincount(seg, weights=w * d)
        den = np.bincount(seg, weights=w) if mode == "self_normalized" else np.diff(ptr)
        np.testing.assert_allclose(num / den, h, rtol=1e-11, atol=1e-14)


def test_jensen_response_entropy_below_coverage_entropy(rng):
    c = 4
    ptr, lw, _, q = make_prompts(rng, c=c, soft=True, empty=False)
    seg = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    w = np.exp(lw)
    resp = np.bincount(seg, weights=w * entr(q).sum(1)) / np.bincount(seg, weights=w)
    h = pope.coverage_entropy(ptr, lw, aspect_probs=q, normalize=False)
    assert np.all(resp <= h + 1e-12)


def test_entropy_gradient_is_weighted_diversity_reward(rng):
    """grad_theta H(p_pi) = E_pi[grad log pi * d] (METHOD.md §3), checked by finite differences.

    A tabular softmax policy over M response types; the log holds every type once, so the
    self-normalised coverage of the target equals p_pi exactly.
    """
    m, c = 6, 3
    q = rng.dirichlet(np.ones(c), m)
    theta = rng.normal(size=m)
    ptr = np.array([0, m])
    log_pi0 = np.full(m, -math.log(m))

    def log_pi(t):
        return t - np.log(np.exp(t).sum())

    def h_of(t):
        return entr(np.exp(log_pi(t)) @ q).sum() / math.log(c)

    lp = log_pi(theta)
    d = pope.diversity_reward(ptr, lp - log_pi0, aspect_probs=q)
    pi = np.exp(lp)
    # grad log pi_j wrt theta = e_j - pi
    grad = sum(pi[j] * d[j] * (np.eye(m)[j] - pi) for j in range(m))
    eps = 1e-6
    fd = np.array([(h_of(theta + eps * e) - h_of(theta - eps * e)) / (2 * eps) for e in np.eye(m)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_feedback_source_equals_arrays(rng):
    c = 3
    ptr, lw, a, _q = make_prompts(rng, c=c)
    n = int(ptr[-1])
    fb = pope.LoggedFeedback(
        prompt_ptr=ptr, signal=np.ones(n), log_logging=np.full(n, -1.0), aspect=a, n_aspects=c
    )
    np.testing.assert_array_equal(
        pope.coverage(fb, lw), pope.coverage(ptr, lw, aspect=a, n_aspects=c)
    )
    np.testing.assert_array_equal(
        pope.diversity_reward(fb, lw), pope.diversity_reward(ptr, lw, aspect=a, n_aspects=c)
    )
    # log_weight=None: the logging policy's own coverage (all weights equal)
    np.testing.assert_allclose(
        pope.coverage(fb), naive_coverage(ptr, np.zeros(n), np.eye(c)[a], "self_normalized")
    )


def test_conventions_single_aspect_zero_weight_and_scale(rng):
    ptr = np.array([0, 2, 2, 5])
    lw = np.array([-np.inf, -np.inf, 0.3, -1.0, 2.0])
    a = np.array([0, 1, 0, 1, 1])
    p = pope.coverage(ptr, lw, aspect=a, n_aspects=2)
    np.testing.assert_array_equal(p[0], 0.0)  # all-zero-weight prompt
    np.testing.assert_array_equal(p[1], 0.0)  # no response
    assert p[2].sum() == pytest.approx(1.0)
    h = pope.coverage_entropy(ptr, lw, aspect=a, n_aspects=2)
    assert h[0] == 0.0 and h[1] == 0.0
    # C = 1: entropy and diversity reward are 0, no division by log 1
    z = np.zeros(5, dtype=np.int64)
    assert np.all(pope.coverage_entropy(ptr, lw, aspect=z, n_aspects=1) == 0.0)
    assert np.all(pope.diversity_reward(ptr, lw, aspect=z, n_aspects=1) == 0.0)
    # self-normalised coverage is invariant to a common shift of the log weights, even one
    # that would overflow exp()
    lw2 = rng.normal(size=5)
    np.testing.assert_allclose(
        pope.coverage(ptr, lw2 + 1000.0, aspect=a, n_aspects=2),
        pope.coverage(ptr, lw2, aspect=a, n_aspects=2),
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="beyond float64"):
        pope.coverage(ptr, lw2 + 1000.0, aspect=a, n_aspects=2, mode="ips")


PTR = np.array([0, 2, 4])
LW = np.zeros(4)
A = np.array([0, 1, 1, 0])
Q = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8], [0.0, 1.0]])

INVALID = [
    ((PTR, LW), {"aspect": A}, ValueError, "n_aspects is required"),
    ((PTR, LW), {"aspect": A, "n_aspects": 1}, ValueError, "out of range"),
    ((PTR, LW), {"aspect": np.array([0, 1, -1, 0]), "n_aspects": 2}, ValueError, "out of range"),
    ((PTR, LW), {"aspect": A, "n_aspects": 0}, ValueError, "n_aspects must be >= 1"),
    ((PTR, LW), {"aspect": A, "n_aspects": 2.5}, TypeError, "n_aspects must be an int"),
    ((PTR, LW), {}, ValueError, "exactly one"),
    ((PTR, LW), {"aspect": A, "aspect_probs": Q, "n_aspects": 2}, ValueError, "exactly one"),
    ((PTR, LW), {"aspect_probs": Q * 1.1}, ValueError, "sum to 1"),
    ((PTR, LW), {"aspect_probs": Q - 0.1}, ValueError, ">= 0"),
    ((PTR, LW), {"aspect_probs": Q[:, 0]}, ValueError, "2-dimensional"),
    ((PTR, LW), {"aspect_probs": Q, "n_aspects": 3}, ValueError, "columns"),
    (
        (np.array([0, 3, 2, 4]), np.zeros(4)),
        {"aspect": A, "n_aspects": 2},
        ValueError,
        "non-decreasing",
    ),
    ((np.array([1, 2, 4]), LW), {"aspect": A, "n_aspects": 2}, ValueError, "start at 0"),
    ((np.array([0, 2, 5]), LW), {"aspect": A, "n_aspects": 2}, ValueError, "must end"),
    ((PTR, np.array([0.0, np.nan, 0, 0])), {"aspect": A, "n_aspects": 2}, ValueError, "NaN"),
    ((PTR, np.array([0.0, np.inf, 0, 0])), {"aspect": A, "n_aspects": 2}, ValueError, r"\+inf"),
    ((PTR, np.zeros(3)), {"aspect": A, "n_aspects": 2}, ValueError, "log_weight has length"),
    ((PTR, LW), {"aspect": A, "n_aspects": 2, "mode": "softmax"}, ValueError, "mode"),
    ((PTR, LW), {"aspect": A, "n_aspects": 2, "backend": "cuda"}, ValueError, "backend"),
]


@pytest.mark.parametrize(("args", "kw", "err", "match"), INVALID)
@pytest.mark.parametrize("fn", ["coverage", "coverage_entropy", "diversity_reward"])
def test_invalid_inputs(fn, args, kw, err, match):
    with pytest.raises(err, match=match):
        getattr(pope, fn)(*args, **kw)


def test_invalid_feedback_combinations(rng):
    fb = pope.LoggedFeedback(
        prompt_ptr=PTR, signal=np.ones(4), log_logging=np.full(4, -1.0), aspect=A
    )
    with pytest.raises(ValueError, match="come from the LoggedFeedback"):
        pope.coverage(fb, LW, aspect=A)
    plain = pope.LoggedFeedback(prompt_ptr=PTR, signal=np.ones(4), log_logging=np.full(4, -1.0))
    with pytest.raises(ValueError, match="no aspects"):
        pope.coverage(plain, LW)
    with pytest.raises(ValueError, match="p must have shape"):
        pope.diversity_reward(fb, p=np.ones((3, 2)) / 2)


def test_inputs_not_modified(rng):
    ptr, lw, _a, q = make_prompts(rng, soft=True)
    arrs = [ptr, lw, q]
    copies = [x.copy() for x in arrs]
    for x in arrs:
        x.flags.writeable = False
    pope.coverage(ptr, lw, aspect_probs=q)
    pope.diversity_reward(ptr, lw, aspect_probs=q)
    pope.coverage_entropy(ptr, lw, aspect_probs=q, mode="ips")
    for x, y in zip(arrs, copies):
        np.testing.assert_array_equal(x, y)


def test_coverage_errors_name_the_argument():
    """A length mismatch names the per-response array; a huge n_aspects is refused up front."""
    with pytest.raises(ValueError, match="aspect has length 4; prompt_ptr ends at 5"):
        pope.coverage(np.array([0, 2, 5]), aspect=np.zeros(4, dtype=int), n_aspects=3)
    with pytest.raises(ValueError, match="aspect_probs has length 3"):
        pope.coverage(np.array([0, 2, 4]), aspect_probs=np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="above the supported maximum"):
        pope.coverage(np.array([0, 2, 4]), aspect=np.zeros(4, dtype=int), n_aspects=10**9)
