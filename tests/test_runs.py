"""Run folders, metric sinks and atomic checkpoint writes."""

import pytest

from rewardlab.runs import Run, read_metrics
from rewardlab.utils import atomic_dir


def test_metrics_jsonl_and_tensorboard(tmp_path):
    run = Run(tmp_path / "r", "stage", report_to=["tensorboard"], quiet=True)
    run.log_metrics({"train/loss": 1.5, "nan": float("nan")}, step=3)
    run.close()
    rows = read_metrics(tmp_path / "r")
    assert rows == [{"step": 3, "train/loss": 1.5, "nan": None}]
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "r" / "run.log").is_file()


def test_atomic_dir_keeps_old_checkpoint_on_failure(tmp_path):
    target = tmp_path / "model"
    atomic_dir(target, lambda d: (d.mkdir(), (d / "w.txt").write_text("v1")))

    def broken(d):
        d.mkdir()
        (d / "w.txt").write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_dir(target, broken)
    assert (target / "w.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp folder left behind
    atomic_dir(target, lambda d: (d.mkdir(), (d / "w.txt").write_text("v2")))
    assert (target / "w.txt").read_text() == "v2"


def test_unknown_tracker_is_an_error(tmp_path):
    from rewardlab.utils import RewardlabError

    with pytest.raises(RewardlabError, match="unknown tracker"):
        Run(tmp_path, "s", report_to=["wandb"], quiet=True)
