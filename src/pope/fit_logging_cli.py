r"""``pope fit-logging``: estimate the logging log-probs of human-written logs by behaviour
cloning with cross-fitting folds (:func:`pope.train.behaviour_cloning.fit_logging_policy`).

The prompts are split into ``--folds`` folds; for each fold a copy of ``--model`` is
fine-tuned (maximum likelihood on the response tokens) on the responses of the other folds and
scores the responses of its fold. The log-probs go into ``--into`` (``log_logging``), the fold
of each row into ``--fold-column``, in a Parquet copy of the log whose metadata
(``pope.scores``) records how, so that ``pope evaluate`` says the propensities are estimated.
Option names follow ``transformers.TrainingArguments`` and ``pope train``
(``--learning-rate``, ``--num-train-epochs``, ``--weight-decay``, ``--warmup-steps``,
``--max-grad-norm``, ``--seed``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pope.options import MODEL_DTYPES
from pope.readers import LOG_FORMATS

__all__ = ["DESCRIPTION", "FIT_LOGGING_EXAMPLES", "add_arguments", "run"]

DESCRIPTION = """\
Estimate log pi0(y|x) of logs that have none (responses written by people) by
behaviour cloning with cross-fitting: the prompts are split into K folds; for each
fold a copy of --model is fine-tuned on the responses of the other folds (maximum
likelihood on the response tokens) and scores the responses of its fold, so no
response is scored by a model trained on it. The result is an estimate of the
logging policy; pope evaluate says so when it reads the column."""

FIT_LOGGING_EXAMPLES = """\
examples:
  # logs written by people: estimate pi0 with a small LM, cross-fitted over 5 folds of prompts
  pope fit-logging --logs trees.jsonl --format oasst --model ./small-lm --out bc.parquet

  # evaluate a target against the estimated propensities (the column is read as log_logging)
  pope evaluate --logs bc.parquet --policy ./target --aspects-from none

  # 10 folds, one pass, keep the fold models (fold-K/ and folds.json)
  pope fit-logging --logs logs.parquet --model ./small-lm --out bc.parquet --folds 10 \\
      --num-train-epochs 1 --learning-rate 2e-5 --save-models ./bc-models

