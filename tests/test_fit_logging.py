"""Behaviour cloning of the logging policy with cross-fitting (``pope fit-logging``).

Data: the 10 real OpenAssistant trees of tests/data (18 prompts, 51 ranked replies; texts cut
to their first 30 words to keep the fine-tuning fast) and, for the memorisation test, a small
synthetic log of random-word responses. Tiny Llama models are built from a config with a
word-level tokenizer trained on those texts; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from test_real_logs import OASST, make_tokenizer  # the word-level tokenizer of the oasst tests

from pope.cli import main
from pope.io import LogFormatError, read_oasst, write_logs
from pope.score_log import read_score_metadata
from pope.scoring import load_causal_lm, score_responses, tokenize_pairs
from pope.train.behaviour_cloning import METHOD, assign_folds, fit_logging_policy


def make_model(tok, seed: int, hidden: int = 32) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread; on a busy machine it only spins."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def oasst():
    """The real trees, texts cut to 30 words (18 prompts, 51 replies)."""
    df = read_oasst(OASST)
    for c in ("prompt", "response"):
        df[c] = df[c].map(lambda t: " ".join(t.split()[:30]))
    return df


@pytest.fixture(scope="module")
def lm(oasst):
    tok = make_tokenizer(list(oasst["prompt"].unique()) + list(oasst["response"]))
    return make_model(tok, seed=0), tok


FAST = dict(num_train_epochs=1, learning_rate=1e-3, batch_tokens=2048)


# ----------------------------------------------------------------------------- folds
def test_assign_folds_keeps_prompts_together_balanced_and_order_free():
    keys = [f"p{i % 7}" for i in range(30)]
    fold = assign_folds(keys, 3, seed=4)
    by_key = pd.Series(fold).groupby(pd.Series(keys)).nunique()
    assert (by_key == 1).all()  # every prompt in exactly one fold
    prompts_per_fold = np.bincount([fold[keys.index(k)] for k in sorted(set(keys))], minlength=3)
    assert prompts_per_fold.max() - prompts_per_fold.min() <= 1
    perm = np.random.default_rng(0).permutation(30)
    shuffled = assign_folds([keys[i] for i in perm], 3, seed=4)
    np.testing.assert_array_equal(shuffled, fold[perm])  # same fold per prompt, any row order
    assert any(not np.array_equal(assign_folds(keys, 3, seed=s), fold) for s in range(5, 10))


@pytest.mark.parametrize(
    "folds, exc, match",
    [
        (1, ValueError, "folds must be >= 2"),
        (0, ValueError, "folds must be >= 2"),
        (8, ValueError, "more than the 7 distinct prompts"),
        (2.0, TypeError, "folds must be an int"),
    ],
)
def test_assign_folds_rejects(folds, exc, match):
    with pytest.raises(exc, match=match):
        assign_folds([f"p{i % 7}" for i in range(30)], folds)


def test_each_fold_model_is_trained_on_the_other_folds_only(oasst, lm):
    """Instrument the model: record every sequence it is trained on (forward calls in training
    mode); the K training phases must hold exactly the rows outside fold k."""
    model, tok = lm
    seen: list[list[tuple[bool, tuple[int, ...]]]] = []

    def record(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        seen.append(
            [(module.training, tuple(ids[j][mask[j] == 1].tolist())) for j in range(ids.shape[0])]
        )

    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        res = fit_logging_policy(oasst, (model, tok), folds=3, **FAST)
    finally:
        handle.remove()
    for k, v in model.state_dict().items():  # the caller's model is not trained
        assert torch.equal(v, before[k]), k
    pairs = tokenize_pairs(tok, list(oasst["prompt"]), list(oasst["response"]))
    row_of = {tuple(a.tolist()): i for i, a in enumerate(pairs.input_ids)}
    phases: list[set[int]] = []  # consecutive training calls form one fold's fine-tuning
    prev_training = False
    for call in seen:
        if call[0][0]:
            if not phases or not prev_training:
                phases.append(set())
            phases[-1].update(row_of[s] for _, s in call)
        prev_training = call[0][0]
    assert len(phases) == 3
    fold = res.fold
    for k, rows in enumerate(phases):
        assert rows == set(np.flatnonzero(fold != k).tolist())  # all the others, none of k
        assert set(res.train_rows[k].tolist()) == rows
    # prompts (ids and texts) never straddle folds; every fold scores some rows
    assert (oasst.assign(f=fold).groupby("prompt_id")["f"].nunique() == 1).all()
    assert sorted(set(fold.tolist())) == [0, 1, 2]
    assert np.isfinite(res.log_logging).all() and (res.log_logging < 0).all()
    assert list(res.frame["logging_fold"]) == fold.tolist()
    np.testing.assert_array_equal(res.frame["log_logging"].to_numpy(), res.log_logging)
    assert res.settings["method"] == METHOD and res.settings["folds"] == 3
    assert "log_logging" not in oasst.columns  # the input frame is not modified


@pytest.fixture(scope="module")
def random_log():
    """9 prompts with 2 responses of 8 random words each: memorisable, not generalisable."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(200)]
    df = pd.DataFrame(
        [
            {
                "prompt_id": f"p{p}",
                "prompt": f"question {p} please",
                "response": " ".join(rng.choice(words, 8)),
            }
            for p in range(9)
            for _ in range(2)
        ]
    )
    return df, make_tokenizer(list(df["prompt"]) + list(df["response"]))


