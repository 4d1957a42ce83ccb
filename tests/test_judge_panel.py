"""The report's judge panel (issue 20): the judge's numbers read from crafted stage summaries and checked by
hand, the panel in the HTML report for a judge arm and absent without one, SL-CAI's rounds as a table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardlab.report.build import build_report
from rewardlab.report.judge import judge_panel
from test_report import make_arm, write_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def judge_arm(root: Path, seed: int, *, err: float, bias: float, flips: float, label_err: float, rm: float,
              with_audit: bool = False) -> Path:  # fmt: skip
    """A judge arm's summaries: held-out judge error ``err`` (d1/d2/d3 = err +0.1/0/-0.1), one-order error
    0.5, labels' error ``label_err`` (d_k = label_err + 0.01 k), reward-model accuracy ``rm``."""
    arm = (
        make_arm(root, "judge-k1000", seed, methods=("ppo",)) if with_audit else root / f"judge-k1000-s{seed}"
    )
    _write(arm / "arm.json", {"name": "judge-k1000", "role": "treatment", "source": "judge", "seed": seed})
    _write(arm / "judge" / "summary.json", {
        "labels": 1000, "rater": "unbiased", "judge/position_bias": bias, "judge/order_flip_rate": flips,
        "judge/error_first_order": 0.5, "judge/error_averaged": err,
        "judge/error_averaged_difficulty_1": err + 0.1, "judge/error_averaged_difficulty_2": err,
        "judge/error_averaged_difficulty_3": err - 0.1,
    })  # fmt: skip
    _write(arm / "label" / "summary.json", {
        "rater/error_rate": label_err, "judge/position_bias": bias / 2, "judge/order_flip_rate": flips,
        **{f"rater/by_difficulty_{d}_error_rate": label_err + 0.01 * d for d in (1, 2, 3)},
        "rater/verified_error_rate": float("nan"),
    })  # fmt: skip
    _write(arm / "reward" / "summary.json", {"eval/accuracy_gold": rm})
    return arm


def rater_arm(root: Path, preset: str, seed: int, label_err: float, rm: float) -> Path:
    arm = make_arm(root, preset, seed, methods=("ppo",))
    role = "control" if preset == "unbiased" else "treatment"
    _write(
        arm / "arm.json",
        {"name": preset, "role": role, "source": "simulated", "preset": preset, "seed": seed},
    )
    _write(
        arm / "label" / "summary.json",
        {"rater/error_rate": label_err, "rater/by_difficulty_2_error_rate": 0.3},
    )
    _write(arm / "reward" / "summary.json", {"eval/accuracy_gold": rm})
    return arm


def test_panel_numbers_from_crafted_summaries(tmp_path: Path):
    judge_arm(tmp_path, 0, err=0.2, bias=-0.01, flips=1.0, label_err=0.22, rm=0.76)
    judge_arm(tmp_path, 1, err=0.3, bias=0.03, flips=0.5, label_err=0.30, rm=0.70)
    rater_arm(tmp_path, "unbiased", 0, label_err=0.18, rm=0.77)
    panel = judge_panel(tmp_path)
    assert panel.has_judge
    assert [(r["arm"], r["source"]) for r in panel.rows] == [
        ("judge-k1000-s0", "judge"), ("judge-k1000-s1", "judge"), ("unbiased-s0", "simulated")
    ]  # fmt: skip
    s0, s1, rater = panel.rows
    assert s0["judge/error_averaged"] == 0.2 and s0["judge/error_first_order"] == 0.5
    assert s0["judge/error_averaged_d1"] == pytest.approx(0.3) and s0[
        "judge/error_averaged_d3"
    ] == pytest.approx(0.1)
    assert s0["judge/position_bias"] == -0.01 and s0["label/position_bias"] == -0.005
    assert s1["judge/order_flip_rate"] == 0.5 and s1["label/error_rate_d2"] == pytest.approx(0.32)
    assert (s0["judge_labels"], s0["judge_rater"], s0["reward/accuracy_gold"]) == (1000, "unbiased", 0.76)
    # a rater arm: label numbers, no judge numbers
    assert rater["judge/error_averaged"] is None and rater["judge/position_bias"] is None
    assert (rater["label/error_rate"], rater["label/error_rate_d2"], rater["label/error_rate_d1"]) == (
        0.18,
        0.3,
        None,
    )
    # the mean over the two seeds of the judge arm, by hand; one seed of the rater arm: no mean row
    [mean] = panel.means
    assert (mean["name"], mean["n_seeds"], mean["seeds"]) == ("judge-k1000", 2, [0, 1])
    assert mean["judge/error_averaged"] == pytest.approx(0.25)
    assert mean["judge/error_averaged_d1"] == pytest.approx(0.35)
    assert mean["judge/position_bias"] == pytest.approx(0.01)
    assert mean["judge/order_flip_rate"] == pytest.approx(0.75)
    assert mean["label/error_rate"] == pytest.approx(0.26)
    assert mean["reward/accuracy_gold"] == pytest.approx(0.73)


