r"""Token-level environment: :class:`TokenEnv` (a tiny GPT-2 policy, aspects and utility from
its tokens; Monte Carlo truths) and the :class:`TokenLog` drawn from it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pope.data import LoggedFeedback
from pope.synthetic.sampling import SignalNoise, counts_to_ptr, draw_signal, responses_per_prompt
from pope.synthetic.values import PolicyValue, entropy

__all__ = ["TokenEnv", "TokenLog"]


@dataclass(frozen=True, eq=False)
class TokenLog:
    r"""Logs of token sequences drawn from a :class:`TokenEnv` policy.

    Attributes
    ----------
    env : TokenEnv
    feedback : LoggedFeedback
        With hard aspects, ``log_logging`` (sequence) and ``token_log_logging`` / ``token_ptr``
        (per token, as recorded while sampling).
    prompt : (n,) int64
        The environment prompt of each logged prompt.
    tokens : (N, T) int64
        The response tokens.
    utility : (N,) float
        True expected reward :math:`r(x, y)` of each response.
    """

    env: TokenEnv
    feedback: LoggedFeedback
    prompt: np.ndarray
    tokens: np.ndarray
    utility: np.ndarray

    @property
    def response_prompt(self) -> np.ndarray:
        """Environment prompt of each logged response, (N,)."""
        return self.prompt[self.feedback.prompt_index]

    def log_prob(self, model: Any, *, batch_size: int = 8192) -> np.ndarray:
        r""":math:`\log\pi_\theta(y_{ik}\mid x_i)` of the logged responses under ``model``."""
        return self.env.log_prob(
            model, self.response_prompt, self.tokens, batch_size=batch_size
        ).sum(axis=1)


@dataclass(frozen=True, eq=False)
class TokenEnv:
    r"""Token-level environment: a tiny GPT-2 policy, aspects and utility from the tokens.

    Vocabulary of ``V`` tokens; token :math:`v` belongs to topic :math:`v \bmod C`. A prompt is
    ``prompt_length`` tokens (distinct per prompt); a response is ``T`` sampled tokens. Rule:

    * aspect :math:`a(y)` = the topic with the most tokens in :math:`y`; ties go to the tied
      topic that appears first (hard aspects);
    * utility :math:`r(x, y) = \mathrm{pref}[g(x), a(y)]\cdot n_{a(y)}(y)/T` where
      :math:`n_c(y)` counts the tokens of topic :math:`c`: the user group's taste for the
      aspect times how focused the response is on it.

    Group :math:`g` prefers topic :math:`g \bmod C` (preference 1), other topics
    :math:`U(0.15, 0.6)`. The logging policy (:meth:`logging_policy`) is fitted to a
    mode-collapsed mixture favouring topic 0.

    Build with :meth:`make`. Policies are ``transformers.GPT2LMHeadModel`` instances
    (:meth:`new_model`); truths are on-policy Monte Carlo (:meth:`value`).
    """

    group: np.ndarray
    preference: np.ndarray
    prompt_tokens: np.ndarray
    vocab_size: int
    response_length: int
    n_aspects: int
    n_embd: int = 32
    n_layer: int = 2
    n_head: int = 2
    seed: int = 0
    _cache_kw: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def make(
        cls,
        *,
        n_prompts: int = 8,
        n_groups: int = 3,
        n_aspects: int = 4,
        vocab_size: int = 16,
        prompt_length: int = 2,
        response_length: int = 6,
        n_embd: int = 32,
        n_layer: int = 2,
        n_head: int = 2,
        seed: int = 0,
    ) -> TokenEnv:
        r"""Draw an environment (groups, preferences, prompt tokens).

        Parameters
        ----------
        n_prompts, n_groups, n_aspects : int
            :math:`P, G, C`; prompt :math:`x` has group :math:`x \bmod G` (balanced).
        vocab_size : int
            ``V >= C``.
        prompt_length, response_length : int
        n_embd, n_layer, n_head : int
            The GPT-2 configuration of the policies.
        seed : int
        """
        if vocab_size < n_aspects or n_aspects < 2:
            raise ValueError("need 2 <= n_aspects <= vocab_size")
        if vocab_size**prompt_length < n_prompts:
            raise ValueError("prompt_length too short to give every prompt distinct tokens")
        if response_length < 1:
            raise ValueError("response_length must be >= 1")
        rng = np.random.default_rng(seed)
        group = np.arange(n_prompts) % n_groups
        pref = rng.uniform(0.15, 0.6, size=(n_groups, n_aspects))
        pref[np.arange(n_groups), np.arange(n_groups) % n_aspects] = 1.0
        codes = rng.choice(vocab_size**prompt_length, size=n_prompts, replace=False)
        digits = (codes[:, None] // vocab_size ** np.arange(prompt_length)[::-1]) % vocab_size
        return cls(
            group=group.astype(np.int64),
            preference=pref,
            prompt_tokens=digits.astype(np.int64),
            vocab_size=vocab_size,
            response_length=response_length,
            n_aspects=n_aspects,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            seed=seed,
        )

    # ------------------------------------------------------------------ shapes
    @property
    def n_prompts(self) -> int:
        """:math:`P`."""
        return int(self.prompt_tokens.shape[0])

    @property
    def prompt_length(self) -> int:
        """Tokens per prompt."""
        return int(self.prompt_tokens.shape[1])

    @property
    def topic(self) -> np.ndarray:
        """Topic of each vocabulary token, :math:`v \\bmod C`, (V,)."""
        return np.arange(self.vocab_size) % self.n_aspects

    # ------------------------------------------------------------------ the rule
    def topic_counts(self, tokens: np.ndarray) -> np.ndarray:
        """:math:`n_c(y)`, tokens of each topic, (N, C)."""
        t = self.topic[np.asarray(tokens)]
        return np.stack([(t == c).sum(axis=1) for c in range(self.n_aspects)], axis=1)

    def aspects(self, tokens: np.ndarray) -> np.ndarray:
        """Dominant topic of each response (ties: the tied topic appearing first), (N,)."""
        tokens = np.asarray(tokens)
        t = self.topic[tokens]
        n, length = t.shape
        counts = self.topic_counts(tokens)
        first = np.full((n, self.n_aspects), length)
        for c in range(self.n_aspects):
            hit = t == c
            first[:, c] = np.where(hit.any(axis=1), hit.argmax(axis=1), length)
        score = counts * (length + 1) - first
        return score.argmax(axis=1).astype(np.int64)

    def utility(self, prompt: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        r""":math:`r(x, y) = \mathrm{pref}[g(x), a(y)]\,n_{a(y)}(y)/T`, (N,)."""
        tokens = np.asarray(tokens)
        a = self.aspects(tokens)
        n_a = self.topic_counts(tokens)[np.arange(tokens.shape[0]), a]
        return self.preference[self.group[np.asarray(prompt)], a] * n_a / tokens.shape[1]

    # ------------------------------------------------------------------ models
    def config(self) -> Any:
        """The ``transformers.GPT2Config`` of the policies (no dropout, ReLU MLP)."""
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=self.vocab_size,
            n_positions=self.prompt_length + self.response_length,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            activation_function="relu",
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )

    def new_model(self, seed: int = 0) -> Any:
        """A freshly initialised ``GPT2LMHeadModel`` (CPU, float32, deterministic in ``seed``)."""
        import torch
        from transformers import GPT2LMHeadModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(self.config())
        return model.eval()

    def logging_policy(
        self,
        *,
        seed: int = 0,
        steps: int = 200,
        batch_size: int = 256,
        lr: float = 1e-2,
        focus: float = 0.6,
        topic_bias: float = 0.5,
        popular_topic: int = 0,
    ) -> Any:
        r"""The logging policy :math:`\pi_0`: a fresh model fitted (SFT) to a mode-collapsed mix.

        Training responses are drawn, for a uniform prompt, as: with probability ``focus`` a
        "popular" response whose tokens are each, with probability ``topic_bias``, a uniform
        token of ``popular_topic``, else a uniform token; otherwise uniform tokens. The model is
        then fitted by ``steps`` Adam steps of next-token cross-entropy on the response tokens.
        Whatever the fit, the logging propensities are the model's own exact probabilities.
        """
        import torch

        model = self.new_model(seed)
        rng = np.random.default_rng(seed + 7919)
        topic_tokens = np.flatnonzero(self.topic == popular_topic)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        length = self.response_length
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(steps):
                prompt = rng.integers(0, self.n_prompts, size=batch_size)
                focused = rng.random(batch_size) < focus
                uni = rng.integers(0, self.vocab_size, size=(batch_size, length))
                top = rng.choice(topic_tokens, size=(batch_size, length))
                use_top = focused[:, None] & (rng.random((batch_size, length)) < topic_bias)
                tokens = np.where(use_top, top, uni)
                logits = self._response_logits(model, prompt, tokens)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, self.vocab_size),
                    torch.as_tensor(tokens).reshape(-1),
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
        return model.eval()

    def _inputs(self, prompt: np.ndarray, tokens: np.ndarray) -> Any:
        import torch

        pt = self.prompt_tokens[np.asarray(prompt)]
        full = np.concatenate([pt, np.asarray(tokens)[:, :-1]], axis=1)
        return torch.as_tensor(full, dtype=torch.long)

    def _response_logits(self, model: Any, prompt: np.ndarray, tokens: np.ndarray) -> Any:
        """Logits (N, T, V) aligned with the response tokens (teacher forcing, with grad)."""
        out = model(input_ids=self._inputs(prompt, tokens))
        return out.logits[:, self.prompt_length - 1 :, :]

    def response_logits(self, model: Any, prompt: np.ndarray, tokens: np.ndarray) -> Any:
        r"""Logits aligned with the response tokens: ``logits[:, t]`` predicts ``tokens[:, t]``.

        Teacher forcing on ``prompt_tokens[prompt] ++ tokens[:, :-1]``; differentiable.

        Returns
        -------
        torch.Tensor (N, T, V)
        """
        return self._response_logits(model, prompt, tokens)

    def log_prob(
        self, model: Any, prompt: np.ndarray, tokens: np.ndarray, *, batch_size: int = 8192
    ) -> np.ndarray:
        r"""Per-token :math:`\log\pi(y_t\mid x, y_{<t})` (teacher forcing, no grad), (N, T)."""
        import torch

        tokens = np.asarray(tokens)
        prompt = np.asarray(prompt)
        out = np.empty(tokens.shape, dtype=np.float64)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for lo in range(0, tokens.shape[0], batch_size):
                sl = slice(lo, lo + batch_size)
                logits = self._response_logits(model, prompt[sl], tokens[sl]).double()
                lp = torch.log_softmax(logits, dim=-1)
                tgt = torch.as_tensor(tokens[sl], dtype=torch.long)
                out[sl] = lp.gather(-1, tgt[..., None])[..., 0].numpy()
        model.train(was_training)
        return out

    def _cache_kwarg(self, model: Any) -> str:
        if not self._cache_kw:
            params = inspect.signature(model.forward).parameters
            self._cache_kw.append("cache" if "cache" in params else "past_key_values")
        return self._cache_kw[0]

    def sample(
        self,
        model: Any,
        prompt: np.ndarray,
        *,
        seed: int | None = 0,
        batch_size: int = 8192,
    ) -> tuple[np.ndarray, np.ndarray]:
        r"""Sample one response per entry of ``prompt`` (temperature 1, full support).

        Returns
        -------
        tokens : (N, T) int64
        token_logprobs : (N, T) float64
            :math:`\log\pi(y_t\mid x, y_{<t})` of the sampled tokens (float64 log-softmax of
            the model's logits at sampling time).
        """
        import torch

        prompt = np.asarray(prompt, dtype=np.int64)
        n, length = prompt.shape[0], self.response_length
        tokens = np.empty((n, length), dtype=np.int64)
        logps = np.empty((n, length), dtype=np.float64)
        gen = torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**62)))
        kw = self._cache_kwarg(model)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                ids = torch.as_tensor(self.prompt_tokens[prompt[lo : lo + batch_size]])
                out = model(input_ids=ids, use_cache=True)
                for t in range(length):
                    lp = torch.log_softmax(out.logits[:, -1, :].double(), dim=-1)
                    tok = torch.multinomial(lp.exp(), 1, generator=gen)
                    tokens[lo : lo + ids.shape[0], t] = tok[:, 0].numpy()
                    logps[lo : lo + ids.shape[0], t] = lp.gather(1, tok)[:, 0].numpy()
                    if t + 1 < length:
                        keys = out.keys()
                        cache = out["cache"] if "cache" in keys else out["past_key_values"]
                        out = model(input_ids=tok, use_cache=True, **{kw: cache})
        model.train(was_training)
        return tokens, logps

    def value(
        self,
        model: Any,
        lam: float = 1.0,
        *,
        n_per_prompt: int = 2000,
        seed: int | None = 0,
        miller_madow: bool = True,
    ) -> PolicyValue:
        r"""On-policy Monte Carlo truth with standard errors.

        Per prompt, :math:`m` = ``n_per_prompt`` responses :math:`y_j \sim \pi`;
        :math:`\hat U(x) = \frac1m\sum_j r(x, y_j)`, :math:`\hat p(c\mid x)` = aspect
        frequencies, :math:`\hat D(x) = [H(\hat p) + (C_{+}-1)/(2m)]/\log C` (Miller–Madow
        correction of the plug-in's :math:`O(1/m)` downward bias, :math:`C_+` = observed
        aspects; off with ``miller_madow=False``). Standard errors by the delta method: the
        influence of sample :math:`j` on :math:`\hat U + \lambda\hat D` is
        :math:`\psi_j = r_j - \lambda\log\hat p(a_j\mid x)/\log C`, so
        :math:`\mathrm{se}^2 = \frac{1}{P^2}\sum_x \widehat{\mathrm{Var}}_j(\psi_j)/m`
        (likewise with :math:`\lambda` terms only, or none, for :math:`D` and :math:`U`).
        """
        m = int(n_per_prompt)
        if m < 2:
            raise ValueError("n_per_prompt must be >= 2")
        p_, c_ = self.n_prompts, self.n_aspects
        prompt = np.repeat(np.arange(p_), m)
        tokens, _ = self.sample(model, prompt, seed=seed)
        r = self.utility(prompt, tokens).reshape(p_, m)
        a = self.aspects(tokens).reshape(p_, m)
        cov = np.stack([(a == c).mean(axis=1) for c in range(c_)], axis=1)
        logc = math.log(c_)
        h = entropy(cov)
        if miller_madow:
            h = h + ((cov > 0).sum(axis=1) - 1) / (2 * m)
        d = h / logc
        neglog = -np.log(np.take_along_axis(cov, a, axis=1)) / logc  # (P, m), finite: observed
        var_u = r.var(axis=1, ddof=1) / m
        var_d = neglog.var(axis=1, ddof=1) / m
        var_t = (r + lam * neglog).var(axis=1, ddof=1) / m
        return PolicyValue(
            relevance=float(r.mean()),
            diversity=float(d.mean()),
            lam=float(lam),
            per_prompt_relevance=r.mean(axis=1),
            per_prompt_diversity=d,
            coverage=cov,
            relevance_stderr=float(math.sqrt(var_u.sum()) / p_),
            diversity_stderr=float(math.sqrt(var_d.sum()) / p_),
            total_stderr=float(math.sqrt(var_t.sum()) / p_),
            n_samples=m,
        )

    def sample_logs(
        self,
        model: Any,
        *,
        k: int | tuple[int, int] | Sequence[int] | np.ndarray = 64,
        prompts: np.ndarray | None = None,
        noise: SignalNoise = "bernoulli",
        seed: int | None = 0,
    ) -> TokenLog:
        r"""Logs: :math:`K_i` responses per prompt sampled from ``model`` (the logging policy).

        Parameters
        ----------
        model : GPT2LMHeadModel
        k : int, (lo, hi) or (n,) ints
        prompts : (n,) int, optional
            Environment prompts to log (default: all, in order).
        noise : {"bernoulli", "none"}
        seed : int, optional
        """
        rng = np.random.default_rng(seed)
        prompts = np.arange(self.n_prompts) if prompts is None else np.asarray(prompts)
        counts = responses_per_prompt(k, prompts.shape[0], rng)
        ptr = counts_to_ptr(counts)
        resp_prompt = np.repeat(prompts, counts)
        tokens, tok_lp = self.sample(model, resp_prompt, seed=int(rng.integers(2**62)))
        util = self.utility(resp_prompt, tokens)
        signal = draw_signal(util, noise, rng)
        length = self.response_length
        fb = LoggedFeedback(
            prompt_ptr=ptr,
            signal=signal,
            log_logging=tok_lp.sum(axis=1),
            aspect=self.aspects(tokens),
            n_aspects=self.n_aspects,
            token_log_logging=tok_lp.reshape(-1),
            token_ptr=np.arange(resp_prompt.shape[0] + 1, dtype=np.int64) * length,
            position=np.arange(resp_prompt.shape[0]) - np.repeat(ptr[:-1], counts),
            prompt_ids=np.arange(prompts.shape[0]),
        )
        return TokenLog(
            env=self, feedback=fb, prompt=prompts.astype(np.int64), tokens=tokens, utility=util
        )
