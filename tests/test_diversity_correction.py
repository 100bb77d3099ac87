"""The jackknife-corrected coverage entropy (``diversity_estimator="jackknife"``).

Against an independent brute-force loop over prompts and deleted responses; its statistical
behaviour on :class:`pope.synthetic.CandidateEnv` (exact expectations, Monte Carlo with fixed
seeds and tolerances from standard errors); shard merging and backend agreement.
"""

from __future__ import annotations

import math
from functools import reduce
from operator import add

import numpy as np
import pytest
from scipy.special import entr

import pope
from pope.backends import available_backends
from pope.estimators import pope_stats
from pope.synthetic import CandidateEnv

BACKENDS = available_backends()


def brute_jackknife(ptr, lw, q, self_normalized):
    """Per-prompt loops, weights in probability space, fresh sums for every deletion (nats)."""
    out = np.zeros(len(ptr) - 1)
    for i in range(len(ptr) - 1):
        lo, hi = ptr[i], ptr[i + 1]
        k = hi - lo
        if k == 0:
            continue
        w, qq = np.exp(lw[lo:hi]), q[lo:hi]

        def ent(m, w=w, qq=qq):
            z = w[m].sum() if self_normalized else m.sum()
            return entr((w[m, None] * qq[m]).sum(0) / z).sum() if z > 0 else None

        h = ent(np.ones(k, dtype=bool))
        if h is None:  # no positive weight: not a diversity unit; the library reports 0
            continue
        if k == 1:
            out[i] = h
            continue
        loo = []
        for j in range(k):
            hj = ent(np.arange(k) != j)
            loo.append(h if hj is None else hj)
        out[i] = k * h - (k - 1) / k * sum(loo)
    return out


