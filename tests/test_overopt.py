"""The over-optimization study (issue 17, section 5): config, the rise-then-fall test, the trends, and a
micro end-to-end run that produces audit rows and fitted coefficients."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from rewardlab.audit.laws import rise_then_fall
from rewardlab.studies.overopt import (
    _kl_cell,
    coefficient_trends,
    label_prompts,
    load_overopt_config,
    proxy_config,
    run_overopt,
)
from rewardlab.utils import RewardlabError, read_jsonl
from test_synthetic_gold import make_micro_gold

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["gao-hh.yaml", "gao-hh-large.yaml", "gao-hh-micro.yaml"])
def test_study_configs_validate(name: str) -> None:
    cfg = load_overopt_config(ROOT / "configs" / name)
    assert cfg.pipeline.task.kind == "synthetic-gold"
    assert cfg.pipeline.build_task().info.has_gold
    assert label_prompts(cfg) * (1 - cfg.pipeline.label.eval_fraction) > max(cfg.label_counts)
    if name == "gao-hh.yaml":
        assert cfg.pipeline.bon.max_n == 256 and len(cfg.proxy_sizes) >= 2 and len(cfg.label_counts) >= 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("label_counts=[1]", "label_counts"),
        ("proxy_sizes={}", "proxy_sizes"),
        ("smooth_window=2", "smooth_window"),
        (
            "pipeline.task={kind: dataset, path: tests/data/hh-rlhf-sample.jsonl};pipeline.label.rater={preset: unbiased}",
            "needs a task with a gold",
        ),
        ("pipeline.bon.max_n=100", "bon.max_n"),
        ("methods=[dpo]", "methods"),
    ],
)
def test_config_errors_name_the_field(override: str, message: str) -> None:
    with pytest.raises(RewardlabError, match=message):
        load_overopt_config(ROOT / "configs" / "gao-hh-micro.yaml", override.split(";"))


def test_proxy_arm_reads_its_labels_and_backbone_never_the_gold(tmp_path: Path) -> None:
    cfg = load_overopt_config(ROOT / "configs" / "gao-hh-micro.yaml", [f"pipeline.run_dir={tmp_path}"])
    arm = proxy_config(cfg, "tiny", 20, tmp_path / "train.jsonl", tmp_path / "eval.jsonl")
    assert arm.arm == "rm-tiny-n20-s0"
    assert arm.reward.data_path == str(tmp_path / "train.jsonl")
    assert arm.reward.init_path == str(tmp_path / "study" / "backbone-tiny" / "pretrain" / "model")
    assert proxy_config(cfg, "policy", 20, tmp_path, tmp_path).reward.init_path == str(
        tmp_path / "pretrain" / "model"
    )
    assert _paths_to(arm.model_dump(mode="json"), cfg.pipeline.task.gold_path) == ["task.gold_path"]


def _paths_to(tree: Any, target: str, prefix: str = "") -> list[str]:
    """Dotted keys of ``tree`` whose string value mentions ``target``."""
    if isinstance(tree, dict):
        return [k for key, v in tree.items() for k in _paths_to(v, target, f"{prefix}{key}.")]
    if isinstance(tree, list):
        return [k for v in tree for k in _paths_to(v, target, prefix)]
    return [prefix.rstrip(".")] if isinstance(tree, str) and target in tree else []


@pytest.mark.parametrize(
    ("gold", "inside", "falls"),
    [
        ([0.0, 0.3, 0.6, 0.8, 0.6, 0.3, 0.1], True, True),  # rises, peaks inside, loses 0.5 SD
        ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2], False, False),  # still rising at the end
        ([0.0, 0.3, 0.5, 0.55, 0.55, 0.54, 0.53], True, False),  # flat after the peak: < 0.1 SD lost
        ([0.0, -0.2, -0.4, -0.5, -0.6, -0.7, -0.8], False, False),  # falls from the start: peak at the start
    ],
)
def test_rise_then_fall(gold: list[float], inside: bool, falls: bool) -> None:
    kl = [0.0, 0.3, 0.8, 1.5, 2.5, 3.5, 4.5]
    r = rise_then_fall(kl, gold, gold_sd=1.0, threshold=0.1)
    assert (r.inside, r.rises_then_falls) == (inside, falls)
    shuffled = rise_then_fall(kl[::-1], gold[::-1], gold_sd=1.0, threshold=0.1)  # sorted by KL first
    assert shuffled == r


def test_rise_then_fall_in_gold_sds() -> None:
    kl, gold = [0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 0.4, 0.4]
    smoothed = [0.0, 1 / 3, 1.4 / 3, 1.8 / 3, 0.4]  # edges average the points available
    r = rise_then_fall(kl, gold, gold_sd=2.0, window=3)
    assert r.peak_index == 3 and r.peak_kl == 3.0
    assert r.lost_sd == pytest.approx((smoothed[3] - smoothed[4]) / 2.0)
    assert r.gain_sd == pytest.approx((smoothed[3] - smoothed[0]) / 2.0)
    with pytest.raises(ValueError, match="gold_sd"):
        rise_then_fall(kl, gold, gold_sd=0.0)


def test_coefficient_trends_recover_log_slopes() -> None:
    rows = [{"method": "bon", "params": p, "labels": n, "alpha": 1 + 0.5 * np.log10(p) - 0.2 * np.log10(n),
             "beta": 0.3 - 0.1 * np.log10(p)} for p in (1e5, 1e6, 1e7) for n in (100, 1000)]  # fmt: skip
    t = coefficient_trends(rows)
    assert t["bon/alpha"]["per_log10_params"] == pytest.approx(0.5)
    assert t["bon/alpha"]["per_log10_labels"] == pytest.approx(-0.2)
    assert t["bon/beta"]["per_log10_params"] == pytest.approx(-0.1)
    assert t["bon/beta"]["per_log10_labels"] == pytest.approx(0.0, abs=1e-9)


def test_micro_study_end_to_end(tmp_path: Path) -> None:
    """Policy, gold labels, a proxy on the policy's backbone, best-of-8 and PPO against it: audit rows, fits, table.

    (Two sizes, and so a second pretrained backbone, are what the real study adds; their wiring is tested above.)
    """
    gold = make_micro_gold(tmp_path / "gold")
    run_dir = tmp_path / "run"
    policy = "{arch: llama, hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64, max_position_embeddings: 192}"
    cfg = load_overopt_config(ROOT / "configs" / "gao-hh-micro.yaml",
                              [f"pipeline.run_dir={run_dir}", f"pipeline.task.gold_path={gold}", "label_counts=[20]",
                               f"proxy_sizes={{policy: {policy}}}"])  # fmt: skip
    out = json.loads(run_overopt(cfg, quiet=True, report=False).read_text())
    assert {(r["size"], r["labels"], r["method"]) for r in out["results"]} == {
        ("policy", 20, "bon"),
        ("policy", 20, "ppo"),
    }
    assert not (run_dir / "study" / "backbone-policy").exists()  # the policy's own pretrained model is reused
    for r in out["results"]:
        audit = read_jsonl(run_dir / f"rm-{r['size']}-n20-s0" / r["method"] / "audit.jsonl")
        assert len(audit) == r["points"] == 4  # best-of-1, 2, 4, 8; PPO steps 0 to 3
        assert all(np.isfinite(row["gold/mean"]) and np.isfinite(row["proxy/mean"]) for row in audit)
        assert r["curve"]["gold"] == [row["gold/mean"] for row in audit]
    bon = [r for r in out["results"] if r["method"] == "bon"]
    assert all(isinstance(r["alpha"], float) and isinstance(r["beta"], float) for r in bon)
    assert out["gold_sd"] > 0 and out["trends"] == {}  # one size and one count: nothing to regress on
    assert (run_dir / "overopt.md").read_text().count("\n") == 2 + len(out["results"])
    assert (run_dir / "plots" / "overopt.png").stat().st_size > 1000
    labels = read_jsonl(run_dir / "study" / "gold-labels-s0" / "label" / "train.jsonl")
    assert len(labels) >= 20 and all(r["rater"] == "gold-labels" for r in labels)
    for path in run_dir.rglob(
        "config.yaml"
    ):  # every stage's resolved config: the gold only as the task's gold
        assert set(_paths_to(yaml.safe_load(path.read_text()), str(gold))) <= {"task.gold_path"}, path


def test_registered_as_a_study_with_dotted_overrides() -> None:
    from rewardlab.studies.common import load_study
    from rewardlab.studies.overopt import OveroptConfig
    from rewardlab.studies.registry import STUDIES

    assert STUDIES["overopt"] == ("rewardlab.studies.overopt", "OveroptConfig", "run_overopt")
    cfg = load_study(ROOT / "configs" / "gao-hh-micro.yaml", OveroptConfig,
                     ["pipeline.task.gold_path=/some/gold", "label_counts=[30]", "pipeline.bon.max_n=4"])  # fmt: skip
    assert (
        cfg.pipeline.task.gold_path == "/some/gold"
        and cfg.label_counts == [30]
        and cfg.pipeline.bon.max_n == 4
    )
    assert cfg.pipeline.ppo.steps == 3  # the rest of the section is kept


def test_table_shows_an_astronomical_law_peak_as_a_bound() -> None:
    # a law with beta near 0 peaks at exp(alpha / beta)^2 nats: 3.7e200 once; the table says "> 1e4"
    assert _kl_cell(0.2691) == "0.27" and _kl_cell(9999.0) == "9999.00"
    assert _kl_cell(3.7e200) == "> 1e4" and _kl_cell(float("inf")) == "> 1e4"
