"""Scoring with a causal LM (pope.scoring) and the ``pope`` command end to end (pope.cli).

Tiny Llama models are built from a config, saved with ``save_pretrained`` to a temporary
directory, with a word-level tokenizer made locally (nothing is downloaded).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tokenizers  # noqa: F401 (in the test extra, with transformers: no skip)
import torch
import transformers

import pope
import pope.demo  # our own module: an import error must fail, not skip
from pope.cli import main
from pope.data import LoggedFeedback
from pope.io import write_logs
from pope.scoring import (
    ContextLengthError,
    context_length,
    load_causal_lm,
    score_responses,
    tokenize_pairs,
)

WORDS = (
    "the a cat dog bird sat ran flew on mat tree sky fast slow red blue why how what is good "
    "bad yes no because and or it was very"
).split()
MAX_POSITIONS = 48


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", vocab["[BOS]"])]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
    )


def make_model(path, seed: int) -> str:
    torch.manual_seed(seed)
    tok = make_tokenizer()
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"target": make_model(root / "target", 1), "logging": make_model(root / "logging", 2)}


def naive_token_logprobs(model, tok, prompt: str, response: str) -> np.ndarray:
    """log pi(y_t | x, y_<t) of each response token, one pair at a time, from the logits."""
    p = tok(prompt)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].double(), dim=-1)
    return np.array([float(logp[len(p) - 1 + t, r[t]]) for t in range(len(r))])


def naive_logprob(model, tok, prompt: str, response: str) -> float:
    """log pi(response | prompt), one pair at a time, straight from the model's logits."""
    return float(naive_token_logprobs(model, tok, prompt, response).sum())


def random_log(rng: np.random.Generator, n_prompts: int = 12) -> pd.DataFrame:
    rows = []
    for i in range(n_prompts):
        prompt = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5))))
        for k in range(int(rng.integers(1, 5))):
            rows.append(
                {
                    "prompt_id": f"q{i}",
                    "prompt": prompt,
                    "response": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 8)))),
                    "signal": float(rng.integers(0, 10)),
                    "aspect": ["facts", "humour", "safety"][int(rng.integers(0, 3))],
                    "position": k,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def scored_log(models):
    """A log with logging log-probs, plus the naive target log-probs of each row."""
    rng = np.random.default_rng(7)
    df = random_log(rng)
    lm, lt = load_causal_lm(models["logging"], device="cpu")
    tm, tt = load_causal_lm(models["target"], device="cpu")
    df["log_logging"] = [naive_logprob(lm, lt, p, r) for p, r in zip(df.prompt, df.response)]
    target = np.array([naive_logprob(tm, tt, p, r) for p, r in zip(df.prompt, df.response)])
    return df, target


def direct_evaluate(df: pd.DataFrame, log_target: np.ndarray, lam: float = 1.0):
    """pope.evaluate on the frame, built without pope.io."""
    names = sorted(set(df["aspect"]))
    fb = LoggedFeedback.from_pandas(df.assign(aspect=[names.index(a) for a in df["aspect"]]))
    return pope.evaluate(fb, log_target[fb.row_index], lam=lam)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("batch_tokens", [1, 24, 4096])
def test_score_responses_matches_naive(models, scored_log, batch_tokens):
    df, target = scored_log
    model, tok = load_causal_lm(models["target"], device="cpu")
    seq, toks = score_responses(
        model,
        tok,
        df.prompt,
        df.response,
        batch_tokens=batch_tokens,
        return_token_logprobs=True,
        progress=False,
    )
    np.testing.assert_allclose(seq, target, rtol=1e-5, atol=1e-4)
    lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in df.response]
    assert [t.shape[0] for t in toks] == lengths
    np.testing.assert_allclose([t.sum() for t in toks], seq, rtol=1e-5, atol=1e-4)
    assert (seq < 0).all()


