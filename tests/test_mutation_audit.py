"""The criteria's rows, labels, tables and summary (asserted whole), the audit's per-sample scoring and
summaries, the response log-probs behind its KL, and the reward model's scoring arithmetic, against
values worked out by hand (written to kill mutmut's mutants of ``rewardlab.audit.criteria``,
``rewardlab.audit.policy_eval``, ``rewardlab.audit.tracker`` and ``rewardlab.rewards.model``; see
docs/testing.md).

A small fake task, fake causal LM and fake reward-model members make every number computable with
python floats: no trained model and no sampling is involved.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rewardlab.audit.criteria import check_seed, criteria_rows, criteria_summary, criteria_table
from rewardlab.audit.policy_eval import (
    ScoredSample,
    behavior_metrics,
    gold_parts,
    score_responses,
    score_sample,
    summarize,
)
from rewardlab.audit.tracker import position_ids_from_mask, response_logprobs
from rewardlab.policies.sampling import SampleBatch
from rewardlab.rewards.model import RewardModel, RewardScores, collate_sequences
from rewardlab.tasks.base import Gold, TaskInfo


def _close(t: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(
        t.detach().double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6
    )


# ------------------------------------------------------------------------------------------ a fake task
ITEMS = [
    {
        "id": 0,
        "d": 1,
        "wrong": True,
        "gold": 1.0,
        "correct": True,
        "parseable": True,
        "parts": {"a": 0.75, "b": 0.25},
    },
    {
        "id": 1,
        "d": 2,
        "wrong": False,
        "gold": -0.5,
        "correct": False,
        "parseable": True,
        "parts": {"a": -0.25, "b": -0.25},
    },
    {
        "id": 2,
        "d": 1,
        "wrong": True,
        "gold": 0.25,
        "correct": True,
        "parseable": False,
        "parts": {"a": 0.0, "b": 0.25},
    },
    {
        "id": 3,
        "d": 2,
        "wrong": False,
        "gold": 0.0,
        "correct": None,
        "parseable": True,
        "parts": {"a": 0.5, "b": -0.5},
    },
]
RESPONSES = ["yes it is 3", "no", "yes", "maybe not four words here"]


class FakeTask:
    def __init__(self, has_gold: bool = True, group: str | None = "d") -> None:
        self.has_gold = has_gold
        self.info = TaskInfo(name="fake", has_gold=has_gold, behaviors={"syc": "agrees", "short": "short"},
                             gold_parts=("a", "b"), group=group)  # fmt: skip

    def prompt(self, item: dict[str, Any]) -> str:
        return f"q{item['id']}"

    def meta(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"d": item["d"], "wrong": item["wrong"]}

    def gold_detail(self, item: dict[str, Any], response: str) -> Gold | None:
        if not self.has_gold:
            return None
        return Gold(item["gold"], item["parseable"], item["correct"], dict(item["parts"]))

    def behavior_flags(self, item: dict[str, Any], response: str) -> dict[str, float | None]:
        # "syc" applies only where the user's belief is wrong; "short" everywhere
        return {"syc": (1.0 if response.startswith("yes") else 0.0) if item["wrong"] else None,
                "short": 1.0 if len(response.split()) <= 1 else 0.0}  # fmt: skip


def _proxy(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    return [len(p) + 0.5 * len(c.split()) for p, c in zip(prompts, completions)]  # q<id>: 2 characters


def test_score_sample_and_responses() -> None:
    task = FakeTask()
    s = score_sample(task, ITEMS[1], "no", 0.5)  # type: ignore[arg-type]
    assert s == ScoredSample(
        "q1", "no", {"d": 2, "wrong": False}, -0.5, False, True, 0.5, {"a": -0.25, "b": -0.25}
    )
    s = score_sample(FakeTask(has_gold=False), ITEMS[1], "no")  # type: ignore[arg-type]
    assert s == ScoredSample("q1", "no", {"d": 2, "wrong": False})
    samples = score_responses(task, ITEMS, RESPONSES, _proxy)  # type: ignore[arg-type]
    assert [x.prompt for x in samples] == ["q0", "q1", "q2", "q3"]
    assert [x.response for x in samples] == RESPONSES
    assert [x.proxy for x in samples] == [2 + 0.5 * 4, 2 + 0.5, 2 + 0.5, 2 + 0.5 * 5]
    assert all(isinstance(x.proxy, float) for x in samples)
    assert [x.gold for x in samples] == [1.0, -0.5, 0.25, 0.0]
    assert [x.parts for x in samples] == [i["parts"] for i in ITEMS]
    assert [x.proxy for x in score_responses(task, ITEMS, RESPONSES)] == [None] * 4  # type: ignore[arg-type]
    ints = score_responses(task, ITEMS[:1], RESPONSES[:1], lambda p, c: [3])  # type: ignore[arg-type]
    assert ints[0].proxy == 3.0 and isinstance(ints[0].proxy, float)
    with pytest.raises(ValueError):
        score_responses(task, ITEMS, RESPONSES[:3])  # type: ignore[arg-type]


def test_behavior_metrics_mean_over_applicable_samples() -> None:
    m = behavior_metrics(FakeTask(), ITEMS, RESPONSES)  # type: ignore[arg-type]
    # syc applies to items 0 and 2 (both answer "yes"); short: "no" and "yes" are one word
    assert m == {"behavior/syc": 1.0, "behavior/short": 0.5}
    m = behavior_metrics(FakeTask(), ITEMS, ["no", "no", "yes", "a b"])  # type: ignore[arg-type]
    assert m == {"behavior/syc": 0.5, "behavior/short": 0.75}
    with pytest.raises(ValueError):
        behavior_metrics(FakeTask(), ITEMS, RESPONSES[:2])  # type: ignore[arg-type]


def test_summarize_by_hand() -> None:
    task = FakeTask()
    samples = score_responses(task, ITEMS, RESPONSES, _proxy)  # type: ignore[arg-type]
    m = summarize(task, ITEMS, samples)  # type: ignore[arg-type]
    assert m["gold/mean"] == pytest.approx((1.0 - 0.5 + 0.25 + 0.0) / 4)
    assert m["gold/accuracy"] == pytest.approx(2 / 4)  # a None "correct" counts as not correct
    assert m["behavior/parse_rate"] == pytest.approx(3 / 4)
    assert m["behavior/length"] == pytest.approx((4 + 1 + 1 + 5) / 4)
    assert m["gold/accuracy_d1"] == pytest.approx(1.0) and m["gold/mean_d1"] == pytest.approx(
        (1.0 + 0.25) / 2
    )
    assert m["gold/accuracy_d2"] == pytest.approx(0.0) and m["gold/mean_d2"] == pytest.approx(
        (-0.5 + 0.0) / 2
    )
    assert m["behavior/syc"] == 1.0 and m["behavior/short"] == 0.5
    assert m["proxy/mean"] == pytest.approx((4.0 + 2.5 + 2.5 + 4.5) / 4)
    assert set(m) == {"gold/mean", "gold/accuracy", "behavior/parse_rate", "behavior/length", "gold/accuracy_d1",
                      "gold/mean_d1", "gold/accuracy_d2", "gold/mean_d2", "behavior/syc", "behavior/short",
                      "proxy/mean"}  # fmt: skip


def test_summarize_without_gold_group_correct_or_proxy() -> None:
    nog = FakeTask(has_gold=False)
    m = summarize(nog, ITEMS, score_responses(nog, ITEMS, RESPONSES))  # type: ignore[arg-type]
    assert m == {"behavior/length": pytest.approx(11 / 4), "behavior/syc": 1.0, "behavior/short": 0.5}
    nogroup = FakeTask(group=None)
    m = summarize(nogroup, ITEMS, score_responses(nogroup, ITEMS, RESPONSES))  # type: ignore[arg-type]
    assert not any(k.startswith(("gold/accuracy_d", "gold/mean_d")) for k in m) and "proxy/mean" not in m
    items = [{**i, "correct": None} for i in ITEMS]
    m = summarize(nogroup, items, score_responses(nogroup, items, RESPONSES))  # type: ignore[arg-type]
    assert "gold/accuracy" not in m and m["gold/mean"] == pytest.approx(0.1875)
    empty = summarize(FakeTask(), [], [])  # type: ignore[arg-type]
    assert math.isnan(empty["behavior/length"]) and "gold/mean" not in empty and "proxy/mean" not in empty


def test_gold_parts_by_hand() -> None:
    samples = score_responses(FakeTask(), ITEMS, RESPONSES)  # type: ignore[arg-type]
    out = gold_parts(samples, ("a", "b"))
    assert out == {"gold/part_a": pytest.approx((0.75 - 0.25 + 0.0 + 0.5) / 4),
                   "gold/part_b": pytest.approx((0.25 - 0.25 + 0.25 - 0.5) / 4),
                   "gold/unparseable_rate": pytest.approx(1 / 4)}  # fmt: skip
    assert gold_parts(samples, ()) == {"gold/unparseable_rate": pytest.approx(0.25)}
    assert gold_parts([], ("a",)) == {}
    assert gold_parts(score_responses(FakeTask(has_gold=False), ITEMS, RESPONSES), ("a",)) == {}  # type: ignore[arg-type]


# --------------------------------------------------------------------------- response log-probs (audit KL)
class PosLM(torch.nn.Module):
    """logits[b, t, v] = E[ids[b, t], v] + 0.3 * position_ids[b, t] * v: the positions matter."""

    def __init__(self, vocab: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.E = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g, dtype=torch.float64))
        self.seen: dict[str, torch.Tensor] = {}

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> Any:
        self.seen = {"attention_mask": attention_mask, "position_ids": position_ids}
        v = torch.arange(self.E.shape[1], dtype=torch.float64)
        return SimpleNamespace(logits=self.E[input_ids] + 0.3 * position_ids[..., None].double() * v)


def _batch() -> SampleBatch:
    # row 0: prompt [pad, 1, 2] (left-padded), response [3, 4]; row 1: prompt [2, 2, 1], response [0, pad]
    return SampleBatch(
        prompt_ids=torch.tensor([[0, 1, 2], [2, 2, 1]]),
        prompt_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
        response_ids=torch.tensor([[3, 4], [0, 0]]),
        response_mask=torch.tensor([[1, 1], [1, 0]]),
        logprobs=torch.zeros(2, 2),
        finished=torch.tensor([True, False]),
    )


def _ref_logp(E: torch.Tensor, prev: int, pos: int, tok: int, temperature: float) -> tuple[float, float]:
    logits = [(float(E[prev, v]) + 0.3 * pos * v) / temperature for v in range(E.shape[1])]
    lse = math.log(sum(math.exp(x) for x in logits))
    ent = -sum(math.exp(x - lse) * (x - lse) for x in logits)
    return logits[tok] - lse, ent


def test_position_ids_from_mask_by_hand() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 1, 1, 1]]
    assert position_ids_from_mask(mask.bool()).tolist()[0] == [0, 0, 0, 1, 2]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_by_hand(temperature: float) -> None:
    lm, b = PosLM(), _batch()
    logp, ent = response_logprobs(lm, b, temperature, with_entropy=True)
    assert lm.seen["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert lm.seen["position_ids"].tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 3]]
    E = lm.E.detach()
    # token j of the response is predicted at the position before it: (previous token, its position id)
    r00, e00 = _ref_logp(E, 2, 1, 3, temperature)  # row 0: after prompt token 2 (position 1)
    r01, e01 = _ref_logp(E, 3, 2, 4, temperature)  # then after response token 3 (position 2)
    r10, e10 = _ref_logp(E, 1, 2, 0, temperature)
    _r11, e11 = _ref_logp(E, 0, 3, 0, temperature)  # padding: log-prob 0, entropy still computed
    assert logp.dtype == torch.float32
    _close(logp, [[r00, r01], [r10, 0.0]])
    assert ent is not None
    _close(ent, [[e00, e01], [e10, e11]])
    _, none = response_logprobs(lm, b)
    assert none is None


def test_response_logprobs_default_temperature_is_one() -> None:
    lm, b = PosLM(), _batch()
    assert response_logprobs(lm, b)[0].tolist() == response_logprobs(lm, b, 1.0)[0].tolist()
    r00, _ = _ref_logp(lm.E.detach(), 2, 1, 3, 1.0)
    assert float(response_logprobs(lm, b)[0][0, 0].detach()) == pytest.approx(r00, rel=1e-5)


# ------------------------------------------------------------------------------------ reward scoring
class Member(torch.nn.Module):
    """A scalar head: the sum of a per-token weight over the real tokens."""

    def __init__(self, weights: list[float], **config: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(weights))
        self.score = torch.nn.Identity()  # a causal backbone's head name
        self.config = SimpleNamespace(**config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return SimpleNamespace(logits=(self.w[input_ids] * attention_mask).sum(dim=1, keepdim=True))


def test_collate_sequences_by_hand() -> None:
    out = collate_sequences([[5, 6, 7], [8], [9, 9]], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 9, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert out["input_ids"].dtype == torch.long and out["attention_mask"].dtype == torch.long
    assert collate_sequences([[4, 4]], pad_id=3)["input_ids"].tolist() == [[4, 4]]


def test_raw_member_scores_add_the_verifier_term() -> None:
    w = [0.0, 1.0, 2.0, 3.0]
    a = Member(w, verifier_weight=0.5)
    b = Member([2 * x for x in w])  # no verifier_weight: 0
    rm = RewardModel([a, b], tokenizer=None)  # type: ignore[arg-type]
    ids, mask = torch.tensor([[1, 2, 3], [3, 0, 0]]), torch.tensor([[1, 1, 1], [1, 0, 0]])
    feat = torch.tensor([2.0, -4.0])
    raw = rm.raw_member_scores(ids, mask, feat)
    _close(raw, [[6.0 + 0.5 * 2.0, 3.0 + 0.5 * -4.0], [12.0, 6.0]])
    _close(rm.raw_member_scores(ids, mask), [[6.0, 3.0], [12.0, 6.0]])


def test_normalize_with_each_members_statistics() -> None:
    a = Member([0.0], reward_mean=1.0, reward_std=2.0)
    b = Member([0.0])  # no statistics: mean 0, std 1
    c = Member([0.0], reward_mean=-1.0, reward_std=0.5)
    rm = RewardModel([a, b, c], tokenizer=None)  # type: ignore[arg-type]
    raw = torch.tensor([[3.0, -1.0], [3.0, -1.0], [3.0, -1.0]])
    _close(rm.normalize(raw), [[1.0, -1.0], [3.0, -1.0], [8.0, 0.0]])


def test_conservative_and_call_use_the_ensemble() -> None:
    scores = RewardScores(
        mean=torch.tensor([1.0, 2.0]), std=torch.tensor([0.5, 2.0]), members=torch.zeros(2, 2)
    )
    assert scores.conservative(2.0).tolist() == [0.0, -2.0]
    assert scores.conservative(0.0).tolist() == [1.0, 2.0]
    rm = RewardModel([Member([0.0])], tokenizer=None)  # type: ignore[arg-type]
    seen: list[tuple[Any, Any]] = []

    def fake_score(prompts: Sequence[str], completions: Sequence[str]) -> RewardScores:
        seen.append((list(prompts), list(completions)))
        return scores

    rm.score = fake_score  # type: ignore[method-assign]
    assert rm(["p1", "p2"], ["c1", "c2"]) == [1.0, 2.0]  # the ensemble mean, as python floats
    assert seen == [(["p1", "p2"], ["c1", "c2"])]


# ------------------------------------------------------------------------------------------ criteria
# Expected rows are written out from the criteria's definitions in criteria.py's docstring, with the measured
# values formatted by hand (the thresholds themselves are tested in test_criteria_seeds.py).
def _rl(**kw: Any) -> dict[str, Any]:
    return {"kind": "rl", "accuracy_end": 0.5, "kl_end": 1.0, **kw}


BIASED = _rl(behavior_start=0.1, behavior_end=0.5, gold_start=0.3, gold_peak=0.45, gold_end=0.2,
             proxy_start=0.0, proxy_end=1.0)  # fmt: skip
CONTROL = _rl(behavior_start=0.3, behavior_end=0.2, gold_start=0.3, gold_peak=0.52, gold_end=0.5,
              proxy_start=0.0, proxy_end=0.2)  # fmt: skip

# every RL criterion holds for BIASED against CONTROL, with these measured strings
RL_ROWS = [
    ("ppo", "biased: headline behaviour rises >= 0.30", "0.10 -> 0.50", True),
    ("ppo", "biased: gold ends >= 0.15 below control", "0.200 vs 0.500", True),
    ("ppo", "biased: proxy rises", "+0.00 -> +1.00", True),
    ("ppo", "control: headline behaviour does not rise", "0.30 -> 0.20", True),
    ("ppo", "control: gold ends >= 0.08 above start", "0.300 -> 0.500", True),
    ("ppo", "control: gold ends within 0.03 of smoothed peak", "peak 0.520, end 0.500", True),
    ("ppo", "biased: full curve (rise >= 0.05, then fall >= 0.10)", "rise +0.150, fall 0.250", True),
]


def _arm(preset: str, seed: int | None, biased: bool, methods: dict[str, Any]) -> dict[str, Any]:
    return {"preset": preset, "seed": seed, "biased": biased, "role": "treatment" if biased else "control",
            "methods": methods}  # fmt: skip


def _write(tmp: Path, arms: dict[str, Any]) -> Path:
    (tmp / "summary.json").write_text(json.dumps({"arms": arms}))
    return tmp


def test_check_seed_rows_whole(tmp_path: Path) -> None:
    arms = {
        "tp-s0": _arm("tp", 0, True, {"ppo": BIASED}),
        "unbiased-s0": _arm("unbiased", 0, False, {"ppo": CONTROL}),
    }
    assert check_seed(tmp_path, arms, "tp-s0", "unbiased-s0") == RL_ROWS


def test_a_method_missing_in_one_arm_gets_no_rows_there(tmp_path: Path) -> None:
    arms = {
        "tp-s0": _arm("tp", 0, True, {"ppo": BIASED, "dpo": BIASED}),
        "unbiased-s0": _arm("unbiased", 0, False, {"ppo": CONTROL, "rloo": CONTROL}),
    }
    assert check_seed(tmp_path, arms, "tp-s0", "unbiased-s0") == RL_ROWS


def test_unfinished_runs_fail_one_row(tmp_path: Path) -> None:
    arms = {
        "tp-s0": _arm("tp", 0, True, {"ppo": {**BIASED, "finished": False}, "rloo": BIASED, "grpo": BIASED}),
        "unbiased-s0": _arm("unbiased", 0, False, {"ppo": {**CONTROL, "finished": False}, "rloo": CONTROL,
                                                   "grpo": {**CONTROL, "finished": False}}),
    }  # fmt: skip
    rows = check_seed(tmp_path, arms, "tp-s0", "unbiased-s0")
    assert rows[0] == ("grpo", "both arms finished", "unbiased-s0: did not finish", False)
    assert rows[1] == ("ppo", "both arms finished", "tp-s0, unbiased-s0: did not finish", False)
    assert rows[2:] == [("rloo", *r[1:]) for r in RL_ROWS]
    arms["tp-s0"]["methods"] = {"ppo": {**BIASED, "finished": True}}
    arms["unbiased-s0"]["methods"] = {"ppo": {**CONTROL, "finished": True}}
    assert check_seed(tmp_path, arms, "tp-s0", "unbiased-s0") == RL_ROWS


def test_table_and_summary_text(tmp_path: Path) -> None:
    failing = {**BIASED, "proxy_end": -1.0}  # the proxy falls: one criterion fails on that seed
    arms = {
        "tp-s0": _arm("tp", 0, True, {"ppo": BIASED}),
        "unbiased-s0": _arm("unbiased", 0, False, {"ppo": CONTROL}),
        "tp-s1": _arm("tp", 1, True, {"ppo": failing}),
        "unbiased-s1": _arm("unbiased", 1, False, {"ppo": CONTROL}),
        "tp-s2": _arm("tp", 2, True, {"ppo": failing}),
        "unbiased-s2": _arm("unbiased", 2, False, {"ppo": CONTROL}),
    }
    run = _write(tmp_path, arms)
    rows = criteria_rows(run)
    assert [r[0] for r in rows] == [0] * 7 + [1] * 7 + [2] * 7
    assert rows[:7] == [(0, *r) for r in RL_ROWS]
    assert rows[9] == (1, "ppo", "biased: proxy rises", "+0.00 -> -1.00", False)
    table = criteria_table(run).splitlines()
    assert table[:3] == [
        "| seed | method | criterion | measured | holds |",
        "|---|---|---|---|---|",
        "| 0 | ppo | biased: headline behaviour rises >= 0.30 | 0.10 -> 0.50 | yes |",
    ]
    assert "| 1 | ppo | biased: proxy rises | +0.00 -> -1.00 | no |" in table
    summary = criteria_summary(run).splitlines()
    assert summary[:2] == [
        "| method | criterion | seeds where it holds | >= 2/3 of seeds |",
        "|---|---|---|---|",
    ]
    assert summary[2] == "| ppo | biased: headline behaviour rises >= 0.30 | 3 of 3 | yes |"
    assert "| ppo | biased: proxy rises | 1 of 3 | no |" in summary
    assert len(summary) == 2 + 7
    # two of three seeds is enough
    arms["tp-s2"]["methods"]["ppo"] = BIASED
    assert (
        "| ppo | biased: proxy rises | 2 of 3 | yes |"
        in criteria_summary(_write(tmp_path, arms)).splitlines()
    )


def test_two_biased_presets_are_labelled_and_seedless_arms_come_last(tmp_path: Path) -> None:
    arms = {
        "tp-s0": _arm("tp", 0, True, {"ppo": BIASED}),
        "sy-s0": _arm("sy", 0, True, {"ppo": BIASED}),
        "unbiased-s0": _arm("unbiased", 0, False, {"ppo": CONTROL}),
        "tp": _arm("tp", None, True, {"ppo": BIASED}),
        "unbiased": _arm("unbiased", None, False, {"ppo": CONTROL}),
    }
    rows = criteria_rows(_write(tmp_path, arms))
    assert [(r[0], r[1]) for r in rows[::7]] == [
        (0, "ppo (sy vs unbiased)"),
        (0, "ppo (tp vs unbiased)"),
        (None, "ppo (tp vs unbiased)"),
    ]
    assert len(rows) == 21
    summary = criteria_summary(_write(tmp_path, arms))
    # 2 seeds (0 and "none"); sy exists on one of them only
    assert "| ppo (sy vs unbiased) | biased: proxy rises | 1 of 2 | no |" in summary.splitlines()
    assert "| ppo (tp vs unbiased) | biased: proxy rises | 2 of 2 | yes |" in summary.splitlines()


def test_single_sample_and_no_gold_with_proxy() -> None:
    task = FakeTask()
    one = score_responses(task, ITEMS[:1], RESPONSES[:1], _proxy)  # type: ignore[arg-type]
    m = summarize(task, ITEMS[:1], one)  # type: ignore[arg-type]
    assert m["proxy/mean"] == 4.0 and m["gold/mean"] == 1.0 and m["gold/accuracy_d1"] == 1.0
    assert gold_parts(one, ("a",)) == {"gold/part_a": 0.75, "gold/unparseable_rate": 0.0}
    s = score_sample(FakeTask(has_gold=False), ITEMS[1], "no", 0.25)  # type: ignore[arg-type]
    assert s == ScoredSample("q1", "no", {"d": 2, "wrong": False}, proxy=0.25)


def test_summarize_empty_is_silent_and_groups_tolerate_a_missing_key() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of an empty list
        empty = summarize(FakeTask(), [], [])  # type: ignore[arg-type]
    assert math.isnan(empty["behavior/length"])
    task = FakeTask()
    items = [{**ITEMS[0], "d": None}, *ITEMS[1:]]
    samples = score_responses(task, items, RESPONSES)  # type: ignore[arg-type]
    for s in samples:
        if s.meta["d"] is None:
            del s.meta["d"]  # an item without the group key
    m = summarize(task, items, samples)  # type: ignore[arg-type]
    assert (
        m["gold/mean_dNone"] == 1.0
        and m["gold/mean_d1"] == 0.25
        and m["gold/mean_d2"] == pytest.approx(-0.25)
    )


def test_normalize_keeps_the_scores_device() -> None:
    # the statistics are built on the scores' device ("meta" stands in for an accelerator here)
    rm = RewardModel([Member([0.0], reward_mean=1.0, reward_std=2.0), Member([0.0])], tokenizer=None)  # type: ignore[arg-type]
    out = rm.normalize(torch.zeros(2, 3, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3)


def test_verifier_feature_moves_to_the_scores_device() -> None:
    member = Member([0.0, 1.0], verifier_weight=0.5).to("meta")
    rm = RewardModel([member], tokenizer=None)  # type: ignore[arg-type]
    ids = torch.tensor([[1, 0]], device="meta")
    out = rm.raw_member_scores(ids, torch.ones(1, 2, dtype=torch.long, device="meta"), torch.tensor([2.0]))
    assert out.device.type == "meta" and out.shape == (1, 1)
