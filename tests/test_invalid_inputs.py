"""Invalid inputs of the torch ops and of :class:`pope.objective.PopeObjective`.

Each row of a table is one bad input; the test asserts the error type and that the message
names the argument. Nothing the caller passed may be modified, and no NaN / inf is returned
silently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pope
from pope import WeightOverflowError, ops
from pope.objective import PopeObjective

pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

NAN, INF = float("nan"), float("inf")
BACKENDS = ("torch", "triton")  # triton runs through the interpreter on CPU (conftest.py)


def _case(n: int = 6, v: int = 10, s: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, v, generator=g)
    y = torch.tensor([0, 1, 2, -100, 9, 3])[:n]
    si = torch.tensor([0, 0, 1, 1, 2, 2])[:n]
    return x, y, si, s


def _with(x: torch.Tensor, row: int, col: int, value: float) -> torch.Tensor:
    x = x.clone()
    x[row, col] = value
    return x


# ------------------------------------------------------------------- sequence_logprob

LOGITS_BAD = [
    ("nan", lambda x, y: _with(x, 0, 5, NAN), "logits must not contain NaN or \\+inf"),
    ("posinf", lambda x, y: _with(x, 4, 0, INF), "logits must not contain NaN or \\+inf"),
    ("nan_in_masked_row", lambda x, y: _with(x, 3, 2, NAN), "logits must not contain NaN"),
    ("neginf_at_target", lambda x, y: _with(x, 1, int(y[1]), -INF), "> -inf at the target"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("label", "make", "match"), LOGITS_BAD, ids=[r[0] for r in LOGITS_BAD])
def test_sequence_logprob_rejects_non_finite_logits(label, make, match, backend):
    x, y, si, s = _case()
    bad = make(x, y)
    with pytest.raises(ValueError, match=match):
        ops.sequence_logprob(bad, y, si, s, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_neginf_logits_off_target_are_a_mask(backend):
    """-inf on non-target entries is a vocabulary mask: same as dropping those columns."""
    x, y, si, s = _case()
    masked = x.clone()
    masked[0, 7:] = -INF  # target of row 0 is column 0
    masked[3, :] = -INF  # row 3 is ignore_index: anything but NaN / +inf is allowed
    out = ops.sequence_logprob(masked, y, si, s, backend=backend)
    assert torch.isfinite(out).all()
    expected = torch.log_softmax(x[0, :7], -1)[0] + torch.log_softmax(x[1], -1)[1]
    assert math.isclose(float(out[0]), float(expected), rel_tol=1e-5)


# -------------------------------------------------------------------------- pope_loss


def _loss_args(**override):
    x, y, si, s = _case()
    kw = {
        "logits": x, "targets": y, "seq_index": si, "num_seqs": s,
        "log_logging": torch.tensor([-3.0, -2.0, -5.0]),
        "advantages": torch.tensor([1.0, -1.0, 0.5]),
    }  # fmt: skip
    kw.update(override)
    return kw


POPE_BAD = [
    ({"logits": _with(_case()[0], 2, 2, NAN)}, ValueError, "logits must not contain NaN"),
    ({"log_logging": torch.tensor([-3.0, 0.5, -5.0])}, ValueError, "log_logging must be <= 0"),
    ({"log_logging": torch.tensor([-3.0, 1e-3, -5.0])}, ValueError, "log_logging must be <= 0"),
    ({"log_logging": torch.tensor([NAN, -2.0, -5.0])}, ValueError, "log_logging must be finite"),
    ({"advantages": torch.tensor([1.0, NAN, 0.5])}, ValueError, "advantages must be finite"),
    ({"log_logging": torch.tensor([-1e4, -2.0, -5.0])}, WeightOverflowError, "sequence 0"),
    (
        {"log_logging": torch.tensor([-3.0, -2.0, -1e4]), "ppo_eps": 0.2,
         "advantages": torch.tensor([1.0, -1.0, -0.5])},
        WeightOverflowError, "sequence 2",
    ),  # PPO does not bound w from above when A < 0
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("override", "err", "match"), POPE_BAD)
def test_pope_loss_rejects(override, err, match, backend):
    with pytest.raises(err, match=match):
        ops.pope_loss(**_loss_args(**override), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pope_loss_extreme_but_valid(backend):
    """-1e4 with clip is finite; log_logging within the 1e-6 rounding tolerance is accepted;
    -1e4 on an A = 0 sequence contributes nothing (no error)."""
    ll = torch.tensor([-1e4, -2.0, -5.0])
    out = ops.pope_loss(**_loss_args(log_logging=ll), clip=5.0, backend=backend)
    assert torch.isfinite(out.loss) and bool(out.clipped[0])
    out = ops.pope_loss(**_loss_args(log_logging=torch.tensor([-3.0, 5e-7, -5.0])),
                        backend=backend)  # fmt: skip
    assert torch.isfinite(out.loss)
    adv = torch.tensor([0.0, -1.0, 0.5])
    out = ops.pope_loss(**_loss_args(log_logging=ll, advantages=adv), backend=backend)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_do_not_modify_inputs(backend):
    kw = _loss_args()
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    ops.pope_loss(**kw, clip=2.0, backend=backend)
    ops.sequence_logprob(kw["logits"], kw["targets"], kw["seq_index"], 3, backend=backend)
    for k, v in kw.items():
        assert torch.equal(v, before[k]) if isinstance(v, torch.Tensor) else v == before[k], k


# ------------------------------------------------------------ linear_sequence_logprob

LINEAR_BAD = [
    ("hidden", 0, NAN), ("hidden", 1, INF), ("hidden", 2, -INF),
    ("weight", 0, NAN), ("weight", 3, INF),
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "row", "value"), LINEAR_BAD)
def test_linear_rejects_non_finite(name, row, value, backend):
    kw = {"hidden": torch.randn(5, 4), "weight": torch.randn(11, 4)}
    kw[name] = _with(kw[name], row, 1, value)
    y = torch.tensor([0, 1, 10, -100, 3])
    si = torch.tensor([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        ops.linear_sequence_logprob(kw["hidden"], kw["weight"], y, si, 2, backend=backend)


# ---------------------------------------------------------------------- PopeObjective

OBJECTIVE_BAD = [
    ({"ignore_index": "x"}, TypeError, "ignore_index must be an int"),
    ({"ignore_index": 1.5}, TypeError, "ignore_index must be an int"),
    ({"ignore_index": True}, TypeError, "ignore_index must be an int"),
    ({"backend": "nope"}, ValueError, "backend must be one of"),
    ({"backend": 3}, TypeError, "backend must be a str"),
    ({"clip": INF}, ValueError, "clip must be a finite positive float"),
    ({"clip": NAN}, ValueError, "clip must be a finite positive float"),
    ({"lam": INF}, TypeError, "lam must be a finite float"),
]


@pytest.mark.parametrize(("kw", "err", "match"), OBJECTIVE_BAD)
def test_objective_rejects_at_construction(kw, err, match):
    with pytest.raises(err, match=match):
        PopeObjective(**kw)


@pytest.mark.parametrize("backend", [None, "auto", "torch", "triton"])
def test_objective_accepts_valid_backends(backend):
    assert PopeObjective(backend=backend).backend == backend


# ------------------------------------------------------------------ diversity_reward(p=)

_PTR = np.array([0, 2, 2, 5])
_ASPECT = np.array([0, 1, 1, 0, 2])
P_BAD = [
    (np.full((3, 3), 5.0), "row 0 sums to 15.0"),
    (np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.5, 0.4, 0.0]]), "row 2 sums to 0.9"),
    (np.array([[1.0, 1e-5, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), "row 0 sums to 1.00001"),
]


@pytest.mark.parametrize(("p", "match"), P_BAD)
def test_diversity_reward_rejects_p_off_the_simplex(p, match):
    p.flags.writeable = False
    with pytest.raises(ValueError, match=match):
        pope.diversity_reward(_PTR, aspect=_ASPECT, n_aspects=3, p=p)


def test_diversity_reward_accepts_simplex_and_zero_rows():
    p = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.3, 0.5 + 5e-7]])
    p.flags.writeable = False
    before = p.copy()
    d = pope.diversity_reward(_PTR, aspect=_ASPECT, n_aspects=3, p=p)
    assert d.shape == (5,) and np.isfinite(d).all()
    np.testing.assert_array_equal(p, before)


def test_diversity_reward_ips_p_is_unnormalised():
    """IPS coverage rows are (1/K) sum w q: any non-negative sum is valid there."""
    p = np.full((3, 3), 5.0)
    d = pope.diversity_reward(_PTR, aspect=_ASPECT, n_aspects=3, p=p, mode="ips")
    assert np.isfinite(d).all()
