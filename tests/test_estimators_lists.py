"""List (slate) estimators SIPS / IIPS / RIPS against naive formulas and enumerations."""

from __future__ import annotations

import itertools
import math
from functools import reduce
from operator import add

import numpy as np
import pytest

from pope import estimators as E
from pope.backends import available_backends

BACKENDS = available_backends()


def make_lists(rng: np.random.Generator, n: int = 300, L: int = 3) -> dict[str, np.ndarray]:
    p0 = rng.uniform(0.1, 0.9, (n, L))
    pt = np.clip(p0 * np.exp(rng.normal(0, 0.5, (n, L))), 1e-3, 1.0)
    return {
        "reward": rng.uniform(0, 1, (n, L)),
        "log_target": np.log(pt),
        "log_logging": np.log(p0),
    }


def naive_terms(name: str, d: dict, clip: float | None = None) -> np.ndarray:
    """Per-list terms in probability space (products of ratios)."""
    ratio = np.exp(d["log_target"]) / np.exp(d["log_logging"])
    r = d["reward"]
    if name == "sips":
        w = np.prod(ratio, axis=1)
        w = w if clip is None else np.minimum(w, clip)
        return w * r.sum(axis=1)
    if name == "iips":
        w = ratio if clip is None else np.minimum(ratio, clip)
        return (w * r).sum(axis=1)
    if name == "rips":
        w = np.cumprod(ratio, axis=1)
        w = w if clip is None else np.minimum(w, clip)
        return (w * r).sum(axis=1)
    raise AssertionError(name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", [None, 1.3])
@pytest.mark.parametrize("name", ["sips", "iips", "rips"])
def test_matches_naive(rng, name, clip, backend):
    d = make_lists(rng)
    est = getattr(E, name)(**d, clip=clip, backend=backend)
    x = naive_terms(name, d, clip)
    assert est.value == pytest.approx(x.mean(), rel=1e-11)
    assert est.stderr == pytest.approx(x.std(ddof=1) / math.sqrt(x.size), rel=1e-8)
    np.testing.assert_allclose(est.contributions, x, rtol=1e-11)
    ref = getattr(E, name)(**d, clip=clip, backend="reference")
    np.testing.assert_allclose(est.bootstrap(30, 1), ref.bootstrap(30, 1), rtol=1e-10)


def test_c2_on_policy_lists_give_mean_list_reward(rng):
    d = make_lists(rng)
    d["log_target"] = d["log_logging"].copy()
    truth = d["reward"].sum(axis=1).mean()
    for name in ("sips", "iips", "rips"):
        assert getattr(E, name)(**d).value == pytest.approx(truth, rel=1e-13)


def test_length_one_lists_are_ips(rng):
    d = make_lists(rng, L=1)
    one = {k: v[:, 0] for k, v in d.items()}
    ips = E.ips(**one, clip=1.5)
    for name in ("sips", "iips", "rips"):
        est = getattr(E, name)(**d, clip=1.5)
        assert est.value == pytest.approx(ips.value, rel=1e-12)
        assert est.stderr == pytest.approx(ips.stderr, rel=1e-9)


def test_c8_uniform_without_replacement_propensities():
    items, L = 10, 3
    slates = list(itertools.permutations(range(items), L))
    # conditional probabilities of the uniform policy without replacement, by counting
    cond = np.log([[1 / (items - l) for l in range(L)]])
    joint = E.joint_log_propensity(cond)[0]
    assert math.exp(joint) == pytest.approx(1 / len(slates), rel=1e-12)  # 1/720
    prefixes = np.exp(E.cascade_log_propensity(cond)[0])
    counts = [len(set(s[: l + 1] for s in slates)) for l in range(L)]
    np.testing.assert_allclose(prefixes, [1 / c for c in counts], rtol=1e-12)  # 1/10,1/90,1/720
    # item-position marginals by enumeration: every item appears at every position w.p. 1/10
    marg = np.zeros((items, L))
    for s in slates:
        for l, it in enumerate(s):
            marg[it, l] += 1 / len(slates)
    np.testing.assert_allclose(marg, 1 / items, rtol=1e-12)


def test_c7_plackett_luce_normalises():
    logits = np.arange(5.0)
    slates = list(itertools.permutations(range(5), 3))

    def cond(s):
        rem = list(range(5))
        out = []
        for it in s:
            z = logits[rem]
            out.append(logits[it] - np.log(np.exp(z).sum()))
            rem.remove(it)
        return out

    lj = E.joint_log_propensity(np.array([cond(s) for s in slates]))
    assert np.exp(lj).sum() == pytest.approx(1.0, rel=1e-12)
    # direct product for one slate: softmax over remaining items
    e = np.exp(logits)
    p = e[3] / e.sum() * e[1] / (e.sum() - e[3]) * e[0] / (e.sum() - e[3] - e[1])
    assert np.exp(E.joint_log_propensity(np.array([cond((3, 1, 0))]))[0]) == pytest.approx(p)


def test_iips_rips_sips_unbiased_on_enumerated_slates(rng):
    """Exact expectations: sum over all logged slates of pi0(s) * estimator term == truth."""
    items, L = 4, 2
    slates = list(itertools.permutations(range(items), L))

    def pl_cond(logits, s):
        rem, out = list(range(items)), []
        for it in s:
            out.append(logits[it] - np.log(np.exp(logits[rem]).sum()))
            rem.remove(it)
        return np.array(out)

    lg0, lgt = rng.normal(size=items), rng.normal(size=items)
    rel = rng.uniform(0, 1, items)
    # position-independent item reward (satisfies the independence and cascade assumptions)
    reward = np.array([[rel[it] for it in s] for s in slates])
    c0 = np.array([pl_cond(lg0, s) for s in slates])
    ct = np.array([pl_cond(lgt, s) for s in slates])
    p0, pt = np.exp(c0.sum(1)), np.exp(ct.sum(1))
    truth = (pt * reward.sum(1)).sum()

    def marg(p):
        m = np.zeros((items, L))
        for s, ps in zip(slates, p):
            for l, it in enumerate(s):
                m[it, l] += ps
        return np.log(np.array([[m[it, l] for l, it in enumerate(s)] for s in slates]))

    for name, lt, ll in [("sips", ct, c0), ("rips", ct, c0), ("iips", marg(pt), marg(p0))]:
        est = getattr(E, name)(reward=reward, log_target=lt, log_logging=ll)
        expectation = (p0 * est.contributions).sum()
        assert expectation == pytest.approx(truth, rel=1e-12), name


@pytest.mark.parametrize("name", ["sips", "iips", "rips"])
@pytest.mark.parametrize("clip", [None, 2.0])
def test_merge_equals_batch(rng, name, clip):
    d = make_lists(rng, 200)
    d["log_logging"][120:] -= 5.0
    parts = [
        getattr(E, name)(**{k: v[a:b] for k, v in d.items()}, clip=clip).stats
        for a, b in [(0, 50), (50, 120), (120, 200)]
    ]
    merged = reduce(add, parts).estimate()
    batch = getattr(E, name)(**d, clip=clip)
    assert merged.value == pytest.approx(batch.value, rel=1e-12)
    assert merged.stderr == pytest.approx(batch.stderr, rel=1e-9)
    assert merged.diagnostics.ess == pytest.approx(batch.diagnostics.ess, rel=1e-12)


def test_bounds_scale_with_list_length(rng):
    d = make_lists(rng, 400, L=3)
    n, M, delta = 400, 2.0, 0.05
    for name in ("sips", "iips", "rips"):
        est = getattr(E, name)(**d, clip=M)
        hw = est.value - est.lower_bound(delta, method="hoeffding")
        assert hw == pytest.approx(3 * M * math.sqrt(math.log(1 / delta) / (2 * n)), rel=1e-12)
        with pytest.raises(ValueError, match="clip"):
            getattr(E, name)(**d).lower_bound()


INVALID = [
    ({"reward": np.zeros(3)}, ValueError, "2-dimensional"),
    ({"reward": np.zeros((3, 2))}, ValueError, "shape"),
    ({"log_target": np.zeros((3, 2))}, ValueError, "shape"),
    ({"log_target": np.full((3, 3), 0.2)}, ValueError, "log-probabilities"),
    ({"log_logging": np.full((3, 3), -np.inf)}, ValueError, "-inf"),
    ({"reward": np.full((3, 3), np.nan)}, ValueError, "NaN"),
    ({"clip": -2.0}, ValueError, "clip"),
    ({"backend": "gpu"}, ValueError, "backend"),
]


@pytest.mark.parametrize(("patch", "err", "match"), INVALID)
@pytest.mark.parametrize("name", ["sips", "iips", "rips"])
def test_invalid_inputs(name, patch, err, match):
    base = {
        "reward": np.full((3, 3), 0.5),
        "log_target": np.full((3, 3), -1.0),
        "log_logging": np.full((3, 3), -1.5),
    }
    with pytest.raises(err, match=match):
        getattr(E, name)(**{**base, **patch})


@pytest.mark.parametrize("name", ["sips", "iips", "rips"])
def test_inputs_not_modified(rng, name):
    d = make_lists(rng, 50)
    copies = {k: v.copy() for k, v in d.items()}
    for v in d.values():
        v.flags.writeable = False
    est = getattr(E, name)(**d, clip=1.5)
    _ = est.contributions, est.bootstrap(10)
    for k in d:
        np.testing.assert_array_equal(d[k], copies[k])
