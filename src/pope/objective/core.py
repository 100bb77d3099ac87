r"""The core of :class:`pope.objective.PopeObjective`: weights, reductions, rewards, loss.

Every input form (:mod:`pope.objective.inputs`) ends here with the same (S,) tensors:
:math:`\log\pi_\theta` (differentiable), :math:`\log\pi_0`, token counts, rewards, aspect
rows :math:`q` (S, C), prompt ids and the optional per-sequence KL. The steps, each a function
(formulas in the docstring of :mod:`pope.objective`):

1. :func:`log_weights`: :math:`\log w` (``token_mean``: divided by :math:`T`), the estimator
   weight :math:`\log w^e = \min(\log w, \log M)`, the clipped mask;
2. :func:`reduce_batch`: per-prompt and global shifted sums, all-reduced over ranks in two
   rounds (``MAX`` for the shifts, one ``SUM`` that also carries the leave-one-out
   polynomials);
3. :func:`diversity_rewards`: coverage :math:`\hat p`, the diversity reward and its
   per-prompt sums;
4. :func:`advantages`: :math:`R = r + \lambda d` minus the baseline;
5. :func:`surrogate_loss`: the ratio-controlled surrogate plus :math:`\beta` KL;
6. :func:`evaluate`: the steps in order, and the statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pope.distributed import DistInfo, all_reduce, union_keys
from pope.loo_rewards import reward_coefficients
from pope.objective import loo as objective_loo
from pope.objective.results import ObjectiveStats, PopeOutput

if TYPE_CHECKING:
    from pope.objective.module import PopeObjective

__all__ = [
    "Reduced",
    "Weights",
    "advantages",
    "diversity_rewards",
    "evaluate",
    "log_weights",
    "power_stats",
    "reduce_batch",
    "surrogate_loss",
]


@dataclass
class Weights:
    """Log importance weights: ``lw`` (differentiable), ``lw_d`` detached, ``lw_e`` clipped."""

    lw: torch.Tensor
    lw_d: torch.Tensor
    lw_e: torch.Tensor
    clipped: torch.Tensor


def log_weights(
    obj: PopeObjective, lp: torch.Tensor, ll: torch.Tensor, counts: torch.Tensor | None
) -> Weights:
    r""":math:`\log w = (\log\pi_\theta - \log\pi_0)/T^\kappa` and :math:`\log w^e`."""
    lw = lp - ll
    if obj.weighting == "token_mean":
        assert counts is not None  # every input form gives token counts with token_mean
        lw = lw / counts
    lw_d = lw.detach()
    clipped = torch.zeros(lw.shape[0], dtype=torch.bool, device=lw.device)
    lw_e = lw_d
    if obj.clip is not None:
        log_m = math.log(obj.clip)
        clipped = lw_d > log_m
        lw_e = torch.clamp(lw_d, max=log_m)
    if obj.ppo_eps is not None:
        clipped = clipped | (lw_e > math.log1p(obj.ppo_eps)) | (lw_e < math.log1p(-obj.ppo_eps))
    return Weights(lw, lw_d, lw_e, clipped)


@dataclass
class Reduced:
    """Global (all-reduced) sums of a batch; per-prompt rows in shifted units :math:`e^{-m_i}`."""

    keys: torch.Tensor
    pos: torch.Tensor
    m: torch.Tensor
    g_raw: torch.Tensor
    g_e: torch.Tensor
    e: torch.Tensor
    ent_q: torch.Tensor
    b_sum: torch.Tensor
    wr_sum: torch.Tensor
    we_sum: torch.Tensor
    k_cnt: torch.Tensor
    a_hist: torch.Tensor
    glob: tuple[torch.Tensor, ...]
    loo: tuple[Any, ...] | None = None


def _loo_on(obj: PopeObjective) -> bool:
    return obj.diversity == "gini_simpson" or (
        obj.diversity == "coverage" and obj.diversity_estimator == "polynomial"
    )


def reduce_batch(
    obj: PopeObjective,
    w: Weights,
    r: torch.Tensor,
    q: torch.Tensor,
    prompt_index: torch.Tensor,
    kl_seq: torch.Tensor | None,
    info: DistInfo,
) -> Reduced:
    """Per-prompt histograms and global sums, reduced over ranks (two collectives)."""
    wd, dev = w.lw_d.dtype, w.lw_d.device
    num_seqs, c = q.shape
    keys, pos = union_keys(prompt_index, info)
    u = keys.shape[0]
    # round 1 (MAX): per-prompt and global shifts
    m_loc = torch.full((u,), -math.inf, dtype=wd, device=dev)
    m_loc = m_loc.scatter_reduce(0, pos, w.lw_e, reduce="amax", include_self=True)
    mx = all_reduce(
        torch.cat([m_loc, w.lw_d.max().reshape(1), w.lw_e.max().reshape(1)]), "max", info
    )
    m, g_raw, g_e = mx[:u], mx[u], mx[u + 1]
    # round 2 (SUM): per-prompt histograms and global sums
    e = torch.exp(w.lw_e - m[pos])
    ent_q = -(q * torch.where(q > 0, torch.log(q), torch.zeros_like(q))).sum(1)
    cols = torch.cat([torch.stack([e, e * r, e * ent_q, torch.ones_like(e)], 1), e[:, None] * q], 1)
    per_prompt = torch.zeros(u, 4 + c, dtype=wd, device=dev).index_add(0, pos, cols)
    kl_sum = kl_seq.detach().sum() if kl_seq is not None else torch.zeros((), dtype=wd, device=dev)
    ge = torch.exp(w.lw_e - g_e)
    glob = torch.stack(
        [
            torch.tensor(float(num_seqs), dtype=wd, device=dev),
            w.clipped.to(wd).sum(),
            kl_sum,
            torch.exp(w.lw_d - g_raw).sum(),
            torch.exp(2 * (w.lw_d - g_raw)).sum(),
            ge.sum(),
            (ge * r).sum(),
        ]
    )
    red_in = torch.cat([per_prompt.reshape(-1), glob])
    loo = None
    if _loo_on(obj):
        # per-prompt generating polynomials travel in the same SUM all-reduce
        lmax, polys = reward_coefficients(
            "gini_simpson" if obj.diversity == "gini_simpson" else "coverage",
            c, obj.diversity_degree,
        )  # fmt: skip
        x = torch.cat([e[:, None] * q, e[:, None]], 1)
        loo_loc, full_loc = objective_loo.local_states(x, pos, u, lmax)
        others, full, red = objective_loo.merge_ranks(full_loc, info, red_in)
        loo = (lmax, polys, loo_loc, others, full)
    else:
        red = all_reduce(red_in, "sum", info)
    per_prompt = red[: u * (4 + c)].reshape(u, 4 + c)
    b_sum, wr_sum, we_sum, k_cnt = per_prompt[:, :4].unbind(1)
    return Reduced(keys, pos, m, g_raw, g_e, e, ent_q, b_sum, wr_sum, we_sum, k_cnt,
                   per_prompt[:, 4:], tuple(red[u * (4 + c):].unbind()), loo)  # fmt: skip


@dataclass
class DiversityTerms:
    """Coverage and diversity rewards of a batch (see :func:`diversity_rewards`)."""

    p_hat: torch.Tensor
    d: torch.Tensor
    wd_sum: torch.Tensor
    div_prompt: torch.Tensor
    d_val: torch.Tensor | None
    coef: torch.Tensor | None
    power_kw: dict[str, Any]


def diversity_rewards(obj: PopeObjective, red: Reduced, q: torch.Tensor) -> DiversityTerms:
    r"""Coverage :math:`\hat p`, the reward :math:`d` (or :math:`\rho`), per-prompt sums."""
    c = q.shape[1]
    pos = red.pos
    if obj.coverage == "self_normalized":
        p_hat = red.a_hist / red.b_sum[:, None]
    else:
        p_hat = red.a_hist * torch.exp(red.m)[:, None] / red.k_cnt[:, None]
    log_p = torch.where(p_hat > 0, torch.log(p_hat), torch.zeros_like(p_hat))
    log_c = math.log(c) if c > 1 else 1.0
    scale = 0.0 if c == 1 else 1.0 / log_c
    div_prompt = -(p_hat * log_p).sum(1) * scale  # H(p_hat)/log C
    d_val, coef, power_kw = None, None, {}
    if red.loo is not None:
        lmax, polys, loo_loc, others, full = red.loo
        coef = objective_loo.coefficient_table(polys, lmax, q.dtype, q.device)
        loo = objective_loo.polymul(loo_loc, others[pos], lmax)
        d_val, d, wd_sum = objective_loo.loo_rewards(q, loo, full, pos, red.k_cnt, red.m, coef)
        power_kw = power_stats(full, red.k_cnt, red.m, red.g_e, coef,
                               obj.coverage == "self_normalized")  # fmt: skip
        div_prompt = torch.zeros_like(red.b_sum)
    elif obj.diversity == "coverage":
        d = -(q * log_p[pos]).sum(1) * scale
        wd_sum = -(red.a_hist * log_p).sum(1) * scale  # sum_k w d (shifted units)
    else:
        d = red.ent_q * scale
        wd_sum = red.we_sum * scale
        div_prompt = wd_sum / red.b_sum
    return DiversityTerms(p_hat, d, wd_sum, div_prompt, d_val, coef, power_kw)


def advantages(
    obj: PopeObjective, red: Reduced, div: DiversityTerms, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(R, A)``: :math:`R = r + \lambda d` and :math:`A = R - b` for the chosen baseline."""
    pos, e = red.pos, red.e
    total_r = r + obj.lam * div.d
    if obj.baseline == "mean":
        b = (red.wr_sum + obj.lam * div.wd_sum) / red.b_sum
        return total_r, total_r - b[pos]
    if obj.baseline == "loo":
        we_oth = red.b_sum[pos] - e
        ok = we_oth > 1e-9 * red.b_sum[pos]
        b_rel = torch.where(ok, (red.wr_sum[pos] - e * r) / torch.where(ok, we_oth, 1.0),
                            torch.zeros_like(e))  # fmt: skip
        b_div: torch.Tensor | float = 0.0
        if red.loo is not None:
            assert div.coef is not None
            b_div = div.coef[torch.clamp(red.k_cnt.long(), max=red.loo[0]), 0][pos]
        return total_r, total_r - (b_rel + obj.lam * b_div)
    return total_r, total_r


