r"""Score logged responses with a causal LM: :math:`\log \pi(y \mid x)` per response.

Each (prompt, response) pair is tokenised as ``prompt_ids + response_ids`` (the prompt with the
tokenizer's special tokens, the response without; optionally a chat template for the prompt
and an EOS token after the response); only the response tokens are scored:

.. math:: \log\pi(y \mid x) = \sum_{t \in \text{response}} z_{t-1}[y_t] - \log\sum_v e^{z_{t-1}[v]}.

Pairs are sorted by length and packed into batches whose padded size stays within a token
budget; the response-token logits go through :func:`pope.ops.sequence_logprob` (fused Triton
kernels on CUDA, the torch reference on CPU), or, with ``head="hidden"``, the final hidden
states and the LM head weight go through :func:`pope.ops.linear_sequence_logprob` so the
``N x V`` logits are never materialised.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pope.ops import linear_sequence_logprob, sequence_logprob
from pope.options import LM_HEADS, MODEL_DTYPES, LMHead, check_choice

__all__ = [
    "ContextLengthError",
    "TokenizedPairs",
    "context_length",
    "load_causal_lm",
    "pad_pairs",
    "score_responses",
    "tokenize_pairs",
]


class ContextLengthError(ValueError):
    """Some prompt + response pairs are longer than the model's context window.

    Attributes
    ----------
    rows : numpy.ndarray
        Positions (in the input sequences) of the pairs that do not fit.
    lengths : numpy.ndarray
        Their lengths in tokens.
    limit : int
    """

    def __init__(self, rows: np.ndarray, lengths: np.ndarray, limit: int) -> None:
        shown = ", ".join(f"{int(r)} ({int(n)} tokens)" for r, n in zip(rows[:10], lengths[:10]))
        more = f", ... ({rows.size - 10} more)" if rows.size > 10 else ""
        super().__init__(
            f"{rows.size} prompt+response pair(s) exceed the model's context of {limit} tokens: "
            f"rows {shown}{more}. Shorten or drop these rows, or use a model with a longer "
            "context."
        )
        self.rows = rows
        self.lengths = lengths
        self.limit = limit


@dataclass(frozen=True)
class TokenizedPairs:
    """Token ids of prompt + response pairs.

    Attributes
    ----------
    input_ids : list of 1-d int64 arrays
        ``prompt_ids + response_ids`` per pair.
    prompt_lengths : (N,) int64
        Number of prompt tokens of each pair (the response starts there).
    """

    input_ids: list[np.ndarray]
    prompt_lengths: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Total tokens per pair."""
        return np.array([a.shape[0] for a in self.input_ids], dtype=np.int64)

    @property
    def response_lengths(self) -> np.ndarray:
        """Response tokens per pair (the scored tokens)."""
        return self.lengths - self.prompt_lengths


def tokenize_pairs(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    chat_template: bool = False,
    add_eos: bool = False,
) -> TokenizedPairs:
    """Tokenise prompt + response pairs with a response-only scoring span.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    prompts, responses : sequences of str, same length
    chat_template : bool
        Format each prompt as a single user turn with the tokenizer's chat template (and the
        generation prompt) instead of plain text.
    add_eos : bool
        Append the EOS token to each response (score the end of the response too).

    Returns
    -------
    TokenizedPairs
    """
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if chat_template:
        p_ids = [
            list(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True
                )
            )
            for p in prompts
        ]
        p_ids = [ids["input_ids"] if isinstance(ids, dict) else ids for ids in p_ids]
    else:
        p_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"] if prompts else []
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"] if responses else []
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ValueError("add_eos=True but the tokenizer has no EOS token")
    bos = tokenizer.bos_token_id
    out = []
    plen = np.zeros(len(prompts), dtype=np.int64)
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        p = list(p)
        if not p:
            if bos is None:
                raise ValueError(
                    f"row {i}: the prompt has no tokens and the tokenizer has no BOS token, so the "
                    "first response token has no context to be scored in"
                )
            p = [bos]
        r = [*list(r), eos] if add_eos else list(r)
        plen[i] = len(p)
        out.append(np.asarray(p + r, dtype=np.int64))
    return TokenizedPairs(out, plen)


