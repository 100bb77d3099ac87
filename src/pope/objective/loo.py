r"""Torch twin of :mod:`pope.loo_rewards` for :class:`pope.objective.PopeObjective`.

The formulas (leave-one-out U-statistics :math:`T^{(-k)}_m`, value reward :math:`d_{ik}`,
gradient reward :math:`\rho_{ik}`, ``"ips"`` normalisation) are those of
:mod:`pope.loo_rewards`. How they are computed here, for a batch whose prompts may be split
over ranks:

* every rank forms, per prompt and per channel (the :math:`C` aspects
  :math:`x_{kc} = \tilde w_k q_k(c)` and one channel :math:`x_k = \tilde w_k` for the weight
  U-statistics), the generating polynomial :math:`E(t) = \prod_k (1 + x_k t)` truncated at
  degree :math:`L` (coefficients :math:`e_0..e_L`) of its *local* responses, with prefix and
  suffix products over the responses of the prompt (zero padding is the neutral factor 1), so
  the leave-one-out product of response :math:`k` is prefix :math:`\times` suffix: only
  products and sums of non-negative numbers, no deletion formula, no cancellation;
* the per-rank polynomials of the whole prompt are exchanged in the objective's ``SUM``
  all-reduce (each rank writes its own slot of a ``(W, U, C+1, L+1)`` tensor), and every rank
  multiplies the other ranks' polynomials into its leave-one-out products; the product of all
  ranks' polynomials gives the full-prompt :math:`e_j` for the power sums (logged diversity)
  and, for the IPS form, the exact per-prompt baseline sum :math:`\sum_k \tilde w_k\rho_k`
  through :math:`\sum_k x_{kc}e_{j-1}(x_{-k,c}) = j e_j(x_c)`.

Weights are the shifted :math:`\tilde w = e^{\log w^e - m_i}` of the objective (:math:`m_i` the
prompt's largest log weight), so :math:`e_j` carries :math:`e^{-j m_i}`; the IPS rewards need
:math:`e^{j m_i}` and raise ``ValueError`` if that leaves float64 (use ``clip``). Only the IPS
form is offered for training: the per-prompt self-normalised form (``"prompt"``) is biased at
finite :math:`K` (for :math:`K = 2` it ignores the weights: :math:`\hat p_{-k} = q_l`;
measured in ``tests/test_loo_rewards.py``), and the ``"pooled"`` form (across prompts) would
make a step's gradient depend on how its prompts are split into micro-batches.
"""

from __future__ import annotations

import math

import torch

from pope.distributed import DistInfo, all_reduce
from pope.polynomial import EntropyPolynomial

__all__ = ["coefficient_table", "local_states", "loo_rewards", "merge_ranks", "power_sums"]


