"""The report's numbers against values worked out by hand from the audit rows (written to kill
mutmut's mutants of ``rewardlab.report.analysis``; see docs/testing.md).

Runs are built in memory (no audit files), so each function is checked on its own: KL per row, the
first and last finite readings, the smoothed peak, KL at the end, the per-seed mean curve, the pooled
law fit with each seed's own baseline, the comparison table and ``summary.json``'s structure. Law fits
are checked against the 2x2 normal equations solved by Cramer's rule with python floats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rewardlab.report.analysis import (
    Arm,
    MethodRun,
    _first_last_finite,
    _nanmean0,
    _num,
    build_summary,
    compare_methods,
    fit_runs,
    group_runs,
    headline_key,
    law_dict,
    mean_curve,
    row_kl,
    summarize_method,
)
from rewardlab.tasks.base import TaskInfo

NAN = math.nan
INFO = TaskInfo(name="t", has_gold=True, headline="sycophancy_rate", gold_parts=("x", "y"))


def _lstsq2(x1: list[float], x2: list[float], y: list[float]) -> tuple[float, float]:
    """Least squares y ~ a*x1 + b*x2 (no intercept) from the normal equations, by Cramer's rule."""
    s11 = sum(u * u for u in x1)
    s22 = sum(v * v for v in x2)
    s12 = sum(u * v for u, v in zip(x1, x2))
    s1y = sum(u * w for u, w in zip(x1, y))
    s2y = sum(v * w for v, w in zip(x2, y))
    det = s11 * s22 - s12 * s12
    return (s1y * s22 - s12 * s2y) / det, (s11 * s2y - s12 * s1y) / det


def _rl_fit(d: list[float], r: list[float]) -> tuple[float, float]:
    pos = [(x, y) for x, y in zip(d, r) if x > 0]
    return _lstsq2([x for x, _ in pos], [-x * math.log(x) for x, _ in pos], [y for _, y in pos])


def _rl_rows(kl: list[float], gold: list[float], **cols: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for i, (k, g) in enumerate(zip(kl, gold)):
        row: dict[str, Any] = {
            "step": 10 * i,
            "kl/estimator": "k1",
            "kl/k1": k,
            "kl/k3": 2 * k + 1.0,
            "gold/mean": g,
        }
        row.update({c: v[i] for c, v in cols.items()})
        rows.append(row)
    return rows


# One biased PPO run, worked by hand.
KL = [0.0, 0.1, 0.3, 0.6, 1.0]
GOLD = [0.50, 0.60, 0.58, 0.70, 0.40]  # raw max at index 3; 3-point smoothed max at index 2
COLS: dict[str, list[Any]] = {
    "proxy/mean": [None, 0.1, 0.3, 0.5, 0.9],
    "gold/accuracy": [0.8, 0.7, 0.7, 0.6, 0.5],
    "behavior/sycophancy_rate": [0.1, 0.2, 0.3, 0.5, 0.6],
    "behavior/other": [0.9, 0.8, 0.7, 0.6, 0.05],
    "behavior/length": [10.0, 12.0, 14.0, 16.0, 18.0],
    "gold/part_x": [0.3, 0.3, 0.3, 0.35, 0.2],
    "gold/part_y": [0.1, 0.2, 0.2, 0.25, 0.3],
}


def _ppo(tmp: Path, name: str = "ppo") -> MethodRun:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "summary.json").write_text(json.dumps({"seconds": 12.5}))
    return MethodRun(name, "rl", _rl_rows(KL, GOLD, **COLS), tmp)


def test_num_and_column() -> None:
    assert _num(True) == 1.0 and _num(False) == 0.0 and _num(2) == 2.0 and _num(1.5) == 1.5
    # numbers only: a string, even "1.5", is not a metric value
    assert math.isnan(_num(None)) and math.isnan(_num("1.5")) and math.isnan(_num([1]))
    run = MethodRun("m", "rl", [{"a": 1}, {"a": None}, {}, {"a": "x"}, {"a": True}, {"a": "2"}], Path("."))
    np.testing.assert_array_equal(run.column("a"), [1.0, NAN, NAN, NAN, 1.0, NAN])