def context_length(model: Any, tokenizer: Any = None) -> int | None:
    """The model's context window in tokens, if it states one."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    v = getattr(tokenizer, "model_max_length", None)
    if isinstance(v, int) and 0 < v < 10**8:
        return v
    return None


def _plan_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Groups of pair indices (longest first) whose padded size ``B * L_max`` fits the budget."""
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        n = int(lengths[i])
        new_max = max(cur_max, n)
        if cur and (len(cur) + 1) * new_max > batch_tokens:
            batches.append(np.asarray(cur, dtype=np.int64))
            cur, new_max = [], n
        cur.append(int(i))
        cur_max = new_max
    if cur:
        batches.append(np.asarray(cur, dtype=np.int64))
    return batches


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
    """A ``torch.dtype`` (or None: as loaded) from one of :data:`pope.options.MODEL_DTYPES`."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    check_choice(dtype, "dtype", MODEL_DTYPES)
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_causal_lm(
    model_dir: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: Any = "auto",
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local directory (never downloads).

    Parameters
    ----------
    model_dir : path
        A directory written by ``save_pretrained`` (model and tokenizer).
    device : str, optional
        Default ``"cuda"`` when available, else ``"cpu"``.
    dtype : torch.dtype or str
        ``"auto"``: bfloat16 on CUDA, float32 on CPU.

    Raises
    ------
    FileNotFoundError
        ``model_dir`` is not a directory.
    OSError
        The directory does not hold a loadable model or tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(model_dir)
    if not p.is_dir():
        raise FileNotFoundError(f"model directory not found: {p}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(p), local_files_only=True, dtype=_resolve_dtype(dtype)
        )
    except (OSError, ValueError, KeyError) as e:
        raise OSError(f"cannot load a causal LM and tokenizer from {p}: {e}") from e
    return model.to(dev).eval(), tok


def _check_context(pairs: TokenizedPairs, model: Any, tokenizer: Any) -> None:
    """Raise :class:`ContextLengthError` for the pairs longer than the model's context."""
    limit = context_length(model, tokenizer)
    lengths = pairs.lengths
    if limit is not None and lengths.size:
        too_long = np.flatnonzero(lengths > limit)
        if too_long.size:
            raise ContextLengthError(too_long, lengths[too_long], limit)


