"""Helpers the stage recipes share: seeding a stage, the fixed held-out prompts, stage paths."""

from __future__ import annotations

from pathlib import Path

from rewardlab.config import PipelineConfig
from rewardlab.tasks.arithmetic import ArithmeticTask, Problem
from rewardlab.utils import RewardlabError, seed_everything, set_threads

EVAL_SEED = 1_000_000_007  # the held-out prompts are the same for every stage, run and seed


def setup_stage(cfg: PipelineConfig, stage_offset: int = 0) -> ArithmeticTask:
    set_threads(cfg.threads)
    seed_everything(cfg.seed * 1000 + stage_offset)
    return ArithmeticTask(cfg.task)


def eval_problems(task: ArithmeticTask, n: int) -> list[Problem]:
    return task.sample_problems(n, seed=EVAL_SEED)


def stage_input(cfg: PipelineConfig, explicit: str | None, stage: str, name: str, what: str) -> Path:
    """An input path: the explicit one, else ``<run_dir>/<stage>/<name>``; a clear error if missing."""
    p = Path(explicit) if explicit else cfg.stage_dir(stage) / name
    if not p.exists():
        hint = "" if explicit else f" (run `rewardlab {stage}` first or set it explicitly)"
        raise RewardlabError(f"{what} {p} not found{hint}")
    return p
