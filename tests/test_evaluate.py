"""pope.evaluate against a naive per-prompt implementation; merging, bootstrap, invalid inputs."""

from __future__ import annotations

import math
from functools import reduce
from operator import add

import numpy as np
import pytest
from scipy.special import entr

import pope
from pope.backends import available_backends, reference
from pope.estimators import pope_stats

BACKENDS = available_backends()


def make_feedback(rng, n_prompts=60, c=4, soft=False, tokens=False, zero_prompt=True):
    k = rng.integers(1, 6, n_prompts)
    k[3] = 0  # a prompt without responses
    ptr = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
    n = int(ptr[-1])
    kw = {}
    if soft:
        kw["aspect_probs"] = rng.dirichlet(np.full(c, 0.7), n)
    else:
        kw["aspect"] = rng.integers(0, c, n)
        kw["n_aspects"] = c
    if tokens:
        tc = rng.integers(1, 8, n)
        tc[0] = 0  # a response without tokens
        kw["token_ptr"] = np.concatenate([[0], np.cumsum(tc)]).astype(np.int64)
        kw["token_log_logging"] = np.log(rng.uniform(0.05, 1, int(tc.sum())))
    fb = pope.LoggedFeedback(
        prompt_ptr=ptr,
        signal=rng.poisson(2.0, n).astype(float),
        log_logging=np.log(rng.uniform(0.05, 1, n)),
        **kw,
    )
    lt = np.log(rng.uniform(0.05, 1, n))
    if zero_prompt:
        lt[ptr[5] : ptr[6]] = -np.inf  # the target never produces prompt 5's logged responses
    return fb, lt


def naive_entropy(w, q, z_of):
    """Coverage entropy (nats) of rows q with weights w; ``z_of(w)`` is the normaliser."""
    z = z_of(w)
    return entr((w[:, None] * q).sum(0) / z).sum() if z > 0 else 0.0


def naive_jackknife(w, q, z_of):
    """Delete-one-response jackknife by brute force (plug-in if K <= 1 or nothing is left)."""
    k = len(w)
    h = naive_entropy(w, q, z_of)
    if k <= 1 or z_of(w) <= 0:
        return h
    loo = []
    for j in range(k):
        m = np.arange(k) != j
        loo.append(naive_entropy(w[m], q[m], z_of) if z_of(w[m]) > 0 else h)
    return k * h - (k - 1) / k * sum(loo)


def naive_pope(
    fb,
    lw,
    *,
    lam=1.0,
    relevance="snips",
    coverage="self_normalized",
    diversity="coverage",
    diversity_estimator="jackknife",
):
    """Per-prompt loops in probability space; rewards normalised by the per-prompt max."""
    c = fb.n_aspects
    q = fb.aspect_probs if fb.aspect_probs is not None else np.eye(c)[fb.aspect]
    ptr, u = fb.prompt_ptr, fb.signal
    a, b, h, D = [], [], [], []
    for i in range(len(ptr) - 1):
        lo, hi = ptr[i], ptr[i + 1]
        if hi == lo:
            continue
        mx = u[lo:hi].max()
        r = u[lo:hi] / mx if mx > 0 else np.zeros(hi - lo)
        w = np.exp(lw[lo:hi])
        a.append((w * r).sum())
        b.append(w.sum() if relevance == "snips" else hi - lo)
        z = w.sum() if coverage == "self_normalized" else hi - lo
        ok = z > 0
        if diversity == "coverage":

            def z_of(v):
                return v.sum() if coverage == "self_normalized" else len(v)

            if diversity_estimator == "jackknife":
                hh = naive_jackknife(w, q[lo:hi], z_of) / math.log(c) if ok else 0.0
            else:
                p = (w[:, None] * q[lo:hi]).sum(0) / z if ok else np.zeros(c)
                hh = entr(p).sum() / math.log(c)
        else:
            hh = (w * entr(q[lo:hi]).sum(1)).sum() / z / math.log(c) if ok else 0.0
        h.append(hh)
        D.append(float(ok))
    a, b, h, D = map(np.array, (a, b, h, D))
    nu, nd = a.size, D.sum()
    R = a.sum() / b.sum()
    div = (h * D).sum() / nd
    bbar = b.mean()
    psi_rel = (a - R * b) / bbar
    psi_div = D * (h - div)
    psi = psi_rel + lam * nu / nd * psi_div
    se = lambda x, m: math.sqrt((x**2).sum() / (m * (m - 1)))  # noqa: E731
    return {
        "relevance": (R, se(psi_rel, nu)),
        # delta method of the ratio of means over all units (the indicator of the diversity
        # prompts is random too), the same influence values that enter the total
        "diversity": (div, se(nu / nd * psi_div, nu)),
        "total": (R + lam * div, se(psi, nu)),
    }