def pad_pairs(
    pairs: TokenizedPairs, idx: np.ndarray, pad_token_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (CPU, int64) of the pairs ``idx``.

    Parameters
    ----------
    pairs : TokenizedPairs
    idx : (B,) int array
        The pairs of the batch, in batch order.
    pad_token_id : int or None
        ``None``: pad with 0 (the padding is masked).
    """
    pad = 0 if pad_token_id is None else int(pad_token_id)
    lmax = max((int(pairs.input_ids[i].shape[0]) for i in idx), default=0)
    ids = torch.full((len(idx), lmax), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), lmax), dtype=torch.long)
    for j, i in enumerate(idx):
        a = pairs.input_ids[i]
        ids[j, : a.shape[0]] = torch.from_numpy(a)
        mask[j, : a.shape[0]] = 1
    return ids, mask


def _response_positions(
    pairs: TokenizedPairs, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, counts)``: the batch row and position of every logit that predicts a
    response token (position ``t - 1`` for token ``t``), and the count per pair."""
    rows, cols = [], []
    for j, i in enumerate(idx):
        p, n = int(pairs.prompt_lengths[i]), int(pairs.input_ids[i].shape[0])
        cols.append(np.arange(p - 1, n - 1))
        rows.append(np.full(n - p, j))
    counts = np.array([c.shape[0] for c in cols], dtype=np.int64)
    return np.concatenate(rows), np.concatenate(cols), counts


def _score_batch(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    b: int,
    head: str,
    want_tokens: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sequence (and, with ``want_tokens``, per-token) log-probs of one padded batch."""
    targets = ids[rows, cols + 1]
    if head == "hidden":
        hidden = model.base_model(
            input_ids=ids, attention_mask=mask, use_cache=False
        ).last_hidden_state
        weight = model.get_output_embeddings().weight
        seq_lp = linear_sequence_logprob(
            hidden[rows, cols].to(weight.dtype), weight, targets, rows, b
        )
        if not want_tokens:
            return seq_lp, None
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    lp, tok_lp = sequence_logprob(logits[rows, cols], targets, rows, b, return_token_logprobs=True)
    return (lp if head == "logits" else seq_lp), tok_lp


def score_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    batch_tokens: int = 8192,
    device: str | torch.device | None = None,
    dtype: Any = None,
    return_token_logprobs: bool = False,
    chat_template: bool = False,
    add_eos: bool = False,
    head: LMHead = "logits",
    progress: bool = True,
    desc: str = "scoring",
) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
    r"""Log-probability :math:`\log\pi(y \mid x)` of each response given its prompt.

    Parameters
    ----------
    model : transformers causal LM (``AutoModelForCausalLM``)
    tokenizer : its tokenizer
    prompts, responses : sequences of str, same length
    batch_tokens : int
        Token budget of one batch, padding included (``batch size * longest pair``); a pair
        longer than the budget is scored alone.
    device : str or torch.device, optional
        Move the model there first (default: where the model is).
    dtype : torch.dtype or str, optional
        Cast the model first (``"bfloat16"``, ``"float32"``...; default: as loaded).
    return_token_logprobs : bool
        Also return the per-token log-probs of each response (a list of arrays).
    chat_template, add_eos
        See :func:`tokenize_pairs`.
    head : {"logits", "hidden"}
        ``"logits"``: the model's logits at the response positions go to
        :func:`pope.ops.sequence_logprob`. ``"hidden"``: the last hidden states and the output
        embedding weight go to :func:`pope.ops.linear_sequence_logprob` (no ``N x V``
        logits; only valid for a plain linear LM head without bias, scaling or soft-capping).
    progress : bool
        Show a progress bar (tqdm, on stderr).

    Returns
    -------
    (N,) float64 array, or ``(seq_logprobs, token_logprobs)`` when ``return_token_logprobs``.

    Raises
    ------
    ContextLengthError
        Some pairs are longer than the model's context window.
    """
    from tqdm.auto import tqdm

    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    check_choice(head, "head", LM_HEADS)
    if device is not None:
        model = model.to(device)
    if dtype is not None:
        model = model.to(_resolve_dtype(dtype))
    dev = next(model.parameters()).device
    pairs = tokenize_pairs(
        tokenizer, prompts, responses, chat_template=chat_template, add_eos=add_eos
    )
    _check_context(pairs, model, tokenizer)
    n = len(pairs.input_ids)
    seq_out = np.zeros(n, dtype=np.float64)
    tok_out: list[np.ndarray] = [np.zeros(0)] * n
    was_training = model.training
    model.eval()
    bar = tqdm(total=n, unit="resp", desc=desc, disable=not progress or n == 0)
    try:
        with torch.inference_mode():
            for idx in _plan_batches(pairs.lengths, batch_tokens):
                ids, mask = pad_pairs(pairs, idx, tokenizer.pad_token_id)
                r, c, counts = _response_positions(pairs, idx)
                seq_lp, tok_lp = _score_batch(
                    model,
                    ids.to(dev),
                    mask.to(dev),
                    torch.from_numpy(r).to(dev),
                    torch.from_numpy(c).to(dev),
                    idx.shape[0],
                    head,
                    return_token_logprobs,
                )
                seq_out[idx] = seq_lp.double().cpu().numpy()
                if tok_lp is not None:  # return_token_logprobs
                    t = np.split(tok_lp.double().cpu().numpy(), np.cumsum(counts)[:-1])
                    for j, i in enumerate(idx):
                        tok_out[i] = t[j]
                bar.update(idx.shape[0])
    finally:
        bar.close()
        if was_training:
            model.train()
    if return_token_logprobs:
        return seq_out, tok_out
    return seq_out
