"""The Goodhart sweep: visible (proxy) and gold return of policies optimized ever harder on the visible reward.

For each level of optimization pressure we build a policy from the environment's **visible** reward only and
measure both returns exactly on the tabular model (:func:`rewardlab.control.tabular.evaluate`, one episode of
``horizon`` steps from the start state). Pressures:

* ``beta`` - soft-optimal policy at inverse temperature ``beta`` (finite-horizon soft value iteration over the
  episode): ``beta = 0`` acts uniformly at random, ``beta -> inf`` is an exact optimizer of the visible return.
  The visible return of the soft optimum is non-decreasing in ``beta``.
* ``horizon`` - a receding-horizon planner that looks ``H`` steps ahead (``Q_H``, ties broken uniformly).
* ``steps`` - tabular Q-learning for ``level`` episodes, greedy policy, mean over ``seeds``.

The **turnover** is the pressure level at which gold peaks, when gold at the highest level has fallen below
that peak by more than ``tol`` times the gold range: past it more optimization buys visible reward with gold.
Outputs (one folder, written atomically): ``sweep.jsonl`` (one row a level), ``summary.json`` and
``sweep.png``. ``rewardlab sweep --env ID [--env ID ...]`` runs one sweep per environment and draws them side
by side in ``<out>/goodhart.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rewardlab.control.tabular import evaluate, finite_horizon_q, greedy, q_learning, soft_value_iteration
from rewardlab.utils import RewardlabError, atomic_dir, atomic_write_text, write_jsonl

Pressure = Literal["beta", "horizon", "steps"]

DEFAULT_LEVELS: dict[str, list[float]] = {
    "beta": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 20.0, 50.0],
    "horizon": [1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30],
    "steps": [1, 2, 3, 5, 10, 20, 50, 100],
}
PRESSURE_LABEL = {"beta": "inverse temperature beta (soft value iteration)", "horizon": "planning horizon H",
                  "steps": "Q-learning episodes"}  # fmt: skip


class SweepConfig(BaseModel):
    """One Goodhart sweep: the environment, the pressure and its levels."""

    model_config = ConfigDict(extra="forbid")

    env: str = "rewardlab/BoatRace-v0"
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    pressure: Pressure = "beta"
    levels: list[float] | None = None  # None: DEFAULT_LEVELS[pressure]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])  # Q-learning only
    gamma: float = Field(0.9, ge=0.0, lt=1.0)  # Q-learning only
    epsilon: float = Field(0.2, ge=0.0, le=1.0)  # Q-learning only
    tol: float = Field(0.05, ge=0.0)

    @field_validator("levels")
    @classmethod
    def _levels_sorted(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(b <= a for a, b in itertools.pairwise(v))):
            raise ValueError("levels must be a non-empty increasing list")
        if v is not None and any(x < 0 for x in v):
            raise ValueError("levels must be >= 0")
        return v

    def resolved_levels(self) -> list[float]:
        return list(self.levels if self.levels is not None else DEFAULT_LEVELS[self.pressure])


@dataclass(frozen=True)
class SweepPoint:
    level: float
    visible: float
    gold: float
    visible_std: float = 0.0
    gold_std: float = 0.0


@dataclass(frozen=True)
class SweepResult:
    env: str
    pressure: str
    points: list[SweepPoint]
    turnover: float | None

    def summary(self) -> dict[str, Any]:
        gold = [p.gold for p in self.points]
        peak = int(np.argmax(gold))
        return {"env": self.env, "pressure": self.pressure, "turnover": self.turnover,
                "gold_peak": gold[peak], "gold_at_max_pressure": gold[-1],
                "visible_at_turnover": self.points[peak].visible, "visible_at_max_pressure": self.points[-1].visible,
                "levels": len(self.points)}  # fmt: skip


def turnover(points: Sequence[SweepPoint], tol: float = 0.05) -> float | None:
    """The level where gold peaks, if gold at the last level is below the peak by more than ``tol`` x its range."""
    gold = np.array([p.gold for p in points])
    peak = int(np.argmax(gold))
    spread = float(gold.max() - gold.min())
    if peak == len(points) - 1 or spread == 0.0 or gold[-1] >= gold[peak] - tol * spread:
        return None
    return points[peak].level


def _tabular(env_id: str, env_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    from rewardlab.tasks.registry import make_env

    env = make_env(env_id, **env_kwargs)
    tabular = getattr(env.unwrapped, "tabular", None)
    if tabular is None:
        raise RewardlabError(
            f"sweep: {env_id} has no tabular model (env.unwrapped.tabular()); use a gridworld"
        )
    return env.unwrapped, tabular()


def sweep_point(cfg: SweepConfig, env: Any, model: Any, level: float) -> SweepPoint:
    """Visible and gold return of the policy optimized on the visible reward at one pressure level."""
    P, R, G, init, T = model.P, model.R, model.gold, model.init, model.horizon
    if cfg.pressure == "beta":
        _, policy = soft_value_iteration(P, R, level, horizon=T)
        return SweepPoint(level, evaluate(P, R, policy, init, T), evaluate(P, G, policy, init, T))
    if cfg.pressure == "horizon":
        if level < 1 or level != int(level):
            raise RewardlabError(f"sweep: horizon levels must be positive integers, got {level}")
        policy = greedy(finite_horizon_q(P, R, int(level))[0])
        return SweepPoint(level, evaluate(P, R, policy, init, T), evaluate(P, G, policy, init, T))
    vis, gold = [], []
    for seed in cfg.seeds:
        Q = q_learning(env, int(level), gamma=cfg.gamma, epsilon=cfg.epsilon, seed=seed)
        policy = greedy(Q)
        vis.append(evaluate(P, R, policy, init, T))
        gold.append(evaluate(P, G, policy, init, T))
    return SweepPoint(
        level, float(np.mean(vis)), float(np.mean(gold)), float(np.std(vis)), float(np.std(gold))
    )


def run_sweep(cfg: SweepConfig, quiet: bool = True) -> SweepResult:
    """The sweep's points (one per level) and its turnover."""
    env, model = _tabular(cfg.env, cfg.env_kwargs)
    points = []
    for level in cfg.resolved_levels():
        points.append(sweep_point(cfg, env, model, level))
        if not quiet:
            p = points[-1]
            print(f"  {cfg.env} {cfg.pressure}={level:g}: visible {p.visible:.2f}  gold {p.gold:.2f}")
    return SweepResult(cfg.env, cfg.pressure, points, turnover(points, cfg.tol))


