"""One rule for prompt ids, in memory and streaming (``pope._validation.normalize_ids``).

Ids are str or int (numpy ints and integral floats count as int); bool, missing, dict, list
and non-integral float ids are rejected naming the row, and a log must not mix int and str
ids: 0 and "0" are neither merged (in memory, before) nor split (streaming, before).
The same table runs through the in-memory constructor, the log reader and the streaming
re-chunker.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pope import LoggedFeedback
from pope.io import LogFormatError, validate_logs
from pope.pipeline import iter_prompt_chunks

VALID = [
    ([1, 1, 2], [1, 2]),
    ([1.0, 1.0, 2.0], [1, 2]),
    ([np.int64(3), 3, 3.0], [3]),
    (["a", "a", "b"], ["a", "b"]),
    (["0", "0", "00"], ["0", "00"]),
]
INVALID = [
    ([0, "0", 1], ValueError, "mixes int and str"),
    ([{"a": 1}, {"a": 1}, 2], TypeError, "row 0 has type dict"),
    ([[1], [1], [2]], TypeError, "row 0 has type list"),
    ([1, True, 1], TypeError, "row 1 is a bool"),
    ([1.5, 1.5, 2.0], TypeError, "row 0 is the float 1.5"),
    ([1, 2, float("inf")], TypeError, "row 2 is the float inf"),
]


def _frame(ids: list) -> pd.DataFrame:
    arr = np.empty(len(ids), dtype=object)
    for i, v in enumerate(ids):
        arr[i] = v
    col = pd.Series(arr, dtype=object)
    return pd.DataFrame(
        {"prompt_id": col, "signal": [1.0] * len(ids), "log_logging": [-1.0] * len(ids)}
    )


@pytest.mark.parametrize(("ids", "prompts"), VALID)
def test_valid_ids_agree_in_memory_reader_and_streaming(ids, prompts):
    fb = LoggedFeedback.from_arrays(
        prompt_id=ids, signal=np.ones(len(ids)), log_logging=-np.ones(len(ids))
    )
    assert fb.prompt_ids.tolist() == prompts
    data = validate_logs(_frame(ids), require_text=False)
    assert sorted(set(data.prompt_id.tolist()), key=str) == sorted(prompts, key=str)
    chunks = list(iter_prompt_chunks([_frame(ids[:1]), _frame(ids[1:])]))
    assert sum(len(f) for _, f in chunks) == len(ids)


@pytest.mark.parametrize(("ids", "err", "match"), INVALID)
def test_invalid_ids_raise_the_same_message_everywhere(ids, err, match):
    with pytest.raises(err, match=match):
        LoggedFeedback.from_arrays(
            prompt_id=ids, signal=np.ones(len(ids)), log_logging=-np.ones(len(ids))
        )
    with pytest.raises(LogFormatError, match=match):  # a ValueError: the CLI exits 2
        validate_logs(_frame(ids), require_text=False)
    with pytest.raises(LogFormatError, match=match):
        list(iter_prompt_chunks([_frame(ids)]))


def test_int_and_str_ids_in_different_chunks_are_rejected():
    """Before, streaming raised "not contiguous" here while in memory merged 0 and "0"."""
    with pytest.raises(LogFormatError, match="mixes int and str"):
        list(iter_prompt_chunks([_frame([0, 0]), _frame(["0", "1"])]))


@pytest.mark.parametrize(
    "ids", [[1.0, np.nan, np.nan], [1, None, None], ["a", pd.NA, "b"]], ids=["nan", "none", "na"]
)
def test_missing_ids(ids):
    """In memory a missing id is an error naming the row (NaNs used to merge into one new
    prompt); the log reader reports it as a row problem (dropped or raised by on_error)."""
    with pytest.raises(ValueError, match="prompt_id at row 1 is missing"):
        LoggedFeedback.from_arrays(prompt_id=ids, signal=np.ones(3), log_logging=-np.ones(3))
    data = validate_logs(_frame(ids), require_text=False)
    assert data.report.issues["missing prompt_id"].tolist() == [1, 2] or (
        data.report.issues["missing prompt_id"].tolist() == [1]
    )


def test_ids_and_arrays_are_not_modified():
    ids = np.array([3, 1, 3, 2])
    ids.flags.writeable = False
    sig = np.array([1.0, 2.0, 3.0, 4.0])
    sig.flags.writeable = False
    before = (ids.copy(), sig.copy())
    fb = LoggedFeedback.from_arrays(prompt_id=ids, signal=sig, log_logging=-sig)
    assert fb.prompt_ids.tolist() == [3, 1, 2]
    np.testing.assert_array_equal(ids, before[0])
    np.testing.assert_array_equal(sig, before[1])


def test_aspect_labels_follow_the_same_rule_in_the_reader():
    """A list aspect cell is a bad row (not stringified); int and str labels do not merge."""
    frame = _frame([1, 1, 2])
    cells = np.empty(3, dtype=object)
    cells[:] = ["x", "y", None]
    cells[2] = [1, 2]
    frame["aspect"] = cells
    data = validate_logs(frame, require_text=False)
    bad = [k for k in data.report.issues if k.startswith("aspect is not a label")]
    assert bad and data.report.issues[bad[0]].tolist() == [2]
    frame["aspect"] = pd.Series([0, "0", "x"], dtype=object)
    with pytest.raises(LogFormatError, match="mixes number and str aspect labels"):
        validate_logs(frame, require_text=False)
    frame["aspect"] = pd.Series([0, 1, 10**9], dtype=object)
    with pytest.raises(LogFormatError, match="largest aspect label is 1000000000"):
        validate_logs(frame, require_text=False)
