"""Polynomial Shannon and Gini-Simpson diversity: coefficients, power sums, estimates, intervals.

References are written independently of the library code: brute-force U-statistics over all
subsets of responses, the estimator formula with a per-prompt influence derivation, SciPy's
folded normal for the bias-aware critical value, Monte Carlo on a world with known coverage.
"""

from __future__ import annotations

import itertools
import math
import warnings
from functools import reduce
from operator import add

import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import comb, entr

import pope
from pope.estimate import InsufficientDataWarning
from pope.estimators import pope_stats
from pope.intervals import bias_aware_critical_value
from pope.polynomial import entropy_polynomial, evaluate_polynomial
from pope.power_sums import power_sums, power_sums_reference

quiet = pytest.mark.filterwarnings("ignore::pope.estimate.InsufficientDataWarning")


# ----------------------------------------------------------------------------- coefficients
def simplex_points(c: int, rng: np.random.Generator) -> np.ndarray:
    """Random, sparse and extreme points of the simplex (independent of the LP's grid)."""
    pts = [np.eye(c)]  # vertices
    for k in range(1, c + 1):  # uniform on k coordinates
        p = np.zeros((1, c))
        p[0, :k] = 1.0 / k
        pts.append(p)
    for conc in (0.01, 0.1, 0.5, 1.0, 5.0, 100.0):
        pts.append(rng.dirichlet(np.full(c, conc), size=2000))
    for k1 in range(1, min(c, 6) + 1):  # two-valued configurations with zeros
        x = rng.uniform(0, 1.0 / k1, size=(200, 1))
        rest = c - k1
        if rest == 0:
            continue
        p = np.zeros((200, c))
        p[:, :k1] = x
        p[:, k1:] = (1.0 - k1 * x) / rest
        pts.append(p)
    return np.vstack(pts)


@pytest.mark.parametrize("c", [2, 4, 5, 16, 256])
@pytest.mark.parametrize("degree", [2, 3, 4, 8])
def test_bias_bound_holds_on_independent_points(c, degree):
    poly = entropy_polynomial(c, degree)
    p = simplex_points(c, np.random.default_rng(c * 10 + degree))
    h = entr(p).sum(axis=1) / math.log(c)
    err = np.abs(evaluate_polynomial(poly, p) - h)
    assert err.max() <= poly.bias_bound + 1e-9
    # and the bound is not vacuous: within 2x of the worst error found (tight for L >= 3)
    assert poly.bias_bound <= 2.0 * err.max() + 1e-6


def test_bias_bound_decreases_with_degree_and_limits():
    for c in (4, 16):
        b = [entropy_polynomial(c, L).bias_bound for L in range(1, 9)]
        assert all(x > y for x, y in itertools.pairwise(b))
    assert entropy_polynomial(4, 1).bias_bound == 0.5  # one response identifies nothing
    assert entropy_polynomial(1, 3).bias_bound == 0.0  # one aspect: D = 0
    with pytest.raises(ValueError, match="degree"):
        entropy_polynomial(4, 0)
    with pytest.raises(TypeError, match="n_aspects"):
        entropy_polynomial(4.0, 2)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- power sums
def brute_power_sums(ptr, w, q, degree):
    n_prompts = len(ptr) - 1
    p_out = np.zeros((n_prompts, degree + 1))
    s_out = np.zeros((n_prompts, degree + 1))
    for i in range(n_prompts):
        ks = list(range(ptr[i], ptr[i + 1]))
        p_out[i, 0] = s_out[i, 0] = 1.0
        for j in range(1, min(degree, len(ks)) + 1):
            subsets = list(itertools.combinations(ks, j))
            s_out[i, j] = np.mean([np.prod(w[list(t)]) for t in subsets])
            p_out[i, j] = np.mean(
                [np.sum(np.prod(w[list(t), None] * q[list(t)], axis=0)) for t in subsets]
            )
    return p_out, s_out


