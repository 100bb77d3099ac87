"""Several policies on one log: one logging pass, per-policy results, paired differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_cli import load_causal_lm, make_model, naive_logprob, random_log

import pope
from pope.paired import evaluate_policies
from pope.pipeline import EvalSpec

pytestmark = pytest.mark.filterwarnings("ignore::pope.estimate.InsufficientDataWarning")


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    return [make_model(root / f"m{i}", 10 + i) for i in range(3)]


def test_policies_share_the_log_and_pair(three_models):
    rng = np.random.default_rng(3)
    df = random_log(rng, n_prompts=15)
    logging, a, b = three_models
    lm, tok = load_causal_lm(logging, device="cpu")
    df["log_logging"] = [naive_logprob(lm, tok, p, r) for p, r in zip(df.prompt, df.response)]
    spec = EvalSpec(lam=0.5, estimators=())
    res = evaluate_policies(df, spec, [a, b])
    assert len(res.results) == 2 and len(res.comparisons) == 1
    cmp = res.comparisons[0]
    # each policy's own result equals a direct evaluation with that policy's log-probs
    ta, tb = (
        np.array(
            [
                naive_logprob(*load_causal_lm(m, device="cpu"), p, r)
                for p, r in zip(df.prompt, df.response)
            ]
        )
        for m in (a, b)
    )
    fb = res.results[0].pope.stats  # same feedback for both: compare on the prepared rows
    assert fb.n_prompts == res.results[1].pope.stats.n_prompts
    # the relevance difference is the difference of the two evaluations; the diversity of
    # both sides of the comparison uses one shared polynomial degree
    va, vb = (r.pope.relevance.value for r in res.results)
    assert cmp.relevance.value == pytest.approx(vb - va, rel=1e-9, abs=1e-12)
    assert cmp.a.degree == cmp.b.degree
    for name in ("relevance", "diversity", "total"):
        d = getattr(cmp, name)
        # paired difference b - a, with the influence stderr of the same prompts
        assert d.value == pytest.approx(
            getattr(cmp.a, name).value - getattr(cmp.b, name).value, rel=1e-9, abs=1e-12
        )
        psi = cmp.a.influence(name) - cmp.b.influence(name)
        n = psi.size
        assert d.stderr == pytest.approx(math.sqrt((psi**2).sum() / (n * (n - 1))), rel=1e-9)
    out = res.to_dict()
    assert list(out["policies"]) == [a, b]
    assert out["paired"][0]["a"] == b and out["paired"][0]["b"] == a
    assert "paired difference" in res.table()
    assert np.isfinite(ta).all() and np.isfinite(tb).all()


def test_policies_need_two_and_sequence_weighting(three_models):
    df = random_log(np.random.default_rng(1), n_prompts=4)
    df["log_logging"] = -5.0
    with pytest.raises(ValueError, match="at least two"):
        evaluate_policies(df, EvalSpec(), [three_models[0]])
    with pytest.raises(ValueError, match="weighting='sequence'"):
        evaluate_policies(df, EvalSpec(weighting="token_mean"), three_models[:2])
    assert pope.compare  # the paired engine is the public function


def _log_of_first_model(models, tmp_path, seed: int):
    """A JSON Lines log of 10 prompts whose log_logging is the first model's."""
    df = random_log(np.random.default_rng(seed), n_prompts=10)
    lm, tok = load_causal_lm(models[0], device="cpu")
    df["log_logging"] = [naive_logprob(lm, tok, p, r) for p, r in zip(df.prompt, df.response)]
    logs = tmp_path / "logs.jsonl"
    df.to_json(logs, orient="records", lines=True)
    return logs


def test_cli_several_policies_write_the_paired_table(three_models, tmp_path, capsys):
    import json

    from pope.cli import main

    logs = _log_of_first_model(three_models, tmp_path, seed=5)
    out = tmp_path / "res.json"
    code = main(
        [
            "evaluate",
            "--logs",
            str(logs),
            "--policy",
            three_models[1],
            "--policy",
            three_models[2],
            "--estimators",
            "none",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0 and "paired difference" in stdout
    res = json.loads(out.read_text())
    assert list(res["policies"]) == three_models[1:]
    d = res["paired"][0]["relevance"]
    va, vb = (p["pope"]["relevance"]["value"] for p in res["policies"].values())
    assert d["value"] == pytest.approx(vb - va, abs=1e-12)
    assert (
        main(
            [
                "evaluate",
                "--logs",
                str(logs),
                "--policy",
                three_models[1],
                "--policy",
                three_models[1],
            ]
        )
        == 2
    )


def test_cli_several_policies_say_where_the_propensities_came_from(three_models, tmp_path, capsys):
    """The propensity source line and its JSON entry, as for one policy; a policy that is the
    logging model (all weights 1) is named in its warning and in weights_identically_one."""
    import json

    from pope.cli import main

    logs = _log_of_first_model(three_models, tmp_path, seed=6)
    out = tmp_path / "res.json"
    argv = ["evaluate", "--logs", str(logs), "--estimators", "none", "--no-progress"]
    for m in three_models[:2]:
        argv += ["--policy", m]
    assert main([*argv, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "propensities: logged column." in captured.out
    same = [w for w in captured.err.splitlines() if "all importance weights are 1" in w]
    assert len(same) == 1 and same[0].startswith(f"warning: {three_models[0]}: ")
    prop = json.loads(out.read_text())["propensity"]
    assert prop["source"] == "logged column"
    assert prop["weights_identically_one"] == {three_models[0]: True, three_models[1]: False}
