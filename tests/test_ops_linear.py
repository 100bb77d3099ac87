"""Chunked log-prob from hidden states: launchers and :func:`pope.ops.linear_sequence_logprob`.

The oracle materialises the fp32 logits ``hidden.float() @ weight.float().T`` and uses torch
autograd. Without CUDA the Triton kernels run through the interpreter (``tests/conftest.py``).
"""

from __future__ import annotations

import pytest
import torch
from fp_bounds import assert_within, gamma, logits_grad_diff, matmul_diff, seq_logp_diff
from pope.kernels import linear_logprob as K

from pope import ops, ops_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

#: (rtol, atol) for the per-sequence log-probs and, normwise, the gradients, against the fp32
#: oracle on the same (possibly 16-bit) input values: with 16-bit inputs the chunk logits
#: are produced in 16 bit by the matmul, which is the dominant error.
TOL = {
    torch.float32: {"logp": (1e-5, 1e-5), "grad": 1e-5},
    torch.bfloat16: {"logp": (1e-2, 1e-2), "grad": 2e-2},
    torch.float16: {"logp": (1e-2, 1e-2), "grad": 1e-2},
}


@pytest.fixture
def device() -> str:
    return DEVICE


def make_case(
    n: int, h: int, v: int, s: int, *, dtype=torch.float32, device=DEVICE, seed=0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).to(device)
    weight = (torch.randn(v, h, generator=g) / h**0.5 * 2).to(dtype).to(device)
    y = torch.randint(0, v, (n,), generator=g)
    y[torch.rand(n, generator=g) < 0.2] = -100
    si = torch.randint(0, s, (n,), generator=g)
    return hidden, weight, y.to(device), si.to(device)


def oracle(hidden, weight, y, si, s, g_seq):
    """fp32 materialised logits + autograd: (seq_logp, grad_hidden, grad_weight)."""
    h = hidden.detach().float().requires_grad_(True)
    w = weight.detach().float().requires_grad_(True)
    seq = ops_reference.sequence_logprob(h @ w.t(), y, si, s)
    (seq * g_seq).sum().backward()
    return seq.detach(), h.grad, w.grad


def assert_close(actual, expected, tol):
    torch.testing.assert_close(
        actual.float().cpu(), expected.float().cpu(), rtol=tol[0], atol=tol[1]
    )


def assert_normwise(actual, expected, rtol):
    a, e = actual.float().cpu(), expected.float().cpu()
    assert torch.isfinite(a).all()
    err, ref = (a - e).norm().item(), e.norm().item()
    assert err <= rtol * ref or (ref == 0 and err == 0), f"normwise error {err} vs {rtol} * {ref}"


# ------------------------------------------------------------------------------ launchers


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000, None])
def test_launchers_match_oracle(chunk_size, device):
    n, h, v, s = 45, 24, 300, 6
    hidden, weight, y, si = make_case(n, h, v, s, device=device)
    g_seq = torch.randn(s, device=device)
    seq, lse = K.linear_logprob_fwd(hidden, weight, y, si, s, -100, chunk_size)
    gh, gw = K.linear_logprob_bwd(hidden, weight, y, si, lse, g_seq, -100, chunk_size)
    e_seq, e_gh, e_gw = oracle(hidden, weight, y, si, s, g_seq)
    assert_close(seq, e_seq, TOL[torch.float32]["logp"])
    active = y != -100
    e_lse = torch.logsumexp(hidden.float() @ weight.float().t(), -1)
    assert_close(lse[active], e_lse[active], (1e-5, 1e-5))
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype
    assert_normwise(gh, e_gh, TOL[torch.float32]["grad"])
    assert_normwise(gw, e_gw, TOL[torch.float32]["grad"])


