"""``pope train``: options and command (off-policy POPE fine-tuning from logs).

Option names follow ``transformers.TrainingArguments`` where they mean the same thing
(``--learning-rate``, ``--num-train-epochs``, ``--gradient-accumulation-steps``,
``--max-steps``, ``--warmup-steps``, ``--weight-decay``, ``--max-grad-norm``,
``--save-steps``, ``--logging-steps``, ``--eval-steps``, ``--report-to``, ``--seed``,
``--output-dir``); the earlier spellings (``--lr``, ``--epochs``, ``--grad-accum-steps``,
``--save-every``) still work and print a deprecation warning.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pope.options import MODEL_DTYPES, REWARD_NORMALIZATIONS, WEIGHTINGS
from pope.train_monitor import REPORT_TO

__all__ = ["add_arguments", "run"]

TRAIN_EXAMPLES = """\
examples:
  # logged log-probs in the file; aspects from the 'aspect' column
  pope train --logs logs.parquet --policy ./base --output-dir ./aligned --lambda 0.5

  # no logged log-probs: the logging model scores them once before training
  pope train --logs logs.jsonl --policy ./base --logging-model ./base --output-dir ./out \\
      --num-train-epochs 2 --learning-rate 1e-5 --clip 5

  # held-out evaluation every 50 steps, stop when the weights collapse, TensorBoard
  pope train --logs train.parquet --eval-logs heldout.parquet --eval-steps 50 \\
      --min-ess-fraction 0.05 --report-to tensorboard --policy ./base --output-dir ./out

  # resume the latest checkpoint in the output directory
  pope train --logs logs.parquet --policy ./base --output-dir ./aligned --resume latest

