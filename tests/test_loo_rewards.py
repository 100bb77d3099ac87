"""Leave-one-out diversity rewards: reference vs brute force, identities, torch objective, and
the Monte Carlo test that the score-function gradient with the LOO reward is unbiased."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pope.loo_rewards import loo_rewards_reference, reward_coefficients
from pope.power_sums import power_sums_reference

# ----------------------------------------------------------------------------- helpers


def ragged(
    seed: int, counts=(3, 1, 0, 4, 2, 5), c: int = 3, soft: bool = False, zero_weights: bool = True
):
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    n = int(ptr[-1])
    w = rng.exponential(size=n)
    if zero_weights:
        w[rng.random(n) < 0.2] = 0.0
    if soft:
        q = rng.dirichlet(np.full(c, 0.7), size=n)
    else:
        q = np.eye(c)[rng.integers(0, c, n)]
    return ptr, w, q


def brute(ptr, w, q, diversity, degree, normalization):
    """Explicit loops over the subsets of the other responses (no DP)."""
    c = q.shape[1]
    lmax, polys = reward_coefficients(diversity, c, degree)
    counts = np.diff(ptr)
    x = w[:, None] * q

    def s_full(i, m):
        rows = range(ptr[i], ptr[i + 1])
        subs = list(itertools.combinations(rows, m))
        return sum(math.prod(w[list(s)]) for s in subs) / len(subs)

    f = {m: 1.0 for m in range(lmax)}
    if normalization == "pooled":
        for m in range(1, lmax):
            s = [s_full(i, m) for i in range(len(counts)) if counts[i] > m]
            f[m] = len(s) / sum(s) if s and sum(s) > 0 else 0.0
    val, grad = np.zeros(len(w)), np.zeros(len(w))
    for i in range(len(counts)):
        rows = list(range(ptr[i], ptr[i + 1]))
        if not rows:
            continue
        li = min(lmax, len(rows))
        poly = polys[li]
        for k in rows:
            others = [r for r in rows if r != k]
            v = g = poly.c0
            for j in range(2, li + 1):
                subs = list(itertools.combinations(others, j - 1))
                t = sum(q[k] @ np.prod(x[list(s)], axis=0) for s in subs) / len(subs)
                if normalization == "pooled":
                    t *= f[j - 1]
                elif normalization == "prompt":
                    sw = sum(math.prod(w[list(s)]) for s in subs) / len(subs)
                    t = t / sw if sw > 0 else 0.0
                v += poly.g[j - 2] * t
                g += j * poly.g[j - 2] * t
            val[k], grad[k] = v, g
    return val, grad


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("normalization", ["ips", "pooled", "prompt"])
@pytest.mark.parametrize(
    "diversity,degree",
    [("coverage", None), ("coverage", 3), ("coverage", 2), ("gini_simpson", None)],
)
@pytest.mark.parametrize("soft", [False, True])
def test_reference_matches_brute_force(normalization, diversity, degree, soft):
    ptr, w, q = ragged(7 + soft + 3 * (degree or 0), soft=soft, c=4)
    res = loo_rewards_reference(
        ptr, w, q, diversity=diversity, degree=degree, normalization=normalization
    )
    v, g = brute(ptr, w, q, diversity, degree, normalization)
    # sums of <= C(4, 3) products of O(1) numbers in float64: rounding ~1e-15 relative
    np.testing.assert_allclose(res.value, v, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(res.gradient, g, rtol=1e-12, atol=1e-13)
    counts = np.diff(ptr)
    lmax = 2 if diversity == "gini_simpson" else (degree or 4)
    np.testing.assert_array_equal(res.degree, np.minimum(counts, lmax))


def test_single_response_prompts_get_the_degree_one_constant():
    ptr, w, q = ragged(3, counts=(1, 1, 2), c=3)
    for div in ("coverage", "gini_simpson"):
        res = loo_rewards_reference(ptr, w, q, diversity=div)
        assert res.value[0] == res.value[1] == 0.5
        assert res.gradient[0] == res.gradient[1] == 0.5
        assert res.value[2] != 0.5


def test_single_aspect_gives_zero_rewards():
    ptr, w, _ = ragged(3, counts=(3, 2))
    res = loo_rewards_reference(ptr, w, np.ones((5, 1)))
    assert np.all(res.value == 0) and np.all(res.gradient == 0)


def test_gini_simpson_is_the_documented_closed_form():
    ptr, w, q = ragged(5, counts=(4, 3, 2), c=3, soft=True)
    c = 3
    for norm in ("ips", "prompt"):
        res = loo_rewards_reference(ptr, w, q, diversity="gini_simpson", normalization=norm)
        for i in range(3):
            for k in range(ptr[i], ptr[i + 1]):
                oth = [r for r in range(ptr[i], ptr[i + 1]) if r != k]
                den = len(oth) if norm == "ips" else w[oth].sum()
                p = (w[oth, None] * q[oth]).sum(0) / den
                d = (1 - q[k] @ p) / (1 - 1 / c)
                assert res.value[k] == pytest.approx(d, rel=1e-12)
                # rho = 2 d - c0, c0 = C / (C - 1)
                assert res.gradient[k] == pytest.approx(2 * d - c / (c - 1), rel=1e-12)


@pytest.mark.parametrize("diversity", ["coverage", "gini_simpson"])
@pytest.mark.parametrize("soft", [False, True])
def test_weighted_mean_of_rewards_is_the_unbiased_power_sum_estimate(diversity, soft):
    """(1/K) sum_k w_k d_k = c0 wbar + sum_j g_j Phat_j (and j g_j for the gradient)."""
    ptr, w, q = ragged(11 + soft, counts=(5, 4, 3, 2, 1, 6), c=4, soft=soft)
    res = loo_rewards_reference(ptr, w, q, diversity=diversity)
    lmax, polys = reward_coefficients(diversity, 4, None)
    p_hat, _ = power_sums_reference(ptr, w, None, q, 4, lmax)
    counts = np.diff(ptr)
    for i in range(len(counts)):
        sl = slice(ptr[i], ptr[i + 1])
        poly = polys[min(lmax, counts[i])]
        wbar = w[sl].mean()
        lhs_v = (w[sl] * res.value[sl]).mean()
        lhs_g = (w[sl] * res.gradient[sl]).mean()
        rhs_v = poly.c0 * wbar + sum(g * p_hat[i, j] for j, g in enumerate(poly.g, start=2))
        rhs_g = poly.c0 * wbar + sum(j * g * p_hat[i, j] for j, g in enumerate(poly.g, start=2))
        assert lhs_v == pytest.approx(rhs_v, rel=1e-12, abs=1e-14)
        assert lhs_g == pytest.approx(rhs_g, rel=1e-12, abs=1e-14)
        if diversity == "gini_simpson" and counts[i] >= 2:
            assert lhs_v == pytest.approx((wbar - p_hat[i, 2]) / (1 - 1 / 4), rel=1e-12)


def test_reference_rejects_bad_input():
    ptr, w, q = ragged(1)
    with pytest.raises(ValueError, match="weight"):
        loo_rewards_reference(ptr, -w - 1, q)
    with pytest.raises(ValueError, match="normalization"):
        loo_rewards_reference(ptr, w, q, normalization="snips")
    with pytest.raises(ValueError, match="degree 2"):
        loo_rewards_reference(ptr, w, q, diversity="gini_simpson", degree=3)
    with pytest.raises(ValueError, match="diversity_degree"):
        loo_rewards_reference(ptr, w, q, degree=9)


# ----------------------------------------------------------------------------- torch objective

import torch  # noqa: E402  (in the runtime dependencies)

from pope.objective import PopeObjective  # noqa: E402


def torch_batch(
    seed: int, counts=(3, 1, 4, 2, 5, 1), c: int = 4, soft: bool = True, extreme: bool = False
):
    """Shuffled rows (prompts interleaved), sequence log-probs; ``extreme``: some log-ratios
    of -1e4 (weight exp(-1e4) = 0 in float64) and log-propensities near 0."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.cat([torch.full((k,), 3 + 5 * i) for i, k in enumerate(counts)])
    prompt = prompt[torch.randperm(prompt.shape[0], generator=g)]
    s = prompt.shape[0]
    if soft:
        aspects = torch.softmax(2 * torch.randn(s, c, generator=g, dtype=torch.float64), 1)
    else:
        aspects = torch.randint(0, c, (s,), generator=g)
    ll = -torch.rand(s, generator=g, dtype=torch.float64) * 3 - 1e-9
    logp = ll + 0.6 * torch.randn(s, generator=g, dtype=torch.float64)
    logp = torch.minimum(logp, torch.zeros_like(logp))
    if extreme:
        logp[::4] = -1e4
    return dict(
        prompt=prompt,
        aspects=aspects,
        ll=ll,
        logp=logp,
        rewards=torch.rand(s, generator=g, dtype=torch.float64),
        c=c,
    )


