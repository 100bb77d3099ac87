r"""Behaviour cloning of the logging policy with cross-fitting folds (``pope fit-logging``).

Logs written by people carry no :math:`\log\pi_0(y \mid x)`. Behaviour cloning *estimates*
it: a copy of a causal LM is fine-tuned by maximum likelihood on logged responses,

.. math:: \hat\theta_T = \arg\max_\theta \sum_{i \in T} \sum_{t \in y_i}
          \log\pi_\theta(y_{i,t} \mid x_i, y_{i,<t}),

(response tokens only, with the tokenisation of :func:`pope.scoring.tokenize_pairs`, so
``add_eos`` and the chat template are those ``pope evaluate`` scores with) and
:math:`\hat\pi_0 = \pi_{\hat\theta}`.

A response scored by a model trained on it gets the probability the model memorised, not the
one the logging process gave it, and its importance weight :math:`\pi_\theta / \hat\pi_0`
comes out too small. **Cross-fitting** avoids it: the prompts are split into :math:`K` folds
:math:`P_1, \dots, P_K`; model :math:`k` is fine-tuned on the rows whose prompt is not in
:math:`P_k` and scores the rows of :math:`P_k`,

.. math:: \log\hat\pi_0(y_i \mid x_i) = \log\pi_{\hat\theta_{-k(i)}}(y_i \mid x_i),
          \qquad \hat\theta_{-k} = \hat\theta_{\{j:\, k(j) \ne k\}}.

The unit of the split is the prompt text: all the responses of a prompt (and duplicated
rows) are in one fold, so no row is scored by a model that saw it or its prompt.

What the value then means: :math:`\hat\pi_0` is an estimate. Off-policy estimates with it are
the target's value only as far as :math:`\hat\pi_0` matches whatever wrote the logs; the
intervals cover sampling noise, not the error of the fitted propensities. The held-out
log-likelihood per token of the fitted models against the base model
(:attr:`BehaviourCloningResult.heldout_logprob_per_token`) says whether the fit generalises;
more epochs than that supports overfit the training folds.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import shutil
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pope.scoring import (
    TokenizedPairs,
    _check_context,
    _plan_batches,
    _resolve_dtype,
    load_causal_lm,
    pad_pairs,
    score_responses,
    tokenize_pairs,
)

__all__ = [
    "FOLD_COLUMN",
    "METHOD",
    "BehaviourCloningResult",
    "assign_folds",
    "fit_logging_policy",
]

#: one padded training batch: ``(input_ids, attention_mask, labels)``
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: The ``method`` recorded in the scoring metadata of a behaviour-cloned column.
METHOD = "behaviour_cloning"
#: Default name of the per-row fold column.
FOLD_COLUMN = "logging_fold"


@dataclass(frozen=True)
class BehaviourCloningResult:
    """Cross-fitted logging log-probabilities of a log.

    Attributes
    ----------
    frame : pandas.DataFrame
        A copy of the log with ``column`` (the cross-fitted :math:`\\log\\hat\\pi_0`) and
        ``fold_column`` (the fold of each row, ``0 .. K-1``).
    log_logging : (N,) float64
        The cross-fitted log-probabilities, in row order.
    base_log_logging : (N,) float64
        The base model's log-probabilities (before fine-tuning), for comparison.
    fold : (N,) int64
    n_folds : int
    train_rows : list of (n_k,) int64 arrays
        The rows each fold model was fine-tuned on (never a row of its own fold).
    train_loss : list of lists of float
        Per fold, the mean training loss (negative log-likelihood per response token) of each
        pass over its training rows.
    response_tokens : (N,) int64
        Scored tokens per row.
    settings : dict
        What produced the column (``method``, ``folds``, ``model``, the training options,
        ``add_eos``, ``chat_template``...), stored in the Parquet metadata by ``pope
        fit-logging`` so that ``pope evaluate`` can say what the value means.
    column, fold_column : str
    """

    frame: Any
    log_logging: np.ndarray
    base_log_logging: np.ndarray
    fold: np.ndarray
    n_folds: int
    train_rows: list[np.ndarray]
    train_loss: list[list[float]]
    response_tokens: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    column: str = "log_logging"
    fold_column: str = FOLD_COLUMN

    def heldout_logprob_per_token(self, fold: int | None = None) -> tuple[float, float]:
        r"""``(base, fitted)`` mean log-probability per scored token of held-out rows.

        :math:`\sum_i \log\hat\pi(y_i\mid x_i) / \sum_i |y_i|` over the rows of ``fold`` (all
        rows by default), for the base model and the cross-fitted models; the fitted value
        should be the higher one (the fit generalises to prompts it has not seen).
        """
        rows = np.ones(self.fold.shape[0], bool) if fold is None else self.fold == fold
        n = max(int(self.response_tokens[rows].sum()), 1)
        return (
            float(self.base_log_logging[rows].sum() / n),
            float(self.log_logging[rows].sum() / n),
        )

    def summary(self) -> str:
        """One line per fold and the held-out comparison with the base model."""
        lines = []
        for k in range(self.n_folds):
            held = int((self.fold == k).sum())
            loss = self.train_loss[k]
            base, fit = self.heldout_logprob_per_token(k)
            trend = (
                f"{loss[0]:.4g} (1 pass)"
                if len(loss) == 1
                else f"{loss[0]:.4g} -> {loss[-1]:.4g} over {len(loss)} passes"
            )
            lines.append(
                f"fold {k}: fine-tuned on {self.train_rows[k].size} responses, training loss "
                f"{trend}; scored {held} held-out responses: log-prob per token {fit:.4g} "
                f"(base model {base:.4g})"
            )
        base, fit = self.heldout_logprob_per_token()
        lines.append(
            f"all folds, held out: log-prob per token {fit:.4g} cross-fitted, "
            f"{base:.4g} with the base model"
        )
        return "\n".join(lines)


def assign_folds(keys: Sequence[Hashable], folds: int, *, seed: int = 0) -> np.ndarray:
    """The fold of each row, equal keys (prompts) in one fold.

    The distinct keys are put in a canonical order (by the SHA-1 of ``str(key)``, so the
    assignment does not depend on the order of the rows), permuted with
    ``numpy.random.default_rng(seed)`` and dealt round-robin: fold sizes (in prompts) differ
    by at most one.

    Parameters
    ----------
    keys : sequence of hashable, length N
        The prompt (text or id) of each row.
    folds : int
        ``K >= 2``, at most the number of distinct keys.
    seed : int

    Returns
    -------
    (N,) int64 in ``[0, K)``

    Raises
    ------
    ValueError
        ``folds < 2`` or more folds than distinct keys.
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)):
        raise TypeError(f"folds must be an int, got {type(folds).__name__}")
    uniq = list(dict.fromkeys(keys))
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (cross-fitting needs a held-out fold), got {folds}")
    if folds > len(uniq):
        raise ValueError(
            f"folds={folds} is more than the {len(uniq)} distinct prompts of the "
            "log; every fold needs at least one prompt"
        )
    digest = [hashlib.sha1(str(k).encode("utf-8")).hexdigest() for k in uniq]
    canonical = sorted(range(len(uniq)), key=lambda i: (digest[i], str(uniq[i])))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[canonical[p]]: int(r % folds) for r, p in enumerate(perm)}
    return np.array([fold_of[k] for k in keys], dtype=np.int64)