Outputs in OUTPUT_DIR: final/ (model and tokenizer), metrics.jsonl (one JSON row per logged
step: the step's estimates, ess_fraction, and eval/... at held-out evaluations),
summary.json (estimates over each whole epoch, the final policy on the whole training set,
why training stopped), eval/step-N.json (held-out results, as pope evaluate writes them),
aspect_model.json (how aspects were assigned; pass it to pope evaluate --aspect-model),
runs/ (TensorBoard) or wandb/.
"""


class _DeprecatedAlias(argparse.Action):
    """An old option spelling: stores into the new option's ``dest`` and warns."""

    def __init__(self, option_strings: Any, dest: str, new: str = "", **kw: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser: Any, ns: Any, values: Any, option_string: Any = None) -> None:
        print(
            f"pope train: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr
        )
        setattr(ns, self.dest, values)


def _alias(g: Any, old: str, new: str, dest: str, type_: Any) -> None:
    g.add_argument(
        old,
        dest=dest,
        type=type_,
        action=_DeprecatedAlias,
        new=new,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from e
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return v


def add_arguments(p: argparse.ArgumentParser, cli: Any) -> None:
    """The ``pope train`` options (``cli``: :mod:`pope.cli`, for the shared argument types)."""
    cli._add_input_args(p.add_argument_group("input"))
    _add_models_args(p.add_argument_group("models"), cli)
    _add_objective_args(p.add_argument_group("objective"), cli)
    title = "optimisation (names as in transformers.TrainingArguments)"
    _add_optimisation_args(p.add_argument_group(title), cli)
    _add_monitoring_args(p.add_argument_group("monitoring"), cli)
    ga = p.add_argument_group("aspects")
    cli._add_aspect_args(ga)
    p.set_defaults(func=run)


def _add_models_args(g: Any, cli: Any) -> None:
    """The models options."""
    g.add_argument(
        "--policy",
        required=True,
        metavar="MODEL_DIR",
        help="initial policy (local causal LM directory), trained in place",
    )
    g.add_argument(
        "--logging-model",
        metavar="MODEL_DIR",
        help="score the logging log-probs with this model instead of the log's log_logging column",
    )
    g.add_argument(
        "--output-dir",
        required=True,
        metavar="DIR",
        help="checkpoints, metrics.jsonl, summary.json and the final model",
    )
    g.add_argument(
        "--resume",
        metavar="CHECKPOINT",
        help="resume from a checkpoint directory, or 'latest' (the newest complete "
        "checkpoint in --output-dir)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier run's files in --output-dir (metrics.jsonl, "
        "checkpoint-N, final, eval, runs, summary.json, aspect_model.json) and "
        "start afresh; without it (or --resume) such a directory is refused",
    )
    g.add_argument("--device", help="default: cuda if available, else cpu")
    g.add_argument(
        "--dtype",
        choices=MODEL_DTYPES,
        default="float32",
        help="model dtype while training",
    )
    g.add_argument(
        "--chat-template",
        action="store_true",
        help="format prompts with the tokenizer's chat template",
    )
    g.add_argument(
        "--add-eos",
        action="store_true",
        help="score an EOS token after each response (off by default, as in pope "
        "evaluate and pope score; must match how the logged log-probs were "
        "computed)",
    )


def _add_objective_args(g: Any, cli: Any) -> None:
    """The objective options."""
    pfloat, nnf = cli._positive_float, cli._nonneg_float
    g.add_argument(
        "--lambda",
        dest="lam",
        type=nnf,
        default=1.0,
        metavar="L",
        help="weight of diversity in the total value",
    )
    g.add_argument(
        "--reward-normalization",
        choices=REWARD_NORMALIZATIONS,
        default="max",
        help="how signals become rewards in [0, 1]",
    )
    g.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        default="sequence",
        help="sequence importance ratio or per-token mean",
    )
    g.add_argument("--clip", type=pfloat, metavar="M", help="truncate weights at M")
    g.add_argument(
        "--ppo-eps", type=pfloat, metavar="EPS", help="PPO-style ratio clipping to [1-EPS, 1+EPS]"
    )
    g.add_argument("--beta", type=nnf, default=0.0, help="KL penalty to the initial policy")


def _add_optimisation_args(g: Any, cli: Any) -> None:
    """The optimisation options."""
    pint, pfloat, nnf = cli._positive_int, cli._positive_float, cli._nonneg_float
    g.add_argument(
        "--learning-rate",
        type=pfloat,
        default=1e-5,
        metavar="LR",
        help="peak AdamW learning rate (formerly --lr)",
    )
    g.add_argument(
        "--num-train-epochs",
        type=pfloat,
        default=1.0,
        metavar="E",
        help="passes over the data, fractional allowed (formerly --epochs)",
    )
    g.add_argument(
        "--max-steps", type=pint, metavar="N", help="optimizer steps (overrides --num-train-epochs)"
    )
    g.add_argument(
        "--batch-tokens",
        type=pint,
        default=8192,
        metavar="N",
        help="padded tokens per micro-batch (all responses of a prompt together)",
    )
    g.add_argument(
        "--gradient-accumulation-steps",
        type=pint,
        default=1,
        metavar="N",
        help="micro-batches per optimizer step (formerly --grad-accum-steps)",
    )
    g.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        metavar="N",
        help="linear warmup steps, then cosine decay",
    )
    g.add_argument("--weight-decay", type=nnf, default=0.0, help="AdamW weight decay")
    g.add_argument("--max-grad-norm", type=pfloat, default=1.0, help="gradient clipping norm")
    g.add_argument(
        "--save-steps",
        type=pint,
        metavar="N",
        help="write a checkpoint every N steps (formerly --save-every)",
    )
    g.add_argument(
        "--logging-steps",
        type=pint,
        default=1,
        metavar="N",
        help="write a metrics.jsonl row every N steps",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    for old, new, dest, t in (
        ("--lr", "--learning-rate", "learning_rate", pfloat),
        ("--epochs", "--num-train-epochs", "num_train_epochs", pfloat),
        (
            "--grad-accum-steps",
            "--gradient-accumulation-steps",
            "gradient_accumulation_steps",
            pint,
        ),
        ("--save-every", "--save-steps", "save_steps", pint),
    ):
        _alias(g, old, new, dest, t)


def _add_monitoring_args(g: Any, cli: Any) -> None:
    """The monitoring options."""
    pint = cli._positive_int
    g.add_argument(
        "--ess-warning",
        type=_fraction,
        default=0.1,
        metavar="FRACTION",
        help="warn when a step's ESS is below FRACTION of its sequences (or its "
        "mean weight leaves [0.1, 10])",
    )
    g.add_argument(
        "--min-ess-fraction",
        type=_fraction,
        metavar="FRACTION",
        help="stop training when a step's ESS falls below FRACTION of its "
        "sequences for --ess-patience steps in a row (default: never stop)",
    )
    g.add_argument(
        "--ess-patience",
        type=pint,
        default=1,
        metavar="N",
        help="consecutive low-ESS steps before --min-ess-fraction stops",
    )
    g.add_argument(
        "--eval-logs",
        metavar="PATH",
        help="held-out log evaluated as pope evaluate does (same --format, "
        "--column, aspects) every --eval-steps steps and at the end",
    )
    g.add_argument(
        "--eval-steps",
        "--eval-every",
        type=pint,
        metavar="N",
        help="steps between held-out evaluations (default: only at the end)",
    )
    g.add_argument(
        "--report-to",
        choices=REPORT_TO,
        default="none",
        help="also send the metrics to TensorBoard (OUTPUT_DIR/runs) or wandb "
        "(set WANDB_MODE=offline to stay off the network)",
    )


def _train_aspects(data: Any, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """``aspect``/``aspect_probs``/``num_aspects`` for the training set, and the
    :class:`pope.aspects.AspectModel` that assigned them."""
    import numpy as np

    from pope.aspects import AspectModel, assign_aspects, embed_texts, load_embeddings
    from pope.cli import UsageError

    src = args.aspects_from
    saved = getattr(args, "aspect_model", None)
    saved = AspectModel.load(saved) if saved else None
    if src == "labels":
        names = None if data.aspect_names is None else [str(n) for n in data.aspect_names]
        if saved is not None and saved.kind == "labels" and saved.names != names:
            raise UsageError(
                f"--aspect-model: its labels {saved.names} differ from the log's "
                f"{names}; pass the same --aspect-names"
            )
        model = AspectModel("labels", int(data.n_aspects or 1), names=names)
        if data.aspect_probs is not None:
            return {"aspect_probs": data.aspect_probs, "num_aspects": data.n_aspects}, model
        if data.aspect is None:
            raise UsageError(
                "the log has no aspect column: use --aspects-from with embeddings (and "
                "--n-aspects) or --aspects-from none"
            )
        return {"aspect": data.aspect, "num_aspects": data.n_aspects}, model
    if src == "none":
        return (
            {"aspect": np.zeros(len(data), dtype=np.int64), "num_aspects": 1},
            AspectModel("none", 1),
        )
    if saved is not None and saved.kind != "kmeans":
        raise UsageError(f"--aspect-model holds {saved.kind!r} aspects, not k-means centres")
    n_aspects = saved.n_aspects if saved is not None else args.n_aspects
    if saved is not None and args.n_aspects and args.n_aspects != n_aspects:
        raise UsageError(
            f"--n-aspects {args.n_aspects} differs from the --aspect-model's {n_aspects} clusters"
        )
    if not n_aspects:
        raise UsageError("--aspects-from with embeddings needs --n-aspects C (k-means clusters)")
    if src == "column" or src.startswith("column:"):
        if data.embedding is None:
            raise UsageError("--aspects-from column: the log has no embedding column")
        emb = data.embedding
        how = {"source": "column", "column": src.split(":", 1)[1] if ":" in src else "embedding"}
    elif src.endswith(".npy"):
        emb = load_embeddings(src)[data.rows]
        how = {"source": "npy"}
    elif Path(src).is_dir():
        emb = embed_texts(data.response, src, device=args.device)
        how = {"source": "model", "model": str(src)}
    else:
        raise UsageError(
            f"--aspects-from {src!r}: expected 'labels', 'column[:NAME]', a .npy file, a model "
            "directory or 'none'"
        )
    centers = None if saved is None else saved.centers
    a = assign_aspects(
        emb,
        n_aspects,
        seed=args.seed,
        soft=args.soft_aspects,
        temperature=args.temperature,
        centers=centers,
    )
    model = AspectModel(
        "kmeans",
        n_aspects,
        centers=a.centers,
        embedding=how,
        soft=args.soft_aspects,
        temperature=args.temperature,
        seed=args.seed,
    )
    if args.soft_aspects:
        return {"aspect_probs": a.probs, "num_aspects": n_aspects}, model
    return {"aspect": a.labels, "num_aspects": n_aspects}, model


def _check_output_dir(args: argparse.Namespace) -> None:
    """``--output-dir`` of an earlier run: refused unless ``--resume`` or ``--overwrite``."""
    from pope.cli import UsageError
    from pope.train import run_outputs

    out = Path(args.output_dir)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} is a file, not a directory")
    if args.resume or args.overwrite:
        return
    old = run_outputs(out, out / "metrics.jsonl")
    if old:
        names = ", ".join(p.name for p in old[:4]) + (", ..." if len(old) > 4 else "")
        raise UsageError(
            f"--output-dir {out} holds an earlier run ({names}); pass --resume latest to "
            "continue it or --overwrite to replace it"
        )


@contextlib.contextmanager
def _train_messages() -> Iterator[None]:
    """Resumed checkpoint, skipped broken ones, weight-collapse warnings and the early stop,
    one line each (no Python warning boilerplate)."""
    import logging
    import warnings

    from pope.train import CheckpointWarning
    from pope.train_monitor import WeightCollapseWarning

    logger = logging.getLogger("pope.train")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message: Any, category: type[Warning], *rest: Any, **kw: Any) -> None:
            if issubclass(category, (CheckpointWarning, WeightCollapseWarning)):
                print(f"pope train: warning: {message}", file=sys.stderr)
            else:
                shown(message, category, *rest, **kw)

        warnings.showwarning = show
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


