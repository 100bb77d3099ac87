"""Readers, validation and aspect assignment (pope.io, pope.aspects)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pope.aspects import assign_aspects, kmeans, load_embeddings, soft_assign
from pope.data import LoggedFeedback
from pope.io import (
    LogColumns,
    LogFormatError,
    detect_format,
    iter_jsonl_frames,
    load_logs,
    read_table,
    validate_logs,
    write_logs,
)

FORMATS = ["parquet", "jsonl", "csv", "tsv", "hf"]
SUFFIX = {"parquet": ".parquet", "jsonl": ".jsonl", "csv": ".csv", "tsv": ".tsv", "hf": ""}


def make_frame(
    rng: np.random.Generator, n_prompts: int = 7, string_ids: bool = True
) -> pd.DataFrame:
    """A random valid log with every schema field (ragged prompts, per-token log-probs)."""
    rows = []
    for i in range(n_prompts):
        for k in range(int(rng.integers(1, 5))):
            t = int(rng.integers(1, 6))
            tok = (-rng.exponential(1.0, t)).tolist()
            rows.append(
                {
                    "prompt_id": f"q{i:03d}" if string_ids else i,
                    "prompt": f"prompt {i}",
                    "response": f"response {i} {k}",
                    "signal": float(rng.integers(0, 20)),
                    "aspect": ["cats", "dogs", "birds"][int(rng.integers(0, 3))],
                    "log_logging": float(np.sum(tok)),
                    "position": k,
                    "token_log_logging": tok,
                    "embedding": rng.normal(size=4).tolist(),
                }
            )
    # shuffle rows so prompts are interleaved: grouping must not rely on order
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=int(rng.integers(1 << 30))).reset_index(drop=True)


# ------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_format(tmp_path, rng, fmt):
    if fmt == "hf":
        import datasets  # noqa: F401  (test extra: a missing install fails)
    df = make_frame(rng)
    path = write_logs(df, tmp_path / f"log{SUFFIX[fmt]}", format=fmt)
    assert detect_format(path) == fmt
    data = load_logs(path, aspect_names=["birds", "cats", "dogs"])
    assert data.report.ok and len(data) == len(df)
    np.testing.assert_array_equal(data.rows, np.arange(len(df)))
    np.testing.assert_array_equal(data.prompt_id.astype(str), df["prompt_id"].astype(str))
    assert data.prompt == df["prompt"].tolist()
    assert data.response == df["response"].tolist()
    np.testing.assert_allclose(data.signal, df["signal"])
    np.testing.assert_allclose(data.log_logging, df["log_logging"])
    np.testing.assert_array_equal(data.position, df["position"])
    names = ["birds", "cats", "dogs"]
    np.testing.assert_array_equal(data.aspect, [names.index(a) for a in df["aspect"]])
    for got, want in zip(data.token_log_logging, df["token_log_logging"]):
        np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(data.embedding, np.stack(df["embedding"].map(np.asarray)))

    # the feedback equals the one built directly from the original frame
    fb = data.to_feedback()
    ref = LoggedFeedback.from_pandas(
        df.assign(aspect=[names.index(a) for a in df["aspect"]]),
        token_log_logging="token_log_logging",
        n_aspects=3,
    )
    np.testing.assert_array_equal(fb.prompt_ptr, ref.prompt_ptr)
    np.testing.assert_array_equal(fb.row_index, ref.row_index)
    np.testing.assert_allclose(fb.signal, ref.signal)
    np.testing.assert_allclose(fb.log_logging, ref.log_logging)
    np.testing.assert_array_equal(fb.aspect, ref.aspect)
    np.testing.assert_allclose(fb.token_log_logging, ref.token_log_logging)
    np.testing.assert_array_equal(fb.token_ptr, ref.token_ptr)
    assert fb.n_aspects == 3


def test_pandas_and_arrow_sources(rng):
    import pyarrow as pa

    df = make_frame(rng, string_ids=False)
    a = load_logs(df)
    b = load_logs(pa.Table.from_pandas(df))
    assert a.prompt_id.dtype == np.int64
    np.testing.assert_array_equal(a.prompt_id, df["prompt_id"])
    np.testing.assert_array_equal(a.prompt_id, b.prompt_id)
    np.testing.assert_allclose(a.signal, b.signal)
    # string labels without names: sorted unique labels
    assert a.aspect_names == sorted(set(df["aspect"]))


def test_hf_dataset_dict_split(tmp_path, rng):
    import datasets

    df = make_frame(rng)
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_pandas(df, preserve_index=False),
            "test": datasets.Dataset.from_pandas(df.iloc[:3], preserve_index=False),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(LogFormatError, match="several splits"):
        load_logs(tmp_path / "dd")
    assert len(load_logs(tmp_path / "dd", split="test")) == 3


def test_csv_keeps_text_ids(tmp_path):
    df = pd.DataFrame(
        {
            "prompt_id": ["007", "07", "007"],
            "prompt": ["x", "y", "x"],
            "response": ["0012", "NA", "a"],
            "signal": [1, 2, 3],
            "log_logging": [-1.0, -2.0, -3.0],
        }
    )
    df.to_csv(tmp_path / "l.csv", index=False)
    data = load_logs(tmp_path / "l.csv")
    assert list(data.prompt_id) == ["007", "07", "007"]
    assert data.response == ["0012", "NA", "a"]
    assert data.to_feedback().n_prompts == 2


def test_column_mapping(rng):
    df = make_frame(rng).rename(columns={"prompt_id": "qid", "signal": "upvotes"})
    with pytest.raises(LogFormatError, match=r"required column.*'signal'"):
        load_logs(df)
    data = load_logs(df, columns={"prompt_id": "qid", "signal": "upvotes"})
    np.testing.assert_allclose(data.signal, df["upvotes"])
    with pytest.raises(ValueError, match="unknown schema field"):
        LogColumns.from_mapping({"not_a_field": "x"})


def test_token_log_logging_alone_gives_sequence_log_logging(rng):
    df = make_frame(rng).drop(columns=["log_logging"])
    data = load_logs(df)
    np.testing.assert_allclose(data.log_logging, [sum(t) for t in df["token_log_logging"]])


# ------------------------------------------------------------------------- validation
def bad_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [1, 1, None, 2, 2, 3, 3, 4],
            "prompt": ["a", "a", "b", "c", "c", None, "d", "e"],
            "response": ["x", "y", "z", "w", "v", "u", "t", "s"],
            "signal": [1.0, np.nan, 2.0, -1.0, 3.0, 1.0, 2.0, 1.0],
            "log_logging": [-1.0, -1.0, -1.0, -1.0, 0.5, -1.0, np.nan, -2.0],
            "aspect": ["p", "q", "p", "q", "p", "p", "q", "zzz"],
        }
    )


def test_bad_rows_are_reported_with_row_numbers():
    df = bad_frame()
    data = validate_logs(df, aspect_names=["p", "q"])
    issues = data.report.issues

    def rows_of(word):
        hits = [v for k, v in issues.items() if word in k]
        assert hits, f"no issue mentioning {word!r} in {list(issues)}"
        return sorted(int(r) for h in hits for r in h)

    assert rows_of("signal") == [1, 3]
    assert rows_of("prompt_id") == [2]
    assert rows_of("log_logging > 0") == [4]
    assert rows_of("NaN log_logging") == [6]
    assert list(issues["missing prompt"]) == [5]
    assert rows_of("unknown aspect") == [7]
    assert list(data.report.bad_rows) == [1, 2, 3, 4, 5, 6, 7]
    text = data.report.summary()
    assert "8 rows read, 7 bad" in text


def test_prompt_text_must_agree_within_a_prompt_id():
    df = pd.DataFrame(
        {
            "prompt_id": [1, 1, 2, 1],
            "prompt": ["same", "same", "other", "changed"],
            "response": ["a", "b", "c", "d"],
            "signal": [1, 2, 3, 4],
            "log_logging": [-1.0] * 4,
        }
    )
    data = validate_logs(df)
    assert [list(v) for v in data.report.issues.values()] == [[3]]


def test_on_error_fail_and_skip():
    df = bad_frame()
    with pytest.raises(LogFormatError) as ei:
        load_logs(df, aspect_names=["p", "q"])
    assert "7 bad" in str(ei.value) and ei.value.report.n_bad == 7
    data = load_logs(df, aspect_names=["p", "q"], on_error="skip")
    assert list(data.rows) == [0]  # every other row has a problem
    assert data.report.n_rows == 8 and data.report.n_bad == 7
    with pytest.raises(ValueError, match="on_error"):
        load_logs(df, on_error="ignore")


def test_integer_aspects_out_of_range():
    df = bad_frame().assign(aspect=[0, 1, 0, 1, 0, 2, 1, 0]).iloc[[0, 5, 6]]
    df = df.assign(signal=1.0, log_logging=-1.0, prompt="p")
    data = validate_logs(df.reset_index(drop=True), n_aspects=2)
    assert [int(r) for v in data.report.issues.values() for r in v] == [1]


def test_missing_log_logging_column_message():
    df = bad_frame().drop(columns=["log_logging"])
    with pytest.raises(LogFormatError, match="logging model"):
        load_logs(df)
    data = load_logs(df, require_log_logging=False, on_error="skip", aspect_names=["p", "q"])
    with pytest.raises(LogFormatError, match="no logging log-probabilities"):
        data.to_feedback()


def test_bad_list_cells_and_soft_aspects():
    df = pd.DataFrame(
        {
            "prompt_id": [1, 1, 2, 2],
            "prompt": ["a"] * 4,
            "response": ["r"] * 4,
            "signal": [1, 2, 3, 4],
            "token_log_logging": [[-1.0], "not json", [0.3], [-0.5, -0.5]],
            "aspect_probs": [[0.5, 0.5], [1.0, 0.0], [0.2, 0.2], [0.0, 1.0]],
        }
    )
    data = validate_logs(df)
    flat = {int(r): k for k, v in data.report.issues.items() for r in v}
    assert set(flat) == {1, 2}
    ok = load_logs(df.iloc[[0, 3]])
    fb = ok.to_feedback()
    np.testing.assert_allclose(fb.aspect_probs, [[0.5, 0.5], [0.0, 1.0]])
    np.testing.assert_allclose(fb.log_logging, [-1.0, -1.0])


# ------------------------------------------------------------------------- bad files
def test_corrupted_parquet(tmp_path, rng):
    path = tmp_path / "log.parquet"
    make_frame(rng).to_parquet(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LogFormatError, match=r"cannot read log\.parquet as parquet"):
        load_logs(path)


def test_corrupted_jsonl_names_the_line(tmp_path):
    lines = [json.dumps({"prompt_id": 1, "signal": 1}), "", "{not json", "[1, 2]"]
    (tmp_path / "l.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(LogFormatError, match="line 3 is not valid JSON"):
        load_logs(tmp_path / "l.jsonl")
    (tmp_path / "m.jsonl").write_text(lines[0] + "\n" + lines[3] + "\n")
    with pytest.raises(LogFormatError, match="line 2 is a JSON list"):
        load_logs(tmp_path / "m.jsonl")


def test_unknown_paths_and_extensions(tmp_path):
    with pytest.raises(LogFormatError, match="not found"):
        load_logs(tmp_path / "nope.parquet")
    (tmp_path / "x.xlsx").write_text("?")
    with pytest.raises(LogFormatError, match="cannot tell the format"):
        load_logs(tmp_path / "x.xlsx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogFormatError, match="cannot tell the format of directory"):
        load_logs(tmp_path / "empty")


def test_jsonl_chunks_cover_all_rows(tmp_path, rng):
    df = make_frame(rng, n_prompts=11)
    write_logs(df, tmp_path / "l.jsonl")
    chunks = list(iter_jsonl_frames(tmp_path / "l.jsonl", 5))
    assert [len(c) for c in chunks[:-1]] == [5] * (len(chunks) - 1)
    back = pd.concat(chunks, ignore_index=True)
    np.testing.assert_allclose(back["signal"], df["signal"])
    assert len(read_table(tmp_path / "l.jsonl")) == len(df)


# ------------------------------------------------------------------------- aspects
def blobs(rng, k=3, n=40, d=5, spread=0.2):
    centers = rng.normal(scale=5.0, size=(k, d))
    truth = np.repeat(np.arange(k), n)
    return centers[truth] + rng.normal(scale=spread, size=(k * n, d)), truth


def test_kmeans_recovers_blobs_and_is_seeded(rng):
    x, truth = blobs(rng)
    fit = kmeans(x, 3, seed=3)
    # same partition as the truth, up to relabelling
    for c in range(3):
        assert len(set(fit.labels[truth == c])) == 1
    assert len(set(fit.labels)) == 3
    again = kmeans(x, 3, seed=3)
    np.testing.assert_array_equal(fit.labels, again.labels)
    np.testing.assert_allclose(fit.centers, again.centers)
    # the inertia is the sum of squared distances to the assigned centers
    want = sum(float(np.sum((x[i] - fit.centers[fit.labels[i]]) ** 2)) for i in range(len(x)))
    assert fit.inertia == pytest.approx(want)


def test_kmeans_rejects_bad_input(rng):
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(rng.normal(size=(3, 2)), 4)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(np.array([[0.0, np.nan]]), 1)


def test_soft_assignment(rng):
    x, _ = blobs(rng)
    a = assign_aspects(x, 3, seed=0, soft=True, temperature=0.5)
    assert a.probs.shape == (len(x), 3)
    np.testing.assert_allclose(a.probs.sum(axis=1), 1.0)
    np.testing.assert_array_equal(a.probs.argmax(axis=1), a.labels)
    # explicit softmax of negative distances
    d = np.linalg.norm(x[:, None, :] - a.centers[None], axis=-1)
    e = np.exp(-(d - d.min(axis=1, keepdims=True)) / 0.5)
    np.testing.assert_allclose(a.probs, e / e.sum(axis=1, keepdims=True), rtol=1e-9)
    # higher temperature -> flatter rows
    flat = soft_assign(x, a.centers, 1e3)
    assert flat.max() < a.probs.max()
    # fixed centers give the same labels
    b = assign_aspects(x, 3, centers=a.centers)
    np.testing.assert_array_equal(b.labels, a.labels)


def test_load_embeddings(tmp_path, rng):
    x = rng.normal(size=(6, 3))
    np.save(tmp_path / "e.npy", x)
    np.testing.assert_allclose(load_embeddings(tmp_path / "e.npy", 6), x)
    with pytest.raises(ValueError, match="6 rows but the log has 5"):
        load_embeddings(tmp_path / "e.npy", 5)
    np.save(tmp_path / "v.npy", np.zeros(3))
    with pytest.raises(ValueError, match="2-dimensional"):
        load_embeddings(tmp_path / "v.npy")


# --------------------------------------------------- embedding model directories (no download)


def _tiny_sentence_transformer(root):
    """A 1-layer BERT with a word-level vocab, saved as a sentence-transformers directory."""
    import sentence_transformers as st
    import torch
    import transformers

    words = "the a cat dog sat on mat red blue why how is big small".split()
    bert = root / "bert"
    bert.mkdir()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (bert / "vocab.txt").write_text("\n".join([*special, *words]))
    transformers.BertTokenizerFast(str(bert / "vocab.txt")).save_pretrained(bert)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=5 + len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.BertModel(cfg).save_pretrained(bert)
    # a plain encoder directory becomes transformer + mean pooling (sentence-transformers >= 3)
    model = st.SentenceTransformer(str(bert), device="cpu", local_files_only=True)
    model.save(str(root / "st"))
    return root / "st"


def test_sentence_transformers_directory_matches_the_plain_encoder_path(tmp_path, monkeypatch):
    """The sentence-transformers path and the AutoModel mean-pooling fallback agree."""
    import sys

    from pope.aspects import embed_texts

    model_dir = _tiny_sentence_transformer(tmp_path)
    assert (model_dir / "modules.json").exists()
    texts = ["the cat sat", "why is the dog big", "red", "a small blue mat on the mat"]
    via_st = embed_texts(texts, model_dir, device="cpu", batch_size=3)
    assert via_st.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(via_st, axis=1), 1.0, rtol=1e-6)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # force the fallback
    via_auto = embed_texts(texts, model_dir, device="cpu", batch_size=3)
    np.testing.assert_allclose(via_auto, via_st, rtol=1e-5, atol=1e-6)
    # distinct texts, distinct embeddings (the model is not degenerate)
    assert np.abs(via_st[0] - via_st[1]).max() > 1e-3


# ------------------------------------------------------------------------- JSON Lines readers
def _same_data(a, b) -> None:
    """Two validated logs are equal field by field (arrays, lists of arrays, report)."""
    for name in (
        "rows",
        "prompt_id",
        "signal",
        "log_logging",
        "aspect",
        "aspect_probs",
        "position",
        "embedding",
        "log_target",
    ):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.prompt == b.prompt and a.response == b.response
    assert (a.aspect_names, a.n_aspects) == (b.aspect_names, b.n_aspects)
    assert (a.token_log_logging is None) == (b.token_log_logging is None)
    for x, y in zip(a.token_log_logging or [], b.token_log_logging or [], strict=True):
        np.testing.assert_array_equal(x, y)
    assert {k: list(v) for k, v in a.report.issues.items()} == {
        k: list(v) for k, v in b.report.issues.items()
    }


def _python_reader(path, chunk_rows):
    from pope.io.jsonl import _python_frames

    return list(_python_frames(path, chunk_rows, None))


def _messy_frame(rng, n_prompts=30, string_ids=True):
    """make_frame plus missing cells, bad rows, a list column with nulls and mixed ints."""
    df = make_frame(rng, n_prompts=n_prompts, string_ids=string_ids)
    df.loc[3, "signal"] = None
    df.loc[5, "log_logging"] = 0.5  # a bad row
    df.loc[7, "aspect"] = None
    df["log_target"] = np.minimum(df["log_logging"] + 0.1, 0.0)
    df.loc[2, "log_target"] = None
    df["count"] = pd.Series(np.arange(len(df)), dtype=object)  # ints
    df.loc[9, "count"] = 2.5  # ... then a float in the same column
    return df


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("string_ids", [True, False])
def test_jsonl_arrow_reader_equals_the_python_reader(tmp_path, rng, suffix, string_ids):
    """The Arrow fast path gives the rows, values and report of the ``json.loads`` reader."""
    import gzip

    df = _messy_frame(rng, string_ids=string_ids)
    text = "".join(
        json.dumps(r) + "\n" + ("\n" if i == 4 else "")  # a blank line too
        for i, r in enumerate(json.loads(df.to_json(orient="records")))
    )
    path = tmp_path / f"l{suffix}"
    if suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    from pope.io import jsonl

    assert sum(len(f) for f in jsonl._arrow_frames(path, 7)) == len(df)  # no fallback here
    ref = pd.concat(_python_reader(path, 1 << 16), ignore_index=True)
    want = validate_logs(ref, aspect_names=["birds", "cats", "dogs"])
    assert not want.report.ok  # the bad rows are there to be reported
    got = validate_logs(read_table(path), aspect_names=["birds", "cats", "dogs"])
    _same_data(got, want)
    chunks = list(iter_jsonl_frames(path, 7))
    assert [len(c) for c in chunks[:-1]] == [7] * (len(chunks) - 1)
    _same_data(
        validate_logs(pd.concat(chunks, ignore_index=True), aspect_names=["birds", "cats", "dogs"]),
        want,
    )


def test_jsonl_falls_back_to_the_python_reader(tmp_path, rng, monkeypatch):
    """A column that changes type after the first Arrow block, date-like ids (Arrow would
    make timestamps of them) and a bad line late in the file: the chunks are the Python
    reader's, the ids stay str, and the bad line is named."""
    from pope.io import jsonl

    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 512)  # blocks of a few rows
    rows = [
        {
            "prompt_id": f"p{i // 3}",
            "signal": 1.0,
            "log_logging": -1.0,
            "log_target": None if i < 40 else -0.5,
        }
        for i in range(90)
    ]
    path = tmp_path / "l.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = list(iter_jsonl_frames(path, 8))
    assert [len(c) for c in got] == [8] * 11 + [2]
    want = pd.concat(_python_reader(path, 8), ignore_index=True)
    _same_data(
        validate_logs(pd.concat(got, ignore_index=True), require_text=False),
        validate_logs(want, require_text=False),
    )
    assert validate_logs(read_table(path), require_text=False).log_target is not None

    dates = tmp_path / "d.jsonl"
    dates.write_text(
        "".join(
            json.dumps({"prompt_id": f"2024-01-{1 + i // 2:02d}", "signal": 1, "log_logging": -1})
            + "\n"
            for i in range(6)
        )
    )
    ids = validate_logs(read_table(dates), require_text=False).prompt_id
    assert ids.tolist() == [
        "2024-01-01",
        "2024-01-01",
        "2024-01-02",
        "2024-01-02",
        "2024-01-03",
        "2024-01-03",
    ]

    bad = tmp_path / "b.jsonl"
    bad.write_text(path.read_text() + "{not json\n")
    with pytest.raises(LogFormatError, match="line 91 is not valid JSON"):
        list(iter_jsonl_frames(bad, 8))
    with pytest.raises(LogFormatError, match="line 91 is not valid JSON"):
        read_table(bad)


