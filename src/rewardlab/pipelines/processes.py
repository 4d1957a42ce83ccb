"""One process pool for everything that runs jobs side by side: the pipeline's arms and the studies' jobs."""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable, Iterator, Sequence
from queue import Empty
from typing import Any

from rewardlab.utils import RewardlabError, set_threads


class JobError(RewardlabError):
    """A job of :func:`map_in_processes` failed: ``label`` names it, ``message`` is its error."""

    def __init__(self, label: str, message: str) -> None:
        super().__init__(f"{label}: {message}")
        self.label, self.message = label, message


def _job_worker(fn: Callable[..., Any], label: str, args: tuple[Any, ...], threads: int, queue: Any) -> None:
    """Entry point of a worker process: ``fn(*args)`` with ``threads`` torch threads, its result or its
    error sent to the parent through ``queue``, as are its stages' progress and log lines (``set_relay``)."""
    import signal

    from rewardlab.runs import abandon_open_runs, as_os_error, describe_os_error, set_relay

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(
        signal.SIGTERM, on_sigterm
    )  # the parent stops workers with SIGTERM: leave status.json behind
    set_relay(queue, label)
    set_threads(threads)
    try:
        result = fn(*args)
    except KeyboardInterrupt:
        abandon_open_runs("interrupted", "stopped by Ctrl-C or SIGTERM")
        raise SystemExit(130) from None
    except BaseException as e:  # the parent names the job and raises
        if isinstance(e, RewardlabError):
            msg = str(e)
        elif (io := as_os_error(e)) is not None:
            msg = describe_os_error(io)
        else:
            msg = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        abandon_open_runs("failed", msg.splitlines()[0])
        queue.put(("error", label, msg))
        raise SystemExit(1) from None
    queue.put(("done", label, result))


def map_in_processes(fn: Callable[..., Any], jobs: Sequence[tuple[str, tuple[Any, ...]]], processes: int,
                     threads: int, show: bool = False) -> Iterator[tuple[str, Any]]:  # fmt: skip
    """``(label, fn(*args))`` for each ``(label, args)`` of ``jobs``, as each finishes.

    With ``processes > 1`` the jobs run that many at a time, each in a fresh (spawned) process with ``threads``
    torch threads (``fn`` and its arguments must pickle: a module-level function and plain values); otherwise
    in this process, in order. A job's error stops the others and is raised naming the job. A study whose
    jobs write to disjoint folders gets the same results either way, at the same number of threads per job.
    With ``show``, one progress bar per running job shows its current stage (relayed from the worker).
    """
    if processes <= 1:
        for label, args in jobs:
            yield label, fn(*args)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rewardlab.runs import console

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    pending, running = list(jobs), {}
    prog = Progress(TextColumn("[bold]{task.fields[job]}[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console, disable=not show)  # fmt: skip
    bars: dict[str, Any] = {}
    try:
        with prog:
            while pending or running:
                while pending and len(running) < processes:
                    label, args = pending.pop(0)
                    proc = ctx.Process(target=_job_worker, args=(fn, label, args, threads, queue),
                                       name=f"rewardlab-{label}")  # fmt: skip
                    proc.start()
                    running[label] = proc
                    bars[label] = prog.add_task("starting", total=None, job=label, status="")
                try:
                    msg = queue.get(timeout=1.0)
                except Empty:
                    for name, proc in running.items():
                        if not proc.is_alive() and proc.exitcode != 0:
                            raise RewardlabError(
                                f"{name}: worker process died (exit code {proc.exitcode})"
                            ) from None
                    continue
                kind, label = msg[0], msg[1]
                if kind == "progress":  # (kind, label, stage, description, completed, total, status)
                    prog.update(bars[label], description=f"{msg[2]}: {msg[3]}", completed=msg[4], total=msg[5],
                                status=msg[6])  # fmt: skip
                elif kind == "info" and show:
                    prog.console.print(f"[bold]{label}[/] [cyan]{msg[2]}[/] {msg[3]}", highlight=False)
                elif kind == "error":
                    raise JobError(label, msg[2])
                elif kind == "done":
                    running.pop(label).join()
                    prog.update(bars[label], description="done", completed=1, total=1, status="")
                    yield label, msg[2]
    finally:
        for proc in running.values():
            if proc.is_alive():
                proc.terminate()
            proc.join()
