r"""Synthetic pluralistic environments with known ground truth.

Two environments share one generative story. Prompts :math:`x` belong to latent user groups
:math:`g(x)` whose preferences over :math:`C` aspects differ (a table
:math:`\mathrm{pref}[g, c] \in [0, 1]`). A response :math:`y` carries an aspect row
:math:`q(\cdot\mid y)` on the simplex (one-hot for a hard aspect) and an expected utility
:math:`r(x, y) \in [0, 1]` that depends on the group and the aspect. The human signal is
:math:`u \sim \mathrm{Bernoulli}(r(x, y))` (a binary vote; ``noise="none"`` gives
:math:`u = r`), so :math:`\mathbb E[u\mid x, y] = r(x, y)` and the signal needs no
normalisation (``normalize="none"``). The true value of a policy :math:`\pi` is
(METHOD.md §2)

.. math::

    V_\lambda(\pi) = \mathbb E_x\big[U_\pi(x) + \lambda D_\pi(x)\big],\quad
    U_\pi(x) = \mathbb E_{y\sim\pi(\cdot\mid x)} r(x, y),\quad
    D_\pi(x) = \frac{H(p_\pi(\cdot\mid x))}{\log C},\quad
    p_\pi(c\mid x) = \mathbb E_{y\sim\pi} q(c\mid y),

with :math:`\mathbb E_x` the uniform average over the environment's prompts.

* :class:`CandidateEnv` — response level: each prompt has a finite set of :math:`M` candidate
  responses and policies are softmax distributions over them (:class:`SoftmaxPolicy`). Truths
  are exact, by enumeration. :meth:`CandidateEnv.sample_logs` draws logs of :math:`K_i`
  responses per prompt (i.i.d. from the logging policy, ragged :math:`K_i` allowed) and returns
  a :class:`SyntheticLog` holding the :class:`~pope.data.LoggedFeedback` and able to give the
  log-probabilities of the logged responses under any target policy.
* :class:`TokenEnv` — token level: a tiny causal LM (GPT-2 built from a config, CPU) generates
  token sequences; the aspect and utility of a sequence follow a fixed rule on its tokens
  (each token belongs to a topic; the aspect is the dominant topic). Truths are on-policy Monte
  Carlo estimates reported with their standard errors.

Everything is seeded: the same arguments give bit-identical results.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pope.data import LoggedFeedback

__all__ = [
    "CandidateEnv",
    "PolicyValue",
    "SignalNoise",
    "SoftmaxPolicy",
    "SyntheticLog",
    "TokenEnv",
    "TokenLog",
    "entropy",
]

SignalNoise = Literal["bernoulli", "none"]


# ----------------------------------------------------------------------------- helpers
def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    r"""Shannon entropy in nats, :math:`H(p) = -\sum_c p_c \log p_c` with :math:`0\log 0 = 0`.

    Parameters
    ----------
    p : array, probability vectors along ``axis``
    axis : int

    Returns
    -------
    array with ``axis`` removed.
    """
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return t.sum(axis=axis)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise :math:`z - \\log\\sum e^z` (``-inf`` entries stay ``-inf``)."""
    m = np.max(z, axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _counts_to_ptr(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _resolve_k(
    k: int | tuple[int, int] | Sequence[int] | np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Responses per prompt: an int, a ``(lo, hi)`` tuple (uniform, inclusive) or n ints."""
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return np.full(n, int(k), dtype=np.int64)
    if isinstance(k, tuple) and len(k) == 2:
        lo, hi = int(k[0]), int(k[1])
        if not 1 <= lo <= hi:
            raise ValueError(f"k=(lo, hi) needs 1 <= lo <= hi, got {k}")
        return rng.integers(lo, hi + 1, size=n).astype(np.int64)
    arr = np.asarray(k, dtype=np.int64)
    if arr.shape != (n,):
        raise ValueError(f"k must be an int, a (lo, hi) tuple or {n} ints, got shape {arr.shape}")
    if arr.size and arr.min() < 1:
        raise ValueError("every K_i must be >= 1")
    return arr


def _draw_signal(utility: np.ndarray, noise: SignalNoise, rng: np.random.Generator) -> np.ndarray:
    if noise == "bernoulli":
        return (rng.random(utility.shape) < utility).astype(np.float64)
    if noise == "none":
        return utility.astype(np.float64).copy()
    raise ValueError(f"noise must be 'bernoulli' or 'none', got {noise!r}")


@dataclass(frozen=True)
class PolicyValue:
    r"""The true value of a policy (exact, or an on-policy Monte Carlo estimate).

    Attributes
    ----------
    relevance : float
        :math:`U = \mathbb E_x U_\pi(x)`.
    diversity : float
        :math:`D = \mathbb E_x H(p_\pi(\cdot\mid x)) / \log C`.
    lam : float
        :math:`\lambda` used for ``total``.
    relevance_stderr, diversity_stderr, total_stderr : float
        Monte Carlo standard errors (0 for exact values).
    per_prompt_relevance, per_prompt_diversity : (P,) float
    coverage : (P, C) float
        :math:`p_\pi(c\mid x)`.
    n_samples : int
        Monte Carlo samples per prompt (0 for exact values).
    """

    relevance: float
    diversity: float
    lam: float
    per_prompt_relevance: np.ndarray
    per_prompt_diversity: np.ndarray
    coverage: np.ndarray
    relevance_stderr: float = 0.0
    diversity_stderr: float = 0.0
    total_stderr: float = 0.0
    n_samples: int = 0

    @property
    def total(self) -> float:
        r""":math:`V_\lambda = U + \lambda D`."""
        return float(self.relevance + self.lam * self.diversity)

    def as_dict(self) -> dict[str, float]:
        """Scalars only (JSON-friendly)."""
        return {
            "relevance": float(self.relevance),
            "diversity": float(self.diversity),
            "total": self.total,
            "lam": float(self.lam),
            "relevance_stderr": float(self.relevance_stderr),
            "diversity_stderr": float(self.diversity_stderr),
            "total_stderr": float(self.total_stderr),
            "n_samples": int(self.n_samples),
        }


# ----------------------------------------------------------------------------- response level
@dataclass(frozen=True, eq=False)
class SoftmaxPolicy:
    r"""Softmax policy over the candidates of each prompt, :math:`\pi(j\mid x)\propto e^{z_{xj}}`.

    Parameters
    ----------
    logits : (P, M) float
        :math:`z_{xj}`; ``-inf`` excludes a candidate.
    name : str
    """

    logits: np.ndarray
    name: str = "policy"

    def __post_init__(self) -> None:
        z = np.asarray(self.logits, dtype=np.float64)
        if z.ndim != 2:
            raise ValueError(f"logits must be (P, M), got shape {z.shape}")
        if np.isnan(z).any() or np.isposinf(z).any():
            raise ValueError("logits must not contain NaN or +inf")
        if not np.isfinite(z).any(axis=1).all():
            raise ValueError("every prompt needs at least one candidate with finite logit")
        z = z.copy()
        z.flags.writeable = False
        object.__setattr__(self, "logits", z)

    @property
    def log_probs(self) -> np.ndarray:
        r""":math:`\log\pi(j\mid x) = z_{xj} - \log\sum_{j'} e^{z_{xj'}}`, (P, M)."""
        return _log_softmax(self.logits)

    @property
    def probs(self) -> np.ndarray:
        r""":math:`\pi(j\mid x)`, (P, M)."""
        return np.exp(self.log_probs)

    def renamed(self, name: str) -> SoftmaxPolicy:
        """The same policy under another name."""
        return SoftmaxPolicy(self.logits, name)


@dataclass(frozen=True, eq=False)
class SyntheticLog:
    r"""Logs drawn from a :class:`CandidateEnv`, with what is needed to evaluate any policy.

    Attributes
    ----------
    env : CandidateEnv
    feedback : LoggedFeedback
        ``n`` logged prompts (CSR), Bernoulli or exact signals, hard or soft aspects,
        ``log_logging`` = :math:`\log\pi_0(y\mid x)`, ``position`` = draw order within a prompt.
    prompt : (n,) int64
        The environment prompt behind each logged prompt (prompts may repeat).
    candidate : (N,) int64
        The candidate index of each logged response.
    logging_policy : SoftmaxPolicy
    """

    env: CandidateEnv
    feedback: LoggedFeedback
    prompt: np.ndarray
    candidate: np.ndarray
    logging_policy: SoftmaxPolicy

    @property
    def response_prompt(self) -> np.ndarray:
        """Environment prompt of each logged response, (N,)."""
        return self.prompt[self.feedback.prompt_index]

    def log_prob(self, policy: SoftmaxPolicy) -> np.ndarray:
        r""":math:`\log\pi(y_{ik}\mid x_i)` of every logged response under ``policy``, (N,)."""
        return policy.log_probs[self.response_prompt, self.candidate]

    @property
    def utility(self) -> np.ndarray:
        r"""True expected reward :math:`r(x_i, y_{ik})` of every logged response, (N,)."""
        return self.env.utility[self.response_prompt, self.candidate]

    @property
    def aspect_rows(self) -> np.ndarray:
        """Aspect rows :math:`q_{ik}` of the logged responses, (N, C)."""
        return self.env.aspect_probs[self.response_prompt, self.candidate]

    def reward_hat(self, reward_model: np.ndarray) -> np.ndarray:
        r"""A reward model's prediction :math:`\hat r(x_i, y_{ik})` at the logged responses."""
        return np.asarray(reward_model)[self.response_prompt, self.candidate]

    def value_hat(self, policy: SoftmaxPolicy, reward_model: np.ndarray) -> np.ndarray:
        r"""Direct-method value per logged prompt, :math:`\sum_j \pi(j\mid x_i)\hat r(x_i, j)`."""
        rm = np.asarray(reward_model)
        return np.einsum("nm,nm->n", policy.probs[self.prompt], rm[self.prompt])

    def list_log_prob(self, policy: SoftmaxPolicy) -> np.ndarray:
        r"""Log-probability of each prompt's whole logged list, :math:`\sum_k\log\pi(y_{ik})`.

        The responses of a prompt are i.i.d. draws, so the list propensity is the product
        (no ordering correction: the list is the ordered sequence of draws).
        """
        lp = self.log_prob(policy)
        return np.add.reduceat(lp, self.feedback.prompt_ptr[:-1]) if lp.size else lp


@dataclass(frozen=True, eq=False)
class CandidateEnv:
    r"""Response-level environment: :math:`M` candidates per prompt, exact truth by enumeration.

    Build one with :meth:`make`. Fields are read-only arrays:

    Attributes
    ----------
    group : (P,) int64
        Latent user group :math:`g(x)` of each prompt (never shown to the estimators).
    preference : (G, C) float
        :math:`\mathrm{pref}[g, c] \in [0, 1]`.
    aspect : (P, M) int64
        Dominant aspect of each candidate (the hard label).
    aspect_probs : (P, M, C) float
        :math:`q(c\mid x, j)` (one-hot rows when ``soft_aspects=False``).
    quality : (P, M) float
        An observable quality feature :math:`s_{xj} \in (0, 1)`.
    utility : (P, M) float
        :math:`r(x, j) = s_{xj}\sum_c q(c\mid x, j)\,\mathrm{pref}[g(x), c]`.
    logging_logits : (P, M) float
        Logits of the logging policy :math:`\pi_0`.
    soft_aspects : bool
    """

    group: np.ndarray
    preference: np.ndarray
    aspect: np.ndarray
    aspect_probs: np.ndarray
    quality: np.ndarray
    utility: np.ndarray
    logging_logits: np.ndarray
    soft_aspects: bool = False

    def __post_init__(self) -> None:
        for name in ("group", "preference", "aspect", "aspect_probs", "quality", "utility",
                     "logging_logits"):
            arr = np.array(getattr(self, name))
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)

    # ------------------------------------------------------------------ construction
    @classmethod
    def make(
        cls,
        *,
        n_prompts: int = 200,
        n_candidates: int = 10,
        n_aspects: int = 4,
        n_groups: int = 3,
        soft_aspects: bool = False,
        popularity: float = 0.6,
        logging_quality: float = 2.0,
        logging_popular: float = 1.5,
        logging_noise: float = 0.5,
        seed: int | None = 0,
    ) -> CandidateEnv:
        r"""Draw an environment.

        * groups :math:`g(x)` uniform over ``n_groups``; preferences
          :math:`\mathrm{pref}[g, c] \sim U(0.1, 0.6)` except a favourite aspect
          :math:`c = g \bmod C` with preference 1 (groups disagree);
        * candidate aspects :math:`a_{xj} \sim \mathrm{Cat}(\rho)` with
          :math:`\rho_c \propto \text{popularity}^c` (aspect 0 is the most common);
          with ``soft_aspects`` the row is :math:`q = 0.7\,e_{a} + 0.3\,\mathrm{Dir}(\mathbf 1)`;
        * quality :math:`s_{xj} \sim \mathrm{Beta}(2, 2)`; utility
          :math:`r(x, j) = s_{xj}\,q_{xj}^\top \mathrm{pref}[g(x)]`;
        * logging policy (group-blind, mode-collapsed on the popular aspect 0):
          :math:`z^0_{xj} = \beta_s s_{xj} + \beta_p\,\mathbb 1[a_{xj}=0] + \sigma\epsilon_{xj}`,
          :math:`\epsilon \sim N(0, 1)`.

        Parameters
        ----------
        n_prompts, n_candidates, n_aspects, n_groups : int
            :math:`P, M, C, G`.
        soft_aspects : bool
        popularity : float in (0, 1]
        logging_quality, logging_popular, logging_noise : float
            :math:`\beta_s, \beta_p, \sigma`.
        seed : int, optional
        """
        if min(n_prompts, n_candidates, n_groups) < 1 or n_aspects < 2:
            raise ValueError("need n_prompts, n_candidates, n_groups >= 1 and n_aspects >= 2")
        if not 0 < popularity <= 1:
            raise ValueError(f"popularity must lie in (0, 1], got {popularity}")
        rng = np.random.default_rng(seed)
        p_, m_, c_, g_ = n_prompts, n_candidates, n_aspects, n_groups
        group = rng.integers(0, g_, size=p_)
        pref = rng.uniform(0.1, 0.6, size=(g_, c_))
        pref[np.arange(g_), np.arange(g_) % c_] = 1.0
        rho = popularity ** np.arange(c_)
        rho = rho / rho.sum()
        aspect = rng.choice(c_, size=(p_, m_), p=rho)
        onehot = np.eye(c_)[aspect]
        if soft_aspects:
            q = 0.7 * onehot + 0.3 * rng.dirichlet(np.ones(c_), size=(p_, m_))
        else:
            q = onehot
        quality = rng.beta(2.0, 2.0, size=(p_, m_))
        utility = quality * np.einsum("pmc,pc->pm", q, pref[group])
        logits0 = (
            logging_quality * quality
            + logging_popular * (aspect == 0)
            + logging_noise * rng.standard_normal((p_, m_))
        )
        return cls(
            group=group.astype(np.int64),
            preference=pref,
            aspect=aspect.astype(np.int64),
            aspect_probs=q,
            quality=quality,
            utility=utility,
            logging_logits=logits0,
            soft_aspects=soft_aspects,
        )

    # ------------------------------------------------------------------ shapes
    @property
    def n_prompts(self) -> int:
        """:math:`P`."""
        return int(self.utility.shape[0])

    @property
    def n_candidates(self) -> int:
        """:math:`M`."""
        return int(self.utility.shape[1])

    @property
    def n_aspects(self) -> int:
        """:math:`C`."""
        return int(self.aspect_probs.shape[2])

    # ------------------------------------------------------------------ policies
    @property
    def logging_policy(self) -> SoftmaxPolicy:
        r"""The logging policy :math:`\pi_0`."""
        return SoftmaxPolicy(self.logging_logits, "pi0")

    def uniform_policy(self) -> SoftmaxPolicy:
        """Uniform over the candidates of each prompt."""
        return SoftmaxPolicy(np.zeros_like(self.utility), "uniform")

    def diversity_reward(self, policy: SoftmaxPolicy) -> np.ndarray:
        r"""Per-candidate diversity reward under ``policy``'s coverage, (P, M).

        :math:`d_{xj} = -\sum_c q(c\mid x, j)\log p_\pi(c\mid x) / \log C`, so that
        :math:`\sum_j \pi(j\mid x) d_{xj} = D_\pi(x)` and :math:`\partial D_\pi(x)/\partial
        z_{xj} = \pi(j\mid x)(d_{xj} - D_\pi(x))` (METHOD.md §3).
        """
        cov = self.coverage(policy)
        with np.errstate(divide="ignore"):
            logp = np.where(cov > 0, np.log(np.where(cov > 0, cov, 1.0)), 0.0)
        return -np.einsum("pmc,pc->pm", self.aspect_probs, logp) / math.log(self.n_aspects)

    def tilt(
        self,
        base: SoftmaxPolicy | None = None,
        *,
        utility: float = 0.0,
        diversity: float = 0.0,
        temperature: float = 1.0,
        name: str | None = None,
    ) -> SoftmaxPolicy:
        r"""A policy tilted away from ``base`` (default :math:`\pi_0`).

        :math:`z = z^{base}/\tau + \beta_u\,r(x, j) + \beta_d\,d^{base}_{xj}`, with
        :math:`d^{base}` the diversity reward under the base's coverage
        (:meth:`diversity_reward`): :math:`\beta_u` moves along the utility, :math:`\beta_d`
        towards rarely covered aspects. ``utility = diversity = 0`` and ``temperature = 1``
        give the base back.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        base = self.logging_policy if base is None else base
        z = base.logits / temperature + utility * self.utility
        if diversity:
            z = z + diversity * self.diversity_reward(base)
        nm = name or f"tilt(u={utility:g},d={diversity:g},T={temperature:g})"
        return SoftmaxPolicy(z, nm)

    def optimal_policy(
        self, lam: float, *, steps: int = 2000, lr: float = 5.0, name: str | None = None
    ) -> SoftmaxPolicy:
        r"""Approximately the best softmax policy for :math:`V_\lambda`, by gradient ascent.

        Exact gradient per prompt: :math:`\partial V_\lambda(x)/\partial z_j =
        \pi_j\,(r_j + \lambda d_j - U_\pi(x) - \lambda D_\pi(x))` (:meth:`diversity_reward`).
        """
        z = np.zeros_like(self.utility)
        for _ in range(steps):
            pol = SoftmaxPolicy(z)
            pi = pol.probs
            big_r = self.utility + lam * self.diversity_reward(pol)
            adv = big_r - (pi * big_r).sum(axis=1, keepdims=True)
            z = z + lr * pi * adv
        return SoftmaxPolicy(z, name or f"optimal(lam={lam:g})")

    # ------------------------------------------------------------------ truth
    def coverage(self, policy: SoftmaxPolicy) -> np.ndarray:
        r""":math:`p_\pi(c\mid x) = \sum_j \pi(j\mid x) q(c\mid x, j)`, (P, C)."""
        return np.einsum("pm,pmc->pc", policy.probs, self.aspect_probs)

    def value(self, policy: SoftmaxPolicy, lam: float = 1.0) -> PolicyValue:
        r"""Exact :math:`U`, :math:`D` and :math:`V_\lambda = U + \lambda D` by enumeration."""
        pi = policy.probs
        u = (pi * self.utility).sum(axis=1)
        cov = self.coverage(policy)
        d = entropy(cov) / math.log(self.n_aspects)
        return PolicyValue(
            relevance=float(u.mean()),
            diversity=float(d.mean()),
            lam=float(lam),
            per_prompt_relevance=u,
            per_prompt_diversity=d,
            coverage=cov,
        )

    def list_diversity(
        self, policy: SoftmaxPolicy, k: int, *, n_mc: int = 20000, seed: int | None = 0
    ) -> tuple[float, float]:
        r"""Expected coverage entropy of a list of ``k`` i.i.d. responses, and its stderr.

        :math:`D_K = \mathbb E_x\,\mathbb E_{y_{1..K}\sim\pi}\,H(\frac1K\sum_k q(\cdot\mid y_k))
        / \log C` — the estimand of the plug-in coverage on lists of :math:`K` on-policy
        responses (:math:`D_K \le D`, :math:`D_K \to D` as :math:`K\to\infty`). Exact for
        hard aspects (a sum over the multinomial count vectors); Monte Carlo with ``n_mc``
        lists per prompt for soft aspects (stderr > 0).
        """
        per, var = self.list_diversity_per_prompt(policy, k, n_mc=n_mc, seed=seed)
        return float(per.mean()), float(math.sqrt(var.sum()) / self.n_prompts)

    def list_diversity_per_prompt(
        self, policy: SoftmaxPolicy, k: int, *, n_mc: int = 20000, seed: int | None = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        r""":math:`D_K(x)` per prompt (see :meth:`list_diversity`) and its Monte Carlo variance.

        Returns
        -------
        values, variances : (P,) float (variances are 0 for hard aspects: exact)
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        c_ = self.n_aspects
        if not self.soft_aspects:
            comps = np.array(
                [np.bincount(t, minlength=c_) for t in
                 itertools.combinations_with_replacement(range(c_), k)],
                dtype=np.float64,
            )  # (S, C)
            cov = self.coverage(policy)  # (P, C)
            with np.errstate(divide="ignore", invalid="ignore"):
                logc = np.log(cov)
                # log multinomial pmf; counts > 0 on zero-probability aspects give -inf
                term = np.where(comps[None] > 0, comps[None] * logc[:, None, :], 0.0)
            log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, k + 1)))])
            lf = log_fact[comps.astype(np.int64)].sum(axis=1)
            logpmf = log_fact[k] - lf[None] + term.sum(axis=2)
            h = entropy(comps / k)  # (S,)
            d = (np.exp(logpmf) * h[None]).sum(axis=1) / math.log(c_)
            return d, np.zeros_like(d)
        rng = _rng(seed)
        cdf = np.cumsum(policy.probs, axis=1)
        per_prompt = np.empty(self.n_prompts)
        var = np.empty(self.n_prompts)
        for x in range(self.n_prompts):
            u = rng.random((n_mc, k, 1)) * cdf[x, -1]
            j = np.minimum((u >= cdf[x]).sum(-1), self.n_candidates - 1)
            h = entropy(self.aspect_probs[x][j].mean(axis=1)) / math.log(c_)
            per_prompt[x] = h.mean()
            var[x] = h.var(ddof=1) / n_mc
        return per_prompt, var

    def kl(self, policy: SoftmaxPolicy, base: SoftmaxPolicy | None = None) -> float:
        r""":math:`\mathbb E_x \mathrm{KL}(\pi(\cdot\mid x)\,\|\,\pi_{base}(\cdot\mid x))`."""
        base = self.logging_policy if base is None else base
        lp, lb = policy.log_probs, base.log_probs
        pi = np.exp(lp)
        with np.errstate(invalid="ignore"):
            t = np.where(pi > 0, pi * (lp - lb), 0.0)
        return float(t.sum(axis=1).mean())

    # ------------------------------------------------------------------ logs
    def sample_logs(
        self,
        policy: SoftmaxPolicy | None = None,
        *,
        n_prompts: int | None = None,
        k: int | tuple[int, int] | Sequence[int] | np.ndarray = 4,
        noise: SignalNoise = "bernoulli",
        seed: int | np.random.Generator | None = None,
    ) -> SyntheticLog:
        r"""Draw logs: for each logged prompt, :math:`K_i` i.i.d. responses from ``policy``.

        Parameters
        ----------
        policy : SoftmaxPolicy, optional
            The logging policy (default :math:`\pi_0`); ``log_logging`` is its exact
            log-propensity.
        n_prompts : int, optional
            ``None``: every environment prompt once, in order. Otherwise ``n_prompts`` prompts
            drawn uniformly with replacement (each draw is its own logged prompt).
        k : int, (lo, hi) or (n,) ints
            Responses per prompt; a tuple draws :math:`K_i` uniformly in ``[lo, hi]`` (ragged).
        noise : {"bernoulli", "none"}
            Signal :math:`u\sim\mathrm{Bernoulli}(r)` or :math:`u = r`.
        seed : int or Generator, optional

        Returns
        -------
        SyntheticLog
        """
        rng = _rng(seed)
        policy = self.logging_policy if policy is None else policy
        if n_prompts is None:
            prompts = np.arange(self.n_prompts, dtype=np.int64)
        else:
            if n_prompts < 1:
                raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
            prompts = rng.integers(0, self.n_prompts, size=n_prompts).astype(np.int64)
        counts = _resolve_k(k, prompts.shape[0], rng)
        ptr = _counts_to_ptr(counts)
        resp_prompt = np.repeat(prompts, counts)
        logp = policy.log_probs
        cdf = np.cumsum(np.exp(logp), axis=1)[resp_prompt]
        u = rng.random(resp_prompt.shape[0])[:, None] * cdf[:, -1:]
        cand = np.minimum((u >= cdf).sum(axis=1), self.n_candidates - 1).astype(np.int64)
        # never select a zero-probability candidate (cdf ties)
        lp = logp[resp_prompt, cand]
        if np.isneginf(lp).any():  # pragma: no cover - measure-zero event
            raise RuntimeError("sampled a zero-probability candidate")
        signal = _draw_signal(self.utility[resp_prompt, cand], noise, rng)
        position = np.arange(resp_prompt.shape[0]) - np.repeat(ptr[:-1], counts)
        aspect_kw: dict[str, Any]
        if self.soft_aspects:
            aspect_kw = {"aspect_probs": self.aspect_probs[resp_prompt, cand]}
        else:
            aspect_kw = {"aspect": self.aspect[resp_prompt, cand]}
        fb = LoggedFeedback(
            prompt_ptr=ptr,
            signal=signal,
            log_logging=lp,
            n_aspects=self.n_aspects,
            position=position,
            prompt_ids=np.arange(prompts.shape[0]),
            **aspect_kw,
        )
        return SyntheticLog(env=self, feedback=fb, prompt=prompts, candidate=cand,
                            logging_policy=policy)

    def fit_reward_model(self, log: SyntheticLog, *, ridge: float = 1e-3) -> np.ndarray:
        r"""A (deliberately misspecified) reward model fitted on the logs, for DM / DR.

        Ridge least squares of the logged reward on the observable features
        :math:`\phi(x, j) = (q_{xj}\,s_{xj},\ q_{xj},\ 1)` — it cannot see the latent group, so
        it learns the group-averaged preference. Predictions for every candidate, clipped to
        ``[0, 1]``.

        Returns
        -------
        (P, M) float
        """
        q, s = self.aspect_probs, self.quality[..., None]
        feats = np.concatenate([q * s, q, np.ones_like(s)], axis=-1)  # (P, M, 2C+1)
        x = feats[log.response_prompt, log.candidate]
        y = log.feedback.signal
        a = x.T @ x + ridge * np.eye(x.shape[1])
        beta = np.linalg.solve(a, x.T @ y)
        return np.clip(feats @ beta, 0.0, 1.0)


# ----------------------------------------------------------------------------- token level
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
        return self.env.log_prob(model, self.response_prompt, self.tokens,
                                 batch_size=batch_size).sum(axis=1)


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
        counts = _resolve_k(k, prompts.shape[0], rng)
        ptr = _counts_to_ptr(counts)
        resp_prompt = np.repeat(prompts, counts)
        tokens, tok_lp = self.sample(model, resp_prompt, seed=int(rng.integers(2**62)))
        util = self.utility(resp_prompt, tokens)
        signal = _draw_signal(util, noise, rng)
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
        return TokenLog(env=self, feedback=fb, prompt=prompts.astype(np.int64), tokens=tokens,
                        utility=util)
