"""Ground truth of the synthetic environments against independent brute-force computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pope.data import LoggedFeedback
from pope.synthetic import CandidateEnv, SoftmaxPolicy, TokenEnv, entropy


def _h(p: list[float] | np.ndarray) -> float:
    """Entropy in nats, written out with a loop (independent of ``pope.synthetic.entropy``)."""
    return -sum(float(v) * math.log(float(v)) for v in p if v > 0)


@pytest.fixture(scope="module")
def env() -> CandidateEnv:
    return CandidateEnv.make(n_prompts=30, n_candidates=6, n_aspects=3, n_groups=2, seed=11)


@pytest.fixture(scope="module")
def soft_env() -> CandidateEnv:
    return CandidateEnv.make(n_prompts=20, n_candidates=5, n_aspects=4, soft_aspects=True, seed=5)


def _targets(env: CandidateEnv) -> list[SoftmaxPolicy]:
    return [
        env.logging_policy,
        env.tilt(utility=3.0),
        env.tilt(diversity=2.0, temperature=2.0),
        env.uniform_policy(),
    ]


# ----------------------------------------------------------------------------- CandidateEnv
def test_entropy_helper() -> None:
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(entropy(p), [_h(r) for r in p], rtol=1e-12)


def test_environment_shapes_and_ranges(env: CandidateEnv, soft_env: CandidateEnv) -> None:
    for e in (env, soft_env):
        assert e.utility.shape == (e.n_prompts, e.n_candidates)
        assert e.utility.min() >= 0 and e.utility.max() <= 1
        np.testing.assert_allclose(e.aspect_probs.sum(axis=2), 1.0, atol=1e-12)
        with pytest.raises(ValueError):
            e.utility[0, 0] = 0.5  # read-only
    # hard aspects are one-hot on the labelled aspect
    assert np.all(env.aspect_probs.argmax(axis=2) == env.aspect)
    assert np.all(env.aspect_probs.max(axis=2) == 1.0)


@pytest.mark.parametrize("which", ["hard", "soft"])
def test_exact_value_matches_loops(env: CandidateEnv, soft_env: CandidateEnv, which: str) -> None:
    e = env if which == "hard" else soft_env
    lam = 0.7
    for pol in _targets(e):
        truth = e.value(pol, lam)
        us, ds = [], []
        for x in range(e.n_prompts):
            z = [float(v) for v in pol.logits[x]]
            zmax = max(z)
            ez = [math.exp(v - zmax) for v in z]
            pi = [v / sum(ez) for v in ez]
            us.append(sum(pi[j] * e.utility[x, j] for j in range(e.n_candidates)))
            cov = [
                sum(pi[j] * e.aspect_probs[x, j, c] for j in range(e.n_candidates))
                for c in range(e.n_aspects)
            ]
            ds.append(_h(cov) / math.log(e.n_aspects))
        assert truth.relevance == pytest.approx(np.mean(us), abs=1e-12)
        assert truth.diversity == pytest.approx(np.mean(ds), abs=1e-12)
        assert truth.total == pytest.approx(np.mean(us) + lam * np.mean(ds), abs=1e-12)
        assert 0 <= truth.diversity <= 1


def test_large_monte_carlo_agrees_with_exact_truth(env: CandidateEnv) -> None:
    """1.2M logged responses from a target policy: sample means within 4.5 standard errors."""
    pol = env.tilt(utility=2.0, diversity=1.0)
    truth = env.value(pol)
    per_prompt = 40_000
    log = env.sample_logs(pol, k=per_prompt, noise="bernoulli", seed=3)
    fb = log.feedback
    sig = fb.signal.reshape(env.n_prompts, per_prompt)
    u_hat = sig.mean(axis=1)
    se_u = math.sqrt((sig.var(axis=1, ddof=1) / per_prompt).sum()) / env.n_prompts
    assert abs(u_hat.mean() - truth.relevance) < 4.5 * se_u
    # coverage frequencies per prompt against the exact coverage
    a = fb.aspect.reshape(env.n_prompts, per_prompt)
    freq = np.stack([(a == c).mean(axis=1) for c in range(env.n_aspects)], axis=1)
    se_c = np.sqrt(truth.coverage * (1 - truth.coverage) / per_prompt)
    assert np.all(np.abs(freq - truth.coverage) <= 5 * se_c + 1e-12)
    d_hat = np.mean([_h(f) for f in freq]) / math.log(env.n_aspects)
    assert d_hat == pytest.approx(truth.diversity, abs=0.01)


def test_list_diversity_exact_vs_monte_carlo(env: CandidateEnv, soft_env: CandidateEnv) -> None:
    pol = env.tilt(utility=1.0)
    k = 3
    exact, se0 = env.list_diversity(pol, k)
    assert se0 == 0.0
    # brute force: enumerate all ordered K-tuples of candidates
    m, c = env.n_candidates, env.n_aspects
    pi = pol.probs
    vals = []
    for x in range(env.n_prompts):
        tot = 0.0
        for tup in itertools.product(range(m), repeat=k):
            prob = math.prod(pi[x, j] for j in tup)
            cov = np.bincount(env.aspect[x, list(tup)], minlength=c) / k
            tot += prob * _h(cov)
        vals.append(tot / math.log(c))
    assert exact == pytest.approx(np.mean(vals), abs=1e-10)
    # D_K <= D (Jensen) and D_1 = 0 with hard aspects
    assert exact <= env.value(pol).diversity + 1e-12
    assert env.list_diversity(pol, 1)[0] == pytest.approx(0.0, abs=1e-12)
    # soft aspects: Monte Carlo estimate with its stderr, against brute force
    spol = soft_env.tilt(utility=2.0)
    est, se = soft_env.list_diversity(spol, 2, n_mc=4000, seed=1)
    spi = spol.probs
    brute = []
    for x in range(soft_env.n_prompts):
        tot = 0.0
        for j1, j2 in itertools.product(range(soft_env.n_candidates), repeat=2):
            q = (soft_env.aspect_probs[x, j1] + soft_env.aspect_probs[x, j2]) / 2
            tot += spi[x, j1] * spi[x, j2] * _h(q)
        brute.append(tot / math.log(soft_env.n_aspects))
    assert se > 0
    assert abs(est - np.mean(brute)) < 4.5 * se


def test_kl_and_tilt(env: CandidateEnv) -> None:
    pi0 = env.logging_policy
    assert env.kl(pi0) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(env.tilt().log_probs, pi0.log_probs, atol=1e-12)
    kls = [env.kl(env.tilt(utility=b)) for b in (0.5, 1.0, 2.0, 4.0)]
    assert all(np.diff(kls) > 0)
    # brute-force KL
    pol = env.tilt(utility=2.0, diversity=1.0)
    p, p0 = pol.probs, pi0.probs
    kl = np.mean(
        [
            sum(p[x, j] * math.log(p[x, j] / p0[x, j]) for j in range(env.n_candidates))
            for x in range(env.n_prompts)
        ]
    )
    assert env.kl(pol) == pytest.approx(kl, rel=1e-10)


def test_diversity_reward_is_the_gradient(env: CandidateEnv) -> None:
    """d_j from METHOD.md §3: sum_j pi_j d_j = D and dD/dz_j = pi_j (d_j - D) (finite diff)."""
    pol = env.tilt(utility=1.0, diversity=0.5)
    d = env.diversity_reward(pol)
    dx = env.value(pol).per_prompt_diversity
    np.testing.assert_allclose((pol.probs * d).sum(axis=1), dx, atol=1e-12)
    x, j, eps = 3, 2, 1e-6
    z = np.array(pol.logits)
    zp, zm = z.copy(), z.copy()
    zp[x, j] += eps
    zm[x, j] -= eps
    fd = (
        env.value(SoftmaxPolicy(zp)).per_prompt_diversity[x]
        - env.value(SoftmaxPolicy(zm)).per_prompt_diversity[x]
    ) / (2 * eps)
    assert fd == pytest.approx(pol.probs[x, j] * (d[x, j] - dx[x]), rel=1e-5, abs=1e-9)


def test_optimal_policy_beats_alternatives(env: CandidateEnv) -> None:
    lam = 1.0
    opt = env.optimal_policy(lam)
    v = env.value(opt, lam).total
    rng = np.random.default_rng(0)
    for pol in [*_targets(env), env.optimal_policy(0.0)]:
        assert env.value(pol, lam).total <= v + 1e-9
    for _ in range(5):
        z = np.array(opt.logits) + 0.3 * rng.standard_normal(opt.logits.shape)
        assert env.value(SoftmaxPolicy(z), lam).total <= v + 1e-6


def test_sample_logs_structure(env: CandidateEnv, soft_env: CandidateEnv) -> None:
    log = env.sample_logs(n_prompts=50, k=(1, 5), seed=4)
    fb = log.feedback
    assert isinstance(fb, LoggedFeedback)
    assert fb.n_prompts == 50 and fb.counts.min() >= 1 and fb.counts.max() <= 5
    assert len(set(fb.counts.tolist())) > 1  # ragged
    assert fb.n_aspects == env.n_aspects
    rp = log.response_prompt
    np.testing.assert_array_equal(fb.log_logging, env.logging_policy.log_probs[rp, log.candidate])
    np.testing.assert_array_equal(fb.aspect, env.aspect[rp, log.candidate])
    assert set(np.unique(fb.signal)) <= {0.0, 1.0}
    # positions are 0..K_i-1 within each prompt
    for i in range(fb.n_prompts):
        lo, hi = fb.prompt_ptr[i], fb.prompt_ptr[i + 1]
        np.testing.assert_array_equal(fb.position[lo:hi], np.arange(hi - lo))
    tgt = env.tilt(utility=2.0)
    np.testing.assert_array_equal(log.log_prob(tgt), tgt.log_probs[rp, log.candidate])
    ll = log.list_log_prob(tgt)
    assert ll.shape == (50,)
    assert ll[0] == pytest.approx(log.log_prob(tgt)[: fb.counts[0]].sum())
    # exact signals and soft aspects
    slog = soft_env.sample_logs(k=3, noise="none", seed=1)
    np.testing.assert_array_equal(slog.feedback.signal, slog.utility)
    assert slog.feedback.aspect_probs is not None and slog.feedback.aspect is None
    assert slog.feedback.n_prompts == soft_env.n_prompts
    with pytest.raises(ValueError, match="noise"):
        env.sample_logs(noise="gaussian", seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        env.sample_logs(k=0, seed=0)


def test_seeding_is_reproducible(env: CandidateEnv) -> None:
    a = env.sample_logs(n_prompts=40, k=(1, 4), seed=123)
    b = env.sample_logs(n_prompts=40, k=(1, 4), seed=123)
    c = env.sample_logs(n_prompts=40, k=(1, 4), seed=124)
    for name in ("prompt_ptr", "signal", "log_logging", "aspect", "position"):
        np.testing.assert_array_equal(getattr(a.feedback, name), getattr(b.feedback, name))
    np.testing.assert_array_equal(a.candidate, b.candidate)
    assert not np.array_equal(a.candidate, c.candidate) or not np.array_equal(
        a.feedback.signal, c.feedback.signal
    )
    e1 = CandidateEnv.make(n_prompts=10, seed=9)
    e2 = CandidateEnv.make(n_prompts=10, seed=9)
    np.testing.assert_array_equal(e1.utility, e2.utility)
    np.testing.assert_array_equal(e1.logging_logits, e2.logging_logits)


def test_reward_model_is_reasonable(env: CandidateEnv) -> None:
    log = env.sample_logs(k=50, seed=2)
    rm = env.fit_reward_model(log)
    assert rm.shape == env.utility.shape and rm.min() >= 0 and rm.max() <= 1
    # better than predicting the global mean, worse than the truth (group is latent)
    err = np.mean((rm - env.utility) ** 2)
    assert err < np.mean((env.utility.mean() - env.utility) ** 2)
    np.testing.assert_allclose(log.reward_hat(rm), rm[log.response_prompt, log.candidate])
    vh = log.value_hat(env.logging_policy, rm)
    np.testing.assert_allclose(vh, (env.logging_policy.probs * rm).sum(axis=1)[log.prompt])


def test_on_policy_logs_give_sample_means(env: CandidateEnv) -> None:
    """With target = logging policy every weight is 1: IPS = SNIPS = the sample mean reward,
    POPE's plug-in diversity = mean over prompts of the logged coverage entropy."""
    from pope import estimators as est

    log = env.sample_logs(n_prompts=300, k=(2, 6), seed=8)
    fb = log.feedback
    r = fb.rewards("none")
    lt = log.log_prob(env.logging_policy)
    for fn in (est.ips, est.snips):
        e = fn(reward=r, log_target=lt, log_logging=fb.log_logging)
        assert e.value == pytest.approx(r.mean(), abs=1e-12)
    import pope

    res = pope.evaluate(fb, lt, lam=0.5, reward_normalization="none", diversity_estimator="plugin")
    c = env.n_aspects
    divs = []
    for i in range(fb.n_prompts):
        a = fb.aspect[fb.prompt_ptr[i] : fb.prompt_ptr[i + 1]]
        divs.append(_h(np.bincount(a, minlength=c) / a.size) / math.log(c))
    assert res.diversity.value == pytest.approx(np.mean(divs), abs=1e-10)
    assert res.relevance.value == pytest.approx(r.mean(), abs=1e-10)
    assert res.total.value == pytest.approx(r.mean() + 0.5 * np.mean(divs), abs=1e-10)


