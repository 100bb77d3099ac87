r"""Held-out evaluation of a policy while it trains, through the ``pope evaluate`` path.

:class:`HeldOutEvaluator` reads a held-out log once (and scores its logging log-probs once
when a logging model is given), then at every call scores the responses with the *current*
in-memory policy and runs :func:`pope.pipeline.evaluate_logs` on the log with those
log-probs in its ``log_target`` column. The result is an :class:`pope.pipeline.EvalResult`:
the same estimates, intervals, weight diagnostics and warnings as ``pope evaluate`` with the
same :class:`~pope.pipeline.EvalSpec` (same lambda, reward normalisation, weighting, clip,
aspects, tokenisation).

Aspects of the held-out log must come from the same aspect model as the training set: the
``aspect`` column, ``"none"``, or k-means with the *training* centres in ``spec.centers``
(refitting the clusters on the held-out rows would measure another diversity).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np

from pope.io import LogColumns, LogFormatError, read_table, validate_logs
from pope.pipeline import EvalResult, EvalSpec, evaluate_logs

__all__ = ["HeldOutEvaluator"]


class HeldOutEvaluator:
    """Evaluate in-memory policies on a held-out log.

    Parameters
    ----------
    source : path, pandas.DataFrame, pyarrow.Table or datasets.Dataset
        The held-out log (:func:`pope.io.read_table`); not modified.
    spec : EvalSpec
        Estimation, tokenisation and aspect settings. ``spec.policy`` must be ``None`` (the
        policy is the model passed to :meth:`evaluate`); ``spec.logging_model`` (a model
        directory) scores the logging log-probs once, here. k-means aspects need
        ``spec.centers`` (the training clustering).
    logging_model, logging_tokenizer : optional
        An in-memory logging model (instead of ``spec.logging_model``) for the same purpose.
    format, split
        See :func:`pope.io.read_table`.

    Raises
    ------
    ValueError
        ``spec.policy`` set, or k-means aspects without centres.
    pope.io.LogFormatError
        Bad rows with ``spec.on_error == "fail"``, missing columns.
    """

    def __init__(
        self,
        source: Any,
        spec: EvalSpec,
        *,
        logging_model: Any = None,
        logging_tokenizer: Any = None,
        format: Any = None,
        split: str | None = None,
    ) -> None:
        if spec.policy is not None:
            raise ValueError(
                "HeldOutEvaluator: spec.policy must be None (the policy is the "
                "model passed to evaluate)"
            )
        if spec.kmeans and spec.centers is None:
            raise ValueError(
                "held-out k-means aspects need the training centres "
                "(spec.centers, or --aspect-model FILE): refitting the clusters "
                "on the held-out log would measure another diversity"
            )
        cols = spec.columns
        if cols.log_target is None:
            cols = LogColumns.from_mapping({**cols.as_dict(), "log_target": "log_target"})
            spec = replace(spec, columns=cols)
        self.source = source if isinstance(source, (str, os.PathLike)) else "<frame>"
        frame = read_table(
            source,
            format=format,
            split=split,
            text_columns=(cols.prompt_id, cols.prompt, cols.response),
        )
        frame = frame.copy()  # the caller's frame stays as it was
        if cols.log_target in frame.columns:
            frame = frame.drop(columns=[cols.log_target])
        data = validate_logs(
            frame,
            columns=cols,
            require_text=True,
            require_log_logging=spec.logging_model is None and logging_model is None,
            aspect_names=spec.aspect_names,
            n_aspects=spec.n_aspects if spec.aspects == "labels" else None,
            use_aspects=spec.aspects == "labels",
        )
        if not data.report.ok and spec.on_error == "fail":
            raise LogFormatError(f"held-out log: {data.report.summary()}", data.report)
        self.valid = np.flatnonzero(~np.isin(data.rows, data.report.bad_rows))
        if self.valid.size == 0:
            raise LogFormatError("held-out log: no valid rows", data.report)
        assert data.prompt is not None and data.response is not None  # require_text=True
        self.prompts = [str(data.prompt[i]) for i in self.valid]
        self.responses = [str(data.response[i]) for i in self.valid]
        self.spec = replace(spec, logging_model=None, progress=False)
        if spec.logging_model is not None or logging_model is not None:
            from pope.scoring import load_causal_lm

            if logging_model is None:
                assert spec.logging_model is not None
                logging_model, logging_tokenizer = load_causal_lm(
                    spec.logging_model, device=spec.device, dtype=spec.dtype
                )
            ll = np.full(len(frame), np.nan)
            ll[self.valid] = self._score(logging_model, logging_tokenizer)
            name = cols.log_logging or "log_logging"
            frame[name] = ll
            if cols.log_logging is None:
                self.spec = replace(
                    self.spec,
                    columns=LogColumns.from_mapping({**cols.as_dict(), "log_logging": name}),
                )
        self.frame = frame

    @property
    def n_rows(self) -> int:
        """Rows of the held-out log (valid or not)."""
        return len(self.frame)

    def _score(self, model: Any, tokenizer: Any) -> np.ndarray:
        import torch

        from pope.scoring import score_responses

        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return np.asarray(
                    score_responses(
                        model,
                        tokenizer,
                        self.prompts,
                        self.responses,
                        batch_tokens=self.spec.batch_tokens,
                        chat_template=self.spec.chat_template,
                        add_eos=self.spec.add_eos,
                        head=self.spec.head,
                        progress=False,
                    ),
                    dtype=np.float64,
                )
        finally:
            model.train(was)

    def evaluate(self, model: Any, tokenizer: Any) -> EvalResult:
        """Estimates of ``model`` (the target policy) on the held-out log.

        The responses are scored with ``model`` (eval mode, no gradient; its train/eval mode
        is restored) and :func:`pope.pipeline.evaluate_logs` runs on the log with those
        log-probs, so the result is what ``pope evaluate`` reports for this model.
        """
        lt = np.full(len(self.frame), np.nan)
        lt[self.valid] = self._score(model, tokenizer)
        name = self.spec.columns.log_target
        assert name is not None  # set in __init__
        frame = self.frame.assign(**{name: lt})
        return evaluate_logs(frame, self.spec)
