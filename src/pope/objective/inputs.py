r"""Input adapters of :class:`pope.objective.PopeObjective`: the policy's scores in one form.

The objective takes the current policy's scores in one of four forms; each adapter turns its
form into :class:`PolicyScores` (sequence :math:`\log\pi_\theta`, and per token when the KL
term needs it), which the core (:mod:`pope.objective.core`) consumes:

* :func:`from_logits`: ``logits`` (B, T, V) or (N, V) through :func:`pope.ops.sequence_logprob`;
* :func:`from_hidden_states`: ``hidden_states`` with ``lm_head_weight`` through the chunked
  :func:`pope.ops.linear_sequence_logprob` (never the ``N x V`` logits, per-token output
  included);
* :func:`from_token_logp`: precomputed per-token log-probs;
* :func:`from_logp`: sequence log-probs (no per-token values: no KL).

:func:`policy_scores` checks that exactly one is given and calls its adapter;
:func:`sequence_log_logging` and :func:`kl_per_sequence` reduce the per-token logging and
reference log-probs over the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pope import ops
from pope.objective.checks import check_finite, check_float, check_int, check_shape, first_bad

__all__ = [
    "PolicyScores",
    "from_hidden_states",
    "from_logits",
    "from_logp",
    "from_token_logp",
    "kl_per_sequence",
    "linear_sequence_logprob",
    "policy_scores",
    "segment_sum",
    "sequence_log_logging",
    "shift_labels",
]


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Align Hugging Face-style labels with the logits that predict them.

    HF causal LMs take ``labels`` equal to ``input_ids`` (``ignore_index`` outside the loss
    mask) and shift internally: the logits at position ``t`` predict token ``t + 1``.
    :class:`PopeObjective` takes *aligned* labels, ``aligned[..., t]`` = the target of
    ``logits[..., t, :]``; this helper returns ``aligned[..., :-1] = labels[..., 1:]`` and
    ``aligned[..., -1] = ignore_index``.

    Parameters
    ----------
    labels : (..., T) int64
    ignore_index : int

    Returns
    -------
    (..., T) int64, a new tensor.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    out = torch.full_like(labels, ignore_index)
    out[..., :-1] = labels[..., 1:]
    return out


def linear_sequence_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = -100,
    return_token_logprobs: bool = False,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Per-sequence (and per-token) log-probs from hidden states and the LM head weight.

    .. math:: \log\pi(y_s) = \sum_{t: s(t)=s} (h_t W^\top)[y_t] - \log\sum_v e^{(h_t W^\top)[v]}

    The chunked :func:`pope.ops.linear_sequence_logprob` (kept here under its old name): the
    ``N x V`` logits never exist at once, also when the per-token log-probs are requested.

    Parameters
    ----------
    hidden : (N, H) float
    weight : (V, H) float
    targets, seq_index, num_seqs, ignore_index, return_token_logprobs, backend
        As in :func:`pope.ops.sequence_logprob`.
    chunk_size : int, optional
        Rows per chunk of the fused path.
    """
    return ops.linear_sequence_logprob(
        hidden,
        weight,
        targets,
        seq_index,
        num_seqs,
        ignore_index=ignore_index,
        return_token_logprobs=return_token_logprobs,
        chunk_size=chunk_size,
        backend=backend,
    )


