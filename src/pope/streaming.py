r"""Evaluate logs from files: in memory, streamed in chunks, or on Ray / Spark partitions.

One pipeline turns rows of a log into estimates:

1. read and validate the rows (:mod:`pope.io`); bad rows fail or are skipped and reported;
2. assign aspects (given labels, or k-means on embeddings, :mod:`pope.aspects`);
3. score the responses with the target policy (and, if asked, the logging policy) with
   :func:`pope.scoring.score_responses`, unless the log carries the log-probs;
4. estimate with :func:`pope.evaluate` and the baseline estimators.

Every estimate is backed by *mergeable* sufficient statistics (``stats_a + stats_b`` are the
statistics of the union of two disjoint sets of prompts), so the same pipeline runs

- in memory (:func:`evaluate_logs`);
- streamed (:func:`evaluate_stream`): chunks of rows are read one at a time (Parquet row
  batches, JSON Lines line chunks, CSV chunks); the rows of the prompt at the end of a chunk
  are carried over to the next chunk, so no prompt is split and the merged result equals the
  in-memory one (up to float rounding); memory is bounded by the chunk size plus the largest
  prompt;
- on many machines: :func:`map_partition` turns a partition of *whole prompts* into statistics
  and :func:`merge` adds them. :mod:`pope.engines` (``evaluate_ray``, ``evaluate_spark``,
  ``evaluate_with_engine``) assigns prompts to buckets by a stable hash of ``prompt_id``
  (:func:`bucket_of`), groups by bucket, maps each bucket and merges.

Prompts must be contiguous in a streamed file (all rows of a prompt next to each other, e.g.
sorted by ``prompt_id``); a prompt that reappears after its rows were processed is an error.
Statistics that are not sums (bootstrap intervals, per-response contributions) exist only for
in-memory results.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from pope._validation import normalize_id
from pope.io import (
    Format,
    LogColumns,
    LogData,
    LogFormatError,
    OnError,
    ValidationReport,
    iter_raw_chunks,  # moved to pope.io.chunks; still pope.streaming.iter_raw_chunks
    read_table,
    validate_logs,
)

__all__ = [
    "BASELINES",
    "EvalResult",
    "EvalSpec",
    "EvalStats",
    "Prepared",
    "bucket_of",
    "evaluate_logs",
    "evaluate_stream",
    "iter_prompt_chunks",
    "iter_raw_chunks",
    "map_partition",
    "merge",
    "prepare",
    "prepare_spec",
]

#: Baseline estimators available from logs alone (no reward model), on the total reward.
BASELINES = ("ips", "snips", "clipped_ips", "sub_gaussian_ips")

AspectSource = Literal["labels", "embedding", "npy", "model", "none"]


# ----------------------------------------------------------------------------- spec
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
    head: str = "logits"
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


# ----------------------------------------------------------------------------- models
_MODELS: dict[tuple[str, str | None, str], tuple[Any, Any]] = {}


def _model(path: str, spec: EvalSpec) -> tuple[Any, Any]:
    """Load (once per process) a causal LM and tokenizer."""
    from pope.scoring import load_causal_lm

    key = (str(path), spec.device, str(spec.dtype))
    if key not in _MODELS:
        _MODELS[key] = load_causal_lm(path, device=spec.device, dtype=spec.dtype)
    return _MODELS[key]


def _score(
    path: str, data: LogData, spec: EvalSpec, tokens: bool, desc: str
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    from pope.scoring import score_responses

    model, tok = _model(path, spec)
    out = score_responses(
        model,
        tok,
        data.prompt or [],
        data.response or [],
        batch_tokens=spec.batch_tokens,
        return_token_logprobs=tokens,
        chat_template=spec.chat_template,
        add_eos=spec.add_eos,
        head=spec.head,  # type: ignore[arg-type]
        progress=spec.progress,
        desc=desc,
    )
    if tokens:
        seq, tok_lp = out  # type: ignore[misc]
        return seq, tok_lp
    return out, None  # type: ignore[return-value]


# ----------------------------------------------------------------------------- one chunk
@dataclass
class Prepared:
    """A chunk of valid rows made ready for the estimators.

    Attributes
    ----------
    data : LogData
        The kept rows (original order).
    feedback : LoggedFeedback
        Grouped by prompt.
    log_target : (N,) float64
        :math:`\\log\\pi_\\theta(y|x)` aligned with ``feedback``.
    token_log_target : (T,) float64 or None
        Per-token target log-probs aligned with ``feedback.token_ptr`` (``token_mean``).
    report : ValidationReport
    """

    data: LogData
    feedback: Any
    log_target: np.ndarray
    token_log_target: np.ndarray | None
    report: ValidationReport
    embeddings: np.ndarray | None = None  # k-means aspects: the rows' embeddings (data order)


def _embeddings(data: LogData, spec: EvalSpec, n_raw_rows: int | None = None) -> np.ndarray:
    """Embeddings of the kept rows (aligned with ``data``)."""
    if spec.aspects == "embedding":
        if data.embedding is None:
            raise LogFormatError(
                f"aspects from embeddings need an embedding column "
                f"({spec.columns.embedding!r}); it is missing or empty"
            )
        return data.embedding
    if spec.aspects == "npy":
        from pope.aspects import load_embeddings

        emb = np.load(spec.embeddings_path, mmap_mode="r", allow_pickle=False)  # type: ignore[arg-type]
        if emb.ndim != 2:
            raise LogFormatError(f"embeddings {spec.embeddings_path} must be 2-dimensional")
        if n_raw_rows is not None and emb.shape[0] != n_raw_rows:
            load_embeddings(spec.embeddings_path, n_raw_rows)  # raises with a clear message
        if len(data) and int(data.rows.max()) >= emb.shape[0]:
            raise LogFormatError(
                f"embeddings {spec.embeddings_path} have {emb.shape[0]} rows but the log has "
                f"at least {int(data.rows.max()) + 1}"
            )
        out = np.asarray(emb[data.rows], dtype=np.float64)
        if not np.isfinite(out).all():
            raise LogFormatError(f"embeddings {spec.embeddings_path} contain NaN or inf")
        return out
    from pope.aspects import embed_texts

    return embed_texts(
        data.response or [], spec.embedding_model, device=spec.device, progress=spec.progress  # type: ignore[arg-type]
    )


def _validate(frame: Any, spec: EvalSpec, row_offset: int) -> LogData:
    cols = spec.columns
    if "__row__" in frame.columns:
        row_offset = 0
    data = validate_logs(
        frame,
        columns=cols,
        require_text=spec.policy is not None or spec.logging_model is not None
        or spec.aspects == "model",
        require_log_logging=spec.logging_model is None,
        aspect_names=spec.aspect_names,
        n_aspects=spec.n_aspects if spec.aspects == "labels" else None,
        use_aspects=spec.aspects == "labels",
        row_offset=row_offset,
    )
    if "__row__" in frame.columns:  # global row numbers carried by the frame (Ray/Spark)
        rows = frame["__row__"].to_numpy(dtype=np.int64)
        rep = ValidationReport(data.report.n_rows, {k: rows[v] for k, v in
                                                    data.report.issues.items()})
        data = replace(data, rows=rows, report=rep)
    if spec.policy is None and data.log_target is None:
        raise LogFormatError(
            f"no target policy: give a policy model directory, or a column "
            f"{cols.log_target!r} with precomputed log pi_theta(y|x)"
        )
    if spec.aspects == "labels" and data.aspect is None and data.aspect_probs is None \
            and spec.lam != 0:
        raise LogFormatError(
            f"no aspects: the log has no {cols.aspect!r} (or {cols.aspect_probs!r}) column; "
            "assign aspects from embeddings (k-means) or evaluate relevance only (no aspects)"
        )
    return data


def prepare(
    frame: Any, spec: EvalSpec, *, row_offset: int = 0, n_raw_rows: int | None = None
) -> Prepared:
    """Validate, assign aspects and score one set of whole prompts.

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows of whole prompts (a column ``__row__``, if present, gives the global row numbers).
    spec : EvalSpec
    row_offset : int
        Global number of the first row of ``frame``.
    n_raw_rows : int, optional
        Rows in the whole log (to check a ``.npy`` embeddings file).

    Raises
    ------
    LogFormatError
        Bad rows with ``on_error="fail"``, missing columns, inconsistent inputs.
    """
    data = _validate(frame, spec, row_offset)
    report = data.report
    if not report.ok:
        if spec.on_error == "fail":
            raise LogFormatError(
                f"{report.summary()}\n(use --on-error skip / on_error='skip' to drop the bad "
                "rows and go on)",
                report,
            )
        data = data.select(~np.isin(data.rows, report.bad_rows))

    aspect = probs = emb = None
    n_aspects = spec.n_aspects
    if spec.kmeans and len(data):
        from pope.aspects import assign_aspects

        emb = _embeddings(data, spec, n_raw_rows)
        centers = spec.centers
        if centers is None:
            raise ValueError("k-means centers are not fitted (internal: fit them first)")
        a = assign_aspects(
            emb, int(n_aspects), centers=centers, soft=spec.soft_aspects,  # type: ignore[arg-type]
            temperature=spec.temperature,
        )
        aspect, probs = (None, a.probs) if spec.soft_aspects else (a.labels, None)
    elif spec.aspects == "labels":
        n_aspects = data.n_aspects if spec.n_aspects is None else spec.n_aspects

    tokens = spec.weighting == "token_mean"
    log_logging = tok_logging = None
    if spec.logging_model is not None:
        log_logging, tok_logging = _score(spec.logging_model, data, spec, tokens, "logging")
    if spec.policy is not None:
        log_target, tok_target = _score(spec.policy, data, spec, tokens, "target")
    else:
        log_target, tok_target = data.log_target, None
        if tokens:
            raise LogFormatError(
                "weighting='token_mean' needs per-token target log-probs: give a policy model"
            )
    if tokens and tok_logging is None and data.token_log_logging is None:
        raise LogFormatError(
            "weighting='token_mean' needs per-token logging log-probs: a token_log_logging "
            "column or a logging model"
        )
    if spec.signal_scale is not None:
        data = replace(data, signal=data.signal / spec.signal_scale if spec.signal_scale > 0
                       else np.zeros_like(data.signal))
    no_labels = spec.aspects == "labels" and data.aspect is None and data.aspect_probs is None
    if spec.aspects == "none" or (spec.lam == 0 and no_labels):
        # one aspect: the diversity is 0, the total is the relevance (lambda = 0 needs none)
        aspect, probs, n_aspects = np.zeros(len(data), dtype=np.int64), None, 1
    fb = data.to_feedback(
        log_logging=log_logging,
        aspect=aspect,
        aspect_probs=probs,
        n_aspects=n_aspects,
        token_log_logging=tok_logging,
        use_token_log_logging=tokens,
    )
    order = fb.row_index
    lt = np.asarray(log_target, dtype=np.float64)[order]
    tt = None
    if tokens:
        tl = [tok_target[j] for j in order]  # type: ignore[index]
        counts = np.array([t.shape[0] for t in tl], dtype=np.int64)
        if fb.token_ptr is None or not np.array_equal(counts, np.diff(fb.token_ptr)):
            raise LogFormatError(
                "per-token target and logging log-probs have different token counts: the "
                "logging log-probs must come from the same tokenizer as the policy"
            )
        tt = np.concatenate(tl) if tl else np.zeros(0)
    return Prepared(data=data, feedback=fb, log_target=lt, token_log_target=tt, report=report,
                    embeddings=emb)


# ----------------------------------------------------------------------------- estimates
def _pope_kwargs(spec: EvalSpec) -> dict[str, Any]:
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


def _estimates(prep: Prepared, spec: EvalSpec) -> tuple[Any, dict[str, Any]]:
    """(POPE estimate, {baseline: Estimate}) of a prepared chunk."""
    import pope
    from pope import estimators as est

    fb = prep.feedback
    kwargs = _pope_kwargs(spec)
    token = spec.weighting == "token_mean"
    res = pope.evaluate(
        fb,
        None if token else prep.log_target,
        token_log_target=prep.token_log_target if token else None,
        **kwargs,
    )
    base: dict[str, Any] = {}
    if spec.estimators:
        reward = _total_reward(res, fb, prep, spec)
        ll = fb.log_logging
        lt = prep.log_target
        for name in spec.estimators:
            if name == "ips":
                base[name] = est.ips(reward=reward, log_target=lt, log_logging=ll)
            elif name == "snips":
                base[name] = est.snips(reward=reward, log_target=lt, log_logging=ll)
            elif name == "clipped_ips":
                base[name] = est.ips(
                    reward=reward, log_target=lt, log_logging=ll, clip=spec.clipped_ips_clip
                )
            elif name == "sub_gaussian_ips":
                base[name] = est.sub_gaussian_ips(
                    reward=reward, log_target=lt, log_logging=ll, lam=0.5
                )
    return res, base


def _total_reward(res: Any, fb: Any, prep: Prepared, spec: EvalSpec) -> np.ndarray:
    """Per-response total reward :math:`r + \\lambda d` used by the baselines."""
    r = res.reward if res.reward is not None else fb.rewards(
        _pope_kwargs(spec)["reward_normalization"]
    )
    if spec.lam == 0 or res.diversity_reward is None:
        return np.asarray(r, dtype=np.float64)
    return np.asarray(r + spec.lam * res.diversity_reward, dtype=np.float64)


@dataclass
class EvalStats:
    """Mergeable statistics of an evaluation over a set of whole prompts.

    ``a + b`` merges disjoint sets of prompts; :meth:`finalize` gives the estimates.
    """

    pope: Any
    baselines: dict[str, Any]
    report: ValidationReport
    n_prompts: int = 0
    n_responses: int = 0

    def __add__(self, other: EvalStats) -> EvalStats:
        if not isinstance(other, EvalStats):
            return NotImplemented
        if self.pope is None:
            pope_s = other.pope
        elif other.pope is None:
            pope_s = self.pope
        else:
            pope_s = self.pope + other.pope
        keys = set(self.baselines) | set(other.baselines)
        base = {}
        for k in keys:
            a, b = self.baselines.get(k), other.baselines.get(k)
            base[k] = a if b is None else b if a is None else a + b
        return EvalStats(
            pope=pope_s,
            baselines=base,
            report=self.report + other.report,
            n_prompts=self.n_prompts + other.n_prompts,
            n_responses=self.n_responses + other.n_responses,
        )

    def finalize(self, spec: EvalSpec) -> EvalResult:
        """The estimates these statistics determine."""
        if self.pope is None:
            raise LogFormatError(
                f"no valid rows to evaluate ({self.report.summary()})", self.report
            )
        return EvalResult(
            pope=self.pope.estimate(spec.alpha),
            baselines={k: v.estimate(spec.alpha) for k, v in self.baselines.items()},
            report=self.report,
            n_prompts=self.n_prompts,
            n_responses=self.n_responses,
            spec=spec,
        )


@dataclass
class EvalResult:
    """Estimates of an evaluation run, with the data report.

    Attributes
    ----------
    pope : PopeEstimate
        ``.relevance``, ``.diversity``, ``.total`` estimates.
    baselines : dict[str, Estimate]
    report : ValidationReport
        Rows read and the bad rows (skipped).
    n_prompts, n_responses : int
        Evaluated (after skipping bad rows).
    spec : EvalSpec
    """

    pope: Any
    baselines: dict[str, Any]
    report: ValidationReport
    n_prompts: int
    n_responses: int
    spec: EvalSpec
    prepared: Prepared | None = None  # in memory only: the rows behind the estimates

    def rows(self) -> list[tuple[str, Any]]:
        """``(label, Estimate)`` rows of the results table."""
        out = [
            ("POPE relevance", self.pope.relevance),
            ("POPE diversity", self.pope.diversity),
            ("POPE total", self.pope.total),
        ]
        labels = {
            "ips": "IPS (total reward)",
            "snips": "SNIPS (total reward)",
            "clipped_ips": f"clipped IPS, M={self.spec.clipped_ips_clip:g} (total)",
            "sub_gaussian_ips": "sub-Gaussian IPS (total reward)",
        }
        for k in self.spec.estimators:
            if k in self.baselines:
                out.append((labels[k], self.baselines[k]))
        return [(k, v) for k, v in out if v is not None]

    def warnings(self, ess_fraction: float = 0.1) -> list[str]:
        """Warnings for the user: small effective sample sizes, skipped rows."""
        msgs = []
        seen = set()
        for label, e in self.rows():
            d = e.diagnostics
            n = d.n
            if n and math.isfinite(d.ess) and d.ess < ess_fraction * n:
                key = (round(d.ess, 6), n)
                if key in seen:
                    continue
                seen.add(key)
                msgs.append(
                    f"{label}: effective sample size {d.ess:.1f} is below "
                    f"{100 * ess_fraction:g}% of n={n}; the target policy is far from the "
                    "logging policy and the estimate is unreliable (consider clip=M)"
                )
        if self.report.n_bad:
            msgs.append(
                f"{self.report.n_bad} of {self.report.n_rows} rows were skipped as bad "
                "(see the data report)"
            )
        return msgs

    def table(self, method: str = "normal") -> str:
        """The estimates as an aligned text table (intervals by ``method``)."""
        a = self.spec.alpha
        head = (f"{'estimator':<34} {'value':>9} {'stderr':>9} "
                f"{f'{100 * (1 - a):g}% CI':>21} {'ESS':>9} {'max w':>9} {'clipped':>7}")
        lines = [head, "-" * len(head)]
        for label, e in self.rows():
            lo, hi = e.ci(method=method)
            d = e.diagnostics
            lines.append(
                f"{label:<34} {e.value:>9.4f} {e.stderr:>9.4f} "
                f"{f'[{lo:.4f}, {hi:.4f}]':>21} {_fmt(d.ess):>9} {_fmt(d.max_weight):>9} "
                f"{_fmt(d.clipped_fraction, pct=True):>7}"
            )
        ex = self.pope.diversity.diagnostics.extra
        deg = ex.get("diversity_degree")
        lines.append(
            f"POPE diversity: {self.spec.diversity}, estimator {ex.get('diversity_estimator')}"
            + (f", degree {deg}" if deg else "")
            + ("; baselines estimate r + lambda d with the plug-in d" if self.baselines else ""))
        for label, e in self.rows():
            note = e.interval_note()
            if note:
                lines.append(f"  {label}: {note}")
        return "\n".join(lines)

    def to_dict(self, method: str = "normal", ess_fraction: float = 0.1) -> dict[str, Any]:
        """JSON-friendly results (estimates, diagnostics, data report, settings)."""

        def est(e: Any) -> dict[str, Any]:
            d = dict(e.to_dict())
            d["ci_lower"], d["ci_upper"] = e.ci(method=method)
            d["ci_method"] = method
            ex = e.diagnostics.extra
            for key in ("diversity_estimator", "diversity_degree", "pair_ess_fraction",
                        "single_response_prompt_fraction"):
                if key in ex:
                    d[key] = ex[key]
            return {k: _json_float(v) for k, v in d.items()}

        return {
            "pope": {
                "relevance": est(self.pope.relevance),
                "diversity": est(self.pope.diversity),
                "total": est(self.pope.total),
            },
            "baselines": {k: est(v) for k, v in self.baselines.items()},
            "n_prompts": self.n_prompts,
            "n_responses": self.n_responses,
            "data": self.report.to_dict(),
            "warnings": self.warnings(ess_fraction),
            "settings": self.spec.to_dict(),
        }


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if pct:
        return f"{100 * x:.1f}%"
    return f"{x:.4g}"


def _json_float(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _stats_of(prep: Prepared, spec: EvalSpec) -> EvalStats:
    fb = prep.feedback
    if fb.n_responses == 0:
        return EvalStats(None, {}, prep.report)
    res, base = _estimates(prep, spec)
    return EvalStats(
        pope=res.stats,
        baselines={k: v.stats for k, v in base.items()},
        report=prep.report,
        n_prompts=fb.n_prompts,
        n_responses=fb.n_responses,
    )


# ----------------------------------------------------------------------------- pre-pass
def _needs_prepass(spec: EvalSpec) -> bool:
    return (
        (spec.kmeans and spec.centers is None)
        or (spec.reward_normalization == "global_max" and spec.signal_scale is None)
        or (spec.aspects == "labels" and spec.aspect_names is None and spec.n_aspects is None)
    )


def _fit_centers(emb: np.ndarray, spec: EvalSpec) -> np.ndarray:
    from pope.aspects import kmeans

    if emb.shape[0] < int(spec.n_aspects):  # type: ignore[arg-type]
        raise LogFormatError(
            f"k-means with {spec.n_aspects} aspects needs at least that many valid rows, "
            f"got {emb.shape[0]}"
        )
    return kmeans(emb, int(spec.n_aspects), seed=spec.seed).centers  # type: ignore[arg-type]


def _complete_spec(
    chunks: Iterable[tuple[int, Any]], spec: EvalSpec, *, fit_rows: int, n_raw_rows: int | None
) -> EvalSpec:
    """One pass without scoring: global signal max, aspect vocabulary, k-means centers."""
    sig_max = 0.0
    vocab: set[Any] = set()
    max_label = -1
    labels_are_text = False
    sample: list[np.ndarray] = []
    n_sample = 0
    for offset, frame in chunks:
        # validity is judged as in the real pass (same required fields and checks)
        full = _validate(frame, spec, offset)
        keep = ~np.isin(full.rows, full.report.bad_rows)
        if spec.on_error == "fail" and not full.report.ok:
            raise LogFormatError(
                f"{full.report.summary()}\n(use --on-error skip / on_error='skip' to drop the "
                "bad rows and go on)",
                full.report,
            )
        if keep.any():
            sig_max = max(sig_max, float(full.signal[keep].max()))
        # the aspect vocabulary is taken over all rows with a label, as in memory
        col = spec.columns.aspect
        if spec.aspects == "labels" and full.aspect is not None:
            vals = frame[col].to_numpy(dtype=object)
            if full.aspect_names is not None:
                labels_are_text = True
                vocab.update(str(v) for v in vals if not _null(v))
            elif full.aspect.size:
                max_label = max(max_label, int(full.aspect.max()))
        if spec.kmeans and n_sample < fit_rows and keep.any():
            kept = full.select(keep)
            take = kept.select(np.arange(min(len(kept), fit_rows - n_sample)))
            sample.append(_embeddings(take, spec, n_raw_rows))
            n_sample += len(take)
    upd: dict[str, Any] = {}
    if spec.reward_normalization == "global_max" and spec.signal_scale is None:
        upd["signal_scale"] = sig_max
    if spec.aspects == "labels" and spec.aspect_names is None and spec.n_aspects is None:
        if labels_are_text:
            upd["aspect_names"] = tuple(sorted(vocab))
        else:
            upd["n_aspects"] = max(max_label + 1, 1)
    if spec.kmeans and spec.centers is None:
        if not sample:
            raise LogFormatError("no valid rows to fit the k-means aspects on")
        upd["centers"] = _fit_centers(np.concatenate(sample), spec)
    return replace(spec, **upd)


# ----------------------------------------------------------------------------- in memory
def evaluate_logs(
    source: Any,
    spec: EvalSpec,
    *,
    format: Format | None = None,
    split: str | None = None,
) -> EvalResult:
    """Evaluate a whole log in memory (full estimates: bootstrap intervals, contributions).

    Parameters
    ----------
    source : path, pandas.DataFrame, pyarrow.Table or datasets.Dataset
    spec : EvalSpec
    format, split
        See :func:`pope.io.read_table`.

    Returns
    -------
    EvalResult
    """
    cols = spec.columns
    frame = read_table(source, format=format, split=split,
                       text_columns=(cols.prompt_id, cols.prompt, cols.response))
    n_raw = len(frame)
    if spec.kmeans and spec.centers is None:
        data = _validate(frame, spec, 0)
        if spec.on_error == "fail" and not data.report.ok:
            raise LogFormatError(
                f"{data.report.summary()}\n(use --on-error skip / on_error='skip' to drop the "
                "bad rows and go on)",
                data.report,
            )
        kept = data.select(~np.isin(data.rows, data.report.bad_rows))
        spec = replace(spec, centers=_fit_centers(_embeddings(kept, spec, n_raw), spec))
    prep = prepare(frame, spec, n_raw_rows=n_raw)
    if prep.feedback.n_responses == 0:
        raise LogFormatError(f"no valid rows to evaluate ({prep.report.summary()})", prep.report)
    res, base = _estimates(prep, spec)
    return EvalResult(
        pope=res,
        baselines=base,
        report=prep.report,
        n_prompts=prep.feedback.n_prompts,
        n_responses=prep.feedback.n_responses,
        spec=spec,
        prepared=prep,
    )


# ----------------------------------------------------------------------------- streaming
def _key(v: Any, row: int | None = None) -> Any:
    """The key of a raw prompt id under the one id rule (:func:`pope._validation.normalize_id`).

    3 and 3.0 are the same id, '3' is a different one (and a log must not mix the two
    types: :func:`iter_prompt_chunks` checks that across chunks, :mod:`pope.io` within one).
    Missing values are returned as they are (validation reports them); a dict / list / bool
    id is a :class:`LogFormatError`.
    """
    if _null(v):
        return v
    try:
        return normalize_id(v, "prompt_id", row)
    except (TypeError, ValueError) as e:
        raise LogFormatError(str(e)) from None


def iter_prompt_chunks(
    chunks: Iterable[Any], prompt_id: str = "prompt_id"
) -> Iterator[tuple[int, Any]]:
    """Re-cut raw chunks so that no prompt is split: ``(first_row_number, frame)`` pairs.

    The rows of the prompt at the end of each chunk are carried over to the next chunk (a
    prompt larger than a chunk is carried until it ends). Rows with a missing ``prompt_id``
    are passed through (validation reports them).

    Raises
    ------
    LogFormatError
        A prompt reappears after its rows were emitted (rows of a prompt are not contiguous),
        or ``prompt_id`` is not a column.
    """
    import pandas as pd

    done: set[Any] = set()
    kinds: dict[type, int] = {}  # id type -> first row number with it (int and str must not mix)
    carry = None
    offset = 0

    def emit(frame: Any, start: int) -> tuple[int, Any]:
        values = frame[prompt_id].to_numpy(dtype=object)
        keys = [(start + i, _key(v, start + i)) for i, v in enumerate(values) if not _null(v)]
        ids = {k for _, k in keys}
        for r, k in keys:
            kinds.setdefault(type(k), r)
        if len(kinds) > 1:
            rows = ", ".join(f"row {r} is {t.__name__}" for t, r in sorted(
                kinds.items(), key=lambda kv: kv[0].__name__))  # fmt: skip
            raise LogFormatError(
                f"prompt_id ({prompt_id!r}) mixes int and str values (the first {rows}); use "
                "one type for all ids"
            )
        again = ids & done
        if again:
            pid = sorted(map(str, again))[0]
            raise LogFormatError(
                f"prompt {pid!r} appears again in rows {start}..{start + len(frame) - 1} after "
                "its earlier rows were processed: streaming needs the rows of each prompt to "
                "be contiguous (sort the log by prompt_id), or evaluate in memory"
            )
        done.update(ids)
        return start, frame.reset_index(drop=True)

    for raw in chunks:
        if prompt_id not in raw.columns:
            raise LogFormatError(
                f"required column {prompt_id!r} not found; the log has columns "
                f"{sorted(map(str, raw.columns))}"
            )
        frame = raw if carry is None else pd.concat([carry, raw], ignore_index=True)
        if len(frame) == 0:
            continue
        ids = frame[prompt_id].to_numpy(dtype=object)
        last = ids[-1]
        j = len(frame) - 1
        for i, v in enumerate(ids):  # a bad id raises here, naming its row (first first)
            _key(v, offset + i)
        while j > 0 and _same(ids[j - 1], last):
            j -= 1
        if j == 0:
            carry = frame
            continue
        yield emit(frame.iloc[:j], offset)
        offset += j
        carry = frame.iloc[j:]
    if carry is not None and len(carry):
        yield emit(carry, offset)


def _null(v: Any) -> bool:
    from pope.io import is_missing

    return is_missing(v)


def _same(a: Any, b: Any) -> bool:
    if _null(a) or _null(b):
        return _null(a) and _null(b)
    return bool(_key(a) == _key(b))


def evaluate_stream(
    source: Any,
    spec: EvalSpec,
    *,
    chunk_rows: int = 50_000,
    format: Format | None = None,
    split: str | None = None,
    fit_rows: int = 100_000,
) -> EvalResult:
    """Evaluate a log too large for memory, chunk by chunk, merging statistics.

    A first pass without scoring runs only when needed: for ``global_max`` normalisation (the
    global signal maximum), for aspect labels without ``aspect_names``/``n_aspects`` (the label
    vocabulary), and for k-means aspects without ``spec.centers`` (fitted on the embeddings of
    the first ``fit_rows`` valid rows; in memory, on all rows).

    Parameters
    ----------
    source : path (Parquet file or directory, JSON Lines, CSV/TSV, datasets dir) or frame
    spec : EvalSpec
    chunk_rows : int
        Rows read at a time (a prompt spanning a chunk boundary is carried over).
    format, split
        See :func:`pope.io.read_table`.
    fit_rows : int
        Rows used to fit k-means centers when they are not given.

    Returns
    -------
    EvalResult
        Point estimates, standard errors, normal/t intervals and diagnostics equal (up to
        rounding) to :func:`evaluate_logs`; no bootstrap or per-sample contributions.
    """
    cols = spec.columns
    text = (cols.prompt_id, cols.prompt, cols.response)

    def chunks() -> Iterator[tuple[int, Any]]:
        raw = iter_raw_chunks(source, chunk_rows, format=format, split=split, text_columns=text)
        return iter_prompt_chunks(raw, cols.prompt_id)

    n_raw = None
    if spec.aspects == "npy":
        n_raw = sum(len(f) for _, f in chunks())
    if _needs_prepass(spec):
        spec = _complete_spec(chunks(), spec, fit_rows=fit_rows, n_raw_rows=n_raw)
    total: EvalStats | None = None
    for offset, frame in chunks():
        s = _stats_of(prepare(frame, spec, row_offset=offset, n_raw_rows=n_raw), spec)
        total = s if total is None else total + s
    if total is None:
        raise LogFormatError("the log has no rows")
    return total.finalize(spec)


# ----------------------------------------------------------------------------- distributed
def map_partition(frame: Any, spec: EvalSpec) -> EvalStats:
    """Statistics of one partition of *whole prompts* (engine-agnostic map step).

    ``spec`` must be complete (see :func:`prepare_spec`): fixed aspect vocabulary or
    ``n_aspects``, k-means ``centers`` and ``signal_scale`` where needed, so every partition
    uses the same settings. A ``__row__`` column, if present, gives global row numbers for the
    data report.
    """
    if len(frame) == 0:  # an empty partition adds nothing
        return EvalStats(None, {}, ValidationReport(0, {}))
    prep = prepare(frame, spec)
    return _stats_of(prep, spec)


def merge(stats: Iterable[EvalStats]) -> EvalStats:
    """Add partition statistics (the reduce step); order does not matter."""
    total: EvalStats | None = None
    for s in stats:
        total = s if total is None else total + s
    if total is None:
        raise ValueError("merge needs at least one EvalStats")
    return total


def prepare_spec(source: Any, spec: EvalSpec, *, chunk_rows: int = 50_000,
                 fit_rows: int = 100_000) -> EvalSpec:
    """Complete ``spec`` for distributed runs with one local streaming pass when needed."""
    if not _needs_prepass(spec):
        return spec
    cols = spec.columns
    raw = iter_raw_chunks(source, chunk_rows,
                          text_columns=(cols.prompt_id, cols.prompt, cols.response))
    return _complete_spec(iter_prompt_chunks(raw, cols.prompt_id), spec, fit_rows=fit_rows,
                          n_raw_rows=None)


def bucket_of(prompt_ids: Any, num_buckets: int) -> np.ndarray:
    """Stable bucket ``0..num_buckets-1`` of each prompt id (same in every process).

    The bucket is a hash of the id's string under the one id rule (3 and 3.0 are one id).
    Integer and all-string columns (a ``pandas.Series`` or a typed array) are hashed without a
    Python loop; other arrays are normalised element by element.
    """
    import pandas as pd

    s = prompt_ids if isinstance(prompt_ids, pd.Series) else pd.Series(np.asarray(prompt_ids))
    if pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        keys = pd.Series(s.to_numpy().astype(str), dtype=object)
    elif pd.api.types.infer_dtype(s, skipna=False) == "string":
        keys = pd.Series(s.to_numpy(dtype=object), dtype=object)
    else:
        keys = pd.Series([str(_key(v)) for v in s.to_numpy(dtype=object)], dtype=object)
    h = pd.util.hash_pandas_object(keys, index=False).to_numpy()
    return (h % np.uint64(num_buckets)).astype(np.int64)


def __getattr__(name: str) -> Any:
    """``evaluate_ray`` / ``evaluate_spark`` live in :mod:`pope.engines` (re-exported here)."""
    if name in ("evaluate_ray", "evaluate_spark"):
        from pope import engines

        return getattr(engines, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
