r"""Off-policy POPE fine-tuning of Hugging Face causal LMs.

Three entry points, sharing one data path (:class:`PopeDataset` -> :class:`PopeCollator` ->
:func:`pope_forward` -> :class:`pope.objective.PopeObjective`):

* :class:`OffPolicyTrainer` — a self-contained loop: token-budget batches that keep all the
  responses of a prompt together (the coverage :math:`\hat p(c\mid x_i)` is per prompt),
  gradient accumulation, AdamW, linear warmup + cosine decay, gradient clipping, checkpoints
  that resume bit-exactly, a tqdm bar and JSON-lines metrics;
* :class:`PopeTrainerMixin` / :func:`make_compute_loss` — a ``compute_loss`` for
  ``transformers.Trainer`` (and TRL trainers built on it);
* :func:`pope_forward` — one model forward + objective on a collated batch, for custom loops;
* :func:`fit_logging_policy` — behaviour cloning of an unknown logging policy with
  cross-fitting folds (``pope fit-logging``), for logs without logging log-probs.

Tokenisation (:func:`pope.scoring.tokenize_pairs`): ``prompt_ids + response_ids`` (the prompt
with the tokenizer's special tokens, or the chat template; the response without, plus EOS by
default). Only response tokens enter the loss: the batch's ``labels`` follow the Hugging Face
convention (equal to ``input_ids`` on the response, ``-100`` elsewhere, shifted inside
:func:`pope_forward` with :func:`pope.objective.shift_labels`).

Logging propensities :math:`\log\pi_0(y\mid x)`: taken from the data when given; otherwise
computed once, before training, with a frozen reference model
(:meth:`PopeDataset.compute_logprobs`, through :func:`pope.scoring.score_responses`), which
must then be the policy that generated the responses. Neither given is an error.

Modules: :mod:`~pope.train.config` (:class:`TrainConfig`), :mod:`~pope.train.dataset`
(:class:`PopeDataset`, :func:`token_budget_batches`, :class:`PopeCollator`),
:mod:`~pope.train.forward` (:func:`pope_forward`), :mod:`~pope.train.hf` (the
``transformers.Trainer`` integration), :mod:`~pope.train.trainer` (:class:`OffPolicyTrainer`),
:mod:`~pope.train.outputs` (the files a run writes), :mod:`~pope.train.behaviour_cloning`
(:func:`fit_logging_policy`); checkpoints are written by
:mod:`pope.checkpoint`, the importance weights watched by :mod:`pope.train_monitor`.
"""

from __future__ import annotations

from typing import Any

from pope.checkpoint import CheckpointError
from pope.train.behaviour_cloning import BehaviourCloningResult, fit_logging_policy
from pope.train.config import LMHead, TrainConfig
from pope.train.dataset import PopeCollator, PopeDataset, TrainingExample, token_budget_batches
from pope.train.forward import POPE_BATCH_KEYS, pope_forward
from pope.train.hf import PopeTrainerMixin, make_compute_loss, trainer_class
from pope.train.outputs import (
    CHECKPOINT_FILES,
    RUN_EXTRAS,
    CheckpointWarning,
    OutputExistsError,
    run_outputs,
)
from pope.train.trainer import OffPolicyTrainer, TrainResult

__all__ = [
    "CHECKPOINT_FILES",
    "POPE_BATCH_KEYS",
    "RUN_EXTRAS",
    "BehaviourCloningResult",
    "CheckpointError",
    "CheckpointWarning",
    "LMHead",
    "OffPolicyTrainer",
    "OutputExistsError",
    "PopeCollator",
    "PopeDataset",
    "PopeTrainerMixin",
    "TrainConfig",
    "TrainResult",
    "TrainingExample",
    "fit_logging_policy",
    "make_compute_loss",
    "pope_forward",
    "run_outputs",
    "token_budget_batches",
]


def __getattr__(name: str) -> Any:
    # ``pope.train.PopeTrainer``: transformers.Trainer with the mixin (imported lazily)
    if name == "PopeTrainer":
        return trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