@pytest.mark.parametrize("backend", pope.backends.available_backends())
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("degree", [1, 2, 4])
def test_power_sums_match_brute_force(rng, soft, degree, backend):
    counts = np.array([0, 1, 2, 3, 5, 0, 4, 6, 2])
    ptr = np.concatenate([[0], np.cumsum(counts)])
    n, c = int(ptr[-1]), 3
    w = rng.exponential(size=n)
    w[[2, 9]] = 0.0  # zero weights
    w[5] = 1e-300  # a tiny weight
    labels = rng.integers(0, c, n)
    q = rng.dirichlet(np.ones(c), n) if soft else np.eye(c)[labels]
    args = (None, q) if soft else (labels, None)
    want = brute_power_sums(ptr, w, q, degree)
    for got in (
        power_sums_reference(ptr, w, *args, c, degree),
        power_sums(ptr, w, *args, c, degree, backend=backend),
    ):
        # sums of at most C(6, j) non-negative products: relative rounding ~ 1e-15
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=0)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", pope.backends.available_backends())
def test_power_sums_backends_agree_on_large_ragged_input(rng, backend):
    counts = rng.integers(0, 30, 3000)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    n, c = int(ptr[-1]), 7
    w = np.exp(rng.uniform(-30, 0, n))  # scaled weights in (0, 1], wide spread
    labels = rng.integers(0, c, n)
    soft = rng.dirichlet(np.full(c, 0.3), n)
    for args in ((labels, None), (None, soft)):
        want = power_sums_reference(ptr, w, *args, c, 6)
        got = power_sums(ptr, w, *args, c, 6, backend=backend)
        # same recursion in the same order; only the sum over aspects may be reordered
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-300)


def test_power_sums_are_unbiased(rng):
    """E[P_j] = sum_c p_pi(c)^j and E[S_j] = 1 under pi0 sampling (Monte Carlo, 4 SE)."""
    n_cand, c, k = 6, 3, 4
    pi0 = rng.dirichlet(np.ones(n_cand))
    pi = rng.dirichlet(np.ones(n_cand))
    asp = rng.integers(0, c, n_cand)
    p_true = np.bincount(asp, weights=pi, minlength=c)
    n_prompts = 20000
    y = rng.choice(n_cand, size=(n_prompts, k), p=pi0).ravel()
    ptr = np.arange(0, n_prompts * k + 1, k)
    ps, ss = power_sums(ptr, (pi / pi0)[y], asp[y], None, c, k)
    for j in range(2, k + 1):
        se_p = ps[:, j].std(ddof=1) / math.sqrt(n_prompts)
        se_s = ss[:, j].std(ddof=1) / math.sqrt(n_prompts)
        assert abs(ps[:, j].mean() - (p_true**j).sum()) < 4 * se_p
        assert abs(ss[:, j].mean() - 1.0) < 4 * se_s


# ----------------------------------------------------------------------------- the estimate
def make_log(rng, n_prompts=80, c=4, kmin=2, kmax=6, soft=False):
    k = rng.integers(kmin, kmax + 1, n_prompts)
    ptr = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
    n = int(ptr[-1])
    kw = (
        {"aspect_probs": rng.dirichlet(np.full(c, 0.6), n)}
        if soft
        else {"aspect": rng.integers(0, c, n), "n_aspects": c}
    )
    fb = pope.LoggedFeedback(
        prompt_ptr=ptr,
        signal=rng.poisson(2.0, n).astype(float),
        log_logging=np.log(rng.uniform(0.05, 1, n)),
        **kw,
    )
    return fb, np.log(rng.uniform(0.05, 1, n))


