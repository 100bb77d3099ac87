"""Atomic, verifiable checkpoint directories that load without running code.

Writing (:func:`write_checkpoint`)
    Every file goes into a hidden temporary directory next to the target
    (``.checkpoint-N.tmp-<pid>``) and is fsynced; the manifest ``trainer_state.json`` is written
    last, with the size and SHA-256 of every other file; the temporary directory is fsynced and
    renamed to ``checkpoint-N`` (``os.replace``), and the parent directory is fsynced. A kill at
    any point leaves either the previous state or the complete new checkpoint under the final
    name; a leftover temporary directory is never taken for a checkpoint and is removed by the
    next write.
Reading (:func:`verify_checkpoint`, :func:`find_latest`, :func:`load_tensors`, :func:`read_json`)
    A checkpoint is *complete* when its manifest parses, has this module's format and every file
    it lists has the recorded size and SHA-256. Tensors are read with
    ``torch.load(weights_only=True)`` (no arbitrary unpickling), other state is JSON. Every
    problem is a :class:`CheckpointError` naming the file.
Run directories (:func:`run_files`, :func:`clear_run_files`)
    The files a training run writes into its output directory, to refuse or clear a previous
    run's output explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "MANIFEST",
    "CheckpointError",
    "clear_run_files",
    "find_latest",
    "load_tensors",
    "read_json",
    "run_files",
    "verify_checkpoint",
    "write_checkpoint",
    "write_directory",
]

MANIFEST = "trainer_state.json"
FORMAT = 1
_NAME = re.compile(r"checkpoint-(\d+)")
# leftovers of a killed writer: .checkpoint-N.tmp-PID, .final.old-PID, .metrics.jsonl.tmp-PID
_STALE = re.compile(r"\.(checkpoint-\d+|final|metrics\.jsonl)\.(tmp|old)-\d+")

Writer = Callable[[IO[bytes]], Any]


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt, or holds data pope refuses to load."""


