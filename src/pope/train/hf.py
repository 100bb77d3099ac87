r"""The POPE loss inside ``transformers.Trainer`` and TRL trainers: :class:`PopeTrainerMixin`,
``PopeTrainer`` (the mixin on ``transformers.Trainer``, built lazily) and
:func:`make_compute_loss`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from pope.objective import ObjectiveStats, PopeObjective
from pope.train.config import LMHead
from pope.train.forward import POPE_BATCH_KEYS, detach_stats, pope_forward

__all__ = ["PopeTrainerMixin", "make_compute_loss", "trainer_class"]

if TYPE_CHECKING:  # the mixin's super() is a transformers.Trainer (not imported at run time)
    from transformers import Trainer as _TrainerBase
else:
    _TrainerBase = object


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


class PopeTrainerMixin(_TrainerBase):
    """Mix into ``transformers.Trainer`` (or a TRL trainer) to train with the POPE loss.

    ``class PopeTrainer(PopeTrainerMixin, transformers.Trainer): pass`` then
    ``PopeTrainer(model=..., args=..., train_dataset=PopeDataset(...).tokenize(tok),
    data_collator=PopeCollator(tok.pad_token_id), pope_objective=PopeObjective(...))``.

    * ``compute_loss`` is :func:`make_compute_loss` (batch keys: see :class:`PopeCollator`);
    * the POPE batch keys are kept by ``remove_unused_columns``;
    * ``loss_is_scaled_for_ga = False``: the loss is a per-batch mean, the Trainer divides
      it by the gradient-accumulation steps;
    * the estimates of the latest optimizer step, over all its gradient-accumulation
      micro-batches, are in ``self.pope_last_metrics`` and go to ``self.log`` with the
      Trainer's logging (prefix ``pope/``; with ``logging_steps > 1``, those of the logged
      step). The statistics stay on the device until logged: one sync per log, not per
      micro-batch.

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
        self._pope_stats: list[ObjectiveStats] = []  # detached, on the device
        self._pope_stats_step: int | None = None  # the optimizer step they belong to
        self._pope_in_step = False
        self._pope_metrics: dict[str, float] | None = None
        super().__init__(*args, **kwargs)

    @property
    def pope_last_metrics(self) -> dict[str, float]:
        """The objective's estimates over every micro-batch of the latest optimizer step
        (their statistics merged), or of the last ``compute_loss`` call outside training;
        empty before any. Computed once per step, on first access (one device sync)."""
        if self._pope_metrics is None:
            stats = self._pope_stats
            if not stats:
                return {}
            merged = stats[0]
            try:
                for s in stats[1:]:
                    merged = merged + s
            except ValueError:  # e.g. each micro-batch inferred its own number of aspects
                warnings.warn(
                    "the micro-batches of this step have statistics that do not merge (pass "
                    "num_aspects= to PopeObjective); logging the last micro-batch's estimates",
                    RuntimeWarning,
                    stacklevel=2,
                )
                merged = stats[-1]
            self._pope_metrics = merged.metrics()
        return self._pope_metrics

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        self._pope_in_step = True
        try:
            return super().training_step(*args, **kwargs)
        finally:
            self._pope_in_step = False

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        out = pope_forward(model, inputs, self.pope_objective, lm_head=self.pope_lm_head)
        # keep the statistics on the device (no sync per micro-batch); a training micro-batch
        # joins those of its optimizer step, any other call replaces them
        state = getattr(self, "state", None)
        step = getattr(state, "global_step", None) if self._pope_in_step else None
        if step is None or step != self._pope_stats_step:
            self._pope_stats = []
        self._pope_stats_step = step
        self._pope_stats.append(detach_stats(out.stats))
        self._pope_metrics = None
        return (out.loss, out) if return_outputs else out.loss

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        cols = self._signature_columns
        assert cols is not None  # set by the call above
        extra = ["prompt_lengths", *POPE_BATCH_KEYS]
        self._signature_columns = list(cols) + [k for k in extra if k not in cols]

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.pope_last_metrics and "loss" in logs:
            logs = {**logs, **{f"pope/{k}": v for k, v in self.pope_last_metrics.items()}}
        super().log(logs, *args, **kwargs)


_TRAINER: list[type] = []


def trainer_class() -> type:
    """``PopeTrainer``: ``transformers.Trainer`` with :class:`PopeTrainerMixin` (built once,
    on first use, so that importing :mod:`pope.train` does not import transformers)."""
    if not _TRAINER:
        from transformers import Trainer

        _TRAINER.append(
            type("PopeTrainer", (PopeTrainerMixin, Trainer), {"__module__": "pope.train"})
        )
    return _TRAINER[0]


def __getattr__(name: str) -> Any:
    # ``PopeTrainer``: transformers.Trainer with the mixin (imported lazily)
    if name == "PopeTrainer":
        return trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