def naive_polynomial(fb, lt, degree, family="shannon"):
    """Value and stderr by the per-prompt influence formula (derived by hand):
    psi_i = c0_i - mean c0 + sum_j [(g_ij P_ij - A_j)/Sbar_j
                                    - A_j/Sbar_j^2 (n/n_j) 1{K_i >= j} (S_ij - Sbar_j)]."""
    c = fb.n_aspects
    q = fb.aspect_probs if fb.aspect_probs is not None else np.eye(c)[fb.aspect]
    w = np.exp(lt - fb.log_logging)
    ptr = fb.prompt_ptr
    ps, ss = brute_power_sums(ptr, w, q, degree)
    k = np.diff(ptr)
    n = k.size

    def coef(L):
        if family == "shannon":
            return entropy_polynomial(c, L)
        kk = c / (c - 1.0)
        return (0.5, (), 0.5) if L == 1 else (kk, (-kk,) + (0.0,) * (L - 2), 0.0)

    def parts(L):
        pl = coef(L)
        return (pl.c0, pl.g, pl.bias_bound) if family == "shannon" else pl

    li = np.minimum(k, degree)
    c0 = np.array([parts(L)[0] for L in li])
    bias = np.mean([parts(L)[2] for L in li])
    value = c0.mean()
    psi = c0 - c0.mean()
    for j in range(2, degree + 1):
        g = np.array([parts(L)[1][j - 2] if L >= j else 0.0 for L in li])
        gj = k >= j
        if not gj.any():
            continue
        sbar = ss[gj, j].mean()
        a_j = (g * ps[:, j]).mean()
        value += a_j / sbar
        psi = (
            psi
            + (g * ps[:, j] - a_j) / sbar
            - a_j / sbar**2 * (n / gj.sum()) * gj * (ss[:, j] - sbar)
        )
    return value, math.sqrt((psi**2).sum() / (n * (n - 1))), bias


@quiet
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("degree", [2, 3])
def test_polynomial_estimate_matches_naive(rng, soft, degree):
    fb, lt = make_log(rng, kmin=1, kmax=5, soft=soft)
    res = pope.evaluate(fb, lt, diversity_degree=degree)
    v, se, b = naive_polynomial(fb, lt, degree)
    assert res.diversity.value == pytest.approx(v, rel=1e-10)
    assert res.diversity.stderr == pytest.approx(se, rel=1e-8)
    assert res.diversity.bias_bound == pytest.approx(b, rel=1e-12)
    assert res.diversity.multiplicity == 1
    assert res.total.bias_bound == pytest.approx(1.0 * b)  # lam = 1
    assert np.nanmean(res.prompt_diversity) == pytest.approx(v, rel=1e-10)
    assert res.diversity.contributions.mean() == pytest.approx(v, rel=1e-10)


@quiet
def test_gini_simpson_matches_naive(rng):
    fb, lt = make_log(rng, kmin=1, kmax=5)
    res = pope.evaluate(fb, lt, diversity="gini_simpson")
    v, se, b = naive_polynomial(fb, lt, 2, family="gini_simpson")
    assert res.diversity.value == pytest.approx(v, rel=1e-10)
    assert res.diversity.stderr == pytest.approx(se, rel=1e-8)
    assert res.diversity.bias_bound == pytest.approx(b)
    assert 0 < res.diagnostics.extra["pair_ess_fraction"] <= 1


@quiet
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"diversity": "gini_simpson"},
        {"diversity_degree": 4, "relevance": "ips"},
        {"coverage": "ips", "clip": 5.0},
    ],
)
def test_shards_merge_exactly(rng, opts):
    fb, lt = make_log(rng, n_prompts=90, kmin=1, kmax=7)
    batch = pope.evaluate(fb, lt, lam=0.7, **opts)
    for n_shards in (2, 5):
        merged = reduce(
            add, [pope_stats(s, lt[s.row_index], lam=0.7, **opts) for s in fb.split(n_shards)]
        ).estimate()
        assert merged.degree == batch.degree
        for name in ("relevance", "diversity", "total"):
            e, m = getattr(batch, name), getattr(merged, name)
            assert m.value == pytest.approx(e.value, rel=1e-12)
            assert m.stderr == pytest.approx(e.stderr, rel=1e-9)
            assert m.ci() == pytest.approx(e.ci(), rel=1e-9)


