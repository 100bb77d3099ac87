"""Large logs: prompt-preserving chunks, streaming == in memory, map/merge on partitions."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pandas as pd
import pytest

import pope
from pope import pipeline, streaming
from pope.data import LoggedFeedback
from pope.io import LogFormatError, write_logs
from pope.pipeline import (
    EvalSpec,
    bucket_of,
    evaluate_logs,
    evaluate_stream,
    iter_prompt_chunks,
    iter_raw_chunks,
    map_partition,
    merge,
    prepare_spec,
)

SUFFIX = {"parquet": ".parquet", "jsonl": ".jsonl", "csv": ".csv", "hf": ""}


def make_log(rng: np.random.Generator, n_prompts: int = 40, big_prompt: int = 0) -> pd.DataFrame:
    """Rows of each prompt contiguous; ragged K; a log_target column (no model needed)."""
    rows = []
    for i in range(n_prompts):
        k = big_prompt if (big_prompt and i == n_prompts // 2) else int(rng.integers(1, 6))
        for _ in range(k):
            ll = -float(rng.exponential(4.0))
            rows.append(
                {
                    "prompt_id": f"p{i:04d}",
                    "signal": float(rng.integers(0, 12)),
                    "aspect": ["a", "b", "c", "d"][int(rng.integers(0, 4))],
                    "log_logging": ll,
                    "log_target": min(ll + float(rng.normal(0.0, 1.0)), 0.0),
                }
            )
    return pd.DataFrame(rows)


def assert_same(a, b, rel: float = 1e-10) -> None:
    for part in ("relevance", "diversity", "total"):
        ea, eb = getattr(a.pope, part), getattr(b.pope, part)
        assert ea.value == pytest.approx(eb.value, rel=rel, abs=1e-12)
        assert ea.stderr == pytest.approx(eb.stderr, rel=1e-8, abs=1e-12)
        assert ea.diagnostics.ess == pytest.approx(eb.diagnostics.ess, rel=1e-10)
        assert ea.n == eb.n
    assert set(a.baselines) == set(b.baselines)
    for k in a.baselines:
        assert a.baselines[k].value == pytest.approx(b.baselines[k].value, rel=rel)
        assert a.baselines[k].stderr == pytest.approx(b.baselines[k].stderr, rel=1e-8)
    assert (a.n_prompts, a.n_responses) == (b.n_prompts, b.n_responses)
    assert a.report.n_rows == b.report.n_rows
    assert {k: list(v) for k, v in a.report.issues.items()} == {
        k: list(v) for k, v in b.report.issues.items()
    }


# ----------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 1000])
def test_prompt_chunks_never_split_a_prompt(rng, chunk_rows):
    df = make_log(rng, n_prompts=25, big_prompt=11)
    chunks = list(iter_prompt_chunks(iter_raw_chunks(df, chunk_rows)))
    # every row exactly once, in order, with the right global row numbers
    back = pd.concat([c for _, c in chunks], ignore_index=True)
    pd.testing.assert_frame_equal(back, df)
    starts = [s for s, _ in chunks]
    assert starts == list(np.cumsum([0] + [len(c) for _, c in chunks[:-1]]))
    # no prompt in two chunks
    seen: set[str] = set()
    for _, c in chunks:
        ids = set(c["prompt_id"])
        assert not ids & seen
        seen |= ids
    # memory bound: a chunk holds at most chunk_rows + the largest prompt
    biggest = int(df.groupby("prompt_id").size().max())
    assert max(len(c) for _, c in chunks) <= chunk_rows + biggest


def test_non_contiguous_prompt_is_an_error(rng):
    df = make_log(rng, n_prompts=6)
    df = pd.concat([df, df.iloc[:1]], ignore_index=True)  # prompt p0000 reappears at the end
    with pytest.raises(LogFormatError, match="contiguous"):
        list(iter_prompt_chunks(iter_raw_chunks(df, 4)))


def test_missing_prompt_id_column(rng):
    df = make_log(rng, n_prompts=3).rename(columns={"prompt_id": "qid"})
    with pytest.raises(LogFormatError, match="prompt_id"):
        list(iter_prompt_chunks(iter_raw_chunks(df, 4)))


# ----------------------------------------------------------------------------- equality
@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv", "hf"])
def test_stream_equals_in_memory_every_format(tmp_path, rng, fmt):
    if fmt == "hf":
        import datasets  # noqa: F401  (test extra: a missing install fails)
    df = make_log(rng, big_prompt=9)
    path = write_logs(df, tmp_path / f"log{SUFFIX[fmt]}", format=fmt)
    spec = EvalSpec(lam=0.7, estimators=("ips", "snips", "clipped_ips"))
    mem = evaluate_logs(path, spec)
    for chunk_rows in (1, 6, 50):
        assert_same(evaluate_stream(path, spec, chunk_rows=chunk_rows), mem)


def test_in_memory_matches_direct_pope_evaluate(rng):
    df = make_log(rng)
    res = evaluate_logs(df, EvalSpec(lam=0.3, estimators=()))
    names = sorted(set(df["aspect"]))
    fb = LoggedFeedback.from_pandas(df.assign(aspect=[names.index(a) for a in df["aspect"]]))
    ref = pope.evaluate(fb, df["log_target"].to_numpy()[fb.row_index], lam=0.3)
    for part in ("relevance", "diversity", "total"):
        assert getattr(res.pope, part).value == pytest.approx(getattr(ref, part).value)


@pytest.mark.parametrize(
    "spec",
    [
        EvalSpec(reward_normalization="global_max", estimators=("snips",)),
        EvalSpec(reward_normalization="rank", clip=3.0, estimators=("clipped_ips",)),
        EvalSpec(reward_normalization="log1p", relevance="ips", coverage="ips"),
        EvalSpec(aspects="none", estimators=("snips", "sub_gaussian_ips")),
    ],
    ids=["global_max", "rank-clip", "ips", "no-aspects"],
)
def test_stream_equals_in_memory_options(tmp_path, rng, spec):
    df = make_log(rng)
    path = write_logs(df, tmp_path / "l.parquet")
    assert_same(evaluate_stream(path, spec, chunk_rows=8), evaluate_logs(path, spec))


def test_stream_with_bad_rows_skip_and_fail(tmp_path, rng):
    df = make_log(rng)
    df.loc[[3, 17, 40], "signal"] = np.nan
    df.loc[22, "log_logging"] = 1.5
    path = write_logs(df, tmp_path / "l.jsonl")
    spec = EvalSpec(on_error="skip")
    mem = evaluate_logs(path, spec)
    st = evaluate_stream(path, spec, chunk_rows=5)
    assert_same(st, mem)
    assert list(st.report.bad_rows) == [3, 17, 22, 40]
    with pytest.raises(LogFormatError, match="bad"):
        evaluate_stream(path, EvalSpec(), chunk_rows=5)


def test_stream_integer_labels_and_vocabulary_prepass(tmp_path, rng):
    df = make_log(rng)
    # labels seen only late in the file must still count in C (pre-pass over all chunks)
    df["aspect"] = np.where(np.arange(len(df)) > len(df) - 4, 5, rng.integers(0, 2, len(df)))
    path = write_logs(df, tmp_path / "l.parquet")
    mem = evaluate_logs(path, EvalSpec())
    assert_same(evaluate_stream(path, EvalSpec(), chunk_rows=4), mem)
    done = prepare_spec(path, EvalSpec(), chunk_rows=4)
    assert done.n_aspects == 6


def test_stream_kmeans_aspects(tmp_path, rng):
    df = make_log(rng)
    emb = rng.normal(size=(len(df), 3))
    np.save(tmp_path / "e.npy", emb)
    path = write_logs(
        df.drop(columns=["aspect"]).assign(embedding=list(emb)), tmp_path / "l.parquet"
    )
    for spec in (
        EvalSpec(aspects="npy", embeddings_path=str(tmp_path / "e.npy"), n_aspects=3),
        EvalSpec(aspects="embedding", n_aspects=3, soft_aspects=True, temperature=0.3),
    ):
        # the pre-pass fits k-means on the first fit_rows rows: all of them here
        assert_same(
            evaluate_stream(path, spec, chunk_rows=7, fit_rows=10**6), evaluate_logs(path, spec)
        )


def test_stream_memory_is_bounded(tmp_path, rng, monkeypatch):
    df = make_log(rng, n_prompts=60, big_prompt=13)
    path = write_logs(df, tmp_path / "l.parquet")
    sizes = []
    real = pipeline.prepare

    def spy(frame, spec, **kw):
        sizes.append(len(frame))
        return real(frame, spec, **kw)

    monkeypatch.setattr(pipeline.run, "prepare", spy)
    evaluate_stream(path, EvalSpec(), chunk_rows=10)
    assert sum(sizes) == len(df)
    assert max(sizes) <= 10 + 13 and len(sizes) > 5


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_streamed_chunk_holds_one_id_object_per_prompt(tmp_path, rng, monkeypatch, fmt):
    """No Python object per row for the ids: a chunk of R rows and G prompts holds G id
    strings (shared by the rows of each prompt), and at most chunk_rows + the largest prompt
    rows are prepared at once."""
    df = make_log(rng, n_prompts=60, big_prompt=13)
    path = write_logs(df, tmp_path / f"l{SUFFIX[fmt]}")
    seen = []
    real = pipeline.prepare

    def spy(frame, spec, **kw):
        prep = real(frame, spec, **kw)
        objects = len({id(v) for v in prep.data.prompt_id})
        seen.append((len(frame), prep.feedback.n_prompts, objects))
        return prep

    monkeypatch.setattr(pipeline.run, "prepare", spy)
    evaluate_stream(path, EvalSpec(), chunk_rows=10)
    assert sum(r for r, _, _ in seen) == len(df) and max(r for r, _, _ in seen) <= 10 + 13
    assert all(objects == prompts < rows or rows == prompts for rows, prompts, objects in seen)


# ----------------------------------------------------------------------------- partitions
def _partition_stats(args):
    frame, spec = args
    return map_partition(frame, spec)


def partitions(df: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    b = bucket_of(df["prompt_id"].to_numpy(dtype=object), n)
    frame = df.assign(__row__=np.arange(len(df)))
    return [frame[b == i].reset_index(drop=True) for i in range(n) if (b == i).any()]


def test_bucket_of_is_stable_and_spreads(rng):
    ids = np.array([f"p{i}" for i in range(400)], dtype=object)
    b = bucket_of(ids, 8)
    np.testing.assert_array_equal(b, bucket_of(ids.copy(), 8))
    assert b.min() >= 0 and b.max() < 8 and len(set(b)) == 8
    # ints and their integral floats land in the same bucket
    np.testing.assert_array_equal(
        bucket_of(np.array([1, 2, 3], dtype=object), 5),
        bucket_of(np.array([1.0, 2.0, 3.0], dtype=object), 5),
    )


def test_map_partition_merge_with_a_process_pool(rng):
    df = make_log(rng, n_prompts=50)
    df.loc[[4, 30], "log_logging"] = np.nan
    spec = prepare_spec(df, EvalSpec(on_error="skip", estimators=("ips", "snips")))
    mem = evaluate_logs(df, spec)
    parts = partitions(df, 4)
    with mp.get_context("fork").Pool(2) as pool:
        stats = pool.map(_partition_stats, [(p, spec) for p in parts])
    got = merge(reversed(stats)).finalize(spec)  # merge order does not matter
    assert_same(got, mem)
    assert list(got.report.bad_rows) == [4, 30]


def test_distributed_needs_a_complete_spec(rng):
    df = make_log(rng, n_prompts=5)
    spec = EvalSpec(reward_normalization="global_max")
    with pytest.raises(ValueError, match="prepare_spec"):
        pipeline.evaluate_ray(df, spec, init=False)
    done = prepare_spec(df, spec)
    assert done.signal_scale == pytest.approx(df["signal"].max())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_ray_local_equals_in_memory(rng):
    import ray  # ray[data] is in the test extra: a failure to import or start fails the test
    import ray.data

    df = make_log(rng, n_prompts=30)
    df.loc[9, "signal"] = -1.0
    spec = prepare_spec(df, EvalSpec(on_error="skip", estimators=("snips", "clipped_ips")))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        got = pipeline.evaluate_ray(df, spec, num_buckets=3)
    finally:
        ray.shutdown()
    assert_same(got, evaluate_logs(df, spec))
    assert list(got.report.bad_rows) == [9]


# ----------------------------------------------------------------------------- package
def test_streaming_module_re_exports_the_pipeline():
    import pope.io

    for name in streaming.__all__:
        assert getattr(streaming, name) is getattr(pipeline, name), name
    assert streaming.iter_raw_chunks is pope.io.iter_raw_chunks
    assert streaming.evaluate_ray is pipeline.evaluate_ray


# ----------------------------------------------------------------------------- model cache
class _FakeModel:
    """Stands for a causal LM (weak-referenceable, so a test can see it freed)."""

    def __init__(self, path: str) -> None:
        self.path = path


@pytest.fixture
def fake_scoring(monkeypatch):
    """A stand-in ``pope.scoring`` (no torch): counts loads; scores -len(response) / 10."""
    import sys
    import types

    from pope.pipeline import models

    loads: list[str] = []
    fake = types.ModuleType("pope.scoring")

    def load_causal_lm(path, device=None, dtype="auto"):
        loads.append(path)
        return _FakeModel(path), object()

    def score_responses(model, tok, prompts, responses, **kw):
        assert isinstance(model, _FakeModel)
        return -np.array([len(r) for r in responses], dtype=np.float64) / 10

    fake.load_causal_lm = load_causal_lm
    fake.score_responses = score_responses
    monkeypatch.setitem(sys.modules, "pope.scoring", fake)
    models.clear_model_cache()
    yield loads
    models.clear_model_cache()


def test_model_cache_is_bounded_and_clearable(fake_scoring):
    import gc
    import weakref

    from pope.pipeline import models

    spec = EvalSpec()
    first = models.load_model("a", spec)[0]
    assert models.load_model("a", spec)[0] is first  # loaded once
    models.load_model("b", spec)
    models.load_model("c", spec)  # over MODEL_CACHE_SIZE = 2: "a", the oldest, is dropped
    assert models.model_cache_info().currsize == models.MODEL_CACHE_SIZE == 2
    assert fake_scoring == ["a", "b", "c"]
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None  # the evicted model is not kept alive by the cache
    held = weakref.ref(models.load_model("c", spec)[0])
    models.clear_model_cache()
    gc.collect()
    assert models.model_cache_info().currsize == 0 and held() is None
    models.load_model("c", spec)
    assert fake_scoring == ["a", "b", "c", "c"]  # loaded again after the clear


def test_runs_load_a_model_once_and_drop_it_at_the_end(fake_scoring, rng):
    from pope.pipeline import models

    df = make_log(rng, n_prompts=12)
    df["prompt"] = [f"q {p}" for p in df["prompt_id"]]
    df["response"] = [" ".join(["w"] * int(k)) for k in rng.integers(1, 9, len(df))]
    df = df.drop(columns=["log_target"])
    spec = EvalSpec(policy="target-dir", estimators=("snips",))
    st = evaluate_stream(df, spec, chunk_rows=5)
    assert fake_scoring == ["target-dir"]  # every chunk scored with the one loaded model
    assert models.model_cache_info().currsize == 0  # dropped when the run ended
    mem = evaluate_logs(df, spec)
    assert fake_scoring == ["target-dir", "target-dir"]
    assert models.model_cache_info().currsize == 0
    assert_same(st, mem)
    # the scores are the fake model's: the same as a precomputed log_target column
    pre = df.assign(log_target=-df["response"].str.len() / 10)
    assert_same(evaluate_logs(pre, EvalSpec(estimators=("snips",))), mem)