def plot_sweeps(results: Sequence[SweepResult], path: Path | str) -> Path:
    """Visible and gold return against pressure, one panel per sweep, the turnover marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    for ax, res in zip(axes[0], results):
        x = [p.level for p in res.points]
        for key, colour, label in (
            ("visible", "tab:blue", "visible (proxy) return"),
            ("gold", "tab:orange", "gold return"),
        ):
            y = np.array([getattr(p, key) for p in res.points])
            err = np.array([getattr(p, f"{key}_std") for p in res.points])
            ax.plot(x, y, "o-", color=colour, label=label, ms=4)
            if err.any():
                ax.fill_between(x, y - err, y + err, color=colour, alpha=0.15)
        if res.turnover is not None:
            ax.axvline(res.turnover, color="tab:red", ls="--", lw=1)
            ax.annotate(f"turnover\n{res.pressure}={res.turnover:g}", (res.turnover, ax.get_ylim()[1]),
                        xytext=(4, -28), textcoords="offset points", color="tab:red", fontsize=8)  # fmt: skip
        if res.pressure in ("beta", "steps"):
            ax.set_xscale("symlog", linthresh=0.25 if res.pressure == "beta" else 10)
            ax.set_xlim(min(x), max(x) * 1.15)
        ax.set_xlabel(PRESSURE_LABEL[res.pressure])
        ax.set_ylabel("return per episode")
        ax.set_title(res.env.split("/")[-1])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_sweep(result: SweepResult, out: Path | str) -> Path:
    """``out/`` with ``sweep.jsonl``, ``summary.json`` and ``sweep.png`` (written atomically)."""

    def write(tmp: Path) -> None:
        write_jsonl(tmp / "sweep.jsonl", [{"pressure": result.pressure, **asdict(p)} for p in result.points])
        atomic_write_text(tmp / "summary.json", json.dumps(result.summary(), indent=2) + "\n")
        plot_sweeps([result], tmp / "sweep.png")

    return atomic_dir(out, write)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``rewardlab sweep`` options."""
    p.add_argument("--env", action="append", default=None, metavar="ID",
                   help="gymnasium id with a tabular model (repeatable; default: rewardlab/BoatRace-v0 and "
                        "rewardlab/CleaningRobot-v0)")  # fmt: skip
    p.add_argument(
        "--pressure", choices=list(DEFAULT_LEVELS), default="beta", help="what optimization pressure is"
    )
    p.add_argument("--levels", default=None, help="comma-separated increasing levels (default: per pressure)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (Q-learning pressure only)")
    p.add_argument(
        "--out", type=Path, default=Path("runs/goodhart"), help="output folder (one subfolder per env)"
    )
    p.add_argument("--quiet", action="store_true", help="no console output")


def sweep_command(args: argparse.Namespace) -> int:
    """``rewardlab sweep``: one sweep per ``--env``, each in ``<out>/<Name>``, all in ``<out>/goodhart.png``."""
    envs = args.env or ["rewardlab/BoatRace-v0", "rewardlab/CleaningRobot-v0"]
    try:
        levels = [float(x) for x in args.levels.split(",")] if args.levels else None
        seeds = [int(x) for x in args.seeds.split(",")]
        cfgs = [SweepConfig(env=e, pressure=args.pressure, levels=levels, seeds=seeds) for e in envs]
    except ValueError as e:
        raise RewardlabError(f"sweep: {e}") from e
    results = []
    for cfg in cfgs:
        res = run_sweep(cfg, quiet=args.quiet)
        write_sweep(res, Path(args.out) / cfg.env.split("/")[-1])
        results.append(res)
        if not args.quiet:
            t = "none" if res.turnover is None else f"{res.pressure}={res.turnover:g}"
            print(f"{cfg.env}: turnover {t}; {json.dumps(res.summary())}")
    figure = plot_sweeps(results, Path(args.out) / "goodhart.png")
    if not args.quiet:
        print(figure)
    return 0 if all(math.isfinite(p.gold) for r in results for p in r.points) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m rewardlab.control.sweep", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    raise SystemExit(sweep_command(parser.parse_args()))
