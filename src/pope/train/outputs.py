"""What an :class:`~pope.train.OffPolicyTrainer` run writes and reads back: the files of a
checkpoint, the RNG states, the metrics log, the other run files of ``output_dir``."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pope.checkpoint import CheckpointError, run_files

if TYPE_CHECKING:
    from pope.train.dataset import PopeDataset

__all__ = [
    "CHECKPOINT_FILES",
    "RUN_EXTRAS",
    "CheckpointWarning",
    "OutputExistsError",
    "json_finite",
    "rng_state",
    "run_outputs",
    "set_rng_state",
    "truncate_log",
    "unpack_logprobs",
]

CHECKPOINT_FILES = ("model.pt", "optimizer.pt", "scheduler.pt", "logprobs.pt", "rng.json")


class CheckpointWarning(UserWarning):
    """Resuming from ``"latest"`` skipped newer checkpoints that are incomplete or corrupt."""


class OutputExistsError(FileExistsError):
    """The output directory holds an earlier run's files and neither resume nor overwrite
    was asked for."""


#: Files and directories a run writes into ``output_dir`` besides the metrics log,
#: ``checkpoint-N`` and ``final``: held-out results, TensorBoard / wandb files, the summary.
RUN_EXTRAS = ("eval", "runs", "wandb", "summary.json", "aspect_model.json")


def run_outputs(output_dir: str | os.PathLike[str], log_file: str | os.PathLike[str]) -> list[Path]:
    """Everything an earlier training run left in ``output_dir``
    (:func:`pope.checkpoint.run_files` and :data:`RUN_EXTRAS`)."""
    d = Path(output_dir)
    return run_files(d, log_file) + [d / n for n in RUN_EXTRAS if (d / n).exists()]


def rng_state() -> dict[str, Any]:
    """Python, NumPy (global), torch and CUDA RNG states as JSON-serialisable lists of ints."""
    version, keys, gauss = random.getstate()
    legacy = np.random.get_state(legacy=True)  # noqa: NPY002
    assert isinstance(legacy, tuple)  # the global RandomState is an MT19937 (a dict otherwise)
    name, mt, pos, has_gauss, cached = legacy
    st: dict[str, Any] = {
        "python": {"version": version, "state": list(keys), "gauss_next": gauss},
        "numpy": {
            "bit_generator": name,
            "keys": mt.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        st["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return st


def set_rng_state(st: Any, source: Path) -> None:
    """Restore :func:`rng_state` output (read from ``source``; named in errors)."""
    try:
        py, nps = st["python"], st["numpy"]
        python = (int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"])
        numpy_state = (
            str(nps["bit_generator"]),
            np.asarray(nps["keys"], dtype=np.uint32),
            int(nps["pos"]),
            int(nps["has_gauss"]),
            float(nps["cached_gaussian"]),
        )
        tstate = torch.tensor(st["torch"], dtype=torch.uint8)
        cuda = [torch.tensor(s, dtype=torch.uint8) for s in st.get("cuda", [])]
        random.setstate(python)
        np.random.set_state(numpy_state)  # noqa: NPY002
        torch.set_rng_state(tstate)
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"{source}: not a valid RNG state ({type(e).__name__}: {e})") from e
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def unpack_logprobs(
    lp: Any, dataset: PopeDataset, source: Path
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """``log_logging`` and the per-token reference log-probs of ``logprobs.pt``, checked."""
    n = dataset.n_responses
    ll = lp.get("log_logging") if isinstance(lp, dict) else None
    if not isinstance(ll, torch.Tensor) or ll.shape != (n,):
        raise CheckpointError(f"{source}: expected a log_logging tensor of shape ({n},)")
    ref = None
    if "ref_token_logprobs" in lp:
        flat, lens = lp["ref_token_logprobs"], lp.get("ref_token_lengths")
        ok = isinstance(flat, torch.Tensor) and isinstance(lens, torch.Tensor)
        if not ok or lens.shape != (n,) or int(lens.sum()) != flat.numel() or (lens < 0).any():
            raise CheckpointError(f"{source}: inconsistent ref_token_logprobs / lengths")
        flat = flat.cpu().numpy().astype(np.float64)
        ref = np.split(flat, np.cumsum(lens.cpu().numpy())[:-1])
    return ll.cpu().numpy().astype(np.float64), ref


def json_finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_finite(v) for v in obj]
    return obj


def truncate_log(path: Path, step: int) -> None:
    """Keep the metric rows up to ``step`` (a resumed run rewrites the later ones); a row cut
    by a kill is dropped. Rewritten atomically."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)