def surrogate_loss(
    obj: PopeObjective,
    w: Weights,
    adv: torch.Tensor,
    kl_seq: torch.Tensor | None,
    n_glob: torch.Tensor,
    normalizer: float | None,
    info: DistInfo,
) -> torch.Tensor:
    r""":math:`-\frac1N\sum \tilde w A` (ratio controls) :math:`+\ \beta\frac1N\sum` KL."""
    if obj.clip is None:
        w_t = torch.exp(w.lw)
    elif obj.truncation == "estimator":
        w_t = torch.exp(torch.clamp(w.lw, max=math.log(obj.clip)))
    else:
        w_t = torch.exp(w.lw_e) * torch.exp(w.lw - w.lw_d)
    surr = w_t * adv
    if obj.ppo_eps is not None:
        surr = torch.minimum(surr, torch.clamp(w_t, 1 - obj.ppo_eps, 1 + obj.ppo_eps) * adv)
    denom = n_glob if normalizer is None else float(normalizer)
    loss = -surr.sum() / denom
    if kl_seq is not None:
        loss = loss + obj.beta * kl_seq.sum() / denom
    if info.enabled and obj.grad_reduction == "mean":
        loss = loss * info.world_size
    return loss


def evaluate(
    obj: PopeObjective,
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
    """Loss, statistics and per-sequence diagnostics from the (S,) inputs (steps 1-5)."""
    wd, dev = lp.dtype, lp.device
    w = log_weights(obj, lp, ll, counts)
    red = reduce_batch(obj, w, r, q, prompt_index, kl_seq, info)
    n_glob, n_clip, kl_tot, s1, s2, t1, t1r = red.glob
    div = diversity_rewards(obj, red, q)
    total_r, adv = advantages(obj, red, div, r)
    loss = surrogate_loss(obj, w, adv, kl_seq, n_glob, normalizer, info)
    stats = ObjectiveStats(
        n_seqs=n_glob,
        n_prompts=torch.tensor(float(red.keys.shape[0]), dtype=wd, device=dev),
        n_clipped=n_clip,
        log_sum_w=red.g_raw + torch.log(s1),
        log_sum_w2=2 * red.g_raw + torch.log(s2),
        log_sum_we=red.g_e + torch.log(t1),
        log_sum_we_r=red.g_e + torch.log(t1r),
        max_log_w=red.g_raw,
        sum_diversity=div.div_prompt.sum(),
        sum_kl=kl_tot,
        lam=obj.lam,
        **div.power_kw,
    )
    return PopeOutput(
        loss=loss.to(out_dtype),
        stats=stats,
        logp=lp.detach(),
        log_weights=w.lw_d,
        rewards=r,
        diversity_reward=div.d,
        total_reward=total_r,
        advantage=adv,
        prompt_keys=red.keys,
        coverage=div.p_hat,
        diversity_value=div.d_val,
    )


def power_stats(
    full: torch.Tensor,
    k_cnt: torch.Tensor,
    m: torch.Tensor,
    g_e: torch.Tensor,
    coef: torch.Tensor,
    self_normalized: bool,
) -> dict[str, Any]:
    """Class sums of the power sums for :attr:`ObjectiveStats.diversity` (detached)."""
    lmax = coef.shape[0] - 1
    kk = k_cnt.long()
    mm = torch.arange(lmax + 1, dtype=m.dtype, device=m.device)
    sc = torch.exp(mm * (m - g_e)[:, None])
    p_hat, s_hat = objective_loo.power_sums(full, kk, sc, lmax)
    cls = torch.clamp(kk, max=lmax) - 1
    power = torch.zeros(lmax, 2, lmax + 1, dtype=m.dtype, device=m.device)
    power = power.index_add(0, cls, torch.stack([p_hat, s_hat], 1))
    counts = torch.zeros(lmax, dtype=m.dtype, device=m.device).index_add(0, cls, torch.ones_like(m))
    return dict(
        power=power.detach(),
        power_counts=counts,
        power_shift=g_e.detach(),
        diversity_coef=coef,
        self_normalized=self_normalized,
    )
