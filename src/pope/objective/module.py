r"""The :class:`PopeObjective` module: options, input glue, aspect rows.

The forward checks its arguments, turns the policy's scores into
:class:`~pope.objective.inputs.PolicyScores` (:mod:`pope.objective.inputs`), reduces the
per-token logging and reference log-probs, and hands the (S,) tensors to
:func:`pope.objective.core.evaluate`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch
from torch import nn

from pope import ops
from pope.distributed import DistInfo, all_reduce, dist_info
from pope.loo_rewards import reward_coefficients
from pope.objective import core, inputs
from pope.objective.checks import (
    check_finite,
    check_float,
    check_int,
    check_shape,
    check_tensor,
    choice,
    first_bad,
    work_dtype,
)
from pope.objective.results import PopeOutput
from pope.options import (
    BASELINES,
    COVERAGES,
    DIVERSITIES,
    GRAD_REDUCTIONS,
    OBJECTIVE_DIVERSITY_ESTIMATORS,
    TRUNCATIONS,
    WEIGHTINGS,
    Baseline,
    Coverage,
    Diversity,
    GradReduction,
    Truncation,
    Weighting,
)
from pope.options import ObjectiveDiversityEstimator as DiversityEstimator

__all__ = [
    "Baseline",
    "Coverage",
    "Diversity",
    "DiversityEstimator",
    "GradReduction",
    "PopeObjective",
    "Truncation",
    "Weighting",
]

# Every option type is defined once, in pope.options (DiversityEstimator here is
# pope.options.ObjectiveDiversityEstimator: the training reward has no jackknife); for coverage
# ``"snips"`` is still accepted (DeprecationWarning) and means ``"self_normalized"``.


class PopeObjective(nn.Module):
    r"""POPE off-policy loss: importance-weighted relevance + coverage-diversity reward.

    See the module docstring of :mod:`pope.objective` for the formulas.

    Parameters
    ----------
    lam : float
        :math:`\lambda \ge 0`, weight of the diversity reward (default 1).
    clip : float, optional
        Truncation level :math:`M > 0` of the importance ratio (``None``: no truncation).
    ppo_eps : float, optional
        PPO clip range :math:`\epsilon \in (0, 1)` (``None``: no PPO clipping).
    weighting : {"sequence", "token_mean"}
    baseline : {"loo", "mean", "none"}
        ``"loo"`` is the default. ``"mean"``: the weighted mean of :math:`R` over the prompt
        (includes response :math:`k`, and with the leave-one-out diversity reward the
        others' rewards depend on :math:`y_k`, so the diversity gradient is biased: see
        ``docs/training.md``);
        ``"loo"``: :math:`b_{ik} = \sum_{l\ne k} w^e_l r_l / \sum_{l\ne k} w^e_l +
        \lambda c_0`, a function of the other responses only, so the gradient stays
        unbiased (the relevance part is 0 where the others' weight share is below
        :math:`10^{-9}`, a guard on the deletion); ``"none"``: 0.
    coverage : {"self_normalized", "ips"}
        Self-normalised per-prompt coverage, or divided by :math:`K_i` (the spelling of
        :func:`pope.evaluate`; the old spelling ``"snips"`` is accepted with a
        ``DeprecationWarning`` and means ``"self_normalized"``).
    diversity : {"coverage", "gini_simpson", "response_entropy"}
        The diversity functional, as in :func:`pope.evaluate`: Shannon coverage entropy,
        Gini-Simpson coverage :math:`(1 - \sum_c p_c^2)/(1 - 1/C)` (always the
        leave-one-out reward), or the per-response entropy lower bound.
    diversity_estimator : {"polynomial", "plugin"}
        For ``diversity="coverage"``: ``"polynomial"`` (default), the leave-one-out
        U-statistic reward of the minimax polynomial of degree ``diversity_degree``, whose
        gradient is unbiased for :math:`\nabla D_L` at any :math:`K`
        (:mod:`pope.loo_rewards`); ``"plugin"``, the reward
        :math:`-q\cdot\log\hat p/\log C` whose :math:`\hat p` contains the response itself
        (biased gradient at finite :math:`K`).
    diversity_degree : int, optional
        :math:`L` of the polynomial reward (1..8; default 4; prompts use
        :math:`\min(L, K_i)`).
    truncation : {"estimator", "gradient"}
        How ``clip`` acts on the gradient (see the module docstring).
    beta : float
        KL coefficient :math:`\beta \ge 0`; ``beta > 0`` needs per-token reference log-probs.
    num_aspects : int, optional
        :math:`C` for hard aspect labels (inferred as ``max(label) + 1`` over all ranks when
        omitted; soft rows give :math:`C` by their width).
    ignore_index : int
        Label value outside the response (default -100).
    grad_reduction : {"mean", "sum"}
        How gradients are combined across ranks (``"mean"`` for DDP/FSDP).
    process_group : optional
        ``torch.distributed`` group to reduce over (``None``: the default group, when
        initialised).
    distributed : bool, optional
        ``None``: auto-detect; ``False``: never run collectives (each rank on its own).
    backend : str, optional
        Passed to :func:`pope.ops.sequence_logprob`.
    """

    lam: float
    clip: float | None
    ppo_eps: float | None
    weighting: Weighting
    baseline: Baseline
    coverage: Coverage
    diversity: Diversity
    diversity_estimator: DiversityEstimator
    diversity_degree: int | None
    truncation: Truncation
    grad_reduction: GradReduction
    beta: float
    num_aspects: int | None
    ignore_index: int
    process_group: Any
    distributed: bool | None
    backend: str | None

    def __init__(
        self,
        *,
        lam: float = 1.0,
        clip: float | None = None,
        ppo_eps: float | None = None,
        weighting: Weighting = "sequence",
        baseline: Baseline = "loo",
        coverage: Coverage = "self_normalized",
        diversity: Diversity = "coverage",
        diversity_estimator: DiversityEstimator = "polynomial",
        diversity_degree: int | None = None,
        truncation: Truncation = "estimator",
        beta: float = 0.0,
        num_aspects: int | None = None,
        ignore_index: int = -100,
        grad_reduction: GradReduction = "mean",
        process_group: Any = None,
        distributed: bool | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("lam", lam), ("beta", beta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"{name} must be a finite float, got {v!r}")
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if clip is not None and (
            isinstance(clip, bool)
            or not isinstance(clip, (int, float))
            or not (clip > 0 and math.isfinite(clip))
        ):
            raise ValueError(f"clip must be a finite positive float or None, got {clip!r}")
        if ppo_eps is not None and (
            isinstance(ppo_eps, bool)
            or not isinstance(ppo_eps, (int, float))
            or not 0 < ppo_eps < 1
        ):
            raise ValueError(f"ppo_eps must lie in (0, 1) or be None, got {ppo_eps!r}")
        if num_aspects is not None and (
            isinstance(num_aspects, bool) or not isinstance(num_aspects, int) or num_aspects < 1
        ):
            raise ValueError(f"num_aspects must be a positive int or None, got {num_aspects!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        if backend is not None:
            if not isinstance(backend, str):
                raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
            if backend not in (*ops.OP_BACKENDS, "auto"):
                raise ValueError(
                    f"backend must be one of {ops.OP_BACKENDS}, 'auto' or None, got {backend!r}"
                )
        self.lam = float(lam)
        self.clip = None if clip is None else float(clip)
        self.ppo_eps = None if ppo_eps is None else float(ppo_eps)
        self.weighting = choice(weighting, "weighting", WEIGHTINGS)
        self.baseline = choice(baseline, "baseline", BASELINES)
        if coverage == "snips":
            warnings.warn(
                "coverage='snips' is deprecated, use coverage='self_normalized' (the spelling of "
                "pope.evaluate and the CLI); 'snips' will be removed in the next release",
                DeprecationWarning,
                stacklevel=2,
            )
            coverage = "self_normalized"
        self.coverage = choice(coverage, "coverage", COVERAGES)
        self.diversity = choice(diversity, "diversity", DIVERSITIES)
        self.diversity_estimator = choice(
            diversity_estimator, "diversity_estimator", OBJECTIVE_DIVERSITY_ESTIMATORS
        )
        if diversity == "gini_simpson" and diversity_estimator == "plugin":
            raise ValueError(
                "diversity='gini_simpson' always uses the leave-one-out U-statistic reward; "
                "diversity_estimator='plugin' applies to diversity='coverage' only"
            )
        if diversity_degree is not None and not (
            diversity == "coverage" and diversity_estimator == "polynomial"
        ):
            raise ValueError(
                "diversity_degree applies to diversity='coverage' with "
                f"diversity_estimator='polynomial', got diversity={diversity!r}, "
                f"diversity_estimator={diversity_estimator!r}"
            )
        reward_coefficients("coverage", 2, diversity_degree)  # validates the degree
        self.diversity_degree = diversity_degree
        self.truncation = choice(truncation, "truncation", TRUNCATIONS)
        self.grad_reduction = choice(grad_reduction, "grad_reduction", GRAD_REDUCTIONS)
        self.beta = float(beta)
        self.num_aspects = num_aspects
        self.ignore_index = int(ignore_index)
        self.process_group = process_group
        self.distributed = distributed
        self.backend = backend

    def extra_repr(self) -> str:
        return (
            f"lam={self.lam}, clip={self.clip}, ppo_eps={self.ppo_eps}, "
            f"weighting={self.weighting!r}, baseline={self.baseline!r}, "
            f"coverage={self.coverage!r}, diversity={self.diversity!r}, "
            f"diversity_estimator={self.diversity_estimator!r}, "
            f"diversity_degree={self.diversity_degree}, beta={self.beta}"
        )

    def forward(
        self,
        logits: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        rewards: torch.Tensor,
        prompt_index: torch.Tensor,
        log_logging: torch.Tensor,
        aspects: torch.Tensor,
        seq_index: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        lm_head_weight: torch.Tensor | None = None,
        token_logp: torch.Tensor | None = None,
        logp: torch.Tensor | None = None,
        num_tokens: torch.Tensor | None = None,
        ref_logprobs: torch.Tensor | None = None,
        normalizer: float | None = None,
    ) -> PopeOutput:
        r"""Evaluate the loss and the estimates on a batch of ``S`` sequences.

        Give the current policy's scores in exactly one of four ways:

        * ``logits`` (B, T, V) with ``labels`` (B, T) — one sequence per row (or ``seq_index``
          (B, T) for packed rows) — or ``logits`` (N, V) with ``labels`` (N,) and
          ``seq_index`` (N,);
        * ``hidden_states`` (B, T, H) or (N, H) with ``lm_head_weight`` (V, H) and ``labels``
          (chunked path, :func:`linear_sequence_logprob`);
        * ``token_logp``, per-token :math:`\log\pi_\theta` with the layout of ``labels``;
        * ``logp`` (S,), sequence :math:`\log\pi_\theta` (with ``num_tokens`` (S,) for
          ``token_mean``; no KL).

        ``labels`` are *aligned* with the logits: ``labels[..., t]`` is the token predicted by
        ``logits[..., t, :]``, ``ignore_index`` outside the response. For HF-style labels
        (equal to ``input_ids``) apply :func:`shift_labels` first.

        Parameters
        ----------
        logits, labels, seq_index, hidden_states, lm_head_weight, token_logp, logp, num_tokens
            See above.
        rewards : (S,) float in [0, 1]
        prompt_index : (S,) int
            Prompt id of each sequence; under ``torch.distributed`` it must be a *global* id
            (the same prompt has the same id on every rank).
        log_logging : (S,) float, or per-token with the layout of ``labels``
            :math:`\log\pi_0(y\mid x)` (per-token values are summed over the response).
        aspects : (S,) int in [0, C), or (S, C) float rows on the simplex
        ref_logprobs : per-token float with the layout of ``labels``, optional
            :math:`\log\pi_{ref}(y_t\mid\cdot)`; required when ``beta > 0``.
        normalizer : float, optional
            :math:`N` in :math:`-\frac1N\sum`; default the global number of sequences. Pass the
            number of sequences of the whole accumulated step to make micro-batch losses add
            up to the loss of the full step.

        Returns
        -------
        PopeOutput

        Raises
        ------
        TypeError
            An argument of the wrong type or dtype.
        ValueError
            Inconsistent shapes, NaN/inf, rewards outside [0, 1], empty responses, labels out
            of the vocabulary, aspect rows off the simplex, a missing input.
        """
        if normalizer is not None and (
            isinstance(normalizer, bool)
            or not isinstance(normalizer, (int, float))
            or not normalizer > 0
        ):
            raise ValueError(f"normalizer must be a positive number, got {normalizer!r}")
        rewards = check_float(rewards, "rewards")
        if rewards.dim() != 1 or rewards.shape[0] == 0:
            raise ValueError(f"rewards must be a non-empty (S,) tensor, got {tuple(rewards.shape)}")
        num_seqs = rewards.shape[0]
        device = rewards.device
        wd = work_dtype(device)
        need_tokens = self.beta > 0
        scores = inputs.policy_scores(
            logits=logits, labels=labels, seq_index=seq_index, hidden_states=hidden_states,
            lm_head_weight=lm_head_weight, token_logp=token_logp, logp=logp,
            num_tokens=num_tokens, ref_logprobs=ref_logprobs, num_seqs=num_seqs,
            ignore_index=self.ignore_index, need_tokens=need_tokens,
            token_mean=self.weighting == "token_mean", backend=self.backend,
        )  # fmt: skip
        lp = scores.logp
        out_dtype = torch.float64 if lp.dtype == torch.float64 else torch.float32
        check_finite(lp.detach(), "log pi_theta (the model's log-probs)")
        ll = inputs.sequence_log_logging(log_logging, scores, num_seqs, wd)
        self._check_rewards(rewards)
        prompt_index = check_int(prompt_index, "prompt_index")
        check_shape(prompt_index, (num_seqs,), "prompt_index")
        if bool((prompt_index < 0).any()):
            raise ValueError("prompt_index must be >= 0")

        info = dist_info(self.process_group, self.distributed)
        q = self._aspect_rows(aspects, num_seqs, wd, info)
        kl_seq = None
        if need_tokens:
            assert ref_logprobs is not None  # policy_scores requires it when need_tokens
            kl_seq = inputs.kl_per_sequence(ref_logprobs, scores, num_seqs, wd)
        counts = scores.counts
        return core.evaluate(
            self,
            lp.to(wd),
            ll.to(wd),
            None if counts is None else counts.to(wd),
            rewards.to(wd),
            q,
            prompt_index.to(device),
            kl_seq,
            normalizer,
            info,
            out_dtype,
        )

    @staticmethod
    def _check_rewards(rewards: torch.Tensor) -> None:
        check_finite(rewards, "rewards")
        if bool(((rewards < 0) | (rewards > 1)).any()):
            i = first_bad((rewards < 0) | (rewards > 1))
            raise ValueError(
                f"rewards must lie in [0, 1]; element {i} is {rewards[i].item()!r} "
                "(normalise raw signals, e.g. pope.data.normalize_signal)"
            )

    def _aspect_rows(
        self, aspects: Any, num_seqs: int, wd: torch.dtype, info: DistInfo
    ) -> torch.Tensor:
        aspects = check_tensor(aspects, "aspects")
        if aspects.is_floating_point():
            if aspects.dim() != 2 or aspects.shape[0] != num_seqs:
                raise ValueError(
                    f"soft aspects must be (S, C)=({num_seqs}, C), got {tuple(aspects.shape)}"
                )
            if self.num_aspects is not None and aspects.shape[1] != self.num_aspects:
                raise ValueError(
                    f"aspects has {aspects.shape[1]} columns, num_aspects={self.num_aspects}"
                )
            q = aspects.to(wd)
            check_finite(q, "aspects")
            if bool((q < 0).any()):
                raise ValueError("aspects rows must be >= 0")
            err = (q.sum(1) - 1).abs()
            if bool((err > 1e-4).any()):
                i = first_bad(err > 1e-4)
                raise ValueError(
                    f"aspects rows must sum to 1; row {i} sums to {q[i].sum().item()!r}"
                )
            return q
        a = check_int(aspects, "aspects")
        check_shape(a, (num_seqs,), "aspects")
        if bool((a < 0).any()):
            raise ValueError("aspects labels must be >= 0")
        c = self.num_aspects
        if c is None:
            c = int(all_reduce(a.max().reshape(1), "max", info).item()) + 1
        elif bool((a >= c).any()):
            raise ValueError(f"aspects label {int(a.max())} out of range for num_aspects={c}")
        return torch.nn.functional.one_hot(a, c).to(wd)
