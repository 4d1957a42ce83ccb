"""Recipe: the whole pipeline, for the configured raters and their controls, over one or more seeds.

pretrain -> SFT                      (shared by every arm)
for each seed, for each rater preset (the configured one, then the controls):
    label -> reward model -> each of ``methods``: PPO, RLOO, GRPO, best-of-n, DPO (beta sweep),
                             iterated DPO, MODPO, filtered MLE, RWR, reward-conditioned, A-LoL
report                                (one HTML page for all arms and methods)

Every method of an arm starts from the same SFT model and reads the same rater labels and reward
model, so ``configs/compare.yaml`` puts them all on one gold-vs-sqrt(KL) figure and one table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rewardlab.config import PipelineConfig, revalidate
from rewardlab.methods import ARM_STAGES, method
from rewardlab.runs import console
from rewardlab.utils import RewardlabError, atomic_write_text


def _done(cfg: PipelineConfig, stage: str) -> bool:
    """A stage is done when each of its folders holds one of the registry's done markers.

    A stage folder exists only once the stage committed it (it writes into ``<name>.partial`` until its
    ``summary.json``, written last, is in place), so an interrupted or failed stage is never "done".
    """
    m = method(stage)
    return all(
        any((cfg.stage_dir(f) / marker).exists() for marker in m.done_marker()) for f in m.folders(cfg)
    )


def arm_configs(cfg: PipelineConfig, seeds: Sequence[int]) -> list[PipelineConfig]:
    """The configured arm and each of its ``controls``, for every seed (arms with the same name once)."""
    unique: dict[str, PipelineConfig] = {}
    for v in [cfg, *[cfg.control_arm(c) for c in cfg.controls]]:
        unique.setdefault(v.arm_name, v)
    arms = []
    for seed in seeds:
        for v in unique.values():
            arm = v.model_copy(deep=True)
            arm.seed = seed
            arms.append(arm)
    return arms


def run_arm(arm: PipelineConfig, methods: Sequence[str], wanted: set[str], reuse: bool,
            quiet: bool) -> dict[str, float]:  # fmt: skip
    """label -> reward model -> each method, for one arm; returns each stage's wall seconds."""
    times: dict[str, float] = {}
    steps: list[tuple[str, Callable[[], object]]] = [
        (m, lambda m=m: runner(m)(arm, quiet=quiet)) for m in ("label", "reward", *methods)
    ]
    for name, fn in steps:
        if name in wanted and not (reuse and _done(arm, name)):
            t = time.perf_counter()
            fn()
            times[f"{arm.arm}/{name}"] = time.perf_counter() - t
    return times


def _run_arm_job(arm_json: str, methods: list[str], wanted: list[str], reuse: bool) -> dict[str, float]:
    """One arm in a worker process (``map_in_processes``): its stages' wall seconds."""
    return run_arm(PipelineConfig.model_validate_json(arm_json), methods, set(wanted), reuse, quiet=True)


def run_arms_parallel(arms: Sequence[PipelineConfig], processes: int, methods: Sequence[str],
                      wanted: set[str], reuse: bool, quiet: bool) -> dict[str, float]:  # fmt: skip
    """Run arms ``processes`` at a time, each in a fresh (spawned) process, with one progress bar per arm.

    Each arm's results equal those of the same arm run alone with the same ``threads``: arms share only
    the read-only pretrained and SFT models.
    """
    from rewardlab.pipelines.processes import JobError, map_in_processes

    jobs = [(arm.arm, (arm.model_dump_json(), list(methods), sorted(wanted), reuse)) for arm in arms]
    times: dict[str, float] = {}
    try:
        for _, arm_times in map_in_processes(_run_arm_job, jobs, processes, arms[0].threads, show=not quiet):
            times.update(arm_times)
    except JobError as e:
        raise RewardlabError(f"arm {e.label} failed: {e.message}") from None
    return times


