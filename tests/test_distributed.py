"""The same recipes on 2 CPU processes (torchrun, gloo) as on one: same loss trajectories, one set of files.

SFT, reward-model training and PPO run from the same inputs once in this process and once under
``torchrun --nproc_per_node 2`` with the same global batch. Each process trains on its rows of every
batch with the loss written as the global mean, so the gradients equal the single-process ones up to
float32 summation order (~1e-7 relative per step; see docs/scaling.md). PPO's rollouts are sampled in
``ppo.rollout_shards=2`` shards in both runs (one per process under torchrun, both by the single
process here), so the samples are identical and only the arithmetic order differs.

Tolerance: every metric must agree to ``atol=2e-5, rtol=1e-4``. After a handful of Adam steps on a
tiny model, float32 rounding differences of ~1e-7 grow to ~1e-6 in the parameters; KL metrics are
differences of log-probs of magnitude ~1-10, so their absolute error is ~1e-6 (measured here: below
1e-6 for losses, ~3e-7 for KL). Discrete quantities (response lengths, EOS counts) must be equal.
Clip fractions are shares of tokens where two nearly equal float32 numbers are compared (for the
value loss ``old + clip(V - old)`` against ``V``, which differ by rounding alone inside the clip
range), so one token of a minibatch may flip: they must agree to 0.02 (about two tokens in ~90).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rewardlab.cli import main
from rewardlab.distributed import local_rows, shard_bounds

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
ARM = "time-pressed-s0"
SMALL = ["--set", "threads=1", "--set", "pretrain.steps=12", "--set", "sft.steps=10",
         "--set", "label.num_prompts=160", "--set", "pretrain.eval_prompts=16", "--set", "sft.eval_prompts=16",
         "--set", "ppo.eval_prompts=16", "--set", "reward.normalize_prompts=16", "--set", "controls=[]"]  # fmt: skip
ATOL, RTOL = 2e-5, 1e-4
CLIPFRAC_ATOL = 0.02
EXACT = (
    "step",
    "train/tokens",
    "train/lr",
    "val/num_eos_tokens",
    "val/response_length",
    "val/truncated_rate",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(one process, two processes): SFT, reward and PPO from the same pretrained model, labels and proxy."""
    tmp = tmp_path_factory.mktemp("dist")
    base = tmp / "base"
    assert main(["run", str(MICRO), "--run-dir", str(base), "--quiet", "--stages", "pretrain,sft,label,reward",
                 *SMALL]) == 0  # fmt: skip
    sft, label = base / "sft" / "model", base / ARM / "label"
    inputs = [f"sft.model_path={base / 'pretrain' / 'model'}", f"reward.init_path={sft}",
              f"reward.verifier_path={sft}", f"reward.normalize_policy_path={sft}",
              f"reward.data_path={label / 'train.jsonl'}", f"reward.eval_path={label / 'eval.jsonl'}",
              f"ppo.policy_path={sft}", f"ppo.reward_path={base / ARM / 'reward' / 'model'}",
              "ppo.rollout_shards=2", "methods=[ppo]"]  # fmt: skip
    sets = [*SMALL, *[x for kv in inputs for x in ("--set", kv)]]
    one, two = tmp / "one", tmp / "two"
    args = ["run", str(MICRO), "--quiet", "--stages", "sft,reward,ppo", *sets]
    assert main([*args, "--run-dir", str(one)]) == 0
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "rewardlab.cli", *args]
    cmd += ["--run-dir", str(two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return one, two


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "eps"} for r in rows]


def _assert_close(a: list[dict], b: list[dict], where: str) -> float:
    """Same rows and keys; numbers within tolerance (discrete ones equal). Returns the largest relative gap."""
    assert [r["step"] for r in a] == [r["step"] for r in b], where
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys(), where
        for k, va in ra.items():
            vb = rb[k]
            if not isinstance(va, float | int) or isinstance(va, bool):
                assert va == vb, (where, ra["step"], k)
            elif k in EXACT:
                assert va == vb, (where, ra["step"], k, va, vb)
            elif "clipfrac" in k:  # a share of tokens: one token may flip (see the module docstring)
                assert abs(va - vb) <= CLIPFRAC_ATOL, (where, ra["step"], k, va, vb)
            else:
                assert math.isclose(va, vb, rel_tol=RTOL, abs_tol=ATOL), (where, ra["step"], k, va, vb)
                worst = max(worst, abs(va - vb) / max(abs(va), 1e-3))
    return worst


@pytest.mark.parametrize("stage", ["sft", f"{ARM}/reward", f"{ARM}/ppo"])
def test_two_processes_give_the_single_process_trajectory(runs: tuple[Path, Path], stage: str) -> None:
    one, two = runs
    a, b = _rows(one / stage / "metrics.jsonl"), _rows(two / stage / "metrics.jsonl")
    loss_key = {"sft": "train/loss", f"{ARM}/reward": "train/loss", f"{ARM}/ppo": "loss/policy_avg"}[stage]
    assert sum(loss_key in r for r in a) >= 1, a  # the trajectory is there to compare
    _assert_close(a, b, stage)
    if stage.endswith("ppo"):
        _assert_close(_rows(one / stage / "audit.jsonl"), _rows(two / stage / "audit.jsonl"), "audit")


@pytest.mark.parametrize("stage", ["sft", f"{ARM}/reward", f"{ARM}/ppo"])
def test_two_processes_write_one_set_of_files(runs: tuple[Path, Path], stage: str) -> None:
    one, two = runs
    names = _files(one / stage)
    assert names == _files(two / stage)
    assert any(n.startswith("checkpoint/") for n in names) and any(n.startswith("model/") for n in names)
    assert not [p for p in (two / stage).rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def _files(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def test_shards_cover_the_batch_in_order() -> None:
    for n in (0, 1, 5, 8, 33):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert [lo for lo, _ in bounds] == [0, *[hi for _, hi in bounds[:-1]]] and bounds[-1][1] == n
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1
    assert local_rows(1, 1, 2) == (slice(0, 1), False)  # an empty share gets a stand-in row, weighted 0
    assert local_rows(3, 1, 2) == (slice(2, 3), True)


@pytest.mark.parametrize(
    ("name", "mode"), [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED")]
)
def test_accelerate_config_files_parse(name: str, mode: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.value == mode and cfg.mixed_precision == "no"
    if name.startswith("zero"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])
