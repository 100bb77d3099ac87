r"""Logged responses for training: :class:`PopeDataset` (grouped by prompt, tokenised),
:func:`token_budget_batches` (whole prompts per micro-batch) and :class:`PopeCollator`
(padded tensors with Hugging Face ``labels``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pope._validation import as_float_array, as_index_array, check_same_length
from pope.data import RewardNormalization, group_rows, normalize_signal
from pope.scoring import ContextLengthError, score_responses, tokenize_pairs

__all__ = ["PopeCollator", "PopeDataset", "TrainingExample", "token_budget_batches"]


@dataclass
class TrainingExample:
    """One logged response.

    Attributes
    ----------
    prompt_id : hashable
        Responses with the same id share a prompt (and must have the same prompt text).
    prompt, response : str
    reward : float
        In ``[0, 1]``, or a raw signal ``>= 0`` normalised by the dataset's
        ``reward_normalization`` (see :func:`pope.data.normalize_signal`).
    aspect : int or sequence of float
        Hard aspect label in ``[0, C)`` or a soft row on the simplex.
    log_logging : float, optional
        :math:`\\log\\pi_0(y\\mid x)` of the response under the logging policy (sequence level);
        ``None``: computed with a reference model.
    """

    prompt_id: Hashable
    prompt: str
    response: str
    reward: float
    aspect: int | Sequence[float]
    log_logging: float | None = None


class PopeDataset(torch.utils.data.Dataset):
    r"""Logged responses grouped by prompt; one item per *prompt* (all its responses).

    Build with :meth:`from_examples`, :meth:`from_records` or :meth:`from_arrays`; then
    :meth:`tokenize` (and :meth:`compute_logprobs` when logging log-probs are missing or a
    KL penalty needs reference token log-probs). Items (``dataset[i]``) are dicts of lists
    for :class:`PopeCollator`, so the dataset plugs into a ``torch`` DataLoader or a
    ``transformers.Trainer`` (the batch size then counts prompts).

    Attributes
    ----------
    prompt_ids : list
        The user's prompt ids, in order of first appearance; prompt ``i`` has the global
        index ``i`` (used as ``prompt_index`` in batches, also across ranks).
    prompt_ptr : (n+1,) int64
        Responses of prompt ``i`` are rows ``prompt_ptr[i]:prompt_ptr[i+1]``.
    prompts : list of str (n,);  responses : list of str (N,)
    rewards : (N,) float64 in [0, 1]
    aspects : (N,) int64 or (N, C) float64
    num_aspects : int
    log_logging : (N,) float64, NaN where unknown
    row_index : (N,) int64
        The input position of each stored response.
    """

    def __init__(
        self,
        prompt_ids: list[Hashable],
        prompt_ptr: np.ndarray,
        prompts: list[str],
        responses: list[str],
        rewards: np.ndarray,
        aspects: np.ndarray,
        num_aspects: int,
        log_logging: np.ndarray,
        row_index: np.ndarray,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.prompt_ptr = prompt_ptr
        self.prompts = prompts
        self.responses = responses
        self.rewards = rewards
        self.aspects = aspects
        self.num_aspects = num_aspects
        self.log_logging = log_logging
        self.row_index = row_index
        self.input_ids: list[np.ndarray] | None = None
        self.prompt_lengths: np.ndarray | None = None
        self.ref_token_logprobs: list[np.ndarray] | None = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        *,
        prompt_id: Sequence[Hashable],
        prompt: Sequence[str],
        response: Sequence[str],
        reward: Any,
        aspect: Any = None,
        aspect_probs: Any = None,
        num_aspects: int | None = None,
        log_logging: Any = None,
        reward_normalization: RewardNormalization = "max",
    ) -> PopeDataset:
        """Build from one entry per response (rows grouped by ``prompt_id``).

        Parameters
        ----------
        prompt_id, prompt, response : sequences of length N
        reward : (N,) float
            Rewards in [0, 1], or raw signals >= 0 with ``reward_normalization``.
        aspect : (N,) int, or aspect_probs : (N, C) float
            Exactly one of them.
        num_aspects : int, optional
            ``C`` (default ``max(aspect) + 1`` or the width of ``aspect_probs``).
        log_logging : (N,) float, optional
            Sequence-level logging log-probs; NaN (or None) where unknown.
        reward_normalization : {"max", "none", "log1p", "rank", "global_max"}
            Default ``"max"`` (each signal over its prompt's maximum), as in
            :func:`pope.evaluate` and the CLI; ``"none"`` for rewards already in [0, 1].

        Raises
        ------
        ValueError
            Mismatched lengths, NaN or out-of-range rewards, bad aspects, log-probs > 0,
            empty data, a prompt id with two different prompt texts.
        """
        pid = list(prompt_id)
        n = len(pid)
        if n == 0:
            raise ValueError("no examples: the dataset is empty")
        prompt, response = list(prompt), list(response)
        for name, seq in (("prompt", prompt), ("response", response)):
            if len(seq) != n:
                raise ValueError(f"{name} has length {len(seq)}, expected {n}")
            bad = [i for i, s in enumerate(seq) if not isinstance(s, str)]
            if bad:
                raise TypeError(f"{name}[{bad[0]}] must be a str, got {type(seq[bad[0]]).__name__}")
        sig = as_float_array(reward, "reward")
        check_same_length(n, reward=sig)
        if (aspect is None) == (aspect_probs is None):
            raise ValueError("give exactly one of aspect (hard labels) or aspect_probs (soft rows)")
        if aspect is not None:
            asp = as_index_array(aspect, "aspect")
            check_same_length(n, aspect=asp)
            if asp.min() < 0:
                raise ValueError(f"aspect labels must be >= 0, got {asp.min()}")
            c = int(asp.max()) + 1 if num_aspects is None else int(num_aspects)
            if asp.max() >= c:
                raise ValueError(f"aspect label {asp.max()} out of range for num_aspects={c}")
        else:
            asp = as_float_array(aspect_probs, "aspect_probs", ndim=2)
            check_same_length(n, aspect_probs=asp)
            c = asp.shape[1] if num_aspects is None else int(num_aspects)
            if asp.shape[1] != c:
                raise ValueError(f"aspect_probs has {asp.shape[1]} columns, num_aspects={c}")
            if asp.min() < 0 or np.abs(asp.sum(1) - 1).max() > 1e-6:
                raise ValueError("aspect_probs rows must be >= 0 and sum to 1")
        if log_logging is None:
            ll = np.full(n, np.nan)
        else:
            ll = as_float_array(
                [np.nan if v is None else v for v in log_logging], "log_logging", allow_nan=True
            )
            check_same_length(n, log_logging=ll)
            if (ll[~np.isnan(ll)] > 0).any():
                raise ValueError("log_logging must be log-probabilities (<= 0)")

        # group by prompt id, prompts in order of first appearance
        groups = group_rows(pid)
        order, ptr = groups.order, groups.prompt_ptr
        ids = [pid[i] for i in groups.first]
        texts = [prompt[i] for i in groups.first]
        bad = [i for i, g in enumerate(groups.group.tolist()) if prompt[i] != texts[g]]
        if bad:
            raise ValueError(
                f"prompt_id {pid[bad[0]]!r} has two different prompt texts (row {bad[0]})"
            )
        rewards = normalize_signal(sig[order], ptr, reward_normalization)
        if np.isnan(rewards).any() or rewards.min() < 0 or rewards.max() > 1:
            raise ValueError("rewards must lie in [0, 1] after normalisation")
        return cls(
            prompt_ids=ids,
            prompt_ptr=ptr,
            prompts=texts,
            responses=[response[i] for i in order],
            rewards=rewards,
            aspects=asp[order],
            num_aspects=c,
            log_logging=ll[order],
            row_index=order,
        )

    @classmethod
    def from_examples(
        cls,
        examples: Iterable[TrainingExample],
        *,
        num_aspects: int | None = None,
        reward_normalization: RewardNormalization = "max",
    ) -> PopeDataset:
        """Build from :class:`TrainingExample` objects (see :meth:`from_arrays`)."""
        ex = list(examples)
        bad = [i for i, e in enumerate(ex) if not isinstance(e, TrainingExample)]
        if bad:
            raise TypeError(f"examples[{bad[0]}] is not a TrainingExample")
        soft = [not isinstance(e.aspect, (int, np.integer)) for e in ex]
        if any(soft) and not all(soft):
            raise ValueError("mix of hard (int) and soft (row) aspects; use one kind")
        aspects = [e.aspect for e in ex]
        return cls.from_arrays(
            prompt_id=[e.prompt_id for e in ex],
            prompt=[e.prompt for e in ex],
            response=[e.response for e in ex],
            reward=[e.reward for e in ex],
            aspect=None if (ex and soft[0]) else aspects,
            aspect_probs=aspects if (ex and soft[0]) else None,
            num_aspects=num_aspects,
            log_logging=[e.log_logging for e in ex],
            reward_normalization=reward_normalization,
        )

    @classmethod
    def from_records(
        cls,
        records: Iterable[dict[str, Any]],
        *,
        num_aspects: int | None = None,
        reward_normalization: RewardNormalization = "max",
    ) -> PopeDataset:
        """Build from dicts with the fields of :class:`TrainingExample`."""
        names = {f.name for f in dataclasses.fields(TrainingExample)}
        out = []
        for i, r in enumerate(records):
            extra = set(r) - names
            if extra:
                raise ValueError(f"record {i} has unknown fields {sorted(extra)}")
            try:
                out.append(TrainingExample(**r))
            except TypeError as e:
                raise ValueError(f"record {i}: {e}") from e
        return cls.from_examples(
            out, num_aspects=num_aspects, reward_normalization=reward_normalization
        )

    # ------------------------------------------------------------------ properties
    @property
    def n_prompts(self) -> int:
        """Number of prompts."""
        return len(self.prompt_ids)

    @property
    def n_responses(self) -> int:
        """Number of responses."""
        return len(self.responses)

    @property
    def prompt_index(self) -> np.ndarray:
        """(N,) global prompt index of each response."""
        return np.repeat(np.arange(self.n_prompts), np.diff(self.prompt_ptr))

    @property
    def lengths(self) -> np.ndarray:
        """(N,) tokens per prompt + response pair (after :meth:`tokenize`)."""
        input_ids, _ = self._require_tokens()
        return np.array([a.shape[0] for a in input_ids], dtype=np.int64)

    def _require_tokens(self) -> tuple[list[np.ndarray], np.ndarray]:
        """``(input_ids, prompt_lengths)``, set together by :meth:`tokenize`."""
        if self.input_ids is None or self.prompt_lengths is None:
            raise RuntimeError("call PopeDataset.tokenize(tokenizer, ...) first")
        return self.input_ids, self.prompt_lengths

    # ------------------------------------------------------------------ preparation
    def tokenize(
        self,
        tokenizer: Any,
        *,
        max_length: int | None = None,
        add_eos: bool = False,
        chat_template: bool = False,
    ) -> PopeDataset:
        """Tokenise every prompt + response pair (see :func:`pope.scoring.tokenize_pairs`).

        Parameters
        ----------
        tokenizer : transformers tokenizer
        max_length : int, optional
            Context limit; a longer pair is an error (truncating a logged response would
            change its probability and break the importance weight).
        add_eos, chat_template : bool
            ``add_eos=False`` by default, as in :func:`pope.scoring.score_responses`: the
            logged log-probs and the policy's must cover the same tokens.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            An empty response (no token besides EOS).
        pope.scoring.ContextLengthError
            A pair longer than ``max_length``.
        """
        prompts = [self.prompts[i] for i in self.prompt_index]
        pairs = tokenize_pairs(
            tokenizer, prompts, self.responses, chat_template=chat_template, add_eos=add_eos
        )
        body = pairs.response_lengths - (1 if add_eos else 0)
        if (body <= 0).any():
            i = int(np.flatnonzero(body <= 0)[0])
            raise ValueError(
                f"response {int(self.row_index[i])} (prompt_id "
                f"{self.prompt_ids[self.prompt_index[i]]!r}) is empty: it has no token"
            )
        lengths = pairs.lengths
        if max_length is not None and (lengths > max_length).any():
            rows = np.flatnonzero(lengths > max_length)
            raise ContextLengthError(self.row_index[rows], lengths[rows], max_length)
        self.input_ids = pairs.input_ids
        self.prompt_lengths = pairs.prompt_lengths
        self._tok_settings = dict(add_eos=add_eos, chat_template=chat_template)
        return self

    def compute_logprobs(
        self,
        model: Any,
        tokenizer: Any,
        *,
        fill_logging: bool = True,
        token_logprobs: bool = False,
        batch_tokens: int = 8192,
        progress: bool = False,
    ) -> PopeDataset:
        r"""Score the responses with a frozen reference model.

        Parameters
        ----------
        model : causal LM
            The reference policy (for ``fill_logging`` it must be the logging policy
            :math:`\pi_0`).
        tokenizer : its tokenizer (the same as for :meth:`tokenize`)
        fill_logging : bool
            Fill the unknown (NaN) ``log_logging`` entries with :math:`\log\pi_{ref}(y\mid x)`.
        token_logprobs : bool
            Also keep the per-token :math:`\log\pi_{ref}(y_t\mid\cdot)` (for the KL penalty).
        batch_tokens : int
            Token budget of a scoring batch.
        """
        _, prompt_lengths = self._require_tokens()
        prompts = [self.prompts[i] for i in self.prompt_index]
        res = score_responses(
            model,
            tokenizer,
            prompts,
            self.responses,
            batch_tokens=batch_tokens,
            return_token_logprobs=token_logprobs,
            progress=progress,
            chat_template=self._tok_settings["chat_template"],
            add_eos=self._tok_settings["add_eos"],
        )
        seq, tok = res if isinstance(res, tuple) else (res, None)
        if fill_logging:
            miss = np.isnan(self.log_logging)
            self.log_logging = np.where(miss, seq, self.log_logging)
        if tok is not None:  # token_logprobs
            want = self.lengths - prompt_lengths
            got = np.array([t.shape[0] for t in tok])
            if not np.array_equal(want, got):
                raise RuntimeError("reference token log-probs do not match the tokenisation")
            self.ref_token_logprobs = [np.asarray(t, dtype=np.float64) for t in tok]
        return self

    @property
    def missing_log_logging(self) -> int:
        """Number of responses without a logging log-prob."""
        return int(np.isnan(self.log_logging).sum())

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return self.n_prompts

    def to_hf_dataset(self) -> Any:
        """The items as a ``datasets.Dataset`` (one row per prompt, the keys of
        ``dataset[i]`` as list columns), for trainers that require one (TRL's): pass it as
        ``train_dataset`` with ``data_collator=PopeCollator(...)`` (and, for TRL's
        ``SFTTrainer``, ``SFTConfig(dataset_kwargs={"skip_prepare_dataset": True})``)."""
        import datasets

        def plain(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, list):
                return [plain(x) for x in v]
            return v

        return datasets.Dataset.from_list(
            [{k: plain(v) for k, v in self[i].items()} for i in range(self.n_prompts)]
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        """All the responses of prompt ``i`` as lists (the keys of :class:`PopeCollator`)."""
        input_ids, prompt_lengths = self._require_tokens()
        if not 0 <= i < self.n_prompts:
            raise IndexError(i)
        lo, hi = int(self.prompt_ptr[i]), int(self.prompt_ptr[i + 1])
        item: dict[str, Any] = {
            "input_ids": [input_ids[k] for k in range(lo, hi)],
            "prompt_lengths": prompt_lengths[lo:hi],
            "rewards": self.rewards[lo:hi],
            "prompt_index": i,
            "log_logging": self.log_logging[lo:hi],
            "aspects": self.aspects[lo:hi],
        }
        if self.ref_token_logprobs is not None:
            item["ref_logprobs"] = self.ref_token_logprobs[lo:hi]
        return item


def token_budget_batches(
    group_lengths: Sequence[np.ndarray], budget: int, *, names: Sequence[Hashable] | None = None
) -> list[list[int]]:
    """Pack whole groups (prompts) into batches of at most ``budget`` padded tokens.

    The padded size of a batch is ``(number of sequences) x (longest sequence)``. Groups are
    sorted by their longest sequence (descending) and packed greedily, so batches hold
    sequences of similar lengths (little padding).

    Parameters
    ----------
    group_lengths : sequence of 1-d int arrays
        The sequence lengths of each group.
    budget : int
    names : sequence, optional
        The user's id of each group (the prompt ids), named in errors instead of positions.

    Returns
    -------
    list of lists of group indices

    Raises
    ------
    ValueError
        A single group exceeds the budget (its responses cannot be split: the coverage is
        per prompt).
    """
    sizes = [(len(g), int(np.max(g))) for g in group_lengths]
    for i, (k, m) in enumerate(sizes):
        if k * m > budget:
            who = f"prompt {i}" if names is None else f"prompt_id {names[i]!r}"
            raise ValueError(
                f"{who} has {k} responses of up to {m} tokens ({k * m} padded tokens), more "
                f"than token_budget={budget} (--batch-tokens); raise the budget (all the "
                "responses of a prompt must share a batch)"
            )
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i][1], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    n_cur = m_cur = 0
    for i in order:
        k, m = sizes[i]
        if cur and (n_cur + k) * max(m_cur, m) > budget:
            batches.append(cur)
            cur, n_cur, m_cur = [], 0, 0
        cur.append(i)
        n_cur += k
        m_cur = max(m_cur, m)
    if cur:
        batches.append(cur)
    return batches


class PopeCollator:
    """Collate prompt groups (items of :class:`PopeDataset`) into one padded batch.

    Batch keys (what :func:`pope_forward` and :func:`make_compute_loss` expect):

    ``input_ids`` (B, L) int64, right-padded with ``pad_token_id``; ``attention_mask`` (B, L);
    ``labels`` (B, L) int64, Hugging Face convention: ``input_ids`` on the response tokens,
    ``-100`` on the prompt and the padding; ``rewards`` (B,) float32 in [0, 1];
    ``prompt_index`` (B,) int64, a *global* prompt id; ``log_logging`` (B,) float64
    :math:`\\log\\pi_0(y\\mid x)`; ``aspects`` (B,) int64 or (B, C) float32; optionally
    ``ref_logprobs`` (B, L) float32, the reference log-prob of the token at each response
    position (0 elsewhere).

    Parameters
    ----------
    pad_token_id : int
    """

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, groups: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [np.asarray(a) for g in groups for a in g["input_ids"]]
        plen = np.concatenate([np.asarray(g["prompt_lengths"]) for g in groups])
        b, lmax = len(ids), max(a.shape[0] for a in ids)
        input_ids = torch.full((b, lmax), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((b, lmax), dtype=torch.long)
        labels = torch.full((b, lmax), -100, dtype=torch.long)
        for j, a in enumerate(ids):
            t = torch.as_tensor(a, dtype=torch.long)
            input_ids[j, : t.shape[0]] = t
            attn[j, : t.shape[0]] = 1
            labels[j, plen[j] : t.shape[0]] = t[plen[j] :]
        ll = np.concatenate([np.asarray(g["log_logging"], dtype=np.float64) for g in groups])
        if np.isnan(ll).any():
            raise ValueError(
                "log_logging is missing for some responses: give it in the data or compute it "
                "with a reference model (PopeDataset.compute_logprobs)"
            )
        asp = np.concatenate([np.asarray(g["aspects"]) for g in groups])
        out = {
            "input_ids": input_ids,
            "attention_mask": attn,
            "labels": labels,
            "rewards": torch.as_tensor(
                np.concatenate([np.asarray(g["rewards"]) for g in groups]), dtype=torch.float32
            ),
            "prompt_index": torch.as_tensor(
                np.concatenate([np.full(len(g["input_ids"]), g["prompt_index"]) for g in groups]),
                dtype=torch.long,
            ),
            "log_logging": torch.as_tensor(ll, dtype=torch.float64),
            "aspects": torch.as_tensor(asp, dtype=torch.float32 if asp.ndim == 2 else torch.long),
        }
        if all("ref_logprobs" in g for g in groups):
            ref = torch.zeros((b, lmax), dtype=torch.float32)
            toks = [t for g in groups for t in g["ref_logprobs"]]
            for j, t in enumerate(toks):
                ref[j, plen[j] : plen[j] + len(t)] = torch.as_tensor(t, dtype=torch.float32)
            out["ref_logprobs"] = ref
        return out