MEMORISE = dict(folds=3, num_train_epochs=25, learning_rate=2e-2, batch_tokens=512)


def test_cross_fitted_logprob_is_not_the_memorised_one(tmp_path, random_log):
    """Random-word responses are memorised by a model trained on them: scored by such a model
    they get a far higher log-prob than cross-fitted. The column must be the cross-fitted one
    (the model of the row's own fold), never an in-fold one."""
    df, tok = random_log
    res = fit_logging_policy(df, (make_model(tok, 0), tok), **MEMORISE, save_models=tmp_path / "bc")
    fold_models = [load_causal_lm(tmp_path / "bc" / f"fold-{k}", device="cpu")[0] for k in range(3)]
    by_model = np.stack(
        [
            score_responses(m, tok, list(df["prompt"]), list(df["response"]), progress=False)
            for m in fold_models
        ]
    )
    rows = np.arange(len(df))
    own = by_model[res.fold, rows]
    in_fold = by_model[(res.fold + 1) % 3, rows]  # a model trained on the row
    # the column is the score of the row's own fold model (float32 sums of ~9 log-probs of
    # size ~10: rounding ~1e-5; batch composition differs, hence 1e-3)
    np.testing.assert_allclose(res.log_logging, own, atol=1e-3)
    # memorisation: the training loss reached < 1 nat/token, so a model trained on a row gives
    # it > 20 nats more than the model that never saw it (measured: 39-61 nats)
    assert all(loss[-1] < 1.0 for loss in res.train_loss)
    assert (in_fold - res.log_logging > 20).all()
    folds = json.loads((tmp_path / "bc" / "folds.json").read_text())
    ids = [set(f["prompt_ids"]) for f in folds["folds"]]
    assert sum(len(s) for s in ids) == len(set().union(*ids)) == 9  # disjoint, all prompts
    with pytest.raises(FileExistsError, match="holds an earlier fit"):
        fit_logging_policy(
            df, (fold_models[0], tok), folds=3, num_train_epochs=1, save_models=tmp_path / "bc"
        )


