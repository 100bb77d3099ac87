"""``pope demo --quick`` end to end: results.json, the figure, and numbers that check out."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pope import demo
from pope.synthetic import CandidateEnv

SEED = 3


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = demo.main(["--quick", "--out", str(out), "--seed", str(SEED), "--no-progress"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    return out, results, buf.getvalue()


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_outputs_written(demo_run: tuple[Path, dict[str, Any], str]) -> None:
    out, results, _ = demo_run
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert set(results) >= {"config", "evaluation", "training", "runtime_s"}
    assert results["config"]["quick"] is True and results["config"]["seed"] == SEED
    assert _finite(results["runtime_s"]["total"])


def test_evaluation_section(demo_run: tuple[Path, dict[str, Any], str]) -> None:
    _, results, _ = demo_run
    pols = results["evaluation"]["policies"]
    assert len(pols) >= 4
    families = {r["family"] for p in pols for r in p["estimates"]}
    assert families == {"relevance", "list", "pope", "joint"}
    names = {r["estimator"] for r in pols[0]["estimates"]}
    for want in (
        "IPS",
        "SNIPS",
        "DM",
        "DR",
        "SNDR",
        "SIPS/K",
        "IIPS/K",
        "RIPS/K",
        "POPE relevance",
        "POPE diversity",
        "POPE total",
        "joint IPS (=SIPS)",
    ):
        assert want in names
    kls = [p["truth"]["kl"] for p in pols]
    assert kls[0] == pytest.approx(0.0, abs=1e-12) and max(kls) > 0.3  # near and far targets
    for p in pols:
        t = p["truth"]
        assert 0 <= t["relevance"] <= 1 and 0 <= t["diversity"] <= 1
        assert t["total"] == pytest.approx(
            t["relevance"] + results["config"]["lam"] * t["diversity"]
        )
        assert t["list_diversity"] <= t["diversity"] + 1e-12
        for r in p["estimates"]:
            assert _finite(r["truth"]) and _finite(r["estimate"])
            assert r["error"] == pytest.approx(r["estimate"] - r["truth"])
            assert r["truth"] == pytest.approx(
                {"U": t["relevance"], "D": t["diversity"], "V": t["total"]}[r["quantity"]]
            )
            if r["estimator"] in ("IPS", "SNIPS", "POPE total"):
                assert _finite(r["stderr"]) and r["ci_lower"] <= r["estimate"] <= r["ci_upper"]


def test_evaluation_numbers_reproduce(demo_run: tuple[Path, dict[str, Any], str]) -> None:
    """Rebuild the quick environment and log independently and check the on-policy row."""
    _, results, _ = demo_run
    cfg = demo.DemoConfig.quick()
    env = CandidateEnv.make(
        n_prompts=cfg.env_prompts,
        n_candidates=cfg.env_candidates,
        n_aspects=cfg.n_aspects,
        seed=SEED,
    )
    log = env.sample_logs(k=cfg.k, seed=SEED + 1)
    on = results["evaluation"]["policies"][0]
    assert on["truth"]["relevance"] == pytest.approx(env.value(env.logging_policy).relevance)
    rows = {r["estimator"]: r for r in on["estimates"]}
    # on-policy: IPS = SNIPS = the sample mean reward
    assert rows["IPS"]["estimate"] == pytest.approx(log.feedback.signal.mean(), abs=1e-12)
    assert rows["SNIPS"]["estimate"] == pytest.approx(log.feedback.signal.mean(), abs=1e-12)
    # on-policy POPE diversity (library default, the minimax polynomial of degree L chosen
    # among 2..4): all weights are 1, so the power sums are sum_c C(n_c, j) / C(K, j) with
    # n_c the aspect counts of a prompt, and D_hat = c0 + sum_j g_j mean_i P_j,i
    from math import comb

    from pope.polynomial import entropy_polynomial

    fb = log.feedback
    k = int(fb.counts[0])
    assert (fb.counts == k).all()

    def p_j(j: int) -> float:
        vals = []
        for i in range(fb.n_prompts):
            n_c = np.bincount(
                fb.aspect[fb.prompt_ptr[i] : fb.prompt_ptr[i + 1]], minlength=env.n_aspects
            )
            vals.append(sum(comb(int(x), j) for x in n_c) / comb(k, j))
        return float(np.mean(vals))

    cands = []
    for L in range(2, min(k, 4) + 1):
        poly = entropy_polynomial(env.n_aspects, L)
        cands.append(poly.c0 + sum(g * p_j(j) for j, g in enumerate(poly.g, start=2)))
    got = rows["POPE diversity"]["estimate"]
    assert min(abs(got - x) for x in cands) < 1e-10, (got, cands)


def test_training_section(demo_run: tuple[Path, dict[str, Any], str]) -> None:
    _, results, _ = demo_run
    tr = results["training"]
    assert set(tr["methods"]) == {"pope", "utility", "rwft"}
    before = tr["before"]
    for k in ("relevance", "diversity", "total"):
        assert _finite(before[k]) and _finite(before[k + "_stderr"]) and before[k + "_stderr"] > 0
    steps = tr["env"]["steps"]
    for m in tr["methods"].values():
        a = m["after"]
        # the truth is a Monte Carlo estimate with the Miller-Madow correction
        # (C_+ - 1)/(2 m log C), which can lift a near-uniform coverage above 1 by at most that
        c, n_mc = tr["env"]["n_aspects"], a["n_samples"]
        assert 0 <= a["relevance"] <= 1
        assert 0 <= a["diversity"] <= 1 + (c - 1) / (2 * n_mc * math.log(c))
        assert a["n_samples"] > 0 and 0 < a["relevance_stderr"] < 0.05
        hist = m["history"]
        assert hist[0]["step"] == 0 and hist[-1]["step"] == steps
        assert all(_finite(h["total"]) for h in hist)
        for lg in ("train_log", "heldout_log"):
            est = m["pope_estimate"][lg]
            assert all(_finite(est[k]) for k in ("relevance", "diversity", "total", "ess"))
    # the objective's own metrics are recorded for the two PopeObjective runs
    for name in ("pope", "utility"):
        met = tr["methods"][name]["final_train_metrics"]
        assert _finite(met["ess"]) and _finite(met["relevance"])


def test_printed_tables(demo_run: tuple[Path, dict[str, Any], str]) -> None:
    _, results, text = demo_run
    assert "Part 1" in text and "Part 2" in text
    for p in results["evaluation"]["policies"]:
        assert p["policy"] in text
    assert "before -> after" in text and "results.json" in text


def test_cli_plumbing() -> None:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--quick", "--seed", "5", "--out", "x"])
    assert args.quick and args.seed == 5 and str(args.out) == "x" and args.lam == 1.0
    assert parser.parse_args([]).out == Path("./pope-demo")
    proc = subprocess.run(
        [sys.executable, "-m", "pope.demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "--quick" in proc.stdout


def test_bad_lambda(tmp_path: Path) -> None:
    assert demo.main(["--quick", "--lam", "-1", "--out", str(tmp_path)]) == 2


def test_evaluation_suite_ragged_and_soft() -> None:
    """Ragged K (no list estimators) and soft aspects: every row finite, truths consistent."""
    env = CandidateEnv.make(n_prompts=30, n_candidates=6, n_aspects=3, soft_aspects=True, seed=2)
    log = env.sample_logs(n_prompts=200, k=(2, 6), seed=1)
    pol = env.tilt(utility=1.0)
    truth = demo.true_values(env, pol, 0.5, 4)
    rows = demo.evaluation_suite(log, pol, lam=0.5, truth=truth)
    assert {r["family"] for r in rows} == {"relevance", "pope", "joint"}  # lists skipped
    for r in rows:
        assert _finite(r["estimate"]) and _finite(r["truth"])
    # the joint list reward is the mean reward plus lambda times the normalised entropy
    big_r = demo.joint_list_reward(log, 0.5)
    fb = log.feedback
    i = 3
    sl = slice(fb.prompt_ptr[i], fb.prompt_ptr[i + 1])
    q = fb.aspect_probs[sl].mean(axis=0)
    h = -sum(x * math.log(x) for x in q if x > 0) / math.log(3)
    assert big_r[i] == pytest.approx(fb.signal[sl].mean() + 0.5 * h)
