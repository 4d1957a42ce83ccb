"""Run folders and metric logging.

A stage run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per
logged step: ``{"step": ..., "<name>": value, ...}``), ``run.log`` and whatever the stage writes
(checkpoints, samples). Metrics always go to ``metrics.jsonl``; ``report_to: [tensorboard]`` mirrors
them to TensorBoard. Other trackers (W&B offline, MLflow, trackio) plug in as a :class:`MetricSink`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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

from rewardlab.utils import RewardlabError, atomic_write_text, replace_dir, restore_replaced_dir

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


#: Consecutive logged rows with a zero gradient norm (or a loss at ln |V|) that mark a run as collapsed.
COLLAPSE_PATIENCE = 10


class HealthWatch:
    """Loud warnings for a run that finishes without learning: detectors over the rows a stage logs.

    * a gradient norm (any ``*grad_norm`` metric) of exactly 0 for :data:`COLLAPSE_PATIENCE` rows in a row;
    * a training loss within 0.5% of ln |V| (a uniform next-token distribution) for as many rows, once a
      trainer has told the watch its vocabulary size;
    * a parse rate (any ``*parse_rate`` metric) that was above 0 and falls to 0;
    * at the end (:meth:`finish`), a training loss that ended far above where it started, or (with the vocabulary
      size) above 1.5 ln |V|, worse than guessing uniformly (diverged).

    Each warning is given once; :attr:`warnings` ends up in the stage's ``summary.json`` and the report.
    """

    def __init__(self) -> None:
        self.vocab_size: int | None = None
        self.warnings: list[str] = []
        self._zero_grad: dict[str, int] = {}
        self._uniform = 0
        self._parse_seen: dict[str, tuple[int, float]] = {}
        self._losses: list[tuple[int, float]] = []
        self._given: set[str] = set()

    def _warn(self, kind: str, msg: str) -> str | None:
        if kind in self._given:
            return None
        self._given.add(kind)
        self.warnings.append(msg)
        return msg

    def observe(self, metrics: Mapping[str, Any], step: int) -> list[str]:
        """Feed one logged row; returns the warnings it raised (each kind only once)."""
        out: list[str] = []
        for k, v in metrics.items():
            if not isinstance(v, int | float) or isinstance(v, bool):
                continue
            if k.endswith("grad_norm"):
                self._zero_grad[k] = self._zero_grad.get(k, 0) + 1 if v == 0.0 else 0
                if self._zero_grad[k] == COLLAPSE_PATIENCE:
                    out.append(self._warn("grad", f"collapsed: {k} has been 0 for {COLLAPSE_PATIENCE} logged steps "
                                          f"(up to step {step}); the model no longer learns (learning rate too large?)"))  # fmt: skip
            elif k.endswith("parse_rate"):
                if v > 0:
                    self._parse_seen.setdefault(k, (step, float(v)))
                elif k in self._parse_seen:
                    s0, v0 = self._parse_seen[k]
                    out.append(self._warn("parse", f"collapsed: {k} fell to 0 at step {step} (it was {v0:.3f} "
                                                   f"at step {s0}); no answer can be read any more"))  # fmt: skip
        loss = metrics.get("train/loss")
        if isinstance(loss, int | float) and math.isfinite(loss):
            self._losses.append((step, float(loss)))
        if self.vocab_size and isinstance(loss, int | float) and math.isfinite(loss):
            uniform = math.log(self.vocab_size)
            self._uniform = self._uniform + 1 if abs(loss - uniform) <= 0.005 * uniform else 0
            if self._uniform == COLLAPSE_PATIENCE:
                out.append(self._warn("uniform", f"collapsed: train/loss has been ln |V| = {uniform:.3f} (a uniform "
                                      f"next-token distribution) for {COLLAPSE_PATIENCE} logged steps, up to step {step}"))  # fmt: skip
        return [m for m in out if m]

    def finish(self) -> list[str]:
        """End-of-run checks: a train/loss whose last logged values average over twice its first (and above
        it by 0.1 or more) diverged. Returns the warnings raised."""
        if len(self._losses) < 3:
            return []
        (s0, first), tail = self._losses[0], [v for _, v in self._losses[-3:]]
        last = sum(tail) / len(tail)
        if self.vocab_size and last > 1.5 * math.log(self.vocab_size):  # worse than guessing uniformly
            msg = self._warn("diverged", f"diverged: train/loss ends at {last:.4g} (mean of the last 3 logged steps), "
                                         f"worse than a uniform guess (ln |V| = {math.log(self.vocab_size):.3f}); "
                                         "learning rate too large?")  # fmt: skip
            return [msg] if msg else []
        if last > 2 * first and last - first >= 0.1:
            msg = self._warn("diverged", f"diverged: train/loss rose from {first:.4g} (step {s0}) to {last:.4g} "
                                         f"(mean of the last 3 logged steps); learning rate too large?")  # fmt: skip
            return [msg] if msg else []
        return []


# ------------------------------------------------------------------------- stage folders
def partial_dir(final: Path | str) -> Path:
    """Where a stage writes until it is complete: ``<name>.partial`` beside its folder."""
    final = Path(final)
    return final.parent / f"{final.name}.partial"


def lock_path(final: Path | str) -> Path:
    final = Path(final)
    return final.parent / f".{final.name}.lock"


class FolderLock:
    """An exclusive, advisory lock on a folder (``flock`` on a lock file beside it).

    The kernel drops the lock when its process dies, so a lock left by a killed run is never stale: the
    next process takes it over (and says so). The file records the holder (PID, command, start time)
    for the error a second process gets.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock or raise an error naming the holder; returns a note when a dead holder's lock was taken over."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = f"process {holder.get('pid', '?')}"
            if holder.get("command"):
                who += f" ({holder['command']}, started {holder.get('started', '?')})"
            raise RewardlabError(f"{self.what} is in use by {who} (lock {self.path}); wait for it to finish or "
                                 "stop it") from None  # fmt: skip
        previous = _read_holder(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        self._fd = fd
        if previous.get("pid") and previous["pid"] != os.getpid():
            return f"took over the lock of process {previous['pid']}, which is no longer running"
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock; the file stays (harmless)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _holder() -> dict[str, Any]:
    import sys

    return {"pid": os.getpid(), "command": " ".join(["rewardlab", *sys.argv[1:]])[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}


def is_locked(final: Path | str) -> bool:
    """Whether a live process holds the stage folder's lock."""
    import fcntl

    p = lock_path(final)
    if not p.is_file():
        return False
    fd = os.open(p, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return False


def unfinished_attempt(final: Path | str) -> dict[str, Any] | None:
    """What is known about an unfinished attempt at a stage folder, from ``<name>.partial/status.json``.

    ``state`` is ``running`` (a live process holds the lock), ``interrupted`` (Ctrl-C, SIGTERM), ``failed``
    (an error, a NaN loss: ``reason`` says which) or ``killed`` (it says running but no process holds the
    lock: SIGKILL, out of memory, power loss). None when there is no partial folder.
    """
    part = partial_dir(final)
    if not part.is_dir():
        return None
    try:
        status = json.loads((part / "status.json").read_text(encoding="utf-8"))
        if not isinstance(status, dict):
            raise ValueError
    except (OSError, ValueError):
        status = {"state": "running"}
    if status.get("state") == "running" and not is_locked(final):
        status["state"] = "killed"
        status.setdefault("reason", "the process stopped without a word (SIGKILL, out of memory?)")
    status["dir"] = str(part)
    return status


#: Runs of this process that are open (staged and not committed), for :func:`abandon_open_runs`.
_OPEN: list[Run] = []


def open_run_dir() -> Path | None:
    """The folder the innermost open staged run of this process writes into (for error messages)."""
    return _OPEN[-1].dir if _OPEN else None


def abandon_open_runs(state: str, reason: str) -> list[Path]:
    """Mark every open staged run of this process as ``state`` (``failed``/``interrupted``) with ``reason``
    in its ``status.json``, close its logs and release its lock. Called by the CLI on any exit by error.
    Returns the partial folders so marked."""
    out = []
    for run in list(_OPEN):
        out.append(run.abandon(state, reason))
    return out


class Run:
    """One stage's run folder: config, metrics, log, progress.

    A *staged* run (every pipeline stage) writes into ``<name>.partial/`` beside its folder and becomes
    ``<name>/`` only at :meth:`commit`, after ``summary.json`` and every other output are written: a
    folder named after the stage is always complete, and a failed rerun leaves the previous complete
    one untouched. The stage holds a lock on its folder while it runs; ``--resume`` continues the
    partial folder (or, for a complete stage, starts a partial one from its checkpoint) after checking
    that the config did not change in a way that alters training. An unstaged run (unit tests,
    benchmarks) writes straight into ``out_dir``.
    """

    def __init__(self, out_dir: Path | str, stage: str, config: BaseModel | None = None,
                 report_to: Sequence[str] = (), quiet: bool = False, *, staged: bool = False) -> None:  # fmt: skip
        self.final = Path(out_dir)
        self.stage = stage
        self.quiet = quiet
        self.staged = staged
        self.health = HealthWatch()
        self.config_changes: list[str] = []
        self.recorded: dict[str, Any] = {}
        self._handles_open = False
        self._lock: FolderLock | None = None
        notes: list[str] = []
        if staged:
            self._lock = FolderLock(lock_path(self.final), f"{stage}: the stage folder {self.final}")
            note = _io(lambda: self._lock.acquire(), self.final)  # type: ignore[union-attr]
            if note:
                notes.append(note)
            _OPEN.append(self)
        try:
            self.dir = partial_dir(self.final) if staged else self.final
            if staged:
                notes += _io(lambda: self._prepare(config), self.dir)
            else:
                _io(lambda: self.dir.mkdir(parents=True, exist_ok=True), self.dir)
            self._open_files(
                config, resume=staged and bool(getattr(config, "resume", False)), report_to=report_to
            )
        except BaseException:
            self._release()
            raise
        self.t0 = time.perf_counter()
        for note in notes:
            self.info(note)

    # -- opening ------------------------------------------------------------------------------
    def _prepare(self, config: BaseModel | None) -> list[str]:
        """Set up ``<name>.partial``: fresh, or (``resume``) continued after the config check."""
        notes: list[str] = []
        restore_replaced_dir(self.final)  # a kill between commit's two renames
        part, resume = self.dir, bool(getattr(config, "resume", False))
        if resume:
            from_final = not part.is_dir() and (self.final / "checkpoint").is_dir()
            old_cfg = (self.final if from_final else part) / "config.yaml"
            if config is not None and old_cfg.is_file():
                check = getattr(config, "check_resume", None)
                if check is not None:
                    old = yaml.safe_load(old_cfg.read_text(encoding="utf-8")) or {}
                    self.config_changes = list(check(self.stage, old))
                    notes += [f"--resume: {c}" for c in self.config_changes]
            if from_final:
                part.mkdir(parents=True)
                shutil.copytree(self.final / "checkpoint", part / "checkpoint")
                notes.append(f"--resume: continuing the complete stage from {self.final / 'checkpoint'}")
        elif part.exists():
            shutil.rmtree(part)
        part.mkdir(parents=True, exist_ok=True)
        _write_status(
            part, {"state": "running", "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        )
        return notes

    def _open_files(self, config: BaseModel | None, resume: bool, report_to: Sequence[str]) -> None:
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
        self.log = logging.getLogger(f"rewardlab.{self.stage}.{id(self)}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self._fh = logging.FileHandler(self.dir / "run.log", mode="a" if resume else "w", encoding="utf-8")
        self._fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.log.addHandler(self._fh)
        self._handles_open = True
        self._last_step: int | None = None

    # -- writing ------------------------------------------------------------------------------
    def info(self, msg: str) -> None:
        self.log.info(msg)
        if _RELAY is not None:
            _RELAY[0].put(("info", _RELAY[1], self.stage, msg))
        elif not self.quiet:
            console.print(f"[bold cyan]{self.stage}[/] {msg}", highlight=False)

    def warn(self, msg: str) -> None:
        """A warning: in ``run.log``, on the console even with ``--quiet``, and in ``summary.json``."""
        self.log.warning(f"WARNING {msg}")
        if _RELAY is not None:
            _RELAY[0].put(("info", _RELAY[1], self.stage, f"[bold yellow]WARNING[/] {msg}"))
        else:
            console.print(f"[bold yellow]{self.stage} WARNING[/] {msg}", highlight=False, soft_wrap=True)

    @property
    def warnings(self) -> list[str]:
        return self.health.warnings

    def check_health(self, metrics: Mapping[str, Any], step: int) -> None:
        """Feed a row to the collapse detectors (:class:`HealthWatch`); warns on what they find."""
        for msg in self.health.observe(metrics, step):
            self.warn(msg)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self._metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self._last_step = step
        for s in self._sinks:
            s.log({k: v for k, v in row.items() if k != "step"}, step)
        self.check_health(row, step)

    def record(self, key: str, value: Any) -> None:
        """A fact about the stage's data (e.g. ``data/truncated``) that goes into its ``summary.json``."""
        self.recorded[key] = value

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON atomically; a ``summary.json`` gets the run's recorded facts, ``warnings`` (and
        the config changes accepted on resume)."""
        if name == "summary.json" and isinstance(obj, dict):
            for msg in self.health.finish():
                self.warn(msg)
            obj = {**obj, **self.recorded, "warnings": list(self.warnings)}
            if self.config_changes:
                obj["config_changes_on_resume"] = list(self.config_changes)
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

    # -- finishing ----------------------------------------------------------------------------
    def commit(self) -> Path:
        """Finish the stage: close the logs and (staged) move the complete ``<name>.partial`` into place.

        Refuses when ``summary.json`` is missing: a stage writes its summary last, after its model and
        every other output, so a folder without one is not complete. Returns the stage folder.
        """
        if self.staged and not (self.dir / "summary.json").is_file():
            self.abandon("failed", "the stage ended without writing summary.json")
            raise RewardlabError(f"{self.stage}: {self.dir} has no summary.json; the stage is not complete")
        self._close_handles()
        if self.staged:
            _io(lambda: (self.dir / "status.json").unlink(missing_ok=True), self.dir)
            _io(lambda: replace_dir(self.dir, self.final), self.final)
            self.dir = self.final
        for w in self.warnings:
            console.print(
                f"[bold yellow]{self.stage} finished with a warning:[/] {w}", highlight=False, soft_wrap=True
            )
        self._release()
        return self.final

    def abandon(self, state: str, reason: str) -> Path:
        """Leave the partial folder as an unfinished attempt: ``status.json`` says ``state`` and ``reason``."""
        if self._handles_open:
            with contextlib.suppress(Exception):  # a full disk must not hide the original error
                self.log.error(f"{state}: {reason}")
        self._close_handles()
        if self.staged and self.dir.is_dir() and self.dir != self.final:
            with contextlib.suppress(OSError):
                _write_status(self.dir, {"state": state, "reason": reason, "step": getattr(self, "_last_step", None),
                                         "pid": os.getpid(), "ended": time.strftime("%Y-%m-%d %H:%M:%S")})  # fmt: skip
        self._release()
        return self.dir

    def close(self) -> None:
        """Close the logs (an unstaged run; a staged one calls :meth:`commit` or :meth:`abandon`)."""
        if self.staged:
            self.commit()
            return
        self._close_handles()

    def _close_handles(self) -> None:
        if not self._handles_open:
            return
        self._handles_open = False
        for s in self._sinks:
            with contextlib.suppress(Exception):
                s.close()
        self.log.removeHandler(self._fh)
        self._fh.close()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
        if self in _OPEN:
            _OPEN.remove(self)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _write_status(part: Path, status: dict[str, Any]) -> None:
    atomic_write_text(part / "status.json", json.dumps(status, indent=1) + "\n")


def _io(fn: Callable[[], T], where: Path) -> T:
    """``fn()`` with an ``OSError`` (read-only folder, full disk, ...) turned into one clear error naming the path."""
    try:
        return fn()
    except OSError as e:
        raise RewardlabError(describe_os_error(e, where)) from None


def as_os_error(e: BaseException) -> OSError | None:
    """``e`` as an ``OSError`` when it is one, or when a library wrapped one in its own type and kept only the
    message (safetensors: ``I/O error: File too large (os error 27)``); else None."""
    if isinstance(e, OSError):
        return e
    import re

    m = re.search(r"\(os error (\d+)\)", str(e))
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code))


def describe_os_error(e: OSError, where: Path | str | None = None) -> str:
    """One line for an I/O failure: what failed, on which file, and what to do for the common causes."""
    import errno

    target = e.filename or where or "the run folder"
    hint = {errno.ENOSPC: "the disk is full: free space and rerun (nothing partial is trusted)",
            errno.EDQUOT: "the disk quota is exceeded: free space and rerun",
            errno.EROFS: "the file system is read-only: choose another --run-dir",
            errno.EACCES: "permission denied: choose a --run-dir you can write to",
            errno.EPERM: "operation not permitted: choose a --run-dir you can write to",
            errno.EFBIG: "a file grew past the size limit of this system"}.get(e.errno or -1, "")  # fmt: skip
    return f"cannot write {target}: {e.strerror or e}" + (f"; {hint}" if hint else "")


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
