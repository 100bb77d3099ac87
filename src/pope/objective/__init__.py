r"""The POPE off-policy training objective (:class:`PopeObjective`).

Given a batch of logged responses :math:`y_{ik}` to prompts :math:`x_i` (response :math:`k` of
prompt :math:`i`), their logging log-propensities :math:`\log\pi_0(y_{ik}\mid x_i)`, rewards
:math:`r_{ik}\in[0,1]` and aspect rows :math:`q_{ik}` on the simplex over :math:`C` aspects,
the objective computes the current :math:`\log\pi_\theta(y_{ik}\mid x_i)` (through
:func:`pope.ops.sequence_logprob`) and the surrogate loss

.. math::

    L(\theta) = -\frac{1}{N}\sum_{i,k} \tilde w_{ik}(\theta)\,(R_{ik} - b_i)
                \;+\; \beta\,\widehat{\mathrm{KL}},
    \qquad R_{ik} = r_{ik} + \lambda d_{ik},

whose gradient is :math:`-\frac1N\sum w (R-b)\nabla\log\pi_\theta` (with the ratio controls
below). All the pieces (METHOD.md §3-4):

* importance weight, in log space:
  :math:`\log w = \log\pi_\theta(y\mid x) - \log\pi_0(y\mid x)` (``weighting="sequence"``), or
  the per-token mean :math:`\log w = \frac1T\sum_t[\log\pi_\theta(y_t\mid\cdot) -
  \log\pi_0(y_t\mid\cdot)]` (``"token_mean"``; since the mean of the per-token log-ratios is
  the sequence log-ratio divided by the response length :math:`T`, a sequence-level
  :math:`\log\pi_0` suffices);
* estimator weight :math:`w^{e} = \min(w, M)` with ``clip=M`` (else :math:`w`), detached;
* coverage (stop-gradient), per prompt: :math:`\hat p(c\mid x_i) = \sum_k w^e_{ik}q_{ik}(c) /
  \sum_k w^e_{ik}` (``coverage="self_normalized"``), or :math:`/K_i` (``"ips"``);
* diversity reward (default ``diversity_estimator="polynomial"``, and
  ``diversity="gini_simpson"``): the leave-one-out U-statistic gradient reward
  :math:`\rho_{ik} = c_0 + \sum_{j=2}^{L_i} j g_j\, q_{ik}\cdot T^{(-k)}_{j-1}` of
  :mod:`pope.loo_rewards` (IPS, unbiased for :math:`\nabla D_L` at any :math:`K`; torch twin
  :mod:`pope.objective.loo`); with ``diversity_estimator="plugin"``:
  :math:`d_{ik} = -\sum_c q_{ik}(c)\log\hat p(c\mid x_i)/\log C` (terms with
  :math:`\hat p = 0` count 0; :math:`d = 0` when :math:`C = 1`), or the Jensen lower bound
  :math:`d_{ik} = H(q_{ik})/\log C` (``diversity="response_entropy"``). With self-normalised
  coverage,
  :math:`\sum_k w^e d / \sum_k w^e = H(\hat p(\cdot\mid x_i))/\log C` exactly;
* baseline :math:`b_i = \sum_k w^e_{ik} R_{ik} / \sum_k w^e_{ik}` (``baseline="mean"``) or 0
  (``"none"``), detached. With the baseline and no PPO clip the loss *value* is 0 (the
  weighted advantages sum to zero per prompt) while its gradient is not: it is a surrogate;
  read the estimates from the metrics;
* ratio control: ``clip=M`` truncates the ratio. ``truncation="estimator"`` (default) uses
  :math:`\tilde w = \min(w, M)` under autograd — the gradient of the clipped-IPS estimate, zero
  for sequences already at the cap; ``truncation="gradient"`` keeps the truncated-IS policy
  gradient :math:`\min(w,M)\,(R-b)\nabla\log\pi_\theta` for every sequence. ``ppo_eps=ε``
  replaces :math:`\tilde w A` by the pessimistic
  :math:`\min(\tilde w A, \mathrm{clamp}(\tilde w, 1-ε, 1+ε) A)` with :math:`A = R - b`.
  ``token_mean`` with ``ppo_eps`` is a sequence-level (GSPO-style) clipped objective;
* KL (``beta > 0``): the k3 estimator on the logged response tokens,
  :math:`k_3 = e^{\delta} - \delta - 1` with :math:`\delta = \log\pi_{ref}(y_t\mid\cdot) -
  \log\pi_\theta(y_t\mid\cdot)`, averaged over the tokens of each response and over the
  :math:`N` responses: :math:`\widehat{\mathrm{KL}} = \frac1N\sum_{s}\frac1{T_s}\sum_t k_{3,t}`.
  The tokens come from :math:`\pi_0`, not :math:`\pi_\theta`, and are not re-weighted: this
  is a penalty that keeps :math:`\pi_\theta` near :math:`\pi_{ref}` on the logged support
  (as in GRPO), not an unbiased estimate of :math:`\mathrm{KL}(\pi_\theta\|\pi_{ref})`.

:math:`N` is the global number of sequences (or ``normalizer``). The estimates returned with
the loss: relevance (clipped SNIPS of :math:`r`, :math:`\sum w^e r/\sum w^e`), diversity (the
estimate :func:`pope.evaluate` gives with the same options, :attr:`ObjectiveStats.diversity`),
total = relevance + :math:`\lambda` diversity, and the weight diagnostics of the raw
:math:`w` (ESS :math:`(\sum w)^2/\sum w^2`, mean, max, fraction of sequences
whose ratio was clipped).

Numerics: weights are formed from differences of log-probabilities in float64; every sum of
weights is shifted by the (per-prompt or global) maximum log weight, so no :math:`e^{\log w}`
is formed where it could overflow, except the unclipped ratio that enters the loss (use
``clip`` when weights can exceed ``1e300``).

Distributed (``torch.distributed`` initialised, DDP/FSDP): the per-prompt sums are all-reduced
keyed by the prompt index (a prompt's responses may lie on several ranks; use *global* prompt
ids), and :math:`N`, the denominators and the metrics are all-reduced, so every rank sees the
statistics of the concatenated batch. Each rank's loss holds only its local sequences, scaled
so that the data-parallel gradient reduction yields exactly the single-process gradient:
``grad_reduction="mean"`` (DDP/FSDP default, gradients averaged over :math:`W` ranks)
multiplies the local loss by :math:`W`; ``"sum"`` (an explicit ``all_reduce(SUM)`` of the
gradients) does not.

Layout: :mod:`pope.objective.module` (:class:`PopeObjective`: options and the forward),
:mod:`pope.objective.inputs` (one adapter per input form: logits, hidden states + LM head,
per-token or sequence log-probs), :mod:`pope.objective.core` (weights, reductions, rewards,
loss), :mod:`pope.objective.results` (:class:`ObjectiveStats`, :class:`PopeOutput`),
:mod:`pope.objective.loo` (the leave-one-out rewards in torch), :mod:`pope.objective.checks`.
"""

from __future__ import annotations

from pope.objective.inputs import linear_sequence_logprob, shift_labels
from pope.objective.module import (
    Baseline,
    Coverage,
    Diversity,
    DiversityEstimator,
    GradReduction,
    PopeObjective,
    Truncation,
    Weighting,
)
from pope.objective.results import ObjectiveStats, PopeOutput

__all__ = [
    "Baseline",
    "Coverage",
    "Diversity",
    "DiversityEstimator",
    "GradReduction",
    "ObjectiveStats",
    "PopeObjective",
    "PopeOutput",
    "Truncation",
    "Weighting",
    "linear_sequence_logprob",
    "shift_labels",
]