def _prompt_keys(frame: Any, columns: Any, prompts: list[str]) -> list[str]:
    """The split unit of each row: its prompt text, after checking that a prompt id never
    has two prompt texts (the unit then also keeps every prompt id in one fold)."""
    name = columns.prompt_id
    if name in frame.columns:
        text_of: dict[Any, str] = {}
        for i, (pid, text) in enumerate(zip(frame[name].tolist(), prompts)):
            if pid is None or (isinstance(pid, float) and math.isnan(pid)):
                continue
            if text_of.setdefault(pid, text) != text:
                raise ValueError(
                    f"prompt_id {pid!r} has two different prompt texts (row {i}); "
                    "the folds split prompts, so each id needs one text"
                )
    return prompts


def _load(base_model: Any, device: str | None, dtype: Any) -> tuple[Any, Any, str]:
    """A model the caller does not own (a copy of an in-memory one), its tokenizer, a name."""
    if isinstance(base_model, (str, os.PathLike)):
        model, tok = load_causal_lm(base_model, device=device, dtype=dtype)
        return model, tok, str(Path(base_model).resolve())
    if not (isinstance(base_model, tuple) and len(base_model) == 2):
        raise TypeError(
            "base_model must be a model directory or a (model, tokenizer) pair, "
            f"got {type(base_model).__name__}"
        )
    model, tok = base_model
    model = copy.deepcopy(model)  # the caller's model is not trained
    if device is not None:
        model = model.to(device)
    if dtype is not None:
        model = model.to(_resolve_dtype(dtype))
    return model, tok, type(model).__name__