def test_row_kl_by_hand() -> None:
    assert row_kl({"kl": 0.3, "n": 4}, "bon") == 0.3
    # a non-numeric KL is not replaced by the n formula
    assert math.isnan(row_kl({"kl": "0.2", "n": 4}, "bon"))
    assert row_kl({"kl": None, "n": 4}, "bon") == pytest.approx(math.log(4) - 3 / 4)
    assert row_kl({"n": 8}, "bon") == pytest.approx(math.log(8) - 7 / 8)
    assert row_kl({"n": 1}, "bon") == 0.0
    assert math.isnan(row_kl({"n": 0.5}, "bon")) and math.isnan(row_kl({}, "bon"))
    # RL rows: the estimator named by the row, then k1, then a bare "kl"
    assert row_kl({"kl/estimator": "k3", "kl/k3": 0.2, "kl/k1": 0.5, "kl": 0.9}, "rl") == 0.2
    assert row_kl({"kl/estimator": "k3", "kl/k1": 0.5, "kl": 0.9}, "rl") == 0.5
    assert row_kl({"kl/k1": 0.5, "kl/k2": 0.7, "kl": 0.9}, "rl") == 0.5
    assert row_kl({"kl/estimator": None, "kl/k2": 0.7, "kl": 0.9}, "rl") == 0.9
    assert row_kl({"kl/estimator": "k2", "kl/k2": None, "kl/k1": None, "kl": 0.9}, "rl") == 0.9
    assert math.isnan(row_kl({"kl/k2": 0.7}, "rl"))


def test_method_run_kl_uses_its_kind() -> None:
    bon = MethodRun("bon", "bon", [{"n": 1}, {"n": 4}, {"n": 16, "kl": 2.0}], Path("."))
    np.testing.assert_allclose(bon.kl(), [0.0, math.log(4) - 0.75, 2.0])
    rl = MethodRun(
        "ppo",
        "rl",
        [{"step": 0, "kl/k1": -0.01}, {"step": 1, "kl/estimator": "k3", "kl/k3": 0.25}],
        Path("."),
    )
    np.testing.assert_allclose(rl.kl(), [-0.01, 0.25])
    np.testing.assert_allclose(rl.sqrt_kl(), [0.0, 0.5])  # a negative k1 is clipped to 0 before the sqrt


def test_first_last_finite_nanmean_headline_law_dict() -> None:
    assert _first_last_finite(np.array([NAN, 1.0, NAN, 2.0, NAN])) == (1.0, 2.0)
    assert _first_last_finite(np.array([3.0])) == (3.0, 3.0)
    first, last = _first_last_finite(np.array([NAN, NAN]))
    assert math.isnan(first) and math.isnan(last)
    out = _nanmean0(np.array([[1.0, NAN, NAN], [3.0, 4.0, NAN]]))
    np.testing.assert_allclose(out[:2], [2.0, 4.0])
    assert math.isnan(out[2])
    assert headline_key(INFO) == "behavior/sycophancy_rate"
    assert headline_key(TaskInfo(name="t", has_gold=True)) == "behavior/length"
    assert law_dict(None) is None