def reference_for(bt, diversity, degree, normalization, clip=None):
    order = torch.argsort(bt["prompt"], stable=True)
    cnt = torch.unique(bt["prompt"], return_counts=True)[1].numpy()
    w = torch.exp(bt["logp"] - bt["ll"])
    if clip is not None:
        w = w.clamp(max=clip)
    q = bt["aspects"]
    if not q.is_floating_point():
        q = torch.nn.functional.one_hot(q, bt["c"]).double()
    res = loo_rewards_reference(
        np.concatenate([[0], np.cumsum(cnt)]),
        w[order].numpy(),
        q[order].numpy(),
        diversity=diversity,
        degree=degree,
        normalization=normalization,
    )
    return order, res


@pytest.mark.parametrize("coverage", ["ips", "self_normalized"])  # the reward is IPS for both
@pytest.mark.parametrize(
    "diversity,degree",
    [("coverage", None), ("coverage", 2), ("coverage", 5), ("gini_simpson", None)],
)
@pytest.mark.parametrize("soft,extreme", [(True, False), (False, False), (True, True)])
def test_objective_rewards_match_the_reference(coverage, diversity, degree, soft, extreme):
    bt = torch_batch(3 + 2 * soft + extreme, soft=soft, extreme=extreme)
    clip = 2.0 if extreme else None
    obj = PopeObjective(
        diversity=diversity,
        diversity_degree=degree,
        coverage=coverage,
        num_aspects=bt["c"],
        clip=clip,
        baseline="mean",
        lam=0.7,
    )
    out = obj(
        logp=bt["logp"],
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["ll"],
        aspects=bt["aspects"],
    )
    order, ref = reference_for(bt, diversity, degree, "ips", clip)
    # float64 sums of <= C(5, 4) products of O(1) numbers; shifted weights in torch vs raw
    # weights in the reference: rounding ~1e-15 relative
    torch.testing.assert_close(
        out.diversity_value[order], torch.as_tensor(ref.value), rtol=1e-11, atol=1e-12
    )
    torch.testing.assert_close(
        out.diversity_reward[order], torch.as_tensor(ref.gradient), rtol=1e-11, atol=1e-12
    )
    # K = 1 prompts: the constant 1/2, removed exactly by the per-prompt baseline
    single = torch.isin(bt["prompt"], torch.tensor([3 + 5 * 1, 3 + 5 * 5]))
    assert (out.diversity_reward[single] == 0.5).all()
    torch.testing.assert_close(out.advantage[single], torch.zeros(2, dtype=torch.float64))
    # the baseline sum_k w rho from the closed form (IPS) equals the direct sum
    w = torch.exp(torch.clamp(bt["logp"] - bt["ll"], max=math.log(clip) if clip else 1e300))
    for key in out.prompt_keys:
        idx = bt["prompt"] == key
        assert (w[idx] * out.advantage[idx]).sum().abs() < 1e-10


