"""Engines: Spark (local[2]) and Ray (local cluster) equal the in-memory run on Parquet logs.

Tolerance 1e-12 (relative, and absolute for values near 0): the engines merge exact sums
(counts, means and centred cross-products, Chan et al. parallel update) over buckets of whole
prompts, so they differ from the one-pass in-memory statistics only by the rounding of a few
dozen float64 additions per merge: ~ (number of merges) * 2**-52 ~ 1e-14 relative, with a
margin of 100 for the square root and the quadratic form of the standard error.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pandas as pd
import pytest
from test_cli import make_model
from test_streaming import make_log

from pope.engines import check_engine_options, evaluate_with_engine, parquet_files
from pope.io import LogFormatError
from pope.pipeline import EvalSpec, evaluate_logs, map_partition, merge

TOL = 1e-12
ASPECTS = ("a", "b", "c", "d")
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning",
    "ignore::FutureWarning",
    "ignore::UserWarning",
    "ignore::pope.estimate.InsufficientDataWarning",
    "ignore::ResourceWarning",
)


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module (starting Spark costs ~10 s)."""
    from pyspark.sql import SparkSession  # in the test extra: an import error fails the tests

    os.environ["PYSPARK_PYTHON"] = sys.executable  # workers import this checkout's pope
    s = (
        SparkSession.builder.master("local[2]")
        .appName("pope-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


# ----------------------------------------------------------------------------- helpers
def soft_log(rng: np.random.Generator, n_prompts: int = 30) -> pd.DataFrame:
    df = make_log(rng, n_prompts).drop(columns="aspect")
    p = rng.dirichlet(np.ones(len(ASPECTS)), size=len(df))
    return df.assign(aspect_probs=list(p))


def write_split(df: pd.DataFrame, root, cut: int) -> str:
    """Rows [0, cut) and [cut, n) in two files (cut inside a prompt) plus an empty file."""
    root.mkdir()
    assert df["prompt_id"].iloc[cut - 1] == df["prompt_id"].iloc[cut], "cut must split a prompt"
    df.iloc[:cut].to_parquet(root / "part-0.parquet")
    df.iloc[cut:].to_parquet(root / "part-1.parquet")
    df.iloc[:0].to_parquet(root / "part-2-empty.parquet")
    return str(root)


def split_cut(df: pd.DataFrame) -> int:
    """A row index inside a prompt with >= 2 rows, near the middle."""
    ids = df["prompt_id"].to_numpy()
    same = np.nonzero(ids[1:] == ids[:-1])[0] + 1
    return int(same[np.argmin(abs(same - len(df) // 2))])


def assert_close(a, b, path: str = "") -> None:
    """Every number of two ``EvalResult.to_dict()`` trees equal to TOL (values, standard
    errors, interval ends, diagnostics, counts, the data report, the settings)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=TOL, abs_tol=TOL), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def same_result(got, ref) -> None:
    assert_close(got.to_dict(), ref.to_dict())
    for part in ("relevance", "diversity", "total"):
        e, r = getattr(got.pope, part), getattr(ref.pope, part)
        for method in ("normal", "t"):
            np.testing.assert_allclose(e.ci(method=method), r.ci(method=method), rtol=TOL, atol=TOL)


# ----------------------------------------------------------------------------- Spark
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_spark_equals_in_memory_on_split_parquet(spark, tmp_path, rng, kind):
    df = make_log(rng, 30) if kind == "hard" else soft_log(rng, 30)
    df.loc[7, "signal"] = -1.0  # a bad row, skipped and reported by its global row number
    logs = write_split(df, tmp_path / "logs", split_cut(df))
    spec = EvalSpec(
        on_error="skip",
        estimators=("snips", "clipped_ips", "ips"),
        clip=20.0,
        n_aspects=None if kind == "hard" else len(ASPECTS),
    )
    ref = evaluate_logs(logs, spec)
    got = evaluate_with_engine(logs, spec, engine="spark", num_buckets=3)
    same_result(got, ref)
    assert list(got.report.bad_rows) == [7]


def test_spark_empty_buckets_and_partitions(spark, tmp_path, rng):
    df = make_log(rng, 6)
    logs = str(tmp_path / "l.parquet")
    df.to_parquet(logs)
    spec = EvalSpec(aspect_names=ASPECTS)
    ref = evaluate_logs(logs, spec)
    # 50 buckets for 6 prompts: most buckets are empty
    same_result(evaluate_with_engine(logs, spec, engine="spark", num_buckets=50), ref)
    # a Spark DataFrame with more partitions than rows (empty partitions), __row__ kept
    sdf = spark.createDataFrame(df.assign(__row__=np.arange(len(df)))).repartition(40)
    from pope.engines import evaluate_spark

    same_result(evaluate_spark(sdf, spec, num_buckets=4), ref)


def test_spark_token_mean_with_a_policy_model(spark, tmp_path, rng):
    """Scoring on the workers (per-token target log-probs from a tiny model) equals local.

    ``batch_tokens`` is small enough that each batch holds one sequence, so the model sees the
    same inputs on the workers and locally (no padding differences) and TOL applies.
    """
    policy = make_model(tmp_path / "policy", seed=3)
    words = "the cat sat on a mat why is sky blue".split()
    rows = []
    for i in range(8):
        prompt = " ".join(rng.choice(words, 3))
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(1, 5))
            tok = -rng.exponential(1.0, size=n)
            rows.append(
                {
                    "prompt_id": f"q{i}",
                    "prompt": prompt,
                    "response": " ".join(rng.choice(words, n)),
                    "signal": float(rng.integers(0, 5)),
                    "aspect": ASPECTS[int(rng.integers(0, 4))],
                    "token_log_logging": list(tok),
                    "log_logging": float(tok.sum()),
                }
            )
    df = pd.DataFrame(rows)
    logs = write_split(df, tmp_path / "logs", split_cut(df))
    spec = EvalSpec(
        policy=policy,
        weighting="token_mean",
        device="cpu",
        batch_tokens=16,
        aspect_names=ASPECTS,
        estimators=("snips",),
    )
    ref = evaluate_logs(logs, spec)
    same_result(evaluate_with_engine(logs, spec, engine="spark", num_buckets=3), ref)


def test_spark_worker_errors_name_bucket_and_row(spark, tmp_path, rng):
    df = make_log(rng, 12)
    df.loc[5, "log_logging"] = np.nan
    logs = str(tmp_path / "l.parquet")
    df.to_parquet(logs)
    from pyspark.sql import functions as F

    b = (
        spark.createDataFrame([(df.loc[5, "prompt_id"],)], "id string")
        .select(F.pmod(F.xxhash64("id"), F.lit(3)))
        .first()[0]
    )  # the documented bucket formula
    # a bad row found on a worker: the same LogFormatError, naming its bucket and global row
    with pytest.raises(LogFormatError, match=rf"^bucket {b} of 3 \(\d+ rows: [\d, .]+\): ") as e:
        evaluate_with_engine(logs, EvalSpec(aspect_names=ASPECTS), engine="spark", num_buckets=3)
    assert "missing or NaN log_logging: 1 row(s): 5\n" in str(e.value)
    assert list(e.value.report.bad_rows) == [5]  # the worker's report, global row numbers
    # a failure that is not about a row (the model cannot be loaded on the worker)
    df.assign(prompt="the cat", response="sat on a mat").to_parquet(logs)
    spec = EvalSpec(aspect_names=ASPECTS, policy=str(tmp_path / "no-such-model"), on_error="skip")
    with pytest.raises(Exception, match=r"^bucket \d of 3 \(\d+ rows: [\d, .]+\): ") as info:
        evaluate_with_engine(logs, spec, engine="spark", num_buckets=3)
    assert "no-such-model" in str(info.value)
    assert "worker traceback" in "".join(getattr(info.value, "__notes__", []))


def test_cli_engine_spark_json_equals_local(spark, tmp_path, rng, capsys):
    from pope.cli import main

    df = make_log(rng, 20)
    logs = str(tmp_path / "l.parquet")
    df.to_parquet(logs)
    outs = {}
    for engine in ("local", "spark"):
        out = tmp_path / f"{engine}.json"
        code = main(
            [
                "evaluate",
                "--logs",
                logs,
                "--engine",
                engine,
                "--num-buckets",
                "3",
                "--out",
                str(out),
                "-q",
                "--no-progress",
            ]
        )
        assert code == 0, capsys.readouterr().err
        outs[engine] = json.loads(out.read_text())
    # the per-response log weights and the per-aspect table (with representative responses)
    # exist only where the rows are in one process (in memory)
    for key in ("log_weights", "aspects"):
        assert key in outs["local"] and key not in outs["spark"]
        outs["local"].pop(key)
    assert_close(outs["spark"], outs["local"])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--engine", "spark", "--chunk-rows", "10"], "chunk_rows is for the local engine"),
        (["--engine-address", "local[2]"], "not local"),
        (["--engine", "ray", "--ci", "bootstrap"], "bootstrap"),
        (["--engine", "spark", "--num-buckets", "0"], "--num-buckets"),
    ],
)
def test_cli_engine_bad_usage_exits_2(tmp_path, rng, capsys, argv, needle):
    from pope.cli import main

    logs = str(tmp_path / "l.parquet")
    make_log(rng, 3).to_parquet(logs)
    try:
        code = main(["evaluate", "--logs", logs, *argv])
    except SystemExit as e:  # argparse rejects --num-buckets 0
        code = e.code
    assert code == 2 and needle in capsys.readouterr().err


def test_engines_need_parquet_paths(tmp_path, rng):
    p = tmp_path / "l.jsonl"
    make_log(rng, 3).to_json(p, orient="records", lines=True)
    with pytest.raises(ValueError, match="reads Parquet"):
        check_engine_options("ray", str(p))
    with pytest.raises(ValueError, match="engine must be one of"):
        check_engine_options("dask", str(p))


def test_parquet_files_offsets(tmp_path, rng):
    df = make_log(rng, 10)
    logs = write_split(df, tmp_path / "logs", split_cut(df))
    files = parquet_files(logs)
    assert [os.path.basename(f.path) for f in files] == [
        "part-0.parquet",
        "part-1.parquet",
        "part-2-empty.parquet",
    ]
    assert [f.first_row for f in files] == [0, files[0].n_rows, len(df)]
    assert sum(f.n_rows for f in files) == len(df)


# ----------------------------------------------------------------------------- Ray
@pytest.mark.slow
def test_three_engines_same_result_on_one_parquet_log(spark, tmp_path, rng):
    import ray

    df = make_log(rng, 25)
    df.loc[3, "signal"] = -2.0
    logs = write_split(df, tmp_path / "logs", split_cut(df))
    spec = EvalSpec(on_error="skip", estimators=("snips", "clipped_ips"))
    local = evaluate_with_engine(logs, spec, engine="local")
    stream = evaluate_with_engine(logs, spec, engine="local", chunk_rows=7)
    sp = evaluate_with_engine(logs, spec, engine="spark", num_buckets=4)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ry = evaluate_with_engine(logs, spec, engine="ray", num_buckets=4)
    finally:
        ray.shutdown()
    for got in (sp, ry):
        same_result(got, local)
        assert list(got.report.bad_rows) == [3]
    assert_close(stream.to_dict()["pope"], local.to_dict()["pope"])


# ----------------------------------------------------------------------------- property
def test_statistics_exact_under_random_partitionings(rng):
    """Any grouping of whole prompts into parts, merged in any order and tree shape, gives the
    statistics of the whole log (property over 25 random partitionings, empty parts too)."""
    df = soft_log(rng, 40).assign(__row__=lambda d: np.arange(len(d)))
    df.loc[11, "log_logging"] = np.nan
    spec = EvalSpec(on_error="skip", n_aspects=len(ASPECTS), estimators=("snips", "ips"), clip=15.0)
    ref = evaluate_logs(df.drop(columns="__row__"), spec)
    ids = df["prompt_id"].unique()
    for _ in range(25):
        k = int(rng.integers(1, 9))
        part_of = dict(zip(ids, rng.integers(0, k + 1, size=len(ids))))  # part k+1: empty
        labels = df["prompt_id"].map(part_of).to_numpy()
        stats = [map_partition(df[labels == j].reset_index(drop=True), spec) for j in range(k + 1)]
        stats = [stats[i] for i in rng.permutation(len(stats))]
        while len(stats) > 1:  # merge random pairs: random tree shape
            i, j = sorted(rng.choice(len(stats), size=2, replace=False))
            stats[i] = stats[i] + stats.pop(j)
        same_result(stats[0].finalize(spec), ref)
        assert list(stats[0].finalize(spec).report.bad_rows) == [11]
    assert merge([map_partition(df, spec)]).n_prompts == 40