def test_summarize_method_by_hand(tmp_path: Path) -> None:
    arm = Arm("tp-s0", "tp", 0, tmp_path, role="treatment")
    s = summarize_method(arm, _ppo(tmp_path / "ppo"), INFO)
    assert (s["arm"], s["preset"], s["seed"], s["biased"]) == ("tp-s0", "tp", 0, True)
    assert (s["method"], s["kind"], s["x_key"], s["n_points"]) == ("ppo", "rl", "step", 5)
    assert (s["x_start"], s["x_end"]) == (0.0, 40.0)
    assert (s["gold_start"], s["gold_end"]) == (0.50, 0.40)
    # 3-point centered average: [0.55, 0.56, 0.62667, 0.56, 0.55] -> index 2, not the raw max at 3
    assert s["gold_peak"] == pytest.approx((0.60 + 0.58 + 0.70) / 3)
    assert s["gold_peak_index"] == 2 and s["gold_peak_x"] == 20.0 and s["gold_peak_kl"] == 0.3
    assert s["gold_peak_at_end"] is False
    assert s["gold_drop_from_peak"] == pytest.approx((0.60 + 0.58 + 0.70) / 3 - 0.40)
    assert (s["proxy_start"], s["proxy_end"]) == (0.1, 0.9)  # the first finite proxy
    assert (s["accuracy_start"], s["accuracy_end"]) == (0.8, 0.5)
    assert s["behavior"] == "behavior/sycophancy_rate"
    assert (s["behavior_start"], s["behavior_end"]) == (0.1, 0.6)
    assert (s["length_start"], s["length_end"]) == (10.0, 18.0)
    assert s["kl_end"] == 1.0  # KL of the last row, on the row's estimator (k1 here, not k3)
    assert s["wall_seconds"] == 12.5
    assert s["attribution"] == {
        "x": pytest.approx(0.2 - 0.3),
        "y": pytest.approx(0.3 - 0.1),
        "unparseable": pytest.approx((0.40 - 0.50) - (0.2 - 0.3) - (0.3 - 0.1)),
    }
    d = [math.sqrt(k) for k in KL]
    a, b = _rl_fit(d, [g - 0.50 for g in GOLD])
    assert s["law_error"] is None
    assert s["law"]["kind"] == "rl" and s["law"]["gold0"] == 0.50
    assert s["law"]["a"] == pytest.approx(a, rel=1e-9) and s["law"]["b"] == pytest.approx(b, rel=1e-9)
    assert s["law"]["n_points"] == 5
    assert s["law"]["peak_in_range"] == (s["law"]["d_peak"] is not None and s["law"]["d_peak"] <= 1.0)


def test_summarize_method_default_info_edges_and_no_gold(tmp_path: Path) -> None:
    arm = Arm("unbiased-s1", "unbiased", 1, tmp_path, role="control")
    rising = MethodRun("ppo", "rl", _rl_rows([0.0, 0.2, 0.4], [0.1, 0.2, 0.3],
                                             **{"behavior/sycophancy_rate": [0.0, 0.1, 0.2]}), tmp_path)  # fmt: skip
    s = summarize_method(arm, rising)  # default info: gold, headline sycophancy_rate
    assert s["biased"] is False and s["seed"] == 1
    assert s["gold_peak_index"] == 2 and s["gold_peak_at_end"] is True
    assert s["gold_peak"] == pytest.approx(0.25)
    assert (s["behavior_start"], s["behavior_end"]) == (0.0, 0.2)
    assert math.isnan(s["wall_seconds"])  # no summary.json
    one = MethodRun("ppo", "rl", _rl_rows([0.0], [0.3]), tmp_path)
    s1 = summarize_method(arm, one, INFO)
    assert s1["gold_peak_index"] == 0 and s1["gold_peak_at_end"] is False
    assert s1["law"] is None and "at least 2" in s1["law_error"]
    no_gold = MethodRun("ppo", "rl", _rl_rows([0.0, 0.1], [NAN, NAN]), tmp_path)
    s2 = summarize_method(arm, no_gold, INFO)
    assert math.isnan(s2["gold_peak"]) and s2["gold_peak_index"] is None and s2["gold_peak_x"] is None
    assert math.isnan(s2["gold_peak_kl"]) and s2["gold_peak_at_end"] is None
    assert s2["law"] is None and isinstance(s2["law_error"], str)
    info = TaskInfo(name="t", has_gold=False, headline="other")
    s3 = summarize_method(arm, _ppo(tmp_path / "p"), info)
    assert (s3["behavior_start"], s3["behavior_end"]) == (0.9, 0.05)
    assert s3["attribution"] == {} and s3["law"] is None and s3["law_error"] == "the task has no gold"


