"""POPE loss: the weight kernel launcher, the fused op and its gradients vs the torch reference.

Without CUDA the kernels run through the Triton interpreter (``tests/conftest.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from fp_bounds import gamma, logits_grad_diff
from pope.kernels import logprob as K_logprob
from pope.kernels import pope_loss as K

from pope import WeightOverflowError, ops, ops_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

#: (rtol, atol) of the Triton path against the fp32 reference on the same input values:
#: loss / log-probs / weights, and the rtol of the gradient stored in the logits dtype
#: (2 u_dtype of the final rounding, u_bf16 = 2^-8, rounded up to 1e-2). The gradient's
#: absolute tolerance is derived per case by grad_atol (no fixed atol: the target entry
#: c (1 - p_y) cancels, and its error depends on V and the logits, not on a machine).
TOL = {
    torch.float32: {"value": (1e-5, 1e-6), "grad": (1e-5,)},
    torch.bfloat16: {"value": (1e-5, 1e-6), "grad": (1e-2,)},
    torch.float16: {"value": (1e-5, 1e-6), "grad": (1e-2,)},
}
#: Relative tolerance against the fp32 gold on the original (pre-cast) logits: elementwise for
#: the loss, normwise for the gradient.
TOL_GOLD = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}

CONTROLS = {
    "none": {},
    "truncate": {"clip": 1.5},
    "ppo": {"ppo_eps": 0.2},
}


@pytest.fixture
def device() -> str:
    return DEVICE


def make_case(
    n: int,
    v: int,
    s: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = DEVICE,
    spread: float = 1.0,
    row_pad: int = 0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random batch; ``log_logging`` = the policy's own log-prob + N(0, spread^2) noise, so the
    weights scatter around 1 and both clip branches are hit."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(n, v + row_pad, generator=g) * 2.0
    gold = wide[:, :v].clone()
    x = wide.to(dtype)[:, :v]
    if dtype == torch.float32:
        gold = x.clone()
    y = torch.randint(0, v, (n,), generator=g)
    y[torch.rand(n, generator=g) < 0.2] = -100
    si = torch.randint(0, s, (n,), generator=g)
    lp = ops_reference.sequence_logprob(x, y, si, s)
    ll = lp + spread * torch.randn(s, generator=g)
    adv = torch.randn(s, generator=g)
    out = {"gold": gold, "x": x, "y": y, "si": si, "ll": ll, "adv": adv}
    return {k: t.to(device) for k, t in out.items()}


def run(
    case: dict[str, torch.Tensor],
    s: int,
    *,
    backend: str,
    use_gold: bool = False,
    grad_scale: float = 1.0,
    **kw,
) -> tuple[ops.PopeLossOutput, torch.Tensor]:
    x = (case["gold"] if use_gold else case["x"]).detach().clone().requires_grad_(True)
    out = ops.pope_loss(x, case["y"], case["si"], s, case["ll"], case["adv"], backend=backend, **kw)
    (out.loss * grad_scale).backward()
    return out, x.grad


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: tuple[float, float]) -> None:
    torch.testing.assert_close(
        actual.float().cpu(), expected.float().cpu(), rtol=tol[0], atol=tol[1]
    )


def sum_rtol(dtype: torch.dtype, logp: torch.Tensor, kind: str = "value") -> float:
    """Relative tolerance for quantities that exponentiate an fp32 sequence sum.

    On a GPU the per-sequence sums are accumulated with atomics in no fixed order, so two runs
    (or kernel vs reference) differ by a few ulps of :math:`|\\log\\pi(y_s)|`; ``exp`` turns
    that absolute difference into the same relative difference of the weight.
    """
    ulps = 4 * torch.finfo(torch.float32).eps * float(logp.detach().abs().max())
    return max(TOL[dtype][kind][0], ulps)


def loss_tol(dtype, out, adv, z) -> tuple[float, float]:
    r"""(rtol, atol) for the loss: the atol covers cancellation between +/- advantage terms.

    Each term :math:`f_s = w_s A_s` carries the relative error ``r`` of its weight; the
    length-S sum adds :math:`\gamma_S \sum_s |f_s|` in any order (two runs: twice that),
    the division by Z one rounding. Clipped weights enter at most at ``max(w, 5)`` (the
    largest clip constant used here).
    """
    r = sum_rtol(dtype, out.logp)
    w = torch.nan_to_num(out.weights.detach(), posinf=0.0)
    w = torch.where(out.clipped, w.clamp_min(5.0), w)
    total = float((w * adv.abs()).sum()) / z
    return r, (r + 2 * gamma(adv.numel()) + 4 * torch.finfo(torch.float32).eps) * total


def grad_atol(
    x: torch.Tensor,
    case: dict[str, torch.Tensor],
    out: ops.PopeLossOutput,
    *,
    normalizer: float | None = None,
    weighting: str = "sequence",
    scale: float = 1.0,
) -> float:
    r"""Absolute tolerance of the logits gradient :math:`c_{s(t)}(\mathrm{onehot} - p)`.

    :math:`c_s = -w_s A_s / (Z T_s^\kappa)` on live, unclipped sequences (0 elsewhere); the
    derived elementwise bound of :func:`fp_bounds.logits_grad_diff` for that incoming
    gradient (its maximum: the cancelling target entries); the relative error of
    :math:`c_s` itself is the ``rtol`` of :func:`sum_rtol`.
    """
    s = case["adv"].numel()
    z = float(s) if normalizer is None else float(normalizer)
    cnt = torch.ones(s, device=x.device)
    if weighting == "token_mean":
        cnt = ops_reference.token_counts(case["y"], case["si"], s).clamp_min(1.0)
    frozen = out.clipped | (case["adv"] == 0)
    c = (out.weights.double() * case["adv"].double().abs()) / (z * cnt.double()) * abs(scale)
    c = torch.where(frozen, torch.zeros_like(c), c)
    c_tok = torch.where(case["y"] != -100, c[case["si"]], torch.zeros_like(c[case["si"]]))
    return float(logits_grad_diff(x.float(), case["y"], c_tok, x.dtype).max())


def assert_normwise(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    a, e = actual.float().cpu(), expected.float().cpu()
    assert torch.isfinite(a).all()
    err, ref = (a - e).norm().item(), e.norm().item()
    assert err <= rtol * ref or (ref == 0 and err == 0), f"normwise error {err} vs {rtol} * {ref}"


# ---------------------------------------------------------------- weight kernel launcher


def weights_oracle(logp, ll, adv, cnt, z, clip=None, ppo_eps=None):
    """Float64 statement of the per-sequence formulas, independent of the reference module."""
    logp, ll, adv = logp.double(), ll.double(), adv.double()
    r = logp - ll
    denom = torch.ones_like(r) if cnt is None else cnt.double().clamp_min(1)
    r = r / denom
    w = torch.exp(r)
    if clip is not None:
        clipped = w > clip
        f = torch.minimum(w, torch.tensor(clip, dtype=torch.float64)) * adv
    elif ppo_eps is not None:
        wc = w.clamp(1 - ppo_eps, 1 + ppo_eps)
        f = torch.minimum(w * adv, wc * adv)
        clipped = ((adv > 0) & (w > 1 + ppo_eps)) | ((adv < 0) & (w < 1 - ppo_eps))
    else:
        clipped = torch.zeros_like(w, dtype=torch.bool)
        f = w * adv
    f = torch.where(adv == 0, torch.zeros_like(f), f)
    gcoef = torch.where(clipped | (adv == 0), torch.zeros_like(w), -w * adv / (z * denom))
    return -f / z, w, clipped, gcoef


@pytest.mark.parametrize("control", list(CONTROLS))
@pytest.mark.parametrize("token_mean", [False, True])
@pytest.mark.parametrize("s", [1, 7, 1500])  # 1500 > BLOCK_S: two programs
def test_weight_launcher_matches_oracle(control, token_mean, s, device, monkeypatch):
    monkeypatch.setattr(
        K, "_empty", lambda shape, dtype, dev: torch.full(shape, 77, dtype=dtype, device=dev)
    )
    g = torch.Generator().manual_seed(s)
    logp = (-30 * torch.rand(s, generator=g)).to(device)
    ll = (logp.cpu() + 0.6 * torch.randn(s, generator=g)).to(device)
    adv = torch.randn(s, generator=g)
    adv[::5] = 0.0
    adv = adv.to(device)
    cnt = torch.randint(0, 9, (s,), generator=g).float().to(device) if token_mean else None
    if token_mean:  # token_mean ratios: make the per-token mean log-ratio O(0.3)
        ll = logp - 0.3 * torch.randn(s, generator=g).to(device) * cnt.clamp_min(1)
    z = 3.5
    terms, w, clipped, gcoef = K.pope_weights(logp, ll, adv, cnt, z, **CONTROLS[control])
    e_terms, e_w, e_clipped, e_gcoef = weights_oracle(logp, ll, adv, cnt, z, **CONTROLS[control])
    assert clipped.dtype == torch.bool
    assert torch.equal(clipped.cpu(), e_clipped.cpu())
    if control != "none" and s > 1:
        assert clipped.any() and not clipped.all()
    assert_close(w, e_w, (1e-5, 0))
    # terms and coefficients are products (no sums, no cancellation): relative error
    # (|r| + 8) u with |r| <= ~5 here, far below the rtol; the atol only absorbs A = 0 rows.
    assert_close(terms, e_terms, (1e-5, 1e-7))
    assert_close(gcoef, e_gcoef, (1e-5, 1e-7))


def test_ppo_clip_branches_by_sign(device):
    """A>0 clips above 1+eps only, A<0 clips below 1-eps only (pessimistic min)."""
    eps = 0.2
    w = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1, 0.9, 3.0], device=device)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0, -2.0, 0.0], device=device)
    logp = torch.full_like(w, -5.0)
    ll = logp - torch.log(w)
    terms, _, clipped, gcoef = K.pope_weights(logp, ll, adv, None, 1.0, ppo_eps=eps)
    assert clipped.cpu().tolist() == [True, False, False, True, False, False, False]
    expected_f = torch.tensor([1.2, 0.5, -1.5, -0.8, 2.2, -1.8, 0.0])
    assert_close(terms, -expected_f, (1e-5, 1e-6))
    expected_g = torch.tensor([0.0, -0.5, 1.5, 0.0, -2.2, 1.8, 0.0])
    assert_close(gcoef, expected_g, (1e-5, 1e-6))


# ------------------------------------------------------------------- fused op vs reference


@pytest.mark.parametrize("control", list(CONTROLS))
@pytest.mark.parametrize("weighting", ["sequence", "token_mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pope_loss_matches_reference(control, weighting, dtype, device):
    n, v, s = 60, 517, 9
    case = make_case(n, v, s, dtype=dtype, device=device, row_pad=3, seed=1)
    if weighting == "token_mean":  # per-token scale for the logging log-probs
        cnt = ops_reference.token_counts(case["y"], case["si"], s).clamp_min(1)
        lp = ops_reference.sequence_logprob(case["x"], case["y"], case["si"], s)
        case["ll"] = lp + 0.4 * cnt * torch.randn(s, device=device)
    kw = {"weighting": weighting, **CONTROLS[control]}
    out, grad = run(case, s, backend="triton", **kw)
    ref, ref_grad = run(case, s, backend="torch", **kw)
    assert out.loss.shape == () and out.loss.dtype == torch.float32
    assert torch.equal(out.clipped.cpu(), ref.clipped.cpu())
    if control != "none":
        assert out.clipped.any() and not out.clipped.all()
    assert_close(out.loss, ref.loss, loss_tol(dtype, out, case["adv"], s))
    assert_close(out.logp, ref.logp, TOL[dtype]["value"])
    assert_close(out.weights, ref.weights, (sum_rtol(dtype, out.logp), 0.0))
    assert grad.dtype == dtype
    atol = grad_atol(case["x"], case, out, weighting=weighting)
    assert_close(grad, ref_grad, (sum_rtol(dtype, out.logp, "grad"), atol))
    # Against the fp32 gold on the pre-cast logits. The log-probs are compared for every
    # dtype. A sequence-level weight exponentiates the *absolute* log-prob error caused by
    # rounding 16-bit inputs (about T * |z| * 2^-9, i.e. percents of w here), so loss and
    # gradient are compared with the gold only where that error is divided by T (token_mean)
    # or absent (fp32).
    gold, gold_grad = run(case, s, backend="torch", use_gold=True, **kw)
    assert_close(out.logp, gold.logp, (TOL_GOLD[dtype], TOL_GOLD[dtype]))
    if dtype == torch.float32 or weighting == "token_mean":
        assert_close(out.loss, gold.loss, (TOL_GOLD[dtype], TOL_GOLD[dtype] * 1e-2))
        if torch.equal(out.clipped.cpu(), gold.clipped.cpu()):
            assert_normwise(grad, gold_grad, TOL_GOLD[dtype])


def test_gradient_zero_exactly_where_clipped(device):
    n, v, s = 80, 300, 8
    case = make_case(n, v, s, device=device, spread=1.0, seed=2)
    case["adv"] = case["adv"].abs() + 0.1  # all positive: truncation and PPO clip above
    for kw in ({"clip": 1.2}, {"ppo_eps": 0.1}):
        out, grad = run(case, s, backend="triton", **kw)
        clipped = out.clipped
        assert clipped.any() and not clipped.all()
        row_clipped = clipped[case["si"]]
        active = case["y"] != -100
        assert torch.all(grad[row_clipped] == 0)
        assert torch.all(grad[~row_clipped & active].abs().sum(1) > 0)
        assert torch.all(grad[~active] == 0)


def test_loss_against_hand_computation(device):
    """V = 2, two sequences, sequence weighting, no clip: closed form."""
    x = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [1.0, 1.0]], device=device)
    y = torch.tensor([0, 1, 1], device=device)
    si = torch.tensor([0, 0, 1], device=device)
    logp = torch.tensor([math.log(0.5) + math.log(0.75), math.log(0.5)])
    ll = torch.tensor([-1.0, -0.5], device=device)
    adv = torch.tensor([2.0, -1.0], device=device)
    w = torch.exp(logp - ll.cpu())
    expected = -(w[0] * 2.0 - w[1] * 1.0) / 4.0
    xt = x.clone().requires_grad_(True)
    out = ops.pope_loss(xt, y, si, 2, ll, adv, normalizer=4.0, backend="triton")
    # V = 2 and two terms of one sign each, no cancellation: relative error of a few u
    # (< 1e-6 = 16 u), on every machine; the atol is never the binding part.
    assert_close(out.loss, expected, (1e-6, 1e-7))
    assert_close(out.weights, w, (1e-6, 0))
    out.loss.backward()
    g = -w * adv.cpu() / 4.0  # d loss / d logp_s
    p = torch.softmax(x.cpu(), -1)
    onehot = torch.nn.functional.one_hot(y.cpu(), 2).float()
    expected_grad = g[si.cpu()][:, None] * (onehot - p)
    assert_close(xt.grad, expected_grad, (1e-6, 1e-7))


def test_grad_output_scaling_and_normalizer(device):
    case = make_case(30, 200, 5, device=device, seed=3)
    out1, g1 = run(case, 5, backend="triton")
    _, g3 = run(case, 5, backend="triton", grad_scale=3.0)
    r = sum_rtol(torch.float32, out1.logp)  # separate runs: GPU atomics may reorder sums
    assert_close(g3, 3.0 * g1, (r, grad_atol(case["x"], case, out1, scale=3.0)))
    out_n, g_n = run(case, 5, backend="triton", normalizer=10.0)
    assert_close(out_n.loss, out1.loss * 5 / 10, loss_tol(torch.float32, out1, case["adv"], 10))
    assert_close(g_n, g1 * 5 / 10, (r, grad_atol(case["x"], case, out1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("control", ["none", "ppo"])
def test_inplace_backward_matches(dtype, control, device):
    case = make_case(40, 333, 6, dtype=dtype, device=device, row_pad=7, seed=4)
    _, expected = run(case, 6, backend="triton", **CONTROLS[control])
    leaf = case["x"].detach().clone().requires_grad_(True)
    logits = leaf * 1.0
    out = ops.pope_loss(
        logits, case["y"], case["si"], 6, case["ll"], case["adv"],
        inplace_backward=True, backend="triton", **CONTROLS[control],
    )  # fmt: skip
    out.loss.backward()
    r = sum_rtol(dtype, out.logp, "grad")  # two forwards: GPU atomics may reorder the sums
    assert_close(leaf.grad, expected, (r, grad_atol(case["x"], case, out)))
    assert torch.equal(logits.detach(), expected)  # consumed: holds the gradient now


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_extreme_log_logging(device):
    """log pi0 = -1e4 overflows w to inf; log pi0 = -1e-9 makes w = pi_theta (tiny)."""
    n, v, s = 40, 150, 4
    case = make_case(n, v, s, device=device, seed=5)
    case["ll"] = torch.tensor([-1e4, -1e-9, -1e4, -1e-9], device=device)
    case["adv"] = torch.tensor([1.0, 0.5, -1.0, 0.0], device=device)
    out, grad = run(case, s, backend="triton", clip=5.0)
    ref, ref_grad = run(case, s, backend="torch", clip=5.0)
    assert torch.isinf(out.weights[0]) and torch.isinf(out.weights[2])
    assert out.clipped.cpu().tolist() == [True, False, True, False]
    assert torch.isfinite(out.loss)
    r = sum_rtol(torch.float32, out.logp)
    assert_close(out.loss, ref.loss, loss_tol(torch.float32, out, case["adv"], s))
    assert torch.isfinite(grad).all()
    assert_close(grad, ref_grad, (r, grad_atol(case["x"], case, out)))
    # w = exp(logp + 1e-9) is far below 1 but representable: compare the raw weights
    assert_close(out.weights[1], torch.exp(out.logp[1] + 1e-9), (1e-5, 1e-30))
    # PPO: A > 0 with w = inf is clipped (finite); A = 0 contributes nothing
    case["adv"] = torch.tensor([1.0, 0.5, 0.0, 0.0], device=device)
    out, grad = run(case, s, backend="triton", ppo_eps=0.2)
    ref, _ = run(case, s, backend="torch", ppo_eps=0.2)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    assert_close(out.loss, ref.loss, loss_tol(torch.float32, out, case["adv"], s))
    # without any ratio control an overflowing weight with A != 0 raises (never an inf loss)
    case["adv"] = torch.tensor([1.0, 0.5, 0.0, 0.0], device=device)
    for backend in ("triton", "torch"):
        with pytest.raises(WeightOverflowError, match="sequence 0"):
            ops.pope_loss(case["x"], case["y"], case["si"], s, case["ll"], case["adv"],
                          backend=backend)  # fmt: skip


def test_fully_masked_sequence(device):
    n, v, s = 30, 100, 4
    case = make_case(n, v, s, device=device, seed=6)
    case["y"] = torch.where(case["si"] == 1, torch.full_like(case["y"], -100), case["y"])
    case["ll"][1] = 0.0  # an empty sequence has log pi0 = 0 (empty sum)
    for weighting in ("sequence", "token_mean"):
        out, grad = run(case, s, backend="triton", weighting=weighting)
        ref, ref_grad = run(case, s, backend="torch", weighting=weighting)
        assert out.logp[1].item() == 0.0 and out.weights[1].item() == 1.0
        assert torch.all(grad[case["si"] == 1] == 0)
        r = sum_rtol(torch.float32, out.logp)
        assert_close(out.loss, ref.loss, loss_tol(torch.float32, out, case["adv"], s))
        atol = grad_atol(case["x"], case, out, weighting=weighting)
        assert_close(grad, ref_grad, (r, atol))


def test_poisoned_buffers(monkeypatch, device):
    def nan_empty(shape, dtype, dev):
        if dtype.is_floating_point:
            return torch.full(shape, float("nan"), dtype=dtype, device=dev)
        return torch.full(shape, 3, dtype=dtype, device=dev)

    monkeypatch.setattr(K, "_empty", nan_empty)
    monkeypatch.setattr(K_logprob, "_empty", nan_empty)
    case = make_case(35, 260, 5, device=device, seed=7)
    out, grad = run(case, 5, backend="triton", ppo_eps=0.2, weighting="token_mean")
    for t in (out.loss, out.logp, out.weights, grad):
        assert not torch.isnan(t).any()
    assert set(out.clipped.view(torch.uint8).unique().tolist()) <= {0, 1}
    _, ref_grad = run(case, 5, backend="torch", ppo_eps=0.2, weighting="token_mean")
    atol = grad_atol(case["x"], case, out, weighting="token_mean")
    assert_close(grad, ref_grad, (sum_rtol(torch.float32, out.logp), atol))


def test_outputs_are_detached_and_inputs_untouched(device):
    case = make_case(20, 64, 3, device=device, seed=8)
    x = case["x"].clone().requires_grad_(True)
    ll = case["ll"].clone().requires_grad_(True)
    adv = case["adv"].clone().requires_grad_(True)
    snap = [t.detach().clone() for t in (x, case["y"], case["si"], ll, adv)]
    for backend in ("triton", "torch"):
        out = ops.pope_loss(x, case["y"], case["si"], 3, ll, adv, backend=backend, clip=2.0)
        assert not out.logp.requires_grad and not out.weights.requires_grad
        out.loss.backward()
        assert ll.grad is None and adv.grad is None  # treated as data
    for t, before in zip((x, case["y"], case["si"], ll, adv), snap):
        assert torch.equal(t.detach(), before)


# --------------------------------------------------------------------------- validation

_X = torch.randn(6, 10)
_Y = torch.tensor([0, 1, 2, -100, 9, 3])
_S = torch.tensor([0, 0, 1, 1, 2, 2])
_LL = torch.tensor([-3.0, -2.0, -5.0])
_A = torch.tensor([1.0, -1.0, 0.5])
_NAN = float("nan")
_INF = float("inf")

INVALID = [
    ({"log_logging": _LL[:2]}, ValueError, r"log_logging must have shape \(3,\)"),
    ({"log_logging": torch.tensor([-3.0, _NAN, -1.0])}, ValueError, "log_logging must be finite"),
    ({"log_logging": torch.tensor([-3.0, -_INF, -1.0])}, ValueError, "log_logging must be finite"),
    ({"log_logging": torch.tensor([-3, -2, -5])}, TypeError, "log_logging must be a floating"),
    ({"log_logging": [-3.0, -2.0, -5.0]}, TypeError, "log_logging must be a torch.Tensor"),
    ({"advantages": torch.tensor([1.0, _INF, 0.0])}, ValueError, "advantages must be finite"),
    ({"advantages": _A[None]}, ValueError, "advantages must have shape"),
    ({"weighting": "token"}, ValueError, "weighting must be one of"),
    ({"clip": 0.0}, ValueError, "clip must be a finite number > 0"),
    ({"clip": float("inf")}, ValueError, "clip must be a finite number > 0"),
    ({"clip": "2"}, TypeError, "clip must be a float"),
    ({"ppo_eps": 1.0}, ValueError, r"ppo_eps must lie in \(0, 1\)"),
    ({"ppo_eps": 0.0}, ValueError, r"ppo_eps must lie in \(0, 1\)"),
    ({"clip": 2.0, "ppo_eps": 0.2}, ValueError, "mutually exclusive"),
    ({"normalizer": 0.0}, ValueError, "normalizer must be a finite number > 0"),
    ({"normalizer": True}, TypeError, "normalizer must be a float"),
    ({"seq_index": torch.tensor([0, 0, 1, 1, 2, 3])}, ValueError, "seq_index must lie in"),
    ({"logits": _X.to(torch.float64)}, TypeError, "logits must be float32"),
]  # fmt: skip


@pytest.mark.parametrize(("override", "err", "match"), INVALID)
def test_invalid_inputs(override, err, match):
    kw = {
        "logits": _X,
        "targets": _Y,
        "seq_index": _S,
        "num_seqs": 3,
        "log_logging": _LL,
        "advantages": _A,
    }
    kw.update(override)
    args = [kw.pop(k) for k in ("logits", "targets", "seq_index", "num_seqs")]
    args += [kw.pop("log_logging"), kw.pop("advantages")]
    with pytest.raises(err, match=match):
        ops.pope_loss(*args, **kw)


def test_weight_launcher_rejects_both_controls(device):
    z = torch.zeros(2, device=device)
    with pytest.raises(ValueError, match="mutually exclusive"):
        K.pope_weights(z, z, z, None, 1.0, clip=2.0, ppo_eps=0.1)


# ------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("inplace", [False, True])
def test_no_other_n_by_v_buffers(inplace, monkeypatch, device):
    """The kernels allocate exactly one (N, V) buffer (the gradient), none when in place."""
    allocs: list[tuple[int, ...]] = []
    real = K_logprob._empty

    def recording_empty(shape, dtype, dev):
        allocs.append(tuple(shape))
        return real(shape, dtype, dev)

    monkeypatch.setattr(K_logprob, "_empty", recording_empty)
    case = make_case(24, 100, 4, device=device, seed=9)
    x = case["x"].clone().requires_grad_(True)
    out = ops.pope_loss(
        x, case["y"], case["si"], 4, case["ll"], case["adv"],
        inplace_backward=inplace, backend="triton",
    )  # fmt: skip
    out.loss.backward()
    big = [a for a in allocs if len(a) == 2]
    assert big == ([] if inplace else [(24, 100)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures CUDA memory")
@pytest.mark.parametrize("inplace", [False, True])
def test_peak_memory_on_gpu(inplace):
    n, v, s = 2048, 32000, 16
    case = make_case(n, v, s, device="cuda", seed=10)
    x = case["x"].clone().requires_grad_(True)
    logits_bytes = x.numel() * x.element_size()
    del case["gold"]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = ops.pope_loss(
        x.view_as(x),
        case["y"],
        case["si"],
        s,
        case["ll"],
        case["adv"],
        inplace_backward=inplace,
        backend="triton",
    )  # a view: a gradient arriving at a leaf directly would be copied by autograd
    out.loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    side = 64 * n + 2**20  # per-token fp32 buffers, per-sequence buffers, allocator slack
    assert extra <= (0 if inplace else logits_bytes) + side, (extra, logits_bytes)
