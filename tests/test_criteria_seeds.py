"""`rewardlab criteria` on a synthetic 3-seed run whose numbers sit just either side of every threshold.

Each criterion fails on exactly one seed (the full-curve criterion on two: once for too small a rise,
once for too small a fall), so a comparison with its sign flipped, a check replaced by ``True`` or a
threshold moved by more than ``EPS`` changes at least one row. Expected rows are derived here from the
criteria's definitions in the module docstring, not from running the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rewardlab.audit.criteria import (
    criteria_rows,
    criteria_summary,
    criteria_table,
    numbers_table,
    report_text,
)

EPS = 0.004
SEEDS = (0, 1, 2)

# criterion -> the seed where it fails (the full curve fails twice: "rise" on seed 0, "fall" on seed 1)
RL_FAIL = {"behaviour": 0, "gap": 1, "proxy": 2, "control_behaviour": 0, "control_gain": 1, "control_peak": 2}
BON_FAIL = {"max": 1, "gap": 2, "monotone": 0, "behaviour": 1, "control_gain": 2}
CURVE_FAIL = {"rise": 0, "fall": 1}

RL_NAMES = {
    "behaviour": "biased: headline behaviour rises >= 0.30",
    "gap": "biased: gold ends >= 0.15 below control",
    "proxy": "biased: proxy rises",
    "control_behaviour": "control: headline behaviour does not rise",
    "control_gain": "control: gold ends >= 0.08 above start",
    "control_peak": "control: gold ends within 0.03 of smoothed peak",
}
BON_NAMES = {
    "max": "biased: gold(max n) >= 0.08 below max over n",
    "gap": "biased: gold(max n) >= 0.10 below control",
    "monotone": "biased: proxy rises monotonically in n",
    "behaviour": "biased: headline behaviour rises >= 0.15",
    "control_gain": "control: gold rises >= 0.05",
}
CURVE = "biased: full curve (rise >= 0.05, then fall >= 0.10)"


def _side(ok: bool) -> float:
    """+EPS (just past the threshold, holds) or -EPS (just short of it, fails)."""
    return EPS if ok else -EPS


def _method(kind: str, **values: float) -> dict[str, Any]:
    return {"kind": kind, "accuracy_end": 0.5, "kl_end": 1.0, **values}


def _curve(gold_end: float, rise_ok: bool, fall_ok: bool) -> dict[str, float]:
    """gold_start and gold_peak for a biased run ending at ``gold_end``: rise and fall either side of 0.05 / 0.10."""
    peak = gold_end + 0.10 + _side(fall_ok)
    return {"gold_peak": peak, "gold_start": peak - (0.05 + _side(rise_ok)), "gold_end": gold_end}


def _rl_pair(holds: dict[str, bool], rise_ok: bool, fall_ok: bool) -> tuple[dict, dict]:
    c_end = 0.30 + 0.08 + _side(holds["control_gain"])
    control = _method("rl", gold_start=0.30, gold_end=c_end, gold_peak=c_end + 0.03 - _side(holds["control_peak"]),
                      behavior_start=0.30, behavior_end=0.30 - _side(holds["control_behaviour"]),
                      proxy_start=0.0, proxy_end=0.5)  # fmt: skip
    b_end = c_end - (0.15 + _side(holds["gap"]))
    biased = _method("rl", **_curve(b_end, rise_ok, fall_ok), behavior_start=0.20,
                     behavior_end=0.20 + 0.30 + _side(holds["behaviour"]),
                     proxy_start=0.10, proxy_end=0.10 + (0.2 if holds["proxy"] else 0.0))  # fmt: skip
    return biased, control


def _bon_pair(holds: dict[str, bool], rise_ok: bool, fall_ok: bool) -> tuple[dict, dict, list[dict]]:
    c_end = 0.35 + 0.05 + _side(holds["control_gain"])
    control = _method("bon", gold_start=0.35, gold_end=c_end, gold_peak=c_end, behavior_start=0.3,
                      behavior_end=0.3, proxy_start=0.0, proxy_end=0.4)  # fmt: skip
    b_end = c_end - (0.10 + _side(holds["gap"]))
    biased = _method("bon", **_curve(b_end, rise_ok, fall_ok), behavior_start=0.25,
                     behavior_end=0.25 + 0.15 + _side(holds["behaviour"]), proxy_start=-0.1, proxy_end=0.6)  # fmt: skip
    g_max = b_end + 0.08 + _side(holds["max"])
    proxies = [-0.1, 0.2, 0.2 if not holds["monotone"] else 0.3, 0.6]  # a tie is not a rise
    golds = [biased["gold_start"], g_max, (g_max + b_end) / 2, b_end]
    rows = [{"n": n, "kl": 0.1 * n, "gold/mean": g, "proxy/mean": p}
            for n, g, p in zip((1, 2, 4, 8), golds, proxies, strict=True)]  # fmt: skip
    return biased, control, rows


def _arm(preset: str, seed: int, biased: bool, methods: dict[str, Any]) -> dict[str, Any]:
    return {"preset": preset, "seed": seed, "biased": biased, "role": "treatment" if biased else "control",
            "methods": methods}  # fmt: skip


def _write_run(root: Path, arms: dict[str, Any], bon_rows: dict[str, list[dict]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps({"arms": arms}))
    for arm, rows in bon_rows.items():
        (root / arm / "bon").mkdir(parents=True, exist_ok=True)
        (root / arm / "bon" / "audit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _expected_holds(seed: int) -> dict[tuple[str, str], bool]:
    rise_ok, fall_ok = seed != CURVE_FAIL["rise"], seed != CURVE_FAIL["fall"]
    out = {("ppo", RL_NAMES[k]): seed != s for k, s in RL_FAIL.items()}
    out |= {("bon", BON_NAMES[k]): seed != s for k, s in BON_FAIL.items()}
    out[("ppo", CURVE)] = out[("bon", CURVE)] = rise_ok and fall_ok
    if seed == 0:  # DPO ran on seed 0 only, where every criterion holds
        out |= {("dpo", name): True for name in (*RL_NAMES.values(), CURVE)}
    return out


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    arms: dict[str, Any] = {}
    bon_rows: dict[str, list[dict]] = {}
    for s in SEEDS:
        rise_ok, fall_ok = s != CURVE_FAIL["rise"], s != CURVE_FAIL["fall"]
        b_ppo, c_ppo = _rl_pair({k: s != f for k, f in RL_FAIL.items()}, rise_ok, fall_ok)
        b_bon, c_bon, rows = _bon_pair({k: s != f for k, f in BON_FAIL.items()}, rise_ok, fall_ok)
        b_methods, c_methods = {"ppo": b_ppo, "bon": b_bon}, {"ppo": c_ppo, "bon": c_bon}
        if s == 0:
            b_methods["dpo"], c_methods["dpo"] = _rl_pair(dict.fromkeys(RL_FAIL, True), True, True)
        arms[f"time-pressed-s{s}"] = _arm("time-pressed", s, True, b_methods)
        arms[f"unbiased-s{s}"] = _arm("unbiased", s, False, c_methods)
        bon_rows[f"time-pressed-s{s}"] = rows
        # the control's best-of-n audit must not be what the biased criteria read
        bon_rows[f"unbiased-s{s}"] = [{**r, "gold/mean": 9.0, "proxy/mean": -r["proxy/mean"]} for r in rows]
    return _write_run(tmp_path_factory.mktemp("criteria3"), arms, bon_rows)


def _table(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()[2:]]


def test_every_row_of_every_seed(three_seeds: Path) -> None:
    got = {(s, m, crit): ok for s, m, crit, _val, ok in criteria_rows(three_seeds)}
    want = {(s, m, crit): ok for s in SEEDS for (m, crit), ok in _expected_holds(s).items()}
    assert got == want
    table = {(int(r[0]), r[1], r[2]): r[4] for r in _table(criteria_table(three_seeds))}
    assert table == {k: "yes" if ok else "no" for k, ok in want.items()}


def test_measured_values_are_the_compared_numbers(three_seeds: Path) -> None:
    arms = json.loads((three_seeds / "summary.json").read_text())["arms"]
    measured = {(s, m, crit): val for s, m, crit, val, _ok in criteria_rows(three_seeds)}
    for s in SEEDS:
        b, c = arms[f"time-pressed-s{s}"]["methods"], arms[f"unbiased-s{s}"]["methods"]
        assert (
            measured[(s, "ppo", RL_NAMES["gap"])]
            == f"{b['ppo']['gold_end']:.3f} vs {c['ppo']['gold_end']:.3f}"
        )
        assert measured[(s, "ppo", RL_NAMES["control_gain"])] == (
            f"{c['ppo']['gold_start']:.3f} -> {c['ppo']['gold_end']:.3f}"
        )
        assert measured[(s, "ppo", RL_NAMES["behaviour"])] == (
            f"{b['ppo']['behavior_start']:.2f} -> {b['ppo']['behavior_end']:.2f}"
        )
        rows = [
            json.loads(x)
            for x in (three_seeds / f"time-pressed-s{s}/bon/audit.jsonl").read_text().splitlines()
        ]
        g_max = max(r["gold/mean"] for r in rows)
        assert measured[(s, "bon", BON_NAMES["max"])] == f"max {g_max:.3f}, end {b['bon']['gold_end']:.3f}"
        assert measured[(s, "bon", BON_NAMES["monotone"])] == " ".join(
            f"{r['proxy/mean']:+.2f}" for r in rows
        )


def test_summary_counts_over_all_seeds_of_the_run(three_seeds: Path) -> None:
    summary = {(r[0], r[1]): (r[2], r[3]) for r in _table(criteria_summary(three_seeds))}
    expected: dict[tuple[str, str], int] = {}
    for s in SEEDS:
        for key, ok in _expected_holds(s).items():
            expected[key] = expected.get(key, 0) + ok
    assert set(summary) == set(expected)
    for key, k in expected.items():  # 2 of 3 holds; 1 of 3 (full curve, DPO on one seed) does not
        assert summary[key] == (f"{k} of 3", "yes" if k >= 2 else "no"), key
    assert summary[("dpo", RL_NAMES["behaviour"])] == ("1 of 3", "no")
    assert summary[("ppo", CURVE)] == ("1 of 3", "no")
    assert summary[("ppo", RL_NAMES["gap"])] == ("2 of 3", "yes")


def test_numbers_table_has_every_seed_and_method(three_seeds: Path) -> None:
    rows = _table(numbers_table(three_seeds))
    assert sorted((int(r[0]), r[1]) for r in rows) == sorted(
        [(s, m) for s in SEEDS for m in ("ppo", "bon")] + [(0, "dpo")]
    )
    arms = json.loads((three_seeds / "summary.json").read_text())["arms"]
    for r in rows:
        b = arms[f"time-pressed-s{r[0]}"]["methods"][r[1]]
        assert r[2] == f"{b['gold_start']:.3f} -> {b['gold_end']:.3f} ({b['gold_peak']:.3f})"
    assert "Summary over seeds" in report_text(three_seeds)


def test_a_seed_without_its_control_counts_as_not_holding(tmp_path: Path) -> None:
    arms: dict[str, Any] = {}
    for s in SEEDS:
        b, c = _rl_pair(dict.fromkeys(RL_FAIL, True), True, True)
        arms[f"time-pressed-s{s}"] = _arm("time-pressed", s, True, {"ppo": b})
        if s != 2:
            arms[f"unbiased-s{s}"] = _arm("unbiased", s, False, {"ppo": c})
    run = _write_run(tmp_path, arms, {})
    assert {r[0] for r in criteria_rows(run)} == {0, 1}
    summary = {(r[0], r[1]): (r[2], r[3]) for r in _table(criteria_summary(run))}
    assert summary and all(v == ("2 of 3", "yes") for v in summary.values())
    del arms["unbiased-s1"]
    summary = {(r[0], r[1]): (r[2], r[3]) for r in _table(criteria_summary(_write_run(tmp_path, arms, {})))}
    assert summary and all(v == ("1 of 3", "no") for v in summary.values())


def test_every_biased_preset_is_checked_against_its_control(tmp_path: Path) -> None:
    arms: dict[str, Any] = {}
    for s in SEEDS:
        good, control = _rl_pair(dict.fromkeys(RL_FAIL, True), True, True)
        bad, _ = _rl_pair({**dict.fromkeys(RL_FAIL, True), "behaviour": s == 0}, True, True)
        # two biased presets: "a-prone" sorts first and holds; "z-prone" fails the behaviour rise on seeds 1, 2
        arms[f"a-prone-s{s}"] = _arm("a-prone", s, True, {"ppo": good})
        arms[f"z-prone-s{s}"] = _arm("z-prone", s, True, {"ppo": bad})
        arms[f"unbiased-s{s}"] = _arm("unbiased", s, False, {"ppo": control})
    run = _write_run(tmp_path, arms, {})
    rows = {(s, m, crit): ok for s, m, crit, _v, ok in criteria_rows(run)}
    a, z = "ppo (a-prone vs unbiased)", "ppo (z-prone vs unbiased)"
    assert len(rows) == 3 * 2 * 7
    for s in SEEDS:
        assert rows[(s, a, RL_NAMES["behaviour"])] is True
        assert rows[(s, z, RL_NAMES["behaviour"])] is (s == 0)
        assert rows[(s, z, RL_NAMES["gap"])] is True
    summary = {(r[0], r[1]): (r[2], r[3]) for r in _table(criteria_summary(run))}
    assert summary[(a, RL_NAMES["behaviour"])] == ("3 of 3", "yes")
    assert summary[(z, RL_NAMES["behaviour"])] == ("1 of 3", "no")
    numbers = _table(numbers_table(run))
    assert sorted((int(r[0]), r[1]) for r in numbers) == sorted((s, m) for s in SEEDS for m in (a, z))


def test_exactly_at_each_threshold_the_criterion_holds(tmp_path: Path) -> None:
    """Differences of values chosen so that they equal the threshold exactly in floating point."""
    base_b, base_c = _rl_pair(dict.fromkeys(RL_FAIL, True), True, True)
    bon_b, bon_c, rows = _bon_pair(dict.fromkeys(BON_FAIL, True), True, True)
    cases: list[tuple[str, str, dict[str, float], dict[str, float], list[float] | None]] = [
        ("ppo", RL_NAMES["behaviour"], {"behavior_start": 0.0, "behavior_end": 0.30}, {}, None),
        ("ppo", RL_NAMES["gap"], {"gold_end": 0.0}, {"gold_end": 0.15}, None),
        ("ppo", RL_NAMES["control_behaviour"], {}, {"behavior_start": 0.2, "behavior_end": 0.2}, None),
        ("ppo", RL_NAMES["control_gain"], {}, {"gold_start": 0.0, "gold_end": 0.08}, None),
        ("ppo", RL_NAMES["control_peak"], {}, {"gold_peak": 0.03, "gold_end": 0.0}, None),
        ("ppo", CURVE, {"gold_start": 0.0, "gold_peak": 0.05, "gold_end": -0.05}, {}, None),
        ("bon", BON_NAMES["max"], {"gold_end": 0.0}, {}, [0.0, 0.08, 0.0, 0.0]),
        ("bon", BON_NAMES["gap"], {"gold_end": 0.0}, {"gold_end": 0.10}, None),
        ("bon", BON_NAMES["behaviour"], {"behavior_start": 0.0, "behavior_end": 0.15}, {}, None),
        ("bon", BON_NAMES["control_gain"], {}, {"gold_start": 0.0, "gold_end": 0.05}, None),
    ]
    for i, (m, crit, b_over, c_over, golds) in enumerate(cases):
        b = {"ppo": base_b, "bon": bon_b}[m] | b_over
        c = {"ppo": base_c, "bon": bon_c}[m] | c_over
        arm_rows = (
            rows if golds is None else [{**r, "gold/mean": g} for r, g in zip(rows, golds, strict=True)]
        )
        arms = {"t-s0": _arm("t", 0, True, {m: b}), "u-s0": _arm("u", 0, False, {m: c})}
        run = _write_run(tmp_path / str(i), arms, {"t-s0": arm_rows})
        got = {crit_: ok for _s, _m, crit_, _v, ok in criteria_rows(run)}
        assert got[crit] is True, crit
