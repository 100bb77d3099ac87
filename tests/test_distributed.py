"""Two CPU processes on gloo give the same statistics and gradients as one process.

The global batch has 10 sequences of 4 prompts; the shards split prompts 0-2 across the two
ranks, so the per-prompt coverage and baseline need the keyed all-reduce. Scaling checked:

* DDP (gradients averaged over W ranks) with ``grad_reduction="mean"``: each rank's loss is
  multiplied by W, so the averaged gradient equals the single-process gradient;
* no wrapper, ``grad_reduction="sum"``, explicit ``all_reduce(SUM)`` of the gradients;
* per-sequence leaves: each rank's gradient w.r.t. its own ``logp`` is W times (``"mean"``)
  or exactly (``"sum"``) the matching slice of the single-process gradient.
"""

from __future__ import annotations

import copy
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pope.distributed import DistInfo, dist_info, union_keys
from pope.objective import PopeObjective

WORLD = 2
V, H, T = 19, 8, 7
PROMPT = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3]) * 5 + 3  # global prompt ids
SHARDS = [torch.tensor([0, 3, 5, 6]), torch.tensor([1, 2, 4, 7, 8, 9])]
CONFIGS = {
    "plain": dict(lam=0.7),
    "clip_token_mean_kl": dict(lam=0.5, clip=1.5, weighting="token_mean", beta=0.2),
    "ppo_ips_soft": dict(lam=1.0, ppo_eps=0.2, coverage="ips"),
}


class TinyCausalLM(nn.Module):
    """Duck-typed stand-in for a transformers causal LM (``model(input_ids=...).logits``).

    Causal by construction (prefix means), so right padding does not leak backwards. Used for
    the trainer-under-DDP test: building a transformers model in each spawned process costs
    seconds of imports on 2 cores.
    """

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=64)
        self.emb = nn.Embedding(vocab, H)
        self.mid = nn.Linear(H, H)
        self.head = nn.Linear(H, vocab)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        h = self.emb(input_ids)
        steps = torch.arange(1, input_ids.shape[1] + 1, dtype=h.dtype)[None, :, None]
        h = torch.cumsum(h, 1) / steps
        return SimpleNamespace(logits=self.head(torch.tanh(self.mid(h))))


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.mid = nn.Linear(H, H)
        self.head = nn.Linear(H, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.emb(ids))))


def make_data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = PROMPT.shape[0]
    ids = torch.randint(0, V, (s, T), generator=g)
    lengths = torch.randint(2, T, (s,), generator=g)
    pos = torch.arange(T)
    labels = torch.where(pos[None] < lengths[:, None], torch.roll(ids, -1, 1), -100)
    labels[:, 0] = -100  # prompt token
    return dict(
        ids=ids,
        labels=labels,
        rewards=torch.rand(s, generator=g),
        log_logging=-torch.rand(s, generator=g) * 4 - 2.0 * lengths,
        aspects=torch.randint(0, 3, (s,), generator=g),
        soft=torch.softmax(torch.randn(s, 3, generator=g), 1),
        ref=-torch.rand(s, T, generator=g) * 3 - 1,
        logp_leaf=-torch.rand(s, generator=g, dtype=torch.float64) * 10 - 5,
    )


def run_config(name: str, model: nn.Module, data: dict, idx: torch.Tensor, **extra):
    opts = CONFIGS[name]
    obj = PopeObjective(num_aspects=3, **opts, **extra)
    logits = model(data["ids"][idx])
    out = obj(
        logits,
        data["labels"][idx],
        rewards=data["rewards"][idx],
        prompt_index=PROMPT[idx],
        log_logging=data["log_logging"][idx],
        aspects=(data["soft"] if name == "ppo_ips_soft" else data["aspects"])[idx],
        ref_logprobs=data["ref"][idx] if opts.get("beta") else None,
    )
    return out


def leaf_grad(data: dict, idx: torch.Tensor, **extra) -> tuple[torch.Tensor, dict]:
    logp = data["logp_leaf"][idx].clone().requires_grad_(True)
    out = PopeObjective(lam=0.8, clip=2.0, **extra)(
        logp=logp,
        rewards=data["rewards"][idx].double(),
        prompt_index=PROMPT[idx],
        log_logging=(data["logp_leaf"] + 0.3 * torch.sin(torch.arange(10.0)).double())[idx],
        aspects=data["aspects"][idx],
    )
    out.loss.backward()
    return logp.grad, out.metrics()


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        base = TinyLM()
        data = make_data()
        idx = SHARDS[rank]
        res: dict = {}
        for name in CONFIGS:
            # DDP, gradients averaged, local loss scaled by W (grad_reduction="mean")
            ddp = nn.parallel.DistributedDataParallel(copy.deepcopy(base))
            out = run_config(name, ddp, data, idx)
            out.loss.backward()
            res[f"{name}/ddp"] = {k: p.grad.clone() for k, p in ddp.module.named_parameters()}
            res[f"{name}/metrics"] = out.metrics()
            res[f"{name}/coverage"] = out.coverage.clone()
            # no wrapper, explicit SUM all-reduce (grad_reduction="sum")
            m = copy.deepcopy(base)
            out = run_config(name, m, data, idx, grad_reduction="sum")
            out.loss.backward()
            for p in m.parameters():
                dist.all_reduce(p.grad)
            res[f"{name}/sum"] = {k: p.grad.clone() for k, p in m.named_parameters()}
        res["leaf/mean"] = leaf_grad(data, idx)[0]
        res["leaf/sum"], res["leaf/metrics"] = leaf_grad(data, idx, grad_reduction="sum")
        info = dist_info()
        keys = torch.tensor([7, 3, 7] if rank == 0 else [11, 3, 5, 42, 5])
        res["union"] = union_keys(keys, info)
        res["info"] = (info.enabled, info.world_size, info.rank)
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
        _trainer_part(rank, outdir)
    finally:
        dist.destroy_process_group()


