"""PopeTrainerMixin with a real TRL trainer class (trl.SFTTrainer) on a tiny model built from a
config, fed a TRL-style ``prompt``/``completion`` dataset through pope.readers.read_trl and
PopeDataset. Nothing is downloaded."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
import trl  # in the test extra: an import error fails here, it is not skipped
from test_train import WORDS, make_tokenizer, tiny_gpt2

from pope.objective import PopeObjective
from pope.readers import read_trl
from pope.scoring import score_responses
from pope.train import PopeCollator, PopeDataset, PopeTrainerMixin, pope_forward


class PopeSFTTrainer(PopeTrainerMixin, trl.SFTTrainer):
    """TRL's SFTTrainer with the POPE loss."""


def trl_records(seed=0, n_prompts=4, k=3):
    rng = np.random.default_rng(seed)
    recs = []
    for _ in range(n_prompts):
        prompt = " ".join(rng.choice(WORDS, size=3))
        for _k in range(k):
            recs.append(
                {
                    "prompt": prompt,
                    "completion": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5)))),
                    "label": bool(rng.integers(0, 2)),
                }
            )
    return recs


def test_trl_dataset_and_sft_trainer_with_the_pope_loss(tmp_path):
    tok = make_tokenizer()
    model = tiny_gpt2(seed=3)
    hf = datasets.Dataset.from_list(trl_records())
    log = read_trl(hf)  # TRL's unpaired-preference convention: label True/False -> 1/0
    assert list(log.columns[:4]) == ["prompt_id", "prompt", "response", "signal"]
    ds = PopeDataset.from_arrays(
        prompt_id=list(log.prompt_id),
        prompt=list(log.prompt),
        response=list(log.response),
        reward=log.signal.to_numpy(),
        aspect=np.arange(len(log)) % 2,
        reward_normalization="none",
    ).tokenize(tok)
    assert ds.responses == list(hf["completion"]) and ds.n_prompts == 4
    prompts = [ds.prompts[i] for i in ds.prompt_index]
    ds.log_logging = score_responses(model, tok, prompts, ds.responses, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = ds.to_hf_dataset()
    assert len(rows) == ds.n_prompts and rows[1]["input_ids"] == [
        a.tolist() for a in ds[1]["input_ids"]
    ]
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "sft"),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=True,
        disable_tqdm=True,
    )
    objective = PopeObjective(lam=0.5)
    trainer = PopeSFTTrainer(
        model=model,
        args=args,
        train_dataset=ds.to_hf_dataset(),
        data_collator=PopeCollator(tok.pad_token_id),
        processing_class=tok,
        pope_objective=objective,
    )
    # the loss at the initial policy is the POPE loss of pope_forward on the same batch
    batch = PopeCollator(tok.pad_token_id)([ds[0], ds[1]])
    with torch.no_grad():
        direct = pope_forward(model, batch, objective).loss
        via = trainer.compute_loss(model, batch)
    torch.testing.assert_close(via, direct)
    assert trainer.pope_last_metrics["weight_mean"] == pytest.approx(1.0, rel=1e-5)
    out = trainer.train()
    assert out.global_step == 2
    logged = [h for h in trainer.state.log_history if "pope/total" in h]
    assert len(logged) == 2 and all(np.isfinite(h["pope/ess"]) for h in logged)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the POPE gradient reached the weights through TRL's loop