def test_launcher_never_materialises_more_than_a_chunk(monkeypatch, device):
    """The Triton log-prob kernels only ever see (<= chunk_size, V) logits."""
    from pope.kernels import linear_logprob as mod

    seen: list[tuple[int, int]] = []
    real_fwd, real_bwd = mod.logprob_fwd, mod.logprob_bwd

    def spy_fwd(logits, *a, **k):
        seen.append(tuple(logits.shape))
        return real_fwd(logits, *a, **k)

    def spy_bwd(logits, *a, **k):
        seen.append(tuple(logits.shape))
        return real_bwd(logits, *a, **k)

    monkeypatch.setattr(mod, "logprob_fwd", spy_fwd)
    monkeypatch.setattr(mod, "logprob_bwd", spy_bwd)
    hidden, weight, y, si = make_case(50, 16, 200, 4, device=device, seed=1)
    _, lse = K.linear_logprob_fwd(hidden, weight, y, si, 4, -100, 16)
    K.linear_logprob_bwd(hidden, weight, y, si, lse, torch.ones(4, device=device), -100, 16)
    assert seen == [(16, 200), (16, 200), (16, 200), (2, 200)] * 2


def test_only_requested_gradients(device):
    hidden, weight, y, si = make_case(20, 8, 50, 3, device=device, seed=2)
    _, lse = K.linear_logprob_fwd(hidden, weight, y, si, 3, -100, 8)
    g = torch.randn(3, device=device)
    gh, gw = K.linear_logprob_bwd(hidden, weight, y, si, lse, g, -100, 8, need_weight=False)
    assert gh is not None and gw is None
    gh2, gw2 = K.linear_logprob_bwd(hidden, weight, y, si, lse, g, -100, 8, need_hidden=False)
    assert gh2 is None and gw2 is not None


@pytest.mark.parametrize(
    ("n", "h", "v", "expected"),
    [(16384, 4096, 128256, 512), (16384, 4096, 4096, 16384), (10, 4096, 32000, 2), (1, 8, 9, 1)],
)
def test_default_chunk_size(n, h, v, expected):
    # ceil(V/H) chunks' worth of rows, rounded up to a power of two, clipped to N
    assert K.default_chunk_size(n, h, v) == expected


# ----------------------------------------------------------------------------- dispatcher


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk_size", [None, 13])
def test_linear_sequence_logprob_matches_oracle(dtype, chunk_size, device):
    n, h, v, s = 40, 32, 257, 5
    hidden, weight, y, si = make_case(n, h, v, s, dtype=dtype, device=device, seed=3)
    g_seq = torch.randn(s, device=device)
    results = {}
    for backend in ("triton", "torch"):
        hh = hidden.detach().clone().requires_grad_(True)
        ww = weight.detach().clone().requires_grad_(True)
        seq = ops.linear_sequence_logprob(hh, ww, y, si, s, chunk_size=chunk_size, backend=backend)
        (seq * g_seq).sum().backward()
        results[backend] = (seq.detach(), hh.grad, ww.grad)
    e_seq, e_gh, e_gw = oracle(hidden, weight, y, si, s, g_seq)
    for backend, (seq, gh, gw) in results.items():
        assert seq.dtype == torch.float32, backend
        assert gh.dtype == dtype and gw.dtype == dtype, backend
        assert_close(seq, e_seq, TOL[dtype]["logp"])
        assert_normwise(gh, e_gh, TOL[dtype]["grad"])
        assert_normwise(gw, e_gw, TOL[dtype]["grad"])