def _held_out(
    args: argparse.Namespace, data: Any, aspect_model: Any, columns: dict[str, str], logging: Any
) -> Any:
    """The :class:`pope.heldout.HeldOutEvaluator` of ``--eval-logs`` (same settings and the
    training aspect model)."""
    from pope.cli import UsageError
    from pope.heldout import HeldOutEvaluator
    from pope.io import LogColumns
    from pope.pipeline import EvalSpec
    from pope.readers import resolve_logs

    if not Path(args.eval_logs).exists():
        raise UsageError(f"--eval-logs: file not found: {args.eval_logs}")
    kw: dict[str, Any] = {
        "aspects": aspect_model.kind if aspect_model.kind != "kmeans" else "embedding"
    }
    if aspect_model.kind == "labels":
        kw.update(
            aspect_names=None if aspect_model.names is None else tuple(aspect_model.names),
            n_aspects=None if aspect_model.names else aspect_model.n_aspects,
        )
    elif aspect_model.kind == "kmeans":
        how = aspect_model.embedding
        if how.get("source") == "npy":
            raise UsageError(
                "--eval-logs with --aspects-from FILE.npy: the .npy rows belong to "
                "the training log; use an embedding column or a model directory"
            )
        if how.get("source") == "model":
            kw.update(aspects="model", embedding_model=how["model"])
        kw.update(
            n_aspects=aspect_model.n_aspects,
            centers=aspect_model.centers,
            soft_aspects=aspect_model.soft,
            temperature=aspect_model.temperature,
        )
    spec = EvalSpec(
        lam=args.lam,
        reward_normalization=args.reward_normalization,
        weighting=args.weighting,
        clip=args.clip,
        batch_tokens=args.batch_tokens,
        device=args.device,
        chat_template=args.chat_template,
        add_eos=args.add_eos,
        columns=LogColumns.from_mapping(columns),
        on_error=args.on_error,
        **kw,
    )
    logs, fmt = resolve_logs(args.eval_logs, args.format, args.split)
    ref, ref_tok = logging if logging is not None else (None, None)
    return HeldOutEvaluator(
        logs, spec, format=fmt, split=args.split, logging_model=ref, logging_tokenizer=ref_tok
    )