# ----------------------------------------------------------------------------- TokenEnv
@pytest.fixture(scope="module")
def tenv() -> TokenEnv:
    return TokenEnv.make(
        n_prompts=4,
        n_groups=2,
        n_aspects=3,
        vocab_size=6,
        response_length=3,
        prompt_length=2,
        n_embd=16,
        n_layer=1,
        n_head=2,
        seed=1,
    )


@pytest.fixture(scope="module")
def tmodel(tenv: TokenEnv) -> torch.nn.Module:
    return tenv.logging_policy(seed=0, steps=25, batch_size=64)


def test_token_rule_on_hand_made_sequences() -> None:
    e = TokenEnv.make(
        n_prompts=3, n_groups=3, n_aspects=4, vocab_size=16, response_length=6, seed=0
    )
    # topics: token % 4
    toks = np.array(
        [
            [0, 4, 8, 1, 2, 3],  # topic 0 x3 -> aspect 0, n=3
            [1, 2, 5, 6, 3, 7],  # topics 1,2,1,2,3,3: tie 1/2/3 (2 each) -> first seen: 1
            [3, 3, 7, 11, 15, 2],  # topic 3 x5 -> aspect 3
            [2, 1, 6, 5, 0, 4],  # topics 2,1,2,1,0,0 tie -> first seen: 2
        ]
    )
    np.testing.assert_array_equal(e.aspects(toks), [0, 1, 3, 2])
    prompt = np.array([0, 1, 2, 0])
    g = e.group[prompt]
    want = [
        e.preference[g[0], 0] * 3 / 6,
        e.preference[g[1], 1] * 2 / 6,
        e.preference[g[2], 3] * 5 / 6,
        e.preference[g[3], 2] * 2 / 6,
    ]
    np.testing.assert_allclose(e.utility(prompt, toks), want)
    # each group's favourite topic has preference 1
    assert all(e.preference[gg, gg % 4] == 1.0 for gg in range(3))


