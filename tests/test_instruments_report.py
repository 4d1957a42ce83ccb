"""summary.json and the report's tables against numbers computed by hand from the audit rows.

A synthetic run of two seeds per preset. The biased arms' gold has a one-point spike (so the raw maximum
and the 3-point smoothed peak differ in place and value), a missing first gold reading on seed 1, a
headline column next to decoy behaviour columns, and a KL that falls at the end and is logged with
``k3`` (so the last row, the first row and the wrong estimator all differ). The control arms' gold
follows the over-optimization laws exactly from a different baseline on each seed, so the pooled fit
with per-seed baselines recovers the law's ``a`` and ``b`` exactly, and a fit without them does not.
"""

from __future__ import annotations

import html as htmllib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rewardlab.report.analysis import build_summary, load_arms, load_task_info, mean_curve
from rewardlab.report.html import render_report

STEPS = [0, 10, 20, 30, 40, 50, 60, 70, 80]
SPIKY_GOLD = [0.10, 0.20, 0.25, 0.95, 0.05, 0.55, 0.65, 0.40, 0.10]  # raw max at 3, smoothed max at 6
RL_LAW = (0.5, 0.35)  # R(d) = d (a - b log d)
BON_LAW = (0.6, 0.4)  # R(d) = d (a - b d)
BASELINE = {0: 0.30, 1: 0.55}
TASK = {"name": "synthetic", "has_gold": True,
        "behaviors": {"decoy_rate": "decoy", "sycophancy_rate": "sycophancy", "sycophancy_words": "words"},
        "headline": "sycophancy_rate", "gold_parts": ["accuracy", "sycophancy"]}  # fmt: skip


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _spiky_rows(seed: int) -> list[dict[str, Any]]:
    rows = []
    for i, step in enumerate(STEPS):
        k3 = [0.0, 0.2, 0.5, 0.9, 1.4, 2.0, 2.6, 3.0, 2.2][i] + 0.1 * seed  # falls at the end
        gold = SPIKY_GOLD[i] + 0.01 * seed
        rows.append({"step": step, "kl/k1": 3 * k3 + 0.05, "kl/k2": 2 * k3 + 0.01, "kl/k3": k3, "kl/estimator": "k3",
                     "gold/mean": None if (seed == 1 and i == 0) else gold, "proxy/mean": 0.1 * i - 0.3 + seed,
                     "gold/accuracy": 0.4 + 0.01 * i, "behavior/decoy_rate": 0.9 - 0.1 * i,
                     "behavior/sycophancy_rate": 0.2 + 0.09 * i + 0.01 * seed, "behavior/sycophancy_words": 0.05 * i,
                     "behavior/length": 5.0 + i, "gold/part_accuracy": 0.02 * i, "gold/part_sycophancy": -0.03 * i})  # fmt: skip
    if seed == 1:
        del rows[-1]  # seed 1 stopped one audit earlier
    return rows


def _law_rows(seed: int, kind: str) -> list[dict[str, Any]]:
    """Gold exactly on the law, from this seed's own baseline."""
    rows = []
    if kind == "rl":
        a, b = RL_LAW
        for i, step in enumerate(STEPS):
            kl = (0.3 * i) ** 2 * (1 + 0.5 * seed)
            d = math.sqrt(kl)
            r = d * (a - b * math.log(d)) if d > 0 else 0.0
            rows.append({"step": step, "kl/k1": kl, "kl/k3": 5.0, "kl/estimator": "k1", "gold/mean": BASELINE[seed] + r,
                         "proxy/mean": d, "behavior/sycophancy_rate": 0.1, "behavior/decoy_rate": 0.5})  # fmt: skip
    else:
        a, b = BON_LAW
        for n in (1, 2, 4, 8, 16, 32):
            kl = math.log(n) - (n - 1) / n
            d = math.sqrt(kl)
            rows.append({"n": n, "kl": kl, "gold/mean": BASELINE[seed] + d * (a - b * d), "proxy/mean": d,
                         "behavior/sycophancy_rate": 0.1 + 0.01 * n, "behavior/decoy_rate": 0.5})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    (root / "task.json").write_text(json.dumps(TASK))
    for seed in (0, 1):
        for preset, role in (("time-pressed", "treatment"), ("unbiased", "control")):
            arm = root / f"{preset}-s{seed}"
            arm.mkdir()
            (arm / "arm.json").write_text(json.dumps({"name": preset, "role": role, "seed": seed}))
        _jsonl(root / f"time-pressed-s{seed}" / "ppo" / "audit.jsonl", _spiky_rows(seed))
        _jsonl(root / f"unbiased-s{seed}" / "ppo" / "audit.jsonl", _law_rows(seed, "rl"))
        _jsonl(root / f"unbiased-s{seed}" / "bon" / "audit.jsonl", _law_rows(seed, "bon"))
    return root


@pytest.fixture(scope="module")
def summary(run_dir: Path) -> dict[str, Any]:
    warnings: list[str] = []
    arms = load_arms(run_dir, warnings)
    return build_summary(arms, run_dir, warnings, load_task_info(run_dir, arms, warnings))


