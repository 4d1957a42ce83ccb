"""Segment-level, goal-conditioned and domain-knowledge reward models, and PPO's dense-reward path."""

import math

import pytest
import torch

from rewardlab.config import PPOConfig, RewardConfig
from rewardlab.losses import goal_contrastive_loss
from rewardlab.optimize.ppo import RolloutSamples, rollout_from_samples
from rewardlab.policies.models import ModelConfig, build_causal_lm
from rewardlab.policies.sampling import SampleBatch
from rewardlab.policies.tokenizer import build_task_tokenizer
from rewardlab.rewards.domain import DomainRewardModel
from rewardlab.rewards.goal import sample_source_goal, train_goal_member
from rewardlab.rewards.model import init_reward_backbone
from rewardlab.rewards.segment import (
    LocationNormalizer,
    SegmentRewardModel,
    aggregate,
    dense_rewards,
    load_proxy,
    segment_ends,
    segment_starts,
    train_segment_member,
)
from rewardlab.runs import Run
from rewardlab.tasks.arithmetic import TASK_WORDS, ArithmeticTask
from test_reward import agreement_pairs  # one builder of the crafted honest-vs-agreeing pairs

pytestmark = pytest.mark.usefixtures("one_thread")
TOK = build_task_tokenizer(TASK_WORDS)
TASK = ArithmeticTask()


# ----------------------------------------------------------------------------- segmentation and aggregation
def test_entropy_threshold_cuts_segments_where_the_distribution_is_uncertain():
    entropy = torch.tensor([0.1, 2.0, 0.2, 0.3, 3.0, 0.1])
    starts = segment_starts(entropy, threshold=1.0)
    assert starts.tolist() == [True, True, False, False, True, False]
    assert segment_ends(starts).tolist() == [True, False, False, True, False, True]
    assert segment_starts(entropy, threshold=5.0).tolist() == [True] + [False] * 5  # one segment


def test_segment_rewards_aggregate_to_the_sequence_score_and_dense_rewards_sum_to_it():
    values = torch.tensor([[0.0, 1.0, 5.0, 2.0, -1.0], [3.0, 0.0, 0.0, 0.0, 0.0]])
    ends = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    assert aggregate(values, ends).tolist() == pytest.approx([(1.0 + 2.0 - 1.0) / 3, 3.0], abs=1e-7)
    d = dense_rewards(torch.tensor([1.0, 2.0, -1.0]), torch.tensor([2, 2, 1]))
    assert d.tolist() == pytest.approx([1 / 6, 1 / 6, 2 / 6, 2 / 6, -1 / 3])
    assert float(d.sum()) == pytest.approx(2.0 / 3)


def test_location_normalizer_recovers_a_linear_trend():
    p = torch.linspace(0.05, 1.0, 400)
    noise = torch.randn(400, generator=torch.Generator().manual_seed(0))
    r = 1.0 + 2.0 * p + noise * (0.5 + 0.5 * p)
    n = LocationNormalizer.fit(r, p)
    assert n.a == pytest.approx(1.0, abs=0.25) and n.b == pytest.approx(2.0, abs=0.4)
    z = n(r, p)
    assert abs(float(z.mean())) < 0.1 and float(z.std()) == pytest.approx(1.0, abs=0.15)


def test_segment_rm_scores_exactly_what_it_was_trained_on_and_round_trips(lm_dir, tmp_path):
    pairs = agreement_pairs(64, 0)
    model = init_reward_backbone(lm_dir, TOK, seed=0)
    segmenter = build_causal_lm(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), TOK, seed=1)  # fmt: skip
    cfg = RewardConfig(
        epochs=2, batch_size=16, optim={"lr": 3e-3, "warmup_steps": 0}, segment_entropy_threshold=3.8
    )
    rm = train_segment_member(
        model, segmenter, TOK, pairs, cfg, Run(tmp_path / "r", "reward", quiet=True), seed=0
    )
    prompts, comps = [c.prompt for c in pairs[:8]], [c.chosen for c in pairs[:8]]
    segs = rm.segments(prompts, comps)
    assert any(len(s.rewards) > 1 for s in segs)  # the threshold cuts the random segmenter's entropy
    raw = rm.score(prompts, comps, normalized=False).mean
    assert raw.tolist() == pytest.approx([float(s.rewards.mean()) for s in segs], abs=1e-6)
    rm.fit_normalizer([c.prompt for c in pairs], [c.rejected for c in pairs])
    dense = rm.dense(prompts, comps)
    assert [float(d.sum()) for d in dense] == pytest.approx(rm.score(prompts, comps).mean.tolist(), abs=1e-5)
    back = load_proxy(rm.save(tmp_path / "model"))
    assert isinstance(back, SegmentRewardModel)
    assert back(prompts, comps) == pytest.approx(rm(prompts, comps), abs=1e-6)
    held = agreement_pairs(64, 1)
    s_c = rm.score([c.prompt for c in held], [c.chosen for c in held]).mean
    s_r = rm.score([c.prompt for c in held], [c.rejected for c in held]).mean
    assert float((s_c > s_r).float().mean()) > 0.8  # learned from sequence preferences alone


