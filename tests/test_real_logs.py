"""``pope evaluate --format oasst|ratings|pairwise|trl|auto`` and logs without propensities.

The OpenAssistant trees are the 10 real ones in tests/data (see PROVENANCE.md). Tiny Llama
models are built from a config with a word-level tokenizer trained locally on those texts
(nothing is downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

import pope
from pope.cli import main
from pope.data import LoggedFeedback
from pope.io import read_oasst, write_logs

OASST = Path(__file__).parent / "data" / "oasst_10.jsonl"


def make_tokenizer(texts: list[str]) -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts,
        trainers.WordLevelTrainer(
            vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", tok.token_to_id("[BOS]"))]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
    )


def make_model(path: Path, tok, seed: int) -> str:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    df = read_oasst(OASST)
    tok = make_tokenizer(list(df["prompt"].unique()) + list(df["response"]))
    root = tmp_path_factory.mktemp("real_models")
    return {"target": make_model(root / "target", tok, 1), "ref": make_model(root / "ref", tok, 2)}


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def naive_logprobs(model_dir: str, df: pd.DataFrame) -> np.ndarray:
    """log pi(response | prompt), one pair at a time, from the model's logits."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    out = []
    for p, r in zip(df["prompt"], df["response"]):
        pi = tok(p)["input_ids"]
        ri = tok(r, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([pi + ri])).logits[0].double(), -1)
        pos = torch.arange(len(pi) - 1, len(pi) - 1 + len(ri))
        out.append(float(lp[pos, torch.tensor(ri, dtype=torch.long)].sum()))
    return np.array(out)


def evaluate_with_proxy(
    models, capsys, out, *extra, logs=OASST, fmt="oasst", policy="target"
) -> tuple[int, str, str]:
    """``pope evaluate`` of ``models[policy]`` with ``models["ref"]`` as the declared proxy of
    the logging policy, no aspects, JSON to ``out``; ``extra`` are more arguments."""
    argv = ["evaluate", "--logs", logs, "--format", fmt, "--policy", models[policy]]
    argv += ["--reference-model", models["ref"], "--aspects-from", "none", "--no-progress"]
    return run([*argv, *extra, "--out", out], capsys)


def test_evaluate_oasst_with_reference_proxy(tmp_path, models, capsys):
    out = tmp_path / "r.json"
    code, stdout, err = evaluate_with_proxy(models, capsys, out)
    assert code == 0, err
    res = json.loads(out.read_text())
    df = read_oasst(OASST)
    assert res["n_responses"] == len(df) and res["n_prompts"] == df["prompt_id"].nunique()
    assert "read as oasst" in stdout and "unranked_dropped=" in stdout
    prop = res["propensity"]
    assert prop["source"] == "reference model (proxy)" and not prop["weights_identically_one"]
    assert "not as an absolute value" in prop["meaning"] and "proxy" in stdout
    # the same number straight from pope.evaluate on naively scored pairs
    fb = LoggedFeedback.from_pandas(
        df.assign(log_logging=naive_logprobs(models["ref"], df), aspect=0)
    )
    direct = pope.evaluate(
        fb, naive_logprobs(models["target"], df)[fb.row_index], lam=1.0, reward_normalization="max"
    )
    # float32 scoring of up to ~1000-token sequences: log-prob error ~1e-4, weights ~1e-4 rel.
    assert res["pope"]["relevance"]["value"] == pytest.approx(direct.relevance.value, rel=1e-3)
    # auto detection gives the same run; streaming in chunks too
    out2 = tmp_path / "auto.json"
    code, _, err = evaluate_with_proxy(models, capsys, out2, "--chunk-rows", "16", fmt="auto")
    assert code == 0, err
    res2 = json.loads(out2.read_text())
    assert res2["pope"]["relevance"]["value"] == pytest.approx(
        res["pope"]["relevance"]["value"], rel=1e-9
    )


