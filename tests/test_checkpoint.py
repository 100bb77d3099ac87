"""Checkpoints: atomic writes, resume after a kill at any point, nothing executes on load.

A tiny GPT-2 (built from a config, dropout on so the RNG state matters, ``beta > 0`` so the
reference token log-probs are part of the state) trains 4 steps with a checkpoint every 2.
Faults are injected into the write of checkpoint-4 (an exception that, like a kill, skips all
clean-up, raised before / in the middle of each file, after the manifest, after the rename;
and one real SIGKILL of a child process); a new trainer then resumes from ``"latest"`` and
must end bit-identical to the uninterrupted run (``torch.equal``, no tolerance: the same
operations on the same inputs in the same order).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import make_records, make_tokenizer, tiny_gpt2

import pope.checkpoint as ckpt
from pope.checkpoint import CheckpointError, find_latest, verify_checkpoint
from pope.train import (
    CHECKPOINT_FILES,
    CheckpointWarning,
    OffPolicyTrainer,
    OutputExistsError,
    PopeDataset,
    TrainConfig,
)
from pope.train.outputs import rng_state, set_rng_state

RECORDS = make_records(n_prompts=6, k=3, seed=5)
ALL_FILES = (*CHECKPOINT_FILES, ckpt.MANIFEST)


class Killed(BaseException):
    """Stands for a kill: not an Exception, so the writer's clean-up does not run."""


def config(out: Path, **kw) -> TrainConfig:
    base = dict(
        lr=5e-3,
        token_budget=60,
        max_steps=4,
        save_every=2,
        output_dir=str(out),
        progress=False,
        lam=0.5,
        seed=0,
        disable_dropout=False,
        beta=0.1,
    )
    base.update(kw)
    return TrainConfig(**base)


def trainer(out: Path, tok, **kw) -> OffPolicyTrainer:
    # a different initial model from the reference run's: a resumed run must take it all
    # from the checkpoint
    return OffPolicyTrainer(
        tiny_gpt2(seed=kw.pop("model_seed", 0), dropout=0.1),
        tok,
        PopeDataset.from_records(RECORDS),
        config(out, **kw),
        reference_model="initial",
    )


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def metric_rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tok):
    """The uninterrupted run: final parameters and metric rows."""
    out = tmp_path_factory.mktemp("ref") / "out"
    tr = trainer(out, tok)
    tr.train()
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    return params(tr.inner_model), metric_rows(out), out