@pytest.mark.parametrize(
    "diversity,coverage",
    [
        ("coverage", "self_normalized"),
        ("coverage", "ips"),
        ("gini_simpson", "self_normalized"),
        ("gini_simpson", "ips"),
    ],
)
def test_logged_diversity_is_the_evaluate_estimate(diversity, coverage):
    """ObjectiveStats.diversity (also merged over micro-batches) == pope.evaluate's."""
    import pope
    from pope.data import LoggedFeedback

    bt = torch_batch(21, soft=True)
    obj = PopeObjective(diversity=diversity, coverage=coverage, num_aspects=bt["c"], clip=1.8)
    kw = dict(
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["ll"],
        aspects=bt["aspects"],
        logp=bt["logp"],
    )
    out = obj(**kw)
    split = bt["prompt"] < 14
    merged = (
        obj(**{k: v[split] for k, v in kw.items()}).stats
        + obj(**{k: v[~split] for k, v in kw.items()}).stats
    )
    order = torch.argsort(bt["prompt"], stable=True)
    cnt = torch.unique(bt["prompt"], return_counts=True)[1].numpy()
    fb = LoggedFeedback(
        prompt_ptr=np.concatenate([[0], np.cumsum(cnt)]),
        signal=bt["rewards"][order].numpy(),
        log_logging=bt["ll"][order].numpy(),
        aspect_probs=bt["aspects"][order].numpy(),
    )
    with pytest.warns(UserWarning):  # single-response prompts identify nothing
        est = pope.evaluate(
            fb,
            bt["logp"][order].numpy(),
            diversity=diversity,
            clip=1.8,
            coverage=coverage,
            diversity_degree=4 if diversity == "coverage" else None,
        )
    # same float64 formula in a different order of summation
    assert float(out.stats.diversity) == pytest.approx(est.diversity.value, rel=1e-12)
    assert float(merged.diversity) == pytest.approx(est.diversity.value, rel=1e-12)
    assert merged.metrics()["diversity"] == pytest.approx(est.diversity.value, rel=1e-12)


