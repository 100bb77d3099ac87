"""The option vocabulary of pope: one definition of each choice, used by the estimators, the
evaluation pipeline, the training objective, the trainer and the CLI.

Each option is a ``Literal`` type (for type checkers and signatures) and a tuple of its values
(for validation and ``argparse`` choices), defined together so they cannot drift apart.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "BASELINES",
    "COVERAGES",
    "DIVERSITIES",
    "DIVERSITY_ESTIMATORS",
    "GRAD_REDUCTIONS",
    "LM_HEADS",
    "MODEL_DTYPES",
    "OBJECTIVE_DIVERSITY_ESTIMATORS",
    "RELEVANCES",
    "REWARD_NORMALIZATIONS",
    "SCHEDULES",
    "TRUNCATIONS",
    "WEIGHTINGS",
    "Baseline",
    "Coverage",
    "Diversity",
    "DiversityEstimator",
    "GradReduction",
    "LMHead",
    "ModelDtype",
    "ObjectiveDiversityEstimator",
    "Relevance",
    "RewardNormalization",
    "Schedule",
    "Truncation",
    "Weighting",
    "check_choice",
]

#: self-normalised relevance (sum w r / sum w) or plain IPS (sum w r / N)
Relevance = Literal["snips", "ips"]
#: normaliser of the coverage: self-normalised weights or the IPS form
Coverage = Literal["self_normalized", "ips"]
#: the diversity functional
Diversity = Literal["coverage", "gini_simpson", "response_entropy"]
#: estimator of the Shannon coverage entropy (``diversity="coverage"``)
DiversityEstimator = Literal["polynomial", "jackknife", "plugin"]
#: the estimators the training objective can differentiate (the jackknife has no gradient)
ObjectiveDiversityEstimator = Literal["polynomial", "plugin"]
#: where a truncation of the importance ratio acts: the estimator's weight, or only the gradient
Truncation = Literal["estimator", "gradient"]
#: how the objective reduces the per-prompt gradient terms
GradReduction = Literal["mean", "sum"]
#: learning-rate schedule after warmup
Schedule = Literal["cosine", "constant"]
#: sequence importance ratio or its length-normalised per-token mean
Weighting = Literal["sequence", "token_mean"]
#: how a human signal becomes a reward in [0, 1]
RewardNormalization = Literal["max", "log1p", "rank", "global_max", "none"]
#: per-prompt baseline of the training objective
Baseline = Literal["loo", "mean", "none"]
#: the model's scores from its logits, or from its hidden states and LM head weight (chunked)
LMHead = Literal["logits", "hidden"]
#: the dtype a model is loaded in ("auto": bfloat16 on CUDA, float32 on CPU)
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]

RELEVANCES: tuple[Relevance, ...] = get_args(Relevance)
COVERAGES: tuple[Coverage, ...] = get_args(Coverage)
DIVERSITIES: tuple[Diversity, ...] = get_args(Diversity)
DIVERSITY_ESTIMATORS: tuple[DiversityEstimator, ...] = get_args(DiversityEstimator)
OBJECTIVE_DIVERSITY_ESTIMATORS: tuple[ObjectiveDiversityEstimator, ...] = get_args(
    ObjectiveDiversityEstimator
)
TRUNCATIONS: tuple[Truncation, ...] = get_args(Truncation)
GRAD_REDUCTIONS: tuple[GradReduction, ...] = get_args(GradReduction)
SCHEDULES: tuple[Schedule, ...] = get_args(Schedule)
WEIGHTINGS: tuple[Weighting, ...] = get_args(Weighting)
REWARD_NORMALIZATIONS: tuple[RewardNormalization, ...] = get_args(RewardNormalization)
BASELINES: tuple[Baseline, ...] = get_args(Baseline)
LM_HEADS: tuple[LMHead, ...] = get_args(LMHead)
MODEL_DTYPES: tuple[ModelDtype, ...] = get_args(ModelDtype)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
