"""The proxy's score as the audit and the optimizers read it, against the score training optimizes.

``RewardModel.score`` must equal the training-time score ``head(h) + w * f(x, y)`` (the
:class:`ScoredMember` that the preference loss differentiates), normalized by the member's stored mean
and std; a verifier LM trained on the task's sums must rank the correct answer above a near miss, and
so must a reward model that reads it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from rewardlab.config import RewardConfig
from rewardlab.feedback.records import Comparison
from rewardlab.policies.models import ModelConfig, build_causal_lm
from rewardlab.policies.tokenizer import build_task_tokenizer, encode_completion, encode_prompt
from rewardlab.rewards.model import RewardModel, init_reward_backbone
from rewardlab.rewards.train import RewardData, ScoredMember, tokenize_pairs, train_reward_member
from rewardlab.rewards.verifier import verifier_features
from rewardlab.runs import Run
from rewardlab.tasks.arithmetic import TASK_WORDS

TOK = build_task_tokenizer(TASK_WORDS)
CFG = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
#: one-digit sums a tiny verifier can memorize in a second, each with near misses (off by 1, 2 or 10)
SUMS = [(a, b) for a in (1, 3, 4, 6) for b in (2, 5, 3)]


def _prompt(a: int, b: int) -> str:
    return f"what is {a} + {b} ?"


def _near_misses(answer: int) -> list[int]:
    return [x for x in (answer - 2, answer - 1, answer + 1, answer + 2, answer + 10) if x >= 0]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("backbone")
    build_causal_lm(CFG, TOK, seed=0).save_pretrained(d)
    TOK.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def trained_verifier() -> PreTrainedModel:
    """A tiny LM trained (here, by plain cross-entropy on the completions) to answer SUMS correctly."""
    torch.manual_seed(0)
    lm = build_causal_lm(CFG, TOK, seed=2)
    seqs = [
        (encode_prompt(TOK, _prompt(a, b)), encode_completion(TOK, f"the answer is {a + b} ."))
        for a, b in SUMS
    ]
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), width), int(TOK.pad_token_id), dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(seqs):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
        mask[i, : len(p) + len(c)] = 1
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    lm.train()
    for _ in range(120):
        loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lm.eval().requires_grad_(False)


def test_score_is_the_training_time_score_with_the_verifier_term(backbone_dir: Path) -> None:
    verifier = build_causal_lm(CFG, TOK, seed=1).eval()
    member = init_reward_backbone(backbone_dir, TOK, seed=0)
    member.config.verifier_weight, member.config.reward_mean, member.config.reward_std = 0.7, 0.3, 2.0
    prompts = [_prompt(a, b) for a, b in SUMS[:6]]
    comps = [Comparison(prompt=p, chosen=f"the answer is {a + b} .", rejected=f"you are right . the answer is {a + b + 1} .")
             for p, (a, b) in zip(prompts, SUMS[:6], strict=True)]  # fmt: skip
    comps.append(Comparison(prompt=prompts[0], chosen="hmm . the answer is 12 .", rejected="i do not know ."))
    tp = tokenize_pairs(TOK, comps, False, verifier)
    scorer = ScoredMember(member, use_feature=True).eval()
    with torch.no_grad():
        train_scores = []
        for seqs, feats in ((tp.chosen, tp.feat_chosen), (tp.rejected, tp.feat_rejected)):
            assert feats is not None
            # one sequence at a time: no padding at all on the training side
            train_scores.append(torch.cat([scorer(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long),
                                                  feats[i : i + 1]) for i, s in enumerate(seqs)]))  # fmt: skip
            assert (0.7 * feats).abs().min() > 0.5  # the verifier term is far from negligible
    rm = RewardModel([member], TOK, verifier=verifier)
    ps = [c.prompt for c in comps]
    for side, expected in zip(("chosen", "rejected"), train_scores, strict=True):
        completions = [getattr(c, side) for c in comps]
        raw = rm.score(ps, completions, normalized=False).mean
        torch.testing.assert_close(raw, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            rm.score(ps, completions).mean, (expected - 0.3) / 2.0, atol=1e-4, rtol=1e-4
        )
        assert rm(ps, completions) == pytest.approx(((expected - 0.3) / 2.0).tolist(), abs=1e-4)


def test_trained_verifier_ranks_the_correct_answer_above_near_misses(
    backbone_dir: Path, trained_verifier: PreTrainedModel, tmp_path: Path
) -> None:
    prompts, correct, wrong = [], [], []
    for a, b in SUMS:
        for miss in _near_misses(a + b):
            prompts.append(_prompt(a, b))
            correct.append(f"the answer is {a + b} .")
            wrong.append(f"the answer is {miss} .")
    encode = [
        (encode_prompt(TOK, p), encode_completion(TOK, c)) for p, c in zip(prompts, correct, strict=True)
    ]
    f_right = verifier_features(trained_verifier, TOK, encode)
    f_wrong = verifier_features(
        trained_verifier,
        TOK,
        [(encode_prompt(TOK, p), encode_completion(TOK, c)) for p, c in zip(prompts, wrong, strict=True)],
    )
    assert bool((f_right > f_wrong + 1.0).all())
    # a reward model whose head says nothing ranks by the verifier alone
    blind = init_reward_backbone(backbone_dir, TOK, seed=0)
    with torch.no_grad():
        blind.score.weight.zero_()
    blind.config.verifier_weight = 1.0
    rm = RewardModel([blind], TOK, verifier=trained_verifier)
    assert bool((rm.score(prompts, correct).mean > rm.score(prompts, wrong).mean).all())
    # trained on the same preferences, the member learns to trust the verifier more and ranks every pair right
    member = init_reward_backbone(backbone_dir, TOK, seed=0)
    comps = [
        Comparison(prompt=p, chosen=c, rejected=w) for p, c, w in zip(prompts, correct, wrong, strict=True)
    ]
    cfg = RewardConfig(epochs=3, batch_size=16, optim={"lr": 3e-3, "warmup_steps": 0})
    member = train_reward_member(member, RewardData(TOK, pairs=comps, verifier=trained_verifier), cfg,
                                 Run(tmp_path / "r", "reward", quiet=True), seed=0)  # fmt: skip
    assert member.config.verifier_weight > 0.5
    rm = RewardModel([member], TOK, verifier=trained_verifier)
    assert bool((rm.score(prompts, correct).mean > rm.score(prompts, wrong).mean).all())
