r"""The self-contained off-policy training loop (:class:`OffPolicyTrainer`)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pope.checkpoint import (
    MANIFEST,
    CheckpointError,
    clear_run_files,
    find_latest,
    load_tensors,
    read_json,
    verify_checkpoint,
    write_checkpoint,
    write_directory,
)
from pope.distributed import dist_info
from pope.objective import ObjectiveStats
from pope.scoring import context_length
from pope.train.config import TrainConfig
from pope.train.dataset import PopeCollator, PopeDataset, token_budget_batches
from pope.train.forward import detach_stats, pope_forward
from pope.train.outputs import (
    CHECKPOINT_FILES,
    RUN_EXTRAS,
    CheckpointWarning,
    OutputExistsError,
    json_finite,
    rng_state,
    run_outputs,
    set_rng_state,
    truncate_log,
    unpack_logprobs,
)
from pope.train_monitor import make_reporter

__all__ = ["OffPolicyTrainer", "TrainResult"]

_log = logging.getLogger("pope.train")


def _disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for attr in ("attention_dropout", "dropout_p"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)


def apply_lora(model: Any, lora: dict[str, Any]) -> Any:
    """``model`` wrapped by ``peft.get_peft_model`` with ``peft.LoraConfig(task_type="CAUSAL_LM",
    **lora)`` (the adapters are injected into ``model`` in place; ``.unload()`` removes them)."""
    try:
        import peft
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("LoRA (lora=...) needs the 'peft' package (pip install peft)") from e
    return peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", **lora))


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
            model = inner = apply_lora(model, config.lora)
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
        self.batches = token_budget_batches(groups, config.token_budget, names=dataset.prompt_ids)
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
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.dist.enabled and self.objective.grad_reduction == "mean":
            loss_sum /= self.dist.world_size  # undo the DDP scaling: this rank's share
        assert stats is not None  # grad_accum_steps >= 1 micro-batches per rank
        self.last_step_stats = detach_stats(stats)
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
        objective = self.config.objective(distributed=False, num_aspects=self.dataset.num_aspects)
        stats: ObjectiveStats | None = None
        try:
            for b in range(len(self.batches)):
                out = pope_forward(
                    self.inner_model, self._collate(b), objective, lm_head=self.config.lm_head
                )
                stats = out.stats if stats is None else stats + out.stats
        finally:
            self.model.train(was)
        assert stats is not None  # a dataset has at least one prompt, so one batch
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
                truncate_log(self.log_path, self.step)
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
                    stop
                    or self.step == self.total_steps
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
                reporter.log({f"final/{k}": v for k, v in result.final_metrics.items()}, self.step)
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
                f.write(json.dumps(json_finite(row)) + "\n")
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
                json.dumps(d, indent=2, allow_nan=False) + "\n"
            )
        row: dict[str, float] = {}
        for name in ("relevance", "diversity", "total"):
            e = d["pope"][name]
            row[f"eval/{name}"] = e["value"]
            row[f"eval/{name}_stderr"] = e["stderr"]
        tot = d["pope"]["total"]
        row.update(
            {
                "eval/ci_lower": tot["ci_lower"],
                "eval/ci_upper": tot["ci_upper"],
                "eval/ess": tot["ess"],
                "eval/mean_weight": tot["mean_weight"],
                "eval/max_weight": tot["max_weight"],
                "eval/n": tot["n"],
            }
        )
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
        tmp.write_text(json.dumps(json_finite(summary), indent=2, allow_nan=False) + "\n")
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
        lp: dict[str, torch.Tensor] = {
            "log_logging": torch.from_numpy(np.ascontiguousarray(ds.log_logging, dtype=np.float64))
        }
        if ds.ref_token_logprobs is not None:
            lens = [len(t) for t in ds.ref_token_logprobs]
            flat = np.concatenate([np.asarray(t, np.float64) for t in ds.ref_token_logprobs])
            lp["ref_token_logprobs"] = torch.from_numpy(flat)
            lp["ref_token_lengths"] = torch.tensor(lens, dtype=torch.int64)
        rng = json.dumps(rng_state()).encode()

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
            given = Path(path)
            return given, verify_checkpoint(given, CHECKPOINT_FILES)
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
        if state.get("n_responses") != self.dataset.n_responses or state.get("n_batches") != len(
            self.batches
        ):
            raise ValueError(
                f"checkpoint {p} was written for another dataset or token budget "
                f"({state.get('n_responses')} responses, {state.get('n_batches')} batches)"
            )
        # read everything first: a bad file changes nothing
        pt = [n for n in CHECKPOINT_FILES if n.endswith(".pt")]
        loaded = {n: load_tensors(p / n, self.device) for n in pt}
        rng = read_json(p / "rng.json")
        log_logging, ref = unpack_logprobs(loaded["logprobs.pt"], self.dataset, p / "logprobs.pt")
        for name, target in (
            ("model.pt", self.inner_model),
            ("optimizer.pt", self.optimizer),
            ("scheduler.pt", self.scheduler),
        ):
            try:
                target.load_state_dict(loaded[name])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise CheckpointError(f"{p / name}: does not fit this trainer ({first})") from e
        self.dataset.log_logging = log_logging
        self.dataset.ref_token_logprobs = ref
        set_rng_state(rng, p / "rng.json")
        self.step = step
        self.resumed_from = p
        _log.info("resuming from %s (step %d of %d)", p, step, self.total_steps)
        if p.resolve() == (self.output_dir / f"checkpoint-{step}").resolve():
            self._saved_step = step
        return p
