"""Run folders and metric logging.

A stage run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per
logged step: ``{"step": ..., "<name>": value, ...}``), ``run.log`` and whatever the stage writes
(checkpoints, samples). Metrics always go to ``metrics.jsonl``; ``report_to: [tensorboard]`` mirrors
them to TensorBoard. Other trackers (W&B offline, MLflow, trackio) plug in as a :class:`MetricSink`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rewardlab.utils import RewardlabError, atomic_write_text

console = Console(stderr=True)
T = TypeVar("T")

#: Where a stage running in a worker process sends its progress and log lines (see ``set_relay``).
_RELAY: tuple[Any, str] | None = None


def set_relay(queue: Any, label: str) -> None:
    """Send this process's stage progress and ``Run.info`` lines to ``queue`` as tuples tagged ``label``.

    ``rewardlab run`` trains several arms at once in worker processes; each worker relays its progress so
    that the parent draws one bar per arm instead of several processes writing to one terminal.
    Messages: ``("progress", label, stage, description, completed, total, status)`` and
    ``("info", label, stage, message)``.
    """
    global _RELAY
    _RELAY = (queue, label)


class _RelayProgress(Progress):
    """A hidden ``Progress`` whose updates are forwarded to the relay queue."""

    def __init__(self, stage: str, description: str) -> None:
        super().__init__(disable=True)
        self._stage, self._description = stage, description

    def update(self, task_id: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        if _RELAY is not None:
            task = self._tasks[task_id]
            queue, label = _RELAY
            queue.put(("progress", label, self._stage, self._description, task.completed, task.total,
                       str(kwargs.get("status", ""))))  # fmt: skip


class MetricSink(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class TensorBoardSink:
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RewardlabError("report_to: tensorboard needs `pip install rewardlab[tensorboard]`") from e
        self._w = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self._w.add_scalar(k, v, step)

    def close(self) -> None:
        self._w.flush()
        self._w.close()


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class Run:
    """One stage's run folder: config, metrics, log, progress."""

    def __init__(self, out_dir: Path | str, stage: str, config: BaseModel | None = None,
                 report_to: Sequence[str] = (), quiet: bool = False) -> None:  # fmt: skip
        self.dir = Path(out_dir)
        self.stage = stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        if config is not None:
            atomic_write_text(
                self.dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
            )
        self._metrics_path = self.dir / "metrics.jsonl"
        self._metrics_path.write_text("", encoding="utf-8")
        self._sinks: list[MetricSink] = []
        for name in report_to:
            if name == "tensorboard":
                self._sinks.append(TensorBoardSink(self.dir / "tensorboard"))
            else:
                raise RewardlabError(f"report_to: unknown tracker {name!r}")
        self.log = logging.getLogger(f"rewardlab.{stage}.{id(self)}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self._fh = logging.FileHandler(self.dir / "run.log", mode="w", encoding="utf-8")
        self._fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.log.addHandler(self._fh)
        self.t0 = time.perf_counter()

    def info(self, msg: str) -> None:
        self.log.info(msg)
        if _RELAY is not None:
            _RELAY[0].put(("info", _RELAY[1], self.stage, msg))
        elif not self.quiet:
            console.print(f"[bold cyan]{self.stage}[/] {msg}", highlight=False)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self._metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for s in self._sinks:
            s.log({k: v for k, v in row.items() if k != "step"}, step)

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_text(self.dir / name, json.dumps(obj, indent=2, default=_clean) + "\n")

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[Progress]:
        if _RELAY is not None:
            relayed = _RelayProgress(self.stage, description)
            relayed.add_task(description, total=total, status="")
            relayed.update(relayed.task_ids[0])
            yield relayed
            return
        prog = Progress(
            TextColumn(f"[bold cyan]{self.stage}[/] {description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            disable=self.quiet,
            transient=False,
        )
        with prog:
            prog.add_task(description, total=total, status="")
            yield prog

    def close(self) -> None:
        for s in self._sinks:
            s.close()
        self.log.removeHandler(self._fh)
        self._fh.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def advance(prog: Progress, status: str = "", n: int = 1) -> None:
    prog.update(prog.task_ids[0], advance=n, status=status)


def batched(items: Sequence[T] | Iterable[T], n: int) -> Iterator[list[T]]:
    buf: list[T] = []
    for x in items:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf
