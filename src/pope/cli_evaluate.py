"""``pope evaluate``: the policy value (relevance, diversity, total) on real logs, with one
``--policy`` or several (paired differences); see :mod:`pope.cli` for the shared helpers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pope.cli import (
    UsageError,
    _add_aspect_args,
    _add_input_args,
    _check_device,
    _check_out_file,
    _Formatter,
    _nonneg_float,
    _positive_float,
    _positive_int,
    _quiet_libraries,
    _unhashable_ids_are_bad_input,
    _write_text_atomic,
)
from pope.engines import ENGINES
from pope.options import (
    COVERAGES,
    DIVERSITIES,
    DIVERSITY_ESTIMATORS,
    RELEVANCES,
    REWARD_NORMALIZATIONS,
    WEIGHTINGS,
)
from pope.score_log import add_scoring_args

__all__ = ["EVALUATE_EXAMPLES", "add_parser"]


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
    _add_run_args(p.add_argument_group("input"))
    _add_policy_args(p.add_argument_group("policies"))
    _add_estimation_args(p.add_argument_group("estimation"))
    _add_aspect_args(p.add_argument_group("aspects"))
    _add_output_args(p.add_argument_group("output"))
    p.set_defaults(func=_cmd_evaluate)


def _add_run_args(g: Any) -> None:
    """The log and where it is evaluated (in memory, chunks, Ray / Spark)."""
    _add_input_args(g)
    g.add_argument(
        "--chunk-rows",
        type=_positive_int,
        metavar="N",
        help="stream the log in chunks of N rows (logs larger than memory)",
    )
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="where to evaluate: this process, a Ray cluster or Spark (Parquet "
        "logs; same result, docs/scale.md)",
    )
    g.add_argument(
        "--engine-address",
        metavar="ADDRESS",
        help="Ray cluster address (auto, ray://host:10001) or Spark master URL "
        "(local[4], spark://host:7077, yarn); default: a local one",
    )
    g.add_argument(
        "--num-buckets",
        type=_positive_int,
        default=64,
        metavar="N",
        help="ray/spark: prompts are hashed into N buckets, each mapped on a worker",
    )


def _add_policy_args(g: Any) -> None:
    """The target, logging and reference models and how they score the responses."""
    g.add_argument(
        "--policy",
        metavar="MODEL_DIR",
        action="append",
        help="target policy: a local Hugging Face causal LM directory; without it "
        "the log needs a log_target column. Give it several times to evaluate "
        "several policies on one log (the logging side is scored once) with "
        "the paired differences against the first (in memory)",
    )
    g.add_argument(
        "--logging-model",
        metavar="MODEL_DIR",
        help="logging policy to score the responses with, instead of the logged log_logging column",
    )
    g.add_argument(
        "--reference-model",
        metavar="MODEL_DIR",
        help="logs without log-probabilities (written by people): score them with "
        "this model as a declared proxy of the logging policy; the output says "
        "what the value then means",
    )
    add_scoring_args(g, _positive_int)


def _add_estimation_args(g: Any) -> None:
    """The estimators, their options and the intervals."""
    g.add_argument(
        "--lambda",
        dest="lam",
        type=_nonneg_float,
        default=1.0,
        metavar="L",
        help="weight of diversity in the total value",
    )
    g.add_argument(
        "--reward-normalization",
        choices=REWARD_NORMALIZATIONS,
        default="max",
        help="how signals become rewards in [0, 1] (see docs/method.md)",
    )
    g.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        default="sequence",
        help="importance weight: exact sequence ratio or length-normalised "
        "per-token mean (needs per-token logging log-probs)",
    )
    g.add_argument(
        "--clip", type=_positive_float, metavar="M", help="truncate importance weights at M"
    )
    g.add_argument(
        "--relevance",
        choices=RELEVANCES,
        default="snips",
        help="self-normalised or plain IPS relevance",
    )
    g.add_argument(
        "--coverage",
        choices=COVERAGES,
        default="self_normalized",
        help="normaliser of the per-prompt coverage",
    )
    g.add_argument(
        "--diversity",
        choices=DIVERSITIES,
        default="coverage",
        help="Shannon coverage entropy, Gini-Simpson coverage (identified exactly "
        "from 2 responses per prompt), or the per-response lower bound",
    )
    g.add_argument(
        "--diversity-estimator",
        choices=DIVERSITY_ESTIMATORS,
        default="polynomial",
        help="Shannon coverage entropy: minimax polynomial with a bias-aware "
        "interval (default), or jackknife / plug-in (biased; their "
        "intervals ignore the bias)",
    )
    g.add_argument(
        "--diversity-degree",
        type=int,
        default=None,
        metavar="L",
        help="fix the polynomial degree (default: chosen among 2..4, accounted "
        "for in the interval)",
    )
    g.add_argument("--alpha", type=float, default=0.05, help="intervals at level 1 - alpha")
    g.add_argument(
        "--ci",
        choices=["normal", "t", "bootstrap"],
        default="normal",
        help="interval method (bootstrap: in memory only)",
    )
    g.add_argument(
        "--estimators",
        default="snips,clipped_ips",
        metavar="LIST",
        help="comma-separated baselines on the total reward: ips, snips, "
        "clipped_ips, sub_gaussian_ips, or 'none'",
    )
    g.add_argument(
        "--baseline-clip",
        type=_positive_float,
        metavar="M",
        help="M of clipped_ips (default: --clip, else 10)",
    )
    g.add_argument(
        "--ess-warning",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="warn when the effective sample size is below FRACTION * n",
    )


def _add_output_args(g: Any) -> None:
    """Where the results and the aspect model go."""
    g.add_argument(
        "--out",
        metavar="FILE",
        help="write the results as JSON (an existing file only with --overwrite; "
        "never one of the inputs)",
    )
    g.add_argument(
        "--save-aspect-model",
        metavar="FILE",
        help="write the aspect model (k-means centres or label names, JSON) to "
        "reuse with --aspect-model on other logs",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out / --save-aspect-model file",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("-q", "--quiet", action="store_true", help="print only the table and warnings")


def _spec_from_args(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from pope.io import LogColumns
    from pope.pipeline import BASELINES, EvalSpec

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
    for name, path in (
        *(("--policy", p) for p in policies),
        ("--logging-model", args.logging_model),
        ("--reference-model", args.reference_model),
    ):
        if path is not None and not Path(path).is_dir():
            raise UsageError(f"{name}: model directory not found: {path}")
    if len(policies) > 1 and args.chunk_rows:
        raise UsageError("several --policy are compared in memory: drop --chunk-rows")
    if len(set(policies)) < len(policies):
        raise UsageError("--policy: the same model directory is given twice")
    if args.logging_model and args.reference_model:
        raise UsageError(
            "give --logging-model (the logging policy) or --reference-model (a "
            "declared proxy of it), not both"
        )
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


def _apply_aspect_model(
    args: argparse.Namespace, kw: dict[str, Any], names: tuple[str, ...] | None
) -> tuple[Any, int | None]:
    """Fold ``--aspect-model`` into the spec keywords ``kw``; returns (aspect names, C)."""
    from pope.aspects import AspectModel

    try:
        am = AspectModel.load(args.aspect_model)
    except (OSError, ValueError) as e:
        raise UsageError(f"--aspect-model: {e}") from e
    if args.n_aspects and args.n_aspects != am.n_aspects:
        raise UsageError(
            f"--n-aspects {args.n_aspects} differs from the --aspect-model's {am.n_aspects} aspects"
        )
    if kw["aspects"] in ("embedding", "npy", "model"):
        if am.kind != "kmeans":
            raise UsageError(
                f"--aspect-model holds {am.kind!r} aspects, not k-means centres; "
                "use it with --aspects-from labels"
            )
        kw["centers"] = am.centers
        return names, am.n_aspects
    if kw["aspects"] == "labels":
        if am.kind == "kmeans":
            raise UsageError(
                "--aspect-model holds k-means centres: give --aspects-from with "
                "the same embedding source (column, model directory)"
            )
        if am.kind == "labels":
            if names is not None and am.names is not None and list(names) != am.names:
                raise UsageError(
                    f"--aspect-names {list(names)} differ from the --aspect-model's {am.names}"
                )
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
        how: dict[str, Any] = {
            "source": {"embedding": "column", "npy": "npy", "model": "model"}[spec.aspects]
        }
        if spec.aspects == "embedding":
            how["column"] = spec.columns.embedding
        if spec.aspects == "model":
            how["model"] = str(spec.embedding_model)
        return AspectModel(
            "kmeans",
            c,
            centers=spec.centers,
            embedding=how,
            soft=spec.soft_aspects,
            temperature=spec.temperature,
            seed=spec.seed,
        )
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
    responses = (
        None if prep.data.response is None else [prep.data.response[j] for j in fb.row_index]
    )
    names = result.spec.aspect_names
    return aspect_table(
        fb.aspect,
        fb.aspect_probs,
        fb.prompt_ptr,
        result.pope.p_hat,
        responses,
        names=names,
        embeddings=emb,
        centers=result.spec.centers,
    )


def _propensities(args: argparse.Namespace, spec: Any, results: list[Any]) -> list[dict[str, Any]]:
    """Where the log's log pi0 came from and what each target's value then means
    (:func:`pope.propensity.describe_propensity` with what the command line and the log's
    Parquet metadata say; the metadata read once)."""
    from pope.propensity import describe_propensity
    from pope.score_log import read_score_metadata

    scored = read_score_metadata(args.logs).get(spec.columns.log_logging or "", {})
    return [
        describe_propensity(
            result,
            logging_model=args.logging_model,
            reference_model=args.reference_model,
            scored_by=scored.get("model"),
            behaviour_cloning=scored if scored.get("method") == "behaviour_cloning" else None,
            rank_signal=spec.reward_normalization == "rank",
        )
        for result in results
    ]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pope.estimate import WeightOverflowError
    from pope.readers import reader_summary, resolve_logs

    spec, opts = _spec_from_args(args)
    if args.out:
        inputs = [*(args.policy or []), args.logging_model]
        if args.aspects_from.endswith(".npy") or Path(args.aspects_from).is_dir():
            inputs.append(args.aspects_from)
        _check_out_file(args.out, args.logs, [i for i in inputs if i], overwrite=args.overwrite)
    if args.save_aspect_model:
        _check_out_file(
            args.save_aspect_model,
            args.logs,
            [i for i in (args.out, args.aspect_model) if i],
            overwrite=args.overwrite,
        )
    if args.policy or spec.logging_model or spec.aspects == "model":
        _quiet_libraries()  # only where a model is loaded: importing transformers costs ~2 s
    logs, fmt = resolve_logs(args.logs, args.format, args.split)
    if args.policy and len(args.policy) > 1:
        return _evaluate_paired(args, spec, opts, logs, fmt)
    with _unhashable_ids_are_bad_input():
        try:
            result = _run_evaluation(args, spec, logs, fmt)
        except WeightOverflowError as e:
            raise UsageError(
                f"{e} (options: --clip M, --baseline-clip M, --relevance snips, --estimators snips)"
            ) from e
    (prop,) = _propensities(args, spec, [result])
    rep = result.report
    if not args.quiet:
        print(f"log: {args.logs}")
        if reader_summary(logs):
            print(reader_summary(logs))
        print(
            f"rows read: {rep.n_rows}; bad rows skipped: {rep.n_bad}; evaluated: "
            f"{result.n_responses} responses over {result.n_prompts} prompts"
        )
        if rep.n_bad:
            print(rep.summary())
        lam = spec.lam
        print(
            f"lambda={lam:g}, reward normalization={spec.reward_normalization}, "
            f"weighting={spec.weighting}, clip={spec.clip}, aspects={spec.aspects}"
            + (f" (C={spec.n_aspects})" if spec.n_aspects else "")
        )
        print()
    print(result.table(method=opts["ci"]))
    aspects = _aspect_rows(result)
    if aspects and not args.quiet and len(aspects) > 1:
        from pope.aspects import format_aspect_table

        print(
            "\nper aspect (coverage: mean over prompts of the share of each aspect; logging: "
            "the logged responses, target: the policy's plug-in estimate)"
        )
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


def _evaluate_paired(
    args: argparse.Namespace, spec: Any, opts: dict[str, Any], logs: Any, fmt: Any
) -> int:
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
        print(
            f"rows read: {r0.report.n_rows}; bad rows skipped: {r0.report.n_bad}; evaluated: "
            f"{r0.n_responses} responses over {r0.n_prompts} prompts, "
            f"{len(res.policies)} policies"
        )
        print()
    print(res.table(method=opts["ci"]))
    # one source for every policy; whether the weights are all 1 is each policy's own
    props = dict(zip(res.policies, _propensities(args, spec, res.results), strict=True))
    first = next((d for d in props.values() if not d["weights_identically_one"]), None)
    prop = first if first is not None else next(iter(props.values()))
    if not args.quiet:
        print(f"\npropensities: {prop['source']}. {prop['meaning']}")
    warnings = list(res.warnings(args.ess_warning))
    warnings += [f"{p}: {w}" for p, d in props.items() for w in d["warnings"]]
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.out:
        out = res.to_dict(method=opts["ci"], ess_fraction=args.ess_warning)
        out["logs"] = str(args.logs)
        out["propensity"] = {
            **{k: v for k, v in prop.items() if k not in ("warnings", "weights_identically_one")},
            "weights_identically_one": {p: d["weights_identically_one"] for p, d in props.items()},
        }
        _write_text_atomic(Path(args.out), json.dumps(out, indent=2, allow_nan=False) + "\n")
        if not args.quiet:
            print(f"\nresults written to {args.out}")
    return 0


def _run_evaluation(args: argparse.Namespace, spec: Any, logs: Any, fmt: Any) -> Any:
    from pope.engines import Engine, check_engine_options, evaluate_with_engine

    engine: Engine = getattr(args, "engine", "local")  # --engine has these choices
    address = getattr(args, "engine_address", None)
    try:
        check_engine_options(engine, logs, address=address, chunk_rows=args.chunk_rows, format=fmt)
    except ValueError as e:
        raise UsageError(f"--engine {engine}: {e}") from e
    if engine != "local" and args.ci == "bootstrap":
        raise UsageError("--ci bootstrap needs the whole log in memory (--engine local)")
    return evaluate_with_engine(
        logs,
        spec,
        engine=engine,
        address=address,
        num_buckets=getattr(args, "num_buckets", 64),
        chunk_rows=args.chunk_rows,
        format=fmt,
        split=args.split,
    )


def add_parser(sub: Any) -> None:
    """Add the ``evaluate`` command to the subparsers ``sub``."""
    _add_evaluate(sub)
