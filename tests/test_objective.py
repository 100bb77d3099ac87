"""PopeObjective: loss and gradient against a plain per-prompt torch formula, identities, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pope.estimators.pope_features import coefficients
from pope.loo_rewards import loo_rewards_reference
from pope.objective import ObjectiveStats, PopeObjective, shift_labels

# ----------------------------------------------------------------------------- helpers


def make_batch(seed: int = 0, s_per_prompt=(3, 1, 4, 2), c: int = 3, soft: bool = False):
    g = torch.Generator().manual_seed(seed)
    s = sum(s_per_prompt)
    prompt = torch.cat([torch.full((k,), 10 + 7 * i) for i, k in enumerate(s_per_prompt)])
    rewards = torch.rand(s, generator=g, dtype=torch.float64)
    if soft:
        aspects = torch.softmax(2 * torch.randn(s, c, generator=g, dtype=torch.float64), 1)
    else:
        aspects = torch.randint(0, c, (s,), generator=g)
    counts = torch.randint(1, 6, (s,), generator=g)
    logp = -(torch.rand(s, generator=g, dtype=torch.float64) * 3 + 1) * counts
    log_logging = logp + 0.8 * torch.randn(s, generator=g, dtype=torch.float64)
    return dict(
        prompt=prompt,
        rewards=rewards,
        aspects=aspects,
        counts=counts,
        logp=logp,
        log_logging=log_logging,
        c=c,
    )


def reference_loss(
    logp,
    log_logging,
    rewards,
    q,
    prompt,
    *,
    lam,
    clip=None,
    ppo_eps=None,
    weighting="sequence",
    counts=None,
    baseline="loo",
    coverage="self_normalized",
    diversity="coverage",
    truncation="estimator",
    kl=None,
    beta=0.0,
    diversity_estimator="polynomial",
    diversity_degree=None,
):
    """Independent formula: explicit loop over prompts, probability-space weights; the
    leave-one-out rewards from the NumPy reference :func:`pope.loo_rewards_reference`."""
    c = q.shape[1]
    lw = logp - log_logging
    if weighting == "token_mean":
        lw = lw / counts.to(lw.dtype)
    w = torch.exp(lw)
    w_est = w.detach().clamp(max=clip) if clip is not None else w.detach()
    n = logp.shape[0]
    adv = torch.zeros(n, dtype=logp.dtype)
    loo = diversity == "gini_simpson" or (
        diversity == "coverage" and diversity_estimator == "polynomial"
    )
    if loo:
        order = torch.argsort(prompt, stable=True)
        cnt = torch.unique(prompt, return_counts=True)[1].numpy()
        res = loo_rewards_reference(
            np.concatenate([[0], np.cumsum(cnt)]),
            w_est[order].numpy(),
            q[order].numpy(),
            diversity=diversity,
            degree=diversity_degree,
            normalization="ips",
        )
        rho = torch.zeros(n, dtype=logp.dtype)
        rho[order] = torch.as_tensor(res.gradient)
    for key in torch.unique(prompt):
        idx = torch.nonzero(prompt == key).flatten()
        we = w_est[idx]
        if coverage == "self_normalized":
            p = (we[:, None] * q[idx]).sum(0) / we.sum()
        else:
            p = (we[:, None] * q[idx]).sum(0) / len(idx)
        logp_c = torch.tensor([math.log(v) if v > 0 else 0.0 for v in p.tolist()], dtype=logp.dtype)
        if loo:
            d = rho[idx]
        elif c == 1:
            d = torch.zeros(len(idx), dtype=logp.dtype)
        elif diversity == "coverage":
            d = torch.stack([-(q[k] * logp_c).sum() for k in idx]) / math.log(c)
        else:
            d = torch.stack(
                [-(q[k][q[k] > 0] * torch.log(q[k][q[k] > 0])).sum() for k in idx]
            ) / math.log(c)
        big_r = rewards[idx] + lam * d
        if baseline == "mean":
            b = (we * big_r).sum() / we.sum()
        elif baseline == "loo":  # the others' weighted mean reward, plus lam * c0
            kk = len(idx)
            fam = "gini_simpson" if diversity == "gini_simpson" else "shannon"
            c0 = coefficients(fam, c, min(kk, diversity_degree or 4)).c0 if loo else 0.0
            b = torch.zeros(kk, dtype=logp.dtype)
            for t in range(kk):
                oth = [j for j in range(kk) if j != t]
                den = we[oth].sum() if oth else torch.zeros(())
                if oth and den > 1e-9 * we.sum():
                    b[t] = (we[oth] * rewards[idx][oth]).sum() / den
                b[t] = b[t] + lam * c0
        else:
            b = 0.0
        adv[idx] = big_r - b
    if clip is None:
        wt = w
    elif truncation == "estimator":
        wt = torch.minimum(w, torch.full_like(w, clip))
    else:
        wt = w_est * w / w.detach()
    surr = wt * adv
    if ppo_eps is not None:
        surr = torch.minimum(surr, torch.clamp(wt, 1 - ppo_eps, 1 + ppo_eps) * adv)
    loss = -surr.sum() / n
    if kl is not None:
        loss = loss + beta * kl.sum() / n
    return loss


def entropy(p: torch.Tensor) -> torch.Tensor:
    p = p[p > 0]
    return -(p * torch.log(p)).sum()


# ----------------------------------------------------------------------------- gradient


CASES = [
    dict(),
    dict(lam=0.0),
    dict(clip=1.3),
    dict(clip=1.3, truncation="gradient"),
    dict(ppo_eps=0.2),
    dict(ppo_eps=0.2, clip=1.5),
    dict(weighting="token_mean"),
    dict(weighting="token_mean", ppo_eps=0.1),
    dict(baseline="none"),
    dict(coverage="ips"),
    dict(diversity="response_entropy"),
    dict(clip=0.9, coverage="ips", baseline="none", lam=2.0),
    dict(diversity_estimator="plugin"),
    dict(diversity_estimator="plugin", coverage="ips", clip=1.3),
    dict(diversity_estimator="plugin", baseline="none"),
    dict(diversity="gini_simpson"),
    dict(diversity="gini_simpson", coverage="ips", baseline="none"),
    dict(diversity_degree=2, ppo_eps=0.2),
    dict(diversity_degree=6, coverage="ips"),
    dict(diversity_degree=1, lam=1.5),
]


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("opts", CASES, ids=[str(c) for c in CASES])
def test_loss_and_gradient_match_plain_formula_fp64(opts, soft):
    bt = make_batch(seed=len(str(opts)) + soft, soft=soft)
    opts = {"lam": 0.7, **opts}
    obj = PopeObjective(num_aspects=bt["c"], **opts)
    logp = bt["logp"].clone().requires_grad_(True)
    out = obj(
        logp=logp,
        num_tokens=bt["counts"],
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["log_logging"],
        aspects=bt["aspects"],
    )
    (g,) = torch.autograd.grad(out.loss, logp)

    logp2 = bt["logp"].clone().requires_grad_(True)
    q = bt["aspects"] if soft else torch.nn.functional.one_hot(bt["aspects"], bt["c"]).double()
    ref = reference_loss(
        logp2, bt["log_logging"], bt["rewards"], q, bt["prompt"], counts=bt["counts"], **opts
    )
    (g_ref,) = torch.autograd.grad(ref, logp2)
    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    assert g.abs().sum() > 0 or opts.get("clip", 10) < 1.0


def test_ratio_controls_change_the_gradient():
    """Guard against options silently ignored: each control moves the gradient."""
    bt = make_batch(seed=3)
    grads = {}
    for name, opts in {
        "plain": {},
        "clip": {"clip": 1.1},
        "ppo": {"ppo_eps": 0.05},
        "token_mean": {"weighting": "token_mean"},
        "trunc_grad": {"clip": 1.1, "truncation": "gradient"},
    }.items():
        logp = bt["logp"].clone().requires_grad_(True)
        out = PopeObjective(lam=0.5, **opts)(
            logp=logp,
            num_tokens=bt["counts"],
            rewards=bt["rewards"],
            prompt_index=bt["prompt"],
            log_logging=bt["log_logging"],
            aspects=bt["aspects"],
        )
        grads[name] = torch.autograd.grad(out.loss, logp)[0]
    names = list(grads)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(grads[a], grads[b]), (a, b)


def _token_batch(seed=0, b=5, t=7, v=13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 2
    labels = torch.randint(0, v, (b, t), generator=g)
    starts = torch.tensor([1, 2, 3, 2, 4])[:b]
    lengths = torch.tensor([4, 5, 2, 3, 3])[:b]
    pos = torch.arange(t)
    inside = (pos[None] >= starts[:, None]) & (pos[None] < (starts + lengths)[:, None])
    labels = torch.where(inside, labels, torch.full_like(labels, -100))
    tok_logging = -torch.rand(b, t, generator=g) * 3 - 0.5
    ref_tok = -torch.rand(b, t, generator=g) * 3 - 0.5
    return dict(
        logits=logits,
        labels=labels,
        inside=inside,
        tok_logging=tok_logging,
        ref_tok=ref_tok,
        rewards=torch.rand(b, generator=g),
        prompt=torch.tensor([0, 0, 1, 1, 1])[:b],
        aspects=torch.tensor([0, 1, 1, 1, 2])[:b],
    )


@pytest.mark.parametrize(
    "opts",
    [dict(), dict(weighting="token_mean", beta=0.3), dict(clip=2.0, beta=0.1, ppo_eps=0.2)],
    ids=["plain", "token_mean_kl", "clip_ppo_kl"],
)
def test_gradient_wrt_logits_matches_log_softmax_formula(opts):
    bt = _token_batch()
    obj = PopeObjective(lam=0.5, num_aspects=3, **opts)
    logits = bt["logits"].clone().requires_grad_(True)
    out = obj(
        logits,
        bt["labels"],
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["tok_logging"],
        aspects=bt["aspects"],
        ref_logprobs=bt["ref_tok"] if opts.get("beta") else None,
    )
    (g,) = torch.autograd.grad(out.loss, logits)

    logits2 = bt["logits"].double().clone().requires_grad_(True)
    mask = bt["inside"]
    tok = torch.log_softmax(logits2, -1).gather(-1, bt["labels"].clamp(min=0)[..., None])[..., 0]
    tok = torch.where(mask, tok, torch.zeros_like(tok))
    logp = tok.sum(1)
    ll = torch.where(mask, bt["tok_logging"].double(), torch.zeros(())).sum(1)
    counts = mask.sum(1)
    kl = None
    if opts.get("beta"):
        delta = bt["ref_tok"].double() - tok
        k3 = torch.where(mask, torch.exp(delta) - delta - 1, torch.zeros(()))
        kl = k3.sum(1) / counts
    q = torch.nn.functional.one_hot(bt["aspects"], 3).double()
    ref = reference_loss(
        logp,
        ll,
        bt["rewards"].double(),
        q,
        bt["prompt"],
        lam=0.5,
        counts=counts,
        kl=kl,
        **opts,
    )
    (g_ref,) = torch.autograd.grad(ref, logits2)
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-6)
    if opts.get("beta"):
        assert out.stats.kl > 0
        torch.testing.assert_close(out.stats.kl, kl.mean().detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("beta", [0.0, 0.3], ids=["no_kl", "kl"])
def test_hidden_states_path_equals_logits_path(beta):
    g = torch.Generator().manual_seed(1)
    b, t, h, v = 4, 6, 8, 17
    hidden = torch.randn(b, t, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :2] = -100
    kw = dict(
        rewards=torch.rand(b, generator=g),
        prompt_index=torch.tensor([0, 0, 1, 1]),
        log_logging=-torch.rand(b, generator=g) * 5 - 10,
        aspects=torch.tensor([0, 1, 0, 0]),
        ref_logprobs=-torch.rand(b, t, generator=g) * 3 if beta else None,
    )
    obj = PopeObjective(lam=1.0, clip=5.0, beta=beta)
    out_h = obj(None, labels, hidden_states=hidden, lm_head_weight=weight, **kw)
    gh = torch.autograd.grad(out_h.loss, (hidden, weight))
    out_l = obj(hidden @ weight.T, labels, **kw)
    gl = torch.autograd.grad(out_l.loss, (hidden, weight))
    torch.testing.assert_close(out_h.loss, out_l.loss)
    for a, bb in zip(gh, gl):
        torch.testing.assert_close(a, bb, rtol=1e-5, atol=1e-6)


def test_flat_layout_equals_batched_layout():
    bt = _token_batch()
    b, t, v = bt["logits"].shape
    kw = dict(rewards=bt["rewards"], prompt_index=bt["prompt"], aspects=bt["aspects"])
    obj = PopeObjective(lam=0.3)
    ll = torch.where(bt["inside"], bt["tok_logging"], torch.zeros(())).sum(1)
    out_b = obj(bt["logits"], bt["labels"], log_logging=ll, **kw)
    seq = torch.arange(b).repeat_interleave(t)
    out_f = obj(
        bt["logits"].reshape(-1, v), bt["labels"].reshape(-1), seq_index=seq, log_logging=ll, **kw
    )
    torch.testing.assert_close(out_b.logp, out_f.logp)
    torch.testing.assert_close(out_b.stats.total, out_f.stats.total)


# ----------------------------------------------------------------------------- identities


@pytest.mark.parametrize("soft", [False, True])
def test_coverage_identity_weighted_diversity_reward_equals_entropy(soft):
    bt = make_batch(seed=11, soft=soft, c=4)
    out = PopeObjective(lam=1.0, num_aspects=4, diversity_estimator="plugin")(
        logp=bt["logp"],
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["log_logging"],
        aspects=bt["aspects"],
    )
    w = torch.exp(bt["logp"] - bt["log_logging"])
    q = bt["aspects"] if soft else torch.nn.functional.one_hot(bt["aspects"], 4).double()
    ents = []
    for j, key in enumerate(out.prompt_keys):
        idx = bt["prompt"] == key
        p_hat = (w[idx, None] * q[idx]).sum(0) / w[idx].sum()
        torch.testing.assert_close(out.coverage[j], p_hat)
        lhs = (w[idx] * out.diversity_reward[idx]).sum() / w[idx].sum()
        h = entropy(p_hat) / math.log(4)
        torch.testing.assert_close(lhs, h, rtol=1e-12, atol=1e-12)
        ents.append(h)
    torch.testing.assert_close(out.stats.diversity, torch.stack(ents).mean())
    # relevance is the SNIPS of r; total adds lam * diversity
    torch.testing.assert_close(out.stats.relevance, (w * bt["rewards"]).sum() / w.sum())
    torch.testing.assert_close(out.stats.total, out.stats.relevance + out.stats.diversity)


def test_on_policy_weights_are_one_and_diagnostics_are_exact():
    bt = make_batch(seed=5)
    out = PopeObjective(lam=0.0, clip=2.0, baseline="mean")(
        logp=bt["logp"],
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["logp"],
        aspects=bt["aspects"],
    )
    n = bt["logp"].shape[0]
    m = out.metrics()
    assert m["ess"] == pytest.approx(n)
    assert m["weight_mean"] == pytest.approx(1.0)
    assert m["weight_max"] == pytest.approx(1.0)
    assert m["clip_fraction"] == 0.0
    assert m["relevance"] == pytest.approx(bt["rewards"].mean().item())
    assert m["n_seqs"] == n and m["n_prompts"] == 4
    # with the per-prompt mean baseline the weighted advantages sum to 0 per prompt
    for key in out.prompt_keys:
        assert out.advantage[bt["prompt"] == key].sum().abs() < 1e-12


def test_diagnostics_of_known_weights():
    logp = torch.log(torch.tensor([0.2, 0.1, 0.4, 0.4], dtype=torch.float64))
    log_logging = torch.log(torch.tensor([0.1, 0.1, 0.1, 0.4], dtype=torch.float64))
    w = torch.tensor([2.0, 1.0, 4.0, 1.0], dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 0.5, 0.25], dtype=torch.float64)
    out = PopeObjective(clip=3.0)(
        logp=logp,
        rewards=r,
        prompt_index=torch.tensor([0, 0, 1, 1]),
        log_logging=log_logging,
        aspects=torch.tensor([0, 1, 0, 1]),
    )
    m = out.metrics()
    assert m["ess"] == pytest.approx((w.sum() ** 2 / (w**2).sum()).item())
    assert m["weight_max"] == pytest.approx(4.0)
    assert m["weight_mean"] == pytest.approx(2.0)
    assert m["clip_fraction"] == pytest.approx(0.25)
    we = w.clamp(max=3.0)
    assert m["relevance"] == pytest.approx(((we * r).sum() / we.sum()).item())


def test_log_space_extreme_propensities_stay_finite():
    """Sequence log-probs of -5000 and ratios of e^900 (beyond fp64 exp) with truncation."""
    bt = make_batch(seed=2)
    logp = (bt["logp"] * 100).requires_grad_(True)
    log_logging = logp.detach() - 900 + torch.linspace(0, 5, logp.shape[0], dtype=torch.float64)
    out = PopeObjective(lam=1.0, clip=10.0, truncation="gradient")(
        logp=logp,
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=log_logging,
        aspects=bt["aspects"],
    )
    (g,) = torch.autograd.grad(out.loss, logp)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    m = out.metrics()
    for k in ("relevance", "diversity", "total", "ess", "clip_fraction"):
        assert math.isfinite(m[k]), k
    assert 0 <= m["relevance"] <= 1
    # the self-normalised coverage only sees weight ratios within a prompt
    out2 = PopeObjective(lam=1.0, clip=10.0, truncation="gradient")(
        logp=logp.detach(),
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=log_logging - 900,
        aspects=bt["aspects"],
    )
    assert out2.stats.ess.item() == pytest.approx(out.stats.ess.item(), rel=1e-9)


def test_single_aspect_gives_zero_diversity():
    bt = make_batch(seed=4)
    out = PopeObjective(lam=1.0, num_aspects=1)(
        logp=bt["logp"],
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["log_logging"],
        aspects=torch.zeros_like(bt["aspects"]),
    )
    assert out.stats.diversity == 0
    assert (out.diversity_reward == 0).all()


def test_stats_merge_over_disjoint_prompts_equals_full_batch():
    bt = make_batch(seed=9, s_per_prompt=(2, 3, 1, 4, 2))
    obj = PopeObjective(lam=0.5, clip=2.5, ppo_eps=0.2)
    kw = dict(
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["log_logging"],
        aspects=bt["aspects"],
        logp=bt["logp"],
    )
    full = obj(**kw).stats
    split = bt["prompt"] <= bt["prompt"][5]
    parts = [obj(**{k: v[m] for k, v in kw.items()}).stats for m in (split, ~split)]
    merged = parts[0] + parts[1]
    assert isinstance(merged, ObjectiveStats)
    for k, v in full.metrics().items():
        assert merged.metrics()[k] == pytest.approx(v, rel=1e-12), k


def test_normalizer_scales_the_loss():
    bt = make_batch(seed=6)
    kw = dict(
        logp=bt["logp"],
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["log_logging"],
        aspects=bt["aspects"],
    )
    obj = PopeObjective(lam=0.5, ppo_eps=0.1)
    a = obj(**kw).loss
    b = obj(**kw, normalizer=4 * bt["logp"].shape[0]).loss
    assert a != 0
    torch.testing.assert_close(b, a / 4)


def test_shift_labels():
    labels = torch.tensor([[-100, -100, 5, 6, 7], [-100, 1, 2, -100, -100]])
    out = shift_labels(labels)
    assert out.tolist() == [[-100, 5, 6, 7, -100], [1, 2, -100, -100, -100]]
    assert labels[0, 2] == 5  # input untouched


# ----------------------------------------------------------------------------- errors


def _kw(bt):
    return dict(
        logp=bt["logp"],
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["log_logging"],
        aspects=bt["aspects"],
    )


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (
            lambda k: k.update(rewards=k["rewards"].clone().fill_(float("nan"))),
            ValueError,
            "rewards",
        ),
        (lambda k: k.update(rewards=k["rewards"] + 1.5), ValueError, r"rewards must lie in \["),
        (lambda k: k.update(prompt_index=k["prompt_index"][:-1]), ValueError, "prompt_index"),
        (lambda k: k.update(log_logging=k["log_logging"][:-2]), ValueError, "log_logging"),
        (lambda k: k.update(log_logging=k["log_logging"].abs()), ValueError, "log_logging"),
        (lambda k: k.update(aspects=k["aspects"].double()), ValueError, "aspects"),
        (lambda k: k.update(aspects=k["aspects"].tolist()), TypeError, "aspects"),
        (lambda k: k.update(prompt_index=k["prompt_index"].double()), TypeError, "prompt_index"),
        (lambda k: k.update(rewards=k["rewards"].long()), TypeError, "rewards"),
        (lambda k: k.pop("logp"), ValueError, "exactly one"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, exc, match):
    kw = _kw(make_batch())
    change(kw)
    with pytest.raises(exc, match=match):
        PopeObjective()(**kw)


def test_empty_response_and_bad_labels_raise():
    bt = _token_batch()
    labels = bt["labels"].clone()
    labels[2] = -100
    kw = dict(
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        aspects=bt["aspects"],
        log_logging=-torch.ones(5),
    )
    with pytest.raises(ValueError, match="sequence 2 has an empty response"):
        PopeObjective()(bt["logits"], labels, **kw)
    labels = bt["labels"].clone()
    labels[0, 2] = 999
    with pytest.raises(ValueError, match="labels must lie in"):
        PopeObjective()(bt["logits"], labels, **kw)
    with pytest.raises(ValueError, match="labels has shape"):
        PopeObjective()(bt["logits"], bt["labels"][:, :-1], **kw)
    with pytest.raises(ValueError, match="ref_logprobs"):
        PopeObjective(beta=0.1)(bt["logits"], bt["labels"], **kw)
    with pytest.raises(ValueError, match="aspects label"):
        PopeObjective(num_aspects=2)(bt["logits"], bt["labels"], **kw)
    soft = torch.full((5, 3), 0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        PopeObjective()(bt["logits"], bt["labels"], **{**kw, "aspects": soft})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ppo_eps=1.5), "ppo_eps"),
        (dict(clip=0.0), "clip"),
        (dict(lam=-1.0), "lam"),
        (dict(weighting="tokens"), "weighting"),
        (dict(baseline="median"), "baseline"),
        (dict(coverage="dr"), "coverage"),
        (dict(num_aspects=0), "num_aspects"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PopeObjective(**kwargs)


def test_coverage_snips_is_a_deprecated_spelling_of_self_normalized():
    """One spelling with pope.evaluate: "self_normalized"; "snips" warns and maps to it."""
    assert PopeObjective().coverage == "self_normalized"
    with pytest.warns(DeprecationWarning, match="self_normalized"):
        old = PopeObjective(coverage="snips", num_aspects=3)
    assert old.coverage == "self_normalized"
    bt = _token_batch()
    kw = dict(
        rewards=bt["rewards"],
        prompt_index=bt["prompt"],
        log_logging=bt["tok_logging"],
        aspects=bt["aspects"],
    )
    new = PopeObjective(coverage="self_normalized", num_aspects=3)
    a, b = old(bt["logits"], bt["labels"], **kw), new(bt["logits"], bt["labels"], **kw)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.coverage, b.coverage)
    assert a.stats.self_normalized and b.stats.self_normalized