def _arms(tmp: Path) -> list[Arm]:
    """Two seeds of a biased preset and one control; seed 1 has other gold and no proxy column."""
    r0 = _ppo(tmp / "a0")
    gold1 = [0.30, 0.45, 0.40, 0.42, 0.20]
    kl1 = [
        NAN,
        0.2,
        0.05,
        0.4,
        0.8,
    ]  # its first KL is missing: the baseline is the point with the smallest KL
    r1 = MethodRun(
        "ppo", "rl", _rl_rows(kl1, gold1, **{"behavior/sycophancy_rate": [0.2, 0.2, 0.3, 0.4, 0.9]}), tmp
    )
    rc = MethodRun("ppo", "rl", _rl_rows([0.0, 0.3], [0.5, 0.7]), tmp)
    bon = MethodRun("bon", "bon", [{"n": 1, "gold/mean": 0.5}, {"n": 4, "gold/mean": 0.6}], tmp)
    return [
        Arm("tp-s0", "tp", 0, tmp, {"ppo": r0, "bon": bon}),
        Arm("tp-s1", "tp", 1, tmp, {"ppo": r1}),
        Arm("unbiased-s0", "unbiased", 0, tmp, {"ppo": rc}, role="control"),
    ]


def test_group_runs_and_mean_curve(tmp_path: Path) -> None:
    arms = _arms(tmp_path)
    groups = group_runs(arms)
    assert list(groups) == [("tp", "ppo"), ("tp", "bon"), ("unbiased", "ppo")]
    r0, r1 = arms[0].methods["ppo"], arms[1].methods["ppo"]
    assert groups[("tp", "ppo")] == [r0, r1] and groups[("unbiased", "ppo")] == [arms[2].methods["ppo"]]
    short = MethodRun("ppo", "rl", _rl_rows([0.04, 0.16], [1.0, NAN]), tmp_path)
    c = mean_curve([r1, short], "gold/mean")
    np.testing.assert_array_equal(c.x, [0.0, 10.0, 20.0, 30.0, 40.0])
    # step 0: r1 has no KL (NaN) -> only short's d = 0.2; step 10: (sqrt .2 + .4) / 2
    np.testing.assert_allclose(
        c.d, [0.2, (math.sqrt(0.2) + 0.4) / 2, math.sqrt(0.05), math.sqrt(0.4), math.sqrt(0.8)]
    )
    np.testing.assert_allclose(c.y, [(0.30 + 1.0) / 2, 0.45, 0.40, 0.42, 0.20])  # NaN gold of `short` ignored
    c2 = mean_curve([r1, short], values=[np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([3.0, 6.0])])
    np.testing.assert_allclose(c2.y, [2.0, 4.0, 3.0, 4.0, 5.0])


def test_fit_runs_pools_seeds_each_on_its_own_baseline(tmp_path: Path) -> None:
    arms = _arms(tmp_path)
    r0, r1 = arms[0].methods["ppo"], arms[1].methods["ppo"]
    fit = fit_runs([r0, r1])
    d0 = [math.sqrt(k) for k in KL]
    rr0 = [g - 0.50 for g in GOLD]
    d1 = [math.sqrt(k) for k in (0.2, 0.05, 0.4, 0.8)]
    rr1 = [g - 0.40 for g in (0.45, 0.40, 0.42, 0.20)]  # baseline: gold at KL 0.05 (0.40), not the first row
    a, b = _rl_fit(d0 + d1, rr0 + rr1)
    assert fit.kind == "rl" and fit.n_points == 9
    assert fit.a == pytest.approx(a, rel=1e-9) and fit.b == pytest.approx(b, rel=1e-9)
    assert fit.gold0 == pytest.approx((0.50 + 0.40) / 2)
    empty = MethodRun("ppo", "rl", _rl_rows([NAN, 0.1], [0.3, NAN]), tmp_path)
    assert fit_runs([empty, r0]).a == pytest.approx(fit_runs([r0]).a)  # a run with no finite point is skipped
    with pytest.raises(ValueError, match="no finite"):
        fit_runs([empty])
    bon = MethodRun(
        "bon",
        "bon",
        [{"n": n, "gold/mean": g} for n, g in ((1, 0.5), (2, 0.6), (4, 0.65), (8, 0.6))],
        tmp_path,
    )
    bfit = fit_runs([bon])
    d = [math.sqrt(math.log(n) - (n - 1) / n) for n in (1, 2, 4, 8)]
    a, b = _lstsq2(d, [-(x**2) for x in d], [0.0, 0.1, 0.15, 0.1])
    assert (
        bfit.kind == "bon" and bfit.a == pytest.approx(a, rel=1e-9) and bfit.b == pytest.approx(b, rel=1e-9)
    )
    assert bfit.gold0 == 0.5


