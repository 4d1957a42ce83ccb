"""The same recipe on one process or many (``torchrun`` / ``accelerate launch``).

Every trainer follows one data-parallel rule: **each process computes the same global batch
description (which examples, which prompts) from the same seeded state and trains on its own
contiguous slice of it**; losses are written as *global* means (each process scales its partial
sum by ``world_size / global_count``, and DDP's gradient averaging then yields exactly the
single-process gradient up to floating-point reduction order). Only the main process writes files
(metrics, audits, checkpoints, the final model); the others run with a :class:`ReplicaRun` that
writes nothing, and wait at a barrier where the main process saves.

On a CPU-only machine ``torchrun --nproc_per_node 2 -m rewardlab.cli sft ...`` runs two gloo
processes (:func:`make_accelerator` switches accelerate to its multi-CPU mode when it sees
``WORLD_SIZE > 1`` and no GPU). See ``docs/scaling.md``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from accelerate import Accelerator, PartialState
from pydantic import BaseModel

from rewardlab.runs import HealthWatch, Run, partial_dir

P = ParamSpec("P")
R = TypeVar("R")


def _use_cpu_backend() -> bool:
    """True when launched on several processes without a GPU: accelerate then needs ``cpu=True`` (gloo)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def make_accelerator() -> Accelerator:
    """An ``Accelerator`` for one process, DDP on GPUs, or gloo on CPU processes (torchrun / accelerate launch)."""
    return Accelerator(cpu=_use_cpu_backend())


def process_state() -> PartialState:
    """Rank and world size without building an ``Accelerator`` (same backend choice as :func:`make_accelerator`)."""
    return PartialState(cpu=_use_cpu_backend())


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)`` of process ``rank``'s contiguous share of ``n`` rows (sizes differ by at most one)."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def local_rows(n: int, rank: int, world: int) -> tuple[slice, bool]:
    """This process's rows of a global batch of ``n`` and whether they are real.

    A process whose share is empty (``n < world``) gets row 0 as a stand-in so that it still runs
    forward and backward (DDP needs every process in every gradient all-reduce); the caller weights
    the stand-in's loss by 0.
    """
    lo, hi = shard_bounds(n, rank, world)
    return (slice(lo, hi), True) if hi > lo else (slice(0, 1), False)


@dataclass(frozen=True)
class Share:
    """This process's rows of a global batch (``rows``), whether they are real rows or a stand-in, and
    ``scale``: the factor that turns the sum of its rows' losses into its part of the global mean
    (``world / denominator``; 0 for a stand-in), so DDP's gradient average is the global mean's gradient."""

    rows: slice
    real: bool
    scale: float


def batch_share(acc: Accelerator | None, n: int, denominator: int | None = None) -> Share:
    """The one helper for data-parallel shares: this process's :class:`Share` of a global batch of ``n``
    rows whose loss is a mean over ``denominator`` items (default ``n``; e.g. the global token count)."""
    world = acc.num_processes if acc is not None else 1
    rank = acc.process_index if acc is not None else 0
    rows, real = local_rows(n, rank, world)
    return Share(rows, real, world / max(n if denominator is None else denominator, 1) if real else 0.0)


def reduce_sums(acc: Accelerator | None, values: Sequence[float], real: bool = True) -> list[float]:
    """Sums of this process's statistics over processes (a stand-in share counts 0); as is on one process."""
    vals = [float(v) if real else 0.0 for v in values]
    if acc is None or acc.num_processes == 1:
        return vals
    return all_reduce_sum(acc, vals)


def all_reduce_sum(acc: Accelerator, values: list[float]) -> list[float]:
    """Sum a few scalars over processes (float64, so the logged sums do not depend on the process count)."""
    t = torch.tensor(values, dtype=torch.float64, device=acc.device)
    return acc.reduce(t, reduction="sum").tolist()


class ReplicaRun(Run):
    """The stage's run folder as a non-main process sees it: the same ``dir`` and clock, and it writes nothing."""

    def __init__(
        self, out_dir: Path | str, stage: str, staged: bool = True
    ) -> None:  # no super().__init__: it would write
        self.final = Path(out_dir)
        self.dir = partial_dir(self.final) if staged else self.final
        self.stage = stage
        self.quiet = True
        self.staged = staged
        self.health = HealthWatch()
        self.config_changes = []
        self.recorded = {}
        self._sinks = []
        self._lock = None
        self._handles_open = False
        self.log = logging.getLogger(f"rewardlab.{stage}.replica")
        self.t0 = time.perf_counter()

    def info(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        pass

    def write_json(self, name: str, obj: Any) -> Path:
        return self.dir / name

    def commit(self) -> Path:
        return self.final

    def abandon(self, state: str, reason: str) -> Path:
        return self.dir

    def close(self) -> None:
        pass


def stage_run(acc: Accelerator | PartialState, out_dir: Path | str, stage: str, config: BaseModel | None,
              report_to: Any = (), quiet: bool = False) -> Run:  # fmt: skip
    """The stage's staged :class:`Run` on the main process (it commits the folder), a :class:`ReplicaRun` on the
    others (they read the same ``<name>.partial`` folder)."""
    if acc.is_main_process:
        return Run(out_dir, stage, config, report_to, quiet, staged=True)
    return ReplicaRun(out_dir, stage)


def main_process_only(fn: Callable[P, R]) -> Callable[P, R | None]:
    """Run a stage that is not a trainer (labelling, best-of-n) on the main process only; the others wait.

    With one process this is ``fn`` itself.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return fn(*args, **kwargs)
        state = process_state()
        out = fn(*args, **kwargs) if state.is_main_process else None
        state.wait_for_everyone()
        return out

    return wrapper
