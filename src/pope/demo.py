r"""``pope demo``: off-policy evaluation and alignment on synthetic ground truth, end to end.

Two parts, both on :mod:`pope.synthetic` environments whose true values are known:

1. **Evaluation** (response level, :class:`~pope.synthetic.CandidateEnv`). Logs of ``K``
   i.i.d. responses per prompt are drawn from the logging policy :math:`\pi_0`; several target
   policies, from :math:`\pi_0` itself to far away, are evaluated with every estimator (see
   :func:`evaluation_suite`) and compared with the exact truth by enumeration.
2. **Alignment** (token level, :class:`~pope.synthetic.TokenEnv`). A tiny GPT-2 logging policy
   writes ``K`` responses per prompt; three copies of it are trained off-policy on these logs
   only — with the POPE objective (:class:`pope.objective.PopeObjective`, :math:`\lambda>0`),
   with the utility-only objective (:math:`\lambda = 0`), and with reward-weighted fine-tuning
   (supervised NLL weighted by the reward, :func:`rwft_loss`). Each policy's *true* relevance
   and diversity are measured on-policy by sampling (never by an estimator) before, during
   and after training.

Writes ``results.json`` and ``demo.png`` into ``--out``. Run ``python -m pope.demo --help``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pope.demo_output import make_figure, print_evaluation, print_training, to_jsonable
from pope.synthetic import CandidateEnv, SoftmaxPolicy, SyntheticLog, TokenEnv, TokenLog

__all__ = [
    "DemoConfig",
    "add_arguments",
    "evaluation_suite",
    "joint_list_reward",
    "main",
    "run",
    "rwft_loss",
    "train_policy",
    "true_values",
]

METHODS = ("pope", "utility", "rwft")
METHOD_LABELS = {
    "pope": "POPE (lambda>0)",
    "utility": "utility-only (lambda=0)",
    "rwft": "reward-weighted FT",
}


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run (``full()`` for the default, ``quick()`` for tests)."""

    env_prompts: int = 300
    env_candidates: int = 10
    n_aspects: int = 4
    k: int = 16
    clip: float = 10.0
    token_prompts: int = 8
    token_k: int = 128
    sft_steps: int = 150
    train_steps: int = 100
    lr: float = 1e-3
    train_clip: float = 10.0
    eval_every: int = 10
    eval_samples: int = 400
    final_samples: int = 3000

    @classmethod
    def full(cls) -> DemoConfig:
        """The default run (about a minute on two idle CPU cores)."""
        return cls()

    @classmethod
    def quick(cls) -> DemoConfig:
        """A much smaller run (tests; well under 30 s)."""
        return cls(
            env_prompts=60,
            env_candidates=8,
            k=8,
            token_prompts=4,
            token_k=32,
            sft_steps=30,
            train_steps=12,
            eval_every=4,
            eval_samples=100,
            final_samples=300,
        )


# ----------------------------------------------------------------------------- truth
def true_values(env: CandidateEnv, policy: SoftmaxPolicy, lam: float, k: int) -> dict[str, float]:
    r"""Exact truths of ``policy``: :math:`U`, :math:`D`, :math:`V = U + \lambda D`, and the
    list versions :math:`D_K`, :math:`V_K = U + \lambda D_K` (:meth:`CandidateEnv.list_diversity`,
    the estimand of the joint list estimators), and :math:`\mathrm{KL}(\pi\|\pi_0)`."""
    v = env.value(policy, lam)
    dk, _ = env.list_diversity(policy, k)
    return {
        "relevance": v.relevance,
        "diversity": v.diversity,
        "total": v.total,
        "list_diversity": dk,
        "list_total": v.relevance + lam * dk,
        "kl": env.kl(policy),
    }