@dataclass
class PolicyScores:
    r"""The current policy's log-probabilities of a batch, as the core takes them.

    Attributes
    ----------
    logp : (S,) float
        :math:`\log\pi_\theta(y\mid x)`, differentiable.
    counts : (S,) int64 or None
        Unmasked tokens per sequence (``None``: ``logp`` given without ``num_tokens``).
    token_logp : (N,) float or None
        Per-token :math:`\log\pi_\theta(y_t\mid\cdot)` (0 where masked), when requested.
    mask, seq, labels : (N,) or None
        Token layout: unmasked tokens, their sequence, the flat labels (``None`` for
        :func:`from_logp`).
    """

    logp: torch.Tensor
    counts: torch.Tensor | None
    token_logp: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    seq: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def flatten_tokens(
    tokens: torch.Tensor,
    labels: torch.Tensor,
    seq_index: torch.Tensor | None,
    num_seqs: int,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, F) tokens, (N,) labels, (N,) seq_index from the (B,T,F) or (N,F) layouts."""
    labels = check_int(labels, "labels")
    if tokens.dim() == 3:
        b, t = tokens.shape[:2]
        check_shape(labels, (b, t), "labels")
        if b != num_seqs and seq_index is None:
            raise ValueError(
                f"{name} has {b} rows but there are {num_seqs} sequences (rewards); "
                "pass seq_index for packed rows"
            )
        if seq_index is None:
            seq = torch.arange(b, device=labels.device).repeat_interleave(t)
        else:
            seq = check_int(seq_index, "seq_index")
            check_shape(seq, (b, t), "seq_index")
            seq = seq.reshape(-1)
        return tokens.reshape(b * t, -1), labels.reshape(-1), seq
    if tokens.dim() == 2:
        n = tokens.shape[0]
        check_shape(labels, (n,), "labels")
        if seq_index is None:
            raise ValueError(f"seq_index is required with 2-d (N, V) {name}")
        seq = check_int(seq_index, "seq_index")
        check_shape(seq, (n,), "seq_index")
        return tokens, labels, seq
    raise ValueError(f"{name} must be (B, T, V) or (N, V), got shape {tuple(tokens.shape)}")


def check_labels(
    labels: torch.Tensor, seq: torch.Tensor, num_seqs: int, vocab: int | None, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) mask of the unmasked tokens and (S,) token counts; rejects empty responses."""
    mask = labels != ignore_index
    if vocab is not None:
        bad = mask & ((labels < 0) | (labels >= vocab))
        if bool(bad.any()):
            i = first_bad(bad)
            raise ValueError(
                f"labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}; "
                f"element {i} is {int(labels.reshape(-1)[i])}"
            )
    if seq.numel() and (int(seq.min()) < 0 or int(seq.max()) >= num_seqs):
        raise ValueError(f"seq_index must lie in [0, {num_seqs})")
    counts = torch.zeros(num_seqs, dtype=torch.int64, device=labels.device)
    counts = counts.index_add(0, seq, mask.long())
    if bool((counts == 0).any()):
        s = first_bad(counts == 0)
        raise ValueError(
            f"sequence {s} has an empty response: no label differs from ignore_index={ignore_index}"
        )
    return mask, counts


def segment_sum(
    x: torch.Tensor, mask: torch.Tensor, seq: torch.Tensor, num_seqs: int
) -> torch.Tensor:
    r"""(S,) sums :math:`\sum_{t: s(t) = s, \text{unmasked}} x_t`."""
    x = torch.where(mask, x, torch.zeros_like(x))
    return torch.zeros(num_seqs, dtype=x.dtype, device=x.device).index_add(0, seq, x)


def _unpack(
    res: torch.Tensor | tuple[torch.Tensor, torch.Tensor], need_tokens: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(res, tuple):
        lp, tok = res
        return lp, (tok if need_tokens else None)
    assert not need_tokens, "return_token_logprobs=True returns (logp, token_logp)"
    return res, None


def from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    seq_index: torch.Tensor | None,
    num_seqs: int,
    *,
    ignore_index: int,
    need_tokens: bool,
    backend: str | None,
) -> PolicyScores:
    """Adapter for ``logits`` (B, T, V) / (N, V): :func:`pope.ops.sequence_logprob`."""
    logits = check_float(logits, "logits")
    flat, flat_labels, seq = flatten_tokens(logits, labels, seq_index, num_seqs, "logits")
    mask, counts = check_labels(flat_labels, seq, num_seqs, flat.shape[-1], ignore_index)
    res = ops.sequence_logprob(
        flat, flat_labels, seq, num_seqs, ignore_index=ignore_index,
        return_token_logprobs=need_tokens, backend=backend,
    )  # fmt: skip
    lp, tok = _unpack(res, need_tokens)
    return PolicyScores(lp, counts, tok, mask, seq, flat_labels)