def test_sampler_logprobs_match_teacher_forcing(tenv: TokenEnv, tmodel: torch.nn.Module) -> None:
    prompt = np.repeat(np.arange(tenv.n_prompts), 50)
    toks, lp = tenv.sample(tmodel, prompt, seed=3)
    assert toks.shape == (prompt.size, tenv.response_length)
    np.testing.assert_allclose(lp, tenv.log_prob(tmodel, prompt, toks), atol=1e-5)
    # reproducible
    toks2, lp2 = tenv.sample(tmodel, prompt, seed=3)
    np.testing.assert_array_equal(toks, toks2)
    np.testing.assert_array_equal(lp, lp2)


def _exact_token_truth(env: TokenEnv, model: torch.nn.Module, lam: float) -> tuple[float, float]:
    """Enumerate every response (V^T) and score it with a plain full forward pass."""
    seqs = np.array(list(itertools.product(range(env.vocab_size), repeat=env.response_length)))
    us, ds = [], []
    with torch.no_grad():
        for x in range(env.n_prompts):
            ids = np.concatenate([np.repeat(env.prompt_tokens[x][None], len(seqs), 0), seqs], 1)
            logits = model(input_ids=torch.as_tensor(ids)).logits.double()
            lsm = torch.log_softmax(logits, -1).numpy()
            pl = env.prompt_length
            logp = sum(
                lsm[np.arange(len(seqs)), pl - 1 + t, seqs[:, t]]
                for t in range(env.response_length)
            )
            prob = np.exp(logp)
            assert prob.sum() == pytest.approx(1.0, abs=1e-6)
            # the rule, written independently: dominant topic, ties -> first appearance
            topics = seqs % env.n_aspects
            asp, focus = [], []
            for row in topics:
                counts = [int((row == c).sum()) for c in range(env.n_aspects)]
                best = max(counts)
                a = next(int(t) for t in row if counts[t] == best)
                asp.append(a)
                focus.append(best / env.response_length)
            asp = np.array(asp)
            r = env.preference[env.group[x], asp] * np.array(focus)
            us.append(float(prob @ r))
            cov = [prob[asp == c].sum() for c in range(env.n_aspects)]
            ds.append(_h(cov) / math.log(env.n_aspects))
    return float(np.mean(us)), float(np.mean(ds))