def joint_list_reward(log: SyntheticLog, lam: float) -> np.ndarray:
    r"""Total reward of each logged list, :math:`R_i = \frac1{K_i}\sum_k r_{ik} + \lambda
    H(\bar q_i)/\log C` with :math:`\bar q_i = \frac1{K_i}\sum_k q_{ik}` (unweighted).

    This is the reward a "joint" estimator attaches to the list of prompt :math:`i` treated as
    a single action; its expectation under a policy is :math:`U + \lambda D_K`.
    """
    fb = log.feedback
    ptr = fb.prompt_ptr[:-1]
    k = fb.counts.astype(np.float64)
    r = fb.rewards("none")
    rbar = np.add.reduceat(r, ptr) / k
    q = fb.aspect_rows()
    qbar = np.add.reduceat(q, ptr, axis=0) / k[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(qbar > 0, qbar * np.log(np.where(qbar > 0, qbar, 1.0)), 0.0).sum(1)
    return rbar + lam * h / math.log(q.shape[1])


def _row(name: str, family: str, quantity: str, est: Any, truth: float) -> dict[str, Any]:
    lo, hi = est.ci(0.05, "normal")
    ess = est.diagnostics.ess
    return {
        "estimator": name,
        "family": family,
        "quantity": quantity,
        "truth": float(truth),
        "estimate": float(est.value),
        "stderr": float(est.stderr),
        "ci_lower": float(lo),
        "ci_upper": float(hi),
        "covered": bool(lo <= truth <= hi),
        "ess": float(ess),
        "error": float(est.value - truth),
    }


def evaluation_suite(
    log: SyntheticLog,
    target: SoftmaxPolicy,
    *,
    lam: float,
    truth: dict[str, float],
    clip: float = 10.0,
    reward_model: np.ndarray | None = None,
    lists: bool = True,
    list_diversity_prompt: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    r"""Every estimator on one log and one target, each row against its truth.

    Families (the ``family`` field):

    * ``"relevance"`` — single-response estimators of :math:`U` on the per-response rewards
      with weights :math:`w_{ik} = \pi(y_{ik}|x_i)/\pi_0(y_{ik}|x_i)`: IPS, SNIPS, IPS clipped
      at :math:`M` = ``clip``, sub-Gaussian IPS (:math:`\lambda_{SG} = \min(1,
      \sqrt{\log(1/0.05)/(N\,\overline{w^2})})`, data-driven), DM, DR, SNDR, Switch-DR
      (:math:`\tau = M`). DM/DR use ``reward_model`` (default: the misspecified model of
      :meth:`CandidateEnv.fit_reward_model` fitted on this log).
    * ``"list"`` — slate estimators on the :math:`K`-lists (needs equal :math:`K_i`):
      SIPS, IIPS, RIPS estimate :math:`\mathbb E\sum_l r_l = K\,U`; rows report value / K.
      Responses are i.i.d., so conditional = marginal propensities.
    * ``"pope"`` — :func:`pope.evaluate` with its defaults: decomposed relevance (SNIPS) and
      diversity (minimax polynomial estimator of the coverage entropy, whose interval carries
      its bias bound) and their total; and the IPS-relevance variant of the total.
    * ``"joint"`` — the list of each prompt as one action with total reward
      :func:`joint_list_reward` and list weight :math:`W_i = \prod_k w_{ik}`: IPS (= SIPS on
      the total), SNIPS, clipped IPS, DM and DR (reward model + the exact aspect tagger for
      the diversity term, :math:`\hat V_i = \hat v(x_i) + \lambda D_K(x_i)`), truth :math:`V`;
      and ``"IPS r+lam*d"``, per-response IPS on :math:`r_{ik} + \lambda d_{ik}` with POPE's
      diversity reward :math:`d_{ik}`.

    ``truth`` holds the exact ``relevance``, ``diversity`` and ``total``
    (:func:`true_values`); ``list_diversity_prompt`` optionally gives :math:`D_K(x)` of the
    target for every *environment* prompt (:meth:`CandidateEnv.list_diversity_per_prompt`,
    :math:`K` = the log's median :math:`K_i`), to save recomputing it for each log.

    Returns
    -------
    list of dict
        ``estimator, family, quantity, truth, estimate, stderr, ci_lower, ci_upper, covered,
        ess, error`` (95% normal intervals).
    """
    import pope
    from pope import estimators as E

    env = log.env
    fb = log.feedback
    r = fb.rewards("none")
    lt = log.log_prob(target)
    ll = fb.log_logging
    rm = env.fit_reward_model(log) if reward_model is None else reward_model
    rhat = log.reward_hat(rm)
    vhat_prompt = log.value_hat(target, rm)
    vhat = vhat_prompt[fb.prompt_index]
    u, d, v = truth["relevance"], truth["diversity"], truth["total"]
    rows: list[dict[str, Any]] = []
    w2 = float(np.mean(np.exp(2 * np.minimum(lt - ll, 700.0))))
    lam_sg = min(1.0, math.sqrt(math.log(1 / 0.05) / (r.size * max(w2, 1e-12))))
    base: dict[str, Any] = {"reward": r, "log_target": lt, "log_logging": ll}
    mdl: dict[str, Any] = {"reward_hat": rhat, "value_hat": vhat}
    rel = [
        ("IPS", E.ips(**base)),
        ("SNIPS", E.snips(**base)),
        (f"IPS clip {clip:g}", E.ips(**base, clip=clip)),
        ("SG-IPS", E.sub_gaussian_ips(**base, lam=lam_sg)),
        ("DM", E.dm(value_hat=vhat, **base, reward_hat=rhat)),
        ("DR", E.dr(**base, **mdl)),
        ("SNDR", E.sndr(**base, **mdl)),
        (f"Switch-DR tau {clip:g}", E.switch_dr(**base, **mdl, tau=clip)),
    ]
    rows += [_row(n, "relevance", "U", e, u) for n, e in rel]
    counts = fb.counts
    if lists and counts.size and np.all(counts == counts[0]):
        kk = int(counts[0])
        shape = (fb.n_prompts, kk)
        lb: dict[str, Any] = {
            "reward": r.reshape(shape) / kk,
            "log_target": lt.reshape(shape),
            "log_logging": ll.reshape(shape),
        }
        for n, fn in (("SIPS/K", E.sips), ("IIPS/K", E.iips), ("RIPS/K", E.rips)):
            rows.append(_row(n, "list", "U", fn(**lb), u))
    pe = pope.evaluate(fb, lt, lam=lam, reward_normalization="none")
    pe_ips = pope.evaluate(fb, lt, lam=lam, reward_normalization="none", relevance="ips")
    rows += [
        _row("POPE relevance", "pope", "U", pe.relevance, u),
        _row("POPE diversity", "pope", "D", pe.diversity, d),
        _row("POPE total", "pope", "V", pe.total, v),
        _row("POPE total (IPS rel.)", "pope", "V", pe_ips.total, v),
    ]
    rows += _joint_rows(
        log,
        target,
        lam=lam,
        clip=clip,
        truth=v,
        rhat=rhat,
        vhat_prompt=vhat_prompt,
        list_diversity_prompt=list_diversity_prompt,
    )
    dr_resp = np.asarray(pe.diversity_reward)
    rows.append(
        _row(
            "IPS r+lam*d",
            "joint",
            "V",
            E.ips(reward=r + lam * dr_resp, log_target=lt, log_logging=ll),
            v,
        )
    )
    return rows


def _joint_rows(
    log: SyntheticLog,
    target: SoftmaxPolicy,
    *,
    lam: float,
    clip: float,
    truth: float,
    rhat: np.ndarray,
    vhat_prompt: np.ndarray,
    list_diversity_prompt: np.ndarray | None,
) -> list[dict[str, Any]]:
    """The ``"joint"`` rows of :func:`evaluation_suite` (estimators of :math:`V` on the joint
    list reward)."""
    from pope import estimators as E

    env, fb, v = log.env, log.feedback, truth
    r, counts = fb.rewards("none"), fb.counts
    big_r = joint_list_reward(log, lam)
    lt_list, ll_list = log.list_log_prob(target), log.list_log_prob(log.logging_policy)
    jb: dict[str, Any] = {"reward": big_r, "log_target": lt_list, "log_logging": ll_list}
    if list_diversity_prompt is None:
        kmed = int(np.median(counts))
        list_diversity_prompt = env.list_diversity_per_prompt(target, kmed, n_mc=2000)[0]
    dk_prompt = np.asarray(list_diversity_prompt)[log.prompt]
    jv = vhat_prompt + lam * dk_prompt
    rbar_hat = np.add.reduceat(rhat, fb.prompt_ptr[:-1]) / counts
    jr_hat = rbar_hat + (big_r - np.add.reduceat(r, fb.prompt_ptr[:-1]) / counts)
    jm: dict[str, Any] = {"reward_hat": jr_hat, "value_hat": jv}
    joint = [
        ("joint IPS (=SIPS)", E.ips(**jb)),
        ("joint SNIPS", E.snips(**jb)),
        (f"joint IPS clip {clip:g}", E.ips(**jb, clip=clip)),
        ("joint DM", E.dm(value_hat=jv, **jb, reward_hat=jr_hat)),
        ("joint DR", E.dr(**jb, **jm)),
    ]
    return [_row(n, "joint", "V", e, v) for n, e in joint]


def target_policies(env: CandidateEnv, lam: float) -> list[SoftmaxPolicy]:
    """The demo's targets, from :math:`\\pi_0` itself to far away."""
    return [
        env.logging_policy.renamed("pi0 (on-policy)"),
        env.tilt(utility=1.0, name="near: tilt u=1"),
        env.tilt(utility=2.0, diversity=1.0, name="mid: tilt u=2 d=1"),
        env.tilt(utility=5.0, name="far: tilt u=5"),
        env.uniform_policy().renamed("far: uniform"),
        env.optimal_policy(lam, name=f"far: optimal lam={lam:g}"),
    ]


# ----------------------------------------------------------------------------- training
def rwft_loss(logits: Any, labels: Any, rewards: Any) -> Any:
    r"""Reward-weighted fine-tuning loss (supervised NLL weighted by the reward).

    .. math:: L(\theta) = -\frac{\sum_{ik} r_{ik}\log\pi_\theta(y_{ik}\mid x_i)}{\sum_{ik} r_{ik}}

    Parameters
    ----------
    logits : (S, T, V) tensor, aligned with ``labels`` (``logits[:, t]`` predicts
        ``labels[:, t]``)
    labels : (S, T) int64
    rewards : (S,) float in [0, 1]
    """
    import torch

    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None])[..., 0]
    seq = lp.sum(dim=1)
    return -(rewards.to(seq.dtype) * seq).sum() / rewards.sum().clamp_min(1e-12)