def _propensity_source(args: argparse.Namespace, columns: dict[str, str]) -> str:
    """Where the objective's log pi0 comes from (:func:`pope.propensity.propensity_source`
    with the log's Parquet metadata), with its model."""
    from pope.propensity import propensity_source
    from pope.score_log import read_score_metadata

    scored = read_score_metadata(args.logs).get(columns.get("log_logging", "log_logging"), {})
    source, model, _ = propensity_source(
        args.logging_model,
        None,
        scored.get("model"),
        scored if scored.get("method") == "behaviour_cloning" else None,
    )
    return source + (f" ({model})" if model else "")


def run(args: argparse.Namespace) -> int:
    """Run ``pope train``."""
    from pope.cli import UsageError, _check_device, _quiet_libraries, _unhashable_ids_are_bad_input
    from pope.io import load_logs
    from pope.readers import resolve_logs
    from pope.scoring import load_causal_lm
    from pope.train import OffPolicyTrainer, PopeDataset, TrainConfig

    _quiet_libraries()
    for name, path in (("--policy", args.policy), ("--logging-model", args.logging_model)):
        if path is not None and not Path(path).is_dir():
            raise UsageError(f"{name}: model directory not found: {path}")
    _check_device(args.device)
    _check_output_dir(args)
    columns = dict(args.column)
    src = args.aspects_from
    if src == "column" or src.startswith("column:"):
        columns["embedding"] = src.split(":", 1)[1] if ":" in src else "embedding"
    names = None
    if args.aspect_names:
        names = tuple(s.strip() for s in args.aspect_names.split(",") if s.strip())
    logs, fmt = resolve_logs(args.logs, args.format, args.split)
    with _unhashable_ids_are_bad_input():
        data = load_logs(
            logs,
            columns=columns,
            format=fmt,
            split=args.split,
            on_error=args.on_error,
            require_log_logging=args.logging_model is None,
            aspect_names=names,
            n_aspects=args.n_aspects if src == "labels" else None,
            use_aspects=src == "labels",
        )
    rep = data.report
    print(
        f"rows read: {rep.n_rows}; bad rows skipped: {rep.n_bad}; training on {len(data)} responses"
    )
    if rep.n_bad:
        print(rep.summary())
    if len(data) == 0:
        raise UsageError("no valid rows to train on")
    print(f"propensities: {_propensity_source(args, columns)}")
    aspects, aspect_model = _train_aspects(data, args)
    assert data.prompt is not None and data.response is not None  # load_logs(require_text=True)
    dataset = PopeDataset.from_arrays(
        prompt_id=list(data.prompt_id),
        prompt=data.prompt,
        response=data.response,
        reward=data.signal,
        log_logging=None if args.logging_model else data.log_logging,
        reward_normalization=args.reward_normalization,
        **aspects,
    )
    config = TrainConfig(
        lr=args.learning_rate,
        epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        token_budget=args.batch_tokens,
        grad_accum_steps=args.gradient_accumulation_steps,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        lam=args.lam,
        clip=args.clip,
        ppo_eps=args.ppo_eps,
        weighting=args.weighting,
        beta=args.beta,
        add_eos=args.add_eos,
        chat_template=args.chat_template,
        seed=args.seed,
        output_dir=args.output_dir,
        save_every=args.save_steps,
        log_every=args.logging_steps,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        ess_warning=args.ess_warning,
        min_ess_fraction=args.min_ess_fraction,
        ess_patience=args.ess_patience,
        eval_every=args.eval_steps,
        report_to=args.report_to,
    )
    model, tok = load_causal_lm(args.policy, device=args.device, dtype=args.dtype)
    reference: Any = None
    if args.logging_model:
        reference, _ = load_causal_lm(args.logging_model, device=args.device, dtype=args.dtype)
    elif args.beta > 0:
        reference = "initial"
    held_out = None
    if args.eval_logs:
        logging = (reference, tok) if args.logging_model else None
        with _unhashable_ids_are_bad_input():
            held_out = _held_out(args, data, aspect_model, columns, logging)
    trainer = OffPolicyTrainer(
        model, tok, dataset, config, reference_model=reference, held_out=held_out
    )
    with _train_messages():
        result = trainer.train(resume_from=args.resume)
    aspect_model.save(Path(args.output_dir) / "aspect_model.json", overwrite=True)
    _print_summary(result, args)
    return 0


