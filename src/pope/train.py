r"""Off-policy POPE fine-tuning of Hugging Face causal LMs.

Three entry points, sharing one data path (:class:`PopeDataset` -> :class:`PopeCollator` ->
:func:`pope_forward` -> :class:`pope.objective.PopeObjective`):

* :class:`OffPolicyTrainer` — a self-contained loop: token-budget batches that keep all the
  responses of a prompt together (the coverage :math:`\hat p(c\mid x_i)` is per prompt),
  gradient accumulation, AdamW, linear warmup + cosine decay, gradient clipping, checkpoints
  that resume bit-exactly, a tqdm bar and JSON-lines metrics;
* :class:`PopeTrainerMixin` / :func:`make_compute_loss` — a ``compute_loss`` for
  ``transformers.Trainer`` (and TRL trainers built on it);
* :func:`pope_forward` — one model forward + objective on a collated batch, for custom loops.

Tokenisation (:func:`pope.scoring.tokenize_pairs`): ``prompt_ids + response_ids`` (the prompt
with the tokenizer's special tokens, or the chat template; the response without, plus EOS by
default). Only response tokens enter the loss: the batch's ``labels`` follow the Hugging Face
convention (equal to ``input_ids`` on the response, ``-100`` elsewhere, shifted inside
:func:`pope_forward` with :func:`pope.objective.shift_labels`).

Logging propensities :math:`\log\pi_0(y\mid x)`: taken from the data when given; otherwise
computed once, before training, with a frozen reference model
(:meth:`PopeDataset.compute_logprobs`, through :func:`pope.scoring.score_responses`), which
must then be the policy that generated the responses. Neither given is an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pope._validation import as_float_array, as_index_array, check_same_length
from pope.checkpoint import (
    MANIFEST,
    CheckpointError,
    clear_run_files,
    find_latest,
    load_tensors,
    read_json,
    run_files,
    verify_checkpoint,
    write_checkpoint,
    write_directory,
)
from pope.data import RewardNormalization, normalize_signal
from pope.distributed import dist_info
from pope.objective import ObjectiveStats, PopeObjective, PopeOutput, shift_labels
from pope.scoring import ContextLengthError, context_length, score_responses, tokenize_pairs
from pope.train_monitor import REPORT_TO, WeightMonitor, make_reporter

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "OffPolicyTrainer",
    "OutputExistsError",
    "PopeCollator",
    "PopeDataset",
    "PopeTrainerMixin",
    "TrainConfig",
    "TrainResult",
    "TrainingExample",
    "make_compute_loss",
    "pope_forward",
    "token_budget_batches",
]

LMHead = Literal["logits", "hidden"]
_log = logging.getLogger(__name__)


# ============================================================================ configuration
@dataclass
class TrainConfig:
    r"""Settings of :class:`OffPolicyTrainer`.

    Optimisation
        ``lr`` (peak learning rate), ``weight_decay``, ``adam_betas``, ``adam_eps`` (AdamW);
        ``warmup_steps`` (linear warmup from ``lr/warmup_steps``), ``schedule``
        (``"cosine"``: decay to ``min_lr_ratio * lr`` at the last step; ``"constant"``);
        ``max_grad_norm`` (``None``: no clipping).
    Batching
        ``token_budget``: padded tokens per micro-batch (``sequences x longest``), all the
        responses of a prompt in one micro-batch; ``grad_accum_steps`` micro-batches per
        optimizer step; ``max_steps`` or ``epochs`` (passes over the data; fractional
        allowed; ``max_steps`` wins when both are set).
    Objective (see :class:`pope.objective.PopeObjective`)
        ``lam``, ``clip``, ``ppo_eps``, ``weighting``, ``baseline``, ``coverage``,
        ``diversity``, ``diversity_estimator``, ``diversity_degree``, ``truncation``, ``beta``
        (the logged ``diversity`` is the estimate :func:`pope.evaluate` gives with the same
        options and ``diversity_degree``, default 4).
    Data
        ``max_length`` (default: the model's context), ``add_eos``, ``chat_template``,
        ``lm_head`` (``"logits"`` or ``"hidden"``: hidden states + LM head weight through
        the chunked log-prob, no ``N x V`` logits).
    Model
        ``disable_dropout`` (dropout makes :math:`\pi_\theta` stochastic, so :math:`w \ne 1`
        even at :math:`\theta = \theta_0`); ``lora`` (a dict of ``peft.LoraConfig`` arguments;
        needs ``peft``).
    Bookkeeping
        ``seed``, ``output_dir``, ``save_every`` (steps; ``None``: no intermediate
        checkpoints), ``save_final``, ``log_file`` (default ``output_dir/metrics.jsonl``),
        ``log_every``, ``progress``; ``overwrite``: delete an earlier run's files in
        ``output_dir`` (metrics log, ``checkpoint-N``, ``final``) instead of refusing to
        train there (see :meth:`OffPolicyTrainer.train`).
    Monitoring (:mod:`pope.train_monitor`)
        ``ess_warning``: warn (:class:`~pope.train_monitor.WeightCollapseWarning`) when a step's
        ESS is below this fraction of its sequences, or its mean weight leaves
        ``[0.1, 10]``; ``min_ess_fraction``: stop training after ``ess_patience`` steps in a
        row below this fraction (``None``: never); ``eval_every``: steps between held-out
        evaluations (needs ``held_out=`` on the trainer; the last step is always evaluated);
        ``final_eval``: after the last step, evaluate the final policy on the whole training
        set (``TrainResult.final_metrics``); ``report_to``: ``"none"``, ``"tensorboard"`` or
        ``"wandb"``.

    ``add_eos`` defaults to ``False``, as everywhere in pope (scoring, ``pope score``,
    ``pope evaluate``): logged log-probs and the policy's must score the same tokens.
    """

    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    token_budget: int = 8192
    grad_accum_steps: int = 1
    max_steps: int | None = None
    epochs: float = 1.0
    lam: float = 1.0
    clip: float | None = None
    ppo_eps: float | None = None
    weighting: Literal["sequence", "token_mean"] = "sequence"
    baseline: Literal["mean", "loo", "none"] = "loo"
    coverage: Literal["snips", "ips"] = "snips"
    diversity: Literal["coverage", "gini_simpson", "response_entropy"] = "coverage"
    diversity_estimator: Literal["polynomial", "plugin"] = "polynomial"
    diversity_degree: int | None = None
    truncation: Literal["estimator", "gradient"] = "estimator"
    beta: float = 0.0
    max_length: int | None = None
    add_eos: bool = False
    chat_template: bool = False
    lm_head: LMHead = "logits"
    disable_dropout: bool = True
    lora: dict[str, Any] | None = None
    seed: int = 0
    output_dir: str = "pope-output"
    save_every: int | None = None
    save_final: bool = True
    overwrite: bool = False
    log_file: str | None = None
    log_every: int = 1
    progress: bool = True
    ess_warning: float = 0.1
    min_ess_fraction: float | None = None
    ess_patience: int = 1
    eval_every: int | None = None
    final_eval: bool = True
    report_to: str = "none"

    def __post_init__(self) -> None:
        def positive(name: str, integer: bool = False, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok_type or not v > 0:
                kind = "int" if integer else "number"
                raise ValueError(f"{name} must be a positive {kind}, got {v!r}")

        positive("lr")
        positive("token_budget", integer=True)
        positive("grad_accum_steps", integer=True)
        positive("max_steps", integer=True, allow_none=True)
        positive("epochs")
        positive("save_every", integer=True, allow_none=True)
        positive("log_every", integer=True)
        positive("max_length", integer=True, allow_none=True)
        positive("max_grad_norm", allow_none=True)
        positive("eval_every", integer=True, allow_none=True)
        if self.report_to not in REPORT_TO:
            raise ValueError(f"report_to must be one of {REPORT_TO}, got {self.report_to!r}")
        self.monitor()  # validates the monitoring options
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.lm_head not in ("logits", "hidden"):
            raise ValueError(f"lm_head must be 'logits' or 'hidden', got {self.lm_head!r}")
        self.objective()  # validates the objective options

    def objective(self, **overrides: Any) -> PopeObjective:
        """The :class:`~pope.objective.PopeObjective` these settings describe."""
        kw = dict(
            lam=self.lam,
            clip=self.clip,
            ppo_eps=self.ppo_eps,
            weighting=self.weighting,
            baseline=self.baseline,
            coverage=self.coverage,
            diversity=self.diversity,
            diversity_estimator=self.diversity_estimator,
            diversity_degree=self.diversity_degree,
            truncation=self.truncation,
            beta=self.beta,
        )
        kw.update(overrides)
        return PopeObjective(**kw)

    def monitor(self) -> WeightMonitor:
        """The :class:`~pope.train_monitor.WeightMonitor` these settings describe."""
        return WeightMonitor(warn_fraction=self.ess_warning,
                             min_ess_fraction=self.min_ess_fraction, patience=self.ess_patience)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings."""
        return dataclasses.asdict(self)


# ============================================================================ data
@dataclass
class TrainingExample:
    """One logged response.

    Attributes
    ----------
    prompt_id : hashable
        Responses with the same id share a prompt (and must have the same prompt text).
    prompt, response : str
    reward : float
        In ``[0, 1]``, or a raw signal ``>= 0`` normalised by the dataset's
        ``reward_normalization`` (see :func:`pope.data.normalize_signal`).
    aspect : int or sequence of float
        Hard aspect label in ``[0, C)`` or a soft row on the simplex.
    log_logging : float, optional
        :math:`\\log\\pi_0(y\\mid x)` of the response under the logging policy (sequence level);
        ``None``: computed with a reference model.
    """

    prompt_id: Hashable
    prompt: str
    response: str
    reward: float
    aspect: int | Sequence[float]
    log_logging: float | None = None


class PopeDataset(torch.utils.data.Dataset):
    r"""Logged responses grouped by prompt; one item per *prompt* (all its responses).

    Build with :meth:`from_examples`, :meth:`from_records` or :meth:`from_arrays`; then
    :meth:`tokenize` (and :meth:`compute_logprobs` when logging log-probs are missing or a
    KL penalty needs reference token log-probs). Items (``dataset[i]``) are dicts of lists
    for :class:`PopeCollator`, so the dataset plugs into a ``torch`` DataLoader or a
    ``transformers.Trainer`` (the batch size then counts prompts).

    Attributes
    ----------
    prompt_ids : list
        The user's prompt ids, in order of first appearance; prompt ``i`` has the global
        index ``i`` (used as ``prompt_index`` in batches, also across ranks).
    prompt_ptr : (n+1,) int64
        Responses of prompt ``i`` are rows ``prompt_ptr[i]:prompt_ptr[i+1]``.
    prompts : list of str (n,);  responses : list of str (N,)
    rewards : (N,) float64 in [0, 1]
    aspects : (N,) int64 or (N, C) float64
    num_aspects : int
    log_logging : (N,) float64, NaN where unknown
    row_index : (N,) int64
        The input position of each stored response.
    """

    def __init__(
        self,
        prompt_ids: list[Hashable],
        prompt_ptr: np.ndarray,
        prompts: list[str],
        responses: list[str],
        rewards: np.ndarray,
        aspects: np.ndarray,
        num_aspects: int,
        log_logging: np.ndarray,
        row_index: np.ndarray,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.prompt_ptr = prompt_ptr
        self.prompts = prompts
        self.responses = responses
        self.rewards = rewards
        self.aspects = aspects
        self.num_aspects = num_aspects
        self.log_logging = log_logging
        self.row_index = row_index
        self.input_ids: list[np.ndarray] | None = None
        self.prompt_lengths: np.ndarray | None = None
        self.ref_token_logprobs: list[np.ndarray] | None = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        *,
        prompt_id: Sequence[Hashable],
        prompt: Sequence[str],
        response: Sequence[str],
        reward: Any,
        aspect: Any = None,
        aspect_probs: Any = None,
        num_aspects: int | None = None,
        log_logging: Any = None,
        reward_normalization: RewardNormalization = "max",
    ) -> PopeDataset:
        """Build from one entry per response (rows grouped by ``prompt_id``).

        Parameters
        ----------
        prompt_id, prompt, response : sequences of length N
        reward : (N,) float
            Rewards in [0, 1], or raw signals >= 0 with ``reward_normalization``.
        aspect : (N,) int, or aspect_probs : (N, C) float
            Exactly one of them.
        num_aspects : int, optional
            ``C`` (default ``max(aspect) + 1`` or the width of ``aspect_probs``).
        log_logging : (N,) float, optional
            Sequence-level logging log-probs; NaN (or None) where unknown.
        reward_normalization : {"max", "none", "log1p", "rank", "global_max"}
            Default ``"max"`` (each signal over its prompt's maximum), as in
            :func:`pope.evaluate` and the CLI; ``"none"`` for rewards already in [0, 1].

        Raises
        ------
        ValueError
            Mismatched lengths, NaN or out-of-range rewards, bad aspects, log-probs > 0,
            empty data, a prompt id with two different prompt texts.
        """
        pid = list(prompt_id)
        n = len(pid)
        if n == 0:
            raise ValueError("no examples: the dataset is empty")
        prompt, response = list(prompt), list(response)
        for name, seq in (("prompt", prompt), ("response", response)):
            if len(seq) != n:
                raise ValueError(f"{name} has length {len(seq)}, expected {n}")
            bad = [i for i, s in enumerate(seq) if not isinstance(s, str)]
            if bad:
                raise TypeError(f"{name}[{bad[0]}] must be a str, got {type(seq[bad[0]]).__name__}")
        sig = as_float_array(reward, "reward")
        check_same_length(n, reward=sig)
        if (aspect is None) == (aspect_probs is None):
            raise ValueError("give exactly one of aspect (hard labels) or aspect_probs (soft rows)")
        if aspect is not None:
            asp = as_index_array(aspect, "aspect")
            check_same_length(n, aspect=asp)
            if asp.min() < 0:
                raise ValueError(f"aspect labels must be >= 0, got {asp.min()}")
            c = int(asp.max()) + 1 if num_aspects is None else int(num_aspects)
            if asp.max() >= c:
                raise ValueError(f"aspect label {asp.max()} out of range for num_aspects={c}")
        else:
            asp = as_float_array(aspect_probs, "aspect_probs", ndim=2)
            check_same_length(n, aspect_probs=asp)
            c = asp.shape[1] if num_aspects is None else int(num_aspects)
            if asp.shape[1] != c:
                raise ValueError(f"aspect_probs has {asp.shape[1]} columns, num_aspects={c}")
            if asp.min() < 0 or np.abs(asp.sum(1) - 1).max() > 1e-6:
                raise ValueError("aspect_probs rows must be >= 0 and sum to 1")
        if log_logging is None:
            ll = np.full(n, np.nan)
        else:
            ll = as_float_array(
                [np.nan if v is None else v for v in log_logging], "log_logging", allow_nan=True
            )
            check_same_length(n, log_logging=ll)
            if (ll[~np.isnan(ll)] > 0).any():
                raise ValueError("log_logging must be log-probabilities (<= 0)")

        # group by prompt id, prompts in order of first appearance
        first: dict[Hashable, int] = {}
        for p in pid:
            first.setdefault(p, len(first))
        group = np.fromiter((first[p] for p in pid), dtype=np.int64, count=n)
        order = np.argsort(group, kind="stable").astype(np.int64)
        counts = np.bincount(group, minlength=len(first))
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        ids = list(first)
        texts: list[str | None] = [None] * len(ids)
        for i, p in enumerate(pid):
            g = first[p]
            if texts[g] is None:
                texts[g] = prompt[i]
            elif texts[g] != prompt[i]:
                raise ValueError(f"prompt_id {p!r} has two different prompt texts (row {i})")
        rewards = normalize_signal(sig[order], ptr, reward_normalization)
        if np.isnan(rewards).any() or rewards.min() < 0 or rewards.max() > 1:
            raise ValueError("rewards must lie in [0, 1] after normalisation")
        return cls(
            prompt_ids=ids,
            prompt_ptr=ptr,
            prompts=[str(t) for t in texts],
            responses=[response[i] for i in order],
            rewards=rewards,
            aspects=asp[order],
            num_aspects=c,
            log_logging=ll[order],
            row_index=order,
        )

    @classmethod
    def from_examples(
        cls,
        examples: Iterable[TrainingExample],
        *,
        num_aspects: int | None = None,
        reward_normalization: RewardNormalization = "max",
    ) -> PopeDataset:
        """Build from :class:`TrainingExample` objects (see :meth:`from_arrays`)."""
        ex = list(examples)
        bad = [i for i, e in enumerate(ex) if not isinstance(e, TrainingExample)]
        if bad:
            raise TypeError(f"examples[{bad[0]}] is not a TrainingExample")
        soft = [not isinstance(e.aspect, (int, np.integer)) for e in ex]
        if any(soft) and not all(soft):
            raise ValueError("mix of hard (int) and soft (row) aspects; use one kind")
        aspects = [e.aspect for e in ex]
        return cls.from_arrays(
            prompt_id=[e.prompt_id for e in ex],
            prompt=[e.prompt for e in ex],
            response=[e.response for e in ex],
            reward=[e.reward for e in ex],
            aspect=None if (ex and soft[0]) else aspects,
            aspect_probs=aspects if (ex and soft[0]) else None,
            num_aspects=num_aspects,
            log_logging=[e.log_logging for e in ex],
            reward_normalization=reward_normalization,
        )

    @classmethod
    def from_records(
        cls,
        records: Iterable[dict[str, Any]],
        *,
        num_aspects: int | None = None,
        reward_normalization: RewardNormalization = "max",
    ) -> PopeDataset:
        """Build from dicts with the fields of :class:`TrainingExample`."""
        names = {f.name for f in dataclasses.fields(TrainingExample)}
        out = []
        for i, r in enumerate(records):
            extra = set(r) - names
            if extra:
                raise ValueError(f"record {i} has unknown fields {sorted(extra)}")
            try:
                out.append(TrainingExample(**r))
            except TypeError as e:
                raise ValueError(f"record {i}: {e}") from e
        return cls.from_examples(
            out, num_aspects=num_aspects, reward_normalization=reward_normalization
        )

    # ------------------------------------------------------------------ properties
    @property
    def n_prompts(self) -> int:
        """Number of prompts."""
        return len(self.prompt_ids)

    @property
    def n_responses(self) -> int:
        """Number of responses."""
        return len(self.responses)

    @property
    def prompt_index(self) -> np.ndarray:
        """(N,) global prompt index of each response."""
        return np.repeat(np.arange(self.n_prompts), np.diff(self.prompt_ptr))

    @property
    def lengths(self) -> np.ndarray:
        """(N,) tokens per prompt + response pair (after :meth:`tokenize`)."""
        self._require_tokens()
        return np.array([a.shape[0] for a in self.input_ids], dtype=np.int64)

    def _require_tokens(self) -> None:
        if self.input_ids is None:
            raise RuntimeError("call PopeDataset.tokenize(tokenizer, ...) first")

    # ------------------------------------------------------------------ preparation
    def tokenize(
        self,
        tokenizer: Any,
        *,
        max_length: int | None = None,
        add_eos: bool = False,
        chat_template: bool = False,
    ) -> PopeDataset:
        """Tokenise every prompt + response pair (see :func:`pope.scoring.tokenize_pairs`).

        Parameters
        ----------
        tokenizer : transformers tokenizer
        max_length : int, optional
            Context limit; a longer pair is an error (truncating a logged response would
            change its probability and break the importance weight).
        add_eos, chat_template : bool
            ``add_eos=False`` by default, as in :func:`pope.scoring.score_responses`: the
            logged log-probs and the policy's must cover the same tokens.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            An empty response (no token besides EOS).
        pope.scoring.ContextLengthError
            A pair longer than ``max_length``.
        """
        prompts = [self.prompts[i] for i in self.prompt_index]
        pairs = tokenize_pairs(
            tokenizer, prompts, self.responses, chat_template=chat_template, add_eos=add_eos
        )
        body = pairs.response_lengths - (1 if add_eos else 0)
        if (body <= 0).any():
            i = int(np.flatnonzero(body <= 0)[0])
            raise ValueError(
                f"response {int(self.row_index[i])} (prompt_id "
                f"{self.prompt_ids[self.prompt_index[i]]!r}) is empty: it has no token"
            )
        lengths = pairs.lengths
        if max_length is not None and (lengths > max_length).any():
            rows = np.flatnonzero(lengths > max_length)
            raise ContextLengthError(self.row_index[rows], lengths[rows], max_length)
        self.input_ids = pairs.input_ids
        self.prompt_lengths = pairs.prompt_lengths
        self._tok_settings = dict(add_eos=add_eos, chat_template=chat_template)
        return self

    def compute_logprobs(
        self,
        model: Any,
        tokenizer: Any,
        *,
        fill_logging: bool = True,
        token_logprobs: bool = False,
        batch_tokens: int = 8192,
        progress: bool = False,
    ) -> PopeDataset:
        r"""Score the responses with a frozen reference model.

        Parameters
        ----------
        model : causal LM
            The reference policy (for ``fill_logging`` it must be the logging policy
            :math:`\pi_0`).
        tokenizer : its tokenizer (the same as for :meth:`tokenize`)
        fill_logging : bool
            Fill the unknown (NaN) ``log_logging`` entries with :math:`\log\pi_{ref}(y\mid x)`.
        token_logprobs : bool
            Also keep the per-token :math:`\log\pi_{ref}(y_t\mid\cdot)` (for the KL penalty).
        batch_tokens : int
            Token budget of a scoring batch.
        """
        self._require_tokens()
        prompts = [self.prompts[i] for i in self.prompt_index]
        res = score_responses(
            model,
            tokenizer,
            prompts,
            self.responses,
            batch_tokens=batch_tokens,
            return_token_logprobs=token_logprobs,
            progress=progress,
            **self._tok_settings,
        )
        seq, tok = res if token_logprobs else (res, None)
        if fill_logging:
            miss = np.isnan(self.log_logging)
            self.log_logging = np.where(miss, seq, self.log_logging)
        if token_logprobs:
            want = self.lengths - self.prompt_lengths
            got = np.array([t.shape[0] for t in tok])
            if not np.array_equal(want, got):
                raise RuntimeError("reference token log-probs do not match the tokenisation")
            self.ref_token_logprobs = [np.asarray(t, dtype=np.float64) for t in tok]
        return self

    @property
    def missing_log_logging(self) -> int:
        """Number of responses without a logging log-prob."""
        return int(np.isnan(self.log_logging).sum())

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return self.n_prompts

    def to_hf_dataset(self) -> Any:
        """The items as a ``datasets.Dataset`` (one row per prompt, the keys of
        ``dataset[i]`` as list columns), for trainers that require one (TRL's): pass it as
        ``train_dataset`` with ``data_collator=PopeCollator(...)`` (and, for TRL's
        ``SFTTrainer``, ``SFTConfig(dataset_kwargs={"skip_prepare_dataset": True})``)."""
        import datasets

        def plain(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, list):
                return [plain(x) for x in v]
            return v

        return datasets.Dataset.from_list(
            [{k: plain(v) for k, v in self[i].items()} for i in range(self.n_prompts)]
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        """All the responses of prompt ``i`` as lists (the keys of :class:`PopeCollator`)."""
        self._require_tokens()
        if not 0 <= i < self.n_prompts:
            raise IndexError(i)
        lo, hi = int(self.prompt_ptr[i]), int(self.prompt_ptr[i + 1])
        item: dict[str, Any] = {
            "input_ids": [self.input_ids[k] for k in range(lo, hi)],
            "prompt_lengths": self.prompt_lengths[lo:hi],
            "rewards": self.rewards[lo:hi],
            "prompt_index": i,
            "log_logging": self.log_logging[lo:hi],
            "aspects": self.aspects[lo:hi],
        }
        if self.ref_token_logprobs is not None:
            item["ref_logprobs"] = self.ref_token_logprobs[lo:hi]
        return item


# ============================================================================ batching
def token_budget_batches(
    group_lengths: Sequence[np.ndarray], budget: int, *, names: Sequence[Hashable] | None = None
) -> list[list[int]]:
    """Pack whole groups (prompts) into batches of at most ``budget`` padded tokens.

    The padded size of a batch is ``(number of sequences) x (longest sequence)``. Groups are
    sorted by their longest sequence (descending) and packed greedily, so batches hold
    sequences of similar lengths (little padding).

    Parameters
    ----------
    group_lengths : sequence of 1-d int arrays
        The sequence lengths of each group.
    budget : int
    names : sequence, optional
        The user's id of each group (the prompt ids), named in errors instead of positions.

    Returns
    -------
    list of lists of group indices

    Raises
    ------
    ValueError
        A single group exceeds the budget (its responses cannot be split: the coverage is
        per prompt).
    """
    sizes = [(len(g), int(np.max(g))) for g in group_lengths]
    for i, (k, m) in enumerate(sizes):
        if k * m > budget:
            who = f"prompt {i}" if names is None else f"prompt_id {names[i]!r}"
            raise ValueError(
                f"{who} has {k} responses of up to {m} tokens ({k * m} padded tokens), more "
                f"than token_budget={budget} (--batch-tokens); raise the budget (all the "
                "responses of a prompt must share a batch)"
            )
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i][1], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    n_cur = m_cur = 0
    for i in order:
        k, m = sizes[i]
        if cur and (n_cur + k) * max(m_cur, m) > budget:
            batches.append(cur)
            cur, n_cur, m_cur = [], 0, 0
        cur.append(i)
        n_cur += k
        m_cur = max(m_cur, m)
    if cur:
        batches.append(cur)
    return batches


class PopeCollator:
    """Collate prompt groups (items of :class:`PopeDataset`) into one padded batch.

    Batch keys (what :func:`pope_forward` and :func:`make_compute_loss` expect):

    ``input_ids`` (B, L) int64, right-padded with ``pad_token_id``; ``attention_mask`` (B, L);
    ``labels`` (B, L) int64, Hugging Face convention: ``input_ids`` on the response tokens,
    ``-100`` on the prompt and the padding; ``rewards`` (B,) float32 in [0, 1];
    ``prompt_index`` (B,) int64, a *global* prompt id; ``log_logging`` (B,) float64
    :math:`\\log\\pi_0(y\\mid x)`; ``aspects`` (B,) int64 or (B, C) float32; optionally
    ``ref_logprobs`` (B, L) float32, the reference log-prob of the token at each response
    position (0 elsewhere).

    Parameters
    ----------
    pad_token_id : int
    """

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, groups: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [np.asarray(a) for g in groups for a in g["input_ids"]]
        plen = np.concatenate([np.asarray(g["prompt_lengths"]) for g in groups])
        b, lmax = len(ids), max(a.shape[0] for a in ids)
        input_ids = torch.full((b, lmax), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((b, lmax), dtype=torch.long)
        labels = torch.full((b, lmax), -100, dtype=torch.long)
        for j, a in enumerate(ids):
            t = torch.as_tensor(a, dtype=torch.long)
            input_ids[j, : t.shape[0]] = t
            attn[j, : t.shape[0]] = 1
            labels[j, plen[j] : t.shape[0]] = t[plen[j] :]
        ll = np.concatenate([np.asarray(g["log_logging"], dtype=np.float64) for g in groups])
        if np.isnan(ll).any():
            raise ValueError(
                "log_logging is missing for some responses: give it in the data or compute it "
                "with a reference model (PopeDataset.compute_logprobs)"
            )
        asp = np.concatenate([np.asarray(g["aspects"]) for g in groups])
        out = {
            "input_ids": input_ids,
            "attention_mask": attn,
            "labels": labels,
            "rewards": torch.as_tensor(
                np.concatenate([np.asarray(g["rewards"]) for g in groups]), dtype=torch.float32
            ),
            "prompt_index": torch.as_tensor(
                np.concatenate([np.full(len(g["input_ids"]), g["prompt_index"]) for g in groups]),
                dtype=torch.long,
            ),
            "log_logging": torch.as_tensor(ll, dtype=torch.float64),
            "aspects": torch.as_tensor(asp, dtype=torch.float32 if asp.ndim == 2 else torch.long),
        }
        if all("ref_logprobs" in g for g in groups):
            ref = torch.zeros((b, lmax), dtype=torch.float32)
            toks = [t for g in groups for t in g["ref_logprobs"]]
            for j, t in enumerate(toks):
                ref[j, plen[j] : plen[j] + len(t)] = torch.as_tensor(t, dtype=torch.float32)
            out["ref_logprobs"] = ref
        return out


# ============================================================================ forward
POPE_BATCH_KEYS = ("rewards", "prompt_index", "log_logging", "aspects", "ref_logprobs")


def _decoder(model: Any) -> Any:
    get = getattr(model, "get_decoder", None)
    dec = get() if callable(get) else None
    return dec if dec is not None else model.base_model


def pope_forward(
    model: Any,
    batch: dict[str, torch.Tensor],
    objective: PopeObjective,
    *,
    normalizer: float | None = None,
    lm_head: LMHead = "logits",
) -> PopeOutput:
    r"""Model forward on a collated batch and the POPE objective on its response tokens.

    Only the response positions reach the log-prob op: the logits (or hidden states) at the
    positions ``t`` whose shifted label (the token ``t + 1``) is a response token are
    gathered into an ``(N_resp, V)`` block with one ``seq_index`` per row.

    Parameters
    ----------
    model : causal LM (possibly wrapped in DDP/FSDP or peft)
    batch : dict
        The keys listed in :class:`PopeCollator`.
    objective : PopeObjective
    normalizer : float, optional
        Passed to the objective (the number of sequences of the whole accumulated step).
    lm_head : {"logits", "hidden"}
        ``"hidden"``: last hidden states and the output embedding weight through the chunked
        :func:`pope.ops.linear_sequence_logprob` (plain linear head without bias only).

    Returns
    -------
    PopeOutput
    """
    missing = [k for k in ("input_ids", "labels", *POPE_BATCH_KEYS[:-1]) if k not in batch]
    if missing:
        raise KeyError(f"batch lacks the keys {missing} (see PopeCollator)")
    ids = batch["input_ids"]
    attn = batch.get("attention_mask")
    labels = shift_labels(batch["labels"], objective.ignore_index)
    rows, cols = torch.nonzero(labels != objective.ignore_index, as_tuple=True)
    targets = labels[rows, cols]
    ref = batch.get("ref_logprobs")
    ref_tok = None if ref is None else ref[rows, cols + 1]
    common = dict(
        rewards=batch["rewards"],
        prompt_index=batch["prompt_index"],
        log_logging=batch["log_logging"],
        aspects=batch["aspects"],
        seq_index=rows,
        ref_logprobs=ref_tok if objective.beta > 0 else None,
        normalizer=normalizer,
    )
    if lm_head == "hidden":
        inner = getattr(model, "module", model)  # DDP/FSDP wrapper
        head = inner.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise ValueError("lm_head='hidden' needs an LM head without bias")
        for name in ("final_logit_softcapping", "logit_scale"):
            if getattr(inner.config, name, None) not in (None, 1.0):
                raise ValueError(f"lm_head='hidden' does not support {name}; use 'logits'")
        hidden = _decoder(inner)(input_ids=ids, attention_mask=attn, use_cache=False)[0]
        w = head.weight
        return objective(
            None,
            targets,
            hidden_states=hidden[rows, cols].to(w.dtype),
            lm_head_weight=w,
            **common,
        )
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    return objective(logits[rows, cols], targets, **common)


def make_compute_loss(
    objective: PopeObjective, *, lm_head: LMHead = "logits"
) -> Callable[..., Any]:
    """A ``transformers.Trainer``-compatible ``compute_loss``.

    Returns ``compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None)``
    computing :func:`pope_forward` on ``inputs`` (the keys of :class:`PopeCollator`). The
    loss is a per-batch mean over sequences (``num_items_in_batch``, a token count, is not
    used); the Trainer divides it by the gradient-accumulation steps. With
    ``return_outputs=True`` the second element is the :class:`~pope.objective.PopeOutput`.
    """

    def compute_loss(
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        out = pope_forward(model, inputs, objective, lm_head=lm_head)
        return (out.loss, out) if return_outputs else out.loss

    return compute_loss


class PopeTrainerMixin:
    """Mix into ``transformers.Trainer`` (or a TRL trainer) to train with the POPE loss.

    ``class PopeTrainer(PopeTrainerMixin, transformers.Trainer): pass`` then
    ``PopeTrainer(model=..., args=..., train_dataset=PopeDataset(...).tokenize(tok),
    data_collator=PopeCollator(tok.pad_token_id), pope_objective=PopeObjective(...))``.

    * ``compute_loss`` is :func:`make_compute_loss` (batch keys: see :class:`PopeCollator`);
    * the POPE batch keys are kept by ``remove_unused_columns``;
    * ``loss_is_scaled_for_ga = False``: the loss is a per-batch mean, the Trainer divides
      it by the gradient-accumulation steps;
    * the last step's estimates are in ``self.pope_last_metrics`` and go to ``self.log``
      with the Trainer's logging (prefix ``pope/``).

    Keyword arguments
    -----------------
    pope_objective : PopeObjective, optional
        Default ``PopeObjective()``.
    pope_lm_head : {"logits", "hidden"}
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.pope_objective = kwargs.pop("pope_objective", None) or PopeObjective()
        self.pope_lm_head = kwargs.pop("pope_lm_head", "logits")
        self.pope_last_metrics: dict[str, float] = {}
        super().__init__(*args, **kwargs)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        out = pope_forward(model, inputs, self.pope_objective, lm_head=self.pope_lm_head)
        self.pope_last_metrics = out.stats.metrics()
        return (out.loss, out) if return_outputs else out.loss

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        cols = self._signature_columns  # type: ignore[has-type]
        extra = ["prompt_lengths", *POPE_BATCH_KEYS]
        self._signature_columns = list(cols) + [k for k in extra if k not in cols]

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.pope_last_metrics and "loss" in logs:
            logs = {**logs, **{f"pope/{k}": v for k, v in self.pope_last_metrics.items()}}
        super().log(logs, *args, **kwargs)  # type: ignore[misc]


def __getattr__(name: str) -> Any:
    # ``pope.train.PopeTrainer``: transformers.Trainer with the mixin (imported lazily)
    if name == "PopeTrainer":
        from transformers import Trainer

        cls = type("PopeTrainer", (PopeTrainerMixin, Trainer), {"__module__": __name__})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ============================================================================ trainer
def _disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for attr in ("attention_dropout", "dropout_p"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)


def _apply_lora(model: Any, lora: dict[str, Any]) -> Any:
    try:
        import peft
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("TrainConfig.lora needs the 'peft' package (pip install peft)") from e
    return peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", **lora))


def _rng_state() -> dict[str, Any]:
    """Python, NumPy (global), torch and CUDA RNG states as JSON-serialisable lists of ints."""
    version, keys, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    st: dict[str, Any] = {
        "python": {"version": version, "state": list(keys), "gauss_next": gauss},
        "numpy": {"bit_generator": name, "keys": mt.tolist(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        st["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return st


def _set_rng_state(st: Any, source: Path) -> None:
    """Restore :func:`_rng_state` output (read from ``source``; named in errors)."""
    try:
        py, nps = st["python"], st["numpy"]
        python = (int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"])
        numpy_state = (str(nps["bit_generator"]), np.asarray(nps["keys"], dtype=np.uint32),
                       int(nps["pos"]), int(nps["has_gauss"]), float(nps["cached_gaussian"]))
        tstate = torch.tensor(st["torch"], dtype=torch.uint8)
        cuda = [torch.tensor(s, dtype=torch.uint8) for s in st.get("cuda", [])]
        random.setstate(python)
        np.random.set_state(numpy_state)  # noqa: NPY002
        torch.set_rng_state(tstate)
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"{source}: not a valid RNG state ({type(e).__name__}: {e})") from e
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class TrainResult:
    """What :meth:`OffPolicyTrainer.train` returns.

    Attributes
    ----------
    step : int
        The last optimizer step run.
    history : list of dict
        One metric row per step of this call (``metrics.jsonl`` holds those of every
        ``log_every``-th step); each has ``ess_fraction`` and, at held-out evaluations,
        ``eval/...`` keys.
    epoch_metrics : list of dict
        Per pass over the data (``epoch``, ``steps``, and the objective's metrics merged
        over every micro-batch of the pass run in this call): the training estimates over
        the whole epoch, not over the last micro-batch. The policy changes during a pass, so
        these average over its steps (as a training loss does).
    final_metrics : dict
        The objective's estimates of the *final* policy over the whole training set (one
        forward pass, no gradient; empty with ``final_eval=False``).
    evaluations : list of dict
        Held-out results (``EvalResult.to_dict()`` plus ``step``), in step order.
    stop_reason : str or None
        Why training stopped before ``total_steps`` (the ESS guard), else ``None``.
    """

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_metrics: list[dict[str, float]] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None

    @property
    def stopped_early(self) -> bool:
        """Whether the ESS guard stopped training."""
        return self.stop_reason is not None


#: Files and directories a run writes into ``output_dir`` besides the metrics log,
#: ``checkpoint-N`` and ``final``: held-out results, TensorBoard / wandb files, the summary.
RUN_EXTRAS = ("eval", "runs", "wandb", "summary.json", "aspect_model.json")


def run_outputs(output_dir: str | os.PathLike[str], log_file: str | os.PathLike[str]
                ) -> list[Path]:
    """Everything an earlier training run left in ``output_dir``
    (:func:`pope.checkpoint.run_files` and :data:`RUN_EXTRAS`)."""
    d = Path(output_dir)
    return run_files(d, log_file) + [d / n for n in RUN_EXTRAS if (d / n).exists()]


class OffPolicyTrainer:
    r"""Off-policy POPE fine-tuning of a causal LM from logged responses.

    Parameters
    ----------
    model : transformers causal LM (``AutoModelForCausalLM``), or one wrapped in DDP
        Trained in place (full fine-tuning, or LoRA with ``config.lora``).
    tokenizer : its tokenizer
    dataset : PopeDataset
        Tokenised here if it is not yet.
    config : TrainConfig
    reference_model : causal LM, or "initial", optional
        Frozen model that scores the responses whose ``log_logging`` is unknown, and gives
        the per-token reference log-probs of the KL penalty (``beta > 0``). ``"initial"``:
        the policy itself before training. Required when the data lacks log-probs or
        ``beta > 0``.
    held_out : pope.heldout.HeldOutEvaluator, optional
        Held-out logs evaluated (as ``pope evaluate`` does) every ``config.eval_every`` steps
        and at the last step; results in ``output_dir/eval/step-N.json``, in the metric rows
        (``eval/...``) and in :attr:`TrainResult.evaluations`.

    Notes
    -----
    One optimizer step uses ``grad_accum_steps`` micro-batches of the data stream (the
    token-budget batches, reshuffled every epoch with ``seed + epoch``); every micro-batch
    loss is normalised by the number of sequences of the whole step, so the accumulated
    gradient is that of the step's concatenated batch. Under ``torch.distributed`` (wrap the
    model in DDP first) rank ``r`` takes micro-batches ``r, r + W, ...`` of each step's
    ``W * grad_accum_steps`` and the objective reduces its statistics over the ranks.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        dataset: PopeDataset,
        config: TrainConfig | None = None,
        *,
        reference_model: Any = None,
        held_out: Any = None,
    ) -> None:
        self.config = config = config or TrainConfig()
        self.held_out = held_out
        if not isinstance(dataset, PopeDataset):
            raise TypeError(f"dataset must be a PopeDataset, got {type(dataset).__name__}")
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.dist = dist_info()
        self.is_main = self.dist.rank == 0
        inner = getattr(model, "module", model)
        if config.lora is not None:
            if inner is not model:
                raise ValueError("apply LoRA before wrapping the model in DDP")
            model = inner = _apply_lora(model, config.lora)
        if config.disable_dropout:
            _disable_dropout(inner)
        if inner is not model and config.lm_head == "hidden":
            raise ValueError("lm_head='hidden' bypasses the DDP forward; use 'logits' with DDP")
        self.model = model
        self.inner_model = inner
        self.device = next(inner.parameters()).device

        need_ref = dataset.missing_log_logging > 0 or config.beta > 0
        if need_ref and reference_model is None:
            what = (
                f"{dataset.missing_log_logging} responses have no log_logging"
                if dataset.missing_log_logging
                else "beta > 0 needs per-token reference log-probs"
            )
            raise ValueError(
                f"{what} and no reference_model was given: pass log_logging in the data or "
                "reference_model= (the logging policy, or 'initial')"
            )
        if dataset.input_ids is None:
            limit = config.max_length or context_length(inner, tokenizer)
            dataset.tokenize(
                tokenizer,
                max_length=limit,
                add_eos=config.add_eos,
                chat_template=config.chat_template,
            )
        if need_ref:
            ref = (
                inner
                if isinstance(reference_model, str) and reference_model == "initial"
                else reference_model
            )
            if isinstance(ref, str):
                raise ValueError(f"reference_model must be a model or 'initial', got {ref!r}")
            dataset.compute_logprobs(
                ref,
                tokenizer,
                fill_logging=True,
                token_logprobs=config.beta > 0,
                batch_tokens=config.token_budget,
                progress=config.progress and self.is_main,
            )
            inner.train()

        # the number of aspects comes from the dataset, not from each batch's largest label:
        # the diversity (its log C and its coefficients) must be the same in every step
        self.objective = config.objective(num_aspects=dataset.num_aspects)
        pad = tokenizer.pad_token_id
        pad = tokenizer.eos_token_id if pad is None else pad
        self.collator = PopeCollator(0 if pad is None else pad)
        lengths = dataset.lengths
        groups = [
            lengths[dataset.prompt_ptr[i] : dataset.prompt_ptr[i + 1]]
            for i in range(dataset.n_prompts)
        ]
        self.batches = token_budget_batches(groups, config.token_budget,
                                            names=dataset.prompt_ids)
        self.batch_sizes = [int(sum(len(groups[g]) for g in b)) for b in self.batches]
        per_step = config.grad_accum_steps * self.dist.world_size
        if config.max_steps is not None:
            self.total_steps = config.max_steps
        else:
            self.total_steps = max(1, math.ceil(config.epochs * len(self.batches) / per_step))

        params = [p for p in inner.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params,
            lr=config.lr,
            betas=config.adam_betas,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.step = 0
        self._saved_step: int | None = None
        self.resumed_from: Path | None = None
        self.output_dir = Path(config.output_dir)
        self.log_path = (
            Path(config.log_file) if config.log_file else self.output_dir / "metrics.jsonl"
        )

    # ------------------------------------------------------------------ schedule and data
    def _lr_lambda(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - c.warmup_steps)
        progress = min(1.0, (step - c.warmup_steps) / span)
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _stream_batch(self, j: int) -> int:
        """Index of the ``j``-th micro-batch of the data stream (epochs reshuffled)."""
        nb = len(self.batches)
        epoch, k = divmod(j, nb)
        perm = np.random.default_rng([self.config.seed, epoch]).permutation(nb)
        return int(perm[k])

    def step_batches(self, step: int) -> tuple[list[int], int]:
        """The micro-batches of optimizer step ``step`` on this rank, and the step's total
        number of sequences over all ranks."""
        w, r, a = self.dist.world_size, self.dist.rank, self.config.grad_accum_steps
        all_mb = [self._stream_batch(step * a * w + i) for i in range(a * w)]
        n_total = sum(self.batch_sizes[b] for b in all_mb)
        return all_mb[r::w], n_total

    def _collate(self, b: int) -> dict[str, torch.Tensor]:
        batch = self.collator([self.dataset[g] for g in self.batches[b]])
        return {k: v.to(self.device) for k, v in batch.items()}

    # ------------------------------------------------------------------ steps
    def train_step(self) -> dict[str, float]:
        """One optimizer step (``grad_accum_steps`` micro-batches); returns its metrics."""
        t0 = time.perf_counter()
        self.model.train()
        mbs, n_total = self.step_batches(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        stats: ObjectiveStats | None = None
        loss_sum = 0.0
        tokens = 0
        for j, b in enumerate(mbs):
            batch = self._collate(b)
            sync = j == len(mbs) - 1 or not hasattr(self.model, "no_sync")
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
            with ctx:
                out = pope_forward(
                    self.model,
                    batch,
                    self.objective,
                    normalizer=n_total,
                    lm_head=self.config.lm_head,
                )
                out.loss.backward()
            stats = out.stats if stats is None else stats + out.stats
            loss_sum += float(out.loss.detach())
            tokens += int(batch["attention_mask"].sum())
        grad_norm = float("nan")
        if self.config.max_grad_norm is not None:
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]],
                    self.config.max_grad_norm,
                )
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.dist.enabled and self.objective.grad_reduction == "mean":
            loss_sum /= self.dist.world_size  # undo the DDP scaling: this rank's share
        self.last_step_stats = dataclasses.replace(
            stats, **{f.name: v.detach() for f in dataclasses.fields(stats)
                      if isinstance(v := getattr(stats, f.name), torch.Tensor)})
        row = {"step": self.step, "lr": lr, "loss": loss_sum}
        row.update(stats.metrics())
        row.update(grad_norm=grad_norm, tokens=tokens, seconds=time.perf_counter() - t0)
        return row

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Estimates of the current policy over the whole dataset (no gradient, eval mode).

        Every rank evaluates the whole dataset on its own (no collectives).
        """
        was = self.model.training
        self.model.eval()
        objective = self.config.objective(distributed=False,
                                          num_aspects=self.dataset.num_aspects)
        stats: ObjectiveStats | None = None
        try:
            for b in range(len(self.batches)):
                out = pope_forward(
                    self.inner_model, self._collate(b), objective, lm_head=self.config.lm_head
                )
                stats = out.stats if stats is None else stats + out.stats
        finally:
            self.model.train(was)
        return stats.metrics()

    def train(self, resume_from: str | os.PathLike[str] | None = None) -> TrainResult:
        """Run until ``total_steps``; ``resume_from``: a checkpoint directory, or ``"latest"``
        (the newest complete checkpoint under ``output_dir``).

        Without ``resume_from``, an ``output_dir`` holding an earlier run's files (metrics log,
        checkpoints, ``final``) is refused unless ``config.overwrite`` (which deletes those
        files first).

        Returns
        -------
        TrainResult
            The final step and the metric rows written to the log file.

        Raises
        ------
        OutputExistsError
            ``output_dir`` holds an earlier run and neither ``resume_from`` nor ``overwrite``.
        CheckpointError
            ``resume_from`` names no complete checkpoint.
        """
        from tqdm.auto import tqdm

        if resume_from is not None and self.config.overwrite:
            raise ValueError("overwrite=True and resume_from exclude each other")
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        else:
            if self.is_main:
                self._prepare_output_dir()
            torch.manual_seed(self.config.seed)
            random.seed(self.config.seed)
            np.random.seed(self.config.seed)  # noqa: NPY002
        result = TrainResult(self.step)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if resume_from is not None:
                _truncate_log(self.log_path, self.step)
        monitor = self.config.monitor()
        kind = self.config.report_to if self.is_main else "none"
        reporter = make_reporter(kind, self.output_dir, self.config.to_dict())
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="pope",
            unit="step",
            disable=not (self.config.progress and self.is_main),
        )
        epochs: dict[int, list[Any]] = {}
        try:
            while self.step < self.total_steps:
                epoch = self._epoch_of(self.step)
                row = self.train_step()
                acc = epochs.setdefault(epoch, [None, 0])
                acc[0] = self.last_step_stats if acc[0] is None else acc[0] + self.last_step_stats
                acc[1] += 1
                stop = monitor.check(row)
                if self.held_out is not None and (
                    stop or self.step == self.total_steps
                    or (self.config.eval_every and self.step % self.config.eval_every == 0)
                ):
                    row.update(self._evaluate_held_out(result))
                result.history.append(row)
                self._log_row(row, reporter, force=stop or "eval/total" in row)
                bar.update(1)
                bar.set_postfix(
                    total=f"{row['total']:.4f}", ess=f"{row['ess']:.1f}", loss=f"{row['loss']:.4g}"
                )
                if self.config.save_every and self.step % self.config.save_every == 0:
                    self.save_checkpoint()
                if stop:
                    result.stop_reason = monitor.stop_reason
                    _log.warning("%s", monitor.stop_reason)
                    break
            result.step = self.step
            result.epoch_metrics = [
                {"epoch": e, "steps": n, **st.metrics()} for e, (st, n) in sorted(epochs.items())
            ]
            if self.config.final_eval:
                result.final_metrics = self.evaluate()
                reporter.log({f"final/{k}": v for k, v in result.final_metrics.items()},
                             self.step)
        finally:
            bar.close()
            reporter.close()
        if self.config.save_final:
            if self._saved_step != self.step:  # the last checkpoint is written once
                self.save_checkpoint()
            if self.is_main and hasattr(self.inner_model, "save_pretrained"):
                write_directory(self.output_dir / "final", self._save_pretrained)
        if self.is_main:
            self._write_summary(result)
        return result

    def _epoch_of(self, step: int) -> int:
        """The pass over the data that optimizer step ``step`` (0-based) starts in."""
        per_step = self.config.grad_accum_steps * self.dist.world_size
        return step * per_step // len(self.batches)

    def _log_row(self, row: dict[str, float], reporter: Any, *, force: bool = False) -> None:
        if not self.is_main:
            return
        if force or self.step % self.config.log_every == 0 or self.step == self.total_steps:
            with self.log_path.open("a") as f:
                f.write(json.dumps(_finite(row)) + "\n")
        reporter.log(row, self.step)

    def _evaluate_held_out(self, result: TrainResult) -> dict[str, float]:
        """Evaluate the current policy on the held-out log; write ``eval/step-N.json``;
        return the ``eval/...`` metrics of the row."""
        res = self.held_out.evaluate(self.inner_model, self.tokenizer)
        d = {"step": self.step, **res.to_dict(ess_fraction=self.config.ess_warning)}
        result.evaluations.append(d)
        if self.is_main:
            out = self.output_dir / "eval"
            out.mkdir(parents=True, exist_ok=True)
            (out / f"step-{self.step}.json").write_text(
                json.dumps(d, indent=2, allow_nan=False) + "\n")
        row: dict[str, float] = {}
        for name in ("relevance", "diversity", "total"):
            e = d["pope"][name]
            row[f"eval/{name}"] = e["value"]
            row[f"eval/{name}_stderr"] = e["stderr"]
        tot = d["pope"]["total"]
        row.update({"eval/ci_lower": tot["ci_lower"], "eval/ci_upper": tot["ci_upper"],
                    "eval/ess": tot["ess"], "eval/mean_weight": tot["mean_weight"],
                    "eval/max_weight": tot["max_weight"], "eval/n": tot["n"]})
        return {k: (float("nan") if v is None else float(v)) for k, v in row.items()}

    def _write_summary(self, result: TrainResult) -> None:
        """``output_dir/summary.json``: the whole-epoch and final metrics, the stop reason."""
        summary = {
            "step": result.step,
            "total_steps": self.total_steps,
            "stop_reason": result.stop_reason,
            "epoch_metrics": result.epoch_metrics,
            "final_metrics": result.final_metrics,
            "evaluations": [e["step"] for e in result.evaluations],
            "config": self.config.to_dict(),
        }
        tmp = self.output_dir / f".summary.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(_finite(summary), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, self.output_dir / "summary.json")

    def _save_pretrained(self, path: Path) -> None:
        self.inner_model.save_pretrained(path)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(path)

    def _prepare_output_dir(self) -> None:
        """Refuse (or, with ``overwrite``, clear) the output of an earlier run."""
        old = run_outputs(self.output_dir, self.log_path)
        if not old:
            return
        if not self.config.overwrite:
            names = ", ".join(p.name for p in old[:4]) + (", ..." if len(old) > 4 else "")
            raise OutputExistsError(
                f"{self.output_dir} holds the output of an earlier run ({names}); pass "
                "overwrite=True to replace it or resume_from='latest' to continue it"
            )
        clear_run_files(self.output_dir, self.log_path)
        for name in RUN_EXTRAS:
            p = self.output_dir / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Save model, optimizer, scheduler, RNG states, step and the precomputed log-probs.

        Default path ``output_dir/checkpoint-{step}``. Only rank 0 writes. The directory is
        written atomically (:func:`pope.checkpoint.write_checkpoint`: temporary name, fsync,
        manifest with sizes and SHA-256 last, rename). Tensors go to ``.pt`` files that load
        with ``torch.load(weights_only=True)``; the RNG states to ``rng.json``.
        """
        d = Path(path) if path is not None else self.output_dir / f"checkpoint-{self.step}"
        if not self.is_main:
            return d
        ds = self.dataset
        lp: dict[str, torch.Tensor] = {"log_logging": torch.from_numpy(
            np.ascontiguousarray(ds.log_logging, dtype=np.float64))}
        if ds.ref_token_logprobs is not None:
            lens = [len(t) for t in ds.ref_token_logprobs]
            flat = np.concatenate([np.asarray(t, np.float64) for t in ds.ref_token_logprobs])
            lp["ref_token_logprobs"] = torch.from_numpy(flat)
            lp["ref_token_lengths"] = torch.tensor(lens, dtype=torch.int64)
        rng = json.dumps(_rng_state()).encode()

        def tensors(obj: Any) -> Callable[[Any], None]:
            return lambda f: torch.save(obj, f)

        files = {
            "model.pt": tensors(self.inner_model.state_dict()),
            "optimizer.pt": tensors(self.optimizer.state_dict()),
            "scheduler.pt": tensors(self.scheduler.state_dict()),
            "logprobs.pt": tensors(lp),
            "rng.json": lambda f: f.write(rng),
        }
        state = {
            "step": self.step,
            "total_steps": self.total_steps,
            "n_batches": len(self.batches),
            "n_responses": ds.n_responses,
            "config": self.config.to_dict(),
        }
        write_checkpoint(d, files, state)
        self._saved_step = self.step
        return d

    def latest_checkpoint(self) -> Path | None:
        """The complete checkpoint with the highest step under ``output_dir``, if any."""
        return find_latest(self.output_dir, CHECKPOINT_FILES)[0]

    def _resolve_checkpoint(self, path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
        """The checkpoint directory to load and its verified manifest."""
        if str(path) != "latest":
            p = Path(path)
            return p, verify_checkpoint(p, CHECKPOINT_FILES)
        p, skipped = find_latest(self.output_dir, CHECKPOINT_FILES)
        why = "; ".join(f"{s.name}: {reason}" for s, reason in skipped)
        if p is None:
            raise CheckpointError(
                f"no complete checkpoint under {self.output_dir}"
                + (f" (skipped {why})" if why else "")
            )
        if skipped:
            warnings.warn(
                f"resuming from {p.name}, skipping newer incomplete checkpoints ({why})",
                CheckpointWarning,
                stacklevel=3,
            )
        return p, verify_checkpoint(p, CHECKPOINT_FILES)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Restore a checkpoint written by :meth:`save_checkpoint` (``"latest"``: the newest
        complete one under ``output_dir``; newer incomplete ones are skipped with a
        :class:`CheckpointWarning`). Returns the directory loaded (also ``self.resumed_from``).

        Raises
        ------
        CheckpointError
            No complete checkpoint, a file that fails verification or holds anything but
            tensors, or a state that does not fit this model.
        ValueError
            The checkpoint was written for another dataset or token budget.
        """
        p, state = self._resolve_checkpoint(path)
        step = state.get("step")
        if not isinstance(step, int) or not 0 <= step <= self.total_steps:
            raise CheckpointError(f"{p / MANIFEST}: bad step {step!r}")
        if state.get("n_responses") != self.dataset.n_responses or state.get(
            "n_batches"
        ) != len(self.batches):
            raise ValueError(
                f"checkpoint {p} was written for another dataset or token budget "
                f"({state.get('n_responses')} responses, {state.get('n_batches')} batches)"
            )
        # read everything first: a bad file changes nothing
        pt = [n for n in CHECKPOINT_FILES if n.endswith(".pt")]
        loaded = {n: load_tensors(p / n, self.device) for n in pt}
        rng = read_json(p / "rng.json")
        log_logging, ref = _unpack_logprobs(loaded["logprobs.pt"], self.dataset, p / "logprobs.pt")
        for name, target in (("model.pt", self.inner_model), ("optimizer.pt", self.optimizer),
                             ("scheduler.pt", self.scheduler)):
            try:
                target.load_state_dict(loaded[name])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise CheckpointError(f"{p / name}: does not fit this trainer ({first})") from e
        self.dataset.log_logging = log_logging
        self.dataset.ref_token_logprobs = ref
        _set_rng_state(rng, p / "rng.json")
        self.step = step
        self.resumed_from = p
        _log.info("resuming from %s (step %d of %d)", p, step, self.total_steps)
        if p.resolve() == (self.output_dir / f"checkpoint-{step}").resolve():
            self._saved_step = step
        return p


CHECKPOINT_FILES = ("model.pt", "optimizer.pt", "scheduler.pt", "logprobs.pt", "rng.json")


class CheckpointWarning(UserWarning):
    """Resuming from ``"latest"`` skipped newer checkpoints that are incomplete or corrupt."""


class OutputExistsError(FileExistsError):
    """The output directory holds an earlier run's files and neither resume nor overwrite
    was asked for."""


def _unpack_logprobs(
    lp: Any, dataset: PopeDataset, source: Path
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """``log_logging`` and the per-token reference log-probs of ``logprobs.pt``, checked."""
    n = dataset.n_responses
    ll = lp.get("log_logging") if isinstance(lp, dict) else None
    if not isinstance(ll, torch.Tensor) or ll.shape != (n,):
        raise CheckpointError(f"{source}: expected a log_logging tensor of shape ({n},)")
    ref = None
    if "ref_token_logprobs" in lp:
        flat, lens = lp["ref_token_logprobs"], lp.get("ref_token_lengths")
        ok = isinstance(flat, torch.Tensor) and isinstance(lens, torch.Tensor)
        if not ok or lens.shape != (n,) or int(lens.sum()) != flat.numel() or (lens < 0).any():
            raise CheckpointError(f"{source}: inconsistent ref_token_logprobs / lengths")
        flat = flat.cpu().numpy().astype(np.float64)
        ref = np.split(flat, np.cumsum(lens.cpu().numpy())[:-1])
    return ll.cpu().numpy().astype(np.float64), ref


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _truncate_log(path: Path, step: int) -> None:
    """Keep the metric rows up to ``step`` (a resumed run rewrites the later ones); a row cut
    by a kill is dropped. Rewritten atomically."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)
