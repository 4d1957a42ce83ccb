"""The poisoning study's defenses on crafted cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rewardlab.studies.poison import (
    bt_losses,
    detection,
    ensemble_disagreement,
    flag_top,
    loss_outliers,
    rater_disagreement,
)
from rewardlab.utils import RewardlabError


def test_bt_loss_is_log_one_plus_exp_minus_margin() -> None:
    assert bt_losses(np.array([0.0]))[0] == pytest.approx(math.log(2))
    assert bt_losses(np.array([-3.0]))[0] == pytest.approx(math.log1p(math.exp(3)))
    assert bt_losses(np.array([50.0]))[0] < 1e-20


def test_loss_filter_flags_the_pairs_the_model_fits_worst() -> None:
    margins = np.array([2.0, 1.5, -3.0, 0.5, -1.0, 3.0, 2.5, 1.0, 0.8, 1.2])
    flags = loss_outliers(margins, 0.2)
    assert flags.tolist() == [i in (2, 4) for i in range(10)]
    assert not loss_outliers(margins, 0.01).any()  # round(0.1) = 0 pairs


def test_ensemble_disagreement_flags_high_variance_pairs() -> None:
    members = np.array([[1.0, 1.0, 3.0, 1.0], [1.1, 1.0, -3.0, 1.2], [0.9, 1.0, 0.0, 0.8]])
    assert ensemble_disagreement(members, 0.25).tolist() == [False, False, True, False]
    with pytest.raises(RewardlabError, match=">= 2 members"):
        ensemble_disagreement(members[:1], 0.25)


def test_rater_disagreement_is_a_majority_vote() -> None:
    agrees = np.array([[1, 0, 0, 1], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=bool)
    assert rater_disagreement(agrees).tolist() == [False, True, True, True]


def test_detection_precision_recall_and_clean_cost() -> None:
    poisoned = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    flags = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    d = detection(flags, poisoned)
    assert (d["precision"], d["recall"], d["clean_removed"]) == (0.5, 0.5, 1 / 8)
    assert math.isnan(detection(np.zeros(3, dtype=bool), np.zeros(3, dtype=bool))["precision"])
    assert flag_top(np.array([1.0, 1.0, 1.0]), 1 / 3).tolist() == [True, False, False]  # ties: by position


@pytest.mark.slow
def test_poison_study_end_to_end_on_the_micro_config(tmp_path) -> None:
    """Every stage of the study on configs/micro.yaml: rate 0 and 5%, two arms at a time (two worker processes of
    one thread), the table and the figure; then the same measurements one arm at a time in this process, on the
    stages the workers trained, give the same table (about 4 min)."""
    import json

    from rewardlab.studies.poison import PoisonStudyConfig, run_poison_study

    study = PoisonStudyConfig(pipeline="configs/micro.yaml", set=["threads=2"], run_dir=str(tmp_path / "run"),
                              out_dir=str(tmp_path / "out"), rates=[0.0, 0.05], defended=["ensemble"])  # fmt: skip
    out = run_poison_study(study, quiet=True)
    table = json.loads((out / "poison.json").read_text())
    rows = table["rows"]
    assert table["arm_processes"] == 2 and {"s0/rate0", "s0/rate0.05", "total"} <= set(table["seconds"])
    n = len((tmp_path / "run" / "poison-inject-0.05-s0" / "label" / "train.jsonl").read_text().splitlines())
    assert [r["rate"] for r in rows] == [0.0, 0.05]
    assert rows[0]["poisoned_pairs"] == 0 and rows[1]["poisoned_pairs"] == round(0.05 * n)
    assert (out / "study-poison.png").stat().st_size > 0 and (out / "poison.md").exists()
    # the ensemble defense: its own 3-member reward model, and a defended arm trained on what it leaves
    assert all(r["ensemble_precision"] is not None or r["rate"] == 0 for r in rows)
    assert rows[1]["def_ensemble_poisoned_left"] <= rows[1]["poisoned_pairs"]
    assert {"def_ensemble_ppo_gold", "def_ensemble_dpo_target_logit"} <= set(rows[1])
    assert (
        len(list((tmp_path / "run" / "poison-inject-0.05-ens-s0" / "reward" / "model" / "members").iterdir()))
        == 3
    )
    seq = study.model_copy(update={"set": ["threads=1"], "out_dir": str(tmp_path / "seq")})
    seq_table = json.loads((run_poison_study(seq, quiet=True) / "poison.json").read_text())
    assert seq_table["arm_processes"] == 1 and seq_table["rows"] == rows


def test_a_defended_arm_keeps_exactly_the_unflagged_pairs(tmp_path) -> None:
    """write_filtered_labels: the flagged training pairs are gone, the eval pairs unchanged, the poisoned ones left counted."""
    import json

    from rewardlab.config import load_config
    from rewardlab.feedback.records import Comparison, load_comparisons, save_comparisons
    from rewardlab.studies.poison import write_filtered_labels

    src, dst = (
        load_config("configs/micro.yaml", [f"run_dir={tmp_path}", f"label.name={n}"])
        for n in ("arm", "arm-def")
    )
    train = [
        Comparison(prompt=f"p{i}", chosen=f"a{i}", rejected=f"b{i}", meta={"poisoned": i in (1, 3)})
        for i in range(6)
    ]
    save_comparisons(src.stage_dir("label") / "train.jsonl", train)
    save_comparisons(src.stage_dir("label") / "eval.jsonl", train[:2])
    flags = np.array(
        [False, True, False, False, True, False]
    )  # one poisoned pair caught, one clean pair lost
    out = write_filtered_labels(src, dst, flags, quiet=True)
    assert [c.prompt for c in load_comparisons(out / "train.jsonl")] == ["p0", "p2", "p3", "p5"]
    assert [c.prompt for c in load_comparisons(out / "eval.jsonl")] == ["p0", "p1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["defense/removed"] == 2 and summary["poison/pairs"] == 1
    with pytest.raises(RewardlabError, match="3 flags for 6 pairs"):
        write_filtered_labels(src, load_config("configs/micro.yaml", [f"run_dir={tmp_path}", "label.name=x"]),
                              flags[:3], quiet=True)  # fmt: skip
