r"""What defines an evaluation run: :class:`EvalSpec` and the estimator options it implies.

:class:`EvalSpec` is frozen and picklable (it is shipped to Ray/Spark workers);
:func:`pope_kwargs` turns it into the keyword arguments of :func:`pope.evaluate`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pope.io import LogColumns, OnError
from pope.options import LMHead

__all__ = ["BASELINES", "AspectSource", "EvalSpec", "pope_kwargs"]

#: Baseline estimators available from logs alone (no reward model), on the total reward.
BASELINES = ("ips", "snips", "clipped_ips", "sub_gaussian_ips")

AspectSource = Literal["labels", "embedding", "npy", "model", "none"]


@dataclass(frozen=True)
class EvalSpec:
    """Everything that defines an evaluation run (picklable: shipped to Ray/Spark workers).

    Parameters
    ----------
    lam : float
        :math:`\\lambda`, weight of diversity in the total reward.
    reward_normalization : {"max", "log1p", "rank", "global_max", "none"}
    weighting : {"sequence", "token_mean"}
    clip : float, optional
        Weight truncation :math:`M` of the POPE estimates.
    relevance : {"snips", "ips"}
        Self-normalised or plain IPS relevance.
    coverage : {"self_normalized", "ips"}
        Normaliser of the per-prompt aspect coverage.
    diversity : {"coverage", "gini_simpson", "response_entropy"}
    diversity_estimator : {"polynomial", "jackknife", "plugin"}
        Coverage-entropy estimator (:func:`pope.evaluate`; default polynomial).
    diversity_degree : int, optional
        Fixed polynomial degree (default: chosen, see :func:`pope.evaluate`).
    alpha : float
        Level of the intervals (``1 - alpha`` coverage).
    estimators : tuple of str
        Baselines from :data:`BASELINES`.
    baseline_clip : float
        :math:`M` of ``clipped_ips`` (default: ``clip``, else 10).
    policy, logging_model : str, optional
        Local model directories. Without ``policy`` the log must have a ``log_target`` column;
        without ``logging_model`` a ``log_logging`` (or ``token_log_logging``) column.
    batch_tokens, device, dtype, chat_template, add_eos, head
        Scoring options (:func:`pope.scoring.score_responses`).
    aspects : {"labels", "embedding", "npy", "model", "none"}
        Where aspects come from: the ``aspect``/``aspect_probs`` columns; k-means on the
        ``embedding`` column, on a ``.npy`` file (``embeddings_path``), or on embeddings of the
        responses computed with a local model (``embedding_model``); or no aspects.
    n_aspects : int, optional
        ``C`` (required for k-means).
    aspect_names : tuple, optional
        Known aspect labels.
    soft_aspects, temperature, seed
        k-means options (:func:`pope.aspects.assign_aspects`).
    centers : (C, D) array, optional
        Fixed k-means centers (set by the streaming pre-pass).
    signal_scale : float, optional
        Global maximum of the signal (set by the streaming pre-pass for ``global_max``).
    columns : LogColumns
    on_error : {"fail", "skip"}
    progress : bool
        Progress bars while scoring.
    """

    lam: float = 1.0
    reward_normalization: str = "max"
    weighting: str = "sequence"
    clip: float | None = None
    relevance: str = "snips"
    coverage: str = "self_normalized"
    diversity: str = "coverage"
    diversity_estimator: str = "polynomial"
    diversity_degree: int | None = None
    alpha: float = 0.05
    estimators: tuple[str, ...] = ("snips", "clipped_ips")
    baseline_clip: float | None = None
    policy: str | None = None
    logging_model: str | None = None
    batch_tokens: int = 8192
    device: str | None = None
    dtype: str = "auto"
    chat_template: bool = False
    add_eos: bool = False
    head: LMHead = "logits"
    aspects: AspectSource = "labels"
    n_aspects: int | None = None
    aspect_names: tuple[Any, ...] | None = None
    embeddings_path: str | None = None
    embedding_model: str | None = None
    soft_aspects: bool = False
    temperature: float = 1.0
    seed: int = 0
    centers: Any = None
    signal_scale: float | None = None
    columns: LogColumns = field(default_factory=LogColumns)
    on_error: OnError = "fail"
    progress: bool = False

    def __post_init__(self) -> None:
        bad = [e for e in self.estimators if e not in BASELINES]
        if bad:
            raise ValueError(f"unknown estimator(s) {bad}; choose from {list(BASELINES)}")
        if self.aspects not in ("labels", "embedding", "npy", "model", "none"):
            raise ValueError(f"unknown aspect source {self.aspects!r}")
        if self.aspects in ("embedding", "npy", "model") and not self.n_aspects:
            raise ValueError("k-means aspects need n_aspects (the number of clusters C)")
        if self.aspects == "npy" and not self.embeddings_path:
            raise ValueError("aspects='npy' needs embeddings_path")
        if self.aspects == "model" and not self.embedding_model:
            raise ValueError("aspects='model' needs embedding_model")
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")

    @property
    def kmeans(self) -> bool:
        """Whether aspects come from k-means on embeddings."""
        return self.aspects in ("embedding", "npy", "model")

    @property
    def clipped_ips_clip(self) -> float:
        """:math:`M` of the ``clipped_ips`` baseline."""
        if self.baseline_clip is not None:
            return float(self.baseline_clip)
        return float(self.clip) if self.clip is not None else 10.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly settings (no arrays)."""
        d = asdict(self)
        d.pop("centers")
        d["columns"] = self.columns.as_dict()
        d["aspect_names"] = None if self.aspect_names is None else list(self.aspect_names)
        d["estimators"] = list(self.estimators)
        return d


def pope_kwargs(spec: EvalSpec) -> dict[str, Any]:
    """Keyword arguments of :func:`pope.evaluate` for ``spec``.

    The reward normalisation is ``"none"`` once the signal is already scaled by the global
    maximum (``spec.signal_scale``, set by the streaming pre-pass for ``global_max``).
    """
    norm = "none" if spec.signal_scale is not None else spec.reward_normalization
    return {
        "lam": spec.lam,
        "reward_normalization": norm,
        "relevance": spec.relevance,
        "coverage": spec.coverage,
        "diversity": spec.diversity,
        "diversity_estimator": spec.diversity_estimator,
        "diversity_degree": spec.diversity_degree,
        "weighting": spec.weighting,
        "clip": spec.clip,
        "alpha": spec.alpha,
    }