def test_compare_methods_averages_over_seeds(tmp_path: Path) -> None:
    arms = _arms(tmp_path)
    rows = compare_methods(arms, INFO)
    assert [(r["preset"], r["method"], r["kind"], r["n_seeds"], r["biased"]) for r in rows] == [
        ("tp", "ppo", "rl", 2, True),
        ("tp", "bon", "bon", 1, True),
        ("unbiased", "ppo", "rl", 1, False),
    ]
    tp = rows[0]
    assert tp["gold_start"] == pytest.approx((0.50 + 0.30) / 2)
    assert tp["gold_end"] == pytest.approx((0.40 + 0.20) / 2)
    peak1 = (0.45 + 0.40 + 0.42) / 3  # seed 1's smoothed peak, at index 2
    assert tp["gold_peak"] == pytest.approx(((0.60 + 0.58 + 0.70) / 3 + peak1) / 2)
    assert tp["kl_end"] == pytest.approx((1.0 + 0.8) / 2)
    assert tp["behavior_end"] == pytest.approx((0.6 + 0.9) / 2)
    assert tp["proxy_end"] == 0.9  # seed 1 has no proxy: the mean is over the seeds that have one
    assert tp["accuracy_end"] == 0.5
    assert tp["wall_seconds"] == 12.5
    ctrl = rows[2]
    assert (ctrl["gold_start"], ctrl["gold_end"], ctrl["kl_end"]) == (0.5, 0.7, 0.3)
    assert math.isnan(ctrl["proxy_end"]) and math.isnan(ctrl["wall_seconds"])


def test_build_summary_structure_and_pooled_laws(tmp_path: Path) -> None:
    arms = _arms(tmp_path)
    warnings = ["w1"]
    out = build_summary(arms, tmp_path, warnings, INFO)
    assert out["run_dir"] == str(tmp_path) and out["task"] == INFO.to_dict()
    assert out["kl_units"] == "nats" and out["peak_window"] == 3
    assert out["warnings"] == ["w1"] and out["warnings"] is not warnings
    assert list(out["arms"]) == ["tp-s0", "tp-s1", "unbiased-s0"]
    a0 = out["arms"]["tp-s0"]
    assert (a0["preset"], a0["seed"], a0["biased"], a0["role"]) == ("tp", 0, True, "treatment")
    assert out["arms"]["unbiased-s0"]["role"] == "control" and out["arms"]["unbiased-s0"]["biased"] is False
    assert list(a0["methods"]) == ["ppo", "bon"]
    assert a0["methods"]["ppo"] == summarize_method(arms[0], arms[0].methods["ppo"], INFO)
    # pooled: only groups with at least two seeds
    assert len(out["pooled_laws"]) == 1
    pooled = out["pooled_laws"][0]
    assert (pooled["preset"], pooled["method"], pooled["n_seeds"], pooled["law_error"]) == (
        "tp",
        "ppo",
        2,
        None,
    )
    assert pooled["law"] == law_dict(fit_runs([arms[0].methods["ppo"], arms[1].methods["ppo"]]))
    assert "peak_in_range" in pooled["law"]
    assert out["comparison"] == compare_methods(arms, INFO)
    # no gold: no pooled laws
    nog = build_summary(arms, tmp_path, [], TaskInfo(name="t", has_gold=False))
    assert nog["pooled_laws"] == []
    # a pooled fit that fails is reported with its error
    bad = [
        Arm("tp-s0", "tp", 0, tmp_path, {"ppo": MethodRun("ppo", "rl", _rl_rows([0.0], [0.1]), tmp_path)}),
        Arm("tp-s1", "tp", 1, tmp_path, {"ppo": MethodRun("ppo", "rl", _rl_rows([0.0], [0.2]), tmp_path)}),
    ]
    p = build_summary(bad, tmp_path, [], INFO)["pooled_laws"]
    assert p[0]["law"] is None and "at least 2" in p[0]["law_error"] and p[0]["n_seeds"] == 2