def arm_processes(cfg: PipelineConfig, n_arms: int) -> int:
    """How many arms run at once: ``cfg.arm_processes``, or (0) as many as ``threads`` gives one thread each."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or n_arms <= 1:
        return 1  # under torchrun every process runs every arm together (data-parallel)
    n = cfg.arm_processes or max(cfg.threads, 1)
    return max(1, min(n, n_arms))


def run_pipeline(cfg: PipelineConfig, *, seeds: Sequence[int] | None = None, reuse: bool = False,
                 stages: Sequence[str] | None = None, quiet: bool = False) -> Path:  # fmt: skip
    """Run every stage; with ``reuse``, stages whose output already exists are skipped.

    Arms (rater preset x seed) run ``arm_processes`` at a time in worker processes, each with
    ``threads // arm_processes`` torch threads. Each stage's wall time goes to ``<run_dir>/timings.json``.
    """
    from rewardlab.runs import FolderLock

    lock = None
    if int(os.environ.get("RANK", "0")) == 0:
        lock = FolderLock(Path(cfg.run_dir) / ".rewardlab-run.lock", f"the run folder {cfg.run_dir}")
        note = lock.acquire()
        if note and not quiet:
            console.print(f"[bold]rewardlab:[/] {note}")
    try:
        return _run_pipeline(cfg, seeds=seeds, reuse=reuse, stages=stages, quiet=quiet)
    finally:
        if lock is not None:
            lock.release()


def _run_pipeline(cfg: PipelineConfig, *, seeds: Sequence[int] | None, reuse: bool, stages: Sequence[str] | None,
                  quiet: bool) -> Path:  # fmt: skip
    from rewardlab.distributed import main_process_only

    wanted = set(stages or ("pretrain", "sft", *ARM_STAGES, "report"))
    if not quiet:
        console.print(
            f"[bold]rewardlab:[/] task {cfg.build_task().info.name}; {'/'.join(cfg.methods)} optimize a proxy "
            f"learned from {cfg.arm_name} feedback (controls: "
            f"{', '.join(cfg.control_arm(c).arm_name for c in cfg.controls) or 'none'}); the audit measures proxy, "
            f"{'gold ' if cfg.build_task().info.has_gold else ''}and KL all along."
        )
    t_start = time.perf_counter()
    times: dict[str, float] = {}
    methods = [m for m in cfg.methods if m in wanted]
    for name in ("pretrain", "sft"):
        if name in wanted and not (reuse and _done(cfg, name)):
            t = time.perf_counter()
            runner(name)(cfg, quiet=quiet)
            times[name] = time.perf_counter() - t
    arms = arm_configs(cfg, seeds if seeds is not None else [cfg.seed])
    n_proc = arm_processes(cfg, len(arms))
    if n_proc > 1:
        for arm in arms:
            arm.threads = max(1, cfg.threads // n_proc) if cfg.threads else 0
            arm.arm_processes = 1
        times.update(run_arms_parallel(arms, n_proc, methods, wanted, reuse, quiet))
    else:
        for arm in arms:
            if not quiet:
                console.rule(f"[bold]arm {arm.arm}")
            times.update(run_arm(arm, methods, wanted, reuse, quiet))
    path = Path(cfg.run_dir)
    if "report" in wanted:
        from rewardlab.report.build import build_report

        t = time.perf_counter()
        path = main_process_only(build_report)(Path(cfg.run_dir)) or Path(cfg.run_dir) / "report.html"
        times["report"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_start
    if int(os.environ.get("RANK", "0")) == 0:
        _write_timings(Path(cfg.run_dir), times, n_proc)
    if "report" in wanted:
        console.print(f"[bold green]report:[/] {path}")
        if not quiet:
            _print_headline(Path(cfg.run_dir))
    return path


def _print_headline(run_dir: Path) -> None:
    """The headline table (gold, proxy, behaviour, KL: start -> end per arm and method) from the report's
    summary, under the report's path; nothing when the report wrote no summary."""
    from rewardlab.report.headline import headline_table

    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if summary.get("arms"):
        console.print(headline_table(summary))


def _write_timings(run_dir: Path, times: dict[str, float], n_proc: int) -> None:
    """Append this invocation's stage times to ``<run_dir>/timings.json`` (one entry per invocation)."""
    p = run_dir / "timings.json"
    try:
        history = json.loads(p.read_text(encoding="utf-8")) if p.exists() else []
    except ValueError:
        history = []
    history.append({"arm_processes": n_proc, "seconds": {k: round(v, 2) for k, v in times.items()}})
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(history, indent=2) + "\n")


def runner(name: str) -> Callable[..., Any]:
    """``fn(cfg, quiet=False)`` that runs method ``name``: its recipe, on the main process only when it is
    not a trainer, and for ppo/rloo/grpo with ``ppo.advantage`` set and the config re-validated (so
    ``rewardlab rloo --set ppo.samples_per_prompt=1`` fails before any work, naming the field)."""
    m = method(name)
    fn = m.load()
    if m.main_process_only:
        from rewardlab.distributed import main_process_only

        fn = main_process_only(fn)
    if m.advantage is None:
        return fn

    def run_rl(cfg: Any, quiet: bool = False) -> Any:
        c = cfg.model_copy(deep=True)
        c.ppo.advantage = m.advantage
        return fn(revalidate(c, f"rewardlab {name}"), quiet=quiet, stage=name)

    return run_rl
