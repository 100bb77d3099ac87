r"""One model forward and the POPE objective on a collated batch (:func:`pope_forward`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pope.objective import ObjectiveStats, PopeObjective, PopeOutput, shift_labels
from pope.train.config import LMHead

__all__ = ["POPE_BATCH_KEYS", "detach_stats", "pope_forward"]

POPE_BATCH_KEYS = ("rewards", "prompt_index", "log_logging", "aspects", "ref_logprobs")


def _decoder(model: Any) -> Any:
    get = getattr(model, "get_decoder", None)
    dec = get() if callable(get) else None
    return dec if dec is not None else model.base_model


def pope_forward(
    model: Any,
    batch: dict[str, torch.Tensor],
    objective: PopeObjective,
    *,
    normalizer: float | None = None,
    lm_head: LMHead = "logits",
) -> PopeOutput:
    r"""Model forward on a collated batch and the POPE objective on its response tokens.

    Only the response positions reach the log-prob op: the logits (or hidden states) at the
    positions ``t`` whose shifted label (the token ``t + 1``) is a response token are
    gathered into an ``(N_resp, V)`` block with one ``seq_index`` per row.

    Parameters
    ----------
    model : causal LM (possibly wrapped in DDP/FSDP or peft)
    batch : dict
        The keys listed in :class:`PopeCollator`.
    objective : PopeObjective
    normalizer : float, optional
        Passed to the objective (the number of sequences of the whole accumulated step).
    lm_head : {"logits", "hidden"}
        ``"hidden"``: last hidden states and the output embedding weight through the chunked
        :func:`pope.ops.linear_sequence_logprob` (plain linear head without bias only).

    Returns
    -------
    PopeOutput
    """
    missing = [k for k in ("input_ids", "labels", *POPE_BATCH_KEYS[:-1]) if k not in batch]
    if missing:
        raise KeyError(f"batch lacks the keys {missing} (see PopeCollator)")
    ids = batch["input_ids"]
    attn = batch.get("attention_mask")
    labels = shift_labels(batch["labels"], objective.ignore_index)
    rows, cols = torch.nonzero(labels != objective.ignore_index, as_tuple=True)
    targets = labels[rows, cols]
    ref = batch.get("ref_logprobs")
    ref_tok = None if ref is None else ref[rows, cols + 1]
    common = dict(
        rewards=batch["rewards"],
        prompt_index=batch["prompt_index"],
        log_logging=batch["log_logging"],
        aspects=batch["aspects"],
        seq_index=rows,
        ref_logprobs=ref_tok if objective.beta > 0 else None,
        normalizer=normalizer,
    )
    if lm_head == "hidden":
        inner = getattr(model, "module", model)  # DDP/FSDP wrapper
        head = inner.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise ValueError("lm_head='hidden' needs an LM head without bias")
        for name in ("final_logit_softcapping", "logit_scale"):
            if getattr(inner.config, name, None) not in (None, 1.0):
                raise ValueError(f"lm_head='hidden' does not support {name}; use 'logits'")
        hidden = _decoder(inner)(input_ids=ids, attention_mask=attn, use_cache=False)[0]
        w = head.weight
        return objective(
            None,
            targets,
            hidden_states=hidden[rows, cols].to(w.dtype),
            lm_head_weight=w,
            **common,
        )
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    return objective(logits[rows, cols], targets, **common)


def detach_stats(stats: ObjectiveStats) -> ObjectiveStats:
    """``stats`` with every tensor detached from the graph (left on its device)."""
    detached: dict[str, Any] = {
        f.name: v.detach()
        for f in dataclasses.fields(stats)
        if isinstance(v := getattr(stats, f.name), torch.Tensor)
    }
    return dataclasses.replace(stats, **detached)
