r"""Collective helpers so that sharded POPE statistics add up to the single-process result.

Under ``torch.distributed`` (DDP or FSDP) every rank holds a shard of the global batch. The
objective needs global quantities: the number of sequences :math:`N`, the self-normalisation
denominators :math:`\sum w`, and the per-prompt aspect histograms
:math:`\sum_k w_{ik} q_{ik}(c)` — and a prompt's responses may be split over several ranks.
The helpers here make each rank see the global values:

* :func:`union_keys` — the sorted union of the prompt keys held by all ranks, and each local
  element's position in it (so per-prompt sums can be all-reduced keyed by a *global* prompt
  index, without knowing the number of prompts in advance);
* :func:`all_reduce` — ``SUM`` / ``MAX`` all-reduce (returns a new tensor; identity when not
  distributed).

None of them is differentiable: the objective only reduces stop-gradient statistics; the
gradient of each rank's loss flows through its local sequences only, and the data-parallel
wrapper (DDP's gradient averaging, or an explicit all-reduce) combines the gradients (see
:class:`pope.objective.PopeObjective`, ``grad_reduction``).

Every rank must call the helpers the same number of times in the same order (they are
collectives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["DistInfo", "all_reduce", "dist_info", "union_keys"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: whether collectives run, the world size, the rank, the group."""

    enabled: bool
    world_size: int
    rank: int
    group: Any = None


def dist_info(process_group: Any = None, enabled: bool | None = None) -> DistInfo:
    """The distributed context of this process.

    Parameters
    ----------
    process_group : torch.distributed.ProcessGroup, optional
        The group to reduce over (``None``: the default group).
    enabled : bool, optional
        ``None`` (auto): collectives run when ``torch.distributed`` is initialised and the
        group has more than one rank; ``False``: never; ``True``: require an initialised group.
    """
    avail = torch.distributed.is_available() and torch.distributed.is_initialized()
    if enabled is False or (enabled is None and not avail):
        return DistInfo(False, 1, 0, None)
    if not avail:
        raise RuntimeError("distributed=True but torch.distributed is not initialised")
    world = torch.distributed.get_world_size(process_group)
    rank = torch.distributed.get_rank(process_group)
    if enabled is None and world == 1:
        return DistInfo(False, 1, 0, None)
    return DistInfo(True, world, rank, process_group)


def all_reduce(tensor: torch.Tensor, op: Literal["sum", "max"], info: DistInfo) -> torch.Tensor:
    """``SUM`` or ``MAX`` all-reduce of a copy of ``tensor`` (``tensor`` itself if not enabled)."""
    if not info.enabled:
        return tensor
    out = tensor.detach().clone().contiguous()
    red = torch.distributed.ReduceOp.SUM if op == "sum" else torch.distributed.ReduceOp.MAX
    torch.distributed.all_reduce(out, op=red, group=info.group)
    return out


def _all_gather_varlen(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenation over ranks (in rank order) of 1-d tensors of different lengths."""
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    torch.distributed.all_gather(sizes, n, group=info.group)
    lens = [int(s.item()) for s in sizes]
    m = max(lens)
    padded = torch.zeros(m, dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    torch.distributed.all_gather(parts, padded, group=info.group)
    return torch.cat([p[:k] for p, k in zip(parts, lens)])


def union_keys(keys: torch.Tensor, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Global sorted unique keys and the position of each local key among them.

    Parameters
    ----------
    keys : (S,) int64
        One key (a global prompt id) per local element; repeats allowed.
    info : DistInfo

    Returns
    -------
    global_keys : (U,) int64
        Sorted union of the keys of all ranks (identical on every rank).
    position : (S,) int64
        ``global_keys[position] == keys``.
    """
    local = torch.unique(keys)
    glob = torch.unique(_all_gather_varlen(local, info)) if info.enabled else local
    position = torch.searchsorted(glob, keys)
    return glob, position
