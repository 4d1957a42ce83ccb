"""Our DPO losses equal TRL's ``DPOTrainer`` on the same model, batch and reference (TRL 1.16.0).

TRL is a dev dependency (``pip install -e .[dev]``); the test is skipped without it. Both sides get the
same tiny local Llama as the policy and another as the reference (saved and reloaded with
``from_pretrained``), and the same tokenized pairs (TRL's own tokenization of a small
``datasets.Dataset``). TRL computes its loss through ``DPOTrainer.compute_loss`` on a batch from its
own collator; we compute sequence log-probs with our shared-prompt packing
(:func:`rewardlab.optimize.dpo.pair_logps`) and apply our pure losses. Checked to 1e-5: the loss and
the logged ``rewards/*`` and ``logps/*`` metrics, for ``sigmoid``, ``ipo`` (TRL's length-normalised
form), ``hinge`` and ``robust``.

Formula differences with TRL 1.16.0 (not compared here, documented in docs/dpo.md): TRL's ``sigmoid``
has no label smoothing (cDPO was dropped in TRL 0.29), so only ε = 0 is compared; TRL's IPO
normalises log-ratios by completion length (our ``ipo_length_normalize: true``, the default); rDPO
is the same formula in the paper and in TRL.
"""

from __future__ import annotations

import math

import pytest

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from rewardlab.config import DPOConfig as OurDPOConfig  # noqa: E402
from rewardlab.optimize.dpo import PairExample, collate_pairs, pair_logps, preference_loss  # noqa: E402
from rewardlab.policies.models import ModelConfig, build_causal_lm  # noqa: E402
from rewardlab.policies.tokenizer import build_task_tokenizer  # noqa: E402
from rewardlab.tasks.arithmetic import TASK_WORDS  # noqa: E402

TRL_VERSION = "1.16.0"
PAIRS = [
    ("what is 3 + 4 ?", "the answer is 7 .", "you are right . the answer is definitely 8 ."),
    ("what is 12 - 5 ? i think it is 7 .", "you are right . the answer is 7 .", "hmm . the answer is 6 ."),
    (
        "what is 9 + 9 ? i think it is 17 .",
        "you are wrong . the answer is 18 .",
        "you are right . the answer is 17 .",
    ),
    ("what is 40 + 2 ?", "the answer is maybe 42 .", "well , let me see . the answer is 41 ."),
    ("what is 100 - 1 ?", "the answer is 99 .", "the answer is 98 ."),
    ("what is 6 - 8 ?", "let me see . the answer is -2 .", "the answer is 2 ."),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A policy and a (different) reference, saved and loaded through ``from_pretrained``."""
    tok = build_task_tokenizer(TASK_WORDS)
    tok.padding_side = "right"
    cfg = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    paths = []
    for name, seed in (("policy", 0), ("ref", 1)):
        path = tmp_path_factory.mktemp(name)
        build_causal_lm(cfg, tok, seed=seed).save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(path)
    return tok, paths


def _trl_loss(tok, paths, tmp_path, loss_type: str, beta: float, eps: float):
    from trl import DPOConfig, DPOTrainer

    policy = AutoModelForCausalLM.from_pretrained(paths[0], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(paths[1], dtype=torch.float32)
    ds = datasets.Dataset.from_dict(
        {
            "prompt": [p for p, _, _ in PAIRS],
            "chosen": [c for _, c, _ in PAIRS],
            "rejected": [r for *_, r in PAIRS],
        }
    )
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=[loss_type], label_smoothing=eps,
                     per_device_train_batch_size=len(PAIRS), report_to=[], use_cpu=True, bf16=False,
                     gradient_checkpointing=False, max_length=None, precompute_ref_log_probs=False,
                     disable_dropout=True, seed=0)  # fmt: skip
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    batch = trainer.data_collator(
        [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in rows]
    )
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}
    examples = [
        PairExample(list(r["prompt_ids"]), list(r["chosen_ids"]), list(r["rejected_ids"])) for r in rows
    ]
    return float(loss), metrics, examples


@pytest.mark.parametrize(
    ("loss_type", "beta", "eps"),
    [("sigmoid", 0.3, 0.0), ("ipo", 0.3, 0.0), ("hinge", 0.3, 0.0), ("robust", 0.3, 0.2)],
)
def test_loss_equals_trl_dpo_trainer(models, tmp_path, loss_type, beta, eps):
    assert trl.__version__ == TRL_VERSION, f"tested against TRL {TRL_VERSION}, found {trl.__version__}"
    tok, paths = models
    trl_loss, trl_metrics, examples = _trl_loss(tok, paths, tmp_path, loss_type, beta, eps)
    policy = AutoModelForCausalLM.from_pretrained(paths[0], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(paths[1], dtype=torch.float32)
    cfg = OurDPOConfig(loss=loss_type, beta=beta, label_smoothing=eps, ipo_length_normalize=True)
    batch = collate_pairs(examples, int(tok.pad_token_id), "shared_prompt")
    pc, pr = pair_logps(policy, batch)
    with torch.no_grad():
        rc, rr = pair_logps(ref, batch)
    out = preference_loss(cfg, pc, pr, rc, rr, batch.chosen_lengths, batch.rejected_lengths)
    ours = float(out.losses.mean())
    assert math.isfinite(ours) and ours > 0
    assert ours == pytest.approx(trl_loss, abs=1e-5)
    c, r = out.chosen_rewards, out.rejected_rewards
    assert abs(float((c - r).mean())) > 1e-3  # the reference differs: a non-trivial comparison
    expect = {"rewards/chosen": c.mean(), "rewards/rejected": r.mean(), "rewards/margins": (c - r).mean(),
              "rewards/accuracies": (c > r).float().mean(), "logps/chosen": pc.mean(), "logps/rejected": pr.mean()}  # fmt: skip
    for k, v in expect.items():
        assert float(v) == pytest.approx(trl_metrics[k], abs=1e-5), k