def _training_batches(
    pairs: TokenizedPairs, rows: np.ndarray, batch_tokens: int, pad_token_id: int | None
) -> list[Batch]:
    """Padded ``(input_ids, attention_mask, labels)`` batches of ``rows`` (similar lengths
    together); ``labels`` are ``-100`` on the prompt and the padding (Hugging Face)."""
    out = []
    for b in _plan_batches(pairs.lengths[rows], batch_tokens):
        idx = rows[b]
        ids, mask = pad_pairs(pairs, idx, pad_token_id)
        labels = ids.masked_fill(mask == 0, -100)
        for j, i in enumerate(idx):
            labels[j, : int(pairs.prompt_lengths[i])] = -100
        if (labels != -100).any():  # a batch of empty responses has nothing to learn
            out.append((ids, mask, labels))
    return out


def _fit_fold(
    model: Any, batches: list[Batch], opt: _Options, *, rng: np.random.Generator, bar: Any
) -> list[float]:
    """Maximum likelihood on the response tokens: AdamW, linear warmup then linear decay
    (``transformers.get_scheduler("linear")``, as ``TrainingArguments`` defaults to), batch
    order shuffled each pass. Returns the mean loss per pass (token-weighted)."""
    from transformers import get_scheduler

    dev = next(model.parameters()).device
    total = max(1, math.ceil(opt.num_train_epochs * len(batches)))
    optim = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=opt.learning_rate,
        weight_decay=opt.weight_decay,
    )
    sched = get_scheduler(
        "linear", optim, num_warmup_steps=opt.warmup_steps, num_training_steps=total
    )
    model.train()
    losses: list[float] = []
    step = 0
    while step < total:
        nll = tokens = 0.0
        for b in rng.permutation(len(batches))[: total - step]:
            ids, mask, labels = (t.to(dev) for t in batches[b])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if opt.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opt.max_grad_norm)
            optim.step()
            sched.step()
            n = float((labels[:, 1:] != -100).sum())
            nll, tokens, step = nll + float(loss.detach()) * n, tokens + n, step + 1
            bar.update(1)
        losses.append(nll / max(tokens, 1.0))
    model.eval()
    return losses