# ----------------------------------------------------------------------------- writing
def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (created / renamed files) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - e.g. some network file systems
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_file(path: Path, write: Writer) -> dict[str, Any]:
    """Write one file with ``write(f)``, fsync it; return its size and SHA-256."""
    with path.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _remove_stale(parent: Path, name: str) -> None:
    """Remove temporary directories a killed writer left behind (``.NAME.tmp-PID``)."""
    mine = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-\d+")
    for p in parent.iterdir():
        if (_STALE.fullmatch(p.name) or mine.fullmatch(p.name)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _publish(tmp: Path, path: Path) -> None:
    """Rename the finished ``tmp`` directory to ``path`` (replacing an older one)."""
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_directory(path: str | os.PathLike[str], fill: Callable[[Path], Any]) -> Path:
    """Create directory ``path`` atomically: ``fill(tmp)`` writes into a temporary directory,
    which is fsynced (files and directory) and renamed to ``path``.

    For directories written by other libraries (``save_pretrained``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path.parent, path.name)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        fill(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        _publish(tmp, path)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_checkpoint(
    path: str | os.PathLike[str], files: Mapping[str, Writer], state: Mapping[str, Any]
) -> Path:
    """Write a checkpoint directory atomically.

    Parameters
    ----------
    path : path of the checkpoint directory (e.g. ``output_dir/checkpoint-12``)
    files : mapping of file name to ``write(f)``, a function writing the file's bytes to the
        open binary file ``f``
    state : JSON-serialisable trainer state; stored in the manifest ``trainer_state.json``
        together with ``format`` and ``files`` (name -> ``{"size", "sha256"}``)

    Returns
    -------
    Path
        ``path``, complete: all files fsynced, the manifest last, then one rename.
    """
    path = Path(path)
    bad = [n for n in files if n == MANIFEST or Path(n).name != n]
    if bad:
        raise ValueError(f"invalid checkpoint file names {bad}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path.parent, path.name)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        listing = {name: _write_file(tmp / name, write) for name, write in files.items()}
        doc = {**state, "format": FORMAT, "files": listing}
        text = json.dumps(doc, indent=1, default=str, allow_nan=False).encode()
        _write_file(tmp / MANIFEST, lambda f: f.write(text))
        _fsync_dir(tmp)
        _publish(tmp, path)
    except Exception:  # an error (disk full...): leave nothing behind; a kill leaves tmp
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ----------------------------------------------------------------------------- reading
def verify_checkpoint(
    path: str | os.PathLike[str], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check that ``path`` is a complete checkpoint; return its manifest.

    Complete: ``trainer_state.json`` parses as this format's manifest, lists every name in
    ``required``, and every listed file exists with the recorded size and SHA-256.

    Raises
    ------
    CheckpointError
        Naming the first file that is missing, truncated or altered.
    """
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a checkpoint directory")
    mf = p / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{mf}: missing (the checkpoint is incomplete)")
    try:
        doc = json.loads(mf.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{mf}: not valid JSON ({e}); the file is truncated") from e
    listing = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(listing, dict):
        raise CheckpointError(
            f"{mf}: not a pope checkpoint manifest (expected format {FORMAT} with a file list)"
        )
    missing = [n for n in required if n not in listing]
    if missing:
        raise CheckpointError(f"{mf}: the manifest does not list {missing}")
    for name, meta in listing.items():
        f = p / str(name)
        ok = (
            isinstance(meta, dict)
            and isinstance(meta.get("size"), int)
            and isinstance(meta.get("sha256"), str)
        )
        if not ok or Path(str(name)).name != name:
            raise CheckpointError(f"{mf}: bad manifest entry for {name!r}")
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (the checkpoint is incomplete)")
        size = f.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(
                f"{f}: {size} bytes, the manifest says {meta['size']} (truncated or altered)"
            )
        if _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"{f}: content does not match its SHA-256 in the manifest")
    return doc


def find_latest(
    directory: str | os.PathLike[str], required: tuple[str, ...] = ()
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete ``checkpoint-N`` under ``directory``.

    Returns
    -------
    (path or None, skipped)
        ``skipped``: the newer ``checkpoint-N`` directories that failed
        :func:`verify_checkpoint`, with the reason.
    """
    d = Path(directory)
    found = []
    if d.is_dir():
        for p in d.iterdir():
            m = _NAME.fullmatch(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    skipped: list[tuple[Path, str]] = []
    for _, p in sorted(found, reverse=True):
        try:
            verify_checkpoint(p, required)
        except CheckpointError as e:
            skipped.append((p, str(e)))
            continue
        return p, skipped
    return None, skipped


def load_tensors(path: str | os.PathLike[str], map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only.

    Raises
    ------
    CheckpointError
        The file is corrupt, or it holds other objects (which are never unpickled).
    """
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError (refused object), RuntimeError (bad zip), EOFError
        raise CheckpointError(
            f"{path}: cannot be loaded as tensors only ({_reason(e)}); the file is corrupt or "
            "holds objects pope refuses to unpickle"
        ) from e


def _reason(e: BaseException) -> str:
    """One line of ``torch.load``'s error (its weights-only message spans many lines)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", x).strip() for x in str(e).splitlines()]
    lines = [x for x in lines if x]
    pick = next((x for x in lines if "Unsupported global" in x), lines[0] if lines else "")
    pick = pick.split("WeightsUnpickler error: ")[-1].split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: {pick}" if pick else type(e).__name__


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file of a checkpoint; :class:`CheckpointError` naming it otherwise."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e


# ----------------------------------------------------------------------------- run directories
def run_files(output_dir: str | os.PathLike[str], log_file: str | os.PathLike[str]) -> list[Path]:
    """What an earlier training run left in ``output_dir``: the metrics log, ``checkpoint-N``
    directories, ``final`` and leftover temporary directories (nothing else is ours)."""
    d = Path(output_dir)
    out = [Path(log_file)] if Path(log_file).exists() else []
    if d.is_dir():
        for p in sorted(d.iterdir()):
            name = p.name
            if _NAME.fullmatch(name) or name == "final" or _STALE.fullmatch(name):
                out.append(p)
    return out


def clear_run_files(output_dir: str | os.PathLike[str], log_file: str | os.PathLike[str]) -> None:
    """Delete :func:`run_files` (other files in ``output_dir`` are kept)."""
    for p in run_files(output_dir, log_file):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
