"""Shared-prefix packing of comparisons (``reward.shared_prompt``): the packed row scores what two rows score."""

import random

import pytest
import torch

from rewardlab.config import RewardConfig
from rewardlab.feedback.records import Comparison
from rewardlab.policies.packing import pack_shared_prefix, split_common_prefix
from rewardlab.policies.tokenizer import build_task_tokenizer
from rewardlab.rewards.model import (
    RewardModel,
    can_pack_pairs,
    collate_sequences,
    init_reward_backbone,
    member_scores,
    pack_comparisons,
    packed_pair_scores,
)
from rewardlab.rewards.train import RewardData, train_reward_member
from rewardlab.runs import Run
from rewardlab.tasks.arithmetic import TASK_WORDS, ArithmeticTask

TOK = build_task_tokenizer(TASK_WORDS)
PAD = int(TOK.pad_token_id)


def test_split_common_prefix_cases():
    assert split_common_prefix([1, 2, 3], [1, 2, 4, 5]) == ([1, 2], [3], [4, 5])
    assert split_common_prefix([1, 2], [1, 2, 3]) == ([1, 2], [], [3])  # one side is a prefix of the other
    assert split_common_prefix([7], [8]) == ([], [7], [8])
    assert split_common_prefix([1, 2], [1, 2]) == ([1, 2], [], [])


def test_pack_shared_prefix_layout_and_mask():
    packed = pack_shared_prefix([([5, 6], [7], [8, 9]), ([1], [2, 3], [4])], pad_id=0)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 2, 3], [0, 1, 2, 1, 0]]
    assert packed.first_last.tolist() == [2, 2] and packed.second_last.tolist() == [4, 3]
    allowed = (packed.attention_mask[0, 0] == 0).int().tolist()
    # rows: prefix 5, 6; first 7; second 8, 9 (sees the prefix, never 7)
    assert allowed == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]
    with pytest.raises(ValueError, match="no token"):
        pack_shared_prefix([([], [], [3])], pad_id=0)


def _sequences(n: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Pairs covering every layout: a shared prompt, one side a prefix of the other, identical sides, nothing in
    common, and a pad-id token inside a sequence (the classifier reads the last token that is not the pad id)."""
    rng = random.Random(seed)
    vocab = [t for t in range(4, len(TOK)) if t != PAD]

    def words(k: int) -> list[int]:
        return [rng.choice(vocab) for _ in range(k)]

    chosen, rejected = [], []
    for i in range(n):
        prompt = words(rng.randint(1, 9))
        a, b = words(rng.randint(1, 6)), words(rng.randint(1, 6))
        kind = i % 5
        if kind == 1:
            a, b = a, a + b
        elif kind == 2:
            b = list(a)
        elif kind == 3:
            prompt = []
        elif kind == 4:
            a = [*a, PAD]
        chosen.append(prompt + a)
        rejected.append(prompt + b)
    return chosen, rejected


def _two_row_scores(model, chosen, rejected):
    b = collate_sequences(chosen + rejected, PAD)
    return member_scores(model, b["input_ids"], b["attention_mask"])


def test_packed_scores_equal_two_rows_scores_and_gradients(lm_dir):
    model = init_reward_backbone(lm_dir, TOK, seed=0)
    assert can_pack_pairs(model)
    chosen, rejected = _sequences(20, 0)
    packed = pack_comparisons(chosen, rejected, PAD)
    assert packed.input_ids.shape[1] < max(len(c) for c in chosen) + max(len(r) for r in rejected)
    ref = _two_row_scores(model, chosen, rejected)
    ref.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    got = packed_pair_scores(model, packed)
    got.square().sum().backward()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for k, p in model.named_parameters():
        if k in grads:
            torch.testing.assert_close(p.grad, grads[k], atol=1e-5, rtol=1e-4, msg=k)


def _pairs(n: int, seed: int) -> list[Comparison]:
    task, rng = ArithmeticTask(), random.Random(seed)
    out = []
    for _ in range(n):
        p = task.sample_problem(rng, difficulty=1)
        wrong = task.wrong_answer(p.answer, rng)
        out.append(Comparison(prompt=p.text, chosen=f"the answer is {p.answer} .",
                              rejected=f"you are right . the answer is {wrong} ."))  # fmt: skip
    return out


def test_training_with_shared_prompt_matches_two_rows(lm_dir, tmp_path):
    pairs = _pairs(96, 0)
    scores = {}
    for shared in (False, True):
        cfg = RewardConfig(epochs=1, batch_size=32, optim={"lr": 3e-3, "warmup_steps": 0}, verifier=False,
                           shared_prompt=shared)  # fmt: skip
        model = init_reward_backbone(lm_dir, TOK, seed=0)
        run = Run(tmp_path / str(shared), "reward", quiet=True)
        model = train_reward_member(model, RewardData(TOK, pairs=pairs), cfg, run, seed=0)
        held = _pairs(16, 1)
        scores[shared] = torch.tensor(
            RewardModel([model], TOK)([c.prompt for c in held], [c.chosen for c in held])
        )
    moved = (scores[True] - init_scores(lm_dir)).abs().max()
    assert moved > 1e-2  # training moved the scores, so the comparison below is not vacuous
    torch.testing.assert_close(scores[True], scores[False], atol=1e-4, rtol=1e-4)


def init_scores(lm_dir) -> torch.Tensor:
    held = _pairs(16, 1)
    model = init_reward_backbone(lm_dir, TOK, seed=0)
    return torch.tensor(RewardModel([model], TOK)([c.prompt for c in held], [c.chosen for c in held]))


def test_unpackable_member_falls_back_to_two_rows_and_says_so(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    d = tmp_path / "gpt2"
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(TOK), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                             num_labels=1)).save_pretrained(d)  # fmt: skip
    TOK.save_pretrained(d)
    model = init_reward_backbone(d, TOK, seed=0)
    assert not can_pack_pairs(model)
    cfg = RewardConfig(epochs=1, batch_size=16, verifier=False, shared_prompt=True)
    run = Run(tmp_path / "r", "reward", quiet=True)
    train_reward_member(model, RewardData(TOK, pairs=_pairs(32, 0)), cfg, run, seed=0)
    assert "two rows per comparison" in (run.dir / "run.log").read_text()