def train_policy(
    method: str,
    env: TokenEnv,
    pi0: Any,
    log: TokenLog,
    *,
    lam: float,
    steps: int,
    lr: float,
    clip: float | None,
    eval_every: int,
    eval_samples: int,
    seed: int,
    progress: bool = True,
) -> tuple[Any, list[dict[str, float]], list[dict[str, float]]]:
    r"""Train a copy of ``pi0`` off-policy on ``log`` (full batch, Adam).

    ``method``: ``"pope"`` (:class:`~pope.objective.PopeObjective` with :math:`\lambda` =
    ``lam``), ``"utility"`` (the same objective with :math:`\lambda = 0`) or ``"rwft"``
    (:func:`rwft_loss`). The objective uses truncation at ``clip`` (gradient zero for ratios
    above it), the per-prompt mean baseline and the logged rewards as given.

    Returns
    -------
    model, history, train_metrics
        ``history``: the true on-policy value (``eval_samples`` per prompt) at step 0 and every
        ``eval_every`` steps; ``train_metrics``: the objective's own estimates per step.
    """
    import torch
    from tqdm.auto import tqdm

    from pope.objective import PopeObjective

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    fb = log.feedback
    model = copy.deepcopy(pi0)
    model.train()
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rp = log.response_prompt
    labels = torch.as_tensor(log.tokens, dtype=torch.long)
    rewards = torch.tensor(fb.rewards("none"), dtype=torch.float64)
    prompt_index = torch.tensor(fb.prompt_index)
    log_logging = torch.tensor(fb.log_logging)
    aspects = torch.tensor(fb.aspect)
    obj = None
    if method != "rwft":
        obj = PopeObjective(
            lam=lam if method == "pope" else 0.0, clip=clip, num_aspects=env.n_aspects
        )
    history: list[dict[str, float]] = []
    metrics: list[dict[str, float]] = []

    def measure(step: int) -> None:
        v = env.value(model, lam, n_per_prompt=eval_samples, seed=seed * 1000 + step)
        history.append({"step": step, **v.as_dict()})

    measure(0)
    bar = tqdm(
        range(1, steps + 1),
        desc=f"train {method:8s}",
        disable=not progress,
        leave=False,
        file=sys.stderr,
    )
    for step in bar:
        logits = env.response_logits(model, rp, log.tokens)
        if obj is None:
            loss = rwft_loss(logits, labels, rewards)
            metrics.append({"step": step, "loss": float(loss.detach())})
        else:
            out = obj(
                logits=logits,
                labels=labels,
                rewards=rewards,
                prompt_index=prompt_index,
                log_logging=log_logging,
                aspects=aspects,
            )
            loss = out.loss
            metrics.append({"step": step, **out.metrics()})
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            measure(step)
            h = history[-1]
            bar.set_postfix(U=f"{h['relevance']:.3f}", D=f"{h['diversity']:.3f}")
    model.eval()
    return model, history, metrics