def from_hidden_states(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor | None,
    labels: torch.Tensor,
    seq_index: torch.Tensor | None,
    num_seqs: int,
    *,
    ignore_index: int,
    need_tokens: bool,
    backend: str | None,
) -> PolicyScores:
    """Adapter for ``hidden_states`` + ``lm_head_weight``: the chunked op, never ``N x V``."""
    hidden_states = check_float(hidden_states, "hidden_states")
    w = check_float(lm_head_weight, "lm_head_weight")
    if w.dim() != 2 or w.shape[1] != hidden_states.shape[-1]:
        raise ValueError(
            f"lm_head_weight must be (V, {hidden_states.shape[-1]}), got {tuple(w.shape)}"
        )
    flat, flat_labels, seq = flatten_tokens(
        hidden_states, labels, seq_index, num_seqs, "hidden_states"
    )
    mask, counts = check_labels(flat_labels, seq, num_seqs, w.shape[0], ignore_index)
    res = ops.linear_sequence_logprob(
        flat, w, flat_labels, seq, num_seqs, ignore_index=ignore_index,
        return_token_logprobs=need_tokens, backend=backend,
    )  # fmt: skip
    lp, tok = _unpack(res, need_tokens)
    return PolicyScores(lp, counts, tok, mask, seq, flat_labels)


def from_token_logp(
    token_logp: torch.Tensor,
    labels: torch.Tensor,
    seq_index: torch.Tensor | None,
    num_seqs: int,
    *,
    ignore_index: int,
) -> PolicyScores:
    """Adapter for precomputed per-token log-probs with the layout of ``labels``."""
    tl = check_float(token_logp, "token_logp")
    if tl.dim() not in (1, 2):
        raise ValueError(f"token_logp must be (B, T) or (N,), got {tuple(tl.shape)}")
    flat, flat_labels, seq = flatten_tokens(
        tl.unsqueeze(-1), labels, seq_index, num_seqs, "token_logp"
    )
    mask, counts = check_labels(flat_labels, seq, num_seqs, None, ignore_index)
    tok = flat.squeeze(-1)
    return PolicyScores(segment_sum(tok, mask, seq, num_seqs), counts, tok, mask, seq,
                        flat_labels)  # fmt: skip


def from_logp(
    logp: torch.Tensor,
    num_tokens: torch.Tensor | None,
    num_seqs: int,
    *,
    token_mean: bool,
    need_tokens: bool,
) -> PolicyScores:
    """Adapter for sequence log-probs (S,) (with ``num_tokens`` (S,) for ``token_mean``)."""
    lp = check_float(logp, "logp")
    check_shape(lp, (num_seqs,), "logp")
    if need_tokens:
        raise ValueError("beta > 0 needs per-token log-probs: pass logits or token_logp")
    counts = None
    if num_tokens is not None:
        counts = check_int(num_tokens, "num_tokens")
        check_shape(counts, (num_seqs,), "num_tokens")
        if bool((counts <= 0).any()):
            raise ValueError("num_tokens must be >= 1 (empty response)")
    elif token_mean:
        raise ValueError("weighting='token_mean' with logp needs num_tokens")
    return PolicyScores(lp, counts)


