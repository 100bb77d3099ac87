"""Peak memory of the hidden-state path of :class:`~pope.objective.PopeObjective`.

With ``hidden_states`` + ``lm_head_weight`` the objective must never hold the ``N x V`` logits,
also with ``beta > 0`` (the KL term needs the per-token log-probs). The test records, under a
``TorchDispatchMode``, the storage size of every tensor any aten op returns during the forward
and the backward (the Triton interpreter's host copies included) and asserts that the largest
is far below one fp32 ``N x V`` buffer. N and V are chosen so that ``N * V`` is much larger
than a logits chunk and than the ``(N, H)`` / ``(V, H)`` inputs and their gradients.

Measured (``peak RSS growth`` of forward + backward, N = 8192, V = 8192, H = 64, fp32, CPU,
``MALLOC_MMAP_THRESHOLD_=65536``): 8 MiB here, 769 MiB before the chunked op gained its
per-token output (the objective then formed ``hidden @ weight.T``; ``N x V`` fp32 is 256 MiB).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pope.objective import PopeObjective


class _LargestStorage(TorchDispatchMode):
    """Records the largest storage (bytes) of any tensor returned by an aten op."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0
        self.op = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                n = t.untyped_storage().nbytes()
                if n > self.nbytes:
                    self.nbytes, self.op = n, str(func)
        return out


def _batch(b: int, t: int, h: int, v: int, beta: float) -> tuple[dict, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, t, h, generator=g, requires_grad=True)
    weight = (torch.randn(v, h, generator=g) / h**0.5).requires_grad_(True)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :2] = -100
    kw = dict(
        labels=labels,
        rewards=torch.rand(b, generator=g),
        prompt_index=torch.arange(b) // 2,
        log_logging=-torch.rand(b, generator=g) * 5 - 10,
        aspects=torch.arange(b) % 3,
        ref_logprobs=-torch.rand(b, t, generator=g) * 3 if beta else None,
    )
    return kw, hidden, weight


# torch: N = 2048, V = 1024, H = 32 -> default chunk 64 rows (256 KiB of logits) vs 8 MiB N x V.
# triton (interpreter, slower): N = 256, V = 1024, H = 16 -> chunk 4 rows vs 1 MiB N x V.
SIZES = {"torch": (16, 128, 32, 1024), "triton": (8, 32, 16, 1024)}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("beta", [0.1, 0.0], ids=["kl", "no_kl"])
def test_hidden_state_path_never_allocates_n_by_v(backend, beta):
    b, t, h, v = SIZES[backend]
    n = b * t
    kw, hidden, weight = _batch(b, t, h, v, beta)
    obj = PopeObjective(lam=1.0, beta=beta, num_aspects=3, backend=backend)
    mode = _LargestStorage()
    with mode:
        out = obj(hidden_states=hidden, lm_head_weight=weight, **kw)
        out.loss.backward()
    assert torch.isfinite(out.loss)
    assert hidden.grad is not None and weight.grad is not None
    if beta:
        assert float(out.stats.kl) > 0
    n_by_v = n * v * 4  # one fp32 (N, V) buffer
    # the largest allocation is a logits chunk or an (N, H) / (V, H) tensor: at most 1/4 here
    assert mode.nbytes <= n_by_v // 4, (mode.nbytes, mode.op, n_by_v)
