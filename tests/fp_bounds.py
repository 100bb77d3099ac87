r"""Worst-case floating-point error bounds for comparing two implementations of one op.

The op tests compare a kernel with the torch reference (or two chunkings of the reference) on
the *same* input values. Both compute in fp32 but in different orders: the order depends on
the SIMD width of the CPU, the BLAS kernel picked for a shape, the Triton block size, GPU
atomics. A fixed absolute tolerance that passes on one machine can fail on another
(``1e-8`` on an fp32 gradient failed with a difference of ``1.0e-7``). The tolerances here
are instead **bounds that hold for every summation order**, derived with the standard model
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., ch. 2-4):

* every fp32 operation has relative error at most :math:`u = \epsilon/2 = 2^{-24}`;
* ``exp``/``exp2``/``log`` of a vector math library: at most 2 ulp, i.e. :math:`4u`;
* a sum of :math:`k` terms, in **any** order (recursive, blocked, pairwise, atomics):
  :math:`|\mathrm{fl}(\sum x_i) - \sum x_i| \le \gamma_{k-1}\sum|x_i|` with
  :math:`\gamma_k = ku/(1-ku)`; a length-:math:`k` dot product: :math:`\gamma_k\sum|a_i b_i|`.

Two implementations that each satisfy a bound :math:`\beta` differ by at most :math:`2\beta`.
The functions return that difference bound (the factor 2 is applied here, once). The bound
quantities (sums of absolute values, softmax) are computed in float64 from the inputs, so
the bound follows the data, not one machine.
"""

from __future__ import annotations

import torch

#: fp32 unit roundoff u = eps / 2 = 2^-24.
U32 = torch.finfo(torch.float32).eps / 2


def gamma(k: int) -> float:
    r""":math:`\gamma_k = ku / (1 - ku)` in fp32 (error factor of a length-``k`` sum)."""
    ku = max(int(k), 0) * U32
    return ku / (1.0 - ku)


def unit_roundoff(dtype: torch.dtype) -> float:
    """u of ``dtype`` (the relative error of storing an fp32 result in it)."""
    return torch.finfo(dtype).eps / 2


def matmul_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Elementwise bound on the difference of two fp32 evaluations of ``a @ b``.

    Each entry is a length-:math:`k` dot product: :math:`2\gamma_k (|a|\,|b|)`.
    """
    k = a.shape[-1]
    return 2 * gamma(k) * (a.double().abs() @ b.double().abs())


def softmax_diff(
    z: torch.Tensor, dz: torch.Tensor | float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Bounds for the fp32 log-softmax of the rows of ``z`` computed by two implementations.

    ``dz`` (per row, or a scalar) bounds how far the two implementations' *logits* may
    already differ (e.g. :func:`matmul_diff` of a linear layer); ``0`` when both read the
    same logits.

    Derivation (one implementation, row of :math:`V` logits,
    :math:`\mathrm{lse} = m + \log\sum_v e^{z_v - m}`, base-2 exponentials in the kernel):
    every exponent :math:`z_v\log_2 e - m\log_2 e` carries an absolute error of at most
    :math:`(|z_v| + |m|)\,2u`, ``exp2`` adds :math:`4u` relative; the online rescaling
    adds one rounding per block, so the sum of the :math:`V` positive terms has relative
    error :math:`\le \gamma_{2V} + \max_v p_v\text{-weighted exponent error}`, bounded by
    :math:`\gamma_{2V} + (2(|z|_\infty + |m|) + 4)u`; ``log`` adds :math:`4u` absolute
    (of a relative error), the final ``m +`` adds :math:`u|\mathrm{lse}|`. A shift
    :math:`\Delta z` of the logits moves ``lse`` by at most :math:`\|\Delta z\|_\infty`.

    Returns
    -------
    lse_diff : (N,) bound on the difference of the two ``lse`` (and of the per-token
        ``log p`` at the target: add :func:`logp_token_diff`);
    p : (N, V) float64 softmax;
    p_rel_diff : (N, V) bound on the relative difference of the two ``p_v``:
        ``lse_diff`` plus the exponent error :math:`(2|z_v| + 2|\mathrm{lse}| + 8)u` and
        the logit shift.
    """
    z64 = z.double()
    zfin = torch.where(torch.isfinite(z64), z64, torch.zeros_like(z64))
    lse = torch.logsumexp(z64, dim=-1)
    lse_fin = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    m = zfin.abs().amax(dim=-1)
    dz = torch.as_tensor(dz, dtype=torch.float64, device=z.device)
    v = z.shape[-1]
    one = gamma(2 * v) + (2 * (m + lse_fin.abs()) + 8) * U32 + lse_fin.abs() * U32
    lse_diff = 2 * one + dz
    p = torch.softmax(z64, dim=-1)
    expo = (2 * zfin.abs() + 2 * lse_fin.abs()[:, None] + 8) * U32
    p_rel_diff = lse_diff[:, None] + 2 * expo + 2 * (dz[:, None] if dz.dim() else dz)
    return lse_diff, p, p_rel_diff


