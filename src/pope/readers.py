r"""Readers for public human-feedback formats, each returning the log table of :mod:`pope.io`.

Every reader returns a ``pandas.DataFrame`` with one row per logged response in the schema of
``docs/data-format.md`` (``prompt_id``, ``prompt``, ``response``, ``signal`` and extra columns
that keep the source's ids and annotations). The frame is *not* validated here: pass it to
:func:`pope.io.load_logs` or to ``pope evaluate`` (which validate it row by row), so there is a
single validation layer. A value the reader cannot turn into a number (a rating ``"N/A"``)
becomes a NaN signal and is reported by that validation as a bad row, never dropped silently.
What a reader drops by design (unranked OpenAssistant replies, deleted messages, tied pairs)
is counted in ``frame.attrs["reader"]``.

Formats and their signal rules:

- **OpenAssistant message trees** (:func:`read_oasst`): each prompter turn with at least one
  assistant reply is a prompt; each assistant reply a response. ``signal="rank"``:
  :math:`s = 1 - \rho/(K-1)` with :math:`\rho \in \{0..K-1\}` the reply's position in the
  human ranking of its :math:`K` ranked siblings (0 = best; ties share the average position;
  :math:`s = 1` when :math:`K = 1`). ``signal="votes"``: the Laplace-smoothed approval
  :math:`s = (u + 1) / (u + d + 2)` of the ``+1`` (:math:`u`) and ``-1`` (:math:`d`) emoji
  counts.
- **Per-completion ratings** (:func:`read_ratings`, UltraFeedback style): a prompt and a list of
  completions with scores; the signal is the score as given.
- **Pairwise preferences** (:func:`read_pairwise`, SHP / Anthropic HH / TRL preference style):
  the signal of a response is its empirical win rate :math:`s_j = W_j / N_j` over the
  :math:`N_j` pairs of its prompt it appears in (:math:`W_j` of which it won). This is a
  count, not a Bradley–Terry fit: with an incomplete design it depends on the opponents.
- **TRL prompt/completion** (:func:`read_trl`): ``prompt`` and ``completion`` columns (text or
  conversational message lists) with a ``label`` (KTO, True/False -> 1/0) or a numeric signal
  column.

Prompt texts of multi-turn conversations are written as a transcript
``"User: ...\n\nAssistant: ...\n\nUser: ..."`` (roles capitalised, turns separated by a blank
line, ending with the last user turn); a single user turn is its text alone. Where the source
has no prompt id, ``prompt_id`` is the first 16 hex digits of the SHA-1 of the prompt text
(stable across runs and files).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pope.io import LogFormatError, read_table

__all__ = [
    "PUBLIC_FORMATS",
    "detect_public_format",
    "read_logs",
    "read_oasst",
    "read_pairwise",
    "read_ratings",
    "read_trl",
    "resolve_logs",
]

#: Formats read by this module (``"auto"`` tells them apart by their columns).
PUBLIC_FORMATS = ("oasst", "ratings", "pairwise", "trl")

_FILE_FORMATS = ("parquet", "jsonl", "csv", "tsv", "hf")


# ----------------------------------------------------------------------------- helpers
def _isna(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(float(v))
    try:
        import pandas as pd

        return v is pd.NA or v is pd.NaT
    except ImportError:  # pragma: no cover
        return False


def _as_list(v: Any) -> list[Any]:
    """A list cell (list, tuple or the numpy array pyarrow gives) as a list; missing -> []."""
    if isinstance(v, np.ndarray):
        return list(v)
    if isinstance(v, (list, tuple)):
        return list(v)
    if _isna(v):
        return []
    raise LogFormatError(f"expected a list, got {type(v).__name__}")


def _records(source: Any, split: str | None = None) -> list[dict[str, Any]]:
    """Records of a file (any format of :func:`pope.io.read_table`), frame or list of dicts."""
    if isinstance(source, list):
        if not all(isinstance(r, dict) for r in source):
            raise TypeError("a list source must hold dicts (one record each)")
        return source
    frame = read_table(source, split=split, text_columns=())
    return frame.to_dict(orient="records")


def _name(source: Any) -> str:
    return Path(source).name if isinstance(source, (str, os.PathLike)) else "input"


def _text_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _number(v: Any) -> float:
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


def _messages_text(messages: Sequence[Any]) -> str:
    """Text of a conversation: one user turn alone, else a ``Role: text`` transcript."""
    turns = []
    for m in messages:
        if not isinstance(m, dict) or "content" not in m:
            raise LogFormatError("a conversational message must be a dict with 'role' and "
                                 f"'content', got {m!r:.80}")
        turns.append((str(m.get("role", "user")), "" if _isna(m["content"]) else str(m["content"])))
    if len(turns) == 1 and turns[0][0] in ("user", "prompter"):
        return turns[0][1]
    return "\n\n".join(f"{_role_label(r)}: {t}" for r, t in turns)


def _role_label(role: str) -> str:
    return {"prompter": "User", "user": "User", "assistant": "Assistant"}.get(
        role, role.capitalize()
    )


def _text(v: Any) -> str | None:
    """A text cell or a conversational message list as text; None when missing."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return _messages_text(list(v))
    if _isna(v):
        return None
    return str(v)


