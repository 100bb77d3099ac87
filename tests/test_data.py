"""LoggedFeedback: invalid inputs, constructors, row_index alignment, reward normalisations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.stats import rankdata

from pope import LoggedFeedback


def base(**kw):
    args = {
        "prompt_ptr": [0, 2, 2, 5],
        "signal": [1.0, 3.0, 0.0, 2.0, 2.0],
        "log_logging": [-1.0, -0.5, -2.0, -0.1, -3.0],
    }
    args.update(kw)
    return args


INVALID = [
    ({"signal": [1.0, -3.0, 0.0, 2.0, 2.0]}, ValueError, "signal must be >= 0"),
    ({"signal": [1.0, np.nan, 0.0, 2.0, 2.0]}, ValueError, "signal contains NaN"),
    ({"signal": [1.0, np.inf, 0.0, 2.0, 2.0]}, ValueError, r"signal contains \+inf"),
    ({"signal": ["a", "b", "c", "d", "e"]}, TypeError, "numeric"),
    ({"signal": [[1.0, 3.0, 0.0, 2.0, 2.0]]}, ValueError, "1-dimensional"),
    ({"prompt_ptr": [0, 3, 2, 5]}, ValueError, "non-decreasing"),
    ({"prompt_ptr": [1, 2, 2, 5]}, ValueError, "start at 0"),
    (
        {"prompt_ptr": [0, 2, 2, 4]},
        ValueError,
        "prompt_ptr ends at 4, but signal, log_logging have 5",
    ),
    (
        {"signal": [1.0, 3.0, 0.0, 2.0, 2.0, 1.0]},
        ValueError,
        "signal has length 6, but log_logging, prompt_ptr have 5",
    ),
    ({"aspect": [0, 1, 2, 0, 10**9]}, ValueError, "largest aspect label is 1000000000"),
    ({"aspect": [0, 1, 2, 0, 1], "n_aspects": 10**9}, ValueError, "n_aspects = 1000000000"),
    ({"prompt_ptr": []}, ValueError, "at least one"),
    ({"prompt_ptr": [0.0, 2.5, 5.0]}, TypeError, "integers"),
    ({"log_logging": [-1.0, 0.5, -2.0, -0.1, -3.0]}, ValueError, "log-probabilities"),
    ({"log_logging": [-1.0, -0.5, -2.0, -0.1]}, ValueError, "log_logging has length 4"),
    ({"log_logging": [-1.0, np.nan, -2.0, -0.1, -3.0]}, ValueError, "NaN"),
    ({"log_logging": [-1.0, -np.inf, -2.0, -0.1, -3.0]}, ValueError, "-inf"),
    ({"aspect": [0, 1, 2, 0, 1], "aspect_probs": np.full((5, 2), 0.5)}, ValueError, "not both"),
    ({"aspect": [0, -1, 2, 0, 1]}, ValueError, "aspect labels must be >= 0"),
    ({"aspect": [0, 1, 2, 0, 1], "n_aspects": 2}, ValueError, "out of range"),
    ({"aspect": [0, 1, 2, 0]}, ValueError, "aspect has length 4"),
    ({"aspect": [0, 1, 0, 0, 1], "n_aspects": 0}, ValueError, "n_aspects must be >= 1"),
    ({"aspect": [0, 1, 0, 0, 1], "n_aspects": 2.0}, TypeError, "n_aspects must be an int"),
    ({"aspect_probs": np.full((5, 2), 0.6)}, ValueError, "sum to 1"),
    ({"aspect_probs": np.array([[1.2, -0.2]] * 5)}, ValueError, ">= 0"),
    ({"aspect_probs": np.full((5, 2), 0.5), "n_aspects": 3}, ValueError, "columns"),
    ({"aspect_probs": np.full((4, 2), 0.5)}, ValueError, "aspect_probs has length 4"),
    ({"aspect_probs": np.full(5, 0.5)}, ValueError, "2-dimensional"),
    ({"token_log_logging": [-1.0]}, ValueError, "together"),
    ({"token_log_logging": [-1.0, -2.0], "token_ptr": [0, 1, 2]}, ValueError, "6 elements"),
    (
        {"token_log_logging": [0.5, -2.0], "token_ptr": [0, 1, 1, 1, 2, 2]},
        ValueError,
        "log-probabilities",
    ),
    (
        {"token_log_logging": [-1.0, -2.0], "token_ptr": [0, 2, 1, 1, 2, 2]},
        ValueError,
        "non-decreasing",
    ),
    ({"position": [0, 1, -1, 0, 1]}, ValueError, "position must be >= 0"),
    ({"prompt_ids": ["a", "b"]}, ValueError, "prompt_ids must have shape"),
    ({"row_index": [0, 1, 2]}, ValueError, "row_index has length 3"),
]


@pytest.mark.parametrize(("patch", "err", "match"), INVALID)
def test_invalid_inputs(patch, err, match):
    with pytest.raises(err, match=match):
        LoggedFeedback(**base(**patch))


def test_arrays_are_read_only_and_inputs_untouched():
    sig = np.array([1.0, 3.0, 0.0, 2.0, 2.0])
    copy = sig.copy()
    fb = LoggedFeedback(**base(signal=sig, aspect=[0, 1, 2, 0, 1]))
    assert fb.n_prompts == 3 and fb.n_responses == 5 and fb.n_aspects == 3
    np.testing.assert_array_equal(fb.counts, [2, 0, 3])
    np.testing.assert_array_equal(fb.prompt_index, [0, 0, 2, 2, 2])
    for name in ("prompt_ptr", "signal", "log_logging", "aspect"):
        with pytest.raises(ValueError):
            getattr(fb, name)[0] = 0
    np.testing.assert_array_equal(sig, copy)


def test_caller_array_flags_untouched():
    sig = np.array([1.0, 3.0, 0.0, 2.0, 2.0])
    fb = LoggedFeedback(**base(signal=sig))
    assert sig.flags.writeable
    assert not fb.signal.flags.writeable
    assert not np.shares_memory(fb.signal, sig)


def test_aspect_rows_one_hot_and_soft():
    fb = LoggedFeedback(**base(aspect=[0, 2, 2, 1, 0], n_aspects=4))
    np.testing.assert_array_equal(fb.aspect_rows(), np.eye(4)[[0, 2, 2, 1, 0]])
    q = np.random.default_rng(0).dirichlet(np.ones(3), 5)
    fb2 = LoggedFeedback(**base(aspect_probs=q))
    assert fb2.n_aspects == 3
    np.testing.assert_allclose(fb2.aspect_rows(), q)
    with pytest.raises(ValueError, match="no aspects"):
        LoggedFeedback(**base()).aspect_rows()


# ----------------------------------------------------------------------------- constructors
def _rows(rng, n=40):
    return {
        "prompt_id": rng.choice(np.array(["p3", "p1", "p7", "p2", "p9"]), n),
        "signal": rng.poisson(3.0, n).astype(float),
        "log_logging": np.log(rng.uniform(0.05, 1, n)),
        "aspect": rng.integers(0, 4, n),
        "position": rng.integers(0, 3, n),
    }


def _check_grouping(fb, rows):
    pid = rows["prompt_id"]
    first = list(dict.fromkeys(pid.tolist()))  # order of first appearance
    assert fb.prompt_ids.tolist() == first
    for i, p in enumerate(first):
        stored = np.arange(fb.prompt_ptr[i], fb.prompt_ptr[i + 1])
        expect = np.flatnonzero(pid == p)  # input order within the prompt
        np.testing.assert_array_equal(fb.row_index[stored], expect)
    # every per-row array is the input permuted by row_index
    for name in ("signal", "log_logging", "aspect", "position"):
        np.testing.assert_array_equal(getattr(fb, name), rows[name][fb.row_index])


def test_from_arrays_groups_by_prompt(rng):
    rows = _rows(rng)
    fb = LoggedFeedback.from_arrays(**rows, n_aspects=4)
    _check_grouping(fb, rows)


def test_from_pandas_and_arrow_round_trip(rng):
    rows = _rows(rng)
    df = pd.DataFrame(rows)
    a = LoggedFeedback.from_arrays(**rows)
    b = LoggedFeedback.from_pandas(df)
    c = LoggedFeedback.from_arrow(pa.Table.from_pandas(df))
    for fb in (b, c):
        _check_grouping(fb, rows)
        for name in ("prompt_ptr", "signal", "log_logging", "aspect", "position", "row_index"):
            np.testing.assert_array_equal(getattr(fb, name), getattr(a, name))
    # soft aspects from a list of columns, tokens from a column of sequences
    q = rng.dirichlet(np.ones(3), len(df))
    toks = [np.log(rng.uniform(0.1, 1, k)) for k in rng.integers(1, 5, len(df))]
    df2 = df.drop(columns=["aspect"]).assign(q0=q[:, 0], q1=q[:, 1], q2=q[:, 2], tok=toks)
    fb = LoggedFeedback.from_pandas(df2, aspect_probs=["q0", "q1", "q2"], token_log_logging="tok")
    np.testing.assert_allclose(fb.aspect_probs, q[fb.row_index])
    for j, src in enumerate(fb.row_index):
        got = fb.token_log_logging[fb.token_ptr[j] : fb.token_ptr[j + 1]]
        np.testing.assert_array_equal(got, toks[src])
    with pytest.raises(ValueError, match="not found"):
        LoggedFeedback.from_pandas(df, signal="votes")


def test_select_prompts_and_split_compose(rng):
    rows = _rows(rng, 60)
    toks = [np.log(rng.uniform(0.1, 1, k)) for k in rng.integers(0, 4, 60)]
    fb = LoggedFeedback.from_arrays(**rows, token_log_logging=toks)
    shards = fb.split(3)
    assert sum(s.n_prompts for s in shards) == fb.n_prompts
    np.testing.assert_array_equal(np.concatenate([s.row_index for s in shards]), fb.row_index)
    np.testing.assert_array_equal(np.concatenate([s.signal for s in shards]), fb.signal)
    np.testing.assert_array_equal(
        np.concatenate([s.token_log_logging for s in shards]), fb.token_log_logging
    )
    sub = fb.select_prompts([2, 0, 2])
    assert sub.prompt_ids.tolist() == [fb.prompt_ids[2], fb.prompt_ids[0], fb.prompt_ids[2]]
    np.testing.assert_array_equal(sub.signal, rows["signal"][sub.row_index])
    with pytest.raises(ValueError, match="prompt indices"):
        fb.select_prompts([fb.n_prompts])
    with pytest.raises(ValueError, match="n_shards"):
        fb.split(0)


# ----------------------------------------------------------------------------- rewards
def _per_prompt(fb, fn):
    out = np.empty(fb.n_responses)
    for i in range(fb.n_prompts):
        lo, hi = fb.prompt_ptr[i], fb.prompt_ptr[i + 1]
        if hi > lo:
            out[lo:hi] = fn(fb.signal[lo:hi])
    return out


def test_reward_normalisations(rng):
    k = rng.integers(1, 6, 30)
    ptr = np.concatenate([[0], np.cumsum(k)])
    n = int(ptr[-1])
    sig = rng.poisson(2.0, n).astype(float)
    sig[ptr[4] : ptr[5]] = 0.0  # a prompt with all-zero signal
    fb = LoggedFeedback(prompt_ptr=ptr, signal=sig, log_logging=np.full(n, -1.0))

    def by_max(u):
        return u / u.max() if u.max() > 0 else np.zeros_like(u)

    def by_log1p(u):
        m = np.log1p(u).max()
        return np.log1p(u) / m if m > 0 else np.zeros_like(u)

    def by_rank(u):
        return np.ones(1) if u.size == 1 else (rankdata(u) - 1) / (u.size - 1)

    np.testing.assert_allclose(fb.rewards("max"), _per_prompt(fb, by_max))
    np.testing.assert_allclose(fb.rewards("log1p"), _per_prompt(fb, by_log1p))
    np.testing.assert_allclose(fb.rewards("rank"), _per_prompt(fb, by_rank))
    np.testing.assert_allclose(fb.rewards("global_max"), sig / sig.max())
    for method in ("max", "log1p", "rank", "global_max"):
        r = fb.rewards(method)
        assert r.min() >= 0.0 and r.max() <= 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fb.rewards("none")
    ok = LoggedFeedback(prompt_ptr=[0, 2], signal=[0.2, 0.9], log_logging=[-1.0, -1.0])
    np.testing.assert_array_equal(ok.rewards("none"), [0.2, 0.9])
    with pytest.raises(ValueError, match="reward normalization must be one of"):
        fb.rewards("zscore")


CONSTRUCTOR_BAD = [
    (lambda: LoggedFeedback.from_pandas({}), TypeError, "df must be a pandas.DataFrame, got dict"),
    (lambda: LoggedFeedback.from_arrow({"prompt_id": [1]}), TypeError,
     "table must be a pyarrow.Table or RecordBatch, got dict"),
    (lambda: LoggedFeedback.from_arrays(prompt_id="abc", signal=[1.0], log_logging=[-1.0]),
     TypeError, "prompt_id must be a 1-d array"),
    (lambda: LoggedFeedback.from_arrays(prompt_id=[1, 2], signal=[1.0, 2.0, 3.0],
                                        log_logging=[-1.0, -1.0]),
     ValueError, "signal has length 3, but prompt_id, log_logging have 2"),
    (lambda: LoggedFeedback.from_arrays(prompt_id=[1, 2], signal=[1.0, 2.0],
                                        log_logging=[-1.0, -1.0], aspect=[0, 10**9]),
     ValueError, "largest aspect label is 1000000000"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "err", "match"), CONSTRUCTOR_BAD)
def test_constructors_name_the_bad_argument(make, err, match):
    with pytest.raises(err, match=match):
        make()
