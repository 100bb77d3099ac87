r"""What :class:`pope.train.OffPolicyTrainer` watches and where it reports it.

* :class:`WeightMonitor` — the importance weights of every optimizer step. With
  :math:`w_j = \pi_\theta(y_j\mid x_j)/\pi_0(y_j\mid x_j)` over the ``n`` sequences of the
  step, the effective sample size is :math:`\mathrm{ESS} = (\sum_j w_j)^2 / \sum_j w_j^2`
  (between 1 and ``n``) and the mean weight :math:`\bar w = \frac1n\sum_j w_j` (its expectation
  under :math:`\pi_0` is 1 when :math:`\pi_\theta` puts no mass outside the support of
  :math:`\pi_0`). An ESS fraction :math:`\mathrm{ESS}/n` below ``warn_fraction`` or a mean
  weight outside ``[1/mean_weight_factor, mean_weight_factor]`` means the policy has left the
  region the logs say anything about: the estimates (and the gradient) then rest on a few
  sequences. The monitor warns (:class:`WeightCollapseWarning`, once per kind and run) and,
  with ``min_ess_fraction``, asks the trainer to stop after ``patience`` such steps in a row.
* :func:`make_reporter` — ``"tensorboard"`` (``torch.utils.tensorboard.SummaryWriter``, needs the
  ``tensorboard`` package), ``"wandb"`` (``wandb.init``; set ``WANDB_MODE=offline`` to stay
  off the network) or ``"none"``; the libraries do the writing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "REPORT_TO",
    "Reporter",
    "WeightCollapseWarning",
    "WeightMonitor",
    "make_reporter",
]

#: Values of ``report_to`` / ``--report-to``.
REPORT_TO = ("none", "tensorboard", "wandb")


class WeightCollapseWarning(UserWarning):
    """The importance weights of a training step collapsed (small ESS or mean weight far
    from 1): the estimates rest on a few sequences."""


@dataclass
class WeightMonitor:
    """Watch the ESS fraction and mean weight of each step; warn, and ask to stop.

    Parameters
    ----------
    warn_fraction : float
        Warn when :math:`\\mathrm{ESS}/n <` ``warn_fraction`` (0 disables).
    min_ess_fraction : float, optional
        Stop when :math:`\\mathrm{ESS}/n <` ``min_ess_fraction`` for ``patience`` steps in a
        row (``None``: never stop).
    mean_weight_factor : float
        Warn when the mean weight leaves ``[1/factor, factor]``.
    patience : int
        Consecutive low-ESS steps before stopping.
    """

    warn_fraction: float = 0.1
    min_ess_fraction: float | None = None
    mean_weight_factor: float = 10.0
    patience: int = 1
    warned: set[str] = field(default_factory=set)
    low_steps: int = 0
    stop_reason: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.warn_fraction <= 1:
            raise ValueError(f"ess_warning must lie in [0, 1], got {self.warn_fraction!r}")
        m = self.min_ess_fraction
        if m is not None and not 0 < m <= 1:
            raise ValueError(f"min_ess_fraction must lie in (0, 1], got {m!r}")
        if not self.mean_weight_factor > 1:
            raise ValueError(f"mean_weight_factor must be > 1, got {self.mean_weight_factor!r}")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {self.patience!r}")

    def check(self, row: dict[str, float]) -> bool:
        """Look at one step's metrics (keys ``ess``, ``n_seqs``, ``weight_mean``, ``step``);
        add ``ess_fraction`` to ``row``; return whether training should stop."""
        n = row.get("n_seqs", float("nan"))
        ess = row.get("ess", float("nan"))
        frac = ess / n if n and math.isfinite(ess) else float("nan")
        row["ess_fraction"] = frac
        step = int(row.get("step", 0))
        if math.isfinite(frac) and frac < self.warn_fraction:
            self._warn(
                "ess",
                f"step {step}: effective sample size {ess:.1f} of n={n:g} "
                f"sequences ({100 * frac:.1f}% < {100 * self.warn_fraction:g}%); "
                "the weights are collapsing: lower the learning rate, clip the "
                "weights (clip / ppo_eps) or add a KL penalty (beta)",
            )
        wm = row.get("weight_mean", float("nan"))
        f = self.mean_weight_factor
        if math.isfinite(wm) and not 1 / f <= wm <= f:
            self._warn(
                "mean",
                f"step {step}: mean importance weight {wm:.4g} is outside "
                f"[{1 / f:g}, {f:g}] (expected near 1): the policy moved mass "
                "away from the logged responses",
            )
        if self.min_ess_fraction is None or not math.isfinite(frac):
            return False
        self.low_steps = self.low_steps + 1 if frac < self.min_ess_fraction else 0
        if self.low_steps >= self.patience:
            self.stop_reason = (
                f"stopped early at step {step}: ESS fraction {frac:.3g} < min_ess_fraction="
                f"{self.min_ess_fraction:g}"
                + (f" for {self.patience} steps" if self.patience > 1 else "")
            )
            return True
        return False

    def _warn(self, kind: str, msg: str) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            warnings.warn(msg, WeightCollapseWarning, stacklevel=3)


class Reporter(Protocol):
    """Where metric rows go besides ``metrics.jsonl``."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class _NoReporter:
    def log(self, metrics: dict[str, float], step: int) -> None:
        return None

    def close(self) -> None:
        return None


class _TensorBoard:
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "report_to='tensorboard' needs the 'tensorboard' package (pip install tensorboard)"
            ) from e
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, out_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ImportError(
                "report_to='wandb' needs the 'wandb' package (pip install wandb)"
            ) from e
        self.run = wandb.init(dir=str(out_dir), config=config, reinit=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        self.run.log(clean, step=step)

    def close(self) -> None:
        self.run.finish()


def make_reporter(kind: str, output_dir: Path, config: dict[str, Any]) -> Reporter:
    """The reporter for ``kind`` in :data:`REPORT_TO`.

    TensorBoard event files go to ``output_dir/runs``; wandb runs keep their files under
    ``output_dir`` (``wandb.init(dir=...)``; the project and mode come from the ``WANDB_*``
    environment variables, e.g. ``WANDB_MODE=offline``).
    """
    if kind == "none":
        return _NoReporter()
    if kind == "tensorboard":
        return _TensorBoard(Path(output_dir) / "runs")
    if kind == "wandb":
        return _Wandb(Path(output_dir), config)
    raise ValueError(f"report_to must be one of {REPORT_TO}, got {kind!r}")
