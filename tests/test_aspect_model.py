"""Aspects as a saved model (k-means centres / label names as JSON) and the per-aspect table."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

import pope
from pope.aspects import AspectModel, aspect_table, kmeans
from pope.cli import main
from pope.io import write_logs


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def embedded_log(seed: int, n_prompts: int = 10, shift: float = 0.0) -> pd.DataFrame:
    """Three well-separated clusters in 4-d; ``shift`` moves every point (another sample)."""
    rng = np.random.default_rng(seed)
    means = np.array([[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]], dtype=float)
    rows = []
    for i in range(n_prompts):
        for k in range(int(rng.integers(2, 5))):
            c = int(rng.integers(0, 3))
            e = means[c] + shift + rng.normal(scale=0.5, size=4)
            ll = float(-rng.uniform(1, 6))
            rows.append(
                {
                    "prompt_id": f"p{i}",
                    "prompt": f"prompt {i}",
                    "response": f"resp {i}-{k} c{c}",
                    "signal": float(rng.integers(0, 5)),
                    "log_logging": ll,
                    "log_target": ll + float(rng.normal(scale=0.3)),
                    "embedding": e.tolist(),
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the file
def test_aspect_model_round_trips_exactly_and_loads_nothing_executable(tmp_path, rng):
    centers = rng.normal(size=(3, 5)) * 1e3
    m = AspectModel(
        "kmeans",
        3,
        centers=centers,
        embedding={"source": "column", "column": "emb"},
        soft=True,
        temperature=0.25,
        seed=7,
    )
    p = m.save(tmp_path / "a.json")
    back = AspectModel.load(p)
    np.testing.assert_array_equal(back.centers, centers)  # JSON floats round-trip exactly
    assert back.to_dict() == m.to_dict()
    with pytest.raises(FileExistsError, match="overwrite"):
        m.save(p)
    m.save(p, overwrite=True)
    x = rng.normal(size=(20, 5)) * 1e3
    np.testing.assert_array_equal(
        back.assign(x).labels, np.argmin(((x[:, None] - centers) ** 2).sum(-1), axis=1)
    )
    bad = tmp_path / "bad.json"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"format": "pope-aspect-model"}))
    for text, match in (
        (b"{}", "not a pope aspect model"),
        (b"[1, 2", "not a JSON"),
        (pickle.dumps(object), "not a JSON"),
    ):
        bad.write_bytes(text)
        with pytest.raises(ValueError, match=match):
            AspectModel.load(bad)
    d = m.to_dict()
    d["centers"] = [[1.0, float("nan")]] * 3
    with pytest.raises(ValueError, match="finite"):
        AspectModel.from_dict(d)
    with pytest.raises(ValueError, match="dimension"):
        back.assign(np.zeros((2, 4)))


# ----------------------------------------------------------------------------- the table
def test_aspect_table_coverages_sizes_and_examples(rng):
    ptr = np.array([0, 3, 5, 9])
    aspect = np.array([0, 0, 1, 2, 2, 0, 1, 1, 1])
    responses = [f"r{j}" for j in range(9)]
    fb = pope.LoggedFeedback(
        prompt_ptr=ptr,
        signal=rng.uniform(size=9),
        log_logging=np.full(9, -2.0),
        aspect=aspect,
        n_aspects=3,
    )
    on_policy = pope.evaluate(fb, np.full(9, -2.0), lam=1.0)
    rows = aspect_table(aspect, None, ptr, on_policy.p_hat, responses, names=["a", "b", "c"])
    # brute force: mean over prompts of each prompt's share of logged responses per aspect
    shares = np.array([[2 / 3, 1 / 3, 0], [0, 0, 1], [1 / 4, 3 / 4, 0]])
    np.testing.assert_allclose([r["logging_coverage"] for r in rows], shares.mean(0), rtol=1e-12)
    # on-policy (all weights 1) the target's plug-in coverage is the logged share
    np.testing.assert_allclose([r["target_coverage"] for r in rows], shares.mean(0), rtol=1e-12)
    assert [r["size"] for r in rows] == [3.0, 4.0, 2.0]
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["examples"] == ["r0", "r1", "r5"] and rows[2]["examples"] == ["r3", "r4"]
    # off-policy: the target coverage moves with the weights and still sums to 1
    lt = np.where(aspect == 1, -0.5, -3.0)
    off = pope.evaluate(fb, lt, lam=1.0)
    rows = aspect_table(aspect, None, ptr, off.p_hat, responses)
    tc = np.array([r["target_coverage"] for r in rows])
    assert tc.sum() == pytest.approx(1.0) and tc[1] > shares.mean(0)[1] + 0.1
    # k-means: representatives are the responses nearest to each centre
    emb = rng.normal(size=(9, 2))
    cen = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    rows = aspect_table(
        aspect, None, ptr, None, responses, embeddings=emb, centers=cen, n_examples=2
    )
    d0 = ((emb[aspect == 0] - cen[0]) ** 2).sum(1)
    assert rows[0]["examples"] == [
        responses[j] for j in np.flatnonzero(aspect == 0)[np.argsort(d0)][:2]
    ]
    assert rows[0]["target_coverage"] is None


# ----------------------------------------------------------------------------- the CLI
def test_evaluate_saves_the_aspect_model_and_reuses_it_on_another_log(tmp_path, capsys):
    a = write_logs(embedded_log(1), tmp_path / "a.jsonl")
    b = write_logs(embedded_log(2, shift=1.5), tmp_path / "b.jsonl")
    am, out_a = tmp_path / "aspects.json", tmp_path / "a-res.json"
    code, stdout, err = run(
        [
            "evaluate",
            "--logs",
            a,
            "--aspects-from",
            "column",
            "--n-aspects",
            "3",
            "--save-aspect-model",
            am,
            "--out",
            out_a,
        ],
        capsys,
    )
    assert code == 0, err
    assert "per aspect" in stdout and "logging" in stdout
    res_a = json.loads(out_a.read_text())
    saved = AspectModel.load(am)
    np.testing.assert_array_equal(saved.centers, np.array(res_a["aspects"]["model"]["centers"]))
    table = res_a["aspects"]["table"]
    assert len(table) == 3 and sum(r["size"] for r in table) == res_a["n_responses"]
    assert sum(r["logging_coverage"] for r in table) == pytest.approx(1.0)
    assert sum(r["target_coverage"] for r in table) == pytest.approx(1.0)
    assert all(1 <= len(r["examples"]) <= 3 for r in table)
    assert len(res_a["log_weights"]) == res_a["n_responses"]
    # log b with the saved model: a's centres, not a refit on b
    out_b, out_b2 = tmp_path / "b-res.json", tmp_path / "b-refit.json"
    code, _, err = run(
        ["evaluate", "--logs", b, "--aspects-from", "column", "--aspect-model", am, "--out", out_b],
        capsys,
    )
    assert code == 0, err
    got = np.array(json.loads(out_b.read_text())["aspects"]["model"]["centers"])
    np.testing.assert_array_equal(got, saved.centers)
    code, _, err = run(
        ["evaluate", "--logs", b, "--aspects-from", "column", "--n-aspects", "3", "--out", out_b2],
        capsys,
    )
    refit = np.array(json.loads(out_b2.read_text())["aspects"]["model"]["centers"])
    emb_b = np.stack(embedded_log(2, shift=1.5)["embedding"].to_numpy())
    np.testing.assert_allclose(refit, kmeans(emb_b, 3, seed=0).centers)
    assert not np.allclose(np.sort(refit, 0), np.sort(saved.centers, 0))  # another clustering
    # the saved model is never overwritten without --overwrite; a mismatching C is refused
    code, _, err = run(
        [
            "evaluate",
            "--logs",
            a,
            "--aspects-from",
            "column",
            "--n-aspects",
            "3",
            "--save-aspect-model",
            am,
        ],
        capsys,
    )
    assert code == 2 and "--overwrite" in err
    code, _, err = run(
        [
            "evaluate",
            "--logs",
            b,
            "--aspects-from",
            "column",
            "--n-aspects",
            "4",
            "--aspect-model",
            am,
        ],
        capsys,
    )
    assert code == 2 and "differs" in err


def test_train_writes_the_aspect_model_that_evaluate_reuses(tmp_path, capsys):
    from test_cli import make_model

    base = make_model(tmp_path / "base", 2)
    df = embedded_log(3, n_prompts=6)
    df["prompt"] = "the cat"
    df["response"] = [["a dog", "red sky", "why is it"][i % 3] for i in range(len(df))]
    logs = write_logs(df, tmp_path / "logs.jsonl")
    out = tmp_path / "run"
    code, _, err = run(
        [
            "train",
            "--logs",
            logs,
            "--policy",
            base,
            "--output-dir",
            out,
            "--aspects-from",
            "column",
            "--n-aspects",
            "3",
            "--max-steps",
            "1",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    trained = AspectModel.load(out / "aspect_model.json")
    emb = np.stack(df["embedding"].to_numpy())
    np.testing.assert_array_equal(trained.centers, kmeans(emb, 3, seed=0).centers)
    other = write_logs(embedded_log(4, shift=1.0), tmp_path / "other.jsonl")
    res = tmp_path / "res.json"
    code, _, err = run(
        [
            "evaluate",
            "--logs",
            other,
            "--aspects-from",
            "column",
            "--aspect-model",
            out / "aspect_model.json",
            "--out",
            res,
        ],
        capsys,
    )
    assert code == 0, err
    got = np.array(json.loads(res.read_text())["aspects"]["model"]["centers"])
    np.testing.assert_array_equal(got, trained.centers)