def test_token_truth_by_enumeration(tenv: TokenEnv, tmodel: torch.nn.Module) -> None:
    lam = 0.8
    u, d = _exact_token_truth(tenv, tmodel, lam)
    mc = tenv.value(tmodel, lam, n_per_prompt=6000, seed=2)
    assert mc.relevance_stderr > 0 and mc.diversity_stderr > 0
    assert mc.relevance_stderr < 0.01 and mc.diversity_stderr < 0.01
    assert abs(mc.relevance - u) < 4.5 * mc.relevance_stderr
    assert abs(mc.diversity - d) < 4.5 * mc.diversity_stderr + 1e-4
    assert abs(mc.total - (u + lam * d)) < 4.5 * mc.total_stderr + 1e-4
    # reproducible
    mc2 = tenv.value(tmodel, lam, n_per_prompt=6000, seed=2)
    assert mc2.as_dict() == mc.as_dict()


def test_token_logs(tenv: TokenEnv, tmodel: torch.nn.Module) -> None:
    log = tenv.sample_logs(tmodel, k=(2, 5), seed=0)
    fb = log.feedback
    assert fb.n_prompts == tenv.n_prompts
    assert fb.token_log_logging is not None
    np.testing.assert_array_equal(fb.token_counts, tenv.response_length)
    np.testing.assert_allclose(
        fb.log_logging, fb.token_log_logging.reshape(-1, tenv.response_length).sum(1)
    )
    np.testing.assert_allclose(log.log_prob(tmodel), fb.log_logging, atol=1e-5)
    np.testing.assert_array_equal(fb.aspect, tenv.aspects(log.tokens))
    np.testing.assert_allclose(log.utility, tenv.utility(log.response_prompt, log.tokens))
    again = tenv.sample_logs(tmodel, k=(2, 5), seed=0)
    np.testing.assert_array_equal(again.tokens, log.tokens)
    np.testing.assert_array_equal(again.feedback.signal, fb.signal)


def test_logging_policy_is_deterministic(tenv: TokenEnv, tmodel: torch.nn.Module) -> None:
    again = tenv.logging_policy(seed=0, steps=25, batch_size=64)
    for p, q in zip(tmodel.parameters(), again.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    other = tenv.new_model(seed=1)
    assert any(not torch.equal(p, q) for p, q in zip(tmodel.parameters(), other.parameters()))
