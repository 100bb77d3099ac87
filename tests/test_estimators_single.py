"""Single-response estimators: closed forms, naive references, intervals, bounds, merging.

Every expected value is computed here from an independent, naive (probability-space where
representable) formula; nothing is compared with a hard-coded output of the code under test.
"""

from __future__ import annotations

import math
from functools import reduce
from itertools import pairwise
from operator import add
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats as sps

import pope
from pope import estimators as E
from pope.backends import available_backends
from pope.backends import reference as ref_backend
from pope.estimate import WeightOverflowError
from pope.estimators.single import _as_float64

BACKENDS = available_backends()
REL = 1e-10


# ----------------------------------------------------------------------------- helpers
def make_bandit(rng: np.random.Generator, n: int = 400) -> dict[str, np.ndarray]:
    p0 = rng.uniform(0.05, 0.9, n)
    pt = np.clip(p0 * np.exp(rng.normal(0, 0.7, n)), 1e-4, 1.0)
    return {
        "reward": rng.uniform(0, 1, n),
        "log_target": np.log(pt),
        "log_logging": np.log(p0),
        "reward_hat": rng.uniform(0, 1, n),
        "value_hat": rng.uniform(0, 1, n),
    }


def naive_w(d: dict, clip: float | None = None) -> np.ndarray:
    w = np.exp(d["log_target"]) / np.exp(d["log_logging"])  # probability space
    return w if clip is None else np.minimum(w, clip)


def se_linear(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / math.sqrt(x.size))


def se_psi(psi: np.ndarray) -> float:
    n = psi.size
    return math.sqrt(float((psi**2).sum()) / (n * (n - 1)))


def naive(name: str, d: dict, clip: float | None = None, **kw) -> tuple[float, float]:
    """Value and standard error of each estimator from its textbook formula."""
    r, rh, vh = d["reward"], d["reward_hat"], d["value_hat"]
    w = naive_w(d, clip)
    if name == "ips":
        x = w * r
        return x.mean(), se_linear(x)
    if name == "snips":
        v = (w * r).sum() / w.sum()
        return v, se_psi(w * (r - v) / w.mean())
    if name == "sub_gaussian_ips":
        lam = kw["lam"]
        wl = w / (1 - lam + lam * w)
        x = wl * r
        return x.mean(), se_linear(x)
    if name == "dm":
        return vh.mean(), se_linear(vh)
    if name == "dr":
        x = vh + w * (r - rh)
        return x.mean(), se_linear(x)
    if name == "switch_dr":
        keep = naive_w(d) <= kw["tau"]
        x = vh + keep * w * (r - rh)
        return x.mean(), se_linear(x)
    if name == "sndr":
        dd = r - rh
        D = (w * dd).sum() / w.sum()
        psi = (vh - vh.mean()) + w * (dd - D) / w.mean()
        return vh.mean() + D, se_psi(psi)
    raise AssertionError(name)


def call(name: str, d: dict, **kw):
    f = getattr(E, name)
    if name in ("ips", "snips", "sub_gaussian_ips"):
        args = {k: d[k] for k in ("reward", "log_target", "log_logging")}
    else:
        args = dict(d)
    return f(**args, **kw)


CASES = [
    ("ips", {}),
    ("snips", {}),
    ("sub_gaussian_ips", {"lam": 0.3}),
    ("dm", {}),
    ("dr", {}),
    ("sndr", {}),
    ("switch_dr", {"tau": 2.0}),
]


# ----------------------------------------------------------------------------- naive refs
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", [None, 1.5])
@pytest.mark.parametrize(("name", "kw"), CASES)
def test_matches_naive_formula(rng, name, kw, clip, backend):
    d = make_bandit(rng)
    est = call(name, d, clip=clip, backend=backend, **kw)
    v, se = naive(name, d, clip=clip, **kw)
    assert est.value == pytest.approx(v, rel=REL)
    assert est.stderr == pytest.approx(se, rel=1e-8)
    assert est.n == d["reward"].size
    # contributions average to the value
    assert est.contributions.mean() == pytest.approx(est.value, rel=1e-10)