def _rows(run_dir: Path, arm: str, method: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / arm / method / "audit.jsonl").read_text().splitlines()]


def _smoothed_peak(values: list[float | None]) -> tuple[int, float]:
    """Max over i of the mean of the finite readings among i-1, i, i+1 (first index on ties)."""
    best_i, best = -1, -math.inf
    for i in range(len(values)):
        w = [v for v in values[max(0, i - 1) : i + 2] if v is not None]
        if w and sum(w) / len(w) > best:
            best_i, best = i, sum(w) / len(w)
    return best_i, best


def _fit(d: np.ndarray, r: np.ndarray, kind: str) -> tuple[float, float]:
    """Least squares of r = a d - b g(d), no intercept: g = d log d (RL), d² (best-of-n)."""
    g = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0) if kind == "rl" else d**2
    (a, minus_b), *_ = np.linalg.lstsq(np.stack([d, -g], axis=1), r, rcond=None)
    return float(a), float(minus_b)


def test_per_arm_numbers_from_the_audit_rows(run_dir: Path, summary: dict[str, Any]) -> None:
    for seed in (0, 1):
        rows = _rows(run_dir, f"time-pressed-s{seed}", "ppo")
        s = summary["arms"][f"time-pressed-s{seed}"]["methods"]["ppo"]
        gold = [r["gold/mean"] for r in rows]
        finite = [g for g in gold if g is not None]
        assert s["gold_start"] == pytest.approx(finite[0]) and s["gold_end"] == pytest.approx(finite[-1])
        i, peak = _smoothed_peak(gold)
        assert rows[i]["step"] == 60 and peak < max(finite) - 0.2  # not the spike
        assert s["gold_peak"] == pytest.approx(peak) and s["gold_peak_x"] == rows[i]["step"]
        assert s["gold_peak_kl"] == pytest.approx(rows[i]["kl/k3"])
        assert s["kl_end"] == pytest.approx(rows[-1]["kl/k3"])
        assert s["proxy_start"] == pytest.approx(rows[0]["proxy/mean"])
        assert s["proxy_end"] == pytest.approx(rows[-1]["proxy/mean"])
        assert s["behavior"] == "behavior/sycophancy_rate"
        assert s["behavior_start"] == pytest.approx(rows[0]["behavior/sycophancy_rate"])
        assert s["behavior_end"] == pytest.approx(rows[-1]["behavior/sycophancy_rate"])
        assert s["accuracy_end"] == pytest.approx(rows[-1]["gold/accuracy"])
        assert s["attribution"]["sycophancy"] == pytest.approx(
            rows[-1]["gold/part_sycophancy"] - rows[0]["gold/part_sycophancy"]
        )
    bon = summary["arms"]["unbiased-s1"]["methods"]["bon"]
    rows = _rows(run_dir, "unbiased-s1", "bon")
    assert bon["kl_end"] == pytest.approx(math.log(32) - 31 / 32)
    assert bon["behavior_end"] == pytest.approx(rows[-1]["behavior/sycophancy_rate"])


def test_single_arm_law_fit(run_dir: Path, summary: dict[str, Any]) -> None:
    law = summary["arms"]["unbiased-s1"]["methods"]["ppo"]["law"]
    assert (law["a"], law["b"]) == (pytest.approx(RL_LAW[0], abs=1e-9), pytest.approx(RL_LAW[1], abs=1e-9))
    assert law["gold0"] == pytest.approx(BASELINE[1])


@pytest.mark.parametrize("method,kind,law", [("ppo", "rl", RL_LAW), ("bon", "bon", BON_LAW)])
def test_pooled_law_fit_uses_each_seeds_baseline(run_dir, summary, method, kind, law) -> None:
    pooled = {(p["preset"], p["method"]): p for p in summary["pooled_laws"]}
    fit = pooled[("unbiased", method)]
    assert fit["n_seeds"] == 2
    assert fit["law"]["a"] == pytest.approx(law[0], abs=1e-9)
    assert fit["law"]["b"] == pytest.approx(law[1], abs=1e-9)
    assert fit["law"]["gold0"] == pytest.approx(np.mean(list(BASELINE.values())))
    assert fit["law"]["n_points"] == 2 * len(_rows(run_dir, "unbiased-s0", method))
    # the same points without per-seed baselines give another law: the test can tell them apart
    rows = [r for s in (0, 1) for r in _rows(run_dir, f"unbiased-s{s}", method)]
    d = np.sqrt([r["kl/k1"] if kind == "rl" else r["kl"] for r in rows])
    a, minus_b = _fit(d, np.array([r["gold/mean"] for r in rows]) - BASELINE[0], kind)
    assert abs(a - law[0]) > 0.05 or abs(-minus_b - law[1]) > 0.05


