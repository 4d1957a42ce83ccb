"""``rewardlab label enqueue``: which pairs are chosen, how many are doubly labeled, and (slow) from a real run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rewardlab.cli import main
from rewardlab.feedback.human.commands import overlap_wanted
from rewardlab.feedback.human.db import LabelDB
from rewardlab.pipelines.enqueue import disagreement, run_config
from rewardlab.utils import RewardlabError

MICRO = Path(__file__).resolve().parents[1] / "configs" / "micro.yaml"


def test_ensemble_disagreement_is_the_std_of_member_differences():
    # 3 members, 2 pairs: pair 0 (columns 0, 1), pair 1 (columns 2, 3)
    members = torch.tensor([[1.0, 0.0, 5.0, 5.0], [2.0, 0.0, 5.0, 4.0], [3.0, 0.0, 5.0, 3.0]])
    d, how = disagreement(members, 2)
    assert how == "ensemble_std"
    assert d.tolist() == pytest.approx([torch.tensor([1.0, 2.0, 3.0]).std().item(), torch.tensor([0.0, 1.0, 2.0]).std().item()])  # fmt: skip


def test_a_single_model_prefers_the_closest_pairs():
    d, how = disagreement(torch.tensor([[1.0, 0.0, 0.2, 0.1, -3.0, 3.0]]), 3)
    assert how == "neg_abs_margin"
    assert d.argmax().item() == 1 and d.argmin().item() == 2


def test_overlap_share_is_seeded_and_checked():
    w = overlap_wanted(100, 0.1, seed=3)
    assert (
        sum(x == 2 for x in w) == 10
        and w == overlap_wanted(100, 0.1, seed=3)
        and w != overlap_wanted(100, 0.1, 4)
    )
    assert overlap_wanted(5, 0.0, 0) == [1] * 5
    with pytest.raises(RewardlabError, match="overlap"):
        overlap_wanted(5, 1.5, 0)


def test_enqueue_needs_a_run_folder(tmp_path):
    with pytest.raises(RewardlabError, match="not a run folder"):
        run_config(tmp_path, None)
    with pytest.raises(RewardlabError, match="--arm nope"):
        run_config(tmp_path, "nope")


@pytest.mark.slow
def test_enqueue_from_a_micro_run(tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", str(MICRO), "--run-dir", str(run_dir), "--stages", "pretrain,sft,label,reward", "--quiet"]
    assert main([*args, "--set", "controls=[]", "--set", "threads=1", "--set", "reward.ensemble_size=2"]) == 0
    db = tmp_path / "l.sqlite"
    argv = ["label", "enqueue", str(run_dir), "--db", str(db), "--n", "12", "--candidates", "30", "--quiet"]
    assert main([*argv, "--overlap", "0.25"]) == 0
    store = LabelDB(db)
    items = [store.item(i) for i in range(1, 13)]
    assert store.item(13) is None and sum(it.wanted for it in items) == 15
    assert all(
        it.a != it.b and it.gold_a is not None and it.meta["selection"] == "ensemble_std" for it in items
    )
    scores = [it.meta["disagreement"] for it in items]
    assert scores == sorted(scores, reverse=True)  # the most disputed first
    assert main([*argv, "--select", "random", "--queue", "r"]) == 0
    assert len(store.queues()) == 2