@pytest.mark.parametrize(("name", "kw"), CASES)
def test_backends_agree(rng, name, kw):
    d = make_bandit(rng)
    ref = call(name, d, backend="reference", clip=2.0, **kw)
    for b in BACKENDS:
        est = call(name, d, backend=b, clip=2.0, **kw)
        assert est.value == pytest.approx(ref.value, rel=1e-12)
        assert est.stderr == pytest.approx(ref.stderr, rel=1e-9)
        np.testing.assert_allclose(est.bootstrap(50, 3), ref.bootstrap(50, 3), rtol=1e-10)


def test_ips_contributions_and_diagnostics(rng):
    d = make_bandit(rng)
    est = E.ips(
        reward=d["reward"], log_target=d["log_target"], log_logging=d["log_logging"], clip=1.5
    )
    w = naive_w(d, 1.5)
    np.testing.assert_allclose(est.contributions, w * d["reward"], rtol=1e-12)
    assert not est.contributions.flags.writeable
    dg = est.diagnostics
    raw = naive_w(d)
    assert dg.n == raw.size
    assert dg.ess == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-12)
    assert dg.max_weight == pytest.approx(w.max(), rel=1e-12)
    assert dg.mean_weight == pytest.approx(w.mean(), rel=1e-12)
    assert dg.clipped_fraction == pytest.approx(np.mean(raw > 1.5))
    assert dg.extra["max_unclipped_weight"] == pytest.approx(raw.max(), rel=1e-12)


# ----------------------------------------------------------------------------- closed forms
def test_c1_vw_single_example():
    # p_log = 0.3, r = 1, p_pred = 0.6  ->  IPS 2.0, SNIPS 1.0
    kw = {"reward": [1.0], "log_target": [math.log(0.6)], "log_logging": [math.log(0.3)]}
    assert E.ips(**kw).value == pytest.approx(0.6 / 0.3, rel=1e-14)
    assert E.snips(**kw).value == pytest.approx(1.0, rel=1e-14)
    # an undefined standard error (one unit) is said, not printed as (-inf, inf)
    with pytest.warns(pope.estimate.InsufficientDataWarning, match="only 1 independent unit"):
        est = E.ips(**kw)
    for method in ("normal", "t"):
        with pytest.raises(ValueError, match="only 1 independent unit"):
            est.ci(method=method)


@pytest.mark.parametrize("backend", BACKENDS)
def test_c2_on_policy_gives_sample_mean(rng, backend):
    r = rng.uniform(0, 1, 257)
    lp = np.log(rng.uniform(0.01, 1, 257))
    for f in (E.ips, E.snips):
        est = f(reward=r, log_target=lp, log_logging=lp, backend=backend)
        assert est.value == pytest.approx(r.sum() / r.size, rel=1e-13)
        assert est.diagnostics.ess == pytest.approx(r.size)
    est = E.sub_gaussian_ips(reward=r, log_target=lp, log_logging=lp, lam=0.4, backend=backend)
    assert est.value == pytest.approx(r.mean(), rel=1e-13)  # w = 1 is a fixed point


def test_c3_dm_with_true_model_is_ground_truth(rng):
    n, a = 50, 4
    q = rng.uniform(0, 1, (n, a))
    pi = rng.dirichlet(np.ones(a), n)
    truth = float(np.einsum("ia,ia->", pi, q)) / n
    v_hat = (pi * q).sum(axis=1)
    assert E.dm(value_hat=v_hat).value == pytest.approx(truth, rel=1e-13)


def test_c4_clip_at_max_weight_is_unclipped(rng):
    d = make_bandit(rng)
    mx = naive_w(d).max()
    for name, kw in CASES:
        a = call(name, d, **kw)
        b = call(name, d, clip=mx * 1.0000001, **kw)
        assert b.value == pytest.approx(a.value, rel=1e-12), name
        assert b.stderr == pytest.approx(a.stderr, rel=1e-9), name