def test_comparison_averages_over_seeds(run_dir: Path, summary: dict[str, Any]) -> None:
    rows = {(r["preset"], r["method"]): r for r in summary["comparison"]}
    c = rows[("time-pressed", "ppo")]
    per_seed = [_rows(run_dir, f"time-pressed-s{s}", "ppo") for s in (0, 1)]
    assert c["n_seeds"] == 2 and c["biased"]
    assert c["gold_end"] == pytest.approx(np.mean([r[-1]["gold/mean"] for r in per_seed]))
    assert c["gold_start"] == pytest.approx(np.mean([next(x["gold/mean"] for x in r if x["gold/mean"] is not None)
                                                     for r in per_seed]))  # fmt: skip
    assert c["gold_peak"] == pytest.approx(
        np.mean([_smoothed_peak([x["gold/mean"] for x in r])[1] for r in per_seed])
    )
    assert c["kl_end"] == pytest.approx(np.mean([r[-1]["kl/k3"] for r in per_seed]))
    assert c["behavior_end"] == pytest.approx(np.mean([r[-1]["behavior/sycophancy_rate"] for r in per_seed]))
    assert c["proxy_end"] == pytest.approx(np.mean([r[-1]["proxy/mean"] for r in per_seed]))


def test_mean_curve_is_over_every_seed(run_dir: Path) -> None:
    arms = {a.name: a for a in load_arms(run_dir)}
    runs = [arms[f"time-pressed-s{s}"].methods["ppo"] for s in (0, 1)]
    per_seed = [_rows(run_dir, f"time-pressed-s{s}", "ppo") for s in (0, 1)]
    for key in ("proxy/mean", "gold/mean", "behavior/sycophancy_rate"):
        curve = mean_curve(runs, key)
        assert curve.x.tolist() == STEPS
        for j, step in enumerate(STEPS):
            vals = [r[key] for rows in per_seed for r in rows if r["step"] == step and r[key] is not None]
            kls = [math.sqrt(r["kl/k3"]) for rows in per_seed for r in rows if r["step"] == step]
            assert curve.y[j] == pytest.approx(np.mean(vals)), (key, step)
            assert curve.d[j] == pytest.approx(np.mean(kls)), step


def _html_rows(page: str) -> list[list[str]]:
    out = []
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", page, flags=re.S):
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", tr, flags=re.S)
        out.append([htmllib.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells])
    return out


def test_report_tables_show_the_hand_computed_numbers(run_dir: Path, summary: dict[str, Any]) -> None:
    page = render_report(summary, {}, None)
    rows = _html_rows(page)
    for seed in (0, 1):
        audit = _rows(run_dir, f"time-pressed-s{seed}", "ppo")
        gold = [r["gold/mean"] for r in audit]
        finite = [g for g in gold if g is not None]
        row = next(r for r in rows if r[:2] == [f"time-pressed-s{seed}", "ppo"] and len(r) > 12)
        _, peak = _smoothed_peak(gold)
        assert row[3] == f"{finite[0]:.3f}" and row[4] == f"{peak:.3f}" and row[6] == f"{finite[-1]:.3f}"
        assert row[8] == f"{audit[0]['proxy/mean']:.3f}" and row[9] == f"{audit[-1]['proxy/mean']:.3f}"
        assert row[10] == f"{audit[0]['behavior/sycophancy_rate']:.1%}"
        assert row[11] == f"{audit[-1]['behavior/sycophancy_rate']:.1%}"
        assert row[12] == f"{audit[-1]['kl/k3']:.3g}"
    pooled = next(r for r in rows if r[:2] == ["ppo", "all 2 seeds of unbiased"])
    assert pooled[5:7] == [f"{RL_LAW[0]:.4g}", f"{RL_LAW[1]:.4g}"]
    per_seed = [_rows(run_dir, f"time-pressed-s{s}", "ppo") for s in (0, 1)]
    compare = next(r for r in rows if r[1:3] == ["time-pressed", "2"] and r[0] == "PPO")
    assert compare[5] == f"{np.mean([r[-1]['gold/mean'] for r in per_seed]):.3f}"
    assert compare[7] == f"{np.mean([r[-1]['kl/k3'] for r in per_seed]):.3g}"
    assert compare[8] == f"{np.mean([r[-1]['behavior/sycophancy_rate'] for r in per_seed]):.3g}"


def test_the_headline_column_is_the_tasks(tmp_path: Path) -> None:
    """Another task's headline: the same rows give that behaviour's start and end."""
    (tmp_path / "task.json").write_text(json.dumps({**TASK, "headline": "decoy_rate"}))
    _jsonl(tmp_path / "a-s0" / "ppo" / "audit.jsonl", _spiky_rows(0))
    warnings: list[str] = []
    arms = load_arms(tmp_path, warnings)
    s = build_summary(arms, tmp_path, warnings)["arms"]["a-s0"]["methods"]["ppo"]
    rows = _rows(tmp_path, "a-s0", "ppo")
    assert (s["behavior_start"], s["behavior_end"]) == (
        pytest.approx(rows[0]["behavior/decoy_rate"]),
        pytest.approx(rows[-1]["behavior/decoy_rate"]),
    )