def test_objective_option_errors():
    with pytest.raises(ValueError, match="gini_simpson"):
        PopeObjective(diversity="gini_simpson", diversity_estimator="plugin")
    with pytest.raises(ValueError, match="diversity_degree"):
        PopeObjective(diversity_estimator="plugin", diversity_degree=3)
    with pytest.raises(ValueError, match="diversity_degree"):
        PopeObjective(diversity_degree=0)
    with pytest.raises(ValueError, match="diversity_estimator"):
        PopeObjective(diversity_estimator="jackknife")
    bt = torch_batch(2)
    a = PopeObjective(num_aspects=4)(
        logp=bt["logp"],
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["ll"],
        aspects=bt["aspects"],
    ).stats
    b = PopeObjective(num_aspects=4, diversity_estimator="plugin")(
        logp=bt["logp"],
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["ll"],
        aspects=bt["aspects"],
    ).stats
    with pytest.raises(ValueError, match="different diversity estimators"):
        a + b


def test_ips_overflow_raises_a_clear_error():
    bt = torch_batch(4)
    with pytest.raises(ValueError, match="overflow"):
        PopeObjective(coverage="ips", num_aspects=4)(
            logp=bt["logp"],
            rewards=bt["rewards"],
            prompt_index=bt["prompt"],
            log_logging=bt["ll"] - 400.0,
            aspects=bt["aspects"],
        )


# ----------------------------------------------------------------------------- Monte Carlo
# A softmax policy over 6 candidates of one prompt with known aspects (C = 3, one soft row);
# pi_0 = uniform, pi_theta = softmax(THETA). Each simulated log has K responses from pi_0; the
# score-function gradient of the estimated objective is (1/K) sum_k w_k rho_k grad log pi(y_k)
# with grad log softmax = e_y - pi. Its mean over logs must equal the analytic gradient of
# the population functional (D_GS, or the polynomial D_L that the Shannon estimator is
# unbiased for) within 3 standard errors per coordinate; the plug-in reward must not.

MC_Q = torch.tensor(
    [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.2, 0.3]], dtype=torch.float64
)
MC_THETA = torch.tensor([0.8, 0.4, -0.3, 0.1, -0.6, 0.2], dtype=torch.float64)


def _population_gradient(functional: str, degree: int) -> torch.Tensor:
    th = MC_THETA.clone().requires_grad_(True)
    p = torch.softmax(th, 0) @ MC_Q
    if functional == "shannon":
        val = -(p * torch.log(p)).sum() / math.log(3)
    else:
        _, polys = reward_coefficients(functional, 3, degree if functional == "coverage" else None)
        poly = polys[degree]
        val = poly.c0 + sum(g * (p**j).sum() for j, g in enumerate(poly.g, start=2))
    (gr,) = torch.autograd.grad(val, th)
    return gr


