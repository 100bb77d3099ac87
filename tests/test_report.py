"""``pope report``: PNG figures and a self-contained HTML page from evaluate results."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from test_aspect_model import embedded_log, run

from pope.io import write_logs
from pope.report import load_results


@pytest.fixture
def results(tmp_path, capsys):
    logs = write_logs(embedded_log(5), tmp_path / "logs.jsonl")
    out = tmp_path / "res.json"
    code, _, err = run(
        ["evaluate", "--logs", logs, "--aspects-from", "column", "--n-aspects", "3", "--out", out],
        capsys,
    )
    assert code == 0, err
    return out


def _pngs_in(page: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    ]


def test_report_writes_figures_and_a_self_contained_page(tmp_path, results, capsys):
    out = tmp_path / "report"
    code, _, err = run(["report", results, "--out", out], capsys)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["aspects.png", "ess.png", "estimates.png", "report.html", "weights.png"]
    page = (out / "report.html").read_text()
    embedded = _pngs_in(page)
    assert len(embedded) == 4 and all(b.startswith(b"\x89PNG\r\n\x1a\n") for b in embedded)
    assert sorted(embedded) == sorted((out / n).read_bytes() for n in names if n.endswith("png"))
    assert "src='http" not in page and "<script" not in page  # nothing fetched
    d = json.loads(results.read_text())
    assert f"{d['pope']['total']['value']:.4f}" in page  # the numbers are on the page
    # an earlier report is not overwritten without --overwrite
    before = (out / "report.html").read_text()
    code, _, err = run(["report", results, "--out", out], capsys)
    assert code == 2 and "--overwrite" in err
    assert (out / "report.html").read_text() == before
    code, _, err = run(["report", results, "--out", out, "--overwrite"], capsys)
    assert code == 0, err


def test_report_without_weights_or_aspects_and_bad_input(tmp_path, results, capsys):
    d = json.loads(results.read_text())
    d.pop("log_weights")
    d["aspects"]["table"] = []
    slim = tmp_path / "slim.json"
    slim.write_text(json.dumps(d))
    out = tmp_path / "r"
    code, _, err = run(["report", slim, "--out", out], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["ess.png", "estimates.png", "report.html"]
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"policies": {"a": d, "b": d}}))
    assert list(load_results(two)) == ["a", "b"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": 1}))
    code, _, err = run(["report", bad, "--out", tmp_path / "r2"], capsys)
    assert code == 2 and "no 'pope' estimates" in err
    np.testing.assert_array_equal(len(d["pope"]), 3)