def test_reference_equal_to_target_warns(tmp_path, models, capsys):
    """Finding 1: base model as pi0 and as target -> weights all 1, said in output and JSON."""
    out = tmp_path / "same.json"
    code, stdout, err = evaluate_with_proxy(
        models, capsys, out, "--reward-normalization", "rank", policy="ref"
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["propensity"]["weights_identically_one"] is True
    assert "(their average is 0.5)" in res["propensity"]["meaning"]
    assert "all importance weights are 1" in err and "says nothing about the target" in stdout
    assert any("all importance weights are 1" in w for w in res["warnings"])
    # the value is then the plain mean of per-prompt average rewards
    df = read_oasst(OASST)
    fb = LoggedFeedback.from_pandas(df.assign(log_logging=0.0, aspect=0))
    plain = np.mean([r.mean() for r in np.split(fb.rewards("rank"), fb.prompt_ptr[1:-1])])
    assert res["pope"]["relevance"]["value"] == pytest.approx(plain, abs=1e-9)


def test_logged_columns_identical_warns_without_models(tmp_path, capsys):
    df = read_oasst(OASST)
    df["log_logging"] = -np.arange(1.0, len(df) + 1)
    df["log_target"] = df["log_logging"]
    path = tmp_path / "l.parquet"
    write_logs(df, path)
    code, stdout, err = run(["evaluate", "--logs", path, "--aspects-from", "none"], capsys)
    assert code == 0, err
    assert "all importance weights are 1 (target == logging policy" in err
    df["log_target"] = df["log_logging"] + np.linspace(-1, 1, len(df))
    write_logs(df, path)
    code, stdout, err = run(["evaluate", "--logs", path, "--aspects-from", "none"], capsys)
    assert code == 0 and "all importance weights are 1" not in err
    assert "propensities: logged column" in stdout


@pytest.mark.parametrize("fmt", ["pairwise", "ratings", "trl", "auto"])
def test_evaluate_other_public_formats(tmp_path, models, fmt, capsys):
    if fmt in ("pairwise", "auto"):
        recs = [
            {
                "chosen": "\n\nHuman: How do I save money?\n\nAssistant: Make a budget.",
                "rejected": "\n\nHuman: How do I save money?\n\nAssistant: Buy more.",
            },
            {
                "chosen": "\n\nHuman: Is water wet?\n\nAssistant: It makes things wet.",
                "rejected": "\n\nHuman: Is water wet?\n\nAssistant: No.",
            },
        ]
    elif fmt == "ratings":
        recs = [
            {
                "instruction": "Name a color.",
                "completions": [
                    {"model": "m1", "response": "Blue.", "overall_score": 8.0},
                    {"model": "m2", "response": "Seven.", "overall_score": 1.0},
                ],
            }
        ]
    else:
        recs = [
            {"prompt": "Name a color.", "completion": "Blue.", "label": True},
            {"prompt": "Name a color.", "completion": "Seven.", "label": False},
        ]
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = tmp_path / "o.json"
    code, stdout, err = evaluate_with_proxy(models, capsys, out, logs=path, fmt=fmt)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["n_responses"] == (4 if fmt in ("pairwise", "auto") else 2)
    assert f"read as {'pairwise' if fmt == 'auto' else fmt}" in stdout


def test_reference_and_logging_model_exclusive(models, capsys):
    code, _, err = run(
        [
            "evaluate",
            "--logs",
            OASST,
            "--format",
            "oasst",
            "--policy",
            models["target"],
            "--reference-model",
            models["ref"],
            "--logging-model",
            models["ref"],
        ],
        capsys,
    )
    assert code == 2 and "not both" in err
    code, _, err = run(
        ["evaluate", "--logs", OASST, "--format", "oasst", "--reference-model", "/no/such/dir"],
        capsys,
    )
    assert code == 2 and "--reference-model" in err


# ----------------------------------------------------------------------------- pope score
def test_score_then_evaluate_reuses_columns(tmp_path, models, capsys):
    """Scored once, evaluated without models: the same numbers as scoring in evaluate."""
    scored = tmp_path / "scored.parquet"
    code, stdout, err = run(
        [
            "score",
            "--logs",
            OASST,
            "--format",
            "oasst",
            "--model",
            models["ref"],
            "--token-logprobs",
            "--no-progress",
            "--out",
            scored,
        ],
        capsys,
    )
    assert code == 0, err
    assert "log_logging, token_log_logging" in stdout
    code, _, err = run(
        [
            "score",
            "--logs",
            scored,
            "--model",
            models["target"],
            "--into",
            "log_target",
            "--no-progress",
            "--out",
            scored,
        ],
        capsys,
    )
    assert code == 2 and "exists" in err  # nothing overwritten without the flag
    code, _, err = run(
        [
            "score",
            "--logs",
            scored,
            "--model",
            models["target"],
            "--into",
            "log_target",
            "--no-progress",
            "--out",
            scored,
            "--overwrite",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_parquet(scored)
    ref = read_oasst(OASST)
    assert df["response_id"].tolist() == ref["response_id"].tolist()
    # float32 scoring vs a float64 one-pair-at-a-time reference: |error| ~ 1e-5 per token
    np.testing.assert_allclose(
        df["log_logging"], naive_logprobs(models["ref"], ref), rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(
        [sum(t) for t in df["token_log_logging"]], df["log_logging"], rtol=1e-5, atol=1e-4
    )
    from pope.score_log import read_score_metadata

    meta = read_score_metadata(scored)
    assert set(meta) == {"log_logging", "log_target"}  # the first column's settings are kept
    assert meta["log_logging"]["model"] == str(Path(models["ref"]).resolve())
    assert meta["log_logging"]["add_eos"] is False
    assert meta["log_logging"]["token_column"] == "token_log_logging"
    # evaluate from the columns (no model) == evaluate scoring with the models
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    code, _, err = run(["evaluate", "--logs", scored, "--aspects-from", "none", "--out", a], capsys)
    assert code == 0, err
    code, _, err = evaluate_with_proxy(models, capsys, b)
    assert code == 0, err
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    for k in ("relevance", "total"):
        assert ra["pope"][k]["value"] == pytest.approx(rb["pope"][k]["value"], rel=1e-9)


def test_score_errors(tmp_path, models, capsys):
    df = pd.DataFrame(
        {"prompt_id": [1, 1], "prompt": ["hi", None], "response": ["a", "b"], "signal": [1.0, 0.0]}
    )
    path = tmp_path / "l.parquet"
    df.to_parquet(path)
    code, _, err = run(
        ["score", "--logs", path, "--model", models["ref"], "--out", tmp_path / "o.parquet"], capsys
    )
    assert code == 2 and "no 'prompt' text" in err and "rows 1" in err
    df["prompt"] = "hi"
    df["log_logging"] = -1.0
    df.to_parquet(path)
    code, _, err = run(
        ["score", "--logs", path, "--model", models["ref"], "--out", tmp_path / "o.parquet"], capsys
    )
    assert code == 2 and "already has column" in err
    code, _, err = run(
        [
            "score",
            "--logs",
            path,
            "--model",
            models["ref"],
            "--out",
            tmp_path / "o.csv",
            "--overwrite",
        ],
        capsys,
    )
    assert code == 2 and "Parquet" in err
    assert pd.read_parquet(path)["log_logging"].tolist() == [-1.0, -1.0]  # input untouched


def test_train_reads_public_format(tmp_path, models, capsys):
    code, stdout, err = run(
        [
            "train",
            "--logs",
            OASST,
            "--format",
            "oasst",
            "--policy",
            models["target"],
            "--logging-model",
            models["ref"],
            "--aspects-from",
            "none",
            "--max-steps",
            "1",
            "--no-progress",
            "--output-dir",
            tmp_path / "out",
        ],
        capsys,
    )
    assert code == 0, err
    assert f"training on {len(read_oasst(OASST))} responses" in stdout
    assert (tmp_path / "out" / "final").is_dir()