def test_slcai_rounds_with_the_sft_row_and_seed_means(tmp_path: Path):
    for seed, gold in ((0, -0.4), (1, -0.2)):
        arm = judge_arm(tmp_path, seed, err=0.2, bias=0.0, flips=1.0, label_err=0.2, rm=0.7)
        rounds = [{"round": r, "gold/mean": gold + 0.1 * r, "gold/accuracy": 0.05, "behavior/sycophancy_rate": 0.4 - 0.1 * r,
                   "behavior/parse_rate": 1.0} for r in (0, 1, 2)]  # fmt: skip
        write_jsonl(arm / "slcai" / "rounds.jsonl", rounds)
        sft = {"round": "sft", "gold/mean": gold + 0.05, "gold/accuracy": 0.06, "behavior/sycophancy_rate": 0.3,
               "behavior/parse_rate": 0.9}  # fmt: skip
        _write(arm / "slcai" / "summary.json", {"rounds": [*rounds, sft]})
    slcai = judge_panel(tmp_path).slcai
    seeds = [(r["arm"], r["round"]) for r in slcai if not r.get("mean")]
    assert seeds == [(f"judge-k1000-s{s}", r) for s in (0, 1) for r in ("0", "1", "2", "sft")]
    means = {r["round"]: r for r in slcai if r.get("mean")}
    assert sorted(means) == ["0", "1", "2", "sft"]
    assert means["2"]["gold/mean"] == pytest.approx(-0.1)  # (-0.2 + 0.0) / 2
    assert means["sft"]["gold/mean"] == pytest.approx(-0.25)  # (-0.35 - 0.15) / 2
    assert means["1"]["behavior/sycophancy_rate"] == pytest.approx(0.3)


def test_report_shows_the_judge_panel_for_a_judge_arm(tmp_path: Path):
    judge_arm(tmp_path, 0, err=0.2, bias=-0.0123, flips=1.0, label_err=0.22, rm=0.76, with_audit=True)
    rater_arm(tmp_path, "time-pressed", 0, label_err=0.57, rm=0.47)
    rater_arm(tmp_path, "unbiased", 0, label_err=0.18, rm=0.77)
    page = build_report(tmp_path).read_text(encoding="utf-8")
    assert "<h2>AI judge</h2>" in page
    assert "-0.0123" in page and "1000 (unbiased)" in page and "0.570" in page
    assert "SL-CAI" not in page  # no rounds in this run
    assert (tmp_path / "plots" / "judge.png").read_bytes()[:8] == PNG_MAGIC
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["arm"]: r for r in summary["judge"]["rows"]}
    assert rows["judge-k1000-s0"]["judge/error_averaged"] == 0.2
    assert rows["time-pressed-s0"]["reward/accuracy_gold"] == 0.47
    assert summary["figures"]["judge"] == "plots/judge.png"


def test_report_has_no_judge_panel_without_a_judge_arm(tmp_path: Path):
    rater_arm(tmp_path, "time-pressed", 0, label_err=0.57, rm=0.47)
    arm = rater_arm(tmp_path, "unbiased", 0, label_err=0.18, rm=0.77)
    write_jsonl(arm / "slcai" / "rounds.jsonl", [{"round": 0, "gold/mean": -0.3717, "gold/accuracy": 0.05,
                                                  "behavior/sycophancy_rate": 0.4, "behavior/parse_rate": 1.0}])  # fmt: skip
    page = build_report(tmp_path).read_text(encoding="utf-8")
    assert "AI judge" not in page and not (tmp_path / "plots" / "judge.png").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "judge" not in summary and "judge" not in summary["figures"]
    # SL-CAI's rounds are shown whenever an arm has them, judge arm or not
    assert "<h2>SL-CAI: critique and revision rounds</h2>" in page and "-0.372" in page
    assert summary["slcai"][0]["gold/mean"] == -0.3717