def test_c4_switch_dr_limits(rng):
    d = make_bandit(rng)
    dm = E.dm(value_hat=d["value_hat"])
    dr = E.dr(**d)
    assert E.switch_dr(**d, tau=0.0).value == pytest.approx(dm.value, rel=1e-13)
    assert E.switch_dr(**d, tau=1e30).value == pytest.approx(dr.value, rel=1e-13)
    assert E.switch_dr(**d, tau=math.inf).stderr == pytest.approx(dr.stderr, rel=1e-10)
    sw = E.switch_dr(**d, tau=1.0)
    assert sw.diagnostics.extra["switched_fraction"] == pytest.approx(np.mean(naive_w(d) > 1.0))


def test_c4_sub_gaussian_lambda_zero_is_ips(rng):
    d = make_bandit(rng)
    kw = {k: d[k] for k in ("reward", "log_target", "log_logging")}
    a, b = E.ips(**kw), E.sub_gaussian_ips(**kw, lam=0.0)
    assert b.value == pytest.approx(a.value, rel=1e-13)
    assert b.stderr == pytest.approx(a.stderr, rel=1e-10)
    # lam = 1 turns every (nonzero) weight into 1
    c = E.sub_gaussian_ips(**kw, lam=1.0)
    assert c.value == pytest.approx(d["reward"].mean(), rel=1e-13)


def test_c5_dr_family_zero_model_zero_reward(rng):
    d = make_bandit(rng)
    z = np.zeros_like(d["reward"])
    d0 = {**d, "reward": z, "reward_hat": z, "value_hat": z}
    for name, kw in [("dr", {}), ("sndr", {}), ("switch_dr", {"tau": 3.0}), ("dm", {})]:
        assert call(name, d0, **kw).value == 0.0


def test_c6_self_normalised_bounded_with_extreme_weights(rng):
    n = 300
    r = rng.uniform(0, 1, n)
    ll = np.log(rng.uniform(0.01, 1, n)) * 3  # cubed pscores
    lt = -rng.uniform(0, 300, n)
    ll = ll - 800.0  # log-ratios up to ~ +800: weights beyond float64
    assert (lt - ll).max() > 710
    s = E.snips(reward=r, log_target=lt, log_logging=ll)
    assert r.min() <= s.value <= r.max()
    assert math.isfinite(s.stderr)
    z = {"reward_hat": rng.uniform(0, 1, n), "value_hat": rng.uniform(0, 1, n)}
    sd = E.sndr(reward=r, log_target=lt, log_logging=ll, **z)
    assert -1.0 <= sd.value <= 2.0
    # the self-normalised value only depends on weight ratios: check against a shifted copy
    lr = lt - ll
    w = np.exp(lr - lr.max())
    assert s.value == pytest.approx((w * r).sum() / w.sum(), rel=1e-12)
    with pytest.raises(WeightOverflowError, match="clip"):
        E.ips(reward=r, log_target=lt, log_logging=ll)
    with pytest.raises(WeightOverflowError, match="snips"):
        E.dr(reward=r, log_target=lt, log_logging=ll, **z)
    # clipping makes IPS finite again
    c = E.ips(reward=r, log_target=lt, log_logging=ll, clip=1e6)
    assert c.value == pytest.approx(np.mean(np.exp(np.minimum(lr, math.log(1e6))) * r), rel=1e-12)


def test_c12_log_space_weights():
    # 200 tokens at p = 0.05 under logging, 0.06 under the target
    lt = 200 * math.log(0.06)
    ll = 200 * math.log(0.05)
    assert np.float32(0.05) ** 200 == 0.0  # the probability product underflows
    w = pope.weights.importance_weights([lt], [ll])[0]
    assert w == pytest.approx((0.06 / 0.05) ** 200, rel=1e-10)
    # where representable, log space equals the probability-space ratio
    rng = np.random.default_rng(5)
    pt, p0 = rng.uniform(0.01, 1, 100), rng.uniform(0.01, 1, 100)
    np.testing.assert_allclose(
        pope.weights.importance_weights(np.log(pt), np.log(p0)), pt / p0, rtol=1e-12
    )


def test_c10_constant_reward_and_nesting(rng):
    n = 800
    lp = np.log(rng.uniform(0.05, 1, n))
    r = np.full(n, 0.7)
    for f in (E.ips, E.snips):
        est = f(reward=r, log_target=lp, log_logging=lp)
        for m in ("normal", "t", "bootstrap"):
            lo, hi = est.ci(method=m, n_boot=200)
            assert lo - 1e-12 <= 0.7 <= hi + 1e-12
    d = make_bandit(rng, 2000)
    kw = {k: d[k] for k in ("reward", "log_target", "log_logging")}
    small = E.ips(**{k: v[:500] for k, v in kw.items()})
    big = E.ips(**kw)
    assert np.diff(big.ci())[0] < np.diff(small.ci())[0]
    widths = [np.diff(big.ci(alpha=a))[0] for a in (0.01, 0.05, 0.2)]
    assert widths[0] > widths[1] > widths[2]


def test_c11_quantiles_and_hoeffding_rate(rng):
    d = make_bandit(rng, 500)
    kw = {k: d[k] for k in ("reward", "log_target", "log_logging")}
    est = E.ips(**kw, clip=3.0)
    lo, hi = est.ci(alpha=0.1)
    assert (hi - lo) / 2 == pytest.approx(NormalDist().inv_cdf(0.95) * est.stderr, rel=1e-12)
    lo, hi = est.ci(alpha=0.05, method="t")
    assert (hi - lo) / 2 == pytest.approx(sps.t.ppf(0.975, 499) * est.stderr, rel=1e-9)
    # Hoeffding half-width: M sqrt(log(1/delta)/(2n)), shrinking as 1/sqrt(n)
    hw = est.value - est.lower_bound(0.05, method="hoeffding")
    assert hw == pytest.approx(3.0 * math.sqrt(math.log(1 / 0.05) / (2 * 500)), rel=1e-12)
    big = E.ips(**{k: np.tile(v, 4) for k, v in kw.items()}, clip=3.0)
    hw4 = big.value - big.lower_bound(0.05, method="hoeffding")
    assert hw / hw4 == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 30, 499, 1000, 1001, 10**5])
@pytest.mark.parametrize("p", [0.6, 0.95, 0.975, 0.995])
def test_t_quantile_matches_scipy(df, p):
    from pope.intervals import t_quantile

    assert t_quantile(p, df) == pytest.approx(sps.t.ppf(p, df), rel=1e-9)
    assert t_quantile(1 - p, df) == pytest.approx(sps.t.ppf(1 - p, df), rel=1e-9)


# ----------------------------------------------------------------------------- bounds
def test_lower_bounds_formulas(rng):
    d = make_bandit(rng, 600)
    kw = {k: d[k] for k in ("reward", "log_target", "log_logging")}
    M, n, delta = 2.5, 600, 0.1
    est = E.ips(**kw, clip=M)
    x = naive_w(d, M) * d["reward"]
    v, s2 = x.mean(), x.var(ddof=1)

    def hoeff(dl):
        return v - M * math.sqrt(math.log(1 / dl) / (2 * n))

    def bern(dl):
        lg = math.log(2 / dl)
        return v - math.sqrt(2 * s2 * lg / n) - 7 * M * lg / (3 * (n - 1))

    assert est.lower_bound(delta, method="hoeffding") == pytest.approx(hoeff(delta), rel=1e-10)
    assert est.lower_bound(delta, method="bernstein") == pytest.approx(bern(delta), rel=1e-10)
    auto = max(hoeff(delta / 2), bern(delta / 2))
    assert est.lower_bound(delta) == pytest.approx(auto, rel=1e-10)
    lo, hi = est.ci(alpha=0.1, method="hoeffding")
    assert v - lo == pytest.approx(v - hoeff(0.05), rel=1e-10)
    assert hi - v == pytest.approx(v - lo, rel=1e-12)
    # unclipped: no a priori range -> explicit opt-in to the heuristic bound
    raw = E.ips(**kw)
    with pytest.raises(ValueError, match="clip"):
        raw.lower_bound()
    mx = naive_w(d).max()
    h = raw.lower_bound(delta, method="hoeffding", heuristic=True)
    assert h == pytest.approx(raw.value - mx * math.sqrt(math.log(1 / delta) / (2 * n)))
    # self-normalised estimators have no finite-sample bound
    with pytest.raises(ValueError, match="no finite-sample bound"):
        E.snips(**kw, clip=M).lower_bound()
    # a bounded smoothing makes the bound exact without a clip: w_lam <= 1/lam
    sg = E.sub_gaussian_ips(**kw, lam=0.5)
    assert sg.lower_bound(delta, method="hoeffding") == pytest.approx(
        sg.value - 2.0 * math.sqrt(math.log(1 / delta) / (2 * n)), rel=1e-10
    )
    # switch-DR: terms in [-tau, 1 + tau]
    sw = E.switch_dr(**d, tau=2.0)
    assert sw.lower_bound(delta, method="hoeffding") == pytest.approx(
        sw.value - 5.0 * math.sqrt(math.log(1 / delta) / (2 * n)), rel=1e-10
    )
    # rewards outside [0, 1] -> no bound
    bad = E.ips(**{**kw, "reward": d["reward"] * 3}, clip=M)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bad.lower_bound()