def test_build_summary_reads_task_json_when_no_info_given(tmp_path: Path) -> None:
    arms = _arms(tmp_path)
    (tmp_path / "task.json").write_text(json.dumps(INFO.to_dict()))
    out = build_summary(arms, tmp_path, [])
    assert out["task"] == INFO.to_dict()
    assert out["arms"]["tp-s0"]["methods"]["ppo"]["behavior"] == "behavior/sycophancy_rate"


# ---------------------------------------------------------------- summaries: the task info reaches every table
def _rl_run(
    tmp_path: Path, name: str, golds: list[float], kls: list[float], extra: dict[str, list[float]]
) -> Any:
    from rewardlab.report.analysis import MethodRun

    rows = [{"step": 2 * i, "gold/mean": g, "proxy/mean": 0.1 * i, "kl/k1": k, "kl/estimator": "k1",
             **{key: vals[i] for key, vals in extra.items()}} for i, (g, k) in enumerate(zip(golds, kls, strict=True))]  # fmt: skip
    return MethodRun(name, "rl", rows, tmp_path / name)


def _arm_of(name: str, preset: str, seed: int, run: Any, role: str = "treatment") -> Any:
    from rewardlab.report.analysis import Arm

    return Arm(name, preset, seed, Path(name), {run.name: run}, role)