def oracle_tokens(hidden, weight, y, si, s, g_seq, g_tok):
    """fp32 materialised logits + autograd with per-token outputs: (seq, tok, grad_h, grad_w)."""
    h = hidden.detach().float().requires_grad_(True)
    w = weight.detach().float().requires_grad_(True)
    seq, tok = ops_reference.sequence_logprob(h @ w.t(), y, si, s, return_token_logprobs=True)
    ((seq * g_seq).sum() + (tok * g_tok).sum()).backward()
    return seq.detach(), tok.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_launchers_token_output_and_token_gradient(chunk_size, device):
    n, h, v, s = 45, 24, 300, 6
    hidden, weight, y, si = make_case(n, h, v, s, device=device, seed=11)
    g_seq, g_tok = torch.randn(s, device=device), torch.randn(n, device=device)
    seq, tok, lse = K.linear_logprob_fwd(
        hidden, weight, y, si, s, -100, chunk_size, return_token_logprobs=True
    )
    e_seq, e_tok, e_gh, e_gw = oracle_tokens(hidden, weight, y, si, s, g_seq, g_tok)
    assert_close(seq, e_seq, TOL[torch.float32]["logp"])
    assert_close(tok, e_tok, TOL[torch.float32]["logp"])
    assert torch.all(tok[y == -100] == 0)
    gh, gw = K.linear_logprob_bwd(hidden, weight, y, si, lse, g_seq, -100, chunk_size,
                                  grad_tok=g_tok)  # fmt: skip
    assert_normwise(gh, e_gh, TOL[torch.float32]["grad"])
    assert_normwise(gw, e_gw, TOL[torch.float32]["grad"])
    # the token gradient alone (no sequence gradient)
    gh, gw = K.linear_logprob_bwd(hidden, weight, y, si, lse, None, -100, chunk_size,
                                  grad_tok=g_tok)  # fmt: skip
    _, _, e_gh, e_gw = oracle_tokens(hidden, weight, y, si, s, torch.zeros_like(g_seq), g_tok)
    assert_normwise(gh, e_gh, TOL[torch.float32]["grad"])
    assert_normwise(gw, e_gw, TOL[torch.float32]["grad"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_seq", [True, False], ids=["seq_and_tok", "tok_only"])
def test_linear_token_logprobs_match_oracle(dtype, use_seq, device):
    n, h, v, s = 40, 32, 257, 5
    hidden, weight, y, si = make_case(n, h, v, s, dtype=dtype, device=device, seed=12)
    g_seq = torch.randn(s, device=device) if use_seq else torch.zeros(s, device=device)
    g_tok = torch.randn(n, device=device)
    e_seq, e_tok, e_gh, e_gw = oracle_tokens(hidden, weight, y, si, s, g_seq, g_tok)
    for backend in ("triton", "torch"):
        hh = hidden.detach().clone().requires_grad_(True)
        ww = weight.detach().clone().requires_grad_(True)
        seq, tok = ops.linear_sequence_logprob(
            hh, ww, y, si, s, return_token_logprobs=True, chunk_size=9, backend=backend
        )
        loss = (tok * g_tok).sum() + ((seq * g_seq).sum() if use_seq else 0.0)
        loss.backward()
        assert tok.shape == (n,) and tok.dtype == torch.float32, backend
        assert_close(seq, e_seq, TOL[dtype]["logp"])
        assert_close(tok, e_tok, TOL[dtype]["logp"])
        assert_normwise(hh.grad, e_gh, TOL[dtype]["grad"])
        assert_normwise(ww.grad, e_gw, TOL[dtype]["grad"])


def test_default_chunk_is_used_by_both_backends(monkeypatch, device):
    """chunk_size=None: the torch reference is chunked too (no (N, V) logits on CPU)."""
    seen = []
    real = ops_reference.linear_sequence_logprob

    def spy(*a, **k):
        seen.append(k["chunk_size"])
        return real(*a, **k)

    from pope.ops import linear as L

    monkeypatch.setattr(L.reference, "linear_sequence_logprob", spy)
    hidden, weight, y, si = make_case(64, 8, 256, 3, device=device, seed=13)
    ops.linear_sequence_logprob(hidden, weight, y, si, 3, backend="torch")
    assert seen == [K.default_chunk_size(64, 8, 256)] == [2]


def test_linear_matches_sequence_logprob_on_materialised_logits(device):
    """Same numbers as the logits path on the same (fp32) logits, chunked or not."""
    hidden, weight, y, si = make_case(33, 16, 120, 4, device=device, seed=4)
    logits = hidden @ weight.t()
    expected = ops.sequence_logprob(logits, y, si, 4, backend="triton")
    for chunk in (1, 5, 33):
        out = ops.linear_sequence_logprob(hidden, weight, y, si, 4, chunk_size=chunk,
                                          backend="triton")  # fmt: skip
        assert_close(out, expected, (1e-5, 1e-5))


def test_weight_only_gradient_and_frozen_hidden(device):
    hidden, weight, y, si = make_case(25, 8, 60, 3, device=device, seed=5)
    w = weight.clone().requires_grad_(True)
    seq = ops.linear_sequence_logprob(hidden, w, y, si, 3, chunk_size=6, backend="triton")
    seq.sum().backward()
    _, _, e_gw = oracle(hidden, weight, y, si, 3, torch.ones(3, device=device))
    assert_normwise(w.grad, e_gw, 1e-5)


def test_noncontiguous_hidden_and_masked_sequence(device):
    hidden_wide, weight, y, si = make_case(30, 20, 90, 4, device=device, seed=6)
    wide = hidden_wide.clone().requires_grad_(True)
    hidden = wide[:, :12]  # (30, 12) view, row stride 20
    assert not hidden.is_contiguous()
    weight = weight[:, :12].contiguous()
    y = torch.where(si == 3, torch.full_like(y, -100), y)  # sequence 3 fully masked
    seq = ops.linear_sequence_logprob(hidden, weight, y, si, 4, chunk_size=8, backend="triton")
    assert seq[3].item() == 0.0
    g = torch.randn(4, device=device)
    (seq * g).sum().backward()
    e_seq, e_gh, _ = oracle(hidden, weight, y, si, 4, g)
    assert_close(seq, e_seq, (1e-5, 1e-5))
    assert_normwise(wide.grad[:, :12], e_gh, 1e-5)
    assert torch.all(wide.grad[:, 12:] == 0)
    assert torch.all(wide.grad[si == 3] == 0)


def test_reference_chunking_with_checkpoint_matches_unchunked(device):
    hidden, weight, y, si = make_case(21, 8, 40, 3, device=device, seed=7)
    grads = []
    for chunk in (None, 4):
        hh = hidden.clone().requires_grad_(True)
        seq = ops_reference.linear_sequence_logprob(hh, weight, y, si, 3, chunk_size=chunk)
        seq.sum().backward()
        grads.append((seq.detach(), hh.grad))
    # Derived bounds (tests/fp_bounds.py), not one machine's rounding: the two chunkings run
    # different matmul shapes, so the BLAS kernel and its summation order may differ.
    # Logits z = h W^T: length-H dot products, |dz| <= 2 gamma_H |h| |W|^T (per row, max).
    # grad_h = d W with d = g (onehot - softmax): the difference of d (logits_grad_diff,
    # which absorbs dz), carried through |W|, plus the length-V product's own rounding,
    # 2 gamma_V |d| |W|. The log-probs: seq_logp_diff with the same dz.
    w = weight.double().abs()
    dz = matmul_diff(hidden, weight.t()).amax(dim=1)
    z = hidden.double() @ weight.double().t()
    g_tok = torch.where(y != -100, torch.ones_like(y, dtype=torch.float64), 0.0)
    p = torch.softmax(z, dim=-1)
    onehot = torch.nn.functional.one_hot(torch.where(y != -100, y, 0), z.shape[1]).double()
    d = g_tok[:, None] * (onehot - p).abs()
    bound_h = logits_grad_diff(z, y, g_tok, dz=dz) @ w + 2 * gamma(z.shape[1]) * (d @ w)
    assert_within(grads[0][0], grads[1][0], seq_logp_diff(z, y, si, 3, dz=dz))
    assert_within(grads[0][1], grads[1][1], bound_h)


# ----------------------------------------------------------------------------- validation

_H = torch.randn(5, 4)
_W = torch.randn(11, 4)
_Y = torch.tensor([0, 1, 10, -100, 3])
_S = torch.tensor([0, 0, 1, 1, 1])

INVALID = [
    ({"hidden": _H[0]}, ValueError, "hidden must be 2-D"),
    ({"hidden": _H.double()}, TypeError, "hidden must be float32"),
    ({"weight": _W.half()}, TypeError, "weight dtype"),
    ({"weight": torch.randn(11, 3)}, ValueError, r"weight must have shape \(V, H\)"),
    ({"weight": torch.randn(0, 4)}, ValueError, "V >= 1"),
    ({"targets": torch.tensor([0, 1, 11, -100, 3])}, ValueError, r"targets must lie in \[0, 11\)"),
    ({"seq_index": torch.tensor([0, 0, 1, 1, 2])}, ValueError, "seq_index must lie in"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ({"chunk_size": 2.5}, TypeError, "chunk_size must be an int"),
    ({"num_seqs": -1}, ValueError, "num_seqs must be >= 1"),
]


@pytest.mark.parametrize(("override", "err", "match"), INVALID)
def test_invalid_inputs(override, err, match):
    kw = {"hidden": _H, "weight": _W, "targets": _Y, "seq_index": _S, "num_seqs": 2}
    kw.update(override)
    args = [kw.pop(k) for k in ("hidden", "weight", "targets", "seq_index", "num_seqs")]
    with pytest.raises(err, match=match):
        ops.linear_sequence_logprob(*args, **kw)
