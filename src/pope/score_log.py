r"""``pope score``: write a model's log-probabilities of the logged responses into the log.

Scoring is the slow part of an evaluation; done once and stored, it is reused by every
``pope evaluate`` / ``pope train`` run (a ``log_logging`` column replaces ``--logging-model``
or ``--reference-model``, a ``log_target`` column replaces ``--policy``). The log-probability
is :func:`pope.scoring.score_responses`:

.. math:: \log\pi(y \mid x) = \sum_{t \in \text{response}} \log\pi(y_t \mid x, y_{<t}),

with the tokenisation convention of ``docs/data-format.md`` (prompt with special tokens,
response without, EOS only with ``add_eos``). The output is Parquet; its schema metadata
``pope.scores`` records, per column, the model directory and the scoring options, so a later
run can check that both columns were scored the same way.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pope.io import LogColumns, LogFormatError, read_table
from pope.io.formats import is_format
from pope.options import LM_HEADS, MODEL_DTYPES, LMHead
from pope.readers import LOG_FORMATS

__all__ = [
    "METADATA_KEY",
    "add_arguments",
    "add_scoring_args",
    "pair_texts",
    "read_log_frame",
    "read_score_metadata",
    "run",
    "score_log",
    "write_scored",
]

#: Parquet schema-metadata key holding ``{column: scoring settings}``.
METADATA_KEY = b"pope.scores"


def read_score_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{column: settings}`` stored by :func:`write_scored` in a Parquet file (or ``{}``)."""
    p = Path(path)
    if not (p.is_file() and p.suffix.lower() in (".parquet", ".pq")):
        return {}
    import pyarrow.parquet as pq

    meta = pq.read_schema(p).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_log_frame(
    source: Any, columns: LogColumns, *, format: str | None = None, split: str | None = None
) -> Any:
    """A copy of a whole log as a ``pandas.DataFrame`` (a native file format or a public one,
    see :func:`pope.readers.read_logs`), the caller's frame untouched."""
    from pope.readers import read_logs

    if format is None or is_format(format):
        frame = read_table(
            source,
            format=format,
            split=split,
            text_columns=(columns.prompt_id, columns.prompt, columns.response),
        )
    else:
        frame = read_logs(source, format, split=split)
    return frame.copy()


def pair_texts(frame: Any, columns: LogColumns) -> tuple[list[str], list[str]]:
    """The prompt and response texts of every row.

    Raises
    ------
    LogFormatError
        A column is missing, or rows have no text there (their row numbers are listed).
    """
    texts = []
    for field in (columns.prompt, columns.response):
        if field not in frame.columns:
            raise LogFormatError(
                f"no {field!r} column to score; the log's columns are {list(frame.columns)}"
            )
        s = frame[field]
        missing = np.flatnonzero(s.isna().to_numpy() | ~s.map(lambda v: isinstance(v, str)))
        if missing.size:
            shown = ", ".join(str(int(i)) for i in missing[:10])
            raise LogFormatError(
                f"{missing.size} row(s) have no {field!r} text to score: rows "
                f"{shown}{' ...' if missing.size > 10 else ''}"
            )
        texts.append(s.tolist())
    return texts[0], texts[1]


