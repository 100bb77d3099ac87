"""OpenAssistant message trees (and oasst1 message rows) as the log table."""

from __future__ import annotations

import math
from typing import Any, Literal

from pope.io import LogFormatError
from pope.readers._common import (
    as_list,
    isna,
    log_frame,
    messages_text,
    records_of,
    source_name,
)

__all__ = ["read_oasst"]


# ----------------------------------------------------------------------------- OpenAssistant
_OASST_COLUMNS = (
    "prompt_id",
    "prompt",
    "response",
    "signal",
    "response_id",
    "message_tree_id",
    "rank",
    "n_ranked",
    "votes_up",
    "votes_down",
    "model_name",
    "synthetic",
    "turn",
    "lang",
)


def _emoji_counts(e: Any) -> dict[str, int]:
    """``{"+1": 3}`` or the Hugging Face ``{"name": [...], "count": [...]}`` form."""
    if isinstance(e, dict) and "name" in e and "count" in e:
        return {str(n): int(c) for n, c in zip(as_list(e["name"]), as_list(e["count"]))}
    if isinstance(e, dict):
        return {str(k): int(v) for k, v in e.items() if not isna(v)}
    return {}


def _flat_to_trees(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Message rows (``message_id``, ``parent_id``; oasst1 on the Hub) as nested trees."""
    nodes = {str(r["message_id"]): {**r, "replies": []} for r in records}
    roots = []
    for r in records:
        node = nodes[str(r["message_id"])]
        parent = r.get("parent_id")
        if isna(parent):
            roots.append(node)
        elif str(parent) in nodes:
            nodes[str(parent)]["replies"].append(node)
        # a message whose parent is not in the file is an orphan subtree: not reachable
    return [
        {"message_tree_id": r.get("message_tree_id", r["message_id"]), "prompt": r} for r in roots
    ]


def _positions(ranks: list[float]) -> list[float]:
    """Position 0..K-1 of each rank in the ranking (ties: average position)."""
    order = sorted(ranks)
    out = []
    for r in ranks:
        first = order.index(r)
        out.append(first + (order.count(r) - 1) / 2)
    return out


def read_oasst(
    source: Any,
    *,
    signal: Literal["rank", "votes"] = "rank",
    unranked: Literal["drop", "error"] = "drop",
    prompt_format: Literal["thread", "last"] = "thread",
    drop_deleted: bool = True,
    lang: str | None = None,
    split: str | None = None,
) -> Any:
    r"""Read OpenAssistant message trees (or oasst message rows) into the log table.

    Parameters
    ----------
    source : path, pandas.DataFrame or list of dicts
        One message tree per record (``message_tree_id``, ``prompt``: a message with nested
        ``replies``), as in the oasst tree exports; or one message per record with
        ``message_id``/``parent_id`` (the oasst1 message table on the Hugging Face Hub).
    signal : {"rank", "votes"}
        ``"rank"``: :math:`s = 1 - \rho/(K-1)` from the human ranking of the :math:`K` ranked
        assistant replies of a prompter turn (:math:`\rho` = position, 0 = best, ties
        averaged; :math:`s = 1` for :math:`K = 1`). It only orders replies *within* a prompt:
        every prompt's mean over its ranked replies is 0.5 by construction.
        ``"votes"``: :math:`s = (u+1)/(u+d+2)` from the ``+1``/``-1`` emoji counts (0.5
        without votes); comparable across prompts, kept for unranked replies too.
    unranked : {"drop", "error"}
        With ``signal="rank"``, replies without a rank (never ranked, or a lone reply) have no
        signal: ``"drop"`` leaves them out (counted in ``frame.attrs["reader"]``),
        ``"error"`` raises :class:`~pope.io.LogFormatError`.
    prompt_format : {"thread", "last"}
        ``"thread"``: the conversation up to the prompter turn (a transcript for turns below
        the root); ``"last"``: the prompter turn's text only.
    drop_deleted : bool
        Leave out messages marked ``deleted`` and everything below them.
    lang : str, optional
        Keep only prompts whose prompter message has this ``lang`` code.

    Returns
    -------
    pandas.DataFrame
        Columns ``prompt_id`` (the prompter message id), ``prompt``, ``response``, ``signal``,
        ``response_id`` (the reply's message id), ``message_tree_id``, ``rank`` (NaN when
        unranked), ``n_ranked`` (:math:`K`), ``votes_up``, ``votes_down``, ``model_name``
        (missing for replies written by people), ``synthetic``, ``turn`` (depth of the prompter
        turn, 0 = root), ``lang``. Rows of a prompt are contiguous, in tree order.
    """
    if signal not in ("rank", "votes"):
        raise ValueError(f"signal must be 'rank' or 'votes', got {signal!r}")
    if unranked not in ("drop", "error"):
        raise ValueError(f"unranked must be 'drop' or 'error', got {unranked!r}")
    if prompt_format not in ("thread", "last"):
        raise ValueError(f"prompt_format must be 'thread' or 'last', got {prompt_format!r}")
    records = records_of(source, split)
    if records and "message_tree_id" in records[0] and isinstance(records[0].get("prompt"), dict):
        trees = records
    elif records and {"message_id", "parent_id", "role", "text"} <= set(records[0]):
        trees = _flat_to_trees(records)
    elif not records:
        trees = []
    else:
        raise LogFormatError(
            f"{source_name(source)}: not OpenAssistant data: expected message trees "
            "(message_tree_id, prompt) or message rows (message_id, parent_id, role, text); "
            f"fields are {sorted(records[0])}"
        )
    rows: list[dict[str, Any]] = []
    counts = {
        "trees": len(trees),
        "unranked_dropped": 0,
        "deleted_dropped": 0,
        "other_lang_prompts": 0,
    }
    for tree in trees:
        stack: list[tuple[dict[str, Any], list[dict[str, Any]], int]] = [(tree["prompt"], [], 0)]
        while stack:
            msg, history, turn = stack.pop()
            if drop_deleted and bool(msg.get("deleted")) is True:
                counts["deleted_dropped"] += 1
                continue
            thread = [*history, {"role": msg.get("role"), "content": msg.get("text")}]
            replies = [
                r
                for r in as_list(msg.get("replies"))
                if not (drop_deleted and bool(r.get("deleted")) is True)
            ]
            counts["deleted_dropped"] += len(as_list(msg.get("replies"))) - len(replies)
            if msg.get("role") == "prompter":
                if lang is not None and msg.get("lang") != lang:
                    counts["other_lang_prompts"] += 1
                else:
                    rows.extend(
                        _oasst_prompt_rows(
                            tree,
                            msg,
                            thread,
                            replies,
                            turn,
                            signal,
                            unranked,
                            prompt_format,
                            counts,
                            source,
                        )
                    )
            stack.extend(
                (r, thread, turn + (r.get("role") == "prompter")) for r in reversed(replies)
            )
    reader = {"format": "oasst", "signal": signal, "prompt_format": prompt_format, **counts}
    return log_frame(rows, _OASST_COLUMNS, reader)


def _oasst_prompt_rows(
    tree: dict[str, Any],
    msg: dict[str, Any],
    thread: list[dict[str, Any]],
    replies: list[dict[str, Any]],
    turn: int,
    signal: str,
    unranked: str,
    prompt_format: str,
    counts: dict[str, int],
    source: Any,
) -> list[dict[str, Any]]:
    """The rows of one prompter turn (its assistant replies)."""
    answers = [r for r in replies if r.get("role") == "assistant"]
    if not answers:
        return []
    ranked = [r for r in answers if not isna(r.get("rank"))]
    pos = dict(zip((id(r) for r in ranked), _positions([float(r["rank"]) for r in ranked])))
    k = len(ranked)
    prompt = messages_text(thread) if prompt_format == "thread" else str(msg.get("text"))
    out = []
    for r in answers:
        emo = _emoji_counts(r.get("emojis"))
        up, down = emo.get("+1", 0), emo.get("-1", 0)
        if signal == "votes":
            s = (up + 1.0) / (up + down + 2.0)
        elif id(r) in pos:
            s = 1.0 if k == 1 else 1.0 - pos[id(r)] / (k - 1)
        elif unranked == "error":
            raise LogFormatError(
                f"{source_name(source)}: reply {r.get('message_id')} to prompt "
                f"{msg.get('message_id')} has no rank (use unranked='drop' or signal='votes')"
            )
        else:
            counts["unranked_dropped"] += 1
            continue
        model = r.get("model_name")
        out.append(
            {
                "prompt_id": str(msg.get("message_id")),
                "prompt": prompt,
                "response": r.get("text"),
                "signal": s,
                "response_id": str(r.get("message_id")),
                "message_tree_id": str(tree.get("message_tree_id")),
                "rank": float(r["rank"]) if id(r) in pos else math.nan,
                "n_ranked": k,
                "votes_up": up,
                "votes_down": down,
                "model_name": None if isna(model) else str(model),
                "synthetic": bool(r.get("synthetic", False)),
                "turn": turn,
                "lang": r.get("lang"),
            }
        )
    return out
