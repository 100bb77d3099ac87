"""The examples in examples/ run as a user runs them (a subprocess from the repository root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pope.io import read_oasst

ROOT = Path(__file__).resolve().parent.parent

import tokenizers  # noqa: F401,E402
import transformers  # noqa: F401,E402  (in the test extra: an import error fails)


def test_oasst_walkthrough(tmp_path):
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "oasst_walkthrough.py"),
            "--workdir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for step in range(1, 10):
        assert f"== {step}." in out
    assert "all importance weights are 1" in proc.stderr  # step 5 warns
    target = json.loads((tmp_path / "target.json").read_text())
    same = json.loads((tmp_path / "reference.json").read_text())
    log = read_oasst(ROOT / "tests" / "data" / "oasst_10.jsonl")
    assert target["n_responses"] == same["n_responses"] == len(log)
    assert target["propensity"]["source"] == "logged column scored by pope score"
    assert target["propensity"]["model"] == str((tmp_path / "reference").resolve())
    assert not target["propensity"]["weights_identically_one"]
    assert 1 < target["pope"]["relevance"]["ess"] < len(log)
    assert same["propensity"]["weights_identically_one"]
    # weights all 1: the relevance is the mean over prompts of the average logged reward
    plain = (
        log.groupby("prompt_id", sort=False)["signal"]
        .apply(lambda s: float(np.mean(s / s.max())))
        .mean()
    )
    assert same["pope"]["relevance"]["value"] == pytest.approx(plain, abs=1e-12)
    assert same["pope"]["relevance"]["ess"] == pytest.approx(len(log), rel=1e-9)
    bc = json.loads((tmp_path / "bc.json").read_text())  # step 9: pi0 by behaviour cloning
    assert bc["propensity"]["source"] == "behaviour cloning, 3 folds"
    assert "logging propensities estimated by behaviour cloning" in bc["propensity"]["meaning"]
    assert bc["n_responses"] == len(log)
