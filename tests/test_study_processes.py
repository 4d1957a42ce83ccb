"""map_in_processes: a study's jobs in worker processes, each with its own torch threads, errors named."""

from __future__ import annotations

import math
import os

import pytest
import torch

from rewardlab.pipelines.processes import map_in_processes
from rewardlab.utils import RewardlabError


def test_one_process_runs_the_jobs_here_in_order() -> None:
    out = list(map_in_processes(math.pow, [("a", (2.0, 3.0)), ("b", (3.0, 2.0))], processes=1, threads=1))
    assert out == [("a", 8.0), ("b", 9.0)]


def probe(tag: str) -> tuple[str, int, int]:
    """Its pid and threads, after relaying a stage's progress to the parent as a training loop would."""
    from rewardlab.runs import _RelayProgress

    bar = _RelayProgress("reward", "training")
    task = bar.add_task("training", total=3)
    bar.update(task, completed=3, status="loss 0.5")
    return tag, os.getpid(), torch.get_num_threads()


def test_worker_processes_run_every_job_once_with_their_threads() -> None:
    jobs = [("j0", ("x",)), ("j1", ("y",))]
    out = dict(map_in_processes(probe, jobs, processes=2, threads=1, show=True))  # with progress bars
    assert {k: (v[0], v[2]) for k, v in out.items()} == {"j0": ("x", 1), "j1": ("y", 1)}
    pids = {v[1] for v in out.values()}
    assert os.getpid() not in pids and len(pids) == 2  # a fresh process per job


def test_a_failing_job_is_named_and_stops_the_rest() -> None:
    jobs = [("bad", (-1.0,)), ("fine", (4.0,)), ("later", (9.0,))]
    with pytest.raises(RewardlabError, match=r"^bad: ValueError: math domain error"):
        list(map_in_processes(math.sqrt, jobs, processes=2, threads=1))


def _finished_stage(run_dir, cfg, stage: str) -> None:
    import yaml

    d = run_dir / stage
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.bin").write_bytes(b"w")
    made = cfg.model_dump(mode="json")
    del made["dtype"]  # written before the field existed: its default is what the run did
    (d / "config.yaml").write_text(yaml.safe_dump(made))
    (d / "summary.json").write_text("{}")


def test_base_models_are_taken_only_where_their_training_settings_match(tmp_path) -> None:
    from rewardlab.config import load_config
    from rewardlab.studies.common import take_base_models

    base = tmp_path / "base"
    made = load_config("configs/micro.yaml", [f"run_dir={base}", "threads=2", "pretrain.eval_every=10"])
    _finished_stage(base, made, "pretrain")
    _finished_stage(base, load_config("configs/micro.yaml", [f"run_dir={base}", "sft.steps=99"]), "sft")
    study = load_config("configs/micro.yaml", [f"run_dir={tmp_path / 'study'}", "threads=1"])
    notes = take_base_models(study, str(base))
    # pretrain differs only in threads and what is measured: hard-linked; SFT trained with other steps: not taken
    assert notes[0] == f"pretrain: taken from {base / 'pretrain'}"
    linked = study.stage_dir("pretrain") / "model" / "weights.bin"
    assert linked.stat().st_ino == (base / "pretrain" / "model" / "weights.bin").stat().st_ino
    assert "sft.steps: 99 -> 20" in notes[1] and not study.stage_dir("sft").exists()
    # pretrain is there now: left alone
    assert take_base_models(study, str(base))[0].startswith("sft: trained here")
    assert take_base_models(study, None) == []
    assert "holds no finished" in take_base_models(study, str(tmp_path / "nothing"))[-1]