# ----------------------------------------------------------------------------- bootstrap
def _indices(n: int, b: int, seed: int) -> np.ndarray:
    """Rows of Poisson-bootstrap resample b, each repeated its count times (the counts of the
    documented generator, checked against a pure-Python definition in test_backends)."""
    counts = ref_backend.bootstrap_counts(n, seed, b, b + 1)[0]
    return np.repeat(np.arange(n), counts)


def test_bootstrap_resamples_ratio_jointly(rng):
    d = make_bandit(rng, 60)
    kw = {k: d[k] for k in ("reward", "log_target", "log_logging")}
    w, r = naive_w(d), d["reward"]
    sn = E.snips(**kw)
    ip = E.ips(**kw)
    reps_sn, reps_ip = sn.bootstrap(5, seed=11), ip.bootstrap(5, seed=11)
    for b in range(5):
        idx = _indices(60, b, 11)
        assert reps_sn[b] == pytest.approx((w[idx] * r[idx]).sum() / w[idx].sum(), rel=1e-12)
        assert reps_ip[b] == pytest.approx((w[idx] * r[idx]).mean(), rel=1e-12)
    lo, hi = sn.ci(method="bootstrap", n_boot=5, seed=11, alpha=0.5)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(reps_sn, [0.25, 0.75])))


# ----------------------------------------------------------------------------- merging
@pytest.mark.parametrize(("name", "kw"), CASES)
@pytest.mark.parametrize("clip", [None, 4.0])
def test_c13_merge_equals_batch(rng, name, kw, clip):
    d = make_bandit(rng, 300)
    # make one shard's weights live on a very different scale
    d["log_logging"][200:] -= 30.0
    d["log_target"][200:] -= 1.0
    cuts = [0, 37, 200, 300]
    shards = [
        call(name, {k: v[a:b] for k, v in d.items()}, clip=clip, **kw).stats
        for a, b in pairwise(cuts)
    ]
    merged = reduce(add, shards).estimate()
    batch = call(name, d, clip=clip, **kw)
    assert merged.value == pytest.approx(batch.value, rel=1e-12)
    assert merged.stderr == pytest.approx(batch.stderr, rel=1e-9)
    assert merged.diagnostics.ess == pytest.approx(batch.diagnostics.ess, rel=1e-12, nan_ok=True)
    assert merged.diagnostics.clipped_fraction == pytest.approx(
        batch.diagnostics.clipped_fraction, nan_ok=True
    )
    with pytest.raises(ValueError, match="sufficient statistics"):
        _ = merged.contributions


def test_merge_rejects_different_parameters(rng):
    d = make_bandit(rng, 50)
    kw = {k: d[k] for k in ("reward", "log_target", "log_logging")}
    with pytest.raises(ValueError, match="log_clip"):
        _ = E.ips(**kw, clip=2.0).stats + E.ips(**kw).stats
    with pytest.raises(ValueError, match="kind"):
        _ = E.ips(**kw).stats + E.snips(**kw).stats
    with pytest.raises(TypeError):
        _ = E.ips(**kw).stats + E.dr(**d).stats


