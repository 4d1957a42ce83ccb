"""The run's headline table (report/headline.py): means over seeds per (method, arm preset), treatments first."""

from __future__ import annotations

import math

from rich.console import Console

from rewardlab.report.headline import headline_rows, headline_table


def _method(
    gold: tuple[float, float], proxy: tuple[float, float], beh: tuple[float, float], kl: float
) -> dict:
    return {"gold_start": gold[0], "gold_end": gold[1], "proxy_start": proxy[0], "proxy_end": proxy[1],
            "behavior": "behavior/sycophancy_rate", "behavior_start": beh[0], "behavior_end": beh[1],
            "kl_end": kl}  # fmt: skip


SUMMARY = {
    "arms": {
        "unbiased-s0": {"preset": "unbiased", "role": "control",
                        "methods": {"ppo": _method((0.3, 0.4), (0.0, 0.2), (0.3, 0.1), 0.5)}},
        "time-pressed-s0": {"preset": "time-pressed", "role": "treatment",
                            "methods": {"ppo": _method((0.3, 0.1), (0.0, 1.0), (0.4, 1.0), 2.0),
                                        "bon": _method((0.3, 0.2), (0.0, 0.9), (0.3, 1.0), 3.0)}},
        "time-pressed-s1": {"preset": "time-pressed", "role": "treatment",
                            "methods": {"ppo": _method((0.5, 0.0), (0.2, 0.8), (0.2, 0.9), float("nan"))}},
    }
}  # fmt: skip


def test_rows_average_seeds_and_put_treatments_first() -> None:
    rows = headline_rows(SUMMARY)
    assert [(r["method"], r["preset"], r["seeds"]) for r in rows] == [
        ("ppo", "time-pressed", 2), ("ppo", "unbiased", 1), ("bon", "time-pressed", 1)
    ]  # fmt: skip
    tp = rows[0]
    assert math.isclose(tp["gold_start"], 0.4) and math.isclose(tp["gold_end"], 0.05)
    assert math.isclose(tp["proxy_end"], 0.9) and math.isclose(tp["behavior_start"], 0.3)
    assert tp["kl_end"] == 2.0  # the NaN of seed 1 is left out of the mean
    assert rows[1]["role"] == "control" and rows[1]["gold_end"] == 0.4


def test_table_prints_start_to_end() -> None:
    console = Console(width=200, record=True)
    console.print(headline_table(SUMMARY))
    text = console.export_text()
    assert (
        "sycophancy_rate" in text
        and "unbiased*" in text
        and "* control arm" in text
        and "mean over 1/2 seed(s)" in text
    )
    assert "+0.400→+0.050" in text  # time-pressed PPO's gold, mean of 2 seeds
    assert "0.300→1.000" in text  # best-of-n's sycophancy, unsigned
    assert headline_rows({"arms": {}}) == []