The last lines compare the held-out log-likelihood per token of the fitted models with the
base model's; a fit that does not beat the base model is warned about (fewer epochs or a
lower learning rate). The intervals of a later pope evaluate do not include the error of the
fitted propensities.
"""


def add_arguments(p: argparse.ArgumentParser, cli: Any) -> None:
    """The ``pope fit-logging`` options (``cli``: :mod:`pope.cli`, for the shared types)."""
    _add_input_args(p.add_argument_group("input"), cli)
    _add_model_args(p.add_argument_group("model"), cli)
    _add_cross_fitting_args(p.add_argument_group("cross-fitting"), cli)
    title = "optimisation (names as in transformers.TrainingArguments)"
    _add_optimisation_args(p.add_argument_group(title), cli)
    _add_output_args(p.add_argument_group("output"), cli)
    p.set_defaults(func=run)


def _add_input_args(g: Any, cli: Any) -> None:
    """The input options."""
    g.add_argument(
        "--logs",
        required=True,
        metavar="PATH",
        help="log file or directory (any format pope evaluate reads)",
    )
    g.add_argument(
        "--format", choices=LOG_FORMATS, help="override the format detected from the file name"
    )
    g.add_argument("--split", help="split of a Hugging Face DatasetDict directory")
    g.add_argument(
        "--column",
        action="append",
        type=cli._column_arg,
        default=[],
        metavar="FIELD=NAME",
        help="where the prompt/response/prompt_id are, e.g. prompt=question",
    )


def _add_model_args(g: Any, cli: Any) -> None:
    """The model options."""
    g.add_argument(
        "--model",
        required=True,
        metavar="MODEL_DIR",
        help="local causal LM directory (model and tokenizer) fine-tuned per fold; "
        "it is not modified",
    )
    g.add_argument("--device", help="default: cuda if available, else cpu")
    g.add_argument(
        "--dtype",
        choices=MODEL_DTYPES,
        default="float32",
        help="model dtype while fine-tuning and scoring",
    )
    g.add_argument(
        "--chat-template",
        action="store_true",
        help="format prompts with the tokenizer's chat template (as pope evaluate "
        "--chat-template will)",
    )
    g.add_argument(
        "--add-eos",
        action="store_true",
        help="learn and score an EOS token after each response (as pope evaluate --add-eos will)",
    )


def _add_cross_fitting_args(g: Any, cli: Any) -> None:
    """The cross-fitting options."""
    pint = cli._positive_int
    g.add_argument(
        "--folds",
        type=pint,
        default=5,
        metavar="K",
        help="folds of prompts (>= 2, at most the number of prompts); each fold's "
        "responses are scored by a model fine-tuned on the other folds",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="fold assignment, batch order and torch seed (default: 0)",
    )


def _add_optimisation_args(g: Any, cli: Any) -> None:
    """The optimisation options."""
    pint, pfloat, nnf = cli._positive_int, cli._positive_float, cli._nonneg_float
    g.add_argument(
        "--learning-rate",
        type=pfloat,
        default=5e-5,
        metavar="LR",
        help="peak AdamW learning rate, linear decay to 0",
    )
    g.add_argument(
        "--num-train-epochs",
        type=pfloat,
        default=3.0,
        metavar="E",
        help="passes over each fold's training responses, fractional allowed",
    )
    g.add_argument(
        "--batch-tokens",
        type=pint,
        default=8192,
        metavar="N",
        help="padded tokens per training and scoring batch",
    )
    g.add_argument(
        "--weight-decay", type=nnf, default=0.0, help="AdamW weight decay (default: 0.0)"
    )
    g.add_argument(
        "--warmup-steps", type=int, default=0, metavar="N", help="linear warmup steps (default: 0)"
    )
    g.add_argument("--max-grad-norm", type=pfloat, default=1.0, help="gradient clipping norm")
    g.add_argument(
        "--lora-r",
        type=pint,
        metavar="R",
        help="train rank-R LoRA adapters per fold on the frozen model instead of full copies "
        "(needs peft; peft's default target modules)",
    )
    g.add_argument(
        "--lora-alpha",
        type=pfloat,
        metavar="A",
        help="LoRA scaling alpha (default: 2R); only with --lora-r",
    )


def _lora(args: argparse.Namespace) -> dict[str, Any] | None:
    """``peft.LoraConfig`` arguments from ``--lora-r`` / ``--lora-alpha``."""
    from pope.cli import UsageError

    if args.lora_r is None:
        if args.lora_alpha is not None:
            raise UsageError("--lora-alpha needs --lora-r")
        return None
    alpha = 2.0 * args.lora_r if args.lora_alpha is None else args.lora_alpha
    return {"r": args.lora_r, "lora_alpha": alpha}


def _add_output_args(g: Any, cli: Any) -> None:
    """The output options."""
    g.add_argument(
        "--out",
        required=True,
        metavar="FILE.parquet",
        help="the log with the estimated log-probs and the folds, as Parquet",
    )
    g.add_argument(
        "--into",
        default="log_logging",
        metavar="COLUMN",
        help="column of the estimated log pi0(y|x)",
    )
    g.add_argument(
        "--fold-column", default="logging_fold", metavar="COLUMN", help="column of each row's fold"
    )
    g.add_argument(
        "--token-logprobs",
        action="store_true",
        help="also write token_COLUMN, the cross-fitted per-token log-probs (for "
        "pope evaluate --weighting token_mean)",
    )
    g.add_argument(
        "--save-models",
        metavar="DIR",
        help="also write the fold models (DIR/fold-K) and DIR/folds.json",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file (also the input itself), the columns, "
        "or an earlier fit in --save-models",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_paths(args: argparse.Namespace) -> None:
    """Refusals before any work (exit 2): a missing model, an output that exists (without
    ``--overwrite``), is a directory or would land in the model directory."""
    from pope.cli import UsageError, _same_file

    model = Path(args.model)
    if not model.is_dir():
        raise UsageError(f"--model: model directory not found: {args.model}")
    if not Path(args.logs).exists():
        raise UsageError(f"--logs: file not found: {args.logs}")
    out = Path(args.out)
    if out.suffix.lower() not in (".parquet", ".pq"):
        raise UsageError(f"--out {out}: the output is Parquet; its name should end in .parquet")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name")
    if out.exists() and not args.overwrite:
        what = "is the input --logs" if _same_file(out, Path(args.logs)) else "exists"
        raise UsageError(f"--out {out} {what}; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: directory {out.parent} does not exist")
    for name, path in (("--out", out), ("--save-models", args.save_models)):
        if path is None:
            continue
        p = Path(path).resolve()
        if p == model.resolve() or model.resolve() in p.parents:
            raise UsageError(f"{name} {path} would write into the --model directory")
    if args.save_models and _same_file(Path(args.save_models), Path(args.logs)):
        raise UsageError(f"--save-models {args.save_models} is the input --logs")


def run(args: argparse.Namespace) -> int:
    """Run ``pope fit-logging``."""
    from pope.cli import _check_device, _quiet_libraries, _unhashable_ids_are_bad_input
    from pope.score_log import read_score_metadata, write_scored
    from pope.train.behaviour_cloning import fit_logging_policy

    _check_paths(args)
    _check_device(args.device)
    _quiet_libraries()
    with _unhashable_ids_are_bad_input():
        res = fit_logging_policy(
            args.logs,
            args.model,
            folds=args.folds,
            num_train_epochs=args.num_train_epochs,
            learning_rate=args.learning_rate,
            batch_tokens=args.batch_tokens,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
            max_grad_norm=args.max_grad_norm,
            lora=_lora(args),
            add_eos=args.add_eos,
            chat_template=args.chat_template,
            seed=args.seed,
            columns=dict(args.column),
            format=args.format,
            split=args.split,
            column=args.into,
            fold_column=args.fold_column,
            token_logprobs=args.token_logprobs,
            device=args.device,
            dtype=args.dtype,
            save_models=args.save_models,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    write_scored(
        res.frame,
        args.out,
        {args.into: res.settings},
        previous=read_score_metadata(args.logs),
        overwrite=args.overwrite,
    )
    sizes = res.frame.groupby(res.fold_column).size()
    print(
        f"{len(res.frame)} responses in {res.n_folds} folds of prompts ("
        f"{', '.join(map(str, sizes))} responses); base model {args.model}"
    )
    print(res.summary())
    base, fit = res.heldout_logprob_per_token()
    if not fit > base:
        print(
            f"pope fit-logging: warning: the fitted models give the held-out responses a "
            f"lower likelihood than the base model ({fit:.4g} vs {base:.4g} per token): the "
            "fit does not generalise to unseen prompts; try fewer --num-train-epochs or a "
            "lower --learning-rate",
            file=sys.stderr,
        )
    print(
        f"{args.into}: logging propensities estimated by behaviour cloning, {res.n_folds} "
        f"folds (each response scored by the model of its fold, fine-tuned on the other "
        f"folds; fold of each row in {res.fold_column}), written to {args.out}"
    )
    if args.save_models:
        print(f"fold models in {args.save_models}/fold-K, folds in {args.save_models}/folds.json")
    return 0