# ----------------------------------------------------------------------------- invalid inputs
def _base() -> dict:
    return {
        "reward": [0.5, 1.0, 0.0],
        "log_target": [-1.0, -2.0, -0.5],
        "log_logging": [-1.2, -0.3, -2.0],
    }


INVALID = [
    ({"reward": [0.5, np.nan, 0.0]}, {}, ValueError, "reward contains NaN"),
    ({"reward": [0.5, np.inf, 0.0]}, {}, ValueError, r"reward contains \+inf"),
    ({"log_target": [-1.0, np.inf, 0.0]}, {}, ValueError, r"log_target contains \+inf"),
    ({"log_target": [-1.0, np.nan, 0.0]}, {}, ValueError, "log_target contains NaN"),
    ({"log_target": [-1.0, 0.5, 0.0]}, {}, ValueError, "log-probabilities"),
    ({"log_logging": [-1.0, 0.1, -1.0]}, {}, ValueError, "log_logging must be log-prob"),
    ({"log_logging": [-1.0, -np.inf, -1.0]}, {}, ValueError, "log_logging contains -inf"),
    ({"reward": [0.5, 1.0]}, {}, ValueError, "shape"),
    ({"log_logging": [-1.0, -1.0]}, {}, ValueError, "shape"),
    ({"reward": [], "log_target": [], "log_logging": []}, {}, ValueError, "no samples"),
    ({"reward": [[0.5, 1.0, 0.0]]}, {}, ValueError, "1-dimensional"),
    ({"reward": ["a", "b", "c"]}, {}, TypeError, "numeric"),
    ({"reward": None}, {}, TypeError, "required"),
    ({}, {"clip": -1.0}, ValueError, "clip must be > 0"),
    ({}, {"clip": 0.0}, ValueError, "clip must be > 0"),
    ({}, {"clip": np.nan}, ValueError, "clip"),
    ({}, {"clip": "big"}, TypeError, "clip"),
    ({}, {"backend": "fortran"}, ValueError, "backend"),
]


@pytest.mark.parametrize(("patch", "kw", "err", "match"), INVALID)
@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_invalid_inputs(name, patch, kw, err, match):
    args = {**_base(), **patch}
    if name == "dr":
        n = len(args["reward"]) if args["reward"] is not None else 3
        args |= {"reward_hat": [0.1] * n, "value_hat": [0.2] * n}
    with pytest.raises(err, match=match):
        getattr(E, name)(**args, **kw)


def _legacy_error(args: dict) -> str | None:
    """The message of the separate NumPy checks (the reference of the fused ones)."""
    from pope._validation import as_float_array
    from pope.weights import validate_log_probs

    try:
        validate_log_probs(args["log_target"], args["log_logging"])
        as_float_array(args["reward"], "reward")
    except ValueError as exc:
        return str(exc)
    return None