def logits_grad_diff(
    z: torch.Tensor,
    targets: torch.Tensor,
    g_tok: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    dz: torch.Tensor | float = 0.0,
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Elementwise bound on the difference of two evaluations of
    :math:`d_{t,v} = g_t(\mathbb 1[v = y_t] - p_{t,v})`, stored in ``dtype``.

    :math:`|\Delta d_{t,v}| \le |g_t|\,(p_{t,v}\,\rho_{t,v} + 2\cdot 3u) + 2u_{\mathrm{dtype}}
    |d_{t,v}|`: the relative difference :math:`\rho` of :math:`p` (:func:`softmax_diff`),
    three roundings (:math:`1 - p`, the product with :math:`g`, forming :math:`g_t` from the
    sequence and token gradients) and the final rounding to ``dtype``: relative
    :math:`u_{\mathrm{dtype}}`, or absolute half the subnormal spacing below the normal range
    (:math:`2^{-25}` in fp16), hence one spacing for the two. The entry at the
    target (:math:`1 - p_y`) cancels when :math:`p_y \to 1`, so no *relative* tolerance
    alone can hold there; this bound is absolute there and relative elsewhere.
    ``g_tok`` is the (N,) total incoming gradient of each token's log-prob (0 if masked).
    """
    _, p, rho = softmax_diff(z, dz)
    g = g_tok.double().abs()[:, None]
    mask = (targets != ignore_index)[:, None]
    onehot = torch.zeros_like(p)
    safe = torch.where(targets != ignore_index, targets, torch.zeros_like(targets)).long()
    onehot.scatter_(1, safe[:, None], 1.0)
    d = g * (onehot - p).abs()
    fi = torch.finfo(dtype)
    spacing = fi.smallest_normal * fi.eps  # spacing of the subnormals: absolute rounding there
    bound = g * (p * rho + 6 * U32) + 2 * unit_roundoff(dtype) * d + spacing
    return torch.where(mask, bound, torch.zeros_like(bound))


def seq_logp_diff(
    z: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    dz: torch.Tensor | float = 0.0,
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""(S,) bound on the difference of two evaluations of the per-sequence log-probs.

    Per token :math:`\ell_t = z_{y_t} - \mathrm{lse}_t`: the ``lse`` difference, the target
    logit shift, one rounding :math:`u|\ell_t|` each; then a sum of :math:`T_s` tokens in any
    order: :math:`2\gamma_{T_s}\sum_t|\ell_t|`.
    """
    lse_diff, p, _ = softmax_diff(z, dz)
    mask = targets != ignore_index
    safe = torch.where(mask, targets, torch.zeros_like(targets)).long()
    ell = torch.log(p.gather(1, safe[:, None]).squeeze(1)).abs()
    ell = torch.where(torch.isfinite(ell), ell, torch.zeros_like(ell))
    dz_t = torch.as_tensor(dz, dtype=torch.float64, device=z.device).expand(z.shape[0])
    tok = lse_diff + dz_t + 2 * U32 * ell
    tok = torch.where(mask, tok, torch.zeros_like(tok))
    ell = torch.where(mask, ell, torch.zeros_like(ell))
    idx = seq_index.long()
    sum_tok = torch.zeros(num_seqs, dtype=torch.float64, device=z.device).index_add(0, idx, tok)
    sum_abs = torch.zeros(num_seqs, dtype=torch.float64, device=z.device).index_add(0, idx, ell)
    count = torch.zeros(num_seqs, dtype=torch.float64, device=z.device).index_add(
        0, idx, mask.double()
    )
    return (
        sum_tok + 2 * torch.tensor([gamma(int(c)) for c in count.tolist()]).to(z.device) * sum_abs
    )


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> None:
    """``|actual - expected| <= bound`` elementwise (NaN fails), with the worst excess named."""
    a, e = actual.double().cpu(), expected.double().cpu()
    b = torch.as_tensor(bound, dtype=torch.float64).cpu().expand_as(e)
    assert a.shape == e.shape, (a.shape, e.shape)
    err = (a - e).abs()
    ok = err <= b
    if not bool(ok.all()):
        ratio = torch.where(ok, torch.zeros_like(err), err / b.clamp_min(1e-300))
        i = int(torch.argmax(ratio.flatten()))
        raise AssertionError(
            f"{int((~ok).sum())} of {ok.numel()} entries exceed the derived bound; worst at "
            f"flat index {i}: |{a.flatten()[i].item()!r} - {e.flatten()[i].item()!r}| = "
            f"{err.flatten()[i].item():.3e} > {b.flatten()[i].item():.3e}"
        )