# ----------------------------------------------------------------------------- kills
def _fault_in_write_file(monkeypatch, index: int, midway: bool) -> None:
    """Kill the write of checkpoint-4 before (or halfway through) its ``index``-th file."""
    orig = ckpt._write_file
    calls = []

    def write_file(path: Path, write):
        if path.parent.name.startswith(".checkpoint-4."):
            calls.append(path.name)
            if len(calls) - 1 == index:
                if midway:
                    orig(path, write)
                    with path.open("r+b") as f:
                        f.truncate(path.stat().st_size // 2)
                raise Killed(path.name)
        return orig(path, write)

    monkeypatch.setattr(ckpt, "_write_file", write_file)


def _fault_at_dir_sync(monkeypatch, after_rename: bool) -> None:
    """Kill after the manifest (before the rename), or after the rename (before the parent's
    fsync and before ``final`` is written)."""
    orig = ckpt._fsync_dir

    def fsync_dir(path: Path):
        orig(path)
        hit = (not after_rename and path.name.startswith(".checkpoint-4.")) or (
            after_rename and (path / "checkpoint-4").is_dir()
        )
        if hit:
            raise Killed(str(path))

    monkeypatch.setattr(ckpt, "_fsync_dir", fsync_dir)


FAULTS = [("file", i, m) for i in range(len(ALL_FILES)) for m in (False, True)]
FAULTS += [("dir", 0, False), ("dir", 1, False)]


@pytest.mark.parametrize("kind, index, midway", FAULTS)
def test_killed_checkpoint_write_then_resume_is_bit_identical(
    tmp_path, tok, reference, monkeypatch, kind, index, midway
):
    ref_params, ref_rows, _ = reference
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        if kind == "file":
            _fault_in_write_file(m, index, midway)
        else:
            _fault_at_dir_sync(m, after_rename=bool(index))
        with pytest.raises(Killed):
            trainer(out, tok).train()
    complete = kind == "dir" and index == 1
    assert (out / "checkpoint-4").is_dir() == complete  # never a partial checkpoint-4
    assert not (out / "final").exists()
    resumed = trainer(out, tok, model_seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)  # nothing broken to skip
        resumed.train(resume_from="latest")
    assert resumed.resumed_from.name == ("checkpoint-4" if complete else "checkpoint-2")
    assert_bit_identical(params(resumed.inner_model), ref_params)
    assert metric_rows(out) == ref_rows
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # tmp removed
    verify_checkpoint(out / "checkpoint-4", CHECKPOINT_FILES)
    assert (out / "final" / "config.json").is_file()


CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import pope.checkpoint as ckpt
from test_checkpoint import trainer, make_tokenizer

orig = ckpt._write_file
count = []

def write_file(path, write):
    if path.parent.name.startswith(".checkpoint-4."):
        count.append(path.name)
        if len(count) - 1 == {index}:
            orig(path, write)
            with path.open("r+b") as f:
                f.truncate(path.stat().st_size // 3)
            os.kill(os.getpid(), signal.SIGKILL)
    return orig(path, write)

ckpt._write_file = write_file
trainer(__import__("pathlib").Path({out!r}), make_tokenizer()).train()
"""


def test_sigkill_during_checkpoint_write_then_resume_is_bit_identical(tmp_path, tok, reference):
    ref_params, ref_rows, _ = reference
    out = tmp_path / "out"
    script = CHILD.format(tests=str(Path(__file__).parent), index=0, out=str(out))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], timeout=300, capture_output=True, text=True
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert any(p.name.startswith(".checkpoint-4.tmp-") for p in out.iterdir())
    assert not (out / "checkpoint-4").exists()
    resumed = trainer(out, tok, model_seed=9)
    resumed.train(resume_from="latest")
    assert resumed.resumed_from.name == "checkpoint-2"
    assert_bit_identical(params(resumed.inner_model), ref_params)
    assert metric_rows(out) == ref_rows


def test_last_checkpoint_is_written_once(tmp_path, tok, monkeypatch):
    written = []
    orig = ckpt.write_checkpoint

    def spy(path, files, state):
        written.append(Path(path).name)
        return orig(path, files, state)

    monkeypatch.setattr("pope.train.trainer.write_checkpoint", spy)
    trainer(tmp_path / "out", tok).train()
    assert written == ["checkpoint-2", "checkpoint-4"]
    # resuming a finished run writes no checkpoint again
    trainer(tmp_path / "out", tok).train(resume_from="latest")
    assert written == ["checkpoint-2", "checkpoint-4"]


# ----------------------------------------------------------------------------- broken files
def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


BREAKS = {
    "state_empty_object": lambda d: (d / ckpt.MANIFEST).write_text("{}"),
    "state_half_written": lambda d: (d / ckpt.MANIFEST).write_bytes(
        (d / ckpt.MANIFEST).read_bytes()[:40]
    ),
    "state_missing": lambda d: (d / ckpt.MANIFEST).unlink(),
    **{
        f"truncated_{name}": (lambda n: lambda d: (d / n).write_bytes((d / n).read_bytes()[:50]))(
            name
        )
        for name in CHECKPOINT_FILES
    },
    "flipped_byte_model": lambda d: _flip(d / "model.pt"),
}


def _flip(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 1
    f.write_bytes(bytes(b))


@pytest.mark.parametrize("name", list(BREAKS))
def test_broken_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, tok, reference, name):
    ref_params, ref_rows, ref_out = reference
    out = _copy_run(ref_out, tmp_path / "out")
    BREAKS[name](out / "checkpoint-4")
    # named explicitly, the broken one is a clear error naming it
    with pytest.raises(CheckpointError, match="checkpoint-4"):
        trainer(out, tok).load_checkpoint(out / "checkpoint-4")
    tr = trainer(out, tok, model_seed=9)
    with pytest.warns(CheckpointWarning, match=r"resuming from checkpoint-2.*checkpoint-4"):
        tr.train(resume_from="latest")
    assert tr.resumed_from.name == "checkpoint-2"
    assert_bit_identical(params(tr.inner_model), ref_params)
    assert metric_rows(out) == ref_rows
    verify_checkpoint(out / "checkpoint-4", CHECKPOINT_FILES)  # rewritten, complete
    # no complete checkpoint at all: an error listing what was skipped
    BREAKS[name](out / "checkpoint-4")
    BREAKS[name](out / "checkpoint-2")
    with pytest.raises(CheckpointError, match=r"no complete checkpoint.*checkpoint-4.*-2"):
        trainer(out, tok).train(resume_from="latest")


def test_explicit_broken_checkpoint_is_a_clear_error(tmp_path, tok, reference):
    _, _, ref_out = reference
    out = _copy_run(ref_out, tmp_path / "out")
    (out / "checkpoint-2" / "rng.json").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"rng\.json: 0 bytes"):
        trainer(out, tok).load_checkpoint(out / "checkpoint-2")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        trainer(out, tok).load_checkpoint(out / "nowhere")
    empty = tmp_path / "empty"
    with pytest.raises(CheckpointError, match="no complete checkpoint under"):
        trainer(empty, tok).load_checkpoint("latest")


# ----------------------------------------------------------------------------- crafted pickles
class Payload:
    """Unpickling it runs ``exec``: creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _crafted(kind: str, marker: Path) -> bytes:
    if kind == "pickle":
        return pickle.dumps(Payload(marker), protocol=2)
    import io

    buf = io.BytesIO()
    torch.save({"weight": Payload(marker)}, buf)  # a torch zip file with the payload inside
    return buf.getvalue()


def _replace_and_reseal(d: Path, name: str, data: bytes) -> None:
    """Replace a file and fix the manifest: the attacker controls the whole directory."""
    (d / name).write_bytes(data)
    if name == ckpt.MANIFEST:
        return
    doc = json.loads((d / ckpt.MANIFEST).read_text())
    doc["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (d / ckpt.MANIFEST).write_text(json.dumps(doc))


@pytest.mark.parametrize("kind", ["pickle", "torch_zip"])
def test_the_payload_is_live(tmp_path, kind):
    """Control: the crafted files do run code when unpickled without restriction."""
    marker = tmp_path / "marker"
    f = tmp_path / "f.pt"
    f.write_bytes(_crafted(kind, marker))
    with contextlib.suppress(RuntimeError):  # a bare pickle: runs, then "bad magic number"
        torch.load(f, weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("kind", ["pickle", "torch_zip"])
@pytest.mark.parametrize("name", ALL_FILES)
def test_crafted_checkpoint_file_executes_nothing(tmp_path, tok, reference, kind, name):
    _, _, ref_out = reference
    out = _copy_run(ref_out, tmp_path / "out")
    marker = tmp_path / "marker"
    d = out / "checkpoint-4"
    _replace_and_reseal(d, name, _crafted(kind, marker))
    tr = trainer(out, tok)
    before = params(tr.inner_model)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        tr.load_checkpoint(d)
    assert not marker.exists()
    assert_bit_identical(params(tr.inner_model), before)  # nothing was half-loaded
    assert tr.step == 0


# ----------------------------------------------------------------------------- pieces
def test_rng_state_round_trips_through_json(tmp_path):
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    random.gauss(0, 1)  # a cached gaussian in both legacy generators
    np.random.standard_normal()  # noqa: NPY002
    st = json.loads(json.dumps(rng_state()))
    want = (
        random.random(),
        random.gauss(0, 1),
        np.random.standard_normal(3),  # noqa: NPY002
        torch.rand(3),
    )
    random.seed(7)
    np.random.seed(7)  # noqa: NPY002
    torch.manual_seed(7)
    set_rng_state(st, tmp_path / "rng.json")
    got = (
        random.random(),
        random.gauss(0, 1),
        np.random.standard_normal(3),  # noqa: NPY002
        torch.rand(3),
    )
    assert got[:2] == want[:2]
    np.testing.assert_array_equal(got[2], want[2])
    assert torch.equal(got[3], want[3])
    with pytest.raises(CheckpointError, match=r"rng\.json: not a valid RNG state"):
        set_rng_state({"python": 1}, tmp_path / "rng.json")


def test_write_checkpoint_error_leaves_nothing_and_keeps_the_old(tmp_path):
    d = tmp_path / "checkpoint-1"
    ckpt.write_checkpoint(d, {"a.bin": lambda f: f.write(b"old")}, {"step": 1})

    def fail(f):
        f.write(b"x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        ckpt.write_checkpoint(d, {"a.bin": fail}, {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    assert (d / "a.bin").read_bytes() == b"old"
    assert verify_checkpoint(d)["step"] == 1
    # rewriting the same name replaces it completely
    ckpt.write_checkpoint(d, {"b.bin": lambda f: f.write(b"new")}, {"step": 1})
    assert sorted(p.name for p in d.iterdir()) == ["b.bin", ckpt.MANIFEST]
    assert find_latest(tmp_path) == (d, [])
    with pytest.raises(ValueError, match="invalid checkpoint file names"):
        ckpt.write_checkpoint(d, {"../evil": lambda f: None}, {})


def test_output_dir_of_an_earlier_run_is_refused_unless_overwrite(tmp_path, tok):
    out = tmp_path / "out"
    trainer(out, tok, max_steps=2).train()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"earlier run.*overwrite"):
        trainer(out, tok, max_steps=2).train()
    assert (out / "checkpoint-2").is_dir()
    with pytest.raises(ValueError, match="exclude each other"):
        trainer(out, tok, overwrite=True).train(resume_from="latest")
    (out / "checkpoint-7").mkdir()  # an earlier run's leftover, also ours
    tr = trainer(out, tok, max_steps=1, overwrite=True)
    tr.train()
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint-1",
        "final",
        "metrics.jsonl",
        "notes.txt",
        "summary.json",
    ]
    assert (out / "notes.txt").read_text() == "mine"  # not ours: kept
    assert [r["step"] for r in metric_rows(out)] == [1]
    assert os.listdir(out / "checkpoint-1") and find_latest(out)[0].name == "checkpoint-1"