def _mc_gradient(k: int, n_logs: int, seed: int, **opts) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over logs of the per-log gradient estimate and its standard error."""
    g = torch.Generator().manual_seed(seed)
    pi0 = torch.full((6,), 1 / 6, dtype=torch.float64)
    pi = torch.softmax(MC_THETA, 0)
    y = torch.multinomial(pi0.expand(n_logs, -1), k, replacement=True, generator=g).reshape(-1)
    out = PopeObjective(lam=1.0, baseline="none", num_aspects=3, **opts)(
        logp=torch.log(pi[y]),
        rewards=torch.zeros(y.shape[0], dtype=torch.float64),
        prompt_index=torch.arange(n_logs).repeat_interleave(k),
        log_logging=torch.log(pi0[y]),
        aspects=MC_Q[y],
    )
    w = pi[y] / pi0[y]
    score = torch.nn.functional.one_hot(y, 6).double() - pi
    per_log = ((w * out.diversity_reward)[:, None] * score).reshape(n_logs, k, 6).mean(1)
    return per_log.mean(0), per_log.std(0) / math.sqrt(n_logs)


MC_LOGS = 6000


@pytest.mark.parametrize("k", [2, 3])
def test_monte_carlo_loo_gradient_is_unbiased_and_plugin_is_not(k):
    z = {}
    for name, opts, target in [
        ("polynomial", dict(), _population_gradient("coverage", min(k, 4))),
        ("gini_simpson", dict(diversity="gini_simpson"), _population_gradient("gini_simpson", 2)),
    ]:
        mean, se = _mc_gradient(k, MC_LOGS, 100 + k, **opts)
        z[name] = ((mean - target) / se).abs().max().item()
        assert z[name] < 3.0, (name, z[name])
    for cov in ("self_normalized", "ips"):
        mean, se = _mc_gradient(k, MC_LOGS, 200 + k, diversity_estimator="plugin", coverage=cov)
        for target in ("coverage", "shannon"):  # the polynomial D_L, and H/log C itself
            zz = ((mean - _population_gradient(target, min(k, 4))) / se).abs().max().item()
            assert zz > 5.0, (cov, target, zz)


def test_monte_carlo_per_prompt_self_normalised_reward_is_biased():
    """Why training uses the IPS form: for K = 2 the per-prompt self-normalised Gini-Simpson
    reward (reference ``normalization="prompt"``) is d_k = (1 - q_k . q_l)/(1 - 1/C), blind to
    the weights; its gradient is off by many standard errors."""
    n_logs, k = MC_LOGS, 2
    g = torch.Generator().manual_seed(7)
    pi = torch.softmax(MC_THETA, 0)
    y = torch.randint(0, 6, (n_logs, k), generator=g)
    w = pi[y] * 6
    qy = MC_Q[y]
    d = (1 - (qy[:, 0] * qy[:, 1]).sum(1)) / (1 - 1 / 3)  # same for both responses
    score = torch.nn.functional.one_hot(y, 6).double() - pi
    per_log = (2 * (w * d[:, None])[..., None] * score).mean(1)
    z = (
        (
            (per_log.mean(0) - _population_gradient("gini_simpson", 2))
            / (per_log.std(0) / math.sqrt(n_logs))
        )
        .abs()
        .max()
        .item()
    )
    assert z > 5.0, z


MC_R = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.1, 0.4], dtype=torch.float64)


@pytest.mark.parametrize("k", [2, 4])
def test_monte_carlo_loo_baseline_keeps_the_gradient_unbiased_and_mean_does_not(k):
    """Relevance + diversity with a baseline: baseline="loo" (a function of the other
    responses only) keeps the score-function gradient unbiased for grad(U + lam D_L);
    baseline="mean" (whose weighted mean contains y_k, and the others' LOO rewards too) is
    biased (at K = 2 its projection on the true gradient even has the wrong sign)."""
    n_logs, lam = MC_LOGS, 1.0
    th = MC_THETA.clone().requires_grad_(True)
    pi_t = torch.softmax(th, 0)
    _, polys = reward_coefficients("coverage", 3, None)
    poly = polys[min(k, 4)]
    p = pi_t @ MC_Q
    val = pi_t @ MC_R + lam * (
        poly.c0 + sum(g * (p**j).sum() for j, g in enumerate(poly.g, start=2))
    )
    (truth,) = torch.autograd.grad(val, th)
    pi0 = torch.full((6,), 1 / 6, dtype=torch.float64)
    pi = pi_t.detach()
    for baseline, seed in (("loo", 300 + k), ("mean", 400 + k)):
        g = torch.Generator().manual_seed(seed)
        y = torch.multinomial(pi0.expand(n_logs, -1), k, replacement=True, generator=g).reshape(-1)
        out = PopeObjective(lam=lam, baseline=baseline, num_aspects=3, coverage="ips")(
            logp=torch.log(pi[y]),
            rewards=MC_R[y],
            prompt_index=torch.arange(n_logs).repeat_interleave(k),
            log_logging=torch.log(pi0[y]),
            aspects=MC_Q[y],
        )
        w = pi[y] / pi0[y]
        score = torch.nn.functional.one_hot(y, 6).double() - pi
        per_log = ((w * out.advantage)[:, None] * score).reshape(n_logs, k, 6).mean(1)
        z = ((per_log.mean(0) - truth) / (per_log.std(0) / math.sqrt(n_logs))).abs().max()
        if baseline == "loo":
            assert z < 3.0, (k, baseline, float(z))
        else:
            assert z > 5.0, (k, baseline, float(z))