FUSED_BAD = [  # (argument, bad value): every value check of the fused pass
    ("log_target", np.nan),
    ("log_target", np.inf),
    ("log_target", 0.25),
    ("log_logging", np.nan),
    ("log_logging", np.inf),
    ("log_logging", -np.inf),
    ("log_logging", 1e-12),
    ("reward", np.nan),
    ("reward", np.inf),
    ("reward", -np.inf),
]


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("name", ["ips", "snips"])
def test_fused_checks_same_errors(rng, name, backend):
    """The value checks run inside the backend's pass (several chunks and threads here); the
    error names the argument and the first bad index exactly as the separate NumPy checks."""
    n = 3 * (1 << 16) + 11
    d = make_bandit(rng, n)
    base = {k: d[k] for k in ("reward", "log_target", "log_logging")}
    for k in range(len(FUSED_BAD)):
        arg, v = FUSED_BAD[k]
        args = {a: x.copy() for a, x in base.items()}
        pos = rng.integers(0, n, 3)
        args[arg][pos] = v
        if k % 2:  # a second kind of bad value in another argument
            arg2, v2 = FUSED_BAD[(k + 5) % len(FUSED_BAD)]
            args[arg2][rng.integers(0, n, 2)] = v2
        want = _legacy_error(args)
        assert want is not None
        copies = {a: x.copy() for a, x in args.items()}
        for x in args.values():
            x.flags.writeable = False
        with pytest.raises(ValueError) as info:
            getattr(E, name)(**args, clip=3.0, backend=backend)
        assert str(info.value) == want
        for a in args:
            np.testing.assert_array_equal(args[a], copies[a])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_path_no_copy_read_only(rng, backend):
    """float64 C-contiguous read-only inputs are used in place and give the reference's
    estimate; other dtypes and layouts are converted (rewards in [0, 1] detected either way)."""
    d = make_bandit(rng, 5000)
    for v in d.values():
        v.flags.writeable = False
    args = {k: d[k] for k in ("reward", "log_target", "log_logging")}
    for name in ("ips", "snips"):
        want = getattr(E, name)(**args, clip=2.0, backend="reference")
        got = getattr(E, name)(**args, clip=2.0, backend=backend)
        assert got.value == pytest.approx(want.value, rel=1e-12)
        assert got.stderr == pytest.approx(want.stderr, rel=1e-10)
        assert got.stats.rewards_in_range and want.stats.rewards_in_range
        strided = {k: np.repeat(v, 2)[::2] for k, v in args.items()}  # non-contiguous views
        f32 = {k: v.astype(np.float32) for k, v in args.items()}
        for other in (strided, f32, {k: list(v) for k, v in args.items()}):
            e = getattr(E, name)(**other, clip=2.0, backend=backend)
            ref_e = getattr(E, name)(**other, clip=2.0, backend="reference")
            assert e.value == pytest.approx(ref_e.value, rel=1e-12)
    out = {**args, "reward": args["reward"] * 2.0 - 0.5}
    assert not E.ips(**out, backend=backend).stats.rewards_in_range
    for v in args.values():
        assert _as_float64(v, "x") is v  # no copy


def test_fused_path_converts_without_copy():
    a = np.linspace(-1.0, 0.0, 10)
    assert _as_float64(a, "a") is a
    b = _as_float64(a[::2], "a")
    assert b.flags.c_contiguous and not np.shares_memory(a, b)


INVALID_EXTRA = [
    ("sub_gaussian_ips", {"lam": -0.1}, ValueError, "lam must lie in"),
    ("sub_gaussian_ips", {"lam": 1.5}, ValueError, "lam must lie in"),
    ("sub_gaussian_ips", {"lam": np.nan}, ValueError, "lam"),
    ("switch_dr", {"tau": -1.0}, ValueError, "tau must lie in"),
    ("switch_dr", {"tau": None}, TypeError, "tau"),
    ("dr", {"reward_hat": [0.1, 0.2]}, ValueError, "reward_hat has length"),
    ("dr", {"value_hat": [0.1, np.nan, 0.2]}, ValueError, "value_hat contains NaN"),
    ("dm", {"value_hat": [0.1, 0.2], "reward": [1.0]}, ValueError, "reward has length"),
    ("dm", {"value_hat": [0.1], "log_target": [-1.0]}, ValueError, "both"),
    ("dm", {"value_hat": []}, ValueError, "no samples"),
]


@pytest.mark.parametrize(("name", "kw", "err", "match"), INVALID_EXTRA)
def test_invalid_parameters(name, kw, err, match):
    base = {**_base(), "reward_hat": [0.1] * 3, "value_hat": [0.2] * 3}
    if name == "sub_gaussian_ips":
        base = _base()
    if name == "dm":
        base = {}
    if name == "switch_dr":
        base["tau"] = 1.0
    with pytest.raises(err, match=match):
        getattr(E, name)(**{**base, **kw})