def policy_scores(
    *,
    logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    seq_index: torch.Tensor | None,
    hidden_states: torch.Tensor | None,
    lm_head_weight: torch.Tensor | None,
    token_logp: torch.Tensor | None,
    logp: torch.Tensor | None,
    num_tokens: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    num_seqs: int,
    ignore_index: int,
    need_tokens: bool,
    token_mean: bool,
    backend: str | None,
) -> PolicyScores:
    """Check that exactly one form of scores is given and run its adapter.

    ``need_tokens`` (the KL term, ``beta > 0``) also asks for ``ref_logprobs``.
    """
    given = [
        n
        for n, v in (
            ("logits", logits),
            ("hidden_states", hidden_states),
            ("token_logp", token_logp),
            ("logp", logp),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of logits, hidden_states, token_logp, logp; got {given or 'none'}"
        )
    if need_tokens and ref_logprobs is None:
        raise ValueError("ref_logprobs (per-token reference log-probs) is required when beta > 0")
    if logp is not None:
        return from_logp(logp, num_tokens, num_seqs, token_mean=token_mean,
                         need_tokens=need_tokens)  # fmt: skip
    if labels is None:
        raise ValueError(f"labels is required with {given[0]}")
    if logits is not None:
        return from_logits(logits, labels, seq_index, num_seqs, ignore_index=ignore_index,
                           need_tokens=need_tokens, backend=backend)  # fmt: skip
    if hidden_states is not None:
        return from_hidden_states(hidden_states, lm_head_weight, labels, seq_index, num_seqs,
                                  ignore_index=ignore_index, need_tokens=need_tokens,
                                  backend=backend)  # fmt: skip
    assert token_logp is not None  # exactly one form is given, and it is not one of the others
    return from_token_logp(token_logp, labels, seq_index, num_seqs,
                           ignore_index=ignore_index)  # fmt: skip


def sequence_log_logging(
    log_logging: torch.Tensor, scores: PolicyScores, num_seqs: int, wd: torch.dtype
) -> torch.Tensor:
    r""":math:`\log\pi_0(y\mid x)` (S,): given per sequence, or summed over the response tokens."""
    log_logging = check_float(log_logging, "log_logging")
    if log_logging.dim() == 1 and log_logging.shape[0] == num_seqs:
        ll = log_logging
    else:
        if scores.labels is None:
            raise ValueError(
                f"log_logging must be (S,)=({num_seqs},), got {tuple(log_logging.shape)}"
            )
        if log_logging.numel() != scores.labels.numel():
            raise ValueError(
                f"log_logging has shape {tuple(log_logging.shape)}: expected ({num_seqs},) "
                "or the shape of labels (per token)"
            )
        # the adapters that set labels set the token layout with them
        assert scores.mask is not None and scores.seq is not None
        ll = segment_sum(log_logging.reshape(-1).to(wd), scores.mask, scores.seq, num_seqs)
    check_finite(ll, "log_logging")
    if bool((ll > 1e-6).any()):
        raise ValueError("log_logging must be log-probabilities (<= 0)")
    return ll


def kl_per_sequence(
    ref_logprobs: torch.Tensor, scores: PolicyScores, num_seqs: int, wd: torch.dtype
) -> torch.Tensor:
    r"""(S,) :math:`\frac1{T_s}\sum_t k_{3,t}`, :math:`k_3 = e^\delta - \delta - 1`,
    :math:`\delta = \log\pi_{ref} - \log\pi_\theta` per token (differentiable)."""
    ref = check_float(ref_logprobs, "ref_logprobs")
    labels, mask, seq = scores.labels, scores.mask, scores.seq
    assert labels is not None and mask is not None and seq is not None
    assert scores.token_logp is not None and scores.counts is not None
    if ref.numel() != labels.numel():
        raise ValueError(f"ref_logprobs has shape {tuple(ref.shape)}, expected the shape of labels")
    ref = ref.reshape(-1).to(wd)
    check_finite(torch.where(mask, ref, torch.zeros_like(ref)), "ref_logprobs")
    delta = ref - scores.token_logp.to(wd)
    k3 = torch.exp(delta) - delta - 1
    return segment_sum(k3, mask, seq, num_seqs) / scores.counts.to(wd)