def _print_summary(result: Any, args: argparse.Namespace) -> None:
    keys = ("total", "relevance", "diversity", "ess", "weight_mean")
    if result.epoch_metrics:
        last = result.epoch_metrics[-1]
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in keys if k in last)
        print(f"epoch {last['epoch']} ({last['steps']} steps, all its micro-batches): {shown}")
    if result.final_metrics:
        m = result.final_metrics
        shown = ", ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)
        print(f"final policy on the whole training set (step {result.step}): {shown}")
    if result.evaluations:
        ev = result.evaluations[-1]
        tot = ev["pope"]["total"]
        print(
            f"held-out ({args.eval_logs}, step {ev['step']}): total={tot['value']:.4g} "
            f"[{tot['ci_lower']}, {tot['ci_upper']}], ESS={tot['ess']:.4g} of n={tot['n']}"
        )
        for w in ev["warnings"]:
            print(f"pope train: warning: held-out: {w}", file=sys.stderr)
    if result.stop_reason:
        print(f"pope train: {result.stop_reason}", file=sys.stderr)
    out = Path(args.output_dir)
    print(
        f"model saved to {out / 'final'}; metrics in {out / 'metrics.jsonl'} and "
        f"{out / 'summary.json'}; aspects in {out / 'aspect_model.json'}"
    )
