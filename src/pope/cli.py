"""The ``pope`` command: evaluate a policy on real logs, train, run the demo or benchmarks.

Exit codes: 0 success; 2 bad usage or bad input (a clear message on stderr, no traceback;
set ``POPE_DEBUG=1`` to see it); 1 an unexpected error (a bug: the traceback is shown).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["UsageError", "build_parser", "main"]

PROG = "pope"


class UsageError(Exception):
    """Bad command-line usage detected after parsing (exit code 2)."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' layout; show the defaults that say something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings:
            return text
        if action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


# ----------------------------------------------------------------------------- evaluate
EVALUATE_EXAMPLES = """\
examples:
  # logged log-probs in the file (column log_logging), aspects from the 'aspect' column
  pope evaluate --logs logs.parquet --policy ./my-model --lambda 0.5 --out results.json

  # no logged log-probs: score the responses with the logging model too
  pope evaluate --logs logs.jsonl --policy ./target --logging-model ./base

  # aspects by k-means on embeddings stored in a .npy file (one row per log row)
  pope evaluate --logs logs.csv --policy ./target --aspects-from emb.npy --n-aspects 8

  # aspects from a local sentence-transformers model directory, soft assignment
  pope evaluate --logs logs.parquet --policy ./target --aspects-from ./minilm \\
      --n-aspects 8 --soft-aspects --temperature 0.1

  # a log larger than memory, in chunks of 100k rows (rows of a prompt must be contiguous)
  pope evaluate --logs big/ --policy ./target --chunk-rows 100000

  # your own column names
  pope evaluate --logs l.parquet --policy ./t --column prompt_id=qid --column signal=votes
"""