def _frame(rows: list[dict[str, Any]], columns: Sequence[str], reader: dict[str, Any]) -> Any:
    import pandas as pd

    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    frame.attrs["reader"] = reader
    return frame


def _pick(keys: Iterable[str], candidates: Sequence[str], what: str, given: str | None) -> str:
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


# ----------------------------------------------------------------------------- OpenAssistant
_OASST_COLUMNS = (
    "prompt_id", "prompt", "response", "signal", "response_id", "message_tree_id", "rank",
    "n_ranked", "votes_up", "votes_down", "model_name", "synthetic", "turn", "lang",
)


def _emoji_counts(e: Any) -> dict[str, int]:
    """``{"+1": 3}`` or the Hugging Face ``{"name": [...], "count": [...]}`` form."""
    if _isna(e) if not isinstance(e, (dict, list, np.ndarray)) else False:
        return {}
    if isinstance(e, dict) and "name" in e and "count" in e:
        return {str(n): int(c) for n, c in zip(_as_list(e["name"]), _as_list(e["count"]))}
    if isinstance(e, dict):
        return {str(k): int(v) for k, v in e.items() if not _isna(v)}
    return {}


def _flat_to_trees(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Message rows (``message_id``, ``parent_id``; oasst1 on the Hub) as nested trees."""
    nodes = {str(r["message_id"]): {**r, "replies": []} for r in records}
    roots = []
    for r in records:
        node = nodes[str(r["message_id"])]
        parent = r.get("parent_id")
        if _isna(parent):
            roots.append(node)
        elif str(parent) in nodes:
            nodes[str(parent)]["replies"].append(node)
        # a message whose parent is not in the file is an orphan subtree: not reachable
    return [{"message_tree_id": r.get("message_tree_id", r["message_id"]), "prompt": r}
            for r in roots]


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
    records = _records(source, split)
    if records and "message_tree_id" in records[0] and isinstance(records[0].get("prompt"), dict):
        trees = records
    elif records and {"message_id", "parent_id", "role", "text"} <= set(records[0]):
        trees = _flat_to_trees(records)
    elif not records:
        trees = []
    else:
        raise LogFormatError(
            f"{_name(source)}: not OpenAssistant data: expected message trees "
            "(message_tree_id, prompt) or message rows (message_id, parent_id, role, text); "
            f"fields are {sorted(records[0])}"
        )
    rows: list[dict[str, Any]] = []
    counts = {"trees": len(trees), "unranked_dropped": 0, "deleted_dropped": 0,
              "other_lang_prompts": 0}
    for tree in trees:
        stack = [(tree["prompt"], [], 0)]
        while stack:
            msg, history, turn = stack.pop()
            if drop_deleted and bool(msg.get("deleted")) is True:
                counts["deleted_dropped"] += 1
                continue
            thread = [*history, {"role": msg.get("role"), "content": msg.get("text")}]
            replies = [r for r in _as_list(msg.get("replies"))
                       if not (drop_deleted and bool(r.get("deleted")) is True)]
            counts["deleted_dropped"] += len(_as_list(msg.get("replies"))) - len(replies)
            if msg.get("role") == "prompter":
                if lang is not None and msg.get("lang") != lang:
                    counts["other_lang_prompts"] += 1
                else:
                    rows.extend(_oasst_prompt_rows(tree, msg, thread, replies, turn, signal,
                                                   unranked, prompt_format, counts, source))
            stack.extend((r, thread, turn + (r.get("role") == "prompter"))
                         for r in reversed(replies))
    reader = {"format": "oasst", "signal": signal, "prompt_format": prompt_format, **counts}
    return _frame(rows, _OASST_COLUMNS, reader)


def _oasst_prompt_rows(
    tree: dict[str, Any], msg: dict[str, Any], thread: list[dict[str, Any]],
    replies: list[dict[str, Any]], turn: int, signal: str, unranked: str, prompt_format: str,
    counts: dict[str, int], source: Any,
) -> list[dict[str, Any]]:
    """The rows of one prompter turn (its assistant replies)."""
    answers = [r for r in replies if r.get("role") == "assistant"]
    if not answers:
        return []
    ranked = [r for r in answers if not _isna(r.get("rank"))]
    pos = dict(zip((id(r) for r in ranked), _positions([float(r["rank"]) for r in ranked])))
    k = len(ranked)
    prompt = _messages_text(thread) if prompt_format == "thread" else str(msg.get("text"))
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
                f"{_name(source)}: reply {r.get('message_id')} to prompt {msg.get('message_id')} "
                "has no rank (use unranked='drop' or signal='votes')"
            )
        else:
            counts["unranked_dropped"] += 1
            continue
        model = r.get("model_name")
        out.append({
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
            "model_name": None if _isna(model) else str(model),
            "synthetic": bool(r.get("synthetic", False)),
            "turn": turn,
            "lang": r.get("lang"),
        })
    return out


# ----------------------------------------------------------------------------- ratings
def _dotted(rec: dict[str, Any], path: str) -> Any:
    """``rec["a"]["b"]`` for ``"a.b"`` (a key with a dot is tried whole first)."""
    if path in rec:
        return rec[path]
    cur: Any = rec
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def read_ratings(
    source: Any,
    *,
    score: str = "overall_score",
    prompt_field: str | None = None,
    completions_field: str = "completions",
    response_field: str | None = None,
    id_field: str | None = None,
    split: str | None = None,
) -> Any:
    """Read per-completion ratings (UltraFeedback style) into the log table.

    Parameters
    ----------
    source : path, pandas.DataFrame or list of dicts
        One prompt per record with a list of completions (``{"instruction": ...,
        "completions": [{"response": ..., "overall_score": 7.5, "model": ...}, ...]}``); or,
        without a ``completions_field``, one rated response per record (HelpSteer style:
        ``prompt``, ``response``, score columns).
    score : str
        The completion's field holding the signal; a dotted path reaches nested fields
        (``"annotations.helpfulness.Rating"``). Numeric strings are parsed; anything else
        (``"N/A"``) gives a NaN signal, reported as a bad row by validation.
    prompt_field, response_field : str, optional
        Default: the first of ``instruction``/``prompt``/``question``, and of
        ``response``/``text``/``completion``/``output``.
    id_field : str, optional
        Prompt id field (default ``prompt_id`` or ``id`` if present, else a hash of the prompt).

    Returns
    -------
    pandas.DataFrame
        ``prompt_id``, ``prompt``, ``response``, ``signal``, ``model_name``, ``completion_index``.
    """
    records = _records(source, split)
    rows: list[dict[str, Any]] = []
    if records:
        keys = records[0].keys()
        pf = _pick(keys, ("instruction", "prompt", "question"), "prompt", prompt_field)
        idf = id_field or next((k for k in ("prompt_id", "id") if k in keys), None)
        nested = completions_field in keys
        for i, rec in enumerate(records):
            prompt = _text(rec.get(pf))
            pid = (str(rec[idf]) if idf is not None and not _isna(rec.get(idf))
                   else _text_id(prompt or ""))
            comps = _as_list(rec.get(completions_field)) if nested else [rec]
            for j, c in enumerate(comps):
                if not isinstance(c, dict):
                    raise LogFormatError(f"{_name(source)}: record {i}: completion {j} is not an "
                                         "object")
                rf = _pick(c.keys(), ("response", "text", "completion", "output"), "response",
                           response_field)
                model = c.get("model", c.get("model_name"))
                rows.append({
                    "prompt_id": pid,
                    "prompt": prompt,
                    "response": _text(c.get(rf)),
                    "signal": _number(_dotted(c, score)),
                    "model_name": None if _isna(model) else str(model),
                    "completion_index": j,
                })
    cols = ("prompt_id", "prompt", "response", "signal", "model_name", "completion_index")
    return _frame(rows, cols, {"format": "ratings", "score": score, "records": len(records)})


# ----------------------------------------------------------------------------- pairwise
def _split_hh(text: str) -> tuple[str, str]:
    """An Anthropic HH transcript as (prompt, last assistant turn)."""
    tag = "\n\nAssistant:"
    cut = text.rfind(tag)
    if cut < 0:
        raise LogFormatError("an HH transcript has no '\\n\\nAssistant:' turn")
    return text[:cut], text[cut + len(tag):].lstrip(" ")


def _pairs(records: list[dict[str, Any]], fields: dict[str, str | None],
           source: Any) -> Iterable[tuple[str, str, str, str, str, Any, Any, bool]]:
    """(prompt_id, prompt, winner, loser, winner_id, loser_id, scores, tie) per record."""
    keys = set(records[0])
    if {"human_ref_A", "human_ref_B", "labels"} <= keys:  # Stanford SHP
        for rec in records:
            prompt = str(rec.get("history"))
            pid = str(rec["post_id"]) if not _isna(rec.get("post_id")) else _text_id(prompt)
            a, b = str(rec["human_ref_A"]), str(rec["human_ref_B"])
            ida = rec.get("c_root_id_A", a)
            idb = rec.get("c_root_id_B", b)
            sa, sb = rec.get("score_A"), rec.get("score_B")
            if int(rec["labels"]) == 1:
                yield pid, prompt, a, b, str(ida), str(idb), (sa, sb), False
            else:
                yield pid, prompt, b, a, str(idb), str(ida), (sb, sa), False
        return
    pf, cf, rf = fields["prompt"], fields["chosen"], fields["rejected"]
    if cf not in keys or rf not in keys:
        raise LogFormatError(
            f"{_name(source)}: not pairwise data: expected {cf!r}/{rf!r} (optionally "
            f"{pf!r}) or SHP's human_ref_A/human_ref_B/labels; fields are {sorted(keys)}"
        )
    tie_f = fields.get("tie")
    for i, rec in enumerate(records):
        pv = rec.get(pf) if pf in keys else None
        if isinstance(pv, (list, tuple, np.ndarray)) or not _isna(pv):  # explicit prompt
            prompt = _text(pv) or ""
            win, lose = _completion_text(rec.get(cf)), _completion_text(rec.get(rf))
        elif isinstance(rec.get(cf), (list, tuple, np.ndarray)):  # implicit-prompt messages
            prompt, win, lose = _split_messages(list(rec[cf]), list(rec[rf]), i, source)
        else:  # Anthropic HH: whole transcripts, the prompt is before the last assistant turn
            pw, win = _split_hh(str(rec.get(cf)))
            pl, lose = _split_hh(str(rec.get(rf)))
            if pw != pl:
                raise LogFormatError(
                    f"{_name(source)}: record {i}: chosen and rejected transcripts differ before "
                    "the last assistant turn (not one prompt)"
                )
            prompt = pw
        pid = (str(rec[fields["id"]]) if fields.get("id") and not _isna(rec.get(fields["id"]))
               else _text_id(prompt))
        tie = bool(rec.get(tie_f)) if tie_f and not _isna(rec.get(tie_f)) else False
        yield pid, prompt, win, lose, _text_id(win), _text_id(lose), (None, None), tie


def _split_messages(chosen: list[Any], rejected: list[Any], i: int,
                    source: Any) -> tuple[str, str, str]:
    """Implicit-prompt conversations: the shared leading messages are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise LogFormatError(f"{_name(source)}: record {i}: chosen and rejected conversations "
                             "share no leading messages (no prompt)")
    return (_messages_text(chosen[:n]), _completion_text(chosen[n:]),
            _completion_text(rejected[n:]))


def _completion_text(v: Any) -> str:
    """A completion as text: a string, or the assistant turns of a message list."""
    if isinstance(v, (list, tuple, np.ndarray)):
        msgs = list(v)
        answer = [m for m in msgs if isinstance(m, dict) and m.get("role") == "assistant"]
        return "\n\n".join(str(m.get("content", "")) for m in (answer or msgs))
    return "" if _isna(v) else str(v)


def read_pairwise(
    source: Any,
    *,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
    id_field: str | None = None,
    tie_field: str | None = None,
    split: str | None = None,
) -> Any:
    r"""Read pairwise preferences into the log table, one row per distinct response.

    Parameters
    ----------
    source : path, pandas.DataFrame or list of dicts
        One comparison per record, in one of three layouts: ``prompt``/``chosen``/``rejected``
        (TRL preference, text or message lists); ``chosen``/``rejected`` whole transcripts
        without a prompt field (Anthropic HH: the prompt is the text before the last
        ``"\n\nAssistant:"``, which must agree between the two); or Stanford SHP
        (``history``, ``human_ref_A``, ``human_ref_B``, ``labels`` = 1 when A is preferred,
        ``post_id``, ``c_root_id_A/B``, ``score_A/B``).
    prompt_field, chosen_field, rejected_field, id_field : str
        Field names of the first two layouts (``id_field``: prompt id, else a hash of the
        prompt text).
    tie_field : str, optional
        A boolean field marking ties; tied pairs are left out (counted in ``attrs``).

    Returns
    -------
    pandas.DataFrame
        ``prompt_id``, ``prompt``, ``response``, ``signal`` :math:`= W_j/N_j` (win rate of the
        response over the :math:`N_j` untied pairs of its prompt it appears in),
        ``wins`` :math:`W_j`, ``comparisons`` :math:`N_j`, ``response_id`` (SHP comment id, or
        the text), ``score`` (SHP upvotes, else NaN). Responses are identified by their id
        (SHP) or text within a prompt; rows of a prompt are contiguous, in order of first
        appearance.
    """
    records = _records(source, split)
    fields = {"prompt": prompt_field, "chosen": chosen_field, "rejected": rejected_field,
              "id": id_field, "tie": tie_field}
    table: dict[str, dict[str, Any]] = {}
    n_pairs = ties = 0
    if records:
        for pid, prompt, win, lose, wid, lid, scores, tie in _pairs(records, fields, source):
            if tie:
                ties += 1
                continue
            n_pairs += 1
            p = table.setdefault(pid, {"prompt": prompt, "resp": {}})
            for rid, text, won, sc in ((wid, win, 1, scores[0]), (lid, lose, 0, scores[1])):
                e = p["resp"].setdefault(rid, {"text": text, "wins": 0, "n": 0, "score": sc})
                e["wins"] += won
                e["n"] += 1
    rows = []
    for pid, p in table.items():
        for rid, e in p["resp"].items():
            rows.append({
                "prompt_id": pid,
                "prompt": p["prompt"],
                "response": e["text"],
                "signal": e["wins"] / e["n"],
                "wins": e["wins"],
                "comparisons": e["n"],
                "response_id": rid,
                "score": _number(e["score"]),
            })
    cols = ("prompt_id", "prompt", "response", "signal", "wins", "comparisons", "response_id",
            "score")
    return _frame(rows, cols, {"format": "pairwise", "pairs": n_pairs, "ties_dropped": ties})


# ----------------------------------------------------------------------------- TRL
_TRL_SIGNALS = ("label", "signal", "reward", "score", "rating")


def read_trl(
    source: Any,
    *,
    signal_field: str | None = None,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    id_field: str | None = None,
    split: str | None = None,
) -> Any:
    """Read TRL's ``prompt``/``completion`` convention into the log table.

    Parameters
    ----------
    source : path, pandas.DataFrame, datasets.Dataset or list of dicts
        One completion per record: ``prompt`` and ``completion``, each a text (standard
        format) or a list of ``{"role", "content"}`` messages (conversational format).
    signal_field : str, optional
        The signal: default the first present of ``label`` (TRL's unpaired preference / KTO
        format; True -> 1, False -> 0), ``signal``, ``reward``, ``score``, ``rating``.
    id_field : str, optional
        Prompt id field (default ``prompt_id`` if present, else a hash of the prompt text).

    Returns
    -------
    pandas.DataFrame
        ``prompt_id``, ``prompt``, ``response``, ``signal``.

    Raises
    ------
    LogFormatError
        No prompt/completion or no signal field (TRL's prompt-only or language-modelling
        datasets carry no feedback).
    """
    if type(source).__module__.startswith("datasets"):
        source = source.to_pandas()
    records = _records(source, split)
    rows = []
    if records:
        keys = records[0].keys()
        for f in (prompt_field, completion_field):
            if f not in keys:
                raise LogFormatError(
                    f"{_name(source)}: no {f!r} field (TRL prompt/completion format); fields "
                    f"are {sorted(keys)}"
                )
        sf = _pick(keys, _TRL_SIGNALS, "signal", signal_field)
        idf = id_field or ("prompt_id" if "prompt_id" in keys else None)
        for rec in records:
            prompt = _text(rec.get(prompt_field))
            pid = (str(rec[idf]) if idf is not None and not _isna(rec.get(idf))
                   else _text_id(prompt or ""))
            comp = rec.get(completion_field)
            rows.append({
                "prompt_id": pid,
                "prompt": prompt,
                "response": None if not isinstance(comp, (list, tuple, np.ndarray)) and _isna(comp)
                else _completion_text(comp),
                "signal": _number(rec.get(sf)),
            })
    return _frame(rows, ("prompt_id", "prompt", "response", "signal"),
                  {"format": "trl", "records": len(records)})


# ----------------------------------------------------------------------------- dispatch
_READERS = {"oasst": read_oasst, "ratings": read_ratings, "pairwise": read_pairwise,
            "trl": read_trl}


def detect_public_format(columns: Iterable[str]) -> str:
    """``"oasst"``, ``"ratings"``, ``"pairwise"``, ``"trl"`` or ``"log"`` from field names.

    Rules, in order: ``message_tree_id`` or ``message_id``+``parent_id``+``role``+``text``
    -> oasst; ``completions`` -> ratings; ``chosen``+``rejected`` or SHP's ``human_ref_A``+
    ``human_ref_B`` -> pairwise; ``prompt_id``+``signal`` -> log (the native schema);
    ``prompt``+``completion`` -> trl; anything else -> log (validation then names the missing
    columns).
    """
    c = set(columns)
    if "message_tree_id" in c or {"message_id", "parent_id", "role", "text"} <= c:
        return "oasst"
    if "completions" in c:
        return "ratings"
    if {"chosen", "rejected"} <= c or {"human_ref_A", "human_ref_B"} <= c:
        return "pairwise"
    if {"prompt_id", "signal"} <= c:
        return "log"
    if {"prompt", "completion"} <= c:
        return "trl"
    return "log"


def _peek_columns(path: Path, fmt: str, split: str | None) -> list[str]:
    """Field names of a file without reading all of it."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        first = path if path.is_file() else min(path.rglob("*.parquet"))
        return list(pq.read_schema(first).names)
    if fmt == "jsonl":
        from pope.io import iter_jsonl_frames

        for frame in iter_jsonl_frames(path, 1):
            return list(frame.columns)
        return []
    if fmt == "hf":
        from pope.io import load_hf_dataset

        return list(load_hf_dataset(path, split).column_names)
    return list(read_table(path, format=fmt).columns)  # type: ignore[arg-type]


def read_logs(source: Any, format: str = "auto", *, split: str | None = None,
              **options: Any) -> Any:
    """Read any supported log into the log table (``pandas.DataFrame``, not validated).

    Parameters
    ----------
    source : path, pandas.DataFrame, pyarrow.Table, datasets.Dataset or list of dicts
    format : {"auto", "oasst", "ratings", "pairwise", "trl", "log", "parquet", "jsonl", "csv",
        "tsv", "hf"}
        A public format (its reader is called with ``options``), ``"log"``/a file format (the
        native schema, :func:`pope.io.read_table`), or ``"auto"``
        (:func:`detect_public_format` on the field names).
    """
    if format in _FILE_FORMATS:
        return read_table(source, format=format, split=split)  # type: ignore[arg-type]
    if format == "auto":
        if isinstance(source, list):
            cols = list(source[0]) if source else []
        elif isinstance(source, (str, os.PathLike)):
            from pope.io import detect_format

            cols = _peek_columns(Path(source), detect_format(source), split)
        else:
            cols = list(read_table(source).columns)
        format = detect_public_format(cols)
    if format == "log":
        if options:
            raise TypeError(f"options {sorted(options)} only apply to the public formats")
        return read_table(source, split=split)
    if format not in _READERS:
        raise ValueError(
            f"format must be 'auto', 'log', one of {PUBLIC_FORMATS} or a file format "
            f"{_FILE_FORMATS}, got {format!r}"
        )
    return _READERS[format](source, split=split, **options)


def resolve_logs(path: Any, format: str | None, split: str | None = None) -> tuple[Any, Any]:
    """``(source, file_format)`` for :func:`pope.streaming.evaluate_logs` from CLI options.

    A native log keeps its path (so ``--chunk-rows`` streams it); a public format (or one
    that ``"auto"`` recognises) is read into the log table first. The table's
    ``attrs["reader"]`` says what the reader dropped.
    """
    if format is None or format in _FILE_FORMATS:
        return path, format
    if format == "auto":
        from pope.io import detect_format

        p = Path(path)
        fmt = detect_format(p)
        if detect_public_format(_peek_columns(p, fmt, split)) == "log":
            return path, fmt
    return read_logs(path, format, split=split), None