OPTIONS = [
    {"relevance": rel, "coverage": cov, "diversity": div, "diversity_estimator": de}
    for rel in ("snips", "ips")
    for cov in ("self_normalized", "ips")
    for div in ("coverage", "response_entropy")
    for de in ("jackknife", "plugin")
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("opts", OPTIONS)
def test_matches_naive(rng, opts, soft, backend):
    fb, lt = make_feedback(rng, soft=soft)
    res = pope.evaluate(fb, lt, lam=0.7, clip=6.0, backend=backend, **opts)
    lw = np.minimum(lt - fb.log_logging, math.log(6.0))
    ref = naive_pope(fb, lw, lam=0.7, **opts)
    for name in ("relevance", "diversity", "total"):
        est = getattr(res, name)
        v, se = ref[name]
        assert est.value == pytest.approx(v, rel=1e-11, abs=1e-14), name
        assert est.stderr == pytest.approx(se, rel=1e-8, abs=1e-14), name
        # per-prompt contributions average to the estimate
        assert est.contributions.mean() == pytest.approx(v, rel=1e-11, abs=1e-14)
    np.testing.assert_allclose(
        res.total.contributions, res.relevance.contributions + 0.7 * res.diversity.contributions
    )
    assert res.relevance.n == fb.n_prompts - 1  # the empty prompt is not a unit


def test_backends_agree(rng):
    fb, lt = make_feedback(rng, soft=True)
    ref = pope.evaluate(fb, lt, backend="reference")
    for b in BACKENDS:
        res = pope.evaluate(fb, lt, backend=b)
        for name in ("relevance", "diversity", "total"):
            assert getattr(res, name).value == pytest.approx(getattr(ref, name).value, rel=1e-12)
            assert getattr(res, name).stderr == pytest.approx(getattr(ref, name).stderr, rel=1e-9)
        np.testing.assert_allclose(
            res.total.bootstrap(40, 2), ref.total.bootstrap(40, 2), rtol=1e-10
        )


def test_per_prompt_outputs_and_identity(rng):
    fb, lt = make_feedback(rng, soft=True)
    res = pope.evaluate(fb, lt, lam=0.5, diversity_estimator="plugin")
    lw = lt - fb.log_logging
    np.testing.assert_allclose(res.log_weight, lw)
    seg = fb.prompt_index
    w = np.exp(lw)
    num = np.bincount(seg, weights=w * res.diversity_reward, minlength=fb.n_prompts)
    den = np.bincount(seg, weights=w, minlength=fb.n_prompts)
    ok = den > 0
    # the decomposition: weighted mean of d over a prompt equals its normalised entropy
    np.testing.assert_allclose(num[ok] / den[ok], res.prompt_diversity[ok], rtol=1e-11)
    assert np.isnan(res.prompt_diversity[3]) and np.isnan(res.prompt_diversity[5])
    np.testing.assert_allclose(res.p_hat[ok].sum(axis=1), 1.0)
    np.testing.assert_array_equal(res.p_hat[~ok], 0.0)
    np.testing.assert_allclose(res.decomposed_reward, res.reward + 0.5 * res.diversity_reward)
    assert res.diagnostics.extra["n_diversity_prompts"] == fb.n_prompts - 2
    assert "relevance" in res.summary()
    # the jackknife corrects h_i only: coverage and the decomposed reward d are the plug-in's
    jk = pope.evaluate(fb, lt, lam=0.5, diversity_estimator="jackknife")
    np.testing.assert_array_equal(jk.p_hat, res.p_hat)
    np.testing.assert_array_equal(jk.diversity_reward, res.diversity_reward)
    np.testing.assert_array_equal(np.isnan(jk.prompt_diversity), np.isnan(res.prompt_diversity))
    assert jk.diversity.value > res.diversity.value  # corrects the plug-in's downward bias
    assert jk.relevance.value == res.relevance.value


def test_lambda_zero_and_single_aspect(rng):
    fb, lt = make_feedback(rng)
    r0 = pope.evaluate(fb, lt, lam=0.0)
    assert r0.total.value == r0.relevance.value
    assert r0.total.stderr == pytest.approx(r0.relevance.stderr, rel=1e-12)
    n = fb.n_responses
    one = pope.LoggedFeedback(
        prompt_ptr=fb.prompt_ptr,
        signal=fb.signal,
        log_logging=fb.log_logging,
        aspect=np.zeros(n, dtype=int),
    )
    r1 = pope.evaluate(one, lt, lam=2.0)
    assert r1.diversity.value == 0.0
    assert r1.total.value == pytest.approx(r1.relevance.value, rel=1e-14)


def test_relevance_matches_snips_and_ips_on_rewards(rng):
    fb, lt = make_feedback(rng)
    r = fb.rewards("max")
    res = pope.evaluate(fb, lt)
    s = pope.estimators.snips(reward=r, log_target=lt, log_logging=fb.log_logging)
    assert res.relevance.value == pytest.approx(s.value, rel=1e-12)
    res_i = pope.evaluate(fb, lt, relevance="ips")
    i = pope.estimators.ips(reward=r, log_target=lt, log_logging=fb.log_logging)
    assert res_i.relevance.value == pytest.approx(i.value, rel=1e-12)


def test_token_mean_weighting(rng):
    fb, _lt = make_feedback(rng, tokens=True, zero_prompt=False)
    tlt = np.log(rng.uniform(0.05, 1, fb.token_log_logging.size))
    res = pope.evaluate(
        fb, token_log_target=tlt, weighting="token_mean", diversity_estimator="jackknife"
    )
    tp = fb.token_ptr
    lw = np.array(
        [
            np.mean(tlt[tp[j] : tp[j + 1]] - fb.token_log_logging[tp[j] : tp[j + 1]])
            if tp[j + 1] > tp[j]
            else 0.0
            for j in range(fb.n_responses)
        ]
    )
    ref = naive_pope(fb, lw)
    for name in ("relevance", "diversity", "total"):
        assert getattr(res, name).value == pytest.approx(ref[name][0], rel=1e-11)
    np.testing.assert_allclose(res.log_weight, lw, rtol=1e-12)


def test_row_index_alignment(rng):
    """log_target given per input row is aligned with feedback.row_index."""
    n = 200
    pid = rng.integers(0, 30, n)
    sig = rng.poisson(2.0, n).astype(float)
    ll = np.log(rng.uniform(0.05, 1, n))
    asp = rng.integers(0, 3, n)
    lt_in = np.log(rng.uniform(0.05, 1, n))
    fb = pope.LoggedFeedback.from_arrays(
        prompt_id=pid, signal=sig, log_logging=ll, aspect=asp, n_aspects=3
    )
    res = pope.evaluate(fb, lt_in[fb.row_index], diversity_estimator="jackknife")
    # independent: group by prompt id by hand, in first-appearance order
    order = []
    for p in pid:
        if p not in order:
            order.append(p)
    rows = [np.flatnonzero(pid == p) for p in order]
    ptr = np.concatenate([[0], np.cumsum([len(x) for x in rows])])
    idx = np.concatenate(rows)
    fb2 = pope.LoggedFeedback(
        prompt_ptr=ptr, signal=sig[idx], log_logging=ll[idx], aspect=asp[idx], n_aspects=3
    )
    ref = naive_pope(fb2, lt_in[idx] - ll[idx])
    assert res.total.value == pytest.approx(ref["total"][0], rel=1e-11)


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("n_shards", [2, 5])
def test_merge_equals_batch(rng, opts, n_shards):
    fb, lt = make_feedback(rng, n_prompts=80, soft=True)
    kw = {"lam": 0.8, "clip": 8.0, **opts}
    batch = pope.evaluate(fb, lt, **kw)
    shards = [pope_stats(s, lt[s.row_index], **kw) for s in fb.split(n_shards)]
    merged = reduce(add, shards).estimate()
    for name in ("relevance", "diversity", "total"):
        a, b = getattr(merged, name), getattr(batch, name)
        assert a.value == pytest.approx(b.value, rel=1e-12, abs=1e-15), name
        assert a.stderr == pytest.approx(b.stderr, rel=1e-9, abs=1e-15), name
    assert merged.diagnostics.ess == pytest.approx(batch.diagnostics.ess, rel=1e-12)
    assert merged.p_hat is None
    with pytest.raises(ValueError, match="merged"):
        _ = merged.decomposed_reward


def test_merge_with_different_weight_scales(rng):
    """Shards whose weights live on scales e^300 apart still merge exactly (rescaling)."""
    fb, lt = make_feedback(rng, n_prompts=40, zero_prompt=False)
    ll = fb.log_logging.copy()
    ll[fb.prompt_ptr[20] :] -= 300.0
    fb2 = pope.LoggedFeedback(
        prompt_ptr=fb.prompt_ptr,
        signal=fb.signal,
        log_logging=ll,
        aspect=fb.aspect,
        n_aspects=fb.n_aspects,
    )
    batch = pope.evaluate(fb2, lt)
    merged = (
        pope_stats(fb2.select_prompts(range(20)), lt[: fb.prompt_ptr[20]])
        + pope_stats(fb2.select_prompts(range(20, 40)), lt[fb.prompt_ptr[20] :])
    ).estimate()
    assert merged.total.value == pytest.approx(batch.total.value, rel=1e-12)
    assert merged.total.stderr == pytest.approx(batch.total.stderr, rel=1e-9)
    with pytest.raises(ValueError, match="lam"):
        _ = pope_stats(fb2, lt, lam=1.0) + pope_stats(fb2, lt, lam=2.0)
    with pytest.raises(ValueError, match="options"):
        _ = pope_stats(fb2, lt) + pope_stats(fb2, lt, clip=3.0)
    # weights beyond float64: IPS relevance refuses clearly, SNIPS relevance is unaffected
    big = pope.LoggedFeedback(
        prompt_ptr=fb.prompt_ptr,
        signal=fb.signal,
        log_logging=fb.log_logging - 750.0,
        aspect=fb.aspect,
        n_aspects=fb.n_aspects,
    )
    with pytest.raises(pope.WeightOverflowError, match="snips"):
        pope.evaluate(big, lt, relevance="ips")
    res = pope.evaluate(big, lt)
    ref = pope.evaluate(fb, lt)
    assert res.total.value == pytest.approx(ref.total.value, rel=1e-10)


def test_bootstrap_resamples_prompts(rng):
    """Replicate b equals evaluate() on the feedback restricted to the resampled prompts."""
    fb, lt = make_feedback(rng, n_prompts=30)
    res = pope.evaluate(fb, lt, lam=0.6)
    units = np.flatnonzero(fb.counts > 0)
    reps = res.total.bootstrap(4, seed=9)
    counts = reference.bootstrap_counts(units.size, 9, 0, 4)  # per unit
    for b in range(4):
        idx = np.repeat(units, counts[b])
        sub = fb.select_prompts(idx)
        expect = pope.evaluate(sub, lt[sub.row_index], lam=0.6).total.value
        assert reps[b] == pytest.approx(expect, rel=1e-11)


def test_lower_bound_is_refused(rng):
    fb, lt = make_feedback(rng)
    res = pope.evaluate(fb, lt)
    with pytest.raises(ValueError, match="no finite-sample bound"):
        res.total.lower_bound()
    lo, hi = res.total.ci(method="t")
    assert lo < res.total.value < hi


def _fb():
    return pope.LoggedFeedback(
        prompt_ptr=[0, 2, 3],
        signal=[1.0, 2.0, 0.0],
        log_logging=[-1.0, -2.0, -0.5],
        aspect=[0, 1, 1],
        n_aspects=2,
    )


LT = np.array([-1.0, -1.0, -1.0])
INVALID = [
    ({"feedback": {"a": 1}}, TypeError, "LoggedFeedback"),
    ({"log_target": None}, TypeError, "log_target is required"),
    ({"log_target": LT[:2]}, ValueError, "log_target has length 2"),
    ({"log_target": np.array([-1.0, np.nan, -1.0])}, ValueError, "NaN"),
    ({"log_target": np.array([-1.0, np.inf, -1.0])}, ValueError, r"\+inf"),
    ({"log_target": np.array([-1.0, 0.3, -1.0])}, ValueError, "log-probabilities"),
    ({"lam": -1.0}, ValueError, "lam must be finite and >= 0"),
    ({"lam": np.inf}, ValueError, "lam"),
    ({"lam": "1"}, TypeError, "lam"),
    ({"relevance": "dr"}, ValueError, "relevance must be one of"),
    ({"coverage": "mean"}, ValueError, "coverage must be one of"),
    ({"diversity": "gini"}, ValueError, "diversity must be one of"),
    ({"weighting": "token_sum"}, ValueError, "weighting must be one of"),
    ({"weighting": "token_mean"}, ValueError, "token_log_target"),
    ({"weighting": "token_mean", "log_target": None}, ValueError, "token_log_logging"),
    ({"token_log_target": np.zeros(3)}, ValueError, "only used with"),
    ({"clip": -1.0}, ValueError, "clip"),
    ({"alpha": 0.0}, ValueError, "alpha"),
    ({"alpha": 1.5}, ValueError, "alpha"),
    ({"backend": "opencl"}, ValueError, "backend"),
    ({"reward_normalization": "zscore"}, ValueError, "reward normalization"),
]


@pytest.mark.parametrize(("patch", "err", "match"), INVALID)
def test_invalid_inputs(patch, err, match):
    kw = {"feedback": _fb(), "log_target": LT, **patch}
    fb = kw.pop("feedback")
    lt = kw.pop("log_target")
    with pytest.raises(err, match=match):
        pope.evaluate(fb, lt, **kw)


def test_invalid_feedback_states():
    plain = pope.LoggedFeedback(prompt_ptr=[0, 2], signal=[1.0, 2.0], log_logging=[-1.0, -1.0])
    with pytest.raises(ValueError, match="no aspects"):
        pope.evaluate(plain, np.array([-1.0, -1.0]))
    with pytest.raises(ValueError, match="zero"):
        pope.evaluate(_fb(), np.full(3, -np.inf))


def test_inputs_not_modified(rng):
    fb, lt = make_feedback(rng, soft=True)
    lt_copy = lt.copy()
    lt.flags.writeable = False
    res = pope.evaluate(fb, lt, clip=3.0)
    _ = res.total.contributions, res.total.bootstrap(10)
    np.testing.assert_array_equal(lt, lt_copy)
