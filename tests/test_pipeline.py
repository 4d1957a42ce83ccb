"""End to end on the micro config: every stage, the report, determinism, external checkpoints, NaN abort."""

import json
import math
from pathlib import Path

import pytest

from rewardlab.cli import main
from rewardlab.config import load_config
from rewardlab.runs import read_metrics
from rewardlab.utils import TrainingDivergedError

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"


def _finite_rows(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    assert rows, path
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v), (path, k, v)
    return rows


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("micro")
    assert main(["run", str(MICRO), "--run-dir", str(run_dir), "--quiet"]) == 0
    return run_dir


def test_whole_pipeline_writes_every_artifact(micro_run):
    for stage in ("pretrain", "sft"):
        d = micro_run / stage
        assert (d / "model" / "model.safetensors").is_file() and (d / "config.yaml").is_file()
        _finite_rows(d / "metrics.jsonl")
    for arm in ("time-pressed-s0", "unbiased-s0"):
        a = micro_run / arm
        assert (a / "label" / "train.jsonl").is_file() and (
            a / "reward" / "model" / "ensemble.json"
        ).is_file()
        rows = _finite_rows(a / "ppo" / "audit.jsonl")
        assert rows[0]["step"] == 0 and {"kl/k1", "kl/k2", "kl/k3", "proxy/mean", "gold/mean"} <= set(rows[0])
        _finite_rows(a / "ppo" / "metrics.jsonl")
        assert (a / "ppo" / "samples" / "step_0.jsonl").is_file()
        bon = _finite_rows(a / "bon" / "audit.jsonl")
        assert [r["n"] for r in bon] == [1, 2, 4, 8]
    html = (micro_run / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert (micro_run / "summary.json").is_file()


def test_ppo_metrics_use_trl_names(micro_run):
    rows = read_metrics(micro_run / "time-pressed-s0" / "ppo")
    names = set().union(*rows)
    for k in (
        "objective/kl",
        "objective/scores",
        "objective/rlhf_reward",
        "objective/non_score_reward",
        "objective/entropy",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "val/clipfrac_avg",
        "val/num_eos_tokens",
        "kl/k1",
        "kl/k2",
        "kl/k3",
        "loss/value_avg",
    ):
        assert k in names, k


def _strip_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "eps"} for r in rows]


def test_same_seed_same_metrics(tmp_path):
    args = ["--set", "pretrain.steps=10", "--set", "sft.steps=5", "--set", "threads=1", "--set",
            "pretrain.eval_prompts=16", "--set", "sft.eval_prompts=16", "--quiet"]  # fmt: skip
    for d in ("a", "b"):
        assert (
            main(["run", str(MICRO), "--run-dir", str(tmp_path / d), "--stages", "pretrain,sft", *args]) == 0
        )
    for stage in ("pretrain", "sft"):
        assert _strip_time(read_metrics(tmp_path / "a" / stage)) == _strip_time(
            read_metrics(tmp_path / "b" / stage)
        )


def test_external_qwen2_checkpoint_through_sft_and_reward(tmp_path):
    """A locally saved random Qwen2 with a different config works like our own base model."""
    from rewardlab.policies.models import ModelConfig, build_causal_lm
    from rewardlab.policies.tokenizer import build_task_tokenizer
    from rewardlab.tasks.arithmetic import TASK_WORDS

    tok = build_task_tokenizer(TASK_WORDS)
    ckpt = tmp_path / "qwen2-local"
    model = build_causal_lm(
        ModelConfig(arch="qwen2", hidden_size=48, num_layers=3, num_heads=3, intermediate_size=96), tok
    )
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--quiet", "--set", f"sft.model_path={ckpt}"]
    assert main(["sft", str(MICRO), *common]) == 0
    sft = run / "sft" / "model"
    assert json.loads((sft / "config.json").read_text())["model_type"] == "qwen2"
    assert main(["label", str(MICRO), *common, "--set", f"label.policy_paths=['{sft}', '{ckpt}']"]) == 0
    assert main(["reward", str(MICRO), *common]) == 0
    summary = json.loads((run / "time-pressed-s0" / "reward" / "summary.json").read_text())
    assert 0.0 <= summary["eval/accuracy_rater"] <= 1.0


def test_nan_loss_aborts_with_step_and_leaves_no_checkpoint(tmp_path):
    from rewardlab.pipelines.pretrain import run_pretrain

    cfg = load_config(
        MICRO, [f"run_dir={tmp_path}", "pretrain.optim.lr=1e30", "pretrain.optim.max_grad_norm=1e30"]
    )
    with pytest.raises(TrainingDivergedError, match=r"step \d+"):
        run_pretrain(cfg, quiet=True)
    assert not (tmp_path / "pretrain" / "model").exists()
    assert not list((tmp_path / "pretrain").glob(".model.tmp-*"))


def test_parallel_arms_equal_serial_arms_and_record_timings(micro_run, tmp_path):
    """The module's run trained both arms at once (2 worker processes, 1 thread each); running them one
    after another in this process with 1 thread gives the same metrics, stage by stage."""
    import shutil

    first = json.loads((micro_run / "timings.json").read_text())[0]
    assert first["arm_processes"] == 2
    for key in ("pretrain", "sft", "time-pressed-s0/reward", "unbiased-s0/ppo", "report", "total"):
        assert first["seconds"][key] > 0, key
    for stage in ("pretrain", "sft"):
        shutil.copytree(micro_run / stage, tmp_path / stage)
    args = ["--set", "arm_processes=1", "--set", "threads=1", "--reuse", "--quiet"]
    assert main(["run", str(MICRO), "--run-dir", str(tmp_path), *args]) == 0
    assert json.loads((tmp_path / "timings.json").read_text())[0]["arm_processes"] == 1
    for arm in ("time-pressed-s0", "unbiased-s0"):
        for stage in ("reward", "ppo"):
            assert _strip_time(read_metrics(tmp_path / arm / stage)) == _strip_time(
                read_metrics(micro_run / arm / stage)
            ), (arm, stage)
        assert (tmp_path / arm / "bon" / "audit.jsonl").read_text() == (
            micro_run / arm / "bon" / "audit.jsonl"
        ).read_text()


def test_failing_arm_in_a_worker_names_the_arm(micro_run, tmp_path):
    import shutil

    from rewardlab.utils import RewardlabError

    for stage in ("pretrain", "sft"):
        shutil.copytree(micro_run / stage, tmp_path / stage)
    cfg = load_config(
        MICRO, [f"run_dir={tmp_path}", "reward.init_path=/nonexistent/model", "arm_processes=2"]
    )
    from rewardlab.pipelines.run import run_pipeline

    with pytest.raises(RewardlabError, match=r"arm (time-pressed|unbiased)-s0 failed: .*nonexistent"):
        run_pipeline(cfg, reuse=True, quiet=True)
