"""OffPolicyTrainer, PopeDataset/PopeCollator, pope_forward and the transformers.Trainer drop-in.

Tiny models built from a config and a word-level tokenizer built here (no downloads).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tokenizers  # noqa: F401 (in the test extra, with transformers: no skip)
import torch
import transformers

from pope.objective import PopeObjective
from pope.scoring import ContextLengthError, score_responses
from pope.train import (
    OffPolicyTrainer,
    PopeCollator,
    PopeDataset,
    PopeTrainerMixin,
    TrainConfig,
    TrainingExample,
    make_compute_loss,
    pope_forward,
    token_budget_batches,
)

WORDS = (
    "the a cat dog sat on mat red blue green why how what is big small ran fast slow and "
    "bird fish tree sun"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def make_tokenizer():
    """A word-level tokenizer over WORDS that prepends [BOS] (built locally)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", vocab["[BOS]"])]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=t,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def tiny_gpt2(seed: int = 0, dropout: float = 0.0, n_positions: int = 48):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=len(SPECIAL) + len(WORDS),
        n_positions=n_positions,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=len(SPECIAL) + len(WORDS),
        max_position_embeddings=48,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg)


def make_records(n_prompts=4, k=3, seed=0, log_logging=None, soft=False):
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n_prompts):
        prompt = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))
        for _ in range(k):
            resp = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 6))))
            aspect = list(rng.dirichlet(np.ones(3))) if soft else int(rng.integers(0, 3))
            recs.append(
                dict(
                    prompt_id=f"p{i}",
                    prompt=prompt,
                    response=resp,
                    reward=float(rng.uniform()),
                    aspect=aspect,
                    log_logging=None if log_logging is None else float(log_logging[len(recs)]),
                )
            )
    # interleave prompts (grouping must not depend on input order)
    order = rng.permutation(len(recs))
    return [recs[i] for i in order]


