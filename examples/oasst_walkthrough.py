"""Real logs, end to end: OpenAssistant trees -> score -> evaluate -> train -> paired -> report.

The logs are 10 real OpenAssistant trees (``tests/data/oasst_10.jsonl``, see its
PROVENANCE.md): prompts written by people, each with several replies ranked by people, and no
log-probabilities of whatever wrote the replies. The walk-through

1. reads the trees into the log table (``pope.io.read_oasst``: one row per ranked reply,
   signal ``1 - rank/(K-1)``);
2. builds two tiny causal LMs from a config, with a word-level tokenizer trained here on the
   texts (nothing is downloaded): a *reference* model, declared as the proxy of the unknown
   logging process, and a *target* model, the reference briefly fine-tuned on the best-ranked
   replies;
3. scores the replies once with each model (``pope score``), into one Parquet file;
4. evaluates the target against the reference from the stored columns (``pope evaluate``),
   with aspects from k-means on bag-of-words embeddings;
5. evaluates the reference against itself, to show what the output says when every
   importance weight is 1;
6. trains the reference off-policy on half of the prompts (``pope train``) with held-out
   evaluation on the other half (``--eval-logs``) and the ESS guard (``--min-ess-fraction``);
7. evaluates the target and the trained policy on the held-out prompts in one run, with the
   paired differences (``pope evaluate --policy A --policy B``) and the training aspect model;
8. writes a report of that evaluation (``pope report``: PNG figures and an HTML page);
9. estimates the logging propensities by behaviour cloning instead (``pope fit-logging``: the
   reference fine-tuned per fold of prompts on the other folds' replies, each reply scored by
   the model that never saw it) and evaluates the target against them.

Run from the repository root (about 25-50 s on 2 CPU cores)::

    python examples/oasst_walkthrough.py [--trees FILE] [--workdir DIR]

The models are far too small to say anything about OpenAssistant; the point is the loop and
what each number means (see docs/data-format.md, "Logs without propensities").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pope.cli import main as pope
from pope.io import read_oasst, write_logs

HERE = Path(__file__).resolve().parent
TREES = HERE.parent / "tests" / "data" / "oasst_10.jsonl"


def build_tokenizer(texts: list[str]):
    """A word-level tokenizer trained on ``texts`` ([BOS] before every prompt)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts,
        trainers.WordLevelTrainer(
            vocab_size=3000, special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
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


def build_model(tok, seed: int):
    """A 2-layer Llama with 32-dim hidden states, from a config."""
    import transformers

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
    return transformers.LlamaForCausalLM(cfg)


def fine_tune(
    model, tok, prompts: list[str], responses: list[str], steps: int = 10, lr: float = 1e-4
):
    """A few steps of supervised fine-tuning on (prompt, response) pairs (response tokens)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        i = step % len(prompts)
        p = tok(prompts[i])["input_ids"][-256:]
        r = tok(responses[i], add_special_tokens=False)["input_ids"][:256]
        ids = torch.tensor([p + r])
        labels = ids.clone()
        labels[0, : len(p)] = -100  # learn the response only
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def bag_of_words(texts: list[str], dim: int = 64) -> np.ndarray:
    """L2-normalised hashed word counts: cheap embeddings for k-means aspects."""
    out = np.zeros((len(texts), dim))
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, zlib.crc32(w.encode()) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def run(trees: Path, workdir: Path) -> dict:
    """The whole walk-through; returns the two evaluation results (JSON dicts)."""
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"== 1. read {trees.name}")
    log = read_oasst(trees)
    info = log.attrs["reader"]
    print(
        f"{info['trees']} trees -> {log['prompt_id'].nunique()} prompts, {len(log)} ranked "
        f"replies ({info['unranked_dropped']} unranked replies left out); signal = "
        "1 - rank/(K-1) within each prompt"
    )
    logs = workdir / "oasst.parquet"
    write_logs(log, logs)

    print("\n== 2. build a reference model and a target (reference fine-tuned on rank-0 replies)")
    tok = build_tokenizer(list(log["prompt"].unique()) + list(log["response"]))
    ref = build_model(tok, seed=0)
    ref.save_pretrained(workdir / "reference")
    tok.save_pretrained(workdir / "reference")
    best = log[log["rank"] == 0]
    target = fine_tune(build_model(tok, seed=0), tok, list(best["prompt"]), list(best["response"]))
    target.save_pretrained(workdir / "target")
    tok.save_pretrained(workdir / "target")

    print("\n== 3. score the replies once with each model (pope score)")
    scored = workdir / "scored.parquet"
    for model, column, src in (
        ("reference", "log_logging", logs),
        ("target", "log_target", scored),
    ):
        code = pope(
            [
                "score",
                "--logs",
                str(src),
                "--model",
                str(workdir / model),
                "--into",
                column,
                "--out",
                str(scored),
                "--overwrite",
                "--no-progress",
            ]
        )
        assert code == 0, f"pope score failed ({code})"
    np.save(workdir / "emb.npy", bag_of_words(list(log["response"])))

    print("\n== 4. target vs the reference proxy, from the stored columns (pope evaluate)")
    common = ["--aspects-from", str(workdir / "emb.npy"), "--n-aspects", "3", "--lambda", "0.5"]
    out_target = workdir / "target.json"
    code = pope(["evaluate", "--logs", str(scored), *common, "--out", str(out_target)])
    assert code == 0, f"pope evaluate failed ({code})"
    res_target = json.loads(out_target.read_text())

    print("\n== 5. the reference against itself: every weight is 1")
    out_same = workdir / "reference.json"
    code = pope(
        [
            "evaluate",
            "--logs",
            str(scored),
            *common,
            "--column",
            "log_target=log_logging",
            "--out",
            str(out_same),
        ]
    )
    assert code == 0, f"pope evaluate failed ({code})"
    res_same = json.loads(out_same.read_text())

    print(
        "\n== 6. train the reference off-policy on half the prompts, held-out evaluation and "
        "the ESS guard (pope train)"
    )
    frame = pd.read_parquet(scored)
    frame["embedding"] = list(np.load(workdir / "emb.npy"))
    held = set(frame["prompt_id"].unique()[::2])
    train_logs, held_logs = workdir / "train.parquet", workdir / "heldout.parquet"
    frame[~frame["prompt_id"].isin(held)].to_parquet(train_logs)
    frame[frame["prompt_id"].isin(held)].to_parquet(held_logs)
    trained = workdir / "trained"
    code = pope(
        [
            "train",
            "--logs",
            str(train_logs),
            "--policy",
            str(workdir / "reference"),
            "--output-dir",
            str(trained),
            "--eval-logs",
            str(held_logs),
            "--eval-steps",
            "2",
            "--max-steps",
            "4",
            "--min-ess-fraction",
            "0.05",
            "--aspects-from",
            "column",
            "--n-aspects",
            "3",
            "--lambda",
            "0.5",
            "--learning-rate",
            "1e-4",
            "--no-progress",
        ]
    )
    assert code == 0, f"pope train failed ({code})"

    print(
        "\n== 7. two policies on the held-out prompts, paired (pope evaluate --policy A "
        "--policy B), with the training aspect model"
    )
    paired = workdir / "paired.json"
    code = pope(
        [
            "evaluate",
            "--logs",
            str(held_logs),
            "--aspects-from",
            "column",
            "--aspect-model",
            str(trained / "aspect_model.json"),
            "--lambda",
            "0.5",
            "--policy",
            str(workdir / "target"),
            "--policy",
            str(trained / "final"),
            "--estimators",
            "none",
            "--out",
            str(paired),
            "--no-progress",
        ]
    )
    assert code == 0, f"pope evaluate (paired) failed ({code})"

    print("\n== 8. a report of the paired evaluation (pope report)")
    code = pope(["report", str(paired), "--out", str(workdir / "report")])
    assert code == 0, f"pope report failed ({code})"

    print(
        "\n== 9. estimate pi0 by behaviour cloning, cross-fitted over 3 folds of prompts "
        "(pope fit-logging), and evaluate the target against it"
    )
    bc = workdir / "bc.parquet"
    code = pope(
        [
            "fit-logging",
            "--logs",
            str(logs),
            "--model",
            str(workdir / "reference"),
            "--out",
            str(bc),
            "--folds",
            "3",
            "--num-train-epochs",
            "1",
            "--learning-rate",
            "1e-3",
            "--no-progress",
        ]
    )
    assert code == 0, f"pope fit-logging failed ({code})"
    out_bc = workdir / "bc.json"
    code = pope(
        [
            "evaluate",
            "--logs",
            str(bc),
            "--policy",
            str(workdir / "target"),
            *common,
            "--out",
            str(out_bc),
            "--no-progress",
        ]
    )
    assert code == 0, f"pope evaluate (behaviour cloning) failed ({code})"
    res_bc = json.loads(out_bc.read_text())

    print("\n== summary")
    for name, res in (
        ("target vs reference", res_target),
        ("reference vs itself", res_same),
        ("target vs cloned pi0", res_bc),
    ):
        p = res["pope"]
        print(
            f"{name:<22} relevance {p['relevance']['value']:.4f} "
            f"(+/- {p['relevance']['stderr']:.4f}), diversity {p['diversity']['value']:.4f}, "
            f"total {p['total']['value']:.4f}, ESS {p['relevance']['ess']:.1f} of "
            f"{res['n_responses']}, weights all 1: "
            f"{res['propensity']['weights_identically_one']}"
        )
    print(
        "Against itself the value is the plain average of the logged rewards (the people's "
        "replies), not a statement about any model. The target's value is relative to the "
        "reference, its ESS says how few replies carry it, and it is in-sample: the target "
        "was fine-tuned on the best-ranked of these very replies (hold logs out in practice). "
        "Against the cloned pi0 the value is an estimate under a fitted logging policy: right "
        "as far as that fit matches the people who wrote the replies."
    )
    return {
        "target": res_target,
        "reference": res_same,
        "paired": json.loads(paired.read_text()),
        "behaviour_cloning": res_bc,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", type=Path, default=TREES, help="OpenAssistant trees (.jsonl)")
    ap.add_argument(
        "--workdir",
        type=Path,
        help="where to write models and results (default: a temporary directory)",
    )
    args = ap.parse_args()
    if args.workdir is None:
        with tempfile.TemporaryDirectory() as d:
            run(args.trees, Path(d))
    else:
        run(args.trees, args.workdir)


if __name__ == "__main__":
    main()