def ragged(rng, n_prompts=120, c=5, soft=False):
    """Ragged K in 0..7 (K = 0 and 1 included), scattered zero weights, a few special prompts."""
    k = rng.integers(0, 8, n_prompts)
    k[:4] = [0, 1, 3, 4]
    ptr = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
    n = int(ptr[-1])
    lw = rng.normal(0.0, 1.5, n)
    lw[rng.uniform(size=n) < 0.15] = -np.inf  # scattered zero weights
    lw[ptr[2] : ptr[3]] = [0.0, -np.inf, -np.inf]  # one positive weight: the plug-in
    lw[ptr[3] : ptr[4]] = [0.0, -35.0, -40.0, -38.0]  # one dominant weight
    if soft:
        q = rng.dirichlet(np.full(c, 0.6), n)
        q[: n // 5, 0] = 0.0  # exact zeros (0 log 0)
        q[: n // 5] /= q[: n // 5].sum(axis=1, keepdims=True)
        return ptr, lw, {"aspect_probs": q}, q
    a = rng.integers(0, c, n)
    return ptr, lw, {"aspect": a, "n_aspects": c}, np.eye(c)[a]


@pytest.mark.parametrize("mode", ["self_normalized", "ips"])
@pytest.mark.parametrize("soft", [False, True])
def test_jackknife_matches_brute_force(rng, soft, mode):
    c = 5
    ptr, lw, kw, q = ragged(rng, c=c, soft=soft)
    got = pope.coverage_entropy(ptr, lw, mode=mode, estimator="jackknife", normalize=False, **kw)
    ref = brute_jackknife(ptr, lw, q, mode == "self_normalized")
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    plug = pope.coverage_entropy(ptr, lw, mode=mode, normalize=False, **kw)
    k = np.diff(ptr)
    np.testing.assert_allclose(got[k == 1], plug[k == 1], rtol=1e-13, atol=1e-15)
    if mode == "self_normalized":
        np.testing.assert_allclose(got[2], plug[2], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(
        pope.coverage_entropy(ptr, lw, mode=mode, estimator="jackknife", **kw),
        got / math.log(c),
        rtol=1e-14,
        atol=1e-15,
    )


def test_jackknife_edge_cases():
    # one aspect: everything 0; no responses at all
    assert np.all(
        pope.coverage_entropy(
            [0, 2, 3], [0.0, 1.0, 0.0], aspect=[0, 0, 0], n_aspects=1, estimator="jackknife"
        )
        == 0.0
    )
    assert pope.coverage_entropy(
        [0, 0], None, aspect=np.zeros(0, int), n_aspects=3, estimator="jackknife"
    ).tolist() == [0.0]
    # equal weights, two different labels out of K = 2: 2 H(1/2, 1/2) - 1/2 (0 + 0) = 2 log 2
    h = pope.coverage_entropy(
        [0, 2], None, aspect=[0, 1], n_aspects=4, normalize=False, estimator="jackknife"
    )
    assert h[0] == pytest.approx(2 * math.log(2), rel=1e-14)
    # a zero-weight response deletes nothing: jackknife over K = 3 with w = (1, 1, 0)
    h3 = pope.coverage_entropy(
        [0, 3],
        [0.0, 0.0, -np.inf],
        aspect=[0, 1, 2],
        n_aspects=3,
        normalize=False,
        estimator="jackknife",
    )
    assert h3[0] == pytest.approx(3 * math.log(2) - 2 / 3 * (0 + 0 + math.log(2)), rel=1e-14)
    # all weights zero (self-normalised): 0, and the prompt is not a diversity unit
    z = pope.coverage_entropy(
        [0, 2], [-np.inf, -np.inf], aspect=[0, 1], n_aspects=2, estimator="jackknife"
    )
    assert z.tolist() == [0.0]
    with pytest.raises(ValueError, match="estimator must be one of"):
        pope.coverage_entropy([0, 2], None, aspect=[0, 1], n_aspects=2, estimator="mm")


def test_jackknife_is_accurate_with_huge_weight_ranges():
    """Weights e^300 apart: the dominant response's deletion is summed afresh, not subtracted."""
    lw = np.array([300.0, 0.0, 0.0, -1.0])
    a = np.array([0, 1, 2, 1])
    got = pope.coverage_entropy(
        [0, 4], lw, aspect=a, n_aspects=3, normalize=False, estimator="jackknife"
    )
    # exact: H(p_hat) ~ 0 up to e^-300; deleting the dominant response leaves the others
    w_rest = np.exp(lw[1:])
    p_rest = np.bincount(a[1:], weights=w_rest, minlength=3) / w_rest.sum()
    expect = -3 / 4 * entr(p_rest).sum()
    assert got[0] == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("soft", [False, True])
def test_evaluate_jackknife_merge_and_backends(rng, soft):
    """Shards merge to the batch result exactly; every backend gives the same estimates."""
    ptr, lw, kw, _ = ragged(rng, n_prompts=90, soft=soft)
    n = int(ptr[-1])
    ll = np.log(rng.uniform(0.05, 1.0, n))
    fb = pope.LoggedFeedback(
        prompt_ptr=ptr, signal=rng.poisson(2.0, n).astype(float), log_logging=ll, **kw
    )
    lt = np.minimum(ll + lw, 0.0)
    opts = {"lam": 0.8, "diversity_estimator": "jackknife"}
    batch = pope.evaluate(fb, lt, **opts)
    # the corrected per-prompt values are the cluster units of the stderr
    hd = batch.prompt_diversity[~np.isnan(batch.prompt_diversity)]
    assert batch.diversity.value == pytest.approx(hd.mean(), rel=1e-13)
    # delta method of the ratio of means over the nu units (zero-weight prompts are units
    # outside the diversity): psi_i = (nu / nd) 1_i^D (h_i - D)
    nu, nd = batch.relevance.n, hd.size
    psi = nu / nd * (hd - hd.mean())
    assert batch.diversity.stderr == pytest.approx(
        math.sqrt((psi**2).sum() / (nu * (nu - 1))), rel=1e-9
    )
    for n_shards in (2, 7):
        merged = reduce(
            add, [pope_stats(s, lt[s.row_index], **opts) for s in fb.split(n_shards)]
        ).estimate()
        for name in ("relevance", "diversity", "total"):
            assert getattr(merged, name).value == pytest.approx(
                getattr(batch, name).value, rel=1e-12, abs=1e-15
            )
            assert getattr(merged, name).stderr == pytest.approx(
                getattr(batch, name).stderr, rel=1e-9
            )
    with pytest.raises(ValueError, match="options"):
        _ = pope_stats(fb, lt, **opts) + pope_stats(fb, lt, lam=0.8, diversity_estimator="plugin")
    for b in BACKENDS:
        res = pope.evaluate(fb, lt, backend=b, **opts)
        for name in ("relevance", "diversity", "total"):
            assert getattr(res, name).value == pytest.approx(getattr(batch, name).value, rel=1e-12)
            assert getattr(res, name).stderr == pytest.approx(getattr(batch, name).stderr, rel=1e-9)
        np.testing.assert_allclose(
            res.total.bootstrap(40, 3), batch.total.bootstrap(40, 3), rtol=1e-10
        )
    with pytest.raises(ValueError, match="diversity_estimator must be one of"):
        pope.evaluate(fb, lt, diversity_estimator="miller_madow")


@pytest.fixture(scope="module")
def env() -> CandidateEnv:
    return CandidateEnv.make(n_prompts=300, n_candidates=10, n_aspects=4, seed=11)


def _estimates(env, pol, k, reps, n_prompts, seed):
    """D-hat of both estimators over ``reps`` independent logs of a fixed seed."""
    out = {"plugin": [], "jackknife": []}
    for r in range(reps):
        log = env.sample_logs(n_prompts=n_prompts, k=k, seed=np.random.default_rng([seed, r]))
        lt = log.log_prob(pol)
        for est in out:
            pe = pope.evaluate(
                log.feedback, lt, reward_normalization="none", diversity_estimator=est
            )
            out[est].append(pe.diversity.value)
    return {e: np.asarray(v) for e, v in out.items()}


def test_on_policy_expectation_is_exact(env):
    """On policy (w = 1) with hard aspects, E[h^J] = K D_K - (K-1) D_{K-1} exactly."""
    k, reps, n = 4, 20, 1000
    pol = env.logging_policy
    dk = env.list_diversity(pol, k)[0]
    dk1 = env.list_diversity(pol, k - 1)[0]
    est = _estimates(env, pol, k, reps, n, seed=7)
    for name, expect in (("plugin", dk), ("jackknife", k * dk - (k - 1) * dk1)):
        v = est[name]
        se = v.std(ddof=1) / math.sqrt(reps)
        assert abs(v.mean() - expect) <= 4 * se, name


def test_jackknife_bias_smaller_than_plugin_off_policy(env):
    """K = 4, a tilted target (self-normalised weights): |bias| drops by more than 4 SEs."""
    k, reps, n = 4, 20, 1000
    pol = env.tilt(utility=2.0, diversity=1.0)
    truth = env.value(pol).diversity
    est = _estimates(env, pol, k, reps, n, seed=8)
    bias = {e: v.mean() - truth for e, v in est.items()}
    se = {e: v.std(ddof=1) / math.sqrt(reps) for e, v in est.items()}
    assert bias["plugin"] < -4 * se["plugin"]  # the plug-in is biased low
    gap = abs(bias["plugin"]) - abs(bias["jackknife"])
    assert gap > 4 * math.hypot(se["plugin"], se["jackknife"]), (bias, se)