# ----------------------------------------------------------------------------- parts
def run_evaluation(cfg: DemoConfig, *, seed: int, lam: float, progress: bool) -> dict[str, Any]:
    """Part 1: every estimator on several targets against the exact truth."""
    from tqdm.auto import tqdm

    env = CandidateEnv.make(
        n_prompts=cfg.env_prompts,
        n_candidates=cfg.env_candidates,
        n_aspects=cfg.n_aspects,
        seed=seed,
    )
    log = env.sample_logs(k=cfg.k, seed=seed + 1)  # every prompt once, K responses each
    policies = target_policies(env, lam)
    out = []
    for pol in tqdm(
        policies, desc="evaluate targets", disable=not progress, leave=False, file=sys.stderr
    ):
        truth = true_values(env, pol, lam, cfg.k)
        rows = evaluation_suite(log, pol, lam=lam, truth=truth, clip=cfg.clip)
        out.append({"policy": pol.name, "truth": truth, "estimates": rows})
    return {
        "env": {
            "n_prompts": env.n_prompts,
            "n_candidates": env.n_candidates,
            "n_aspects": env.n_aspects,
            "log_prompts": log.feedback.n_prompts,
            "k": cfg.k,
            "n_responses": log.feedback.n_responses,
            "clip": cfg.clip,
        },
        "policies": out,
    }