@pytest.mark.parametrize(
    ("call_", "err", "match"),
    [
        (lambda e: e.ci(alpha=0.0), ValueError, r"alpha must lie in \(0, 1\)"),
        (lambda e: e.ci(alpha=1.0), ValueError, r"alpha must lie in \(0, 1\)"),
        (lambda e: e.ci(alpha=-0.5), ValueError, "alpha"),
        (lambda e: e.ci(method="jackknife"), ValueError, "method must be one of"),
        (lambda e: e.ci(method="bootstrap", n_boot=0), ValueError, "n_boot"),
        (lambda e: e.ci(method="bootstrap", seed=-1), ValueError, "seed"),
        (lambda e: e.lower_bound(delta=1.0), ValueError, "delta"),
        (lambda e: e.lower_bound(method="chebyshev"), ValueError, "method must be one of"),
    ],
)
def test_invalid_interval_arguments(call_, err, match):
    est = E.ips(**_base(), clip=2.0)
    with pytest.raises(err, match=match):
        call_(est)


# ----------------------------------------------------------------------------- purity
@pytest.mark.parametrize(("name", "kw"), CASES)
def test_inputs_not_modified(rng, name, kw):
    d = make_bandit(rng, 100)
    copies = {k: v.copy() for k, v in d.items()}
    for v in d.values():
        v.flags.writeable = False
    est = call(name, d, clip=1.2, **kw)
    _ = est.contributions, est.bootstrap(20), est.ci()
    for k in d:
        np.testing.assert_array_equal(d[k], copies[k])


def test_zero_weights(rng):
    d = make_bandit(rng, 20)
    lt = np.full(20, -np.inf)
    kw = {"reward": d["reward"], "log_target": lt, "log_logging": d["log_logging"]}
    assert E.ips(**kw).value == 0.0
    with pytest.raises(ValueError, match="zero"):
        E.snips(**kw)
    # a few zero weights are just zeros
    lt2 = d["log_target"].copy()
    lt2[:5] = -np.inf
    est = E.snips(**{**kw, "log_target": lt2})
    w = np.exp(lt2 - d["log_logging"])
    assert est.value == pytest.approx((w * d["reward"]).sum() / w.sum(), rel=1e-12)


# ----------------------------------------------------------------------------- weights module
def test_weight_helpers(rng):
    from pope import weights as W

    d = make_bandit(rng, 50)
    lt, ll = d["log_target"], d["log_logging"]
    np.testing.assert_allclose(
        W.log_importance_weights(lt, ll, clip=1.5), np.log(naive_w(d, 1.5)), rtol=1e-12
    )
    dg = W.weight_diagnostics(lt, ll, clip=1.5)
    w = naive_w(d, 1.5)
    assert dg.ess == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-12)
    assert dg.mean_weight == pytest.approx(w.mean(), rel=1e-12)
    assert dg.ess_fraction == pytest.approx(dg.ess / 50)
    # smoothed weights: w / (1 - lam + lam w), zero stays zero
    lw = np.array([-np.inf, -3.0, 0.0, 2.0, 50.0])
    with np.errstate(divide="ignore"):
        wl = np.exp(lw) / (1 - 0.25 + 0.25 * np.exp(lw))
    np.testing.assert_allclose(np.exp(W.sub_gaussian_log_weights(lw, 0.25)), wl, rtol=1e-12)
    # token means, with an empty response
    ptr = np.array([0, 2, 2, 5])
    tlt, tll = np.log(rng.uniform(0.1, 1, 5)), np.log(rng.uniform(0.1, 1, 5))
    got = W.token_mean_log_ratio(tlt, tll, ptr)
    expect = [np.mean(tlt[0:2] - tll[0:2]), 0.0, np.mean(tlt[2:5] - tll[2:5])]
    np.testing.assert_allclose(got, expect, rtol=1e-12)
    with pytest.raises(ValueError, match="token_ptr"):
        W.token_mean_log_ratio(tlt, tll, [0, 3, 2, 5])
    with pytest.raises(WeightOverflowError, match="clip"):
        W.importance_weights([0.0], [-800.0])


def test_estimate_summaries(rng):
    d = make_bandit(rng, 100)
    est = E.ips(reward=d["reward"], log_target=d["log_target"], log_logging=d["log_logging"])
    out = est.to_dict()
    assert out["value"] == est.value and out["ci_lower"] == est.ci()[0]
    assert "ips" in repr(est)
    assert est.variance == pytest.approx(est.stderr**2)