def test_nanmean0_of_opposite_infinities_is_nan_without_a_warning() -> None:
    import warnings

    from rewardlab.report.analysis import _nanmean0

    a = np.array([[np.inf, 1.0], [-np.inf, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inf + -inf is an invalid operation numpy would warn about
        out = _nanmean0(a)
    assert math.isnan(out[0]) and out[1] == 2.0


def test_fit_runs_reads_a_slightly_negative_kl_as_zero(tmp_path: Path) -> None:
    from rewardlab.audit.laws import fit_rl_law
    from rewardlab.report.analysis import fit_runs

    golds = [0.30, 0.38, 0.40, 0.36, 0.30]
    run = _rl_run(tmp_path, "ppo", golds, [-0.01, 1.0, 4.0, 9.0, 16.0], {})  # k1 can dip below 0
    fit = fit_runs([run])
    want = fit_rl_law(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), np.array(golds) - 0.30)
    assert fit.a == pytest.approx(want.a) and fit.b == pytest.approx(want.b)


def test_compare_methods_and_build_summary_use_the_tasks_headline(tmp_path: Path) -> None:
    from rewardlab.report.analysis import build_summary, compare_methods
    from rewardlab.tasks.base import TaskInfo

    extra = {"behavior/padding_rate": [0.1, 0.2, 0.7], "behavior/sycophancy_rate": [0.0, 0.05, 0.05]}
    arm = _arm_of(
        "time-pressed-s0",
        "time-pressed",
        0,
        _rl_run(tmp_path, "ppo", [0.3, 0.2, 0.1], [0.0, 1.0, 4.0], extra),
    )
    info = TaskInfo(name="concise", has_gold=True, behaviors={"padding_rate": "padding", "sycophancy_rate": "s"},
                    headline="padding_rate")  # fmt: skip
    assert compare_methods([arm], info)[0]["behavior_end"] == 0.7
    summary = build_summary([arm], tmp_path, [], info)
    assert summary["comparison"][0]["behavior_end"] == 0.7
    assert summary["arms"]["time-pressed-s0"]["methods"]["ppo"]["behavior_end"] == 0.7


def test_build_summary_infers_the_task_from_the_rows_and_warns_on_a_bad_task_json(tmp_path: Path) -> None:
    from rewardlab.report.analysis import build_summary

    extra = {"behavior/padding_rate": [0.1, 0.2, 0.7], "behavior/length": [3.0, 4.0, 9.0]}
    arm = _arm_of("a-s0", "a", 0, _rl_run(tmp_path, "ppo", [0.3, 0.2, 0.1], [0.0, 1.0, 4.0], extra))
    summary = build_summary([arm], tmp_path, [])  # no task.json: inferred from the audit rows
    assert summary["task"]["headline"] == "padding_rate" and summary["comparison"][0]["behavior_end"] == 0.7
    (tmp_path / "task.json").write_text("{not json")
    warnings: list[str] = []
    summary = build_summary([arm], tmp_path, warnings)
    assert any("task.json: unreadable" in w for w in warnings) and summary["warnings"] == warnings


def test_build_summary_pools_every_group_with_several_seeds(tmp_path: Path) -> None:
    from rewardlab.report.analysis import build_summary
    from rewardlab.tasks.base import TaskInfo

    golds, kls = [0.30, 0.38, 0.40, 0.36, 0.30], [0.0, 1.0, 4.0, 9.0, 16.0]
    arms = [_arm_of("a-s0", "a", 0, _rl_run(tmp_path, "ppo", golds, kls, {})),  # one seed: not pooled
            _arm_of("b-s0", "b", 0, _rl_run(tmp_path, "ppo", golds, kls, {})),
            _arm_of("b-s1", "b", 1, _rl_run(tmp_path, "ppo", [g + 0.01 for g in golds], kls, {}))]  # fmt: skip
    pooled = build_summary(arms, tmp_path, [], TaskInfo(name="t", has_gold=True))["pooled_laws"]
    assert [(p["preset"], p["method"], p["n_seeds"]) for p in pooled] == [("b", "ppo", 2)]


def test_summarize_method_without_task_info_assumes_gold(tmp_path: Path) -> None:
    from rewardlab.report.analysis import summarize_method

    run = _rl_run(tmp_path, "ppo", [0.30, 0.35, 0.40, 0.41], [0.0, 1.0, 4.0, 9.0], {})
    s = summarize_method(_arm_of("a-s0", "a", 0, run), run)  # no TaskInfo: the arithmetic defaults, with gold
    assert s["law"] is not None and s["law_error"] is None


def test_summarize_method_says_whether_the_run_finished_and_carries_its_warnings(tmp_path: Path) -> None:
    from rewardlab.report.analysis import summarize_method

    run = _rl_run(tmp_path, "ppo", [0.30, 0.35, 0.40], [0.0, 1.0, 4.0], {})
    s = summarize_method(_arm_of("a-s0", "a", 0, run), run)
    assert (s["finished"], s["status"], s["run_warnings"]) == (True, "complete", [])
    run.status = {"state": "interrupted", "step": 4, "reason": "stopped by Ctrl-C"}
    run.warnings = ["collapsed: train/grad_norm has been 0"]
    s = summarize_method(_arm_of("a-s0", "a", 0, run), run)
    assert s["finished"] is False and s["status"] == "interrupted at step 4: stopped by Ctrl-C"
    assert (
        s["run_warnings"] == ["collapsed: train/grad_norm has been 0"]
        and s["run_warnings"] is not run.warnings
    )