def run_training(cfg: DemoConfig, *, seed: int, lam: float, progress: bool) -> dict[str, Any]:
    """Part 2: train the tiny LM three ways; true values before and after."""
    import pope

    env = TokenEnv.make(n_prompts=cfg.token_prompts, n_aspects=cfg.n_aspects, seed=seed)
    pi0 = env.logging_policy(seed=seed, steps=cfg.sft_steps)
    log = env.sample_logs(pi0, k=cfg.token_k, seed=seed + 1)
    heldout = env.sample_logs(pi0, k=cfg.token_k, seed=seed + 2)
    before = env.value(pi0, lam, n_per_prompt=cfg.final_samples, seed=seed + 3)
    res: dict[str, Any] = {
        "env": {
            "n_prompts": env.n_prompts,
            "vocab_size": env.vocab_size,
            "response_length": env.response_length,
            "n_aspects": env.n_aspects,
            "k": cfg.token_k,
            "n_responses": log.feedback.n_responses,
            "steps": cfg.train_steps,
            "lr": cfg.lr,
            "clip": cfg.train_clip,
        },
        "before": before.as_dict(),
        "methods": {},
    }
    for method in METHODS:
        model, hist, metrics = train_policy(
            method,
            env,
            pi0,
            log,
            lam=lam,
            steps=cfg.train_steps,
            lr=cfg.lr,
            clip=cfg.train_clip,
            eval_every=cfg.eval_every,
            eval_samples=cfg.eval_samples,
            seed=seed,
            progress=progress,
        )
        after = env.value(model, lam, n_per_prompt=cfg.final_samples, seed=seed + 4)
        ests = {}
        for nm, lg in (("train_log", log), ("heldout_log", heldout)):
            pe = pope.evaluate(
                lg.feedback, lg.log_prob(model), lam=lam, reward_normalization="none"
            )
            ests[nm] = {
                "relevance": float(pe.relevance.value),
                "diversity": float(pe.diversity.value),
                "total": float(pe.total.value),
                "total_ci": [float(x) for x in pe.total.ci(0.05)],
                "ess": float(pe.diagnostics.ess),
            }
        res["methods"][method] = {
            "label": METHOD_LABELS[method],
            "after": after.as_dict(),
            "history": hist,
            "final_train_metrics": metrics[-1] if metrics else {},
            "pope_estimate": ests,
        }
    return res


# ----------------------------------------------------------------------------- printing
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pope demo`` options to ``parser``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("./pope-demo"),
        help="output directory for results.json and demo.png (default: ./pope-demo)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--quick", action="store_true", help="a much smaller run (for tests; < 30 s)"
    )
    parser.add_argument(
        "--lam",
        type=float,
        default=1.0,
        help="lambda, weight of the diversity in V = U + lambda D (default 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the model is tiny and more threads only add overhead)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=argparse.SUPPRESS,
        help="hide the progress bars",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed ``args``; returns the exit status."""
    import torch

    if args.lam < 0:
        print("error: --lam must be >= 0", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.threads and args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    cfg = DemoConfig.quick() if args.quick else DemoConfig.full()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = bool(getattr(args, "progress", True))
    ev = run_evaluation(cfg, seed=args.seed, lam=args.lam, progress=progress)
    print_evaluation(ev)
    t1 = time.perf_counter()
    tr = run_training(cfg, seed=args.seed, lam=args.lam, progress=progress)
    print_training(tr, args.lam)
    t2 = time.perf_counter()
    results = {
        "config": {"seed": args.seed, "quick": bool(args.quick), "lam": args.lam, **cfg.__dict__},
        "evaluation": ev,
        "training": tr,
        "runtime_s": {"evaluation": t1 - t0, "training": t2 - t1},
    }
    fig_path = out / "demo.png"
    try:
        make_figure(results, fig_path)
    except ImportError as exc:  # matplotlib is the optional "plot" extra
        print(f"warning: no figure ({exc}); pip install 'pope[plot]'", file=sys.stderr)
    results["runtime_s"]["total"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(to_jsonable(results), indent=1))
    print(f"\nwrote {out / 'results.json'} and {fig_path} ({results['runtime_s']['total']:.1f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pope.demo``."""
    parser = argparse.ArgumentParser(
        prog="pope demo",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