def _column_arg(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected FIELD=COLUMN, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from e
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from e
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = _nonneg_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a number > 0")
    return v


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="estimate a policy's relevance, diversity and total value from logs",
        description=(
            "Score the logged responses with the target policy and estimate its POPE value\n"
            "(relevance + lambda * diversity) off-policy, with the chosen baseline estimators,\n"
            "confidence intervals and weight diagnostics. Log format: docs/data-format.md."
        ),
        epilog=EVALUATE_EXAMPLES,
        formatter_class=_Formatter,
    )
    g = p.add_argument_group("input")
    _add_input_args(g)
    g.add_argument("--chunk-rows", type=_positive_int, metavar="N",
                   help="stream the log in chunks of N rows (logs larger than memory)")
    g.add_argument("--engine", choices=["local", "ray", "spark"], default="local",
                   help="where to evaluate: this process, a Ray cluster or Spark (Parquet "
                        "logs; same result, docs/scale.md)")
    g.add_argument("--engine-address", metavar="ADDRESS",
                   help="Ray cluster address (auto, ray://host:10001) or Spark master URL "
                        "(local[4], spark://host:7077, yarn); default: a local one")
    g.add_argument("--num-buckets", type=_positive_int, default=64, metavar="N",
                   help="ray/spark: prompts are hashed into N buckets, each mapped on a worker")

    g = p.add_argument_group("policies")
    g.add_argument("--policy", metavar="MODEL_DIR", action="append",
                   help="target policy: a local Hugging Face causal LM directory; without it "
                        "the log needs a log_target column. Give it several times to evaluate "
                        "several policies on one log (the logging side is scored once) with "
                        "the paired differences against the first (in memory)")
    g.add_argument("--logging-model", metavar="MODEL_DIR",
                   help="logging policy to score the responses with, instead of the logged "
                        "log_logging column")
    g.add_argument("--reference-model", metavar="MODEL_DIR",
                   help="logs without log-probabilities (written by people): score them with "
                        "this model as a declared proxy of the logging policy; the output says "
                        "what the value then means")
    g.add_argument("--batch-tokens", type=_positive_int, default=8192, metavar="N",
                   help="token budget of a scoring batch (padding included)")
    g.add_argument("--device", help="scoring device (default: cuda if available, else cpu)")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   default="auto", help="model dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    g.add_argument("--chat-template", action="store_true",
                   help="format prompts with the tokenizer's chat template")
    g.add_argument("--add-eos", action="store_true",
                   help="score an EOS token after each response")
    g.add_argument("--head", choices=["logits", "hidden"], default="logits",
                   help="'hidden' scores from hidden states and the LM head weight without "
                        "materialising all logits (plain linear heads only)")

    g = p.add_argument_group("estimation")
    g.add_argument("--lambda", dest="lam", type=_nonneg_float, default=1.0, metavar="L",
                   help="weight of diversity in the total value")
    g.add_argument("--reward-normalization",
                   choices=["max", "log1p", "rank", "global_max", "none"], default="max",
                   help="how signals become rewards in [0, 1] (see docs/method.md)")
    g.add_argument("--weighting", choices=["sequence", "token_mean"], default="sequence",
                   help="importance weight: exact sequence ratio or length-normalised "
                        "per-token mean (needs per-token logging log-probs)")
    g.add_argument("--clip", type=_positive_float, metavar="M",
                   help="truncate importance weights at M")
    g.add_argument("--relevance", choices=["snips", "ips"], default="snips",
                   help="self-normalised or plain IPS relevance")
    g.add_argument("--coverage", choices=["self_normalized", "ips"],
                   default="self_normalized", help="normaliser of the per-prompt coverage")
    g.add_argument("--diversity", choices=["coverage", "gini_simpson", "response_entropy"],
                   default="coverage",
                   help="Shannon coverage entropy, Gini-Simpson coverage (identified exactly "
                        "from 2 responses per prompt), or the per-response lower bound")
    g.add_argument("--diversity-estimator", choices=["polynomial", "jackknife", "plugin"],
                   default="polynomial",
                   help="Shannon coverage entropy: minimax polynomial with a bias-aware "
                        "interval (default), or jackknife / plug-in (biased; their "
                        "intervals ignore the bias)")
    g.add_argument("--diversity-degree", type=int, default=None, metavar="L",
                   help="fix the polynomial degree (default: chosen among 2..4, accounted "
                        "for in the interval)")
    g.add_argument("--alpha", type=float, default=0.05,
                   help="intervals at level 1 - alpha")
    g.add_argument("--ci", choices=["normal", "t", "bootstrap"], default="normal",
                   help="interval method (bootstrap: in memory only)")
    g.add_argument("--estimators", default="snips,clipped_ips", metavar="LIST",
                   help="comma-separated baselines on the total reward: ips, snips, "
                        "clipped_ips, sub_gaussian_ips, or 'none'")
    g.add_argument("--baseline-clip", type=_positive_float, metavar="M",
                   help="M of clipped_ips (default: --clip, else 10)")
    g.add_argument("--ess-warning", type=float, default=0.1, metavar="FRACTION",
                   help="warn when the effective sample size is below FRACTION * n")

    _add_aspect_args(p.add_argument_group("aspects"))

    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="FILE",
                   help="write the results as JSON (an existing file only with --overwrite; "
                        "never one of the inputs)")
    g.add_argument("--save-aspect-model", metavar="FILE",
                   help="write the aspect model (k-means centres or label names, JSON) to "
                        "reuse with --aspect-model on other logs")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out / --save-aspect-model file")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print only the table and warnings")
    p.set_defaults(func=_cmd_evaluate)


def _check_device(device: str | None) -> None:
    """A CUDA device asked for on a machine without one is a usage error, not a crash."""
    if device is None or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available on this machine")


