"""The kernels compile for real GPU targets (sm_80, sm_90) on a machine without a GPU.

The interpreter tests (``test_ops_*.py``) check what the kernels compute. They never run the
GPU compiler, which rejects code that the interpreter accepts. This test runs
:mod:`pope.kernels.aot` in a child process without ``TRITON_INTERPRET``. There the real
launchers are compiled to cubins through Triton's bundled ``ptxas``. The test then checks the
resource facts that the bandwidth targets depend on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton  # noqa: F401  (in the test extra: an import error fails)
from pope.kernels import aot

ARCHES = (80, 90)
ROW_KERNELS = ("_logprob_fwd_kernel", "_logprob_bwd_kernel")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("aot") / "reports.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pope.kernels.aot", "--quick", "--json", str(out), "--arch"]
    proc = subprocess.run(
        cmd + [str(a) for a in ARCHES], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (
        f"AOT compile failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return json.loads(Path(out).read_text())


def test_every_case_compiles_for_every_arch(reports: list[dict]) -> None:
    compiled = {(r["case"], r["arch"]) for r in reports}
    expected = {(case, arch) for case in aot.default_cases(full=False) for arch in ARCHES}
    assert compiled == expected
    kernels = {r["kernel"] for r in reports}
    assert kernels == {*ROW_KERNELS, "_pope_weight_kernel"}


def test_no_register_spills(reports: list[dict]) -> None:
    spills = [(r["case"], r["arch"], r["local_bytes"]) for r in reports if r["local_bytes"]]
    assert spills == []
    # at most 128 registers per thread keeps two 8-warp programs resident per SM
    heavy = [(r["case"], r["arch"], r["registers"]) for r in reports if r["registers"] > 128]
    assert heavy == []


def test_aligned_rows_use_128_bit_accesses(reports: list[dict]) -> None:
    """V % 16 == 0 (16-byte aligned rows): logits read, gradients written 16 B at a time."""
    for r in reports:
        if r["kernel"] not in ROW_KERNELS:
            continue
        aligned = "V=32000" in r["case"] or r["case"].startswith("linear")
        if aligned:
            assert r["vector_load"], r
            assert r["vector_store"] == (r["kernel"] == "_logprob_bwd_kernel"), r
        elif "unaligned" in r["case"]:
            # the compiler cannot prove alignment: scalar accesses (correct, slower)
            assert not r["vector_load"], r


def test_refuses_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"), aot.compile_launches(90):
        pass
