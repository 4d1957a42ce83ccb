"""`rewardlab criteria`'s rows, labels, tables and summary, asserted whole (written to kill mutmut's
mutants of ``rewardlab.audit.criteria``; see docs/testing.md; the thresholds themselves are tested in
test_criteria_seeds.py). Expected rows are written out from the criteria's definitions in the module
docstring, with the measured values formatted by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rewardlab.audit.criteria import check_seed, criteria_rows, criteria_summary, criteria_table


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
