"""Resume after SIGKILL: a trainer killed mid-run and restarted with --resume ends exactly like an uninterrupted run.

The killed run is a real subprocess of the CLI that SIGKILLs itself after N training steps
(``REWARDLAB_TEST_SIGKILL_AFTER``), after a checkpoint and after more metric rows were logged, so
the resumed run must drop those rows, restore weights, optimizer, schedule, data order, RNGs (and,
for PPO, the sampling generators, prompt RNG, KL coefficient and audit rows) and finish bitwise equal
to the uninterrupted run (CPU kernels are deterministic).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rewardlab.checkpoint import KILL_ENV, Checkpointer
from rewardlab.cli import main
from rewardlab.runs import Run, partial_dir, unfinished_attempt

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
ARM = "time-pressed-s0"
SMALL = ["--set", "threads=1", "--set", "pretrain.steps=12", "--set", "sft.steps=12", "--set", "sft.batch_size=64",
         "--set", "label.num_prompts=160", "--set", "pretrain.eval_prompts=16", "--set", "sft.eval_prompts=16",
         "--set", "ppo.eval_prompts=16", "--set", "reward.normalize_prompts=16"]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pretrain, SFT, labels and a reward model, shared by every case."""
    d = tmp_path_factory.mktemp("base")
    stages = ["--stages", "pretrain,sft,label,reward", "--set", "controls=[]"]
    assert main(["run", str(MICRO), "--run-dir", str(d), "--quiet", *stages, *SMALL]) == 0
    return d


def _rows(path: Path) -> list[dict]:
    """Metric or audit rows without wall-clock fields."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "eps"} for r in rows]


def _weights(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.rglob("*.safetensors")):
        out.update({f"{f.relative_to(d)}:{k}": v for k, v in load_file(str(f)).items()})
    assert out, d
    return out


def _copy_inputs(base: Path, dest: Path, stage: str) -> None:
    shutil.copytree(base, dest)
    shutil.rmtree(dest / stage if stage in ("pretrain", "sft") else dest / ARM / stage, ignore_errors=True)
    if stage == "pretrain":  # SFT etc. are not needed, and must not mask a missing pretrain output
        shutil.rmtree(dest / "sft")


CASES = {
    # stage, checkpoint key, overrides, kill after N steps (a checkpoint before it, a metrics row after it)
    "pretrain": ("pretrain", "pretrain.checkpoint_every=4", [], 11),
    "sft-two-epochs": ("sft", "sft.checkpoint_every=4", [], 11),  # 6 batches per epoch: the kill is in epoch 2
    "reward-ensemble": ("reward", "reward.checkpoint_every=2", ["reward.ensemble_size=2"], 7),
    "ppo": ("ppo", "ppo.checkpoint_every=2", [], 3),
    "rloo-sharded-adaptive-kl": ("rloo", "ppo.checkpoint_every=2",
                                 ["ppo.rollout_shards=2", "ppo.kl_controller=adaptive", "ppo.kl_target=0.01"], 3),
}  # fmt: skip


# pretrain runs the same train_lm loop as SFT (which is resumed across an epoch boundary): slow-marked
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[pytest.mark.slow] if c == "pretrain" else []) for c in CASES]
)
def test_sigkill_then_resume_matches_uninterrupted_run(base: Path, tmp_path: Path, case: str) -> None:
    stage, every, extra, kill_after = CASES[case]
    sets = [x for kv in [every, *extra] for x in ("--set", kv)]
    out = (lambda d: d / stage) if stage in ("pretrain", "sft") else (lambda d: d / ARM / stage)

    ref, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    _copy_inputs(base, ref, stage)
    _copy_inputs(base, killed, stage)
    assert main([stage, str(MICRO), "--run-dir", str(ref), "--quiet", *SMALL, *sets]) == 0

    cmd = [sys.executable, "-m", "rewardlab.cli", stage, str(MICRO), "--run-dir", str(killed), "--quiet"]
    cmd += [*SMALL, *sets]
    env = {**os.environ, KILL_ENV: str(kill_after), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # the killed stage is an unfinished attempt: its folder does not exist, <stage>.partial holds the checkpoint
    partial = partial_dir(out(killed))
    assert (partial / "checkpoint").is_dir() and not out(killed).exists()
    assert unfinished_attempt(out(killed))["state"] == "killed"  # type: ignore[index]
    logged_after_kill = len(_rows(partial / "metrics.jsonl"))

    assert main([stage, str(MICRO), "--run-dir", str(killed), "--quiet", "--resume", *SMALL, *sets]) == 0
    assert "resumed from" in (out(killed) / "run.log").read_text()
    assert not partial.exists() and unfinished_attempt(out(killed)) is None
    assert logged_after_kill < len(_rows(out(ref) / "metrics.jsonl"))
    assert _rows(out(killed) / "metrics.jsonl") == _rows(out(ref) / "metrics.jsonl")
    if stage in ("ppo", "rloo"):
        assert _rows(out(killed) / "audit.jsonl") == _rows(out(ref) / "audit.jsonl")
    w_ref, w_res = _weights(out(ref) / "model"), _weights(out(killed) / "model")
    assert w_ref.keys() == w_res.keys()
    for k in w_ref:
        assert torch.equal(w_ref[k], w_res[k]), k


# -- the checkpointer on its own ----------------------------------------------------------------


def _trainer(run: Run, **kw) -> tuple[Checkpointer, torch.nn.Module, torch.optim.Optimizer, torch.Generator]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    ckpt = Checkpointer(run, every=2, total_steps=5, resume=True, **kw)
    ckpt.track(model=model, optimizer=opt, generator=gen, prompt_rng=random.Random(3))
    return ckpt, model, opt, gen


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    x = torch.randn(3, 4, generator=gen) + torch.randn(3, 4) + float(np.random.rand())
    model(x).pow(2).sum().backward()
    opt.step()
    opt.zero_grad()


def test_checkpoint_round_trip_restores_weights_optimizer_and_every_rng(tmp_path: Path) -> None:
    run = Run(tmp_path, "unit")
    ckpt, model, opt, gen = _trainer(run)
    assert ckpt.restore() == 0  # nothing saved yet: a fresh start
    for step in (1, 2):
        _train_step(model, opt, gen)
        run.log_metrics({"x": step}, step)
        ckpt.end_step(step, note="kept")
    _train_step(model, opt, gen)  # step 3, then "killed": its row must disappear on resume
    run.log_metrics({"x": 3}, 3)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    ckpt2, model2, opt2, gen2 = _trainer(run)
    torch.manual_seed(123)  # the global RNGs come back from the checkpoint too
    np.random.seed(123)
    assert ckpt2.restore() == 2 and ckpt2.extra == {"note": "kept"}
    assert [r["step"] for r in _rows(tmp_path / "metrics.jsonl")] == [1, 2]
    _train_step(model2, opt2, gen2)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_a_kill_between_the_two_renames_is_repaired(tmp_path: Path) -> None:
    run = Run(tmp_path, "unit")
    ckpt, model, opt, gen = _trainer(run)
    _train_step(model, opt, gen)
    ckpt.save(1)
    # atomic_dir moves the old folder away, then renames the new one into place; die in between:
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.old-deadbeef")
    (tmp_path / ".checkpoint.tmp-cafebabe").mkdir()  # and a half-written new one
    ckpt2, *_ = _trainer(run)
    assert ckpt2.restore() == 1
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint"]
