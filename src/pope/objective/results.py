r"""Results of :class:`pope.objective.PopeObjective`: mergeable statistics and the output."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = ["METRICS", "ObjectiveStats", "PopeOutput"]

#: The estimates and diagnostics of :meth:`ObjectiveStats.metrics`, also readable as
#: attributes of :class:`PopeOutput`.
METRICS = (
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
        :func:`pope.objective.loo.coefficient_table` (row :math:`L'`: :math:`c_0, -, g_2..`).
    self_normalized : bool
        Power sums self-normalised across prompts (``coverage="self_normalized"``) or IPS.
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
        mismatch = "cannot merge ObjectiveStats of different diversity estimators"
        if (self.power is None) != (other.power is None):
            raise ValueError(mismatch)
        out: dict[str, Any] = {}
        if self.power is not None:
            pw, cnt, sh, coef = self._power_terms()
            o_pw, o_cnt, o_sh, o_coef = other._power_terms()
            if (
                pw.shape != o_pw.shape
                or not torch.equal(coef, o_coef)
                or self.self_normalized != other.self_normalized
            ):
                raise ValueError(mismatch)
            shift = torch.maximum(sh, o_sh)
            jj = torch.arange(pw.shape[-1], dtype=pw.dtype, device=pw.device)
            out["power"] = pw * torch.exp(jj * (sh - shift)) + o_pw * torch.exp(jj * (o_sh - shift))
            out["power_shift"] = shift
            out["power_counts"] = cnt + o_cnt
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

    def _power_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(power, power_counts, power_shift, diversity_coef)``; set together (``power`` set)."""
        pw, cnt, sh, coef = self.power, self.power_counts, self.power_shift, self.diversity_coef
        assert pw is not None and cnt is not None and sh is not None and coef is not None
        return pw, cnt, sh, coef

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
        pw, cnt, shift, coef = self._power_terms()
        lmax = cnt.shape[0]
        val = (cnt * coef[1:, 0]).sum()
        for j in range(2, lmax + 1):
            a_j = (coef[j:, j] * pw[j - 1 :, 0, j]).sum()
            if self.self_normalized:
                s_j = pw[j - 1 :, 1, j].sum()
                n_j = cnt[j - 1 :].sum()
                val = val + torch.where(
                    s_j > 0, a_j * n_j / torch.where(s_j > 0, s_j, 1.0), torch.zeros_like(a_j)
                )
            else:
                val = val + a_j * torch.exp(j * shift)
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
        vals = torch.stack([getattr(self, k).to(torch.float64) for k in METRICS]).tolist()
        out = dict(zip(METRICS, vals))
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
        if name in METRICS:
            return getattr(self.stats, name)
        raise AttributeError(name)