def test_score_hidden_head_and_eos(models, scored_log):
    df, target = scored_log
    model, tok = load_causal_lm(models["target"], device="cpu")
    hidden = score_responses(model, tok, df.prompt, df.response, head="hidden", progress=False)
    np.testing.assert_allclose(hidden, target, rtol=1e-5, atol=1e-4)
    with_eos = score_responses(
        model, tok, df.prompt[:3], df.response[:3], add_eos=True, progress=False
    )
    # one more (negative) term: the EOS token's log-prob
    assert (with_eos < target[:3]).all()
    pairs = tokenize_pairs(tok, ["the cat"], ["sat on"], add_eos=True)
    assert list(pairs.input_ids[0][-1:]) == [tok.eos_token_id]
    assert pairs.response_lengths.tolist() == [3]


def test_context_length_error(models):
    model, tok = load_causal_lm(models["target"], device="cpu")
    assert context_length(model, tok) == MAX_POSITIONS
    long = " ".join(["cat"] * MAX_POSITIONS)
    with pytest.raises(ContextLengthError, match=r"rows 1 \(") as ei:
        score_responses(model, tok, ["the", "the"], ["dog", long], progress=False)
    assert ei.value.rows.tolist() == [1] and ei.value.limit == MAX_POSITIONS


def test_load_causal_lm_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_causal_lm(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="cannot load"):
        load_causal_lm(tmp_path / "empty")