def coefficient_table(
    polys: dict[int, EntropyPolynomial], lmax: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``G`` of shape ``(L+1, L+1)``: ``G[L', 0] = c0``, ``G[L', j] = g_j`` (0 beyond ``L'``)."""
    g = torch.zeros(lmax + 1, lmax + 1, dtype=dtype, device=device)
    for d, p in polys.items():
        g[d, 0] = p.c0
        for j, v in enumerate(p.g, start=2):
            g[d, j] = v
    return g


def _times_linear(e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Coefficients of :math:`E(t)(1 + x t)` truncated at the degree of ``e`` (last axis)."""
    out = e.clone()
    out[..., 1:] = out[..., 1:] + x[..., None] * e[..., :-1]
    return out


def polymul(a: torch.Tensor, b: torch.Tensor, degree: int) -> torch.Tensor:
    """Product of two polynomials (coefficients on the last axis) truncated at ``degree``."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    out = torch.zeros(*shape, degree + 1, dtype=a.dtype, device=a.device)
    for i in range(min(degree, a.shape[-1] - 1) + 1):
        n = min(degree + 1 - i, b.shape[-1])
        out[..., i : i + n] = out[..., i : i + n] + a[..., i : i + 1] * b[..., :n]
    return out


def local_states(
    x: torch.Tensor, pos: torch.Tensor, u: int, degree: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Leave-one-out and full products of the local responses.

    Parameters
    ----------
    x : (S, F) non-negative
        Per-response channel values.
    pos : (S,) int64
        Prompt position in ``[0, u)``.
    u : int
    degree : int
        :math:`L`.

    Returns
    -------
    loo : (S, F, L+1)
        :math:`e_m` of the *other local* responses of each response's prompt.
    full : (u, F, L+1)
        :math:`e_m` of all local responses of each prompt.
    """
    s, f = x.shape
    cnt = torch.bincount(pos, minlength=u)
    kmax = int(cnt.max()) if s else 0
    order = torch.argsort(pos, stable=True)
    start = torch.cumsum(cnt, 0) - cnt
    rank = torch.empty_like(pos)
    rank[order] = torch.arange(s, device=pos.device) - start[pos[order]]
    pad = torch.zeros(u, kmax, f, dtype=x.dtype, device=x.device)
    pad[pos, rank] = x
    one = torch.zeros(u, f, degree + 1, dtype=x.dtype, device=x.device)
    one[..., 0] = 1.0
    pre = [one]
    for t in range(kmax):
        pre.append(_times_linear(pre[-1], pad[:, t]))
    suf = [one]
    for t in range(kmax - 1, -1, -1):
        suf.append(_times_linear(suf[-1], pad[:, t]))
    suf = suf[::-1]  # suf[t] = product over responses t.. kmax-1
    pre_t = torch.stack(pre[:kmax], 1) if kmax else one[:, None]  # (u, kmax, F, L+1)
    suf_t = torch.stack(suf[1:], 1) if kmax else one[:, None]  # product over t+1..
    loo = polymul(pre_t[pos, rank], suf_t[pos, rank], degree)
    return loo, pre[-1]


def merge_ranks(
    full_local: torch.Tensor, info: DistInfo, reduce_with: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exchange the per-rank prompt polynomials in one ``SUM`` all-reduce.

    ``reduce_with`` (1-d) is reduced in the same collective. Returns ``(others, full,
    reduced)``: the product of the other ranks' polynomials (1 when not distributed), of all
    ranks' polynomials, and the reduced ``reduce_with``.
    """
    if not info.enabled:
        one = torch.zeros_like(full_local)
        one[..., 0] = 1.0
        return one, full_local, reduce_with
    w = info.world_size
    slots = torch.zeros(w, *full_local.shape, dtype=full_local.dtype, device=full_local.device)
    slots[info.rank] = full_local
    red = all_reduce(torch.cat([slots.reshape(-1), reduce_with]), "sum", info)
    slots = red[: slots.numel()].reshape(slots.shape)
    degree = full_local.shape[-1] - 1
    others = torch.zeros_like(full_local)
    others[..., 0] = 1.0
    for r in range(w):
        if r != info.rank:
            others = polymul(others, slots[r], degree)
    return others, polymul(others, full_local, degree), red[slots.numel() :]


def _binom(n: torch.Tensor, degree: int) -> torch.Tensor:
    """``C(n, m)`` for ``m = 0..degree`` (float64 exact up to 2^53), 0 where ``m > n``."""
    nmax = int(n.max()) if n.numel() else 0
    tab = torch.tensor(
        [[float(math.comb(k, m)) for m in range(degree + 1)] for k in range(nmax + 1)],
        dtype=torch.float64,
        device=n.device,
    )
    return tab[n.long()]


def _ips_scales(mshift: torch.Tensor, degree: int) -> torch.Tensor:
    r"""``(U, L+1)``: :math:`e^{m\,m_i}`, ``m = 0..L``, the scale of the IPS U-statistics."""
    mm = torch.arange(degree + 1, dtype=mshift.dtype, device=mshift.device)
    sc = torch.exp(mm * mshift[:, None])
    if not bool(torch.isfinite(sc).all()):
        raise ValueError(
            "the leave-one-out diversity reward needs products of up to "
            f"{degree} importance weights, which overflow float64 here; truncate them "
            "with clip=M"
        )
    return sc


def power_sums(
    full: torch.Tensor, k_cnt: torch.Tensor, sc: torch.Tensor, degree: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-prompt :math:`\hat P_{j,i}` and :math:`\hat S_{j,i}` (``(U, L+1)`` each, scaled by
    ``sc``), 0 where :math:`j > K_i`."""
    c = full.shape[1] - 1
    b = _binom(k_cnt, degree).to(full.dtype)
    den = torch.where(b > 0, b, torch.ones_like(b))
    p = torch.where(b > 0, full[:, :c].sum(1) / den, torch.zeros_like(b)) * sc
    s = torch.where(b > 0, full[:, c] / den, torch.zeros_like(b)) * sc
    return p, s


def loo_rewards(
    q: torch.Tensor,
    loo: torch.Tensor,
    full: torch.Tensor,
    pos: torch.Tensor,
    k_cnt: torch.Tensor,
    mshift: torch.Tensor,
    coef: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""IPS value and gradient rewards :math:`d`, :math:`\rho`, and :math:`\sum_k\tilde w_k\rho_k`.

    Parameters
    ----------
    q : (S, C)
    loo : (S, C+1, L+1)
        :math:`e_m` of the other responses (all ranks) of each response's prompt.
    full : (U, C+1, L+1)
        :math:`e_m` of the whole prompt (all ranks).
    pos, k_cnt, mshift : (S,), (U,), (U,)
        Prompt positions, global response counts :math:`K_i`, shifts :math:`m_i`.
    coef : (L+1, L+1)
        :func:`coefficient_table`.

    Returns
    -------
    d, rho : (S,)
    sum_wrho : (U,)
        :math:`\sum_k\tilde w_k\rho_k` per prompt from the full-prompt :math:`e_j`
        (:math:`\sum_k x_{kc}e_{j-1}(x_{-k,c}) = j e_j(x_c)`), exact across ranks.
    """
    lmax = coef.shape[0] - 1
    c = q.shape[1]
    kk = k_cnt.long()
    g = coef[torch.clamp(kk, max=lmax)]  # (U, L+1): c0, -, g_2..g_L
    jj = torch.arange(lmax + 1, dtype=q.dtype, device=q.device)
    qe = (q[:, :, None] * loo[:, :c, :lmax]).sum(1)  # (S, L): q . e_m(others), m = 0..L-1
    b_loo = _binom(torch.clamp(kk - 1, min=0), lmax).to(q.dtype)  # C(K-1, m)
    ok = b_loo > 0
    unit = torch.where(
        ok, _ips_scales(mshift, lmax) / torch.where(ok, b_loo, 1.0), torch.zeros_like(b_loo)
    )  # (U, L+1): scale of T_m
    t = qe[:, 1:] * unit[pos, 1:lmax]  # m = 1..L-1  <->  j = 2..L
    ej = full[:, :c].sum(1)  # (U, L+1)
    s_t = jj[2:] * ej[:, 2:] * unit[:, 1:lmax]
    sum_wrho = g[:, 0] * full[:, c, 1] + (jj[2:] * g[:, 2:] * s_t).sum(1)
    d = g[pos, 0] + (g[pos, 2:] * t).sum(1)
    rho = g[pos, 0] + (jj[2:] * g[pos, 2:] * t).sum(1)
    return d, rho, sum_wrho
