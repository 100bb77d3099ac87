r"""Response-level environment: :class:`CandidateEnv` (finite candidates, exact truths),
:class:`SoftmaxPolicy` over its candidates and the :class:`SyntheticLog` drawn from it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pope.data import LoggedFeedback
from pope.synthetic.sampling import (
    SignalNoise,
    as_rng,
    counts_to_ptr,
    draw_signal,
    responses_per_prompt,
)
from pope.synthetic.values import PolicyValue, entropy, log_softmax

__all__ = ["CandidateEnv", "SoftmaxPolicy", "SyntheticLog"]


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
        return log_softmax(self.logits)

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
        for name in (
            "group",
            "preference",
            "aspect",
            "aspect_probs",
            "quality",
            "utility",
            "logging_logits",
        ):
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
                [
                    np.bincount(t, minlength=c_)
                    for t in itertools.combinations_with_replacement(range(c_), k)
                ],
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
        rng = as_rng(seed)
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
        rng = as_rng(seed)
        policy = self.logging_policy if policy is None else policy
        if n_prompts is None:
            prompts = np.arange(self.n_prompts, dtype=np.int64)
        else:
            if n_prompts < 1:
                raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
            prompts = rng.integers(0, self.n_prompts, size=n_prompts).astype(np.int64)
        counts = responses_per_prompt(k, prompts.shape[0], rng)
        ptr = counts_to_ptr(counts)
        resp_prompt = np.repeat(prompts, counts)
        logp = policy.log_probs
        cdf = np.cumsum(np.exp(logp), axis=1)[resp_prompt]
        u = rng.random(resp_prompt.shape[0])[:, None] * cdf[:, -1:]
        cand = np.minimum((u >= cdf).sum(axis=1), self.n_candidates - 1).astype(np.int64)
        # never select a zero-probability candidate (cdf ties)
        lp = logp[resp_prompt, cand]
        if np.isneginf(lp).any():  # pragma: no cover - measure-zero event
            raise RuntimeError("sampled a zero-probability candidate")
        signal = draw_signal(self.utility[resp_prompt, cand], noise, rng)
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
        return SyntheticLog(
            env=self, feedback=fb, prompt=prompts, candidate=cand, logging_policy=policy
        )

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
