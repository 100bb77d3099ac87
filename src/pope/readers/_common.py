"""Helpers shared by the readers of public formats (records, texts, ids, numbers)."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pope.io import LogFormatError, read_table


# ----------------------------------------------------------------------------- helpers
def isna(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(float(v))
    try:
        import pandas as pd

        return v is pd.NA or v is pd.NaT
    except ImportError:  # pragma: no cover
        return False


def as_list(v: Any) -> list[Any]:
    """A list cell (list, tuple or the numpy array pyarrow gives) as a list; missing -> []."""
    if isinstance(v, np.ndarray):
        return list(v)
    if isinstance(v, (list, tuple)):
        return list(v)
    if isna(v):
        return []
    raise LogFormatError(f"expected a list, got {type(v).__name__}")


#: Fields read as text from CSV/TSV (so a prompt "007" stays "007").
_TEXT_FIELDS = (
    "prompt_id",
    "id",
    "prompt",
    "response",
    "instruction",
    "question",
    "text",
    "completion",
    "output",
    "chosen",
    "rejected",
    "history",
    "human_ref_A",
    "human_ref_B",
    "post_id",
    "message_id",
    "parent_id",
)


def records_of(source: Any, split: str | None = None) -> list[dict[str, Any]]:
    """Records of a file (any format of :func:`pope.io.read_table`), frame or list of dicts."""
    if isinstance(source, list):
        if not all(isinstance(r, dict) for r in source):
            raise TypeError("a list source must hold dicts (one record each)")
        return source
    frame = read_table(source, split=split, text_columns=_TEXT_FIELDS)
    return frame.to_dict(orient="records")


def source_name(source: Any) -> str:
    return Path(source).name if isinstance(source, (str, os.PathLike)) else "input"


def text_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def number(v: Any) -> float:
    """A score as float; NaN when missing or not a number (validation reports the row)."""
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return math.nan
    return math.nan


def messages_text(messages: Sequence[Any]) -> str:
    """Text of a conversation: one user turn alone, else a ``Role: text`` transcript."""
    turns = []
    for m in messages:
        if not isinstance(m, dict) or "content" not in m:
            raise LogFormatError(
                f"a conversational message must be a dict with 'role' and 'content', got {m!r:.80}"
            )
        turns.append((str(m.get("role", "user")), "" if isna(m["content"]) else str(m["content"])))
    if len(turns) == 1 and turns[0][0] in ("user", "prompter"):
        return turns[0][1]
    return "\n\n".join(f"{role_label(r)}: {t}" for r, t in turns)


def role_label(role: str) -> str:
    return {"prompter": "User", "user": "User", "assistant": "Assistant"}.get(
        role, role.capitalize()
    )


def text_of(v: Any) -> str | None:
    """A text cell or a conversational message list as text; None when missing."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return messages_text(list(v))
    if isna(v):
        return None
    return str(v)


def log_frame(rows: list[dict[str, Any]], columns: Sequence[str], reader: dict[str, Any]) -> Any:
    import pandas as pd

    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    frame.attrs["reader"] = reader
    return frame


def pick_field(keys: Iterable[str], candidates: Sequence[str], what: str, given: str | None) -> str:
    keys = list(keys)
    if given is not None:
        if given not in keys:
            raise LogFormatError(f"{what} field {given!r} not found; fields are {sorted(keys)}")
        return given
    for c in candidates:
        if c in keys:
            return c
    raise LogFormatError(
        f"no {what} field: expected one of {list(candidates)} (or pass it), fields are "
        f"{sorted(keys)}"
    )


def completion_text(v: Any) -> str:
    """A completion as text: a string, or the assistant turns of a message list."""
    if isinstance(v, (list, tuple, np.ndarray)):
        msgs = list(v)
        answer = [m for m in msgs if isinstance(m, dict) and m.get("role") == "assistant"]
        return "\n\n".join(str(m.get("content", "")) for m in (answer or msgs))
    return "" if isna(v) else str(v)