def test_lora_folds_train_adapters_on_the_frozen_base(tmp_path, random_log):
    """lora=...: each fold trains its own adapters on the untouched base (the adapters of the
    previous fold removed): base + fold k's saved adapters reproduce fold k's column exactly,
    the rows a fold trained on score higher under it than cross-fitted, and only adapters are
    written."""
    import peft  # the optional "lora" extra (in the test extra)

    df, tok = random_log
    base = make_model(tok, 0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    lora = {"r": 8, "lora_alpha": 16}
    opts = dict(MEMORISE, learning_rate=2e-2)
    res = fit_logging_policy(df, (base, tok), **opts, lora=lora, save_models=tmp_path / "bc")
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert res.settings["lora"] == lora
    from pope.propensity import propensity_source

    # what pope evaluate then says of the propensities (from the Parquet metadata = settings)
    assert (
        "with LoRA adapters (r=8) fine-tuned"
        in propensity_source(None, None, None, res.settings)[2]
    )
    prompts, responses = list(df["prompt"]), list(df["response"])
    by_model = []
    for k in range(3):
        d = tmp_path / "bc" / f"fold-{k}"
        assert (d / "adapter_config.json").is_file() and not (d / "model.safetensors").exists()
        fold_model = peft.PeftModel.from_pretrained(make_model(tok, 0), d).eval()
        by_model.append(score_responses(fold_model, tok, prompts, responses, progress=False))
    by = np.stack(by_model)
    rows = np.arange(len(df))
    # same model, same batches: the same float32 sums up to batch composition (1e-3, as above)
    np.testing.assert_allclose(res.log_logging, by[res.fold, rows], atol=1e-3)
    # rank-8 adapters of q/v on a random 2-layer model memorise little (25 passes: the loss
    # stays near 4.6 nats/token) but every trained-on row gains (measured 0.96-2.6 nats)
    assert (by[(res.fold + 1) % 3, rows] - res.log_logging > 0.3).all()


def test_lora_fold_that_fails_leaves_the_error_and_no_adapters(random_log, monkeypatch):
    """An error inside a LoRA fold reaches the caller as it was (the adapters are removed
    before the base is restored, so restoring does not fail on their keys)."""
    import pope.train.behaviour_cloning as bc

    df, tok = random_log
    base = make_model(tok, 0)

    calls = []
    score = bc.score_responses

    def fail(*args, **kwargs):  # the base model's scores first, then fold 0's: stop there
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped in fold 0")
        return score(*args, **kwargs)

    monkeypatch.setattr(bc, "score_responses", fail)
    with pytest.raises(KeyboardInterrupt, match="stopped in fold 0"):
        fit_logging_policy(df, (base, tok), folds=3, num_train_epochs=1, lora={"r": 4})
    assert len(calls) == 2 and type(calls[1]).__name__.startswith("Peft")  # inside the fold


def test_same_seed_same_output_other_seed_other_folds(oasst, lm):
    a = fit_logging_policy(oasst, lm, folds=2, seed=3, **FAST)
    b = fit_logging_policy(oasst, lm, folds=2, seed=3, **FAST)
    np.testing.assert_array_equal(a.log_logging, b.log_logging)
    np.testing.assert_array_equal(a.fold, b.fold)
    c = fit_logging_policy(oasst, lm, folds=2, seed=4, **FAST)
    assert not np.array_equal(a.fold, c.fold)
    assert not np.allclose(a.log_logging, c.log_logging)


def test_token_logprobs_sum_to_the_column_and_stale_ones_are_dropped(oasst, lm):
    res = fit_logging_policy(oasst, lm, folds=2, token_logprobs=True, **FAST)
    toks = res.frame["token_log_logging"]
    assert [len(t) for t in toks] == res.response_tokens.tolist()
    # float32 per-token log-probs summed in float64 vs the float32 sequence reduction: the
    # difference is rounding, ~1e-6 per token of magnitude ~7, 30-60 tokens -> 1e-3
    np.testing.assert_allclose([sum(t) for t in toks], res.log_logging, atol=1e-3)
    assert res.settings["token_column"] == "token_log_logging"
    stale = oasst.assign(log_logging=-1.0, token_log_logging=[[-1.0]] * len(oasst))
    with pytest.raises(ValueError, match="token_log_logging"):
        fit_logging_policy(stale, lm, folds=2, **FAST)
    res = fit_logging_policy(stale, lm, folds=2, overwrite=True, **FAST)
    assert "token_log_logging" not in res.frame.columns  # would not match the new column
    assert (res.frame["log_logging"] != -1.0).all()


def test_invalid_inputs(oasst, lm):
    with pytest.raises(ValueError, match="folds must be >= 2"):
        fit_logging_policy(oasst, lm, folds=1, **FAST)
    with pytest.raises(ValueError, match="folds=19 is more than the 18 distinct prompts"):
        fit_logging_policy(oasst, lm, folds=19, **FAST)
    with pytest.raises(LogFormatError, match="no 'response' column"):
        fit_logging_policy(oasst.drop(columns="response"), lm, folds=2, **FAST)
    with pytest.raises(LogFormatError, match="no 'prompt' text"):
        fit_logging_policy(oasst.assign(prompt=[None, *oasst["prompt"][1:]]), lm, folds=2, **FAST)
    with pytest.raises(ValueError, match="already has column"):
        fit_logging_policy(oasst.assign(log_logging=-1.0), lm, folds=2, **FAST)
    bad = oasst.copy()
    bad.loc[1, "prompt"] = "another text"
    with pytest.raises(ValueError, match="has two different prompt texts"):
        fit_logging_policy(bad, lm, folds=2, **FAST)
    with pytest.raises(ValueError, match="learning_rate must be a number > 0"):
        fit_logging_policy(oasst, lm, folds=2, num_train_epochs=1, learning_rate=0.0)
    with pytest.raises(ValueError, match="num_train_epochs must be a number > 0"):
        fit_logging_policy(oasst, lm, folds=2, num_train_epochs=float("nan"))
    with pytest.raises(TypeError, match="base_model must be"):
        fit_logging_policy(oasst, 3, folds=2, **FAST)


# ----------------------------------------------------------------------------- CLI
def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_fit_logging_then_evaluate(tmp_path, oasst, lm, capsys):
    model, tok = lm
    base, target = tmp_path / "base", tmp_path / "target"
    for path, m in ((base, model), (target, make_model(tok, seed=1))):
        m.save_pretrained(path)
        tok.save_pretrained(path)
    logs = tmp_path / "oasst.parquet"
    write_logs(oasst, logs)
    out = tmp_path / "bc.parquet"
    fit = [
        "fit-logging",
        "--logs",
        logs,
        "--model",
        base,
        "--out",
        out,
        "--folds",
        "3",
        "--num-train-epochs",
        "1",
        "--learning-rate",
        "1e-3",
        "--no-progress",
    ]
    code, stdout, err = run(fit, capsys)
    assert code == 0, err
    assert "logging propensities estimated by behaviour cloning, 3 folds" in stdout
    frame = pd.read_parquet(out)
    assert np.isfinite(frame["log_logging"]).all()
    assert (frame.groupby("prompt_id")["logging_fold"].nunique() == 1).all()
    meta = read_score_metadata(out)["log_logging"]
    assert meta["method"] == METHOD and meta["folds"] == 3
    assert meta["model"] == str(base.resolve())

    res_path = tmp_path / "res.json"
    code, stdout, err = run(
        [
            "evaluate",
            "--logs",
            out,
            "--policy",
            target,
            "--aspects-from",
            "none",
            "--out",
            res_path,
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(res_path.read_text())
    prop = res["propensity"]
    assert prop["source"] == "behaviour cloning, 3 folds" and prop["folds"] == 3
    assert "logging propensities estimated by behaviour cloning, 3 folds" in prop["meaning"]
    assert "log pi0 is an estimate" in stdout
    # the evaluation used the column: log w = log pi_target - (cross-fitted log pi0)
    tgt = score_responses(
        load_causal_lm(target, device="cpu")[0],
        tok,
        list(frame["prompt"]),
        list(frame["response"]),
        progress=False,
    )
    np.testing.assert_allclose(
        np.sort(res["log_weights"]), np.sort(tgt - frame["log_logging"].to_numpy()), atol=1e-3
    )
    # the column read as the target too: every weight is 1, and the output warns
    code, stdout, err = run(
        [
            "evaluate",
            "--logs",
            out,
            "--aspects-from",
            "none",
            "--column",
            "log_target=log_logging",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert "all importance weights are 1" in err

    # the input itself is replaced only with --overwrite (columns included)
    again = list(fit)
    again[again.index("--logs") + 1] = out
    code, _, err = run(again, capsys)
    assert code == 2 and "--out" in err and "--overwrite" in err and len(err.splitlines()) == 1
    code, _, err = run([*again, "--overwrite"], capsys)
    assert code == 0, err


def test_cli_warns_when_the_fit_does_not_generalise(tmp_path, random_log, capsys):
    """Memorised random responses: the held-out likelihood falls below the base model's."""
    df, tok = random_log
    make_model(tok, 0).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    df.to_parquet(tmp_path / "log.parquet")
    argv = [
        "fit-logging",
        "--logs",
        tmp_path / "log.parquet",
        "--model",
        tmp_path / "base",
        "--out",
        tmp_path / "bc.parquet",
        "--no-progress",
        *[x for k, v in MEMORISE.items() for x in (f"--{k.replace('_', '-')}", v)],
    ]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "lower likelihood than the base model" in err
    fit, base = (
        float(v)
        for v in stdout.split("all folds, held out: log-prob per token ")[1]
        .split(" with the base model")[0]
        .split(" cross-fitted, ")
    )
    assert fit < base


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--folds": "1"}, "folds must be >= 2"),
        ({"--lora-alpha": "16"}, "--lora-alpha needs --lora-r"),
        ({"--folds": "40"}, "more than the 18 distinct prompts"),
        ({"--out": "bc.jsonl"}, "should end in .parquet"),
        ({"--model": "missing"}, "model directory not found"),
        ({"--out": "base/bc.parquet"}, "would write into the --model directory"),
        ({"--save-models": "base"}, "would write into the --model directory"),
        ({"--logs": "noresponse.parquet"}, "no 'response' column"),
    ],
)
def test_cli_fit_logging_bad_input_exits_2(
    tmp_path, oasst, lm, capsys, change, message, monkeypatch
):
    model, tok = lm
    monkeypatch.chdir(tmp_path)
    model.save_pretrained("base")
    tok.save_pretrained("base")
    write_logs(oasst, "oasst.parquet")
    oasst.drop(columns="response").to_parquet("noresponse.parquet")
    capsys.readouterr()  # what saving printed (transformers may show a progress bar)
    opts = {
        "--logs": "oasst.parquet",
        "--model": "base",
        "--out": "bc.parquet",
        "--folds": "2",
        **change,
    }
    argv = [
        "fit-logging",
        *[x for kv in opts.items() for x in kv],
        "--num-train-epochs",
        "1",
        "--no-progress",
    ]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not Path("bc.parquet").exists()


def test_cli_fit_logging_help_shows_defaults(capsys):
    code, stdout, _ = run(["fit-logging", "--help"], capsys)
    assert code == 0
    text = " ".join(stdout.split())
    for opt, default in (
        ("--folds", "5"),
        ("--learning-rate", "5e-05"),
        ("--num-train-epochs", "3.0"),
        ("--seed", "0"),
        ("--batch-tokens", "8192"),
        ("--into", "log_logging"),
    ):
        after = text.split(f" {opt} ", 1)[1]
        assert f"(default: {default})" in after.split(" --")[0], opt