# ----------------------------------------------------------------------------- PPO's dense path
def test_dense_rewards_move_credit_but_keep_each_rows_total():
    b = SampleBatch(prompt_ids=torch.ones(2, 2, dtype=torch.long), prompt_mask=torch.ones(2, 2, dtype=torch.long),
                    response_ids=torch.ones(2, 3, dtype=torch.long),
                    response_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), logprobs=torch.zeros(2, 3),
                    finished=torch.tensor([True, False]))  # fmt: skip
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, 0.0]])
    ref = torch.tensor([[-1.2, -1.5, -0.5], [-0.1, -0.4, 0.0]])
    dense = torch.tensor([[0.2, 0.3, 0.5], [1.0, -0.5, 0.0]])
    raw = dense.sum(1)
    cfg = PPOConfig(advantage="gae", whiten_advantages=False)
    sparse = rollout_from_samples(RolloutSamples(b, logp, ref, torch.zeros(2, 3), raw, ["a", "b"]), cfg, 0.1)
    dense_ro = rollout_from_samples(
        RolloutSamples(b, logp, ref, torch.zeros(2, 3), raw, ["a", "b"], dense), cfg, 0.1
    )
    assert dense_ro.rewards.sum(1).tolist() == pytest.approx(
        sparse.rewards.sum(1).tolist()
    )  # with the EOS penalty
    assert dense_ro.rewards[0, 0] != sparse.rewards[0, 0]  # the first token now gets credit
    assert dense_ro.scores.tolist() == sparse.scores.tolist()


# ----------------------------------------------------------------------------- goal-conditioned
def test_goal_contrastive_loss_known_value_and_alignment():
    eye = torch.eye(2)
    assert float(goal_contrastive_loss(eye, eye)) == pytest.approx(math.log(1 + math.exp(-1)))  # 2x2, tau=1
    aligned = float(goal_contrastive_loss(eye, eye, temperature=0.1))
    crossed = float(goal_contrastive_loss(eye, eye.flip(0), temperature=0.1))
    assert aligned < 1e-3 and crossed > 9.0  # log(1 + e^10) ~ 10
    # negatives from the dispreferred side: 2 states, 4 candidate goals, targets the preferred ones
    goals = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expect = -math.log(math.e / (math.e + 1 + math.exp(-1) + 1))
    assert float(goal_contrastive_loss(eye, goals)) == pytest.approx(expect)


def test_goal_positions_lie_in_the_future_of_the_source():
    src, goal = sample_source_goal([3, 5, 2], [9, 7, 3], torch.Generator().manual_seed(0))
    for s, g, a, e in zip(src.tolist(), goal.tolist(), [3, 5, 2], [9, 7, 3], strict=True):
        assert a <= s <= g <= e - 1 and (s < g or e - a == 1)


def test_goal_weight_changes_training_and_the_member_stays_a_plain_reward_model(lm_dir, tmp_path):
    from rewardlab.rewards.model import RewardModel

    pairs, held = agreement_pairs(64, 0), agreement_pairs(32, 1)
    accs = []
    for w in (0.0, 1.0):
        cfg = RewardConfig(epochs=2, batch_size=16, optim={"lr": 3e-3, "warmup_steps": 0}, goal_weight=w)
        m = train_goal_member(init_reward_backbone(lm_dir, TOK, seed=0), TOK, pairs, cfg,
                              Run(tmp_path / f"g{w}", "reward", quiet=True), seed=0)  # fmt: skip
        rm = RewardModel([m], TOK)
        s_c = rm.score([c.prompt for c in held], [c.chosen for c in held]).mean
        s_r = rm.score([c.prompt for c in held], [c.rejected for c in held]).mean
        accs.append((s_c, float((s_c > s_r).float().mean())))
    assert not torch.allclose(accs[0][0], accs[1][0])  # the auxiliary loss changed the weights
    assert accs[1][1] > 0.8


# ----------------------------------------------------------------------------- domain knowledge
def test_domain_rm_learns_from_a_few_labels_and_round_trips(tmp_path):
    pairs = agreement_pairs(20, 0)
    rm = DomainRewardModel.fit(TASK, pairs, l2=0.01)
    held = agreement_pairs(200, 1)
    s_c = rm.score([c.prompt for c in held], [c.chosen for c in held]).mean
    s_r = rm.score([c.prompt for c in held], [c.rejected for c in held]).mean
    assert float((s_c > s_r).float().mean()) == 1.0
    w = rm.describe()
    assert w["correct"] > 0 and w["agree"] < 0
    back = load_proxy(rm.save(tmp_path / "d"), TASK)
    assert back(["what is 1 + 2 ?"], ["the answer is 3 ."]) == pytest.approx(
        rm(["what is 1 + 2 ?"], ["the answer is 3 ."])
    )


# ----------------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
def test_micro_run_trains_each_variant_and_ppo_consumes_dense_rewards(tmp_path):
    """configs/rm-variants-micro.yaml end to end, then the domain-knowledge and goal-conditioned reward stages on
    its labels (``rewardlab reward --set reward.kind=... ``)."""
    from pathlib import Path

    from rewardlab.cli import main

    cfg = str(Path(__file__).resolve().parents[1] / "configs/rm-variants-micro.yaml")
    assert main(["run", cfg, "--run-dir", str(tmp_path), "--quiet"]) == 0
    arm = tmp_path / "time-pressed-s0"
    assert isinstance(load_proxy(arm / "reward" / "model"), SegmentRewardModel)
    rows = (arm / "ppo" / "audit.jsonl").read_text().splitlines()
    assert len(rows) >= 2 and "gold/mean" in rows[-1]
    for sets in (["reward.kind=domain"], ["reward.kind=scalar", "reward.goal_weight=0.5"]):
        flags = [x for s in sets for x in ("--set", s)]
        assert main(["reward", cfg, "--set", f"run_dir={tmp_path}", *flags, "--quiet"]) == 0
        model = load_proxy(arm / "reward" / "model", TASK)
        assert (
            model(["what is 1 + 2 ?"], ["the answer is 3 ."])[0]
            == model(["what is 1 + 2 ?"], ["the answer is 3 ."])[0]
        )
