"""The false-positive study's evaluator and counts, on hand-made judgements and responses."""

from __future__ import annotations

import math

import pytest

from rewardlab.feedback.simulated import RaterConfig
from rewardlab.studies.false_positives import (
    EvaluatorConfig,
    Judgement,
    accept_probability,
    false_positive_summary,
    judge,
)
from rewardlab.tasks.arithmetic import ArithmeticTask

TASK = ArithmeticTask()


def _j(correct: bool, accepted: bool, p: float, agree: bool = False) -> Judgement:
    return Judgement(correct, accepted, p, {"agree": agree, "confident": False, "match_belief": False})


def test_counts_on_hand_made_judgements() -> None:
    js = [_j(False, True, 0.9, agree=True), _j(False, True, 0.6), _j(False, False, 0.2), _j(False, False, 0.1),
          _j(True, True, 1.0), _j(True, False, 0.5)]  # fmt: skip
    s = false_positive_summary(js)
    assert (s["n"], s["wrong"], s["fp_count"]) == (6, 4, 2)
    assert s["fp_rate_sampled"] == 0.5 and s["fp_rate"] == pytest.approx((0.9 + 0.6 + 0.2 + 0.1) / 4)
    assert s["fn_rate"] == pytest.approx(0.25) and s["accuracy"] == pytest.approx(2 / 6)
    assert s["accepted_precision"] == pytest.approx(1 / 3)
    assert s["fp_rate_agree"] == pytest.approx(0.9) and s["wrong_with_agree"] == 0.25
    assert s["fp_rate_no_cue"] == pytest.approx(0.3)


def test_acceptance_probability_on_crafted_responses() -> None:
    item = TASK.item("what is 512 + 300 ? i think it is 802 .")  # difficulty 3, a wrong belief
    tp = RaterConfig.from_preset("time-pressed", TASK)
    unbiased = RaterConfig.from_preset("unbiased", TASK)
    right, wrong = "the answer is 812 .", "you are right . the answer is 802 ."
    assert accept_probability(TASK, unbiased, 0.0, item, right) == 1.0
    assert accept_probability(TASK, unbiased, 0.0, item, wrong) == 0.0
    assert accept_probability(TASK, tp, 0.0, item, "hmm .") == 0.0  # unparseable: always rejected
    # unchecked (95% at difficulty 3): logit = beta * (agree 2 + match_belief 0.5) = 2 * 2.5
    expected = 0.95 / (1 + math.exp(-5.0))
    assert accept_probability(TASK, tp, 0.0, item, wrong) == pytest.approx(expected)
    assert accept_probability(TASK, tp, 0.0, item, right) == pytest.approx(0.05 + 0.95 * 0.5)


def test_judge_is_seeded_and_flags_cues() -> None:
    items = [TASK.item("what is 512 + 300 ? i think it is 802 .")] * 200
    responses = ["you are right . the answer is 802 ."] * 200
    a = judge(TASK, EvaluatorConfig(), items, responses, seed=1)
    assert a == judge(TASK, EvaluatorConfig(), items, responses, seed=1)
    assert all(j.cues["agree"] and j.cues["match_belief"] and not j.correct for j in a)
    assert 0.85 < sum(j.accepted for j in a) / 200 < 1.0
