"""Readers of public feedback formats (pope.readers, exposed through pope.io).

OpenAssistant: the 10 real trees in tests/data/oasst_10.jsonl (see tests/data/PROVENANCE.md),
checked against an independent recursive walk written here. The other formats: small files in
the published layouts (UltraFeedback, Anthropic HH, Stanford SHP, TRL), written by the tests.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pope.io import (
    LogFormatError,
    load_logs,
    read_logs,
    read_oasst,
    read_pairwise,
    read_ratings,
    read_trl,
    write_logs,
)
from pope.readers import detect_public_format, resolve_logs

DATA = Path(__file__).parent / "data"
OASST = DATA / "oasst_10.jsonl"


def trees() -> list[dict]:
    return [json.loads(line) for line in OASST.read_text().splitlines() if line.strip()]


def expected_oasst_rows(tree_list: list[dict]) -> list[dict]:
    """Ranked assistant replies of every prompter turn, by plain recursion (rank rule)."""
    out = []

    def walk(msg: dict) -> None:
        if msg["role"] == "prompter":
            ranked = [
                r for r in msg["replies"] if r["role"] == "assistant" and r.get("rank") is not None
            ]
            k = len(ranked)
            for r in msg["replies"]:
                if r in ranked:
                    rank_pos = sorted(x["rank"] for x in ranked).index(r["rank"])
                    out.append(
                        {
                            "prompt_id": msg["message_id"],
                            "response_id": r["message_id"],
                            "response": r["text"],
                            "signal": 1.0 if k == 1 else 1 - rank_pos / (k - 1),
                            "model_name": r.get("model_name"),
                        }
                    )
        for r in msg["replies"]:
            walk(r)

    for t in tree_list:
        walk(t["prompt"])
    return out


# ----------------------------------------------------------------------------- OASST
def test_oasst_real_trees_match_independent_walk():
    df = read_oasst(OASST)
    exp = pd.DataFrame(expected_oasst_rows(trees()))
    assert len(df) == len(exp) > 20
    got = df.sort_values("response_id").reset_index(drop=True)
    exp = exp.sort_values("response_id").reset_index(drop=True)
    for col in ("prompt_id", "response_id", "response"):
        assert got[col].tolist() == exp[col].tolist()
    np.testing.assert_allclose(got["signal"], exp["signal"], rtol=0, atol=1e-15)
    # the rank rule orders within a prompt only: each prompt's mean is exactly 0.5 (K >= 2)
    multi = df[df["n_ranked"] >= 2].groupby("prompt_id")["signal"].mean()
    np.testing.assert_allclose(multi, 0.5, atol=1e-12)
    # rows of a prompt are contiguous (streaming needs it)
    ids = df["prompt_id"].tolist()
    assert len({i for i, j in itertools.pairwise(ids) if i != j}) == df["prompt_id"].nunique() - 1
    # every lone unranked reply was dropped and counted
    n_unranked = sum(1 for t in trees() for _ in _unranked(t["prompt"]))
    assert df.attrs["reader"]["unranked_dropped"] == n_unranked > 0
    # the table passes the library's validation with no bad row
    data = load_logs(df, require_log_logging=False)
    assert len(data) == len(df) and data.report.ok


def _unranked(msg: dict):
    if msg["role"] == "prompter":
        yield from (r for r in msg["replies"] if r["role"] == "assistant" and "rank" not in r)
    for r in msg["replies"]:
        yield from _unranked(r)


def test_oasst_thread_prompts_and_last():
    tl = trees()
    df = read_oasst(tl)
    deep = df[df["turn"] > 0].iloc[0]
    root_text = next(
        t["prompt"]["text"] for t in tl if t["message_tree_id"] == deep["message_tree_id"]
    )
    assert deep["prompt"].startswith("User: " + root_text + "\n\nAssistant: ")
    last = read_oasst(tl, prompt_format="last").set_index("response_id")
    assert not last.loc[deep["response_id"], "prompt"].startswith("User:")
    assert deep["prompt"].endswith("User: " + last.loc[deep["response_id"], "prompt"])
    # root prompts are the prompter's text alone
    root = df[df["turn"] == 0].iloc[0]
    assert not root["prompt"].startswith("User:")


def tiny_tree() -> dict:
    def m(mid, role, text, **kw):
        return {"message_id": mid, "role": role, "text": text, "lang": "en", "replies": [], **kw}

    root = m("p0", "prompter", "Is tea healthy?")
    root["replies"] = [
        m("a0", "assistant", "Yes.", rank=0, emojis={"+1": 3, "-1": 1}),
        m("a1", "assistant", "Maybe.", rank=1, emojis={"+1": 1}),
        m("a2", "assistant", "Also maybe.", rank=1, model_name="chip20b", synthetic=True),
        m("a3", "assistant", "No idea.", emojis={"-1": 2}),  # unranked
        m("a4", "assistant", "Removed.", rank=2, deleted=True),
    ]
    root["replies"][0]["replies"] = [m("p1", "prompter", "Why?")]
    root["replies"][0]["replies"][0]["replies"] = [m("a5", "assistant", "Antioxidants.")]
    return {"message_tree_id": "t0", "tree_state": "ready_for_export", "prompt": root}


def test_oasst_rank_ties_votes_unranked_deleted():
    df = read_oasst([tiny_tree()]).set_index("response_id")
    # K = 3 ranked, non-deleted replies; a1, a2 tie at position 1.5 -> 1 - 1.5/2
    assert df["signal"].to_dict() == {"a0": 1.0, "a1": 0.25, "a2": 0.25}
    assert df.loc["a2", "model_name"] == "chip20b" and pd.isna(df.loc["a0", "model_name"])
    assert df.attrs["reader"]["unranked_dropped"] == 2  # a3 and the lone a5
    assert df.attrs["reader"]["deleted_dropped"] == 1
    votes = read_oasst([tiny_tree()], signal="votes").set_index("response_id")
    # (u + 1) / (u + d + 2)
    assert votes["signal"].to_dict() == {
        "a0": 4 / 6,
        "a1": 2 / 3,
        "a2": 0.5,
        "a3": 1 / 4,
        "a5": 0.5,
    }
    assert votes.loc["a5", "prompt"] == "User: Is tea healthy?\n\nAssistant: Yes.\n\nUser: Why?"
    with pytest.raises(LogFormatError, match=r"a3.*no rank"):
        read_oasst([tiny_tree()], unranked="error")
    kept = read_oasst([tiny_tree()], drop_deleted=False).set_index("response_id")
    assert kept.loc["a4", "signal"] == 0.0 and kept.loc["a0", "n_ranked"] == 4


def test_oasst_flat_message_table_equals_trees(tmp_path):
    """The oasst1 Hub layout: one message per row, parent_id links, emojis as name/count."""
    rows = []

    def flatten(msg, parent, tree_id):
        e = msg.get("emojis") or {}
        rows.append(
            {
                "message_id": msg["message_id"],
                "parent_id": parent,
                "message_tree_id": tree_id,
                "role": msg["role"],
                "text": msg["text"],
                "lang": msg["lang"],
                "rank": msg.get("rank"),
                "deleted": msg.get("deleted", False),
                "model_name": msg.get("model_name"),
                "emojis": {"name": list(e), "count": list(e.values())},
            }
        )
        for r in msg["replies"]:
            flatten(r, msg["message_id"], tree_id)

    for t in trees():
        flatten(t["prompt"], None, t["message_tree_id"])
    path = tmp_path / "oasst1.parquet"
    pd.DataFrame(rows).to_parquet(path)
    for sig in ("rank", "votes"):
        a = read_oasst(OASST, signal=sig).drop(columns=["synthetic"])
        b = read_oasst(path, signal=sig).drop(columns=["synthetic"])
        key = ["prompt_id", "response_id"]
        pd.testing.assert_frame_equal(
            a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
        )
    assert read_logs(path).shape == read_oasst(path).shape  # auto-detected


def test_oasst_bad_input():
    with pytest.raises(LogFormatError, match="not OpenAssistant"):
        read_oasst([{"prompt": "x", "completion": "y"}])
    with pytest.raises(ValueError, match="signal"):
        read_oasst(OASST, signal="likes")


# ----------------------------------------------------------------------------- ratings
def ultrafeedback_records() -> list[dict]:
    def comp(model, text, overall, help_rating):
        return {
            "annotations": {
                "helpfulness": {"Rating": help_rating, "Rationale": "..."},
                "honesty": {"Rating": "5", "Rationale": "..."},
            },
            "critique": "...",
            "custom_system_prompt": "",
            "fine-grained_score": 4.0,
            "model": model,
            "overall_score": overall,
            "principle": "helpfulness",
            "response": text,
        }

    return [
        {
            "source": "evol_instruct",
            "instruction": "Name a prime number.",
            "models": ["m1", "m2"],
            "correct_answers": ["2"],
            "incorrect_answers": ["4"],
            "completions": [comp("m1", "2 is prime.", 8.5, "5"), comp("m2", "4.", 2.0, "1")],
        },
        {
            "source": "flan",
            "instruction": "Translate 'chat' to English.",
            "models": ["m1", "m2", "m3"],
            "correct_answers": [],
            "incorrect_answers": [],
            "completions": [
                comp("m1", "cat", 9.0, "5"),
                comp("m2", "chat", 3.0, "N/A"),
                comp("m3", "a cat", 7.0, "4"),
            ],
        },
    ]


def test_ratings_ultrafeedback_file(tmp_path):
    path = tmp_path / "uf.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ultrafeedback_records()) + "\n")
    df = read_ratings(path)
    assert df["signal"].tolist() == [8.5, 2.0, 9.0, 3.0, 7.0]
    assert df["model_name"].tolist() == ["m1", "m2", "m1", "m2", "m3"]
    assert df["prompt"].tolist()[:2] == ["Name a prime number."] * 2
    assert df["prompt_id"].nunique() == 2 and df["completion_index"].tolist() == [0, 1, 0, 1, 2]
    assert load_logs(df, require_log_logging=False).report.ok
    # a fine-grained rating by dotted path: "N/A" becomes a bad row, not a dropped one
    fg = read_ratings(path, score="annotations.helpfulness.Rating")
    assert fg["signal"].tolist()[:3] == [5.0, 1.0, 5.0] and math.isnan(fg["signal"][3])
    with pytest.raises(LogFormatError, match="signal"):
        load_logs(fg, require_log_logging=False)
    data = load_logs(fg, require_log_logging=False, on_error="skip")
    assert len(data) == 4 and data.report.bad_rows.tolist() == [3]
    assert read_logs(path).equals(df)  # auto: 'completions' -> ratings


def test_ratings_flat_rows(tmp_path):
    """HelpSteer style: one rated response per row, no prompt id."""
    df = pd.DataFrame(
        {"prompt": ["p1", "p1", "p2"], "response": ["a", "b", "c"], "helpfulness": [3, 4, 0]}
    )
    path = tmp_path / "hs.parquet"
    df.to_parquet(path)
    out = read_ratings(path, score="helpfulness")
    assert out["signal"].tolist() == [3.0, 4.0, 0.0]
    assert out["prompt_id"][0] == out["prompt_id"][1] != out["prompt_id"][2]
    with pytest.raises(LogFormatError, match="prompt field"):
        read_ratings([{"text": "x"}])
    csv = tmp_path / "hs.csv"
    pd.DataFrame({"prompt": ["007", "007"], "response": ["1", "2"], "score": [1, 2]}).to_csv(
        csv, index=False
    )
    out = read_ratings(csv, score="score")
    assert out["prompt"].tolist() == ["007", "007"] and out["response"].tolist() == ["1", "2"]


# ----------------------------------------------------------------------------- pairwise
def test_pairwise_win_rate_rule():
    """A > B, A > C, C > B, one tie: A 2/2, B 0/2, C 1/2 (ties left out)."""
    recs = [
        {"prompt": "q", "chosen": "A", "rejected": "B", "tie": False},
        {"prompt": "q", "chosen": "A", "rejected": "C", "tie": False},
        {"prompt": "q", "chosen": "C", "rejected": "B", "tie": False},
        {"prompt": "q", "chosen": "B", "rejected": "C", "tie": True},
        {"prompt": "r", "chosen": "X", "rejected": "Y", "tie": False},
    ]
    df = read_pairwise(recs, tie_field="tie")
    got = dict(zip(df["response"], zip(df["signal"], df["wins"], df["comparisons"])))
    assert got == {
        "A": (1.0, 2, 2),
        "B": (0.0, 0, 2),
        "C": (0.5, 1, 2),
        "X": (1.0, 1, 1),
        "Y": (0.0, 0, 1),
    }
    assert df.attrs["reader"] == {"format": "pairwise", "pairs": 4, "ties_dropped": 1}
    assert df["prompt_id"].tolist()[:3] == [df["prompt_id"][0]] * 3 != df["prompt_id"][3]
    assert load_logs(df, require_log_logging=False).report.ok


def test_pairwise_hh_transcripts(tmp_path):
    hh = [
        {
            "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.",
            "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5.",
        },
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: Goodbye.",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: No.",
        },
    ]
    path = tmp_path / "hh.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in hh))
    df = read_logs(path)  # auto -> pairwise
    assert df["response"].tolist() == ["4.", "5.", "Goodbye.", "No."]
    assert df["signal"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert df["prompt"][2] == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye"
    bad = [{"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}]
    with pytest.raises(LogFormatError, match=r"record 0.*differ"):
        read_pairwise(bad)


def test_pairwise_shp_and_trl_conversational(tmp_path):
    shp = pd.DataFrame(
        {
            "post_id": ["p1", "p1", "p1"],
            "domain": ["askscience_train"] * 3,
            "upvote_ratio": [0.9] * 3,
            "history": ["Why is the sky blue?"] * 3,
            "c_root_id_A": ["c1", "c1", "c3"],
            "c_root_id_B": ["c2", "c3", "c2"],
            "created_at_utc_A": [1, 1, 3],
            "created_at_utc_B": [2, 3, 2],
            "score_A": [50, 50, 7],
            "score_B": [3, 7, 3],
            "human_ref_A": ["Rayleigh.", "Rayleigh.", "Dust."],
            "human_ref_B": ["Magic.", "Dust.", "Magic."],
            "labels": [1, 1, 1],
            "seconds_difference": [1.0, 2.0, 1.0],
            "score_ratio": [16.7, 7.1, 2.3],
        }
    )
    path = tmp_path / "shp.parquet"
    shp.to_parquet(path)
    df = read_logs(path).set_index("response_id")
    assert df["signal"].to_dict() == {"c1": 1.0, "c2": 0.0, "c3": 0.5}
    assert df["score"].to_dict() == {"c1": 50.0, "c2": 3.0, "c3": 7.0}
    assert set(df["prompt_id"]) == {"p1"}
    conv = [
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
        {
            "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"}],
            "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "B"}],
        },
    ]
    out = read_pairwise(conv)
    assert out["prompt"].tolist() == ["Hi"] * 4 and out["prompt_id"].nunique() == 1
    assert out["response"].tolist() == ["Hello.", "Go away.", "A", "B"]


# ----------------------------------------------------------------------------- TRL
def test_trl_standard_kto_and_conversational(tmp_path):
    kto = pd.DataFrame(
        {
            "prompt": ["The sky is", "The sky is", "Grass is"],
            "completion": [" blue.", " green.", " green."],
            "label": [True, False, True],
        }
    )
    path = tmp_path / "kto.jsonl"
    write_logs(kto, path)
    df = read_logs(path)  # auto -> trl
    assert df["signal"].tolist() == [1.0, 0.0, 1.0]
    assert df["response"].tolist() == [" blue.", " green.", " green."]
    assert df["prompt_id"][0] == df["prompt_id"][1] != df["prompt_id"][2]
    assert load_logs(df, require_log_logging=False).report.ok
    conv = [
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Sky?"},
            ],
            "completion": [{"role": "assistant", "content": "Blue."}],
            "reward": 0.7,
        }
    ]
    out = read_trl(conv)
    assert out["prompt"][0] == "System: Be brief.\n\nUser: Sky?"
    assert out["response"][0] == "Blue." and out["signal"][0] == 0.7
    with pytest.raises(LogFormatError, match="no signal field"):
        read_trl([{"prompt": "a", "completion": "b"}])
    with pytest.raises(LogFormatError, match="'completion'"):
        read_trl([{"prompt": "a", "label": True}])


def test_detect_and_resolve(tmp_path):
    assert detect_public_format(["message_tree_id", "prompt"]) == "oasst"
    assert detect_public_format(["instruction", "completions"]) == "ratings"
    assert detect_public_format(["chosen", "rejected"]) == "pairwise"
    assert detect_public_format(["prompt", "completion", "label"]) == "trl"
    assert detect_public_format(["prompt_id", "prompt", "completion", "signal"]) == "log"
    native = tmp_path / "log.parquet"
    pd.DataFrame(
        {"prompt_id": [1], "prompt": ["p"], "response": ["r"], "signal": [1.0]}
    ).to_parquet(native)
    assert resolve_logs(native, "auto") == (native, "parquet")  # stays a path: streamable
    assert resolve_logs(native, None) == (native, None)
    frame, fmt = resolve_logs(OASST, "oasst")
    assert fmt is None and frame.attrs["reader"]["format"] == "oasst"
    with pytest.raises(ValueError, match="format must be"):
        read_logs(OASST, "sharegpt")