def _spec_from_args(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from pope.io import LogColumns
    from pope.streaming import BASELINES, EvalSpec

    try:
        columns = LogColumns.from_mapping(dict(args.column))
    except ValueError as e:
        raise UsageError(f"--column: {e}") from e
    est = [e.strip() for e in args.estimators.split(",") if e.strip()]
    if est == ["none"]:
        est = []
    bad = [e for e in est if e not in BASELINES]
    if bad:
        raise UsageError(f"--estimators: unknown {bad}; choose from {', '.join(BASELINES)}")
    src = args.aspects_from
    kw: dict[str, Any] = {}
    if src in ("labels", "none"):
        kw["aspects"] = src
    elif src == "column" or src.startswith("column:"):
        kw["aspects"] = "embedding"
        name = src.split(":", 1)[1] if ":" in src else "embedding"
        columns = LogColumns.from_mapping({**columns.as_dict(), "embedding": name})
    elif src.endswith(".npy"):
        if not Path(src).is_file():
            raise UsageError(f"--aspects-from: embeddings file not found: {src}")
        kw.update(aspects="npy", embeddings_path=src)
    elif Path(src).is_dir():
        kw.update(aspects="model", embedding_model=src)
    else:
        raise UsageError(
            f"--aspects-from {src!r}: expected 'labels', 'column[:NAME]', a .npy file, a model "
            "directory or 'none'"
        )
    names = None
    if args.aspect_names:
        names = tuple(s.strip() for s in args.aspect_names.split(",") if s.strip())
    n_aspects = args.n_aspects
    if args.aspect_model:
        names, n_aspects = _apply_aspect_model(args, kw, names)
    if kw["aspects"] in ("embedding", "npy", "model") and not n_aspects:
        raise UsageError("--aspects-from with embeddings needs --n-aspects C (k-means clusters)")
    policies = list(args.policy or [])
    for name, path in (*(("--policy", p) for p in policies),
                       ("--logging-model", args.logging_model),
                       ("--reference-model", args.reference_model)):
        if path is not None and not Path(path).is_dir():
            raise UsageError(f"{name}: model directory not found: {path}")
    if len(policies) > 1 and args.chunk_rows:
        raise UsageError("several --policy are compared in memory: drop --chunk-rows")
    if len(set(policies)) < len(policies):
        raise UsageError("--policy: the same model directory is given twice")
    if args.logging_model and args.reference_model:
        raise UsageError("give --logging-model (the logging policy) or --reference-model (a "
                         "declared proxy of it), not both")
    if not 0 < args.alpha < 1:
        raise UsageError(f"--alpha must lie in (0, 1), got {args.alpha}")
    _check_device(args.device)
    if args.ci == "bootstrap" and args.chunk_rows:
        raise UsageError("--ci bootstrap needs the whole log in memory (drop --chunk-rows)")
    spec = EvalSpec(
        lam=args.lam,
        reward_normalization=args.reward_normalization,
        weighting=args.weighting,
        clip=args.clip,
        relevance=args.relevance,
        coverage=args.coverage,
        diversity=args.diversity,
        diversity_estimator=args.diversity_estimator,
        diversity_degree=args.diversity_degree,
        alpha=args.alpha,
        estimators=tuple(est),
        baseline_clip=args.baseline_clip,
        policy=policies[0] if policies else None,
        logging_model=args.logging_model or args.reference_model,
        batch_tokens=args.batch_tokens,
        device=args.device,
        dtype=args.dtype,
        chat_template=args.chat_template,
        add_eos=args.add_eos,
        head=args.head,
        n_aspects=n_aspects,
        aspect_names=names,
        soft_aspects=args.soft_aspects,
        temperature=args.temperature,
        seed=args.seed,
        columns=columns,
        on_error=args.on_error,
        progress=not args.no_progress and not args.quiet,
        **kw,
    )
    return spec, {"ci": args.ci}


def _apply_aspect_model(args: argparse.Namespace, kw: dict[str, Any],
                        names: tuple[str, ...] | None) -> tuple[Any, int | None]:
    """Fold ``--aspect-model`` into the spec keywords ``kw``; returns (aspect names, C)."""
    from pope.aspects import AspectModel

    try:
        am = AspectModel.load(args.aspect_model)
    except (OSError, ValueError) as e:
        raise UsageError(f"--aspect-model: {e}") from e
    if args.n_aspects and args.n_aspects != am.n_aspects:
        raise UsageError(f"--n-aspects {args.n_aspects} differs from the --aspect-model's "
                         f"{am.n_aspects} aspects")
    if kw["aspects"] in ("embedding", "npy", "model"):
        if am.kind != "kmeans":
            raise UsageError(f"--aspect-model holds {am.kind!r} aspects, not k-means centres; "
                             "use it with --aspects-from labels")
        kw["centers"] = am.centers
        return names, am.n_aspects
    if kw["aspects"] == "labels":
        if am.kind == "kmeans":
            raise UsageError("--aspect-model holds k-means centres: give --aspects-from with "
                             "the same embedding source (column, model directory)")
        if am.kind == "labels":
            if names is not None and am.names is not None and list(names) != am.names:
                raise UsageError(f"--aspect-names {list(names)} differ from the --aspect-model's "
                                 f"{am.names}")
            if am.names is not None:
                return tuple(am.names), None
            return names, am.n_aspects
    return names, args.n_aspects


def _aspect_model_of(result: Any) -> Any:
    """The :class:`pope.aspects.AspectModel` of an evaluation (what assigned its aspects)."""
    from pope.aspects import AspectModel

    spec = result.spec
    fb = result.prepared.feedback if result.prepared is not None else None
    c = int(spec.n_aspects or (fb.n_aspects if fb is not None else 1) or 1)
    if spec.kmeans:
        how: dict[str, Any] = {"source": {"embedding": "column", "npy": "npy",
                                          "model": "model"}[spec.aspects]}
        if spec.aspects == "embedding":
            how["column"] = spec.columns.embedding
        if spec.aspects == "model":
            how["model"] = str(spec.embedding_model)
        return AspectModel("kmeans", c, centers=spec.centers, embedding=how,
                           soft=spec.soft_aspects, temperature=spec.temperature, seed=spec.seed)
    if fb is not None and fb.n_aspects == 1 and spec.aspects != "labels":
        return AspectModel("none", 1)
    names = None if spec.aspect_names is None else [str(n) for n in spec.aspect_names]
    if names is not None:
        c = len(names)
    return AspectModel("labels" if spec.aspects == "labels" else "none", c, names=names)


def _aspect_rows(result: Any) -> list[dict[str, Any]]:
    """The per-aspect table of an in-memory evaluation (:func:`pope.aspects.aspect_table`)."""
    from pope.aspects import aspect_table

    prep = result.prepared
    if prep is None:
        return []
    fb = prep.feedback
    emb = None if prep.embeddings is None else prep.embeddings[fb.row_index]
    responses = None if prep.data.response is None else [prep.data.response[j]
                                                         for j in fb.row_index]
    names = result.spec.aspect_names
    return aspect_table(fb.aspect, fb.aspect_probs, fb.prompt_ptr, result.pope.p_hat,
                        responses, names=names, embeddings=emb, centers=result.spec.centers)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pope.estimate import WeightOverflowError
    from pope.propensity import describe_propensity
    from pope.readers import reader_summary, resolve_logs
    from pope.score_log import read_score_metadata

    spec, opts = _spec_from_args(args)
    if args.out:
        inputs = [*(args.policy or []), args.logging_model]
        if args.aspects_from.endswith(".npy") or Path(args.aspects_from).is_dir():
            inputs.append(args.aspects_from)
        _check_out_file(args.out, args.logs, [i for i in inputs if i],
                        overwrite=args.overwrite)
    if args.save_aspect_model:
        _check_out_file(args.save_aspect_model, args.logs,
                        [i for i in (args.out, args.aspect_model) if i], overwrite=args.overwrite)
    _quiet_libraries()
    logs, fmt = resolve_logs(args.logs, args.format, args.split)
    if args.policy and len(args.policy) > 1:
        return _evaluate_paired(args, spec, opts, logs, fmt)
    with _unhashable_ids_are_bad_input():
        try:
            result = _run_evaluation(args, spec, logs, fmt)
        except WeightOverflowError as e:
            raise UsageError(f"{e} (options: --clip M, --baseline-clip M, --relevance snips, "
                             "--estimators snips)") from e
    scored = read_score_metadata(args.logs).get(spec.columns.log_logging or "", {})
    prop = describe_propensity(result, logging_model=args.logging_model,
                               reference_model=args.reference_model,
                               scored_by=scored.get("model"),
                               rank_signal=spec.reward_normalization == "rank")
    rep = result.report
    if not args.quiet:
        print(f"log: {args.logs}")
        if reader_summary(logs):
            print(reader_summary(logs))
        print(f"rows read: {rep.n_rows}; bad rows skipped: {rep.n_bad}; evaluated: "
              f"{result.n_responses} responses over {result.n_prompts} prompts")
        if rep.n_bad:
            print(rep.summary())
        lam = spec.lam
        print(f"lambda={lam:g}, reward normalization={spec.reward_normalization}, "
              f"weighting={spec.weighting}, clip={spec.clip}, aspects={spec.aspects}"
              + (f" (C={spec.n_aspects})" if spec.n_aspects else ""))
        print()
    print(result.table(method=opts["ci"]))
    aspects = _aspect_rows(result)
    if aspects and not args.quiet and len(aspects) > 1:
        from pope.aspects import format_aspect_table

        print("\nper aspect (coverage: mean over prompts of the share of each aspect; logging: "
              "the logged responses, target: the policy's plug-in estimate)")
        print(format_aspect_table(aspects))
    if not args.quiet:
        print(f"\npropensities: {prop['source']}. {prop['meaning']}")
    warnings = result.warnings(args.ess_warning) + prop["warnings"]
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.out:
        out = result.to_dict(method=opts["ci"], ess_fraction=args.ess_warning)
        out["logs"] = str(args.logs)
        out["propensity"] = {k: v for k, v in prop.items() if k != "warnings"}
        out["warnings"] = out["warnings"] + prop["warnings"]
        if result.prepared is not None:  # in memory: the rows that fixed the aspects are here
            out["aspects"] = {"model": _aspect_model_of(result).to_dict(), "table": aspects}
        if result.pope.log_weight is not None and len(result.pope.log_weight) <= 200_000:
            out["log_weights"] = [float(v) for v in result.pope.log_weight]
        _write_text_atomic(Path(args.out), json.dumps(out, indent=2, allow_nan=False) + "\n")
        if not args.quiet:
            print(f"\nresults written to {args.out}")
    if args.save_aspect_model:
        _aspect_model_of(result).save(args.save_aspect_model, overwrite=args.overwrite)
        if not args.quiet:
            print(f"aspect model written to {args.save_aspect_model}")
    return 0


def _evaluate_paired(args: argparse.Namespace, spec: Any, opts: dict[str, Any], logs: Any,
                     fmt: Any) -> int:
    """``pope evaluate`` with several ``--policy``: per-policy tables and paired differences."""
    from pope.estimate import WeightOverflowError
    from pope.paired import evaluate_policies

    with _unhashable_ids_are_bad_input():
        try:
            res = evaluate_policies(logs, spec, list(args.policy), format=fmt, split=args.split)
        except WeightOverflowError as e:
            raise UsageError(f"{e} (options: --clip M, --relevance snips)") from e
        except ValueError as e:
            raise UsageError(str(e)) from e
    if not args.quiet:
        r0 = res.results[0]
        print(f"log: {args.logs}")
        print(f"rows read: {r0.report.n_rows}; bad rows skipped: {r0.report.n_bad}; evaluated: "
              f"{r0.n_responses} responses over {r0.n_prompts} prompts, "
              f"{len(res.policies)} policies")
        print()
    print(res.table(method=opts["ci"]))
    for w in res.warnings(args.ess_warning):
        print(f"warning: {w}", file=sys.stderr)
    if args.out:
        out = res.to_dict(method=opts["ci"], ess_fraction=args.ess_warning)
        out["logs"] = str(args.logs)
        _write_text_atomic(Path(args.out), json.dumps(out, indent=2, allow_nan=False) + "\n")
        if not args.quiet:
            print(f"\nresults written to {args.out}")
    return 0


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _check_out_file(out: str, logs: str, inputs: Sequence[str], *, overwrite: bool) -> None:
    """Refuse an output file that is the log, lies in a log directory or is another input
    (always), or exists (without ``--overwrite``); checked before any work is done."""
    p = Path(out)
    if _same_file(p, Path(logs)) or (Path(logs).is_dir() and Path(logs).resolve() in
                                     p.resolve().parents):
        raise UsageError(f"--out {out} would overwrite or sit inside the input --logs {logs}")
    for i in inputs:
        if _same_file(p, Path(i)):
            raise UsageError(f"--out {out} is an input ({i}); it would be overwritten")
    if p.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name")
    if p.exists() and not overwrite:
        raise UsageError(f"--out {out} exists; pass --overwrite to replace it")
    if not p.parent.is_dir():
        raise UsageError(f"--out {out}: directory {p.parent} does not exist")


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, fsync it, rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _unhashable_ids_are_bad_input() -> Iterator[None]:
    """An id that is a dict or list in the log (``unhashable type``) is bad input (exit 2)."""
    try:
        yield
    except TypeError as e:
        if "unhashable type" not in str(e):
            raise
        raise UsageError(
            f"--logs: an id (prompt_id or aspect) is a {str(e).split(':')[-1].strip()}, not a "
            "str or int; ids must be strings or integers"
        ) from e


def _run_evaluation(args: argparse.Namespace, spec: Any, logs: Any, fmt: Any) -> Any:
    from pope.engines import check_engine_options, evaluate_with_engine

    engine = getattr(args, "engine", "local")
    address = getattr(args, "engine_address", None)
    try:
        check_engine_options(engine, logs, address=address, chunk_rows=args.chunk_rows,
                             format=fmt)
    except ValueError as e:
        raise UsageError(f"--engine {engine}: {e}") from e
    if engine != "local" and args.ci == "bootstrap":
        raise UsageError("--ci bootstrap needs the whole log in memory (--engine local)")
    return evaluate_with_engine(logs, spec, engine=engine, address=address,
                                num_buckets=getattr(args, "num_buckets", 64),
                                chunk_rows=args.chunk_rows, format=fmt, split=args.split)


def _quiet_libraries() -> None:
    """Silence the transformers loading bars and info logs (our own bars stay)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers is optional here
        pass


# ----------------------------------------------------------------------------- train
def _add_aspect_args(g: Any) -> None:
    g.add_argument("--aspects-from", default="labels", metavar="SOURCE",
                   help="'labels' (the aspect / aspect_probs column), 'column[:NAME]' "
                        "(k-means on an embedding column), a .npy file of embeddings (one row "
                        "per log row), a local embedding model directory, or 'none'")
    g.add_argument("--n-aspects", type=_positive_int, metavar="C",
                   help="number of aspects (k-means clusters; or the label range)")
    g.add_argument("--aspect-names", metavar="A,B,...",
                   help="known aspect labels; other labels are reported as unknown")
    g.add_argument("--soft-aspects", action="store_true",
                   help="soft k-means assignment: softmax of negative distances")
    g.add_argument("--temperature", type=_positive_float, default=1.0,
                   help="temperature of the soft assignment")
    g.add_argument("--seed", type=int, default=0, help="seed (k-means; training)")
    g.add_argument("--aspect-model", metavar="FILE",
                   help="reuse a saved aspect model (aspect_model.json of pope train, or "
                        "--save-aspect-model of pope evaluate): its k-means centres instead of "
                        "refitting, so numbers on other logs use the same clustering")


def _add_input_args(g: Any) -> None:
    g.add_argument("--logs", required=True, metavar="PATH",
                   help="log file or directory: .parquet (or a directory of them), .jsonl, "
                        ".csv/.tsv, or a Hugging Face datasets directory (save_to_disk)")
    g.add_argument("--format", choices=["parquet", "jsonl", "csv", "tsv", "hf", "oasst",
                                        "ratings", "pairwise", "trl", "auto"],
                   help="override the format detected from the file name; oasst, ratings, "
                        "pairwise, trl read public feedback formats, auto tells them apart "
                        "(docs/data-format.md, Public formats)")
    g.add_argument("--split", help="split of a Hugging Face DatasetDict directory")
    g.add_argument("--column", action="append", type=_column_arg, default=[],
                   metavar="FIELD=NAME",
                   help="map a schema field to a column of your log (repeatable), e.g. "
                        "signal=upvotes")
    g.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                   help="bad rows: stop with their list (fail) or drop them and report (skip)")


def _add_train(sub: Any) -> None:
    from pope import train_cli

    p = sub.add_parser(
        "train",
        help="off-policy POPE training of a policy on logs",
        description=(
            "Fine-tune a causal LM to maximise the estimated POPE value\n"
            "(relevance + lambda * diversity) on logged responses only\n"
            "(pope.train.OffPolicyTrainer), watching the importance weights."
        ),
        epilog=train_cli.TRAIN_EXAMPLES,
        formatter_class=_Formatter,
    )
    train_cli.add_arguments(p, sys.modules[__name__])


# ----------------------------------------------------------------------------- score
def _add_score(sub: Any) -> None:
    from pope import score_log

    p = sub.add_parser(
        "score", help="write a model's log-probs of the logged responses into the log (Parquet)",
        description=("Score every logged response with a local causal LM and write\n"
                     "log pi(y|x) (optionally per token) into a copy of the log (Parquet),\n"
                     "so that evaluate and train reuse it instead of scoring again."),
        epilog=score_log.SCORE_EXAMPLES, formatter_class=_Formatter,
    )
    score_log.add_arguments(p, _column_arg)
    p.set_defaults(func=score_log.run)


# ----------------------------------------------------------------------------- report
def _add_report(sub: Any) -> None:
    from pope import report

    p = sub.add_parser(
        "report", help="figures and a self-contained HTML page from pope evaluate results",
        description=report.__doc__.split("\n\n", 1)[1].split("\n\nFiles of")[0],
        epilog="example:\n  pope evaluate --logs logs.parquet --policy ./m --out res.json\n"
               "  pope report res.json --out report/",
        formatter_class=_Formatter,
    )
    report.add_arguments(p)


# ----------------------------------------------------------------------------- demo
DEMO_OUTPUTS = ("results.json", "demo.png")  # what pope.demo writes into --out


def _add_demo(sub: Any, load: bool) -> None:
    desc = "run the end-to-end demo (synthetic logs, evaluation and training)"
    if not load:
        sub.add_parser("demo", help=desc, add_help=False)
        return
    p = sub.add_parser("demo", help=desc, description=desc, formatter_class=_Formatter)
    try:
        from pope import demo
    except ImportError as e:
        msg = str(e)

        def unavailable(args: argparse.Namespace) -> int:
            raise UsageError(f"the demo is not available in this installation ({msg})")

        p.set_defaults(func=unavailable)
        return
    demo.add_arguments(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace results.json / demo.png of an earlier demo in --out")

    def run(args: argparse.Namespace) -> int:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file; the demo writes a directory")
        old = [n for n in DEMO_OUTPUTS if (out / n).exists()]
        if old and not args.overwrite:
            raise UsageError(f"--out {out} holds an earlier demo ({', '.join(old)}); pass "
                             "--overwrite to replace it")
        return demo.run(args)

    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- bench
BENCH_HELP = """\
The CPU benchmarks live in the source tree (bench/bench_cpu.py); they are not installed with
the package. From a checkout of the repository:

  pip install -e '.[test]'
  python bench/bench_cpu.py            # CPU backends of the estimators
  python -m pytest bench -q            # benchmark suites, if any

GPU kernels have their own scripts in bench/ (they need a CUDA device).
Results and baselines are recorded in bench/RESULTS.md.
"""


def _find_bench() -> Path | None:
    here = Path(__file__).resolve()
    candidates = [Path.cwd() / "bench" / "bench_cpu.py"]
    candidates += [parent / "bench" / "bench_cpu.py" for parent in here.parents[:4]]
    for c in candidates:
        if c.is_file():
            return c
    return None


def _add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="run the CPU benchmarks (bench/bench_cpu.py from the source tree)",
        description="Run bench/bench_cpu.py; arguments after 'bench' are passed through.",
        epilog="examples:\n  pope bench\n  pope bench -- --help\n  pope bench --where",
        formatter_class=_Formatter,
    )
    p.add_argument("--where", action="store_true",
                   help="print where the benchmark script is (or how to get it) and exit")
    p.add_argument("bench_args", nargs=argparse.REMAINDER,
                   help="arguments for bench_cpu.py")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    script = _find_bench()
    if script is None:
        print("bench/bench_cpu.py was not found next to this installation.\n")
        print(BENCH_HELP)
        return 0
    if args.where:
        print(script)
        return 0
    rest = list(args.bench_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    return subprocess.call([sys.executable, str(script), *rest], cwd=str(script.parent.parent))


# ----------------------------------------------------------------------------- main
MAIN_EXAMPLES = """\
examples:
  pope evaluate --logs logs.parquet --policy ./model --out results.json
  pope evaluate --help
  pope train --logs logs.parquet --policy ./base --output-dir ./aligned
  pope score --logs trees.jsonl --format oasst --model ./base --out scored.parquet
  pope report results.json --out report/
  pope demo
  pope bench

exit codes: 0 ok, 2 bad usage or input, 1 unexpected error.
"""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``pope`` argument parser (the demo's options are loaded only for ``pope demo``)."""
    from pope import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="POPE: pluralistic off-policy evaluation and alignment of LLMs.",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_evaluate(sub)
    _add_train(sub)
    _add_score(sub)
    _add_report(sub)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    _add_demo(sub, load=bool(argv_list) and argv_list[0] == "demo")
    _add_bench(sub)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    from pope.checkpoint import CheckpointError
    from pope.estimate import WeightOverflowError
    from pope.io import LogFormatError
    from pope.scoring import ContextLengthError

    return (UsageError, LogFormatError, ContextLengthError, CheckpointError,
            WeightOverflowError, FileNotFoundError, OSError, ValueError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pope`` command; returns the exit code (0 ok, 2 bad usage/input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        expected = _expected_errors()
    except ImportError as e:  # pragma: no cover - broken installation
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except expected as e:
        if os.environ.get("POPE_DEBUG"):  # show the traceback of an input error
            raise
        msg = str(e) or type(e).__name__
        print(f"{PROG} {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