def score_log(
    source: Any,
    model: str | os.PathLike[str],
    *,
    column: str = "log_logging",
    token_logprobs: bool = False,
    columns: LogColumns | dict[str, str | None] | None = None,
    format: str | None = None,
    split: str | None = None,
    batch_tokens: int = 8192,
    device: str | None = None,
    dtype: str = "auto",
    chat_template: bool = False,
    add_eos: bool = False,
    head: LMHead = "logits",
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Score every row of a log with a model; the log with the new column(s) and settings.

    Parameters
    ----------
    source : path or frame
        Any log :func:`pope.readers.read_logs` reads (``format``: a file format, a public
        format or ``"auto"``; default: from the file name).
    model : path
        A local causal LM directory (model and tokenizer; never downloaded).
    column : str
        The column to write (``log_logging`` for a logging policy or reference proxy,
        ``log_target`` for a target policy, or any name to map later with ``--column``).
    token_logprobs : bool
        Also write ``token_<column>``: the per-token log-probs of each response (a list).
    columns : LogColumns or dict, optional
        Where the prompt and response texts are (``{"prompt": "question"}``).
    overwrite : bool
        Replace ``column`` if the log already has it (otherwise ``ValueError``).
    batch_tokens, device, dtype, chat_template, add_eos, head, progress
        See :func:`pope.scoring.score_responses`.

    Returns
    -------
    (pandas.DataFrame, dict)
        A new frame (the input is not modified) and ``{column: settings}`` for the metadata.

    Raises
    ------
    LogFormatError
        A row has no prompt or response text (its row numbers are listed).
    """
    from pope.scoring import load_causal_lm, score_responses

    cols = columns if isinstance(columns, LogColumns) else LogColumns.from_mapping(columns or {})
    frame = read_log_frame(source, cols, format=format, split=split)
    names = [column] + ([f"token_{column}"] if token_logprobs else [])
    present = [n for n in names if n in frame.columns]
    if present and not overwrite:
        raise ValueError(
            f"the log already has column(s) {present}; pass overwrite=True "
            "(--overwrite) to replace them, or choose another column"
        )
    texts = pair_texts(frame, cols)
    lm, tok = load_causal_lm(model, device=device, dtype=dtype)
    out = score_responses(
        lm,
        tok,
        texts[0],
        texts[1],
        batch_tokens=batch_tokens,
        return_token_logprobs=token_logprobs,
        chat_template=chat_template,
        add_eos=add_eos,
        head=head,
        progress=progress,
        desc=f"scoring {column}",
    )
    seq, tokens = out if isinstance(out, tuple) else (out, None)
    frame[column] = np.asarray(seq, dtype=np.float64)
    if tokens is not None:
        frame[f"token_{column}"] = [np.asarray(t, dtype=np.float64).tolist() for t in tokens]
    from pope import __version__

    settings = {
        "model": str(Path(model).resolve()),
        "tokenizer": type(tok).__name__,
        "vocab_size": len(tok),
        "add_eos": add_eos,
        "chat_template": chat_template,
        "head": head,
        "dtype": str(next(lm.parameters()).dtype).replace("torch.", ""),
        "token_column": f"token_{column}" if token_logprobs else None,
        "pope_version": __version__,
    }
    return frame, {column: settings}


def write_scored(
    frame: Any,
    path: str | os.PathLike[str],
    scores: dict[str, Any],
    *,
    previous: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a scored log to Parquet with the scoring settings in its schema metadata.

    ``previous`` (the metadata of the input) is kept for the columns not scored again. An
    existing ``path`` is replaced only with ``overwrite``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if p.suffix.lower() not in (".parquet", ".pq"):
        raise ValueError(f"the scored log is written as Parquet: {p.name!r} should end in .parquet")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; pass --overwrite (overwrite=True) to replace it")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    merged = {**(previous or {}), **scores}
    meta[METADATA_KEY] = json.dumps(merged).encode()
    reader = getattr(frame, "attrs", {}).get("reader")
    if reader:
        meta[b"pope.reader"] = json.dumps(reader).encode()
    tmp = p.with_name(p.name + ".tmp")
    pq.write_table(table.replace_schema_metadata(meta), tmp)
    os.replace(tmp, p)  # the old file (possibly the input) is replaced only when complete
    return p


# ----------------------------------------------------------------------------- command line
SCORE_EXAMPLES = """\
examples:
  # logs written by people: score them once with a reference model (the proxy of pi0)
  pope score --logs trees.jsonl --format oasst --model ./base --out scored.parquet

  # add the target's log-probs to the same file, then evaluate without re-scoring
  pope score --logs scored.parquet --model ./target --into log_target \\
      --out scored.parquet --overwrite
  pope evaluate --logs scored.parquet --aspects-from none

  # per-token log-probs too (for --weighting token_mean)
  pope score --logs logs.parquet --model ./base --token-logprobs --out scored.parquet
"""


def add_scoring_args(g: Any, positive_int: Any) -> None:
    """The scoring options shared by ``pope score`` and ``pope evaluate`` (``positive_int``:
    the CLI's argument type for integers >= 1)."""
    g.add_argument(
        "--batch-tokens",
        type=positive_int,
        default=8192,
        metavar="N",
        help="token budget of a scoring batch (padding included)",
    )
    g.add_argument("--device", help="scoring device (default: cuda if available, else cpu)")
    g.add_argument(
        "--dtype",
        choices=MODEL_DTYPES,
        default="auto",
        help="model dtype (auto: bfloat16 on CUDA, float32 on CPU)",
    )
    g.add_argument(
        "--chat-template",
        action="store_true",
        help="format prompts with the tokenizer's chat template",
    )
    g.add_argument("--add-eos", action="store_true", help="score an EOS token after each response")
    g.add_argument(
        "--head",
        choices=LM_HEADS,
        default="logits",
        help="'hidden' scores from hidden states and the LM head weight without "
        "materialising all logits (plain linear heads only)",
    )


def add_arguments(p: argparse.ArgumentParser, column_arg: Any, positive_int: Any = int) -> None:
    """The options of ``pope score`` (``column_arg`` parses ``FIELD=NAME``, ``positive_int``
    integers >= 1)."""
    g = p.add_argument_group("input")
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
        type=column_arg,
        default=[],
        metavar="FIELD=NAME",
        help="where the prompt/response texts are, e.g. prompt=question",
    )
    g = p.add_argument_group("scoring")
    g.add_argument(
        "--model",
        required=True,
        metavar="MODEL_DIR",
        help="local causal LM directory (model and tokenizer)",
    )
    g.add_argument(
        "--into",
        default="log_logging",
        metavar="COLUMN",
        help="column to write: log_logging (logging policy or reference proxy), "
        "log_target (a target policy) or any name",
    )
    g.add_argument(
        "--token-logprobs",
        action="store_true",
        help="also write token_COLUMN, the per-token log-probs of each response",
    )
    add_scoring_args(g, positive_int)
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        required=True,
        metavar="FILE.parquet",
        help="the log with the new column(s), as Parquet",
    )
    g.add_argument(
        "--overwrite", action="store_true", help="replace an existing output file or column"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``pope score`` (errors are raised as ValueError/LogFormatError: exit code 2)."""
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model: model directory not found: {args.model}")
    if args.batch_tokens < 1:
        raise ValueError(f"--batch-tokens must be >= 1, got {args.batch_tokens}")
    from pope.cli import _check_device

    _check_device(args.device)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
    frame, scores = score_log(
        args.logs,
        args.model,
        column=args.into,
        token_logprobs=args.token_logprobs,
        columns=dict(args.column),
        format=args.format,
        split=args.split,
        batch_tokens=args.batch_tokens,
        device=args.device,
        dtype=args.dtype,
        chat_template=args.chat_template,
        add_eos=args.add_eos,
        head=args.head,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    write_scored(
        frame, out, scores, previous=read_score_metadata(args.logs), overwrite=args.overwrite
    )
    written = [args.into] + ([f"token_{args.into}"] if args.token_logprobs else [])
    print(
        f"scored {len(frame)} responses with {args.model}: column(s) {', '.join(written)} "
        f"written to {out}"
    )
    return 0