# ----------------------------------------------------------------------------- CLI
def test_evaluate_with_logged_logprobs(tmp_path, models, scored_log, capsys):
    df, target = scored_log
    logs = write_logs(df, tmp_path / "logs.parquet")
    out = tmp_path / "results.json"
    code, stdout, err = run(
        [
            "evaluate",
            "--logs",
            logs,
            "--policy",
            models["target"],
            "--lambda",
            "0.5",
            "--estimators",
            "ips,snips,clipped_ips",
            "--out",
            out,
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    for label in ("POPE relevance", "POPE diversity", "POPE total", "IPS", "SNIPS", "clipped IPS"):
        assert label in stdout
    res = json.loads(out.read_text())
    ref = direct_evaluate(df, target, lam=0.5)
    for part in ("relevance", "diversity", "total"):
        got = res["pope"][part]
        want = getattr(ref, part)
        assert got["value"] == pytest.approx(want.value, rel=1e-5, abs=1e-7)
        assert got["stderr"] == pytest.approx(want.stderr, rel=1e-4, abs=1e-7)
        lo, hi = want.ci()
        assert got["ci_lower"] == pytest.approx(lo, rel=1e-4, abs=1e-6)
        assert got["ci_upper"] == pytest.approx(hi, rel=1e-4, abs=1e-6)
        assert got["ess"] == pytest.approx(want.diagnostics.ess, rel=1e-5)
    # the baselines use the total reward r + lam * d
    total_reward = ref.reward + 0.5 * ref.diversity_reward
    names = sorted(set(df["aspect"]))
    fb = LoggedFeedback.from_pandas(df.assign(aspect=[names.index(a) for a in df["aspect"]]))
    snips = pope.estimators.snips(
        reward=total_reward, log_target=target[fb.row_index], log_logging=fb.log_logging
    )
    assert res["baselines"]["snips"]["value"] == pytest.approx(snips.value, rel=1e-5)
    assert res["n_responses"] == len(df) and res["data"]["n_bad"] == 0


def test_evaluate_with_logging_model_matches_logged(tmp_path, models, scored_log, capsys):
    df, _ = scored_log
    logs = write_logs(df.drop(columns=["log_logging"]), tmp_path / "logs.jsonl")
    a = tmp_path / "a.json"
    code, _, err = run(
        [
            "evaluate",
            "--logs",
            logs,
            "--policy",
            models["target"],
            "--logging-model",
            models["logging"],
            "--out",
            a,
            "--no-progress",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    # without the column and without a logging model: a clear error, exit 2
    code, _, err = run(["evaluate", "--logs", logs, "--policy", models["target"]], capsys)
    assert code == 2 and "log_logging" in err and "Traceback" not in err
    # the same log with the logged column gives the same estimates
    logs2 = write_logs(df, tmp_path / "logs2.csv")
    b = tmp_path / "b.json"
    code, _, err = run(
        [
            "evaluate",
            "--logs",
            logs2,
            "--policy",
            models["target"],
            "--out",
            b,
            "-q",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    for part in ("relevance", "diversity", "total"):
        assert ra["pope"][part]["value"] == pytest.approx(rb["pope"][part]["value"], rel=1e-4)


def test_evaluate_streaming_cli_equals_in_memory(tmp_path, models, scored_log, capsys):
    df, _ = scored_log
    logs = write_logs(df, tmp_path / "logs.parquet")
    res = {}
    for name, extra in (("mem", []), ("stream", ["--chunk-rows", "5"])):
        out = tmp_path / f"{name}.json"
        code, _, err = run(
            [
                "evaluate",
                "--logs",
                logs,
                "--policy",
                models["target"],
                "--out",
                out,
                "-q",
                "--no-progress",
                *extra,
            ],
            capsys,
        )
        assert code == 0, err
        res[name] = json.loads(out.read_text())
    for part in ("relevance", "diversity", "total"):
        # scoring batches differ between the runs: equal up to float32 model arithmetic
        a, b = res["mem"]["pope"][part], res["stream"]["pope"][part]
        assert a["value"] == pytest.approx(b["value"], rel=1e-5)
        assert a["stderr"] == pytest.approx(b["stderr"], rel=1e-4)


def test_evaluate_token_mean_weighting(tmp_path, models, scored_log, capsys):
    df, _ = scored_log
    logs = write_logs(df.drop(columns=["log_logging"]), tmp_path / "logs.parquet")
    out = tmp_path / "r.json"
    code, _, err = run(
        [
            "evaluate",
            "--logs",
            logs,
            "--policy",
            models["target"],
            "--logging-model",
            models["logging"],
            "--weighting",
            "token_mean",
            "--out",
            out,
            "-q",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    got = json.loads(out.read_text())["pope"]
    # direct: per-token log-probs of both models, one pair at a time
    lm, lt = load_causal_lm(models["logging"], device="cpu")
    tm, tt = load_causal_lm(models["target"], device="cpu")
    pairs = list(zip(df.prompt, df.response))
    tok0 = [naive_token_logprobs(lm, lt, p, r) for p, r in pairs]
    tok1 = [naive_token_logprobs(tm, tt, p, r) for p, r in pairs]
    names = sorted(set(df["aspect"]))
    fb = LoggedFeedback.from_arrays(
        prompt_id=df.prompt_id,
        signal=df.signal,
        log_logging=[t.sum() for t in tok0],
        aspect=[names.index(a) for a in df["aspect"]],
        token_log_logging=tok0,
    )
    flat_target = np.concatenate([tok1[j] for j in fb.row_index])
    ref = pope.evaluate(fb, None, weighting="token_mean", token_log_target=flat_target)
    for part in ("relevance", "diversity", "total"):
        assert got[part]["value"] == pytest.approx(getattr(ref, part).value, rel=1e-5)
    # without per-token logging log-probs: a clear error
    logs2 = write_logs(df, tmp_path / "l2.parquet")
    code, _, err = run(
        ["evaluate", "--logs", logs2, "--policy", models["target"], "--weighting", "token_mean"],
        capsys,
    )
    assert code == 2 and "per-token logging" in err


def test_bad_rows_fail_then_skip(tmp_path, scored_log, capsys):
    df, target = scored_log
    bad = df.assign(log_target=np.minimum(target, 0.0)).copy()
    bad.loc[2, "signal"] = np.nan
    bad.loc[5, "log_logging"] = 0.7
    bad.loc[8, "aspect"] = "unknown-aspect"
    logs = write_logs(bad, tmp_path / "bad.parquet")
    names = "facts,humour,safety"
    code, _, err = run(["evaluate", "--logs", logs, "--aspect-names", names], capsys)
    assert code == 2
    assert "3 bad" in err and "Traceback" not in err
    for row in ("2", "5", "8"):
        assert row in err
    out = tmp_path / "r.json"
    code, stdout, err = run(
        ["evaluate", "--logs", logs, "--aspect-names", names, "--on-error", "skip", "--out", out],
        capsys,
    )
    assert code == 0, err
    assert "bad rows skipped: 3" in stdout
    res = json.loads(out.read_text())
    assert res["data"]["n_bad"] == 3 and res["n_responses"] == len(df) - 3
    assert "skipped" in err  # a warning says rows were dropped
    rows = sorted(r for v in res["data"]["issues"].values() for r in v["rows"])
    assert rows == [2, 5, 8]


def test_small_ess_warns(tmp_path, capsys):
    rng = np.random.default_rng(3)
    n = 60
    df = pd.DataFrame(
        {
            "prompt_id": np.arange(n) // 3,
            "signal": rng.integers(0, 5, n).astype(float),
            "aspect": rng.integers(0, 3, n),
            "log_logging": np.full(n, -5.0),
            # one response gets almost all the target mass: ESS ~ 1
            "log_target": np.where(np.arange(n) == 7, -0.01, -40.0),
        }
    )
    logs = write_logs(df, tmp_path / "l.parquet")
    code, _, err = run(["evaluate", "--logs", logs, "-q"], capsys)
    assert code == 0
    assert "effective sample size" in err
    # a log whose target equals the logging policy has ESS = n: no warning
    logs = write_logs(df.assign(log_target=df["log_logging"]), tmp_path / "m.parquet")
    code, _, err = run(["evaluate", "--logs", logs, "-q"], capsys)
    assert code == 0 and "effective sample size" not in err


def test_kmeans_aspects_from_npy_column_and_model(tmp_path, models, scored_log, capsys):
    df, target = scored_log
    rng = np.random.default_rng(11)
    emb = rng.normal(size=(len(df), 4))
    np.save(tmp_path / "emb.npy", emb)
    frame = df.drop(columns=["aspect"]).assign(log_target=target, embedding=list(emb))
    logs = write_logs(frame, tmp_path / "logs.parquet")
    outs = {}
    for name, src in (("npy", tmp_path / "emb.npy"), ("col", "column:embedding")):
        outs[name] = tmp_path / f"{name}.json"
        code, _, err = run(
            [
                "evaluate",
                "--logs",
                logs,
                "--aspects-from",
                src,
                "--n-aspects",
                "3",
                "--seed",
                "5",
                "--out",
                outs[name],
                "-q",
            ],
            capsys,
        )
        assert code == 0, err
    a, b = (json.loads(outs[k].read_text()) for k in ("npy", "col"))
    assert a["pope"]["total"]["value"] == pytest.approx(b["pope"]["total"]["value"], rel=1e-12)
    # the same as evaluating with the k-means labels directly
    from pope.aspects import kmeans

    labels = kmeans(emb, 3, seed=5).labels
    fb = LoggedFeedback.from_arrays(
        prompt_id=df.prompt_id,
        signal=df.signal,
        log_logging=df.log_logging,
        aspect=labels,
        n_aspects=3,
    )
    ref = pope.evaluate(fb, target[fb.row_index])
    assert a["pope"]["diversity"]["value"] == pytest.approx(ref.diversity.value, rel=1e-9)

    # soft assignment changes the diversity, stays in [0, 1]
    soft = tmp_path / "soft.json"
    code, _, err = run(
        [
            "evaluate",
            "--logs",
            logs,
            "--aspects-from",
            tmp_path / "emb.npy",
            "--n-aspects",
            "3",
            "--soft-aspects",
            "--temperature",
            "0.5",
            "--out",
            soft,
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    d = json.loads(soft.read_text())["pope"]["diversity"]["value"]
    assert 0.0 <= d <= 1.0 and d != pytest.approx(a["pope"]["diversity"]["value"])

    # embeddings from a local model directory (mean-pooled hidden states)
    code, _, err = run(
        [
            "evaluate",
            "--logs",
            logs,
            "--aspects-from",
            models["target"],
            "--n-aspects",
            "2",
            "-q",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err

    # k-means needs C
    code, _, err = run(["evaluate", "--logs", logs, "--aspects-from", tmp_path / "emb.npy"], capsys)
    assert code == 2 and "--n-aspects" in err
    # the .npy must have one row per log row
    np.save(tmp_path / "short.npy", emb[:-1])
    code, _, err = run(
        ["evaluate", "--logs", logs, "--aspects-from", tmp_path / "short.npy", "--n-aspects", "3"],
        capsys,
    )
    assert code == 2 and "rows" in err


def test_train_then_evaluate(tmp_path, models, scored_log, capsys):
    df, _ = scored_log
    logs = write_logs(df.drop(columns=["log_logging"]), tmp_path / "logs.jsonl")
    out_dir = tmp_path / "run"
    code, stdout, err = run(
        [
            "train",
            "--logs",
            logs,
            "--policy",
            models["logging"],
            "--logging-model",
            models["logging"],
            "--output-dir",
            out_dir,
            "--max-steps",
            "3",
            "--learning-rate",
            "1e-3",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    final = out_dir / "final"
    assert "model saved" in stdout and (final / "config.json").exists()
    assert f"propensities: logging model ({models['logging']})" in stdout
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # the trained policy has a higher estimated value on the log than the logging policy
    values = {}
    for name, policy in (("before", models["logging"]), ("after", final)):
        out = tmp_path / f"{name}.json"
        code, _, err = run(
            [
                "evaluate",
                "--logs",
                logs,
                "--policy",
                policy,
                "--logging-model",
                models["logging"],
                "--out",
                out,
                "-q",
                "--no-progress",
            ],
            capsys,
        )
        assert code == 0, err
        values[name] = json.loads(out.read_text())["pope"]["total"]
    assert values["before"]["ess"] == pytest.approx(len(df))  # same policy: all weights 1
    assert values["after"]["value"] > values["before"]["value"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["evaluate"], "--logs"),
        (["evaluate", "--logs", "{tmp}/missing.parquet"], "not found"),
        (["evaluate", "--logs", "{tmp}/wrong.csv"], "required column"),
        (["evaluate", "--logs", "{tmp}/corrupt.parquet"], "cannot read"),
        (["evaluate", "--logs", "{tmp}/wrong.csv", "--aspects-from", "bogus"], "aspects-from"),
        (["evaluate", "--logs", "{tmp}/wrong.csv", "--estimators", "magic"], "magic"),
        (["evaluate", "--logs", "{tmp}/wrong.csv", "--policy", "{tmp}/nomodel"], "not found"),
        (["evaluate", "--logs", "{tmp}/wrong.csv", "--lambda", "-1"], "lambda"),
        (["evaluate", "--logs", "{tmp}/ok.csv", "--column", "nonsense=x"], "unknown schema"),
        (["frobnicate"], "invalid choice"),
        (
            [
                "train",
                "--logs",
                "{tmp}/ok.csv",
                "--policy",
                "{tmp}/nomodel",
                "--output-dir",
                "{tmp}/o",
            ],
            "not found",
        ),
    ],
)
def test_bad_usage_and_input_exit_2(tmp_path, capsys, argv, needle):
    pd.DataFrame({"qid": [1], "text": ["x"], "votes": [1]}).to_csv(tmp_path / "wrong.csv")
    pd.DataFrame({"prompt_id": [1], "signal": [1], "log_logging": [-1.0]}).to_csv(
        tmp_path / "ok.csv"
    )
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    code, out, err = run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err + out


@pytest.mark.parametrize("command", [[], ["evaluate"], ["train"], ["bench"]])
def test_help_everywhere(capsys, command):
    code, out, _ = run([*command, "--help"], capsys)
    assert code == 0
    assert "usage: pope" in out
    if command:
        assert "examples:" in out


def test_demo_subcommand_is_wired(capsys):
    code, out, _ = run(["demo", "--help"], capsys)
    assert code == 0 and "usage: pope demo" in out


def test_bench_prints_where_or_how(capsys):
    code, out, _ = run(["bench", "--where"], capsys)
    assert code == 0
    assert "bench_cpu.py" in out


def test_python_dash_m(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pope", "evaluate", "--logs", str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- no overwrite
def _target_log(tmp_path, name="logs.jsonl", **kw) -> str:
    """A small log with logged target log-probs (no model needed)."""
    rng = np.random.default_rng(3)
    df = random_log(rng, n_prompts=6)
    df["log_logging"] = -rng.uniform(1, 5, len(df))
    df["log_target"] = df["log_logging"] + rng.normal(0, 0.3, len(df))
    for k, v in kw.items():
        df[k] = v
    return str(write_logs(df, tmp_path / name))


def test_evaluate_out_never_overwrites_the_log_and_needs_overwrite(tmp_path, capsys):
    logs = _target_log(tmp_path)
    original = open(logs, "rb").read()
    for extra in ([], ["--overwrite"]):
        code, out, err = run(["evaluate", "--logs", logs, "--out", logs, "-q", *extra], capsys)
        assert code == 2 and "--out" in err and "--logs" in err, err
        assert "Traceback" not in err + out
    # a parquet directory: no output inside it either
    pq = tmp_path / "pq"
    pq.mkdir()
    write_logs(pd.read_json(logs, lines=True), pq / "part-0.parquet")
    code, _, err = run(["evaluate", "--logs", pq, "--out", pq / "r.json", "-q"], capsys)
    assert code == 2 and "inside" in err
    assert open(logs, "rb").read() == original
    out = tmp_path / "r.json"
    out.write_text("precious")
    code, _, err = run(["evaluate", "--logs", logs, "--out", out, "-q"], capsys)
    assert code == 2 and "--overwrite" in err and "Traceback" not in err
    assert out.read_text() == "precious"
    code, _, err = run(["evaluate", "--logs", logs, "--out", out, "-q", "--overwrite"], capsys)
    assert code == 0, err
    assert "pope" in json.loads(out.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.jsonl", "pq", "r.json"]


def test_weight_overflow_exits_2_with_a_clear_message(tmp_path, capsys):
    rng = np.random.default_rng(0)
    df = random_log(rng, n_prompts=4)
    df["log_logging"] = -1.0
    df["log_target"] = -1.0
    df.loc[0, "log_logging"] = -1000.0  # weight exp(999): beyond float64
    logs = write_logs(df, tmp_path / "l.jsonl")
    code, out, err = run(["evaluate", "--logs", logs, "--estimators", "ips", "-q"], capsys)
    assert code == 2, err
    assert "clip" in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_dict_prompt_id_in_a_streamed_log_exits_2(tmp_path, capsys):
    rows = [
        dict(
            prompt_id=i // 3,
            prompt="the cat",
            response="a dog",
            signal=1.0,
            aspect=i % 2,
            log_logging=-1.0,
            log_target=-1.0,
        )
        for i in range(6)
    ]
    rows[4]["prompt_id"] = {"a": 1}
    logs = tmp_path / "l.jsonl"
    logs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(
        ["evaluate", "--logs", logs, "--chunk-rows", "2", "-q", "--no-progress"], capsys
    )
    assert code == 2, err
    assert "prompt_id" in err and "Traceback" not in err + out


def test_demo_out_of_an_earlier_demo_is_refused(tmp_path, capsys):
    (tmp_path / "results.json").write_text("precious")
    code, _, err = run(["demo", "--quick", "--out", tmp_path, "--no-progress"], capsys)
    assert code == 2 and "--overwrite" in err and "Traceback" not in err
    assert (tmp_path / "results.json").read_text() == "precious"
    (tmp_path / "f").write_text("x")
    code, _, err = run(["demo", "--quick", "--out", tmp_path / "f"], capsys)
    assert code == 2 and "is a file" in err


def _train_argv(logs, models, out, *extra):
    return [
        "train",
        "--logs",
        logs,
        "--policy",
        models["logging"],
        "--output-dir",
        out,
        "--max-steps",
        "4",
        "--save-steps",
        "2",
        "--learning-rate",
        "1e-3",
        "--no-progress",
        *extra,
    ]


def test_train_refuses_an_earlier_run_unless_resume_or_overwrite(
    tmp_path, models, scored_log, capsys
):
    df, _ = scored_log
    logs = write_logs(df, tmp_path / "logs.jsonl")
    out = tmp_path / "run"
    code, _, err = run(_train_argv(logs, models, out), capsys)
    assert code == 0, err
    before = (out / "metrics.jsonl").read_text()
    code, stdout, err = run(_train_argv(logs, models, out), capsys)
    assert code == 2 and "--overwrite" in err and "--resume" in err and "Traceback" not in err
    assert (out / "metrics.jsonl").read_text() == before  # nothing touched
    code, _, err = run(_train_argv(logs, models, out, "--resume", "latest", "--overwrite"), capsys)
    assert code == 2 and "exclude" in err
    # --resume of a finished run: nothing to do, the same result
    code, stdout, err = run(_train_argv(logs, models, out, "--resume", "latest"), capsys)
    assert code == 0, err
    assert "resuming from" in stdout and "checkpoint-4" in stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    code, _, err = run(_train_argv(logs, models, out, "--overwrite", "--max-steps", "1"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "aspect_model.json",
        "checkpoint-1",
        "final",
        "metrics.jsonl",
        "summary.json",
    ]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "final" / "model.safetensors"))


def test_train_resume_skips_a_broken_checkpoint_or_exits_2(tmp_path, models, scored_log, capsys):
    df, _ = scored_log
    logs = write_logs(df, tmp_path / "logs.jsonl")
    ref = tmp_path / "ref"
    code, _, err = run(_train_argv(logs, models, ref), capsys)
    assert code == 0, err
    # a run killed after checkpoint-4 was begun: its files half written
    out = tmp_path / "run"
    import shutil

    shutil.copytree(ref, out)
    shutil.rmtree(out / "final")
    (out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    opt = out / "checkpoint-4" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    code, stdout, err = run(_train_argv(logs, models, out, "--resume", "latest"), capsys)
    assert code == 0, err
    assert "checkpoint-4" in err and "warning" in err  # the skipped one is named
    assert "resuming from" in stdout and "checkpoint-2" in stdout
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # nothing complete left: one clear line, exit 2
    for d in ("checkpoint-2", "checkpoint-4"):
        rng_file = out / d / "rng.json"
        rng_file.write_bytes(rng_file.read_bytes()[:10])
    code, stdout, err = run(_train_argv(logs, models, out, "--resume", "latest"), capsys)
    assert code == 2 and "no complete checkpoint" in err and "rng.json" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run(_train_argv(logs, models, out, "--resume", out / "checkpoint-2"), capsys)
    assert code == 2 and "rng.json" in err and "Traceback" not in err


def test_evaluate_without_models_does_not_load_transformers(tmp_path):
    """Logged log-probs, labels: nothing is scored, so transformers is not imported (about
    2 s and 20 MB of a run; it used to be imported only to silence its loading bars)."""
    logs = _target_log(tmp_path)
    code = (
        "import sys; from pope.cli import main; "
        f"rc = main(['evaluate', '--logs', {logs!r}, '-q', '--no-progress']); "
        "print('transformers' in sys.modules); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"
