"""`rewardlab run` with every optimizer on one arm (configs/compare.yaml's path, on the micro config)."""

import json
import math
from pathlib import Path

import pytest

from rewardlab.cli import main
from rewardlab.config import load_config
from rewardlab.methods import method
from rewardlab.pipelines.run import _done

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
METHODS = ["ppo", "bon", "dpo", "dpo-iter", "filtered-mle", "rwr", "reward-conditioned", "alol"]


def test_compare_config_names_every_method_and_its_folders(tmp_path):
    cfg = load_config(ROOT / "configs/compare.yaml", [f"run_dir={tmp_path}"])
    assert cfg.methods == METHODS and cfg.controls == []
    assert method("dpo").folders(cfg) == ["dpo-b0.05", "dpo-b0.1", "dpo-b0.3"]
    assert method("alol").folders(cfg) == ["alol"]
    # a sweep is done only when every beta's folder is finished
    for f in ("dpo-b0.05", "dpo-b0.1"):
        (cfg.stage_dir(f) / "model").mkdir(parents=True)
    assert not _done(cfg, "dpo")
    (cfg.stage_dir("dpo-b0.3")).mkdir(parents=True)
    (cfg.stage_dir("dpo-b0.3") / "summary.json").write_text("{}")
    assert _done(cfg, "dpo") and not _done(cfg, "ppo")


@pytest.mark.slow  # ~2 min on a quiet 2-core machine: eleven trainers on the micro config
def test_every_method_on_one_arm_lands_in_one_report(tmp_path):
    argv = ["run", str(MICRO), "--run-dir", str(tmp_path), "--quiet", "--set", "controls=[]",
            "--set", f"methods=[{','.join(METHODS)}]", "--set", "dpo.beta_sweep=[0.1,0.5]"]  # fmt: skip
    assert main(argv) == 0
    arm = tmp_path / "time-pressed-s0"
    folders = ["ppo", "bon", "dpo-b0.1", "dpo-b0.5", "dpo-iter", "filtered-mle", "rwr", "reward-conditioned",
               "alol"]  # fmt: skip
    for f in folders:
        rows = [json.loads(x) for x in (arm / f / "audit.jsonl").read_text().splitlines()]
        assert len(rows) >= 2, f
        assert all(math.isfinite(r["gold/mean"]) and math.isfinite(r["proxy/mean"]) for r in rows), f
    summary = json.loads((tmp_path / "summary.json").read_text())
    table = {r["method"]: r for r in summary["comparison"]}
    assert set(table) == set(folders)
    for f, r in table.items():
        assert r["n_seeds"] == 1 and r["biased"], f
        assert r["wall_seconds"] > 0, f  # every optimizer records its wall time
    html = (tmp_path / "report.html").read_text()
    for label in ("DPO β=0.1", "iterated DPO", "filtered MLE", "RWR", "A-LoL", "best-of-n", "PPO"):
        assert label in html, label
    # --reuse skips every finished method (nothing is retrained: the audits are untouched)
    before = {f: (arm / f / "audit.jsonl").stat().st_mtime_ns for f in folders}
    assert main([*argv, "--reuse"]) == 0
    assert before == {f: (arm / f / "audit.jsonl").stat().st_mtime_ns for f in folders}
