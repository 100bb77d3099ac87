"""Settings of :class:`pope.train.OffPolicyTrainer` (:class:`TrainConfig`)."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from pope.objective import PopeObjective
from pope.options import (
    LM_HEADS,
    SCHEDULES,
    Baseline,
    Coverage,
    Diversity,
    LMHead,
    ObjectiveDiversityEstimator,
    Schedule,
    Truncation,
    Weighting,
    check_choice,
)
from pope.train_monitor import REPORT_TO, WeightMonitor

__all__ = ["LMHead", "TrainConfig"]


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
    schedule: Schedule = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    token_budget: int = 8192
    grad_accum_steps: int = 1
    max_steps: int | None = None
    epochs: float = 1.0
    lam: float = 1.0
    clip: float | None = None
    ppo_eps: float | None = None
    weighting: Weighting = "sequence"
    baseline: Baseline = "loo"
    coverage: Coverage = "self_normalized"  # "snips": deprecated spelling, still accepted
    diversity: Diversity = "coverage"
    diversity_estimator: ObjectiveDiversityEstimator = "polynomial"
    diversity_degree: int | None = None
    truncation: Truncation = "estimator"
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
        if self.coverage == "snips":
            warnings.warn(
                "coverage='snips' is deprecated, use coverage='self_normalized' (the "
                "spelling of pope.evaluate and the CLI)",
                DeprecationWarning,
                stacklevel=3,
            )
            self.coverage = "self_normalized"

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
        check_choice(self.schedule, "schedule", SCHEDULES)
        check_choice(self.lm_head, "lm_head", LM_HEADS)
        self.objective()  # validates the objective options

    def objective(self, **overrides: Any) -> PopeObjective:
        """The :class:`~pope.objective.PopeObjective` these settings describe."""
        kw: dict[str, Any] = dict(
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
        return WeightMonitor(
            warn_fraction=self.ess_warning,
            min_ess_fraction=self.min_ess_fraction,
            patience=self.ess_patience,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings."""
        return dataclasses.asdict(self)
