r"""What an off-policy value means given where the logging log-probabilities came from.

Logs written by people (most public feedback data) carry no :math:`\log\pi_0(y \mid x)`. The
honest options (see ``docs/data-format.md``, "Logs without propensities"):

- **a declared reference model as the proxy** of :math:`\pi_0` (``pope evaluate
  --reference-model DIR``): the responses are scored with it and the weights are
  :math:`w = \pi_\theta(y \mid x) / \pi_{\mathrm{ref}}(y \mid x)`. The estimate is the target's
  value only if the logged responses are distributed as samples of the reference would be;
  otherwise it is a reweighting of the logged responses, usable to compare policies against
  the same reference, not as an absolute value. The intervals cover sampling noise, not the
  error of the proxy.
- **behaviour cloning with cross-fitting** (``pope fit-logging``,
  :func:`pope.train.behaviour_cloning.fit_logging_policy`): :math:`\log\pi_0` is *estimated*
  by small LMs fine-tuned on the logged responses of the other folds' prompts; the estimate is
  the target's value as far as the fitted policy matches whatever wrote the logs.
- **identical weights**: when the target equals the proxy on the logged responses (the base
  model used as both), every weight is 1 and every estimate is the plain average reward of the
  logged responses, i.e. the value of whatever wrote the logs. :func:`describe_propensity`
  detects it and says so.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["describe_propensity", "propensity_source", "weights_identically_one"]

#: Weights within this of 1 (mean and maximum) count as identically 1 (float32 scoring noise
#: of a sequence log-prob is about 1e-6 per 100 tokens; a real policy difference is far larger).
ONE_TOLERANCE = 1e-4


def weights_identically_one(result: Any, tol: float = ONE_TOLERANCE) -> bool:
    r"""Whether every importance weight of an evaluation is 1 (up to ``tol``).

    Uses the relevance diagnostics: :math:`\max_i w_i \le 1 + \mathrm{tol}` and
    :math:`\bar w \ge 1 - \mathrm{tol}`; since :math:`\bar w \le \max_i w_i`, both hold only
    when the weights sit at 1 (a single small weight among :math:`n` lowers the mean by
    :math:`(1 - w)/n`).

    Parameters
    ----------
    result : pope.pipeline.EvalResult
    tol : float
    """
    d = result.pope.relevance.diagnostics
    mx, mean = float(d.max_weight), float(d.mean_weight)
    if not (math.isfinite(mx) and math.isfinite(mean)):
        return False
    return mx <= 1 + tol and mean >= 1 - tol


def propensity_source(
    logging_model: str | None,
    reference_model: str | None,
    scored_by: str | None,
    behaviour_cloning: dict[str, Any] | None,
) -> tuple[str, str | None, str]:
    """``(source, model, meaning)`` of :func:`describe_propensity` before looking at the
    weights: what the declarations (arguments as there) say log pi0 is."""
    proxy = (
        "The estimates reweight the logged responses by pi_target/pi_reference: they are the "
        "target's value only if the logged responses are distributed like samples of the "
        "reference. Read them as a comparison of policies against this reference (higher: the "
        "target moves probability toward the better-rated logged responses), not as an "
        "absolute value; the intervals cover sampling noise, not the proxy's error."
    )
    if reference_model is not None:
        source, model = "reference model (proxy)", reference_model
        meaning = (
            f"log pi0 is taken from the declared reference model {reference_model}, not from the "
            "(unknown) process that wrote the logs. " + proxy
        )
    elif logging_model is None and behaviour_cloning is not None:
        k, model = behaviour_cloning.get("folds"), str(behaviour_cloning.get("model", "?"))
        lora = behaviour_cloning.get("lora")
        fitted = f"{model} with LoRA adapters (r={lora.get('r')})" if lora else f"copies of {model}"
        source = f"behaviour cloning, {k} folds"
        meaning = (
            f"log pi0 is an estimate: logging propensities estimated by behaviour cloning, {k} "
            f"folds (pope fit-logging): {fitted} fine-tuned on the logged responses "
            "of the other folds' prompts score each response, so none is scored by a model "
            "trained on it. The estimates are the target's value under the fitted logging "
            "policy, right as far as it matches whatever wrote the logs (and supports the "
            "target); the intervals cover sampling noise, not the error of the fitted "
            "propensities."
        )
    elif logging_model is None and scored_by is not None:
        source, model = "logged column scored by pope score", scored_by
        meaning = (
            f"log pi0 is the log's column scored with {scored_by} (pope score). Unless that "
            "model produced the logged responses it is a proxy of the logging policy. " + proxy
        )
    elif logging_model is not None:
        source, model = "logging model", logging_model
        meaning = (
            f"log pi0 is computed with {logging_model}, declared to be the policy that "
            "produced the logged responses; the estimates are off-policy estimates of the "
            "target's value under that declaration (and support of the target by it)."
        )
    else:
        source, model = "logged column", None
        meaning = (
            "log pi0 is the log's logging log-probability column; the estimates are off-policy "
            "estimates of the target's value (given support of the target by the logging policy)."
        )
    return source, model, meaning


def describe_propensity(
    result: Any,
    *,
    logging_model: str | None = None,
    reference_model: str | None = None,
    scored_by: str | None = None,
    behaviour_cloning: dict[str, Any] | None = None,
    rank_signal: bool = False,
    tol: float = ONE_TOLERANCE,
) -> dict[str, Any]:
    """Where :math:`\\log\\pi_0` came from, what the value then means, and warnings.

    Parameters
    ----------
    result : pope.pipeline.EvalResult
    logging_model : str, optional
        The model declared to be the logging policy (``--logging-model``).
    reference_model : str, optional
        The model declared as a *proxy* of an unknown logging process (``--reference-model``).
    scored_by : str, optional
        The model that ``pope score`` wrote the log's logging column with (from the Parquet
        metadata, :func:`pope.score_log.read_score_metadata`).
    behaviour_cloning : dict, optional
        The metadata of a logging column written by ``pope fit-logging`` (``method ==
        "behaviour_cloning"``, ``folds``, ``model``): :math:`\\log\\pi_0` is an estimate.
    rank_signal : bool
        The signals are within-prompt ranks (``--reward-normalization rank`` or the oasst rank
        rule): their plain average is 0.5 by construction.

    Returns
    -------
    dict
        ``source`` ("logged column", "logged column scored by pope score", "logging model",
        "reference model (proxy)" or "behaviour cloning, K folds"), ``model``,
        ``weights_identically_one``, ``meaning`` (a sentence for the output) and ``warnings``;
        with ``behaviour_cloning`` also ``folds``.
    """
    if logging_model is not None and reference_model is not None:
        raise ValueError("give a logging model or a reference model, not both")
    ones = weights_identically_one(result, tol)
    warnings = []
    source, model, meaning = propensity_source(
        logging_model, reference_model, scored_by, behaviour_cloning
    )
    is_proxy = reference_model is not None or (
        logging_model is None and (scored_by is not None or behaviour_cloning is not None)
    )
    if ones:
        stderr = float(result.pope.relevance.stderr)
        if stderr < 1e-12:
            rank_signal = True
        meaning = (
            "every importance weight is 1: the target gives the logged responses the same "
            "probabilities as the logging "
            + ("proxy" if is_proxy else "policy")
            + ", so each estimate is the plain average reward of the logged responses (the value "
            "of whatever wrote the logs) and says nothing about the target."
            + (
                " Every prompt has the same average reward here (standard error 0), as "
                "within-prompt rank signals have by construction (their average is 0.5): at "
                "equal weights such data cannot tell policies apart."
                if rank_signal
                else ""
            )
        )
        warnings.append(
            "all importance weights are 1 (target == logging "
            + ("proxy" if is_proxy else "policy")
            + " on these responses): the value is the log average, not an estimate for the "
            "target; evaluate a different target policy against this reference"
        )
    out = {
        "source": source,
        "model": model,
        "weights_identically_one": ones,
        "meaning": meaning,
        "warnings": warnings,
    }
    if behaviour_cloning is not None and source.startswith("behaviour cloning"):
        out["folds"] = behaviour_cloning.get("folds")
    return out
