"""Sequence log-prob: Triton launchers and :func:`pope.ops.sequence_logprob` vs the torch reference.

Without CUDA the kernels run through the Triton interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1`` before any kernel import); on a GPU the same tests run compiled.
"""

from __future__ import annotations

import math

import pytest
import torch
from fp_bounds import assert_within, logits_grad_diff, seq_logp_diff, softmax_diff
from pope.kernels import logprob as K

from pope import ops, ops_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The kernel against the fp32 reference on the *same* input values (the kernel upcasts every
# load, so only the fp32 summation order differs, and that order changes with the machine):
# elementwise bounds derived in tests/fp_bounds.py (worst case over all summation orders of
# the length-V log-sum-exp and the length-T sequence sums, plus the final rounding of the
# gradient to the input dtype), via seq_bound / tok_bound / grad_bound below.
#: Against the fp32 gold computed on the original fp32 logits (before the cast to ``dtype``):
#: elementwise (rtol, atol) for the log-probs, normwise relative error for the gradient (the
#: input rounding alone moves single softmax entries by several percent in bf16).
TOL_GOLD = {
    torch.float32: {"logp": (1e-5, 1e-5), "grad": 1e-5},
    torch.bfloat16: {"logp": (1e-2, 1e-2), "grad": 1e-2},
    torch.float16: {"logp": (1e-2, 1e-2), "grad": 1e-2},
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
    scale: float = 3.0,
    mask_frac: float = 0.2,
    row_pad: int = 0,
    index_dtype: torch.dtype = torch.int64,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (gold fp32 logits, logits in ``dtype``, targets, seq_index).

    ``row_pad > 0`` makes the logits a column slice of an ``(n, v + row_pad)`` tensor (row
    stride larger than ``v``).
    """
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(n, v + row_pad, generator=g) * scale
    gold = wide[:, :v].clone()
    x = wide.to(dtype).to(device)[:, :v]
    gold = x.float().cpu() if dtype == torch.float32 else gold
    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.rand(n, generator=g) < mask_frac] = -100
    seq_index = torch.randint(0, s, (n,), generator=g)
    targets = targets.to(index_dtype).to(device)
    return gold.to(device), x, targets, seq_index.to(index_dtype).to(device)


def seq_bound(x: torch.Tensor, targets: torch.Tensor, seq_index: torch.Tensor, s: int):
    """(S,) derived bound on kernel-vs-reference differences of the sequence log-probs."""
    return seq_logp_diff(x.float(), targets, seq_index, s)


def tok_bound(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) derived bound for the per-token log-probs (each token its own 'sequence')."""
    n = x.shape[0]
    return seq_logp_diff(x.float(), targets, torch.arange(n, device=x.device), max(n, 1))


def grad_bound(
    x: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    g_seq: torch.Tensor | None,
    g_tok: torch.Tensor | None,
) -> torch.Tensor:
    """(N, V) derived bound for the logits gradient stored in ``x.dtype``."""
    g = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    if g_seq is not None:
        g = g + g_seq.double()[seq_index.long()]
    if g_tok is not None:
        g = g + g_tok.double()
    return logits_grad_diff(x.float(), targets, g, x.dtype)


def ref_grad(
    x: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    s: int,
    g_seq: torch.Tensor | None,
    g_tok: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference (seq, tok, d/dx of <g_seq, seq> + <g_tok, tok>) via torch autograd in fp32."""
    xr = x.detach().float().clone().requires_grad_(True)
    seq, tok = ops_reference.sequence_logprob(xr, targets, seq_index, s, return_token_logprobs=True)
    obj = torch.zeros((), device=x.device)
    if g_seq is not None:
        obj = obj + (seq * g_seq).sum()
    if g_tok is not None:
        obj = obj + (tok * g_tok).sum()
    obj.backward()
    return seq.detach(), tok.detach(), xr.grad


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: tuple[float, float]) -> None:
    torch.testing.assert_close(
        actual.float().cpu(), expected.float().cpu(), rtol=tol[0], atol=tol[1], equal_nan=False
    )


def assert_normwise(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """``||actual - expected|| <= rtol * ||expected||`` (exact zeros when expected is 0)."""
    a, e = actual.float().cpu(), expected.float().cpu()
    assert torch.isfinite(a).all()
    err, ref = (a - e).norm().item(), e.norm().item()
    assert err <= rtol * ref or (ref == 0 and err == 0), f"normwise error {err} vs {rtol} * {ref}"


# ------------------------------------------------------------------------ raw launchers

SHAPES = [
    # (N, V, S, block_v): odd sizes, V < block, V = k*block + tail, several blocks
    (1, 1, 1, None),
    (1, 17, 1, None),
    (7, 1, 3, None),
    (33, 1000, 5, None),
    (33, 1000, 5, 128),
    (50, 4099, 7, 1024),
    (24, 8195, 4, None),
]


@pytest.mark.parametrize(("n", "v", "s", "block_v"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fwd_launcher_matches_reference(n, v, s, block_v, dtype, device):
    gold, x, y, si = make_case(n, v, s, dtype=dtype, device=device, row_pad=3)
    seq, tok, lse, cnt = K.logprob_fwd(x, y, si, s, -100, count_tokens=True, block_v=block_v)
    ref_seq, ref_tok = ops_reference.sequence_logprob(x, y, si, s, return_token_logprobs=True)
    assert seq.dtype == tok.dtype == lse.dtype == torch.float32
    assert_within(seq, ref_seq, seq_bound(x, y, si, s))
    assert_within(tok, ref_tok, tok_bound(x, y))
    gold_seq = ops_reference.sequence_logprob(gold, y, si, s)
    assert_close(seq, gold_seq, TOL_GOLD[dtype]["logp"])
    mask = y != -100
    ref_lse = torch.logsumexp(x.float(), dim=-1)
    assert_within(lse[mask], ref_lse[mask], softmax_diff(x.float())[0][mask])
    assert torch.all(lse[~mask] == 0) and torch.all(tok[~mask] == 0)
    ref_cnt = torch.zeros(s, device=device).index_add(0, si.long(), mask.float())
    assert torch.equal(cnt, ref_cnt)


@pytest.mark.parametrize(("n", "v", "s", "block_v"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bwd_launcher_matches_autograd(n, v, s, block_v, dtype, device):
    gold, x, y, si = make_case(n, v, s, dtype=dtype, device=device, row_pad=5, seed=1)
    g_seq = torch.randn(s, device=device)
    g_tok = torch.randn(n, device=device)
    _, _, lse, _ = K.logprob_fwd(x, y, si, s, -100, block_v=block_v)
    grad = K.logprob_bwd(x, y, si, lse, g_seq, g_tok, -100, block_v=block_v)
    assert grad.dtype == dtype and grad.shape == (n, v)
    _, _, expected = ref_grad(x, y, si, s, g_seq, g_tok)
    assert_within(grad, expected, grad_bound(x, y, si, g_seq, g_tok))
    _, _, expected_gold = ref_grad(gold, y, si, s, g_seq, g_tok)
    assert_normwise(grad, expected_gold, TOL_GOLD[dtype]["grad"])


@pytest.mark.parametrize("which", ["seq", "tok"])
def test_bwd_launcher_single_incoming_gradient(which, device):
    _, x, y, si = make_case(40, 300, 6, device=device, seed=2)
    g_seq = torch.randn(6, device=device) if which == "seq" else None
    g_tok = torch.randn(40, device=device) if which == "tok" else None
    _, _, lse, _ = K.logprob_fwd(x, y, si, 6, -100)
    grad = K.logprob_bwd(x, y, si, lse, g_seq, g_tok, -100)
    _, _, expected = ref_grad(x, y, si, 6, g_seq, g_tok)
    assert_within(grad, expected, grad_bound(x, y, si, g_seq, g_tok))


def test_grad_formula_from_first_principles(device):
    """Independent of autograd: dL/dz = g (onehot - softmax) on a hand-sized case."""
    x = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0], [2.0, -1.0]], device=device)
    y = torch.tensor([1, 0, -100], device=device)
    si = torch.tensor([0, 0, 1], device=device)
    seq, _, lse, _ = K.logprob_fwd(x, y, si, 2, -100)
    # row 0: p = (1/4, 3/4), target 1 -> log(3/4); row 1: p = (1/2, 1/2) -> log(1/2)
    expected_seq = torch.tensor([math.log(0.75) + math.log(0.5), 0.0])
    assert_close(seq, expected_seq, (1e-6, 1e-6))
    grad = K.logprob_bwd(x, y, si, lse, torch.tensor([2.0, 5.0], device=device), None, -100)
    expected = torch.tensor([[-0.5, 0.5], [1.0, -1.0], [0.0, 0.0]])
    assert_close(grad, expected, (1e-6, 1e-6))


def test_fully_masked_sequence_and_v_equals_one(device):
    _, x, y, si = make_case(30, 1, 4, device=device, mask_frac=0.0, seed=3)
    seq, tok, lse, _ = K.logprob_fwd(x, y, si, 4, -100)
    assert torch.all(seq == 0) and torch.all(tok == 0)  # log softmax of one column is 0
    assert_close(lse, x.float().squeeze(1), (1e-6, 1e-6))
    _, x, y, si = make_case(30, 50, 4, device=device, mask_frac=0.0, seed=4)
    y = torch.where(si == 2, torch.full_like(y, -100), y)  # sequence 2 fully masked
    seq, _, lse, _ = K.logprob_fwd(x, y, si, 4, -100)
    assert seq[2].item() == 0.0
    grad = K.logprob_bwd(x, y, si, lse, torch.ones(4, device=device), None, -100)
    assert torch.all(grad[si == 2] == 0)
    assert torch.all(grad[si != 2].abs().sum(1) > 0)


def test_all_masked_and_empty_batch(device):
    _, x, y, si = make_case(9, 70, 3, device=device, seed=5)
    y = torch.full_like(y, -100)
    seq, tok, lse, _ = K.logprob_fwd(x, y, si, 3, -100)
    assert torch.all(seq == 0) and torch.all(tok == 0) and torch.all(lse == 0)
    x0 = torch.empty(0, 70, device=device)
    idx0 = torch.empty(0, dtype=torch.int64, device=device)
    seq0 = ops.sequence_logprob(x0, idx0, idx0, 2, backend="triton")
    assert torch.equal(seq0, torch.zeros(2, device=device))


def test_extreme_logits(device):
    """-1e4 logits (target and not), and whole -inf blocks (no NaN from -inf - -inf)."""
    _, x, y, si = make_case(20, 600, 3, device=device, mask_frac=0.0, seed=6)
    x[0, y[0]] = -1e4  # target at -1e4
    x[1, :] = -1e4  # a whole row at -1e4
    x[1, 5] = 0.0
    x[2, :300] = float("-inf")  # first blocks entirely -inf
    x[2, y[2]] = 1.0 if y[2] >= 300 else x[2, y[2]]
    x[3, y[3]] = 1e4  # dominant target
    seq, tok, lse, _ = K.logprob_fwd(x, y, si, 3, -100, block_v=128)
    ref_seq, ref_tok = ops_reference.sequence_logprob(x, y, si, 3, return_token_logprobs=True)
    finite = torch.isfinite(ref_tok)
    assert torch.equal(torch.isfinite(tok), finite)
    assert torch.equal(torch.isfinite(seq), torch.isfinite(ref_seq))
    assert_within(tok[finite], ref_tok[finite], tok_bound(x, y)[finite])
    assert tok[0].item() < -9_000
    g = torch.randn(3, device=device)
    grad = K.logprob_bwd(x, y, si, lse, g, None, -100, block_v=128)
    assert torch.isfinite(grad).all()
    _, _, expected = ref_grad(x, y, si, 3, g, None)
    assert_within(grad, expected, grad_bound(x, y, si, g, None))


def test_poisoned_output_buffers_are_fully_written(monkeypatch, device):
    def nan_empty(shape, dtype, dev):
        return torch.full(shape, float("nan"), dtype=dtype, device=dev)

    monkeypatch.setattr(K, "_empty", nan_empty)
    _, x, y, si = make_case(37, 513, 5, device=device, mask_frac=0.3, seed=7)
    seq, tok, lse, _ = K.logprob_fwd(x, y, si, 5, -100, block_v=128)
    for t in (seq, tok, lse):
        assert not torch.isnan(t).any()
    g_seq = torch.randn(5, device=device)
    g_seq[1] = 0.0  # a zero-gradient sequence takes the zero-fill branch
    grad = K.logprob_bwd(x, y, si, lse, g_seq, None, -100, block_v=128)
    assert not torch.isnan(grad).any()
    _, _, expected = ref_grad(x, y, si, 5, g_seq, None)
    assert_within(grad, expected, grad_bound(x, y, si, g_seq, None))


def test_noncontiguous_rows_are_read_in_place(device):
    """A column slice of a wider tensor: the launcher reads it through its row stride."""
    _, x, y, si = make_case(16, 250, 3, device=device, row_pad=77, seed=8)
    assert x.stride(0) == 327 and not x.is_contiguous()
    seq, _, lse, _ = K.logprob_fwd(x, y, si, 3, -100)
    expected_seq = ops_reference.sequence_logprob(x.contiguous(), y, si, 3)
    assert_within(seq, expected_seq, seq_bound(x, y, si, 3))
    g = torch.randn(3, device=device)
    grad = K.logprob_bwd(x, y, si, lse, g, None, -100)
    _, _, expected = ref_grad(x, y, si, 3, g, None)
    assert_within(grad, expected, grad_bound(x, y, si, g, None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_launcher_overwrites_logits(dtype, device):
    _, x, y, si = make_case(21, 700, 4, dtype=dtype, device=device, row_pad=9, seed=9)
    g = torch.randn(4, device=device)
    _, _, lse, _ = K.logprob_fwd(x, y, si, 4, -100, block_v=256)
    expected = K.logprob_bwd(x, y, si, lse, g, None, -100, block_v=256)
    base = x._base
    out = K.logprob_bwd(x, y, si, lse, g, None, -100, inplace=True, block_v=256)
    assert out.data_ptr() == x.data_ptr()
    assert torch.equal(out, expected)
    assert torch.equal(base[:, :700], expected)  # written through the strided view
    assert torch.isfinite(base[:, 700:]).all()  # padding columns untouched


def test_int32_indices(device):
    _, x, y, si = make_case(25, 130, 4, device=device, index_dtype=torch.int32, seed=10)
    seq, _, _, _ = K.logprob_fwd(x, y, si, 4, -100)
    expected = ops_reference.sequence_logprob(x, y.long(), si.long(), 4)
    assert_within(seq, expected, seq_bound(x, y, si, 4))


# --------------------------------------------------------------------------- dispatcher


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("return_tok", [False, True])
def test_sequence_logprob_triton_matches_torch(dtype, return_tok, device):
    _, x0, y, si = make_case(40, 333, 6, dtype=dtype, device=device, row_pad=4, seed=11)
    outs, grads = [], []
    for backend in ("triton", "torch"):
        x = x0.detach().clone().requires_grad_(True)
        out = ops.sequence_logprob(x, y, si, 6, return_token_logprobs=return_tok, backend=backend)
        seq, tok = out if return_tok else (out, None)
        obj = (seq * torch.arange(1.0, 7.0, device=device)).sum()
        if tok is not None:
            obj = obj + (tok * torch.linspace(-1, 1, 40, device=device)).sum()
        obj.backward()
        outs.append(out)
        grads.append(x.grad)
    if return_tok:
        assert_within(outs[0][0], outs[1][0], seq_bound(x0, y, si, 6))
        assert_within(outs[0][1], outs[1][1], tok_bound(x0, y))
    else:
        assert_within(outs[0], outs[1], seq_bound(x0, y, si, 6))
    assert grads[0].dtype == dtype
    g_tok = torch.linspace(-1, 1, 40, device=device) if return_tok else None
    bound = grad_bound(x0, y, si, torch.arange(1.0, 7.0, device=device), g_tok)
    assert_within(grads[0], grads[1], bound)


def test_view_of_model_output_needs_no_copy(device):
    """A shifted, vocab-padded view of a (B, T, V_pad) output keeps its row stride."""
    torch.manual_seed(0)
    out = torch.randn(2, 9, 128, device=device, requires_grad=True)
    view = out[1, :-1, :120]  # (8, 120), row stride 128: drop the last position and padding
    assert view.stride() == (128, 1)
    y = torch.randint(0, 120, (8,), device=device)
    si = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1], device=device)
    seq = ops.sequence_logprob(view, y, si, 2, backend="triton")
    seq.sum().backward()
    ones = torch.ones(2, device=device)
    _, _, expected = ref_grad(view, y, si, 2, ones, None)
    assert_within(out.grad[1, :-1, :120], expected, grad_bound(view.detach(), y, si, ones, None))
    grad_rest = out.grad.clone()
    grad_rest[1, :-1, :120] = 0
    assert torch.all(grad_rest == 0)


def test_inplace_backward_consumes_logits_and_guards_reuse(device):
    _, x0, y, si = make_case(20, 90, 3, device=device, seed=12)
    leaf = x0.clone().requires_grad_(True)
    logits = leaf * 1.0  # a non-leaf, like a model output
    seq = ops.sequence_logprob(logits, y, si, 3, inplace_backward=True, backend="triton")
    seq.sum().backward()
    ones = torch.ones(3, device=device)
    _, _, expected = ref_grad(x0, y, si, 3, ones, None)
    assert_within(leaf.grad, expected, grad_bound(x0, y, si, ones, None))
    assert torch.equal(logits.detach(), leaf.grad)  # the logits buffer now holds the gradient
    # Another autograd use of the consumed logits fails loudly instead of reading garbage.
    leaf2 = x0.clone().requires_grad_(True)
    logits2 = leaf2 * 1.0
    other = (logits2**2).sum()  # pow saves logits2; created first, so its backward runs last
    seq2 = ops.sequence_logprob(logits2, y, si, 3, inplace_backward=True, backend="triton")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (seq2.sum() + other).backward()


def test_inputs_not_modified_without_inplace(device):
    _, x0, y, si = make_case(15, 64, 2, device=device, seed=13)
    x = x0.clone().requires_grad_(True)
    before = (x.detach().clone(), y.clone(), si.clone())
    ops.sequence_logprob(x, y, si, 2, backend="triton").sum().backward()
    assert torch.equal(x.detach(), before[0])
    assert torch.equal(y, before[1]) and torch.equal(si, before[2])


def test_inplace_with_strided_columns_is_rejected(device):
    x = torch.randn(64, 8, device=device).t()  # (8, 64), column stride 8
    y = torch.zeros(8, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="inplace_backward"):
        ops.sequence_logprob(x, y, y, 1, inplace_backward=True, backend="triton")
    # without in-place it is copied and works
    out = ops.sequence_logprob(x, y, y, 1, backend="triton")
    assert_close(out, ops_reference.sequence_logprob(x, y, y, 1), (1e-5, 1e-5))


# ----------------------------------------------------------------------------- backends


def test_auto_dispatch_follows_device(monkeypatch):
    monkeypatch.delenv("POPE_BACKEND", raising=False)
    assert ops.resolve_op_backend(None, "cpu") == "torch"
    assert ops.resolve_op_backend("torch", "cpu") == "torch"
    if torch.cuda.is_available():
        assert ops.resolve_op_backend(None, "cuda") == "triton"


@pytest.mark.parametrize(
    ("env", "expected"), [("torch", "torch"), ("cpp", None), ("numba", None), ("reference", None)]
)
def test_env_var_overrides(monkeypatch, env, expected):
    monkeypatch.setenv("POPE_BACKEND", env)
    auto = "triton" if torch.cuda.is_available() else "torch"
    assert ops.resolve_op_backend(None, DEVICE) == (expected or auto)


def test_env_var_triton_and_bad_values(monkeypatch):
    monkeypatch.setenv("POPE_BACKEND", "triton")
    assert ops.resolve_op_backend(None, DEVICE) == "triton"
    monkeypatch.setenv("POPE_BACKEND", "fortran")
    with pytest.raises(ValueError, match="POPE_BACKEND"):
        ops.resolve_op_backend(None, DEVICE)
    monkeypatch.delenv("POPE_BACKEND")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.resolve_op_backend("numba", DEVICE)
    with pytest.raises(TypeError, match="backend must be a str"):
        ops.resolve_op_backend(1, DEVICE)  # type: ignore[arg-type]


def test_explicit_triton_on_cpu_requires_interpreter(monkeypatch):
    monkeypatch.delenv("POPE_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(4, 5)
    y = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ops.sequence_logprob(x, y, y, 1, backend="triton")
    monkeypatch.setenv("POPE_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ops.sequence_logprob(x, y, y, 1)
    # the torch reference needs nothing
    assert ops.sequence_logprob(x, y, y, 1, backend="torch").shape == (1,)


def test_torch_backend_forced_on_any_device(monkeypatch, device):
    monkeypatch.setenv("POPE_BACKEND", "torch")
    _, x, y, si = make_case(10, 20, 2, device=device, seed=14)
    calls = []
    monkeypatch.setattr(K, "logprob_fwd", lambda *a, **k: calls.append(1))
    out = ops.sequence_logprob(x, y, si, 2)
    assert not calls
    assert_close(out, ops_reference.sequence_logprob(x, y, si, 2), (0, 0))


# --------------------------------------------------------------------------- validation

_X = torch.randn(6, 10)
_Y = torch.tensor([0, 1, 2, -100, 9, 3])
_S = torch.tensor([0, 0, 1, 1, 2, 2])

INVALID = [
    ({"logits": _X.numpy()}, TypeError, "logits must be a torch.Tensor"),
    ({"logits": _X[0]}, ValueError, "logits must be 2-D"),
    ({"logits": _X.double()}, TypeError, "logits must be float32"),
    ({"logits": _X[:, :0]}, ValueError, "V >= 1"),
    ({"targets": _Y.float()}, TypeError, "targets must be int32 or int64"),
    ({"targets": _Y[:5]}, ValueError, r"targets must have shape \(6,\)"),
    ({"targets": torch.tensor([0, 1, 2, 10, 0, 0])}, ValueError, r"targets must lie in \[0, 10\)"),
    ({"targets": torch.tensor([0, 1, 2, -1, 0, 0])}, ValueError, "targets must lie"),
    ({"seq_index": _S.to(torch.int16)}, TypeError, "seq_index must be int32 or int64"),
    ({"seq_index": _S[None]}, ValueError, "seq_index must have shape"),
    ({"seq_index": torch.tensor([0, 0, 1, 1, 2, 3])}, ValueError, "seq_index must lie in"),
    ({"seq_index": torch.tensor([0, 0, 1, 1, 2, -1])}, ValueError, "seq_index must lie in"),
    ({"num_seqs": 0}, ValueError, "num_seqs must be >= 1"),
    ({"num_seqs": 3.0}, TypeError, "num_seqs must be an int"),
    ({"num_seqs": True}, TypeError, "num_seqs must be an int"),
    ({"ignore_index": None}, TypeError, "ignore_index must be an int"),
    ({"backend": "cuda"}, ValueError, "backend must be one of"),
]


@pytest.mark.parametrize(("override", "err", "match"), INVALID)
def test_invalid_inputs(override, err, match):
    kw = {"logits": _X, "targets": _Y, "seq_index": _S, "num_seqs": 3, "ignore_index": -100}
    kw.update(override)
    args = [kw.pop(k) for k in ("logits", "targets", "seq_index", "num_seqs")]
    with pytest.raises(err, match=match):
        ops.sequence_logprob(*args, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_device_mismatch_is_rejected():
    with pytest.raises(ValueError, match="targets is on"):
        ops.sequence_logprob(_X.cuda(), _Y, _S.cuda(), 3)


# ---------------------------------------------------------------------- benchmark script


def _load_bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_logprob.py"
    spec = importlib.util.spec_from_file_location("bench_logprob", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_benchmark_script_smoke(tmp_path, capsys):
    """The benchmark's --smoke mode runs every provider on a tiny case and checks them."""
    bench = _load_bench()
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    assert "smoke: ok" in capsys.readouterr().out
    for name in ("bench_logprob.csv", "bench_linear_logprob.csv", "bench_logprob.json"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_benchmark_script_refuses_without_gpu(capsys):
    assert _load_bench().main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


# ----------------------------------------------------------------- packed (cu_seqlens) batches


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_seq_index_from_cu_seqlens_matches_a_loop(index_dtype, device):
    lengths = [3, 0, 1, 7, 0, 2]  # ragged, with empty sequences (first and last non-empty)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=index_dtype)
    seq_index, s = ops.seq_index_from_cu_seqlens(cu.to(device))
    expected = [i for i, n in enumerate(lengths) for _ in range(n)]
    assert s == len(lengths)
    assert seq_index.dtype == torch.int64 and seq_index.device.type == torch.device(device).type
    assert seq_index.cpu().tolist() == expected


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sequence_logprob_of_a_packed_batch(backend, device):
    """Per-sequence sums from cu_seqlens equal the log-probs of each slice on its own."""
    lengths = [5, 0, 1, 9, 4]
    n, v = sum(lengths), 37
    _, x, y, _ = make_case(n, v, 1, device=device, seed=3)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
    seq_index, s = ops.seq_index_from_cu_seqlens(cu)
    got = ops.sequence_logprob(x, y, seq_index, s, backend=backend)
    for i in range(s):
        a, b = cu[i].item(), cu[i + 1].item()
        zeros = torch.zeros(b - a, dtype=torch.int64, device=device)
        want = ops_reference.sequence_logprob(x[a:b], y[a:b], zeros, 1) if b > a else torch.zeros(1)
        assert_close(got[i : i + 1], want, (1e-5, 1e-5))


INVALID_CU = [
    ([0, 2, 5], TypeError, "torch.Tensor"),  # a list
    (torch.tensor([0.0, 2.0]), TypeError, "int32 or int64"),
    (torch.tensor([0]), ValueError, "S \\+ 1 >= 2"),
    (torch.tensor([[0, 2]]), ValueError, "1-D"),
    (torch.tensor([1, 3]), ValueError, "start at 0"),
    (torch.tensor([0, 4, 2]), ValueError, "non-decreasing"),
]


@pytest.mark.parametrize(("cu", "err", "match"), INVALID_CU)
def test_seq_index_from_cu_seqlens_rejects(cu, err, match):
    before = cu.clone() if isinstance(cu, torch.Tensor) else list(cu)
    with pytest.raises(err, match=match):
        ops.seq_index_from_cu_seqlens(cu)
    assert (cu == before).all() if isinstance(cu, torch.Tensor) else cu == before