def cfg(tmp_path, **kw):
    base = dict(
        lr=5e-3,
        token_budget=4096,
        max_steps=2,
        output_dir=str(tmp_path / "out"),
        progress=False,
        save_final=False,
        lam=0.5,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- data


def test_dataset_groups_by_prompt_and_collates_response_only_labels(tok):
    recs = make_records(log_logging=-np.arange(1.0, 13.0))
    ds = PopeDataset.from_records(recs, reward_normalization="none").tokenize(tok, add_eos=True)
    assert ds.n_prompts == 4 and ds.n_responses == 12 and len(ds) == 4
    # grouping: order of first appearance; rows keep their input order within a prompt
    first = list(dict.fromkeys(r["prompt_id"] for r in recs))
    assert ds.prompt_ids == first
    for i, pid in enumerate(first):
        lo, hi = ds.prompt_ptr[i], ds.prompt_ptr[i + 1]
        rows = [j for j, r in enumerate(recs) if r["prompt_id"] == pid]
        assert ds.row_index[lo:hi].tolist() == rows
        assert ds.responses[lo:hi] == [recs[j]["response"] for j in rows]
    batch = PopeCollator(tok.pad_token_id)([ds[0], ds[2]])
    b = batch["input_ids"].shape[0]
    assert b == int(np.diff(ds.prompt_ptr)[[0, 2]].sum())
    assert batch["prompt_index"].tolist() == [0] * 3 + [2] * 3
    for j in range(b):
        g, k = (0, j) if j < 3 else (2, j - 3)
        rec = recs[ds.row_index[ds.prompt_ptr[g] + k]]
        p_ids = tok(rec["prompt"])["input_ids"]
        r_ids = tok(rec["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(p_ids) + len(r_ids)
        assert batch["input_ids"][j, :n].tolist() == p_ids + r_ids
        assert (batch["input_ids"][j, n:] == tok.pad_token_id).all()
        assert batch["attention_mask"][j].sum() == n
        lab = batch["labels"][j]
        assert lab[: len(p_ids)].eq(-100).all() and lab[n:].eq(-100).all()
        assert lab[len(p_ids) : n].tolist() == r_ids
        assert batch["rewards"][j].item() == pytest.approx(rec["reward"], rel=1e-6)
        assert batch["aspects"][j].item() == rec["aspect"]
        assert batch["log_logging"][j].item() == rec["log_logging"]


def test_reward_normalization_and_soft_aspects(tok):
    recs = make_records(soft=True)
    for r in recs:
        r["reward"] = 10 * r["reward"]
    ds = PopeDataset.from_records(recs, reward_normalization="max")
    assert ds.aspects.shape == (12, 3)
    for i in range(ds.n_prompts):
        lo, hi = ds.prompt_ptr[i], ds.prompt_ptr[i + 1]
        assert ds.rewards[lo:hi].max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PopeDataset.from_records(recs, reward_normalization="none")
    # the default is "max", as in pope.evaluate and the CLI: raw votes need no option
    np.testing.assert_array_equal(PopeDataset.from_records(recs).rewards, ds.rewards)
    ex = [TrainingExample(**r) for r in recs]
    np.testing.assert_array_equal(PopeDataset.from_examples(ex).rewards, ds.rewards)


@pytest.mark.parametrize(
    "edit, exc, match",
    [
        (lambda r: r[0].update(reward=float("nan")), ValueError, "NaN"),
        (lambda r: r[0].update(response=""), ValueError, "empty"),
        (lambda r: r[0].update(response="the " * 60), ContextLengthError, "context"),
        (
            lambda r: r[1].update(prompt_id=r[0]["prompt_id"], prompt="x y"),
            ValueError,
            "two different prompt texts",
        ),
        (lambda r: r[0].update(log_logging=0.5), ValueError, "log_logging"),
        (lambda r: r[0].update(aspect=-1), ValueError, "aspect"),
        (lambda r: r[0].update(color="red"), ValueError, "unknown fields"),
    ],
)
def test_bad_data_raise_clear_errors(tok, tmp_path, edit, exc, match):
    recs = make_records(log_logging=-np.ones(12))
    edit(recs)
    with pytest.raises(exc, match=match):
        ds = PopeDataset.from_records(recs)
        OffPolicyTrainer(tiny_gpt2(), tok, ds, cfg(tmp_path))


def test_from_examples_equals_from_records():
    recs = make_records(log_logging=-np.arange(1.0, 13.0))
    a = PopeDataset.from_records(recs)
    b = PopeDataset.from_examples([TrainingExample(**r) for r in recs])
    assert a.prompt_ids == b.prompt_ids and a.responses == b.responses
    np.testing.assert_array_equal(a.rewards, b.rewards)
    np.testing.assert_array_equal(a.aspects, b.aspects)
    np.testing.assert_array_equal(a.log_logging, b.log_logging)
    mixed = [
        TrainingExample("p", "a b", "c", 0.5, 1),
        TrainingExample("p", "a b", "d", 0.5, [0.5, 0.5]),
    ]
    with pytest.raises(ValueError, match="mix of hard"):
        PopeDataset.from_examples(mixed)


def test_from_arrays_mismatched_lengths():
    with pytest.raises(ValueError, match="response has length 2, expected 3"):
        PopeDataset.from_arrays(
            prompt_id=[0, 0, 1],
            prompt=["a", "a", "b"],
            response=["x", "y"],
            reward=[0.1, 0.2, 0.3],
            aspect=[0, 1, 0],
        )
    with pytest.raises(ValueError, match="reward has length 2"):
        PopeDataset.from_arrays(
            prompt_id=[0, 0, 1],
            prompt=["a", "a", "b"],
            response=["x", "y", "z"],
            reward=[0.1, 0.2],
            aspect=[0, 1, 0],
        )
    with pytest.raises(ValueError, match="exactly one of aspect"):
        PopeDataset.from_arrays(prompt_id=[0], prompt=["a"], response=["x"], reward=[0.1])


def test_missing_logprobs_without_reference_model_is_an_error(tok, tmp_path):
    ds = PopeDataset.from_records(make_records())
    with pytest.raises(ValueError, match="no log_logging and no reference_model"):
        OffPolicyTrainer(tiny_gpt2(), tok, ds, cfg(tmp_path))
    ds = PopeDataset.from_records(make_records(log_logging=-np.ones(12)))
    with pytest.raises(ValueError, match="beta > 0"):
        OffPolicyTrainer(tiny_gpt2(), tok, ds, cfg(tmp_path, beta=0.1))
    with pytest.raises(ValueError, match="log_logging is missing"):
        PopeCollator()([PopeDataset.from_records(make_records()).tokenize(tok)[0]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_budget_batches_keep_prompts_whole_and_fit(seed):
    rng = np.random.default_rng(seed)
    groups = [rng.integers(3, 40, size=int(rng.integers(1, 6))) for _ in range(30)]
    budget = 256
    batches = token_budget_batches(groups, budget)
    seen = sorted(g for b in batches for g in b)
    assert seen == list(range(30))
    for b in batches:
        n = sum(len(groups[g]) for g in b)
        m = max(int(groups[g].max()) for g in b)
        assert n * m <= budget
    assert len(batches) < 30  # packing happened
    with pytest.raises(ValueError, match="token_budget"):
        token_budget_batches([np.array([50, 60])], 100)


def test_train_config_validation():
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainConfig(grad_accum_steps=0)
    with pytest.raises(ValueError, match="ppo_eps"):
        TrainConfig(ppo_eps=2.0)
    with pytest.raises(ValueError, match="lm_head"):
        TrainConfig(lm_head="both")


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("make_model", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_pope_forward_hidden_head_equals_logits_and_plain_formula(tok, make_model):
    model = make_model().eval()
    recs = make_records(seed=3)
    ds = PopeDataset.from_records(recs).tokenize(tok)
    ds.compute_logprobs(model, tok)
    batch = PopeCollator(tok.pad_token_id)([ds[i] for i in range(ds.n_prompts)])
    obj = PopeObjective(lam=0.5, clip=2.0)
    grads = {}
    for head in ("logits", "hidden"):
        model.zero_grad()
        out = pope_forward(model, batch, obj, lm_head=head)
        out.loss.backward()
        grads[head] = [p.grad.clone() for p in model.parameters()]
        # at theta = pi0 every weight is 1
        torch.testing.assert_close(
            out.log_weights, torch.zeros_like(out.log_weights), atol=1e-4, rtol=0
        )
    for a, b in zip(grads["logits"], grads["hidden"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # independent: HF logits, causal shift and log_softmax by hand
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    tgt = batch["labels"][:, 1:]
    tok_lp = lp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * (tgt != -100)
    torch.testing.assert_close(out.logp, tok_lp.sum(1), rtol=1e-5, atol=1e-4)
    assert any(g.abs().sum() > 0 for g in grads["logits"])


# ----------------------------------------------------------------------------- trainer


def test_reference_model_initial_fills_logging_and_weights_start_at_one(tok, tmp_path):
    model = tiny_gpt2()
    ds = PopeDataset.from_records(make_records())
    tr = OffPolicyTrainer(model, tok, ds, cfg(tmp_path), reference_model="initial")
    prompts = [ds.prompts[i] for i in ds.prompt_index]
    # defaults on both sides: the trainer tokenises what score_responses (pope evaluate,
    # pope score) scores, so the policy at step 0 has weights exactly 1
    direct = score_responses(model, tok, prompts, ds.responses, progress=False)
    np.testing.assert_allclose(ds.log_logging, direct, rtol=1e-6)
    m = tr.evaluate()
    assert m["ess"] == pytest.approx(ds.n_responses, rel=1e-4)
    assert m["weight_mean"] == pytest.approx(1.0, rel=1e-4)
    assert m["relevance"] == pytest.approx(ds.rewards.mean(), rel=1e-4)


def test_a_few_steps_raise_the_estimated_value(tok, tmp_path):
    ds = PopeDataset.from_records(make_records(n_prompts=4, k=4, seed=7))
    tr = OffPolicyTrainer(
        tiny_gpt2(seed=1),
        tok,
        ds,
        cfg(tmp_path, max_steps=8, lr=3e-3, clip=20.0, schedule="constant"),
        reference_model="initial",
    )
    assert len(tr.batches) == 1
    before = tr.evaluate()
    res = tr.train()
    after = tr.evaluate()
    assert res.step == 8
    assert after["total"] > before["total"] + 0.02
    assert after["relevance"] > before["relevance"]
    assert after["ess"] < ds.n_responses  # the policy moved away from pi0
    totals = [row["total"] for row in res.history]
    assert totals[-1] > totals[0]


def test_lora_trains_only_the_adapters_and_saves_a_loadable_adapter(tok, tmp_path):
    import peft  # in the test extra: no skip

    ds = PopeDataset.from_records(make_records(n_prompts=4, k=4, seed=7))
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True}
    conf = cfg(
        tmp_path, max_steps=8, lr=3e-2, clip=20.0, schedule="constant", lora=lora, save_final=True
    )
    tr = OffPolicyTrainer(tiny_gpt2(seed=1), tok, ds, conf, reference_model="initial")
    assert isinstance(tr.model, peft.PeftModel)
    trainable = {n for n, p in tr.inner_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {
        n: p.detach().clone() for n, p in tr.inner_model.named_parameters() if not p.requires_grad
    }
    before = tr.evaluate()
    assert before["weight_mean"] == pytest.approx(1.0, rel=1e-4)  # B = 0: the adapter is a no-op
    tr.train()
    after = tr.evaluate()
    assert after["total"] > before["total"] + 0.02
    for n, p in tr.inner_model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(p.abs().max() > 0 for n, p in tr.inner_model.named_parameters() if "lora_B" in n)
    # the saved adapter, put on a fresh copy of the base model, is the trained policy
    final = tmp_path / "out" / "final"
    assert (final / "adapter_config.json").exists()
    reloaded = peft.PeftModel.from_pretrained(tiny_gpt2(seed=1), final).eval()
    tr.inner_model.eval()
    ids = torch.tensor([ds.input_ids[0].tolist()])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, tr.inner_model(ids).logits)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_checkpoint_resume_reproduces_the_next_step_exactly(tok, tmp_path):
    recs = make_records(n_prompts=6, k=3, seed=5)
    # dropout on: the resumed step must also restore the RNG
    conf = cfg(
        tmp_path,
        max_steps=3,
        save_every=2,
        grad_accum_steps=2,
        token_budget=60,
        disable_dropout=False,
        warmup_steps=1,
        ppo_eps=0.2,
    )
    a = OffPolicyTrainer(
        tiny_gpt2(seed=0, dropout=0.1),
        tok,
        PopeDataset.from_records(recs),
        conf,
        reference_model="initial",
    )
    assert len(a.batches) >= 3  # 6 micro-batches over 3 steps: the stream crosses epochs
    res_a = a.train()
    assert (tmp_path / "out" / "checkpoint-2" / "model.pt").exists()
    # a different initial model: everything must come from the checkpoint
    b = OffPolicyTrainer(
        tiny_gpt2(seed=9, dropout=0.1),
        tok,
        PopeDataset.from_records(recs),
        conf,
        reference_model="initial",
    )
    assert b.latest_checkpoint().name == "checkpoint-2"
    res_b = b.train(resume_from="latest")
    assert res_b.step == 3 and len(res_b.history) == 1
    pa, pb = _params(a.model), _params(b.model)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    row_a, row_b = res_a.history[-1], res_b.history[-1]
    for k in row_a:
        if k != "seconds":
            assert row_a[k] == row_b[k] or (np.isnan(row_a[k]) and np.isnan(row_b[k])), k
    # and the step did change the parameters
    ckpt = torch.load(tmp_path / "out" / "checkpoint-2" / "model.pt")
    assert any(not torch.equal(ckpt[k], pa[k]) for k in ckpt)
    # metrics file: one JSON row per step; run b replaced a's row of step 3 (after the
    # checkpoint it resumed from) with its own, bit-identical one
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["loss"] == res_b.history[-1]["loss"] == res_a.history[-1]["loss"]
    for key in (
        "loss",
        "relevance",
        "diversity",
        "total",
        "ess",
        "weight_mean",
        "weight_max",
        "clip_fraction",
        "lr",
    ):
        assert key in rows[0]


def test_gradient_accumulation_equals_one_big_batch(tok, tmp_path):
    recs = make_records(n_prompts=4, k=3, seed=2)
    small = cfg(tmp_path, token_budget=30, grad_accum_steps=2, max_steps=1, max_grad_norm=None)
    big = cfg(tmp_path, token_budget=4096, grad_accum_steps=1, max_steps=1, max_grad_norm=None)
    grads = []
    for conf in (small, big):
        tr = OffPolicyTrainer(
            tiny_gpt2(seed=4),
            tok,
            PopeDataset.from_records(recs),
            conf,
            reference_model=tiny_gpt2(seed=5),
        )
        mbs, n_total = tr.step_batches(0)
        if conf is small:
            assert len(mbs) == 2 and n_total < 12  # two of the micro-batches
            # make the step cover all prompts: restrict the big run to the same prompts
            prompts = sorted(g for b in mbs for g in tr.batches[b])
        else:
            tr.batches = [prompts]
            tr.batch_sizes = [sum(int(np.diff(tr.dataset.prompt_ptr)[g]) for g in prompts)]
        tr.train_step()
        grads.append({k: p.grad.clone() for k, p in tr.model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-7)


def test_kl_penalty_uses_reference_token_logprobs(tok, tmp_path):
    ds = PopeDataset.from_records(make_records(log_logging=None))
    tr = OffPolicyTrainer(
        tiny_gpt2(), tok, ds, cfg(tmp_path, beta=0.5, max_steps=3), reference_model="initial"
    )
    assert ds.ref_token_logprobs is not None
    assert [len(t) for t in ds.ref_token_logprobs] == list(ds.lengths - ds.prompt_lengths)
    assert tr.evaluate()["kl"] == pytest.approx(0.0, abs=1e-6)
    res = tr.train()
    assert res.history[-1]["kl"] > 0


def test_lora_without_peft_is_a_clear_error(tok, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    ds = PopeDataset.from_records(make_records(log_logging=-np.ones(12)))
    with pytest.raises(ImportError, match="peft"):
        OffPolicyTrainer(tiny_gpt2(), tok, ds, cfg(tmp_path, lora={"r": 4}))


# ----------------------------------------------------------------------------- HF Trainer


def test_transformers_trainer_drop_in_two_steps(tok, tmp_path):
    import accelerate  # noqa: F401 (transformers.Trainer needs it; in the test extra)

    model = tiny_gpt2(seed=3)
    ds = PopeDataset.from_records(make_records(n_prompts=4, k=3, seed=8)).tokenize(tok)
    ds.compute_logprobs(model, tok)
    before = _params(model)
    objective = PopeObjective(lam=0.5, ppo_eps=0.2)

    class Trainer(PopeTrainerMixin, transformers.Trainer):
        pass

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=PopeCollator(tok.pad_token_id),
        pope_objective=objective,
    )
    out = trainer.train()
    assert out.global_step == 2
    after = _params(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    logged = [h for h in trainer.state.log_history if "pope/total" in h]
    assert len(logged) == 2 and all(np.isfinite(h["pope/ess"]) for h in logged)
    # compute_loss is exactly the objective on the collated batch
    batch = PopeCollator(tok.pad_token_id)([ds[0], ds[1]])
    loss, res = trainer.compute_loss(model, batch, return_outputs=True)
    direct = pope_forward(model, batch, objective)
    torch.testing.assert_close(loss, direct.loss)
    fn = make_compute_loss(objective)
    torch.testing.assert_close(fn(model, batch), direct.loss)
    assert res.stats.metrics()["n_seqs"] == 6


def test_transformers_trainer_logs_every_micro_batch_of_a_step_once(tok, tmp_path, monkeypatch):
    """With gradient accumulation the logged estimates cover every micro-batch of the step
    (not the last one only), and the statistics reach the host once per logged step (not
    once per micro-batch)."""
    import accelerate  # noqa: F401 (transformers.Trainer needs it; in the test extra)

    from pope.objective import ObjectiveStats

    model = tiny_gpt2(seed=3)
    ds = PopeDataset.from_records(make_records(n_prompts=4, k=3, seed=8)).tokenize(tok)
    ds.compute_logprobs(model, tok)
    syncs = []
    real = ObjectiveStats.metrics

    def counted(self):
        syncs.append(float(self.n_seqs))
        return real(self)

    monkeypatch.setattr(ObjectiveStats, "metrics", counted)

    class Trainer(PopeTrainerMixin, transformers.Trainer):
        pass

    # one prompt (3 responses) per micro-batch, 2 micro-batches per optimizer step
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=2,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=PopeCollator(tok.pad_token_id),
        pope_objective=PopeObjective(lam=0.5, num_aspects=3),
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "pope/total" in h]
    assert len(logged) == 2
    assert [h["pope/n_seqs"] for h in logged] == [6.0, 6.0]  # both micro-batches, merged
    assert [h["pope/n_prompts"] for h in logged] == [2.0, 2.0]
    assert syncs == [6.0, 6.0]  # one metrics() per logged step, on the merged statistics
    assert trainer.pope_last_metrics["n_seqs"] == 6.0 and len(syncs) == 2  # cached
    # a call outside training replaces them (its own estimates)
    batch = PopeCollator(tok.pad_token_id)([ds[0]])
    trainer.compute_loss(model, batch)
    assert trainer.pope_last_metrics["n_seqs"] == 3.0


def test_trainer_mixin_merges_a_steps_micro_batches_or_falls_back_with_a_warning(tok):
    """Without a Trainer: micro-batches of one step merge; statistics that cannot merge (each
    micro-batch inferred its own number of aspects) log the last one's, with a warning."""
    from types import SimpleNamespace

    class Base:
        def __init__(self, *args, **kwargs):
            self.state = SimpleNamespace(global_step=0)

    model = tiny_gpt2(seed=3)
    ds = PopeDataset.from_records(make_records(n_prompts=4, k=3, seed=8)).tokenize(tok)
    ds.compute_logprobs(model, tok)
    collate = PopeCollator(tok.pad_token_id)
    # prompts whose labels span different ranges: C inferred per batch differs
    asp = [int(ds[i]["aspects"].max()) for i in range(ds.n_prompts)]
    i, j = next((i, j) for i in range(4) for j in range(4) if asp[i] != asp[j])
    for objective, n_expected, warns in (
        (PopeObjective(num_aspects=3), 6.0, False),
        (PopeObjective(), 3.0, True),
    ):
        t = type("T", (PopeTrainerMixin, Base), {})(pope_objective=objective)
        t._pope_in_step = True
        for k in (i, j):
            t.compute_loss(model, collate([ds[k]]))
        t._pope_in_step = False
        if warns:
            with pytest.warns(RuntimeWarning, match="num_aspects"):
                assert t.pope_last_metrics["n_seqs"] == n_expected
        else:
            assert t.pope_last_metrics["n_seqs"] == n_expected
        t.state.global_step = 1  # the next step starts afresh
        t._pope_in_step = True
        t.compute_loss(model, collate([ds[i]]))
        assert t.pope_last_metrics["n_seqs"] == 3.0


@pytest.mark.parametrize("seed", range(3))
def test_group_rows_numeric_and_object_paths_agree_with_first_appearance(seed):
    """pope.data.group_rows (shared by LoggedFeedback and PopeDataset): the numpy.unique path
    and the dict path give the same grouping, prompts in order of first appearance."""
    from pope.data import group_rows

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 7, size=int(rng.integers(0, 30)))
    fast, slow = group_rows(ids), group_rows([f"p{v}" for v in ids])
    for name in ("order", "prompt_ptr", "group", "first"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
    seen = list(dict.fromkeys(ids.tolist()))  # ids in order of first appearance
    assert ids[fast.first].tolist() == seen
    for g, v in enumerate(seen):
        rows = fast.order[fast.prompt_ptr[g] : fast.prompt_ptr[g + 1]]
        assert rows.tolist() == np.flatnonzero(ids == v).tolist()
