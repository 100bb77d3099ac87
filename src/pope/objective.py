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
  \sum_k w^e_{ik}` (``coverage="snips"``), or :math:`/K_i` (``"ips"``);
* diversity reward (default ``diversity_estimator="polynomial"``, and
  ``diversity="gini_simpson"``): the leave-one-out U-statistic gradient reward
  :math:`\rho_{ik} = c_0 + \sum_{j=2}^{L_i} j g_j\, q_{ik}\cdot T^{(-k)}_{j-1}` of
  :mod:`pope.loo_rewards` (IPS, unbiased for :math:`\nabla D_L` at any :math:`K`; torch twin
  :mod:`pope.objective_loo`); with ``diversity_estimator="plugin"``:
  :math:`d_{ik} = -\sum_c q_{ik}(c)\log\hat p(c\mid x_i)/\log C` (terms with
  :math:`\hat p = 0` count 0; :math:`d = 0` when :math:`C = 1`), or the Jensen lower bound
  :math:`d_{ik} = H(q_{ik})/\log C` (``diversity="response_entropy"``). With SNIPS coverage,
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
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

from pope import objective_loo, ops
from pope.distributed import DistInfo, all_reduce, dist_info, union_keys
from pope.loo_rewards import reward_coefficients

__all__ = [
    "ObjectiveStats",
    "PopeObjective",
    "PopeOutput",
    "linear_sequence_logprob",
    "shift_labels",
]

Weighting = Literal["sequence", "token_mean"]
Baseline = Literal["mean", "loo", "none"]
Coverage = Literal["snips", "ips"]
Diversity = Literal["coverage", "gini_simpson", "response_entropy"]
DiversityEstimator = Literal["polynomial", "plugin"]
Truncation = Literal["estimator", "gradient"]
GradReduction = Literal["mean", "sum"]


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Align Hugging Face-style labels with the logits that predict them.

    HF causal LMs take ``labels`` equal to ``input_ids`` (``ignore_index`` outside the loss
    mask) and shift internally: the logits at position ``t`` predict token ``t + 1``.
    :class:`PopeObjective` takes *aligned* labels, ``aligned[..., t]`` = the target of
    ``logits[..., t, :]``; this helper returns ``aligned[..., :-1] = labels[..., 1:]`` and
    ``aligned[..., -1] = ignore_index``.

    Parameters
    ----------
    labels : (..., T) int64
    ignore_index : int

    Returns
    -------
    (..., T) int64, a new tensor.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    out = torch.full_like(labels, ignore_index)
    out[..., :-1] = labels[..., 1:]
    return out


def linear_sequence_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = -100,
    return_token_logprobs: bool = False,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Per-sequence (and per-token) log-probs from hidden states and the LM head weight.

    .. math:: \log\pi(y_s) = \sum_{t: s(t)=s} (h_t W^\top)[y_t] - \log\sum_v e^{(h_t W^\top)[v]}

    The chunked :func:`pope.ops.linear_sequence_logprob` (kept here under its old name): the
    ``N x V`` logits never exist at once, also when the per-token log-probs are requested.

    Parameters
    ----------
    hidden : (N, H) float
    weight : (V, H) float
    targets, seq_index, num_seqs, ignore_index, return_token_logprobs, backend
        As in :func:`pope.ops.sequence_logprob`.
    chunk_size : int, optional
        Rows per chunk of the fused path.
    """
    return ops.linear_sequence_logprob(
        hidden,
        weight,
        targets,
        seq_index,
        num_seqs,
        ignore_index=ignore_index,
        return_token_logprobs=return_token_logprobs,
        chunk_size=chunk_size,
        backend=backend,
    )


# ----------------------------------------------------------------------------- results
#: The estimates and diagnostics of :meth:`ObjectiveStats.metrics`, also readable as
#: attributes of :class:`PopeOutput`.
_METRICS = (
    "relevance",
    "diversity",
    "total",
    "ess",
    "weight_mean",
    "weight_max",
    "clip_fraction",
    "kl",
)


@dataclass
class ObjectiveStats:
    r"""Mergeable sufficient statistics of one or more objective evaluations (0-d tensors).

    Sums of weights are kept in log space (``log_sum_w`` = :math:`\log\sum w`), so they merge
    with ``logaddexp`` and never overflow. ``merge`` adds two evaluations on *disjoint*
    prompts (e.g. micro-batches of one accumulated step); the properties then give the
    estimates over their union.

    Attributes
    ----------
    n_seqs, n_prompts, n_clipped : number of sequences, prompts, sequences with a clipped ratio
    log_sum_w, log_sum_w2 : :math:`\log\sum w`, :math:`\log\sum w^2` (raw weights)
    log_sum_we, log_sum_we_r : :math:`\log\sum w^e`, :math:`\log\sum w^e r` (estimator weights)
    max_log_w : :math:`\max\log w`
    sum_diversity : :math:`\sum_i D_i` over prompts (plug-in and response-entropy
        diversity: :math:`D_i = H(\hat p_i)/\log C` or the weighted mean of
        :math:`H(q)/\log C`; 0 for the power-sum estimators)
    sum_kl : :math:`\sum_s \frac1{T_s}\sum_t k_{3,t}`
    lam : :math:`\lambda` (for ``total``)
    power : (L, 2, L+1), optional
        Power-sum estimators (``diversity_estimator="polynomial"`` or ``"gini_simpson"``):
        per degree class :math:`d = \min(K_i, L)` (row :math:`d-1`), the sums over its
        prompts of :math:`\hat P_{j,i}` (``[:, 0, j]``) and :math:`\hat S_{j,i}`
        (``[:, 1, j]``) of the shifted weights :math:`e^{\log w^e - s}`,
        :math:`s` = ``power_shift`` (:mod:`pope.power_sums`).
    power_counts : (L,), optional
        Number of prompts per degree class.
    power_shift : 0-d, optional
    diversity_coef : (L+1, L+1), optional
        :func:`pope.objective_loo.coefficient_table` (row :math:`L'`: :math:`c_0, -, g_2..`).
    self_normalized : bool
        Power sums self-normalised across prompts (``coverage="snips"``) or IPS.
    """

    n_seqs: torch.Tensor
    n_prompts: torch.Tensor
    n_clipped: torch.Tensor
    log_sum_w: torch.Tensor
    log_sum_w2: torch.Tensor
    log_sum_we: torch.Tensor
    log_sum_we_r: torch.Tensor
    max_log_w: torch.Tensor
    sum_diversity: torch.Tensor
    sum_kl: torch.Tensor
    lam: float
    power: torch.Tensor | None = None
    power_counts: torch.Tensor | None = None
    power_shift: torch.Tensor | None = None
    diversity_coef: torch.Tensor | None = None
    self_normalized: bool = True

    def merge(self, other: ObjectiveStats) -> ObjectiveStats:
        """Statistics of the union of two evaluations on disjoint prompts."""
        if not isinstance(other, ObjectiveStats):
            raise TypeError(f"other must be a ObjectiveStats, got {type(other).__name__}")
        if (self.power is None) != (other.power is None) or (
            self.power is not None
            and (self.power.shape != other.power.shape
                 or not torch.equal(self.diversity_coef, other.diversity_coef)
                 or self.self_normalized != other.self_normalized)
        ):
            raise ValueError("cannot merge ObjectiveStats of different diversity estimators")
        out: dict[str, Any] = {}
        if self.power is not None:
            shift = torch.maximum(self.power_shift, other.power_shift)
            jj = torch.arange(self.power.shape[-1], dtype=self.power.dtype,
                              device=self.power.device)
            out["power"] = (self.power * torch.exp(jj * (self.power_shift - shift))
                            + other.power * torch.exp(jj * (other.power_shift - shift)))
            out["power_shift"] = shift
            out["power_counts"] = self.power_counts + other.power_counts
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in out:
                continue
            if f.name in ("lam", "diversity_coef", "self_normalized") or a is None:
                out[f.name] = a
            elif f.name.startswith("log_"):
                out[f.name] = torch.logaddexp(a, b)
            elif f.name == "max_log_w":
                out[f.name] = torch.maximum(a, b)
            else:
                out[f.name] = a + b
        return ObjectiveStats(**out)

    __add__ = merge

    @property
    def relevance(self) -> torch.Tensor:
        r"""Clipped SNIPS estimate of the relevance, :math:`\sum w^e r / \sum w^e`."""
        return torch.exp(self.log_sum_we_r - self.log_sum_we)

    @property
    def diversity(self) -> torch.Tensor:
        r"""The diversity estimate, the one :func:`pope.evaluate` gives with the same options.

        Power-sum estimators (``power`` set): with class counts :math:`n_d`, class sums
        :math:`\Sigma P_{d,j}`, :math:`\Sigma S_{d,j}` and :math:`n = \sum_d n_d`,

        .. math::

            \hat D = \frac1n\Big[\sum_d n_d c_0^{(d)} + \sum_{j=2}^{L}
                     \Big(\sum_{d\ge j} g^{(d)}_j\Sigma P_{d,j}\Big)
                     \frac{\sum_{d\ge j} n_d}{\sum_{d\ge j}\Sigma S_{d,j}}\Big]

        (IPS: the last factor is :math:`e^{js}` instead), i.e.
        ``evaluate(..., diversity_degree=L).diversity.value``
        (:mod:`pope.estimators.pope_features`). Otherwise the mean over prompts of the
        per-prompt values (plug-in :math:`H(\hat p_i)/\log C`).
        """
        if self.power is None:
            return self.sum_diversity / self.n_prompts
        cnt, pw, coef = self.power_counts, self.power, self.diversity_coef
        lmax = cnt.shape[0]
        val = (cnt * coef[1:, 0]).sum()
        for j in range(2, lmax + 1):
            a_j = (coef[j:, j] * pw[j - 1 :, 0, j]).sum()
            if self.self_normalized:
                s_j = pw[j - 1 :, 1, j].sum()
                n_j = cnt[j - 1 :].sum()
                val = val + torch.where(s_j > 0, a_j * n_j / torch.where(s_j > 0, s_j, 1.0),
                                        torch.zeros_like(a_j))
            else:
                val = val + a_j * torch.exp(j * self.power_shift)
        return val / cnt.sum()

    @property
    def total(self) -> torch.Tensor:
        r"""Estimated value, relevance :math:`+\ \lambda` diversity."""
        return self.relevance + self.lam * self.diversity

    @property
    def ess(self) -> torch.Tensor:
        r"""Effective sample size :math:`(\sum w)^2/\sum w^2` of the raw weights."""
        return torch.exp(2 * self.log_sum_w - self.log_sum_w2)

    @property
    def weight_mean(self) -> torch.Tensor:
        """Mean raw weight (should be near 1 when the policies overlap)."""
        return torch.exp(self.log_sum_w) / self.n_seqs

    @property
    def weight_max(self) -> torch.Tensor:
        """Largest raw weight."""
        return torch.exp(self.max_log_w)

    @property
    def clip_fraction(self) -> torch.Tensor:
        """Fraction of sequences whose ratio was truncated or PPO-clipped."""
        return self.n_clipped / self.n_seqs

    @property
    def kl(self) -> torch.Tensor:
        """Mean per-sequence k3 KL estimate (0 when ``beta == 0``)."""
        return self.sum_kl / self.n_seqs

    def metrics(self) -> dict[str, float]:
        """The estimates and diagnostics as Python floats (one device sync)."""
        vals = torch.stack([getattr(self, k).to(torch.float64) for k in _METRICS]).tolist()
        out = dict(zip(_METRICS, vals))
        out["n_seqs"] = float(self.n_seqs)
        out["n_prompts"] = float(self.n_prompts)
        return out


@dataclass
class PopeOutput:
    r"""Result of :meth:`PopeObjective.forward`.

    Attributes
    ----------
    loss : 0-d tensor
        The (local, see ``grad_reduction``) surrogate loss; call ``backward`` on it.
    stats : ObjectiveStats
        Global (all-reduced) statistics; ``stats.metrics()`` gives floats.
    logp : (S,) float64, detached
        :math:`\log\pi_\theta(y\mid x)` of the local sequences.
    log_weights : (S,) float64, detached
        :math:`\log w` (after ``token_mean`` normalisation, before clipping).
    rewards, diversity_reward, total_reward, advantage : (S,) float64, detached
        :math:`r`, the diversity reward of the gradient (:math:`d`, or :math:`\rho` for the
        leave-one-out estimators), :math:`R = r + \lambda d` (or :math:`+\lambda\rho`),
        :math:`R - b`.
    prompt_keys : (U,) int64
        Sorted prompt ids of the (global) batch.
    coverage : (U, C) float64
        :math:`\hat p(c\mid x_i)` for ``prompt_keys``.
    diversity_value : (S,) float64 or None
        Leave-one-out estimators: the value reward :math:`d_{ik}` (:mod:`pope.loo_rewards`);
        ``None`` otherwise.
    """

    loss: torch.Tensor
    stats: ObjectiveStats
    logp: torch.Tensor
    log_weights: torch.Tensor
    rewards: torch.Tensor
    diversity_reward: torch.Tensor
    total_reward: torch.Tensor
    advantage: torch.Tensor
    prompt_keys: torch.Tensor
    coverage: torch.Tensor
    diversity_value: torch.Tensor | None = None

    def metrics(self) -> dict[str, float]:
        """``stats.metrics()`` plus the loss value."""
        out = self.stats.metrics()
        out["loss"] = float(self.loss.detach())
        return out

    def __getattr__(self, name: str) -> Any:
        # relevance, diversity, total, ess, weight_mean, ... forwarded to ``stats``
        if name in _METRICS:
            return getattr(self.stats, name)
        raise AttributeError(name)


# ----------------------------------------------------------------------------- checks
def _check_tensor(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_float(x: Any, name: str) -> torch.Tensor:
    x = _check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def _check_int(x: Any, name: str) -> torch.Tensor:
    x = _check_tensor(x, name)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x.long()


def _check_shape(x: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")


def _first_bad(mask: torch.Tensor) -> int:
    return int(torch.nonzero(mask.reshape(-1))[0, 0])


def _check_finite(x: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        i = _first_bad(bad)
        raise ValueError(f"{name} must be finite; element {i} is {x.reshape(-1)[i].item()!r}")


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- objective
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
    coverage : {"snips", "ips"}
        Self-normalised per-prompt coverage, or divided by :math:`K_i`.
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

    def __init__(
        self,
        *,
        lam: float = 1.0,
        clip: float | None = None,
        ppo_eps: float | None = None,
        weighting: Weighting = "sequence",
        baseline: Baseline = "loo",
        coverage: Coverage = "snips",
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
        self.weighting = _choice(weighting, "weighting", ("sequence", "token_mean"))
        self.baseline = _choice(baseline, "baseline", ("mean", "loo", "none"))
        self.coverage = _choice(coverage, "coverage", ("snips", "ips"))
        self.diversity = _choice(
            diversity, "diversity", ("coverage", "gini_simpson", "response_entropy")
        )
        self.diversity_estimator = _choice(
            diversity_estimator, "diversity_estimator", ("polynomial", "plugin")
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
        self.truncation = _choice(truncation, "truncation", ("estimator", "gradient"))
        self.grad_reduction = _choice(grad_reduction, "grad_reduction", ("mean", "sum"))
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

    # ------------------------------------------------------------------ token pieces
    def _flatten_tokens(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        seq_index: torch.Tensor | None,
        num_seqs: int,
        name: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, F) tokens, (N,) labels, (N,) seq_index from the (B,T,F) or (N,F) layouts."""
        labels = _check_int(labels, "labels")
        if tokens.dim() == 3:
            b, t = tokens.shape[:2]
            _check_shape(labels, (b, t), "labels")
            if b != num_seqs and seq_index is None:
                raise ValueError(
                    f"{name} has {b} rows but there are {num_seqs} sequences (rewards); "
                    "pass seq_index for packed rows"
                )
            if seq_index is None:
                seq = torch.arange(b, device=labels.device).repeat_interleave(t)
            else:
                seq = _check_int(seq_index, "seq_index")
                _check_shape(seq, (b, t), "seq_index")
                seq = seq.reshape(-1)
            return tokens.reshape(b * t, -1), labels.reshape(-1), seq
        if tokens.dim() == 2:
            n = tokens.shape[0]
            _check_shape(labels, (n,), "labels")
            if seq_index is None:
                raise ValueError(f"seq_index is required with 2-d (N, V) {name}")
            seq = _check_int(seq_index, "seq_index")
            _check_shape(seq, (n,), "seq_index")
            return tokens, labels, seq
        raise ValueError(f"{name} must be (B, T, V) or (N, V), got shape {tuple(tokens.shape)}")

    def _check_labels(
        self, labels: torch.Tensor, seq: torch.Tensor, num_seqs: int, vocab: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = labels != self.ignore_index
        if vocab is not None:
            bad = mask & ((labels < 0) | (labels >= vocab))
            if bool(bad.any()):
                i = _first_bad(bad)
                raise ValueError(
                    f"labels must lie in [0, {vocab}) or equal ignore_index={self.ignore_index}; "
                    f"element {i} is {int(labels.reshape(-1)[i])}"
                )
        if seq.numel() and (int(seq.min()) < 0 or int(seq.max()) >= num_seqs):
            raise ValueError(f"seq_index must lie in [0, {num_seqs})")
        counts = torch.zeros(num_seqs, dtype=torch.int64, device=labels.device)
        counts = counts.index_add(0, seq, mask.long())
        if bool((counts == 0).any()):
            s = _first_bad(counts == 0)
            raise ValueError(
                f"sequence {s} has an empty response: no label differs from "
                f"ignore_index={self.ignore_index}"
            )
        return mask, counts

    def _segment_sum(
        self, x: torch.Tensor, mask: torch.Tensor, seq: torch.Tensor, num_seqs: int
    ) -> torch.Tensor:
        x = torch.where(mask, x, torch.zeros_like(x))
        return torch.zeros(num_seqs, dtype=x.dtype, device=x.device).index_add(0, seq, x)

    # ------------------------------------------------------------------ forward
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
        rewards = _check_float(rewards, "rewards")
        if rewards.dim() != 1 or rewards.shape[0] == 0:
            raise ValueError(f"rewards must be a non-empty (S,) tensor, got {tuple(rewards.shape)}")
        num_seqs = rewards.shape[0]
        device = rewards.device
        wd = _work_dtype(device)

        given = [
            n
            for n, v in (
                ("logits", logits),
                ("hidden_states", hidden_states),
                ("token_logp", token_logp),
                ("logp", logp),
            )
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of logits, hidden_states, token_logp, logp; got "
                f"{given or 'none'}"
            )
        need_tokens = self.beta > 0
        if self.beta > 0 and ref_logprobs is None:
            raise ValueError(
                "ref_logprobs (per-token reference log-probs) is required when beta > 0"
            )
        tok_lp: torch.Tensor | None = None
        mask: torch.Tensor | None = None
        seq: torch.Tensor | None = None
        flat_labels: torch.Tensor | None = None
        if logp is not None:
            lp = _check_float(logp, "logp")
            _check_shape(lp, (num_seqs,), "logp")
            if self.beta > 0:
                raise ValueError("beta > 0 needs per-token log-probs: pass logits or token_logp")
            if num_tokens is not None:
                counts = _check_int(num_tokens, "num_tokens")
                _check_shape(counts, (num_seqs,), "num_tokens")
                if bool((counts <= 0).any()):
                    raise ValueError("num_tokens must be >= 1 (empty response)")
            elif self.weighting == "token_mean":
                raise ValueError("weighting='token_mean' with logp needs num_tokens")
            else:
                counts = None
        else:
            if labels is None:
                raise ValueError(f"labels is required with {given[0]}")
            if logits is not None:
                logits = _check_float(logits, "logits")
                flat, flat_labels, seq = self._flatten_tokens(
                    logits, labels, seq_index, num_seqs, "logits"
                )
                mask, counts = self._check_labels(flat_labels, seq, num_seqs, flat.shape[-1])
                res = ops.sequence_logprob(
                    flat,
                    flat_labels,
                    seq,
                    num_seqs,
                    ignore_index=self.ignore_index,
                    return_token_logprobs=need_tokens,
                    backend=self.backend,
                )
            elif hidden_states is not None:
                hidden_states = _check_float(hidden_states, "hidden_states")
                w = _check_float(lm_head_weight, "lm_head_weight")
                if w.dim() != 2 or w.shape[1] != hidden_states.shape[-1]:
                    raise ValueError(
                        f"lm_head_weight must be (V, {hidden_states.shape[-1]}), got "
                        f"{tuple(w.shape)}"
                    )
                flat, flat_labels, seq = self._flatten_tokens(
                    hidden_states, labels, seq_index, num_seqs, "hidden_states"
                )
                mask, counts = self._check_labels(flat_labels, seq, num_seqs, w.shape[0])
                res = linear_sequence_logprob(
                    flat,
                    w,
                    flat_labels,
                    seq,
                    num_seqs,
                    ignore_index=self.ignore_index,
                    return_token_logprobs=need_tokens,
                    backend=self.backend,
                )
            else:
                tl = _check_float(token_logp, "token_logp")
                if tl.dim() not in (1, 2):
                    raise ValueError(f"token_logp must be (B, T) or (N,), got {tuple(tl.shape)}")
                flat, flat_labels, seq = self._flatten_tokens(
                    tl.unsqueeze(-1), labels, seq_index, num_seqs, "token_logp"
                )
                mask, counts = self._check_labels(flat_labels, seq, num_seqs, None)
                tok = flat.squeeze(-1)
                res = (self._segment_sum(tok, mask, seq, num_seqs), tok)
            if need_tokens:
                lp, tok_lp = res
            else:
                lp = res[0] if isinstance(res, tuple) else res

        out_dtype = torch.float64 if lp.dtype == torch.float64 else torch.float32
        _check_finite(lp.detach(), "log pi_theta (the model's log-probs)")
        # logging log-probs: (S,) or per token
        log_logging = _check_float(log_logging, "log_logging")
        if log_logging.dim() == 1 and log_logging.shape[0] == num_seqs:
            ll = log_logging
        else:
            if flat_labels is None:
                raise ValueError(
                    f"log_logging must be (S,)=({num_seqs},), got {tuple(log_logging.shape)}"
                )
            if log_logging.numel() != flat_labels.numel():
                raise ValueError(
                    f"log_logging has shape {tuple(log_logging.shape)}: expected ({num_seqs},) "
                    "or the shape of labels (per token)"
                )
            ll = self._segment_sum(log_logging.reshape(-1).to(wd), mask, seq, num_seqs)
        _check_finite(ll, "log_logging")
        if bool((ll > 1e-6).any()):
            raise ValueError("log_logging must be log-probabilities (<= 0)")

        _check_finite(rewards, "rewards")
        if bool(((rewards < 0) | (rewards > 1)).any()):
            i = _first_bad((rewards < 0) | (rewards > 1))
            raise ValueError(
                f"rewards must lie in [0, 1]; element {i} is {rewards[i].item()!r} "
                "(normalise raw signals, e.g. pope.data.normalize_signal)"
            )
        prompt_index = _check_int(prompt_index, "prompt_index")
        _check_shape(prompt_index, (num_seqs,), "prompt_index")
        if bool((prompt_index < 0).any()):
            raise ValueError("prompt_index must be >= 0")

        info = dist_info(self.process_group, self.distributed)
        q = self._aspect_rows(aspects, num_seqs, wd, info)

        kl_seq = None
        if need_tokens:
            ref = _check_float(ref_logprobs, "ref_logprobs")
            if ref.numel() != flat_labels.numel():
                raise ValueError(
                    f"ref_logprobs has shape {tuple(ref.shape)}, expected the shape of labels"
                )
            ref = ref.reshape(-1).to(wd)
            _check_finite(torch.where(mask, ref, torch.zeros_like(ref)), "ref_logprobs")
            delta = ref - tok_lp.to(wd)
            k3 = torch.exp(delta) - delta - 1
            kl_seq = self._segment_sum(k3, mask, seq, num_seqs) / counts.to(wd)

        return self._core(
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

    def _aspect_rows(
        self, aspects: Any, num_seqs: int, wd: torch.dtype, info: DistInfo
    ) -> torch.Tensor:
        aspects = _check_tensor(aspects, "aspects")
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
            _check_finite(q, "aspects")
            if bool((q < 0).any()):
                raise ValueError("aspects rows must be >= 0")
            err = (q.sum(1) - 1).abs()
            if bool((err > 1e-4).any()):
                i = _first_bad(err > 1e-4)
                raise ValueError(
                    f"aspects rows must sum to 1; row {i} sums to {q[i].sum().item()!r}"
                )
            return q
        a = _check_int(aspects, "aspects")
        _check_shape(a, (num_seqs,), "aspects")
        if bool((a < 0).any()):
            raise ValueError("aspects labels must be >= 0")
        c = self.num_aspects
        if c is None:
            c = int(all_reduce(a.max().reshape(1), "max", info).item()) + 1
        elif bool((a >= c).any()):
            raise ValueError(f"aspects label {int(a.max())} out of range for num_aspects={c}")
        return torch.nn.functional.one_hot(a, c).to(wd)

    def _core(
        self,
        lp: torch.Tensor,
        ll: torch.Tensor,
        counts: torch.Tensor | None,
        r: torch.Tensor,
        q: torch.Tensor,
        prompt_index: torch.Tensor,
        kl_seq: torch.Tensor | None,
        normalizer: float | None,
        info: DistInfo,
        out_dtype: torch.dtype,
    ) -> PopeOutput:
        wd = lp.dtype
        dev = lp.device
        num_seqs, c = q.shape

        lw = lp - ll
        if self.weighting == "token_mean":
            lw = lw / counts
        lw_d = lw.detach()
        clipped = torch.zeros(num_seqs, dtype=torch.bool, device=dev)
        lw_e = lw_d
        if self.clip is not None:
            log_m = math.log(self.clip)
            clipped = lw_d > log_m
            lw_e = torch.clamp(lw_d, max=log_m)
        if self.ppo_eps is not None:
            clipped = (
                clipped | (lw_e > math.log1p(self.ppo_eps)) | (lw_e < math.log1p(-self.ppo_eps))
            )

        keys, pos = union_keys(prompt_index, info)
        u = keys.shape[0]

        # round 1 (MAX): per-prompt and global shifts
        m_loc = torch.full((u,), -math.inf, dtype=wd, device=dev)
        m_loc = m_loc.scatter_reduce(0, pos, lw_e, reduce="amax", include_self=True)
        mx = all_reduce(
            torch.cat([m_loc, lw_d.max().reshape(1), lw_e.max().reshape(1)]), "max", info
        )
        m, g_raw, g_e = mx[:u], mx[u], mx[u + 1]

        # round 2 (SUM): per-prompt histograms and global sums
        e = torch.exp(lw_e - m[pos])
        ent_q = -(q * torch.where(q > 0, torch.log(q), torch.zeros_like(q))).sum(1)
        cols = torch.cat(
            [torch.stack([e, e * r, e * ent_q, torch.ones_like(e)], 1), e[:, None] * q], 1
        )
        per_prompt = torch.zeros(u, 4 + c, dtype=wd, device=dev).index_add(0, pos, cols)
        kl_sum = (
            kl_seq.detach().sum() if kl_seq is not None else torch.zeros((), dtype=wd, device=dev)
        )
        ge = torch.exp(lw_e - g_e)
        glob = torch.stack(
            [
                torch.tensor(float(num_seqs), dtype=wd, device=dev),
                clipped.to(wd).sum(),
                kl_sum,
                torch.exp(lw_d - g_raw).sum(),
                torch.exp(2 * (lw_d - g_raw)).sum(),
                ge.sum(),
                (ge * r).sum(),
            ]
        )
        red_in = torch.cat([per_prompt.reshape(-1), glob])
        loo_on = self.diversity == "gini_simpson" or (
            self.diversity == "coverage" and self.diversity_estimator == "polynomial"
        )
        if loo_on:
            # per-prompt generating polynomials travel in the same SUM all-reduce
            lmax, polys = reward_coefficients(
                "gini_simpson" if self.diversity == "gini_simpson" else "coverage",
                c, self.diversity_degree,
            )
            x = torch.cat([e[:, None] * q, e[:, None]], 1)
            loo_loc, full_loc = objective_loo.local_states(x, pos, u, lmax)
            others, full, red = objective_loo.merge_ranks(full_loc, info, red_in)
        else:
            red = all_reduce(red_in, "sum", info)
        per_prompt = red[: u * (4 + c)].reshape(u, 4 + c)
        n_glob, n_clip, kl_tot, s1, s2, t1, t1r = red[u * (4 + c) :].unbind()
        b_sum, wr_sum, we_sum, k_cnt = per_prompt[:, :4].unbind(1)
        a_hist = per_prompt[:, 4:]

        # coverage, entropies, diversity rewards
        if self.coverage == "snips":
            p_hat = a_hist / b_sum[:, None]
        else:
            p_hat = a_hist * torch.exp(m)[:, None] / k_cnt[:, None]
        log_p = torch.where(p_hat > 0, torch.log(p_hat), torch.zeros_like(p_hat))
        log_c = math.log(c) if c > 1 else 1.0
        scale = 0.0 if c == 1 else 1.0 / log_c
        div_prompt = -(p_hat * log_p).sum(1) * scale  # H(p_hat)/log C
        d_val = None
        power_kw: dict[str, Any] = {}
        if loo_on:
            coef = objective_loo.coefficient_table(polys, lmax, wd, dev)
            loo = objective_loo.polymul(loo_loc, others[pos], lmax)
            d_val, d, wd_sum = objective_loo.loo_rewards(q, loo, full, pos, k_cnt, m, coef)
            power_kw = self._power_stats(full, k_cnt, m, g_e, coef)
            div_prompt = torch.zeros_like(b_sum)
        elif self.diversity == "coverage":
            d = -(q * log_p[pos]).sum(1) * scale
            wd_sum = -(a_hist * log_p).sum(1) * scale  # sum_k w d (shifted units)
        else:
            d = ent_q * scale
            wd_sum = we_sum * scale
            div_prompt = wd_sum / b_sum
        total_r = r + self.lam * d
        if self.baseline == "mean":
            b = (wr_sum + self.lam * wd_sum) / b_sum
            adv = total_r - b[pos]
        elif self.baseline == "loo":
            we_oth = b_sum[pos] - e
            ok = we_oth > 1e-9 * b_sum[pos]
            b_rel = torch.where(ok, (wr_sum[pos] - e * r) / torch.where(ok, we_oth, 1.0),
                                torch.zeros_like(e))
            b_div = coef[torch.clamp(k_cnt.long(), max=lmax), 0][pos] if loo_on else 0.0
            adv = total_r - (b_rel + self.lam * b_div)
        else:
            adv = total_r

        # surrogate
        if self.clip is None:
            w_t = torch.exp(lw)
        elif self.truncation == "estimator":
            w_t = torch.exp(torch.clamp(lw, max=math.log(self.clip)))
        else:
            w_t = torch.exp(lw_e) * torch.exp(lw - lw_d)
        surr = w_t * adv
        if self.ppo_eps is not None:
            surr = torch.minimum(surr, torch.clamp(w_t, 1 - self.ppo_eps, 1 + self.ppo_eps) * adv)
        denom = n_glob if normalizer is None else float(normalizer)
        loss = -surr.sum() / denom
        if kl_seq is not None:
            loss = loss + self.beta * kl_seq.sum() / denom
        if info.enabled and self.grad_reduction == "mean":
            loss = loss * info.world_size

        stats = ObjectiveStats(
            n_seqs=n_glob,
            n_prompts=torch.tensor(float(u), dtype=wd, device=dev),
            n_clipped=n_clip,
            log_sum_w=g_raw + torch.log(s1),
            log_sum_w2=2 * g_raw + torch.log(s2),
            log_sum_we=g_e + torch.log(t1),
            log_sum_we_r=g_e + torch.log(t1r),
            max_log_w=g_raw,
            sum_diversity=div_prompt.sum(),
            sum_kl=kl_tot,
            lam=self.lam,
            **power_kw,
        )
        return PopeOutput(
            loss=loss.to(out_dtype),
            stats=stats,
            logp=lp.detach(),
            log_weights=lw_d,
            rewards=r,
            diversity_reward=d,
            total_reward=total_r,
            advantage=adv,
            prompt_keys=keys,
            coverage=p_hat,
            diversity_value=d_val,
        )

    def _power_stats(self, full: torch.Tensor, k_cnt: torch.Tensor, m: torch.Tensor,
                     g_e: torch.Tensor, coef: torch.Tensor) -> dict[str, Any]:
        """Class sums of the power sums for :attr:`ObjectiveStats.diversity` (detached)."""
        lmax = coef.shape[0] - 1
        kk = k_cnt.long()
        mm = torch.arange(lmax + 1, dtype=m.dtype, device=m.device)
        sc = torch.exp(mm * (m - g_e)[:, None])
        p_hat, s_hat = objective_loo.power_sums(full, kk, sc, lmax)
        cls = torch.clamp(kk, max=lmax) - 1
        power = torch.zeros(lmax, 2, lmax + 1, dtype=m.dtype, device=m.device)
        power = power.index_add(0, cls, torch.stack([p_hat, s_hat], 1))
        counts = torch.zeros(lmax, dtype=m.dtype, device=m.device).index_add(
            0, cls, torch.ones_like(m)
        )
        return dict(power=power.detach(), power_counts=counts, power_shift=g_e.detach(),
                    diversity_coef=coef, self_normalized=self.coverage == "snips")
