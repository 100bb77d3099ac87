"""Training you can trust: the ESS guard, whole-epoch and final metrics, held-out evaluation
through the ``pope evaluate`` path, TensorBoard / wandb reporting, CLI names and defaults.

Tiny models from a config and a local word-level tokenizer (nothing is downloaded).
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import WORDS, cfg, make_records, make_tokenizer, tiny_gpt2

from pope.heldout import HeldOutEvaluator
from pope.pipeline import EvalSpec, evaluate_logs
from pope.scoring import score_responses
from pope.train import OffPolicyTrainer, PopeDataset, TrainConfig, token_budget_batches
from pope.train_monitor import WeightCollapseWarning, WeightMonitor


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def heldout_frame(seed=3, n_prompts=5, k=3):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        prompt = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))
        for _ in range(k):
            rows.append(
                {
                    "prompt_id": f"h{i}",
                    "prompt": prompt,
                    "response": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 6)))),
                    "signal": float(rng.integers(0, 5)),
                    "aspect": int(rng.integers(0, 3)),
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the guard
def test_weight_monitor_warns_once_and_stops_after_patience():
    m = WeightMonitor(warn_fraction=0.5, min_ess_fraction=0.2, patience=2)
    with pytest.warns(WeightCollapseWarning, match="effective sample size"):
        assert not m.check({"step": 1, "ess": 1.5, "n_seqs": 10.0, "weight_mean": 1.0})
    with pytest.warns(WeightCollapseWarning, match="mean importance weight"):
        assert m.check({"step": 2, "ess": 1.0, "n_seqs": 10.0, "weight_mean": 0.008})
    assert "step 2" in m.stop_reason and "0.1" in m.stop_reason
    m2 = WeightMonitor(min_ess_fraction=0.2, patience=2)
    row = {"step": 1, "ess": 1.0, "n_seqs": 20.0, "weight_mean": 1.0}
    with pytest.warns(WeightCollapseWarning):
        assert not m2.check(dict(row))
    assert not m2.check({**row, "ess": 19.0})  # a good step resets the count
    assert not m2.check(dict(row)) and m2.check(dict(row))
    with pytest.raises(ValueError, match="min_ess_fraction"):
        TrainConfig(min_ess_fraction=0.0)
    with pytest.raises(ValueError, match="report_to"):
        TrainConfig(report_to="mlflow")


def test_collapsing_weights_warn_and_stop_training_early(tok, tmp_path):
    # at step 1 the policy is the logging policy (weights 1, ESS = n); a large learning rate
    # spreads the weights at once, so an ESS fraction guard of 0.999 must stop at step 2
    ds = PopeDataset.from_records(make_records(n_prompts=4, k=3, seed=1))
    conf = cfg(
        tmp_path, max_steps=6, lr=5e-2, min_ess_fraction=0.999, ess_warning=0.999, save_final=True
    )
    tr = OffPolicyTrainer(tiny_gpt2(seed=2), tok, ds, conf, reference_model="initial")
    with pytest.warns(WeightCollapseWarning, match="step 2"):
        res = tr.train()
    assert res.stopped_early and res.step == 2 and tr.step == 2
    assert res.history[0]["ess_fraction"] == pytest.approx(1.0, abs=1e-9)
    assert res.history[1]["ess_fraction"] < 0.999
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stop_reason"] == res.stop_reason and "step 2" in res.stop_reason
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (tmp_path / "out" / "final").is_dir()


# ----------------------------------------------------------------------------- metrics
def test_end_of_run_metrics_cover_the_whole_epoch_not_the_last_micro_batch(tok, tmp_path):
    ds = PopeDataset.from_records(make_records(n_prompts=6, k=3, seed=4))
    conf = cfg(tmp_path, token_budget=30, max_steps=None, epochs=1.0, lr=1e-3)
    tr = OffPolicyTrainer(tiny_gpt2(seed=3), tok, ds, conf, reference_model="initial")
    assert len(tr.batches) >= 3  # several micro-batches per epoch
    res = tr.train()
    assert res.history[-1]["n_seqs"] < ds.n_responses  # the last micro-batch alone
    (epoch,) = res.epoch_metrics
    assert epoch["epoch"] == 0 and epoch["steps"] == tr.total_steps
    assert epoch["n_seqs"] == ds.n_responses and epoch["n_prompts"] == ds.n_prompts
    # the whole-epoch relevance is the SNIPS mean over every step's sequences
    assert (
        min(r["relevance"] for r in res.history)
        <= epoch["relevance"]
        <= max(r["relevance"] for r in res.history)
    )
    assert res.final_metrics == pytest.approx(tr.evaluate())
    assert res.final_metrics["n_seqs"] == ds.n_responses


def test_budget_error_names_the_users_prompt_id(tok, tmp_path):
    recs = make_records(n_prompts=3, k=3, seed=0)
    for r in recs:
        r["prompt_id"] = {"p0": "question-17", "p1": "q-b", "p2": "q-c"}[r["prompt_id"]]
    ds = PopeDataset.from_records(recs)
    with pytest.raises(
        ValueError,
        match=r"prompt_id '(question-17|q-b|q-c)' has 3 responses.*"
        r"token_budget=6 \(--batch-tokens\)",
    ):
        OffPolicyTrainer(
            tiny_gpt2(), tok, ds, cfg(tmp_path, token_budget=6), reference_model="initial"
        )
    with pytest.raises(ValueError, match="prompt 0 has"):  # no names: the position
        token_budget_batches([np.array([5, 5])], 4)


# ----------------------------------------------------------------------------- held out
def test_held_out_evaluation_is_what_pope_evaluate_reports(tok, tmp_path):
    base = tiny_gpt2(seed=5)
    frame = heldout_frame()
    prompts, responses = list(frame.prompt), list(frame.response)
    frame["log_logging"] = score_responses(base, tok, prompts, responses, progress=False)
    before = frame.copy()
    spec = EvalSpec(lam=0.5, n_aspects=3)
    ho = HeldOutEvaluator(frame, spec)
    ds = PopeDataset.from_records(make_records(n_prompts=4, k=3, seed=6))
    conf = cfg(tmp_path, max_steps=3, eval_every=2, lr=1e-2)
    tr = OffPolicyTrainer(base, tok, ds, conf, reference_model="initial", held_out=ho)
    res = tr.train()
    assert [e["step"] for e in res.evaluations] == [2, 3]  # every 2 steps and the last
    pd.testing.assert_frame_equal(frame, before)  # the user's frame is not modified
    # the same numbers as evaluate_logs with the trained policy's log-probs in the log
    lt = score_responses(tr.inner_model, tok, prompts, responses, progress=False)
    direct = evaluate_logs(frame.assign(log_target=lt), spec).to_dict()
    last = res.evaluations[-1]
    for name in ("relevance", "diversity", "total"):
        assert last["pope"][name]["value"] == pytest.approx(direct["pope"][name]["value"], rel=1e-9)
        assert last["pope"][name]["ci_lower"] == pytest.approx(
            direct["pope"][name]["ci_lower"], rel=1e-9
        )
    saved = json.loads((tmp_path / "out" / "eval" / "step-3.json").read_text())
    assert saved["pope"]["total"]["value"] == last["pope"]["total"]["value"]
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in rows}
    assert "eval/total" not in by_step[1]
    assert by_step[3]["eval/total"] == pytest.approx(last["pope"]["total"]["value"])
    assert by_step[3]["eval/ess"] == pytest.approx(last["pope"]["total"]["ess"])


def test_held_out_kmeans_needs_the_training_centres():
    frame = heldout_frame().assign(log_logging=-3.0, log_target=-3.0)
    with pytest.raises(ValueError, match="training centres"):
        HeldOutEvaluator(frame, EvalSpec(aspects="embedding", n_aspects=2))
    with pytest.raises(ValueError, match=r"spec\.policy"):
        HeldOutEvaluator(frame, EvalSpec(policy="somewhere"))


def test_evaluate_logs_needs_no_aspects_at_lambda_zero():
    frame = heldout_frame().drop(columns=["aspect"]).assign(log_logging=-3.0, log_target=-2.5)
    got = evaluate_logs(frame, EvalSpec(lam=0.0))
    ref = evaluate_logs(frame, EvalSpec(lam=0.0, aspects="none"))
    assert got.pope.total.value == ref.pope.total.value == got.pope.relevance.value
    with pytest.raises(Exception, match="no aspects"):  # lambda > 0 still needs them
        evaluate_logs(frame, EvalSpec(lam=0.5))


# ----------------------------------------------------------------------------- reporting
def test_report_to_tensorboard_writes_the_step_metrics(tok, tmp_path):
    import tensorboard  # noqa: F401  (in the test extra)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds = PopeDataset.from_records(make_records())
    tr = OffPolicyTrainer(
        tiny_gpt2(),
        tok,
        ds,
        cfg(tmp_path, max_steps=2, report_to="tensorboard"),
        reference_model="initial",
    )
    res = tr.train()
    acc = EventAccumulator(str(tmp_path / "out" / "runs"))
    acc.Reload()
    total = acc.Scalars("total")
    assert [e.step for e in total] == [1, 2]
    assert [e.value for e in total] == pytest.approx([r["total"] for r in res.history], rel=1e-6)
    assert acc.Scalars("final/total")[0].value == pytest.approx(
        res.final_metrics["total"], rel=1e-6
    )


def test_report_to_wandb_goes_through_wandb_init_and_log(tok, tmp_path, monkeypatch):
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, metrics, step):
            calls["log"].append((step, dict(metrics)))

        def finish(self):
            calls["finish"] += 1

    def init(**kw):
        calls["init"].append(kw)
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    ds = PopeDataset.from_records(make_records())
    conf = cfg(tmp_path, max_steps=2, report_to="wandb")
    res = OffPolicyTrainer(tiny_gpt2(), tok, ds, conf, reference_model="initial").train()
    (kw,) = calls["init"]
    assert kw["config"]["lr"] == conf.lr and kw["dir"] == str(tmp_path / "out")
    steps = [s for s, m in calls["log"] if "total" in m]
    assert steps == [1, 2]
    assert calls["log"][0][1]["total"] == pytest.approx(res.history[0]["total"])
    assert calls["finish"] == 1


# ----------------------------------------------------------------------------- CLI
def test_train_help_shows_defaults_and_trainingarguments_names(capsys, monkeypatch):
    from pope.cli import main

    monkeypatch.setenv("COLUMNS", "250")  # no line breaks inside option names
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in (
        "--learning-rate LR peak AdamW learning rate (formerly --lr) (default: 1e-05)",
        "--num-train-epochs E",
        "(default: 1.0)",
        "--gradient-accumulation-steps N",
        "--lambda L",
        "--min-ess-fraction",
        "--eval-logs",
        "--eval-steps",
        "--report-to",
        "(default: none)",
        "(default: 0.1)",
    ):
        assert needle in text, needle
    # every option with a default says it
    assert "--lambda L weight of diversity in the total value (default: 1.0)" in text
    assert (
        "--gradient-accumulation-steps N micro-batches per optimizer step (formerly "
        "--grad-accum-steps) (default: 1)"
    ) in text


def test_old_option_spellings_still_work_and_warn(capsys):
    from pope.cli import build_parser

    argv = [
        "train",
        "--logs",
        "x",
        "--policy",
        "p",
        "--output-dir",
        "o",
        "--lr",
        "0.003",
        "--epochs",
        "2",
        "--grad-accum-steps",
        "3",
        "--save-every",
        "5",
    ]
    args = build_parser(argv).parse_args(argv)
    assert (args.learning_rate, args.num_train_epochs) == (0.003, 2.0)
    assert (args.gradient_accumulation_steps, args.save_steps) == (3, 5)
    err = capsys.readouterr().err
    assert "--lr is deprecated; use --learning-rate" in err
    assert "--grad-accum-steps is deprecated; use --gradient-accumulation-steps" in err
    new = build_parser(argv).parse_args([*argv[:7], "--learning-rate", "0.003"])
    assert new.learning_rate == 0.003 and new.num_train_epochs == 1.0
    assert "deprecated" not in capsys.readouterr().err


def test_cli_train_with_held_out_logs_and_the_guard(tmp_path, capsys):
    from test_cli import make_model, naive_logprob, random_log, run

    from pope.io import write_logs
    from pope.scoring import load_causal_lm

    base = make_model(tmp_path / "base", 2)
    lm, lt = load_causal_lm(base, device="cpu")
    frames = []
    for seed in (7, 8):
        df = random_log(np.random.default_rng(seed), n_prompts=6)
        df["log_logging"] = [naive_logprob(lm, lt, p, r) for p, r in zip(df.prompt, df.response)]
        frames.append(df)
    train = write_logs(frames[0], tmp_path / "train.jsonl")
    held = write_logs(frames[1], tmp_path / "held.jsonl")
    out = tmp_path / "run"
    code, stdout, err = run(
        [
            "train",
            "--logs",
            train,
            "--eval-logs",
            held,
            "--eval-steps",
            "1",
            "--policy",
            base,
            "--output-dir",
            out,
            "--max-steps",
            "2",
            "--learning-rate",
            "1e-3",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert "held-out" in stdout and "final policy on the whole training set" in stdout
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["step-1.json", "step-2.json"]
    ev = json.loads((out / "eval" / "step-2.json").read_text())
    assert ev["n_responses"] == len(frames[1]) and ev["settings"]["lam"] == 1.0
    am = json.loads((out / "aspect_model.json").read_text())
    assert am["kind"] == "labels" and am["names"] == ["facts", "humour", "safety"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epoch_metrics"][0]["n_seqs"] == len(frames[0])
    # the guard from the command line: stop at step 2 (weights spread after one step)
    code, stdout, err = run(
        [
            "train",
            "--logs",
            train,
            "--policy",
            base,
            "--output-dir",
            tmp_path / "run2",
            "--max-steps",
            "5",
            "--learning-rate",
            "0.05",
            "--min-ess-fraction",
            "0.999",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert "stopped early at step 2" in err and "Traceback" not in err
    torch.manual_seed(0)
