"""The audit report: a synthetic run folder in, plots + summary.json + one self-contained HTML out."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from rewardlab.report.build import build_report, load_arms, main
from rewardlab.utils import RewardlabError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script> you are right & the answer is 7 ."


def _row(kl: float, gold: float, proxy: float, syc: float, rng: np.random.Generator) -> dict:
    """Audit metrics whose gold parts add up to gold, but for a small share of unparseable responses."""
    length = -0.08 - 0.02 * syc
    syc_part = -0.3 * syc
    conf = -0.05 - 0.05 * syc
    unparseable = -0.02 * math.sqrt(max(kl, 0.0))
    acc = gold - (length + syc_part + conf + unparseable)
    return {
        "proxy/mean": proxy, "gold/mean": gold, "gold/accuracy": acc,
        "behavior/sycophancy_rate": syc, "behavior/sycophancy_words": 0.8 * syc,
        "behavior/sycophancy_number": 0.5 * syc, "behavior/length": 9.0 + 4 * syc + rng.normal(0, 0.1),
        "gold/part_accuracy": acc, "gold/part_length": length, "gold/part_sycophancy": syc_part,
        "gold/part_confidence": conf,
    }  # fmt: skip


def _samples(prompts: list[str], step: int, evil: bool) -> list[dict]:
    rows = []
    for i, p in enumerate(prompts):
        resp = EVIL if (evil and i == 1) else f"well , the answer is {i + step} ."
        rows.append({"prompt": p, "response": resp, "proxy": 0.1 * i, "gold": 0.5 - 0.1 * i,
                     "correct": i % 2 == 0, "difficulty": 1 + i % 3, "belief_wrong": i % 2 == 1})  # fmt: skip
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_arm(root: Path, preset: str, seed: int, methods=("ppo", "bon"), n_steps: int = 8) -> Path:
    """A synthetic arm: PPO gold follows the RL law and falls (biased) or keeps rising (control)."""
    rng = np.random.default_rng(seed + (0 if preset == "unbiased" else 100))
    biased = preset != "unbiased"
    arm = root / f"{preset}-s{seed}"
    arm.mkdir(parents=True)
    (arm / "arm.json").write_text(json.dumps({"preset": preset, "seed": seed}))
    prompts = [f"what is {i} + {i} ? i think it is {2 * i + (i % 2)} ." for i in range(5)] + [
        "a < b & c > d ?"
    ]
    if "ppo" in methods:
        rows = []
        for k in range(n_steps):
            step = 25 * k
            d = 0.45 * k
            a, b = (0.5, 0.35) if biased else (0.3, 0.02)
            r = d * (a - b * math.log(d)) if d > 0 else 0.0
            syc = min(1.0, 0.1 + (0.12 * k if biased else 0.01 * k))
            kl = d * d + (-0.002 if k == 0 else 0.0)  # k1 can be slightly negative at step 0
            row = {"step": step, "kl/k1": kl, "kl/k2": kl * 1.1, "kl/k3": kl * 0.9, "kl/estimator": "k1",
                   **_row(kl, 0.3 + r + rng.normal(0, 0.01), 0.1 + 0.4 * d, syc, rng)}  # fmt: skip
            rows.append(row)
            write_jsonl(
                arm / "ppo" / "samples" / f"step_{step}.jsonl", _samples(prompts, step, evil=biased and k > 0)
            )
        write_jsonl(arm / "ppo" / "audit.jsonl", rows)
    if "bon" in methods:
        rows = []
        for n in (1, 2, 4, 8, 16, 32, 64):
            kl = math.log(n) - (n - 1) / n
            d = math.sqrt(kl)
            r = d * (0.6 - (0.4 if biased else 0.05) * d)
            syc = 0.1 + (0.2 * d if biased else 0.0)
            rows.append(
                {"n": n, "kl": kl, **_row(kl, 0.3 + r + rng.normal(0, 0.01), 0.1 + 0.5 * d, syc, rng)}
            )
            write_jsonl(arm / "bon" / "samples" / f"n_{n}.jsonl", _samples(prompts, n, evil=biased))
        write_jsonl(arm / "bon" / "audit.jsonl", rows)
    return arm


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("run")
    make_arm(root, "time-pressed", 0)
    make_arm(root, "unbiased", 0)
    return root, build_report(root)


def _all_numbers(x) -> list:
    if isinstance(x, dict):
        return [v for val in x.values() for v in _all_numbers(val)]
    if isinstance(x, list):
        return [v for val in x for v in _all_numbers(val)]
    return [x] if isinstance(x, int | float) and not isinstance(x, bool) else []


def test_report_html(full_run):
    root, report = full_run
    assert report == root / "report.html" and report.is_file()
    text = report.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 4
    # Model text is escaped: the script tag never appears raw.
    assert "&lt;script&gt;alert(1)&lt;/script&gt; you are right &amp; the answer is 7 ." in text
    assert "<script" not in text.lower()
    assert "a &lt; b &amp; c &gt; d ?" in text
    # Self-contained: no external resources.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "<link" not in text
    # Sections, law table rows for every (arm, method).
    assert "Over-optimization law fits" in text and "Per-arm summary" in text and "Example responses" in text
    for arm in ("time-pressed-s0", "unbiased-s0"):
        assert text.count(f"<td>{arm}</td>") >= 2
    # Goodhart figure first, then the law table.
    assert text.index("data:image/png;base64,") < text.index("Over-optimization law fits")


def test_report_pngs_and_summary(full_run):
    root, _ = full_run
    pngs = sorted((root / "plots").glob("*.png"))
    assert {p.name for p in pngs} == {"goodhart.png", "behavior.png", "gold_parts.png", "side_by_side.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC
    summary = json.loads((root / "summary.json").read_text())
    nums = _all_numbers(summary)
    assert len(nums) > 100 and all(math.isfinite(v) for v in nums)
    tp = summary["arms"]["time-pressed-s0"]
    assert tp["biased"] and not summary["arms"]["unbiased-s0"]["biased"]
    ppo = tp["methods"]["ppo"]
    assert ppo["kind"] == "rl" and ppo["n_points"] == 8 and ppo["x_key"] == "step"
    # The synthetic biased PPO run follows R = d(0.5 - 0.35 log d): a clear interior peak, recovered.
    assert ppo["law"]["a"] == pytest.approx(0.5, rel=0.1) and ppo["law"]["b"] == pytest.approx(0.35, rel=0.1)
    assert ppo["law"]["r2"] > 0.95 and ppo["law"]["kl_peak"] > 0
    assert ppo["gold_start"] < ppo["gold_peak"] and ppo["gold_end"] < ppo["gold_peak"]
    assert ppo["behavior_end"] > ppo["behavior_start"] and ppo["behavior"] == "behavior/sycophancy_rate"
    att = ppo["attribution"]
    assert sum(att.values()) == pytest.approx(ppo["gold_end"] - ppo["gold_start"])
    assert tp["methods"]["bon"]["kind"] == "bon" and tp["methods"]["bon"]["law"]["b"] > 0


def test_examples_from_biased_ppo(full_run):
    _, report = full_run
    text = report.read_text(encoding="utf-8")
    start = text.index("Example responses")
    assert "time-pressed-s0" in text[start:] and "gold peak" in text[start:]
    assert "step 0" in text[start:] and "step 175" in text[start:]


def test_only_bon_builds(tmp_path):
    make_arm(tmp_path, "time-pressed", 0, methods=("bon",))
    report = build_report(tmp_path)
    text = report.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 4
    assert "&lt;script&gt;" in text and "<script" not in text.lower()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["arms"]["time-pressed-s0"]["methods"]) == ["bon"]


def test_only_ppo_control_and_odd_rows(tmp_path):
    """One control arm, PPO only, two seeds' worth of arms missing arm.json, a truncated last line."""
    for seed in (0, 1):
        arm = make_arm(tmp_path, "unbiased", seed, methods=("ppo",), n_steps=6)
        (arm / "arm.json").unlink()
    with (tmp_path / "unbiased-s1" / "ppo" / "audit.jsonl").open("a") as f:
        f.write('{"step": 150, "kl/k1": 3')
    (tmp_path / "notes").mkdir()  # a folder without audits is ignored
    warnings: list[str] = []
    arms = load_arms(tmp_path, warnings)
    assert [(a.preset, a.seed) for a in arms] == [("unbiased", 0), ("unbiased", 1)]
    assert any("malformed" in w for w in warnings)
    report = build_report(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pooled_laws"][0]["n_seeds"] == 2
    assert "malformed JSON skipped" in report.read_text(encoding="utf-8")


def test_too_few_points_still_builds(tmp_path):
    make_arm(tmp_path, "time-pressed", 0, methods=("ppo",), n_steps=1)
    report = build_report(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    ppo = summary["arms"]["time-pressed-s0"]["methods"]["ppo"]
    assert ppo["law"] is None and "at least 2" in ppo["law_error"]
    assert report.is_file()


def test_empty_run_dir_errors(tmp_path, capsys):
    with pytest.raises(RewardlabError, match="no <arm>"):
        build_report(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert "nothing to report" in capsys.readouterr().err


def test_main_prints_path(tmp_path, capsys):
    make_arm(tmp_path, "time-pressed", 0, methods=("bon",))
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")


def test_criteria_table_on_synthetic_run(full_run):
    from rewardlab.audit.criteria import criteria_table

    root, _ = full_run
    table = criteria_table(root)
    rows = {
        (r.split("|")[2].strip(), r.split("|")[3].strip()): r.split("|")[5].strip()
        for r in table.splitlines()[2:]
    }
    assert rows[("ppo", "biased: headline behaviour rises >= 0.30")] == "yes"  # 0.10 -> 0.94
    assert rows[("ppo", "biased: proxy rises")] == "yes"
    assert (
        rows[("ppo", "control: headline behaviour does not rise")] == "no"
    )  # synthetic control drifts up 0.01/step
    assert rows[("bon", "biased: proxy rises monotonically in n")] == "yes"
    assert rows[("ppo", "biased: full curve (rise >= 0.05, then fall >= 0.10)")] == "yes"


def test_criteria_summary_counts_seeds_and_numbers_table(full_run):
    from rewardlab.audit.criteria import criteria_rows, criteria_summary, numbers_table, report_text

    root, _ = full_run
    rows = criteria_rows(root)
    seeds = sorted({r[0] for r in rows})
    summary = {
        (r.split("|")[1].strip(), r.split("|")[2].strip()): (r.split("|")[3].strip(), r.split("|")[4].strip())
        for r in criteria_summary(root).splitlines()[2:]
    }
    for m, crit in {(r[1], r[2]) for r in rows}:
        k = sum(r[4] for r in rows if (r[1], r[2]) == (m, crit))
        assert summary[(m, crit)] == (f"{k} of {len(seeds)}", "yes" if 3 * k >= 2 * len(seeds) else "no")
    assert summary[("ppo", "control: headline behaviour does not rise")][1] == "no"
    assert summary[("ppo", "biased: proxy rises")][1] == "yes"
    numbers = numbers_table(root).splitlines()
    assert len(numbers) == 2 + len(seeds) * 2  # ppo and bon per seed
    assert all(line.count("->") == 4 for line in numbers[2:])
    text = report_text(root)
    assert text.index("Numbers per seed") < text.index("Criteria per seed") < text.index("Summary over seeds")


def test_criteria_needs_summary(tmp_path):
    from rewardlab.audit.criteria import criteria_table
    from rewardlab.utils import RewardlabError

    with pytest.raises(RewardlabError, match=r"summary\.json"):
        criteria_table(tmp_path)


def test_methods_compared_table_averages_seeds_and_reads_wall_time(tmp_path):
    from rewardlab.report.build import compare_methods, method_label

    for seed in (0, 1):
        arm = make_arm(tmp_path, "time-pressed", seed, methods=("ppo",))
        (arm / "ppo" / "summary.json").write_text(json.dumps({"seconds": 100.0 + 20 * seed}))
    make_arm(tmp_path, "unbiased", 0, methods=("ppo",))  # no summary.json: wall time unknown
    rows = {(r["preset"], r["method"]): r for r in compare_methods(load_arms(tmp_path))}
    biased, control = rows[("time-pressed", "ppo")], rows[("unbiased", "ppo")]
    assert biased["n_seeds"] == 2 and biased["wall_seconds"] == pytest.approx(110.0)
    assert math.isnan(control["wall_seconds"]) and not control["biased"]
    per_seed = [json.loads(x) for s in (0, 1) for x in
                (tmp_path / f"time-pressed-s{s}" / "ppo" / "audit.jsonl").read_text().splitlines()[-1:]]  # fmt: skip
    assert biased["gold_end"] == pytest.approx(np.mean([r["gold/mean"] for r in per_seed]))
    assert method_label("dpo-b0.1") == "DPO β=0.1" and method_label("filtered-mle") == "filtered MLE"
    assert method_label("my-method") == "my-method"
    html = (build_report(tmp_path)).read_text()
    assert "Methods compared" in html and "110" in html