def _trainer_config(outdir: str, accum: int):
    from pope.train import TrainConfig

    return TrainConfig(
        lr=5e-3,
        token_budget=60,
        grad_accum_steps=accum,
        max_steps=1,
        output_dir=outdir,
        progress=False,
        save_final=False,
        lam=0.5,
        clip=5.0,
        seed=0,
    )


def _trainer_part(rank: int, outdir: str) -> None:
    """OffPolicyTrainer on a DDP-wrapped tiny causal LM, one micro-batch per rank."""
    from test_train import make_records, make_tokenizer

    from pope.train import OffPolicyTrainer, PopeDataset

    tok = make_tokenizer()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TinyCausalLM(len(tok)))
    ds = PopeDataset.from_records(make_records(n_prompts=6, k=3, seed=5))
    tr = OffPolicyTrainer(
        model,
        tok,
        ds,
        _trainer_config(os.path.join(outdir, str(rank)), accum=1),
        reference_model="initial",
    )
    mbs, _ = tr.step_batches(0)
    row = tr.train_step()
    res = {
        "row": row,
        "mbs": mbs,
        "grads": {k: p.grad.clone() for k, p in model.module.named_parameters()},
        "params": {k: p.detach().clone() for k, p in model.module.named_parameters()},
    }
    torch.save(res, os.path.join(outdir, f"trainer{rank}.pt"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    outdir = str(tmp_path_factory.mktemp("dist"))
    mp.spawn(_worker, args=(_free_port(), outdir), nprocs=WORLD, join=True)
    out = []
    for r in range(WORLD):
        res = torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=True)
        res["trainer"] = torch.load(os.path.join(outdir, f"trainer{r}.pt"), weights_only=True)
        out.append(res)
    return out


def single_process(name: str):
    torch.manual_seed(0)
    model = TinyLM()
    data = make_data()
    out = run_config(name, model, data, torch.arange(PROMPT.shape[0]))
    out.loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}, out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_and_allreduce_gradients_equal_single_process(rank_results, name):
    grads, _ = single_process(name)
    assert any(g.abs().sum() > 0 for g in grads.values())
    for r in range(WORLD):
        for mode in ("ddp", "sum"):
            got = rank_results[r][f"{name}/{mode}"]
            for k, g in grads.items():
                torch.testing.assert_close(got[k], g, rtol=1e-4, atol=1e-6, msg=f"{mode} {k}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_metrics_and_coverage_are_global_on_every_rank(rank_results, name):
    _, out = single_process(name)
    ref = out.metrics()
    for r in range(WORLD):
        got = rank_results[r][f"{name}/metrics"]
        for k, v in ref.items():
            if k == "loss":
                continue  # the local loss holds only the rank's sequences
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
        torch.testing.assert_close(rank_results[r][f"{name}/coverage"], out.coverage)


def test_per_sequence_gradient_scaling(rank_results):
    data = make_data()
    g_full, m_full = leaf_grad(data, torch.arange(PROMPT.shape[0]))
    assert g_full.abs().sum() > 0
    for r in range(WORLD):
        idx = SHARDS[r]
        torch.testing.assert_close(rank_results[r]["leaf/sum"], g_full[idx])
        torch.testing.assert_close(rank_results[r]["leaf/mean"], WORLD * g_full[idx])
        for k, v in m_full.items():
            if k != "loss":
                assert rank_results[r]["leaf/metrics"][k] == pytest.approx(v, rel=1e-12), k


def test_union_keys(rank_results):
    for r in range(WORLD):
        keys, pos = rank_results[r]["union"]
        assert keys.tolist() == [3, 5, 7, 11, 42]
        local = torch.tensor([7, 3, 7] if r == 0 else [11, 3, 5, 42, 5])
        assert (keys[pos] == local).all()
        assert rank_results[r]["info"] == (True, WORLD, r)


def test_single_process_helpers_without_init():
    info = dist_info()
    assert info == DistInfo(False, 1, 0, None)
    keys, pos = union_keys(torch.tensor([4, 2, 4]), info)
    assert keys.tolist() == [2, 4] and pos.tolist() == [1, 0, 1]
    with pytest.raises(RuntimeError, match="not initialised"):
        dist_info(enabled=True)


def test_offpolicy_trainer_under_ddp_equals_single_process_accumulation(rank_results, tmp_path):
    """W ranks x 1 micro-batch == 1 process x W accumulated micro-batches (same stream)."""
    from test_train import make_records, make_tokenizer

    from pope.train import OffPolicyTrainer, PopeDataset

    ranks = [r["trainer"] for r in rank_results]
    tok = make_tokenizer()
    torch.manual_seed(0)
    model = TinyCausalLM(len(tok))
    ds = PopeDataset.from_records(make_records(n_prompts=6, k=3, seed=5))
    tr = OffPolicyTrainer(
        model,
        tok,
        ds,
        _trainer_config(str(tmp_path / "single"), accum=WORLD),
        reference_model="initial",
    )
    mbs, _ = tr.step_batches(0)
    assert [r["mbs"][0] for r in ranks] == mbs  # rank r took micro-batch r of the step
    row = tr.train_step()
    for r in ranks:
        for k, p in model.named_parameters():
            torch.testing.assert_close(r["grads"][k], p.grad, rtol=1e-4, atol=1e-6, msg=k)
            torch.testing.assert_close(r["params"][k], p.detach(), rtol=1e-4, atol=1e-6, msg=k)
        for k in ("relevance", "diversity", "total", "ess", "weight_max", "n_seqs", "n_prompts"):
            assert r["row"][k] == pytest.approx(row[k], rel=1e-5), k
