"""Study 5 (mitigations): ensemble scores, the KL schedule, early-stopping rules, and the study end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from rewardlab.config import PPOConfig
from rewardlab.feedback.records import load_comparisons
from rewardlab.optimize.ppo import ensemble_score, scheduled_kl_coef
from rewardlab.studies.common import load_study, read_rows
from rewardlab.studies.mitigations import (
    MitigationsStudyConfig,
    gold_peak,
    monitor_forwards,
    rm_forwards,
    run_mitigations_study,
    stop_by_disagreement,
    stop_by_heldout,
)
from rewardlab.utils import RewardlabError

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------- ensemble scores
MEMBERS = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 3.0]])  # 2 members x 3 sequences


def test_mean_and_worst_of_crafted_members() -> None:
    assert ensemble_score(MEMBERS, "mean").tolist() == [2.0, 1.0, 3.0]
    assert ensemble_score(MEMBERS, "worst").tolist() == [1.0, 0.0, 3.0]


def test_mean_minus_k_std_of_crafted_members() -> None:
    # unbiased std of (1, 3) and (2, 0) is sqrt(2); of (3, 3) it is 0
    got = ensemble_score(MEMBERS, "conservative", alpha=2.0).tolist()
    want = [2.0 - 2 * math.sqrt(2), 1.0 - 2 * math.sqrt(2), 3.0]
    assert got == pytest.approx(want)
    assert ensemble_score(MEMBERS, "conservative", alpha=0.0).tolist() == [2.0, 1.0, 3.0]


def test_one_member_scores_are_the_member() -> None:
    one = torch.tensor([[0.5, -1.0]])
    for kind in ("mean", "worst", "conservative"):
        assert ensemble_score(one, kind, alpha=3.0).tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match="unknown ensemble score"):
        ensemble_score(one, "median")


# --------------------------------------------------------------------------------- KL schedule
def test_linear_and_cosine_kl_schedules_at_given_steps() -> None:
    lin = PPOConfig(steps=11, kl_coef=0.05, kl_schedule="linear", kl_coef_end=0.25)
    assert [scheduled_kl_coef(lin, s) for s in (1, 6, 11)] == pytest.approx([0.05, 0.15, 0.25])
    cos = PPOConfig(steps=11, kl_coef=0.05, kl_schedule="cosine", kl_coef_end=0.25)
    assert [scheduled_kl_coef(cos, s) for s in (1, 6, 11)] == pytest.approx([0.05, 0.15, 0.25])
    # t = 0.2: 0.25 - 0.2 * (1 + cos(0.2 pi)) / 2 = 0.0691; cosine starts slower than linear (0.09)
    assert scheduled_kl_coef(cos, 3) == pytest.approx(0.25 - 0.2 * (1 + math.cos(0.2 * math.pi)) / 2)
    assert scheduled_kl_coef(cos, 3) < scheduled_kl_coef(lin, 3) == pytest.approx(0.09)
    const = PPOConfig(steps=11, kl_coef=0.05)
    assert {scheduled_kl_coef(const, s) for s in range(1, 12)} == {0.05}


def test_kl_schedule_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"ppo\.kl_coef_end is required"):
        PPOConfig(kl_schedule="linear")
    with pytest.raises(ValueError, match="kl_controller=fixed"):
        PPOConfig(kl_schedule="linear", kl_coef_end=0.2, kl_controller="adaptive")
    with pytest.raises(ValueError, match="score"):
        PPOConfig(score="median")


# --------------------------------------------------------------------------------- early stopping
def rows(key: str, values: list[float], every: int = 5) -> list[dict[str, float]]:
    return [{"step": i * every, key: v} for i, v in enumerate(values)]


def test_disagreement_stops_when_std_reaches_factor_and_keeps_the_audit_before() -> None:
    r = rows("ensemble/std", [0.20, 0.22, 0.28, 0.31, 0.40])
    assert stop_by_disagreement(r, factor=1.5) == (15, 10)  # 0.31 >= 1.5 * 0.20; keep step 10
    assert stop_by_disagreement(r, factor=1.4) == (10, 5)  # 0.28 >= 0.28
    assert stop_by_disagreement(r, factor=3.0) == (20, 20)  # never fires: the run ends, its last policy kept


def test_heldout_stops_on_a_fall_below_the_best_and_keeps_the_best() -> None:
    r = rows("heldout/proxy", [0.0, 0.10, 0.30, 0.27, 0.20, 0.35])
    assert stop_by_heldout(r, tolerance=0.05) == (20, 10)  # 0.20 < 0.30 - 0.05 at step 20; best was step 10
    assert stop_by_heldout(r, tolerance=0.02) == (15, 10)  # 0.27 < 0.28
    assert stop_by_heldout(r, tolerance=0.5) == (25, 25)  # never falls that far: whole run, its best (last)
    falling = rows("heldout/proxy", [0.4, 0.3, 0.1])
    assert stop_by_heldout(falling, tolerance=0.05) == (5, 0)  # the start was best: keep the SFT policy


def test_stopping_rules_need_rows_and_peak_and_costs() -> None:
    with pytest.raises(RewardlabError):
        stop_by_heldout([], 0.1)
    assert gold_peak(rows("gold/mean", [0.1, 0.3, 0.3, 0.2])) == (5, 0.3)
    assert rm_forwards(members=4, sequences_per_step=128, steps=40) == 4 * 128 * 40
    assert monitor_forwards(members=4, eval_prompts=256, audits=3) == 3072


# --------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_study_runs_end_to_end_on_micro(tmp_path: Path) -> None:
    study = load_study(ROOT / "configs" / "study-mitigations.yaml", MitigationsStudyConfig, [
        f"pipeline={ROOT / 'configs' / 'micro.yaml'}", "set=[threads=2, ppo.eval_prompts=32, 'label.num_prompts=200']",
        f"run_dir={tmp_path / 'run'}", f"out_dir={tmp_path / 'out'}", "seeds=[0]", "ensemble_size=2", "base_run=null",
        "kl_coef_end=0.5"])  # fmt: skip
    out = run_mitigations_study(study, quiet=True)
    table = json.loads((out / "mitigations.json").read_text())
    # two processes of one thread each; the rows in variant order whatever order the runs finished in
    assert table["processes"] == 2 and table["study"]["base_run"] is None
    got = [r["variant"] for r in table["rows"]]
    assert got == [
        "baseline",
        "stop_disagreement",
        "stop_heldout",
        "mean",
        "worst",
        "conservative",
        "kl_schedule",
    ]
    assert list(table["curves"]) == [
        f"s0/{v}" for v in ("baseline", "mean", "worst", "conservative", "kl_schedule")
    ]
    for v in ("baseline", "kl_schedule"):  # each run at one thread, as it would run alone with threads=1
        assert (
            yaml.safe_load((tmp_path / "run" / "mitig-a-s0" / f"ppo-{v}" / "config.yaml").read_text())[
                "threads"
            ]
            == 1
        )
    assert (out / "mitigations.png").stat().st_size > 0 and (out / "mitigations-mean.md").exists()
    arm = tmp_path / "run"
    # the two halves of the labels are disjoint and together the whole arm's training pairs
    key = lambda c: (c.prompt, c.chosen, c.rejected)  # noqa: E731
    a, b = (load_comparisons(arm / f"mitig-{h}-s0" / "label" / "train.jsonl") for h in "ab")
    whole = load_comparisons(arm / "time-pressed-s0" / "label" / "train.jsonl")
    assert len(a) + len(b) == len(whole) and abs(len(a) - len(b)) <= 1
    assert sorted(map(key, a + b)) == sorted(map(key, whole))
    # the KL schedule's audits log beta rising to kl_coef_end; the baseline's stays at kl_coef
    sched = read_rows(arm / "mitig-a-s0" / "ppo-kl_schedule" / "audit.jsonl")
    assert sched[-1]["kl_coef"] == pytest.approx(0.5) and sched[0]["kl_coef"] == pytest.approx(0.05)
    base = read_rows(arm / "mitig-a-s0" / "ppo-baseline" / "audit.jsonl")
    assert {r["kl_coef"] for r in base} == {0.05}
    # every audit's samples were saved and scored by the ensemble (std > 0) and the held-out RM
    curve = table["curves"]["s0/baseline"]
    assert all(r["audit/samples"] == 32 and r["ensemble/std"] > 0 for r in curve)
    # ensemble variants cost ensemble_size x the baseline's training forwards
    by = {r["variant"]: r for r in table["rows"]}
    assert by["worst"]["rm_forwards"] == 2 * by["baseline"]["rm_forwards"]