@quiet
def test_bootstrap_and_backends(rng):
    fb, lt = make_log(rng)
    ref = pope.evaluate(fb, lt, backend="reference")
    for b in pope.backends.available_backends():
        res = pope.evaluate(fb, lt, backend=b)
        assert res.total.value == pytest.approx(ref.total.value, rel=1e-12)
    reps = ref.diversity.bootstrap(400, seed=1)
    # the bootstrap SD agrees with the delta-method stderr (n = 80 prompts: within 25%)
    assert np.std(reps) == pytest.approx(ref.diversity.stderr, rel=0.25)
    lo, hi = ref.diversity.ci(method="bootstrap", n_boot=400, seed=1)
    b = ref.diversity.bias_bound
    plo, phi = np.quantile(reps, [0.025 / 3, 1 - 0.025 / 3])  # multiplicity 3 (degrees 2..4)
    assert (lo, hi) == pytest.approx((max(plo - b, 0.0), min(phi + b, 1.0)))


# ----------------------------------------------------------------------------- intervals
@pytest.mark.parametrize("b", [0.0, 0.3, 1.0, 2.5, 8.0])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
def test_bias_aware_critical_value_is_the_folded_normal_quantile(b, alpha):
    want = sps.foldnorm.ppf(1 - alpha, b)
    assert bias_aware_critical_value(b, alpha) == pytest.approx(want, rel=1e-8)


@quiet
def test_interval_carries_the_bias_bound(rng):
    fb, lt = make_log(rng, n_prompts=300, kmin=2, kmax=2)
    res = pope.evaluate(fb, lt)
    d = res.diversity
    assert res.degree == 2 and d.bias_bound == pytest.approx(entropy_polynomial(4, 2).bias_bound)
    lo, hi = d.ci()
    half = d.stderr * sps.foldnorm.ppf(0.95, d.bias_bound / d.stderr)
    assert (lo, hi) == pytest.approx((max(d.value - half, 0.0), min(d.value + half, 1.0)))
    assert "bias bound" in res.summary()


@quiet
def test_coverage_of_d_on_the_synthetic_world():
    """The default interval covers the true D; the old jackknife default does not."""
    from pope.synthetic import CandidateEnv

    env = CandidateEnv.make(n_prompts=200, n_candidates=8, n_aspects=4, n_groups=3, seed=7)
    pol = env.tilt(utility=2.0, diversity=1.0)
    d_true = env.value(pol, 1.0).diversity
    hits = {"polynomial": 0, "jackknife": 0}
    n_logs = 40
    for s in range(n_logs):
        log = env.sample_logs(n_prompts=300, k=4, seed=np.random.default_rng(s))
        lt = log.log_prob(pol)
        for est in hits:
            lo, hi = pope.evaluate(log.feedback, lt, diversity_estimator=est).diversity.ci()
            hits[est] += lo <= d_true <= hi
    # with true coverage >= 0.95, P(fewer than 34 of 40) < 0.01 (binomial)
    assert hits["polynomial"] >= 34
    assert hits["jackknife"] <= 10


# ----------------------------------------------------------------------------- edge cases
def test_single_response_prompts_are_said_and_bounded(rng):
    fb, lt = make_log(rng, kmin=1, kmax=1)
    with pytest.warns(InsufficientDataWarning, match="single response"):
        res = pope.evaluate(fb, lt)
    assert res.diversity.value == 0.5 and res.diversity.bias_bound == 0.5
    assert res.diversity.ci() == (0.0, 1.0)


@quiet
def test_one_aspect_all_zero_prompt_and_soft_rows(rng):
    fb, lt = make_log(rng, c=1)
    res = pope.evaluate(fb, lt)
    assert res.diversity.value == 0.0 and res.diversity.bias_bound == 0.0
    fb, lt = make_log(rng, soft=True)
    lt[fb.prompt_ptr[3] : fb.prompt_ptr[4]] = -np.inf  # a prompt the target never produces
    for opts in ({}, {"diversity": "gini_simpson"}):
        res = pope.evaluate(fb, lt, **opts)
        for name in ("relevance", "diversity", "total"):
            e = getattr(res, name)
            assert np.isfinite(e.value) and np.isfinite(e.stderr)