# ------------------------------------------------------------------------- labels and ids
@pytest.mark.parametrize("dtype", ["str", "object", "float64", "int64"])
@pytest.mark.parametrize("with_names", [True, False])
def test_aspect_codes_per_label_equal_cell_by_cell(rng, dtype, with_names):
    """encode_aspects encodes each distinct label once and spreads it to the rows; the cell by
    cell encoder is the reference (codes, vocabulary, C and every reported row)."""
    from pope.io.columns import _encode_aspect_cells, encode_aspects
    from pope.io.report import ValidationReport

    n = 400
    if dtype in ("str", "object"):
        vals = np.array(["a", "b", "c", "zz", None], dtype=object)[rng.integers(0, 5, n)]
        names = ["a", "b", "c"]
    else:
        vals = np.array([0.0, 1.0, 2.0, 7.0, 1.5, -1.0, np.nan])[rng.integers(0, 7, n)]
        if dtype == "int64":
            vals = rng.integers(0, 6, n)
        names = [0, 1, 2]
    s = pd.Series(vals, dtype=dtype)
    rows = np.arange(n) + 1000
    aspect_names = names if with_names else None
    fast, ref = ValidationReport(n), ValidationReport(n)
    got = encode_aspects(s, fast, rows, aspect_names, None, "aspect")
    want = _encode_aspect_cells(s, ref, rows, aspect_names, None, "aspect")
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:]
    assert {k: list(v) for k, v in fast.issues.items()} == {
        k: list(v) for k, v in ref.issues.items()
    }


def test_str_prompt_ids_hold_one_object_per_prompt(tmp_path, rng):
    """A column of str ids becomes one Python str per prompt, shared by its rows (not one
    per row): N rows of G prompts hold G strings."""
    df = make_frame(rng, n_prompts=25)
    for path in (write_logs(df, tmp_path / "l.parquet"), write_logs(df, tmp_path / "l.jsonl")):
        data = validate_logs(read_table(path))
        assert data.prompt_id.tolist() == df["prompt_id"].tolist()
        assert len({id(v) for v in data.prompt_id}) == df["prompt_id"].nunique() < len(df)