@dataclass(frozen=True)
class _Options:
    """The fine-tuning and tokenisation options shared by every fold."""

    num_train_epochs: float
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    max_grad_norm: float | None
    batch_tokens: int
    add_eos: bool
    chat_template: bool
    seed: int
    lora: dict[str, Any] | None = None

    def check(self) -> None:
        if self.lora is not None and not isinstance(self.lora, dict):
            raise TypeError(f"lora must be a dict of peft.LoraConfig arguments, got {self.lora!r}")
        s = self.seed
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"seed must be an int >= 0, got {s!r}")
        for name in ("num_train_epochs", "learning_rate"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {self.batch_tokens}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    @property
    def score_kw(self) -> dict[str, Any]:
        return {
            "batch_tokens": self.batch_tokens,
            "chat_template": self.chat_template,
            "add_eos": self.add_eos,
            "progress": False,
        }

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _prepare_save_dir(path: str | os.PathLike[str] | None, overwrite: bool) -> Path | None:
    """``save_models``: refused when it holds an earlier fit, unless ``overwrite`` (then
    only that fit's ``fold-K`` directories and ``folds.json`` are deleted)."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"save_models {p} is a file, not a directory")
    old = sorted([*p.glob("fold-*"), *p.glob("folds.json")]) if p.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(
            f"save_models {p} holds an earlier fit ({old[0].name}, ...); pass "
            "overwrite=True (--overwrite) to replace it"
        )
    for o in old:
        shutil.rmtree(o) if o.is_dir() else o.unlink()
    p.mkdir(parents=True, exist_ok=True)
    return p


def fit_logging_policy(
    logs: Any,
    base_model: Any,
    *,
    folds: int = 5,
    num_train_epochs: float = 3.0,
    learning_rate: float = 5e-5,
    batch_tokens: int = 8192,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    max_grad_norm: float | None = 1.0,
    add_eos: bool = False,
    chat_template: bool = False,
    seed: int = 0,
    columns: Any = None,
    format: str | None = None,
    split: str | None = None,
    column: str = "log_logging",
    fold_column: str = FOLD_COLUMN,
    token_logprobs: bool = False,
    device: str | None = None,
    dtype: Any = "float32",
    save_models: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    lora: dict[str, Any] | None = None,
) -> BehaviourCloningResult:
    r"""Estimate :math:`\log\pi_0(y\mid x)` of every logged response by cross-fitted
    behaviour cloning (see the module docstring for the estimator).

    Parameters
    ----------
    logs : path or frame
        Any log :func:`pope.readers.read_logs` reads (``format``: a file format, a public
        format such as ``"oasst"``, or ``"auto"``; default from the file name); only the
        prompt and response texts (and the prompt id, if any) are used.
    base_model : path or (model, tokenizer)
        A local causal LM directory, or a model in memory and its tokenizer (copied, never
        modified); each fold fine-tunes a fresh copy.
    folds : int
        :math:`K \ge 2` folds of prompts, at most the number of prompts (:func:`assign_folds`).
    num_train_epochs, learning_rate, weight_decay, warmup_steps, max_grad_norm
        AdamW fine-tuning of each fold model, named and defaulting as in
        ``transformers.TrainingArguments`` (linear decay after the warmup; fractional
        epochs allowed).
    batch_tokens : int
        Padded tokens per training and scoring batch.
    add_eos, chat_template : bool
        The tokenisation (:func:`pope.scoring.tokenize_pairs`); must be those ``pope
        evaluate`` / ``pope train`` use later.
    seed : int
        Fold assignment, batch order and ``torch`` randomness (the global RNG is restored
        afterwards): same seed and inputs, same output on one device.
    columns : LogColumns or dict, optional
        Where the prompt, response and prompt id are (``{"prompt": "question"}``).
    column, fold_column : str
        The columns written into the returned frame.
    token_logprobs : bool
        Also write ``token_<column>``, the per-token log-probs (for ``token_mean``
        weighting); otherwise a stale one of the input is dropped (with ``overwrite``).
    device, dtype : str
        Where and in which precision to train.
    save_models : path, optional
        Write each fold model (``fold-K/``, model and tokenizer) and ``folds.json`` (the
        prompt ids of each fold) there.
    overwrite : bool
        Replace the columns if the log has them, and an earlier fit in ``save_models``.
    progress : bool
        A progress bar over the training steps of all folds.
    lora : dict, optional
        ``peft.LoraConfig`` arguments (as ``TrainConfig.lora``): each fold trains LoRA adapters
        on the frozen base instead of a full copy, scores with them and removes them before the
        next fold (optimiser state for the adapters only); ``save_models`` holds the adapters.

    Returns
    -------
    BehaviourCloningResult

    Raises
    ------
    ValueError
        ``folds < 2`` or above the number of prompts, bad options, a column already present
        (without ``overwrite``), a prompt id with two texts; its subclasses
        :class:`~pope.io.LogFormatError` (no prompt/response column or text) and
        :class:`~pope.scoring.ContextLengthError`.
    """
    from pope.io import LogColumns
    from pope.score_log import pair_texts, read_log_frame

    opt = _Options(float(num_train_epochs), float(learning_rate), float(weight_decay),
                   int(warmup_steps), max_grad_norm, int(batch_tokens), bool(add_eos),
                   bool(chat_template), seed, lora)  # fmt: skip
    opt.check()
    cols = columns if isinstance(columns, LogColumns) else LogColumns.from_mapping(columns or {})
    token_column = f"token_{column}"
    frame = _input_frame(
        read_log_frame(logs, cols, format=format, split=split),
        (column, fold_column, token_column),
        overwrite,
    )
    prompts, responses = pair_texts(frame, cols)
    fold = assign_folds(_prompt_keys(frame, cols, prompts), folds, seed=seed)
    return _fit_frame(
        frame,
        cols,
        prompts,
        responses,
        fold,
        base_model,
        opt,
        folds=int(folds),
        device=device,
        dtype=dtype,
        save_models=save_models,
        overwrite=overwrite,
        progress=progress,
        column=column,
        fold_column=fold_column,
        token_logprobs=token_logprobs,
    )


def _fit_frame(
    frame: Any,
    cols: Any,
    prompts: list[str],
    responses: list[str],
    fold: np.ndarray,
    base_model: Any,
    opt: _Options,
    *,
    folds: int,
    device: str | None,
    dtype: Any,
    save_models: str | os.PathLike[str] | None,
    overwrite: bool,
    progress: bool,
    column: str,
    fold_column: str,
    token_logprobs: bool,
) -> BehaviourCloningResult:
    """:func:`fit_logging_policy` once the log is read and the folds are drawn."""
    chat_template, add_eos = opt.chat_template, opt.add_eos
    token_column = f"token_{column}"
    model, tok, name = _load(base_model, device, dtype)
    pairs = tokenize_pairs(tok, prompts, responses, chat_template=chat_template, add_eos=add_eos)
    _check_context(pairs, model, tok)
    save_dir = _prepare_save_dir(save_models, overwrite)
    base = score_responses(model, tok, prompts, responses, **opt.score_kw)
    out, tokens, train_rows, losses = _cross_fit(
        model, tok, pairs, (prompts, responses), fold, opt, save_dir, progress, token_logprobs
    )
    settings = _settings(
        opt,
        int(folds),
        fold_column,
        name,
        model,
        tok,
        save_dir,
        token_column if token_logprobs else None,
    )
    if save_dir is not None:
        _write_folds_json(save_dir, frame, cols, fold, settings)
    frame[column] = out
    if token_logprobs:
        frame[token_column] = [t.tolist() for t in tokens]
    frame[fold_column] = fold
    return BehaviourCloningResult(
        frame=frame,
        log_logging=out,
        base_log_logging=np.asarray(base, dtype=np.float64),
        fold=fold,
        n_folds=int(folds),
        train_rows=train_rows,
        train_loss=losses,
        response_tokens=pairs.response_lengths,
        settings=settings,
        column=column,
        fold_column=fold_column,
    )


def _input_frame(frame: Any, written: tuple[str, ...], overwrite: bool) -> Any:
    """``frame`` without the columns this fit writes; a ``ValueError`` if it has them and
    ``overwrite`` is false."""
    present = [c for c in written if c in frame.columns]
    if present and not overwrite:
        raise ValueError(
            f"the log already has column(s) {present}; pass overwrite=True "
            "(--overwrite) to replace them"
        )
    return frame.drop(columns=present)


def _settings(
    opt: _Options,
    folds: int,
    fold_column: str,
    name: str,
    model: Any,
    tok: Any,
    save_dir: Path | None,
    token_column: str | None,
) -> dict[str, Any]:
    """What produced the column, for the ``pope.scores`` metadata (the keys of
    :func:`pope.score_log.score_log` plus ``method``, ``folds`` and the training options)."""
    from pope import __version__

    return {
        "method": METHOD,
        "folds": folds,
        "fold_column": fold_column,
        "model": name,
        **opt.settings(),
        "tokenizer": type(tok).__name__,
        "vocab_size": len(tok),
        "head": "logits",
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "saved_models": None if save_dir is None else str(save_dir.resolve()),
        "token_column": token_column,
        "pope_version": __version__,
    }


def _cross_fit(
    model: Any,
    tok: Any,
    pairs: TokenizedPairs,
    texts: tuple[list[str], list[str]],
    fold: np.ndarray,
    opt: _Options,
    save_dir: Path | None,
    progress: bool,
    token_logprobs: bool,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[list[float]]]:
    """Fine-tune a fresh copy of ``model`` per fold on the other folds' rows and score the
    fold's rows with it: ``(log-probs, per-token log-probs (empty unless token_logprobs),
    training rows per fold, losses per fold)``."""
    from tqdm.auto import tqdm

    from pope.train.trainer import apply_lora

    prompts, responses = texts
    n_folds = int(fold.max()) + 1
    train_rows = [np.flatnonzero(fold != k) for k in range(n_folds)]
    batches = [
        _training_batches(pairs, rows, opt.batch_tokens, tok.pad_token_id) for rows in train_rows
    ]
    empty = [k for k, b in enumerate(batches) if not b]
    if empty:
        raise ValueError(f"fold {empty[0]}: the responses outside it have no tokens to learn")
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = np.full(fold.shape[0], np.nan)
    tokens: list[np.ndarray] = [np.zeros(0)] * fold.shape[0]
    losses = []
    dev = next(model.parameters()).device
    steps = sum(max(1, math.ceil(opt.num_train_epochs * len(b))) for b in batches)
    bar = tqdm(total=steps, unit="step", desc="behaviour cloning", disable=not progress)
    fitted = model
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            for k in range(n_folds):
                torch.manual_seed(opt.seed * 1009 + k)
                model.load_state_dict(initial)
                fitted = model if opt.lora is None else apply_lora(model, opt.lora)
                losses.append(
                    _fit_fold(
                        fitted, batches[k], opt, rng=np.random.default_rng([opt.seed, k]), bar=bar
                    )
                )
                held = np.flatnonzero(fold == k)
                res = score_responses(
                    fitted,
                    tok,
                    [prompts[i] for i in held],
                    [responses[i] for i in held],
                    **opt.score_kw,
                    return_token_logprobs=token_logprobs,
                )
                if isinstance(res, tuple):  # return_token_logprobs=True
                    out[held] = res[0]
                    for j, i in enumerate(held):
                        tokens[i] = res[1][j]
                else:
                    out[held] = res
                if save_dir is not None:
                    _save_fold(fitted, tok, save_dir / f"fold-{k}")
                if fitted is not model:  # the adapters out, the base (frozen) as it was
                    model = fitted = fitted.unload()
    finally:
        bar.close()
        if fitted is not model:  # a fold stopped with its adapters in
            model = fitted.unload()
        model.load_state_dict(initial)
    return out, tokens, train_rows, losses


def _save_fold(model: Any, tok: Any, path: Path) -> None:
    from pope.checkpoint import write_directory

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if hasattr(tok, "save_pretrained"):
            tok.save_pretrained(tmp)

    write_directory(path, fill)


def _write_folds_json(
    save_dir: Path, frame: Any, cols: Any, fold: np.ndarray, settings: dict[str, Any]
) -> None:
    """``folds.json``: the settings and the rows (and prompt ids, if any) of each fold."""
    import json

    ids = frame[cols.prompt_id].tolist() if cols.prompt_id in frame.columns else None
    per_fold = []
    for k in range(int(settings["folds"])):
        rows = np.flatnonzero(fold == k)
        entry: dict[str, Any] = {"fold": k, "model": f"fold-{k}", "rows": rows.tolist()}
        if ids is not None:
            entry["prompt_ids"] = list(dict.fromkeys(str(ids[i]) for i in rows))
        per_fold.append(entry)
    text = json.dumps({"settings": settings, "folds": per_fold}, indent=2) + "\n"
    (save_dir / "folds.json").write_text(text)