def test_single_prompt_and_single_unit_say_so(rng):
    fb, lt = make_log(rng, n_prompts=1, kmin=3, kmax=3)
    with pytest.warns(InsufficientDataWarning, match="only 1 independent unit"):
        res = pope.evaluate(fb, lt)
    assert res.relevance.ci() == (0.0, 1.0)  # the a priori range, not (-inf, inf)
    assert res.total.to_dict()["stderr"] is None
    assert "only 1 independent unit" in res.total.interval_note()


@quiet
def test_low_ess_widens_the_relevance_interval(rng):
    fb, lt = make_log(rng, n_prompts=150, kmin=2, kmax=3)
    lt = fb.log_logging - 40.0  # every weight e^-40 ...
    lt[0] = fb.log_logging[0]  # ... but one: ESS ~ 1
    res = pope.evaluate(fb, lt)
    e = res.relevance
    assert e.diagnostics.ess < 1.01 and e.low_ess
    lo, hi = e.ci()
    floor = math.sqrt(math.log(2 / 0.05) / (2 * e.diagnostics.ess))
    assert hi - lo >= min(2 * floor, 1.0) - 1e-12 or (lo, hi) == (0.0, 1.0)
    assert "widened: ESS" in res.summary()


@quiet
def test_compare_paired_stderr(rng):
    fb, lt_a = make_log(rng, n_prompts=120)
    lt_b = np.minimum(lt_a + rng.normal(0, 0.3, lt_a.size), 0.0)
    cmp = pope.compare(fb, lt_a, lt_b, diversity_degree=2)
    ea, eb = cmp.a, cmp.b
    for name in ("relevance", "diversity", "total"):
        d = getattr(cmp, name)
        assert d.value == pytest.approx(getattr(ea, name).value - getattr(eb, name).value)
        psi = ea.influence(name) - eb.influence(name)
        n = psi.size
        assert d.stderr == pytest.approx(math.sqrt((psi**2).sum() / (n * (n - 1))))
        # correlated estimates: the paired stderr is below the independent one
        assert d.stderr < math.hypot(getattr(ea, name).stderr, getattr(eb, name).stderr)
    b2 = entropy_polynomial(4, 2).bias_bound
    assert cmp.diversity.bias_bound == pytest.approx(2 * b2)
    # the same policy twice: difference exactly 0 with zero stderr
    same = pope.compare(fb, lt_a, lt_a)
    assert same.total.value == 0.0 and same.total.stderr == 0.0


def test_evaluate_rejects_bad_diversity_options(rng):
    fb, lt = make_log(rng)
    with pytest.raises(ValueError, match="diversity_estimator"):
        pope.evaluate(fb, lt, diversity_estimator="nope")
    with pytest.raises(ValueError, match="diversity must be one of"):
        pope.evaluate(fb, lt, diversity="simpson")
    with pytest.raises(ValueError, match="diversity_degree"):
        pope.evaluate(fb, lt, diversity_degree=9)
    with pytest.raises(TypeError, match="diversity_degree"):
        pope.evaluate(fb, lt, diversity_degree=2.0)
    with pytest.raises(ValueError, match="lam must be finite"):
        pope.evaluate(fb, lt, lam=1e200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert comb(5, 2) == 10  # scipy import used by the brute force stays warning-free


def test_lambda_zero_needs_no_aspects_and_outside_range_is_said(rng):
    fb, lt = make_log(rng)
    plain = pope.LoggedFeedback(
        prompt_ptr=fb.prompt_ptr, signal=fb.signal, log_logging=fb.log_logging
    )
    res = pope.evaluate(plain, lt, lam=0.0)
    assert res.diversity.value == 0.0
    assert res.total.value == pytest.approx(pope.evaluate(fb, lt, lam=0.0).relevance.value)
    with pytest.raises(ValueError, match="no aspects"):
        pope.evaluate(plain, lt, lam=1.0)
    from dataclasses import replace

    e = replace(res.diversity, value=1.2, bias_bound=0.1)
    assert "outside the range [0, 1]" in e.interval_note()
