"""Ratings, pairwise preferences and TRL prompt/completion logs as the log table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from pope.io import LogFormatError
from pope.readers._common import (
    as_list,
    completion_text,
    isna,
    log_frame,
    messages_text,
    number,
    pick_field,
    records_of,
    source_name,
    text_id,
    text_of,
)

__all__ = ["read_pairwise", "read_ratings", "read_trl"]


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
    records = records_of(source, split)
    rows: list[dict[str, Any]] = []
    if records:
        keys = records[0].keys()
        pf = pick_field(keys, ("instruction", "prompt", "question"), "prompt", prompt_field)
        idf = id_field or next((k for k in ("prompt_id", "id") if k in keys), None)
        nested = completions_field in keys
        for i, rec in enumerate(records):
            prompt = text_of(rec.get(pf))
            pid = (
                str(rec[idf])
                if idf is not None and not isna(rec.get(idf))
                else text_id(prompt or "")
            )
            comps = as_list(rec.get(completions_field)) if nested else [rec]
            for j, c in enumerate(comps):
                if not isinstance(c, dict):
                    raise LogFormatError(
                        f"{source_name(source)}: record {i}: completion {j} is not an object"
                    )
                rf = pick_field(
                    c.keys(),
                    ("response", "text", "completion", "output"),
                    "response",
                    response_field,
                )
                model = c.get("model", c.get("model_name"))
                rows.append(
                    {
                        "prompt_id": pid,
                        "prompt": prompt,
                        "response": text_of(c.get(rf)),
                        "signal": number(_dotted(c, score)),
                        "model_name": None if isna(model) else str(model),
                        "completion_index": j,
                    }
                )
    cols = ("prompt_id", "prompt", "response", "signal", "model_name", "completion_index")
    return log_frame(rows, cols, {"format": "ratings", "score": score, "records": len(records)})


# ----------------------------------------------------------------------------- pairwise
def _split_hh(text: str) -> tuple[str, str]:
    """An Anthropic HH transcript as (prompt, last assistant turn)."""
    tag = "\n\nAssistant:"
    cut = text.rfind(tag)
    if cut < 0:
        raise LogFormatError("an HH transcript has no '\\n\\nAssistant:' turn")
    return text[:cut], text[cut + len(tag) :].lstrip(" ")


def _pairs(
    records: list[dict[str, Any]], fields: dict[str, str | None], source: Any
) -> Iterable[tuple[str, str, str, str, str, Any, Any, bool]]:
    """(prompt_id, prompt, winner, loser, winner_id, loser_id, scores, tie) per record."""
    keys = set(records[0])
    if {"human_ref_A", "human_ref_B", "labels"} <= keys:  # Stanford SHP
        for rec in records:
            prompt = str(rec.get("history"))
            pid = str(rec["post_id"]) if not isna(rec.get("post_id")) else text_id(prompt)
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
            f"{source_name(source)}: not pairwise data: expected {cf!r}/{rf!r} (optionally "
            f"{pf!r}) or SHP's human_ref_A/human_ref_B/labels; fields are {sorted(keys)}"
        )
    tie_f = fields.get("tie")
    id_f = fields.get("id")
    for i, rec in enumerate(records):
        pv = rec.get(pf) if pf in keys else None
        if isinstance(pv, (list, tuple, np.ndarray)) or not isna(pv):  # explicit prompt
            prompt = text_of(pv) or ""
            win, lose = completion_text(rec.get(cf)), completion_text(rec.get(rf))
        elif isinstance(rec.get(cf), (list, tuple, np.ndarray)):  # implicit-prompt messages
            prompt, win, lose = _split_messages(list(rec[cf]), list(rec[rf]), i, source)
        else:  # Anthropic HH: whole transcripts, the prompt is before the last assistant turn
            pw, win = _split_hh(str(rec.get(cf)))
            pl, lose = _split_hh(str(rec.get(rf)))
            if pw != pl:
                raise LogFormatError(
                    f"{source_name(source)}: record {i}: chosen and rejected transcripts differ "
                    "before the last assistant turn (not one prompt)"
                )
            prompt = pw
        pid = str(rec[id_f]) if id_f and not isna(rec.get(id_f)) else text_id(prompt)
        tie = bool(rec.get(tie_f)) if tie_f and not isna(rec.get(tie_f)) else False
        yield pid, prompt, win, lose, text_id(win), text_id(lose), (None, None), tie


def _split_messages(
    chosen: list[Any], rejected: list[Any], i: int, source: Any
) -> tuple[str, str, str]:
    """Implicit-prompt conversations: the shared leading messages are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise LogFormatError(
            f"{source_name(source)}: record {i}: chosen and rejected "
            "conversations share no leading messages (no prompt)"
        )
    return (messages_text(chosen[:n]), completion_text(chosen[n:]), completion_text(rejected[n:]))


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
    records = records_of(source, split)
    fields = {
        "prompt": prompt_field,
        "chosen": chosen_field,
        "rejected": rejected_field,
        "id": id_field,
        "tie": tie_field,
    }
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
            rows.append(
                {
                    "prompt_id": pid,
                    "prompt": p["prompt"],
                    "response": e["text"],
                    "signal": e["wins"] / e["n"],
                    "wins": e["wins"],
                    "comparisons": e["n"],
                    "response_id": rid,
                    "score": number(e["score"]),
                }
            )
    cols = (
        "prompt_id",
        "prompt",
        "response",
        "signal",
        "wins",
        "comparisons",
        "response_id",
        "score",
    )
    return log_frame(rows, cols, {"format": "pairwise", "pairs": n_pairs, "ties_dropped": ties})


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
    records = records_of(source, split)
    rows = []
    if records:
        keys = records[0].keys()
        for f in (prompt_field, completion_field):
            if f not in keys:
                raise LogFormatError(
                    f"{source_name(source)}: no {f!r} field (TRL prompt/completion format); fields "
                    f"are {sorted(keys)}"
                )
        sf = pick_field(keys, _TRL_SIGNALS, "signal", signal_field)
        idf = id_field or ("prompt_id" if "prompt_id" in keys else None)
        for rec in records:
            prompt = text_of(rec.get(prompt_field))
            pid = (
                str(rec[idf])
                if idf is not None and not isna(rec.get(idf))
                else text_id(prompt or "")
            )
            comp = rec.get(completion_field)
            rows.append(
                {
                    "prompt_id": pid,
                    "prompt": prompt,
                    "response": None
                    if not isinstance(comp, (list, tuple, np.ndarray)) and isna(comp)
                    else completion_text(comp),
                    "signal": number(rec.get(sf)),
                }
            )
    return log_frame(
        rows,
        ("prompt_id", "prompt", "response", "signal"),
        {"format": "trl", "records": len(records)},
    )
