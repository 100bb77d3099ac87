"""The ``pope`` command: evaluate a policy on real logs, train, run the demo or benchmarks.

Exit codes: 0 success; 2 bad usage or bad input (a clear message on stderr, no traceback;
set ``POPE_DEBUG=1`` to see it); 1 an unexpected error (a bug: the traceback is shown).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pope.readers import LOG_FORMATS

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


def _check_device(device: str | None) -> None:
    """A CUDA device asked for on a machine without one is a usage error, not a crash."""
    if device is None or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available on this machine")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _check_out_file(out: str, logs: str, inputs: Sequence[str], *, overwrite: bool) -> None:
    """Refuse an output file that is the log, lies in a log directory or is another input
    (always), or exists (without ``--overwrite``); checked before any work is done."""
    p = Path(out)
    if _same_file(p, Path(logs)) or (
        Path(logs).is_dir() and Path(logs).resolve() in p.resolve().parents
    ):
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
    g.add_argument(
        "--aspects-from",
        default="labels",
        metavar="SOURCE",
        help="'labels' (the aspect / aspect_probs column), 'column[:NAME]' "
        "(k-means on an embedding column), a .npy file of embeddings (one row "
        "per log row), a local embedding model directory, or 'none'",
    )
    g.add_argument(
        "--n-aspects",
        type=_positive_int,
        metavar="C",
        help="number of aspects (k-means clusters; or the label range)",
    )
    g.add_argument(
        "--aspect-names",
        metavar="A,B,...",
        help="known aspect labels; other labels are reported as unknown",
    )
    g.add_argument(
        "--soft-aspects",
        action="store_true",
        help="soft k-means assignment: softmax of negative distances",
    )
    g.add_argument(
        "--temperature",
        type=_positive_float,
        default=1.0,
        help="temperature of the soft assignment",
    )
    g.add_argument("--seed", type=int, default=0, help="seed (k-means; training)")
    g.add_argument(
        "--aspect-model",
        metavar="FILE",
        help="reuse a saved aspect model (aspect_model.json of pope train, or "
        "--save-aspect-model of pope evaluate): its k-means centres instead of "
        "refitting, so numbers on other logs use the same clustering",
    )


def _add_input_args(g: Any) -> None:
    g.add_argument(
        "--logs",
        required=True,
        metavar="PATH",
        help="log file or directory: .parquet (or a directory of them), .jsonl, "
        ".csv/.tsv, or a Hugging Face datasets directory (save_to_disk)",
    )
    g.add_argument(
        "--format",
        choices=LOG_FORMATS,
        help="override the format detected from the file name; oasst, ratings, "
        "pairwise, trl read public feedback formats, auto tells them apart "
        "(docs/data-format.md, Public formats)",
    )
    g.add_argument("--split", help="split of a Hugging Face DatasetDict directory")
    g.add_argument(
        "--column",
        action="append",
        type=_column_arg,
        default=[],
        metavar="FIELD=NAME",
        help="map a schema field to a column of your log (repeatable), e.g. signal=upvotes",
    )
    g.add_argument(
        "--on-error",
        choices=["fail", "skip"],
        default="fail",
        help="bad rows: stop with their list (fail) or drop them and report (skip)",
    )


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
        "score",
        help="write a model's log-probs of the logged responses into the log (Parquet)",
        description=(
            "Score every logged response with a local causal LM and write\n"
            "log pi(y|x) (optionally per token) into a copy of the log (Parquet),\n"
            "so that evaluate and train reuse it instead of scoring again."
        ),
        epilog=score_log.SCORE_EXAMPLES,
        formatter_class=_Formatter,
    )
    score_log.add_arguments(p, _column_arg, _positive_int)
    p.set_defaults(func=score_log.run)


# ----------------------------------------------------------------------------- fit-logging
def _add_fit_logging(sub: Any) -> None:
    from pope import fit_logging_cli

    p = sub.add_parser(
        "fit-logging",
        help="estimate the logging log-probs of human-written logs (behaviour cloning, "
        "cross-fitted)",
        description=fit_logging_cli.DESCRIPTION,
        epilog=fit_logging_cli.FIT_LOGGING_EXAMPLES,
        formatter_class=_Formatter,
    )
    fit_logging_cli.add_arguments(p, sys.modules[__name__])


# ----------------------------------------------------------------------------- report
def _add_report(sub: Any) -> None:
    from pope import report

    p = sub.add_parser(
        "report",
        help="figures and a self-contained HTML page from pope evaluate results",
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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results.json / demo.png of an earlier demo in --out",
    )

    def run(args: argparse.Namespace) -> int:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file; the demo writes a directory")
        old = [n for n in DEMO_OUTPUTS if (out / n).exists()]
        if old and not args.overwrite:
            raise UsageError(
                f"--out {out} holds an earlier demo ({', '.join(old)}); pass "
                "--overwrite to replace it"
            )
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
    p.add_argument(
        "--where",
        action="store_true",
        help="print where the benchmark script is (or how to get it) and exit",
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench_cpu.py")
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
  pope fit-logging --logs trees.jsonl --format oasst --model ./small --out bc.parquet
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
    from pope import cli_evaluate

    cli_evaluate.add_parser(sub)
    _add_train(sub)
    _add_score(sub)
    _add_fit_logging(sub)
    _add_report(sub)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    _add_demo(sub, load=bool(argv_list) and argv_list[0] == "demo")
    _add_bench(sub)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    from pope.checkpoint import CheckpointError
    from pope.estimate import WeightOverflowError
    from pope.io import LogFormatError

    # pope.scoring.ContextLengthError is a ValueError; importing it here would import torch
    # (about 180 MiB and seconds) in every command, also those that score nothing.
    return (
        UsageError,
        LogFormatError,
        CheckpointError,
        WeightOverflowError,
        FileNotFoundError,
        OSError,
        ValueError,
        ImportError,
    )


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
