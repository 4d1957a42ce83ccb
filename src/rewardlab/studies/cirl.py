"""Study: the CIRL assistance game against IRL-then-optimize and a fixed misspecified reward.

    rewardlab study cirl configs/cirl.yaml

On the fork assistance game (``rewardlab/Assistance-v0``: the human walks up a corridor of ``corridor`` cells
to a fork and on towards the goal they want, Boltzmann-rationally with inverse temperature ``beta``) four
robots are played from the same episodes (seeds): the **oracle** (knows ``theta``), the **CIRL** robot (exact
POMDP solution over the belief, :class:`rewardlab.control.cirl.CIRLSolver`), **IRL-then-optimize** (MAP
``theta`` from a fixed batch of the first ``n`` human moves, then optimize it) and the **fixed** robot
(optimizes goal ``fixed_goal`` whatever the human does). For every game (ask offered or not), ``beta`` and
corridor length (the ambiguity: the human's first ``corridor`` moves are the same whichever goal they want),
the table gives the gold return (mean over seeds, with its standard deviation across seeds) and how the
episodes ended: the right goal, the **wrong** goal, deferred, timed out; and how often the robot asked and
waited. The CIRL and oracle rows also carry the exact expected return (``exact``) the solver computed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.progress import track

from rewardlab.control.cirl import CIRLRobot, CIRLSolver, FixedReward, IRLThenOptimize, Oracle, evaluate_robot
from rewardlab.studies.common import markdown_table, save_figure, write_table
from rewardlab.tasks.registry import make_env
from rewardlab.utils import atomic_write_text

COLUMNS = ["game", "beta", "corridor", "method", "gold", "gold_std", "exact", "right_rate", "wrong_rate",
           "defer_rate", "timeout_rate", "ask_rate", "wait_rate", "waits"]  # fmt: skip
SHORT = [
    "game",
    "corridor",
    "method",
    "gold",
    "gold_std",
    "wrong_rate",
    "ask_rate",
    "wait_rate",
    "defer_rate",
]


class GameConfig(BaseModel):
    """The assistance game's fixed settings (``rewardlab/Assistance-v0`` keyword arguments)."""

    model_config = ConfigDict(extra="forbid")

    n_goals: int = Field(3, ge=2, le=3, description="goals the human may want (2: left/right, 3: and up)")
    arm: int = Field(2, ge=1, description="cells from the fork to each goal")
    horizon: int = Field(12, ge=1, description="rounds per episode")
    goal_reward: float = Field(10.0, description="gold for reaching the human's goal")
    wrong_penalty: float = Field(10.0, description="gold lost for reaching another goal")
    step_cost: float = Field(1.0, ge=0, description="gold lost every round")
    ask_cost: float = Field(4.0, ge=0, description="gold lost for asking (on top of the round's cost)")
    defer_reward: float = Field(0.0, description="gold of deferring (the human does it themselves)")

    def env_kwargs(self) -> dict[str, Any]:
        """The env's keyword arguments: the layout fields as they are, the five payoffs as ``payoffs``."""
        layout = self.model_dump(include={"n_goals", "arm", "horizon"})
        return {**layout, "payoffs": self.model_dump(exclude={"n_goals", "arm", "horizon"})}


class CIRLStudyConfig(BaseModel):
    """``configs/cirl.yaml``: the game, the sweep (human rationality x ambiguity x ask offered) and the robots."""

    model_config = ConfigDict(extra="forbid")

    env_id: str = Field("rewardlab/Assistance-v0", description="a registered assistance game")
    out_dir: str = Field("runs/cirl", description="where cirl.json, cirl.md and cirl.png go")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    episodes: int = Field(300, ge=1, description="episodes per robot, game and seed")
    game: GameConfig = Field(default_factory=GameConfig)
    betas: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 5.0], min_length=1,
                               description="the human's Boltzmann rationality (.inf: deterministic)")  # fmt: skip
    corridors: list[int] = Field(default_factory=lambda: [0, 2, 4, 6], min_length=1,
                                 description="ambiguity: human moves shared by every goal before the fork")  # fmt: skip
    ask: list[bool] = Field(default_factory=lambda: [True, False], min_length=1,
                            description="games with and without the ask action")  # fmt: skip
    irl_demo_steps: list[int] = Field(default_factory=lambda: [1, 3], min_length=1,
                                      description="human moves IRL-then-optimize watches before committing")  # fmt: skip
    fixed_goal: int = Field(0, ge=0, description="the goal the misspecified robot optimizes")
    figure_beta: float = Field(2.0, description="the beta of the figure's ambiguity panels (one of betas)")
    figure_corridor: int = Field(2, description="the corridor of the figure's beta panel (one of corridors)")

    @model_validator(mode="after")
    def _figure_in_sweep(self) -> CIRLStudyConfig:
        if self.figure_beta not in self.betas:
            raise ValueError(f"figure_beta: {self.figure_beta} is not one of betas {self.betas}")
        if self.figure_corridor not in self.corridors:
            raise ValueError(
                f"figure_corridor: {self.figure_corridor} is not one of corridors {self.corridors}"
            )
        if self.fixed_goal >= self.game.n_goals:
            raise ValueError(
                f"fixed_goal: {self.fixed_goal} is not a goal of a {self.game.n_goals}-goal game"
            )
        return self


def robots(game: Any, solver: CIRLSolver, c: CIRLStudyConfig) -> list[Any]:
    """The robots compared on one game (they share the solver's full-information tables)."""
    return [Oracle(game, solver.full), CIRLRobot(solver),
            *(IRLThenOptimize(game, n, solver.full) for n in c.irl_demo_steps),
            FixedReward(game, c.fixed_goal, solver.full)]  # fmt: skip


def measure_game(
    c: CIRLStudyConfig, ask: bool, beta: float, corridor: int
) -> tuple[list[dict[str, Any]], float]:
    """Every robot on one game: rows (means and seed std) and the solver's wall time."""
    # step 1. the game as arrays, and its exact POMDP solution
    env = make_env(c.env_id, **c.game.env_kwargs(), beta=beta, corridor=corridor, allow_ask=ask)
    game = env.unwrapped.model()
    t = time.perf_counter()
    solver = CIRLSolver(game)
    exact_cirl = solver.root_value()
    solve_s = time.perf_counter() - t
    r0 = game.robot_start
    exact_oracle = float(sum(p * solver.full[k, 0, r0].max() for k, p in enumerate(game.prior)))
    # step 2. each robot over the seeds (the same theta and human draws for every robot of a seed)
    rows = []
    for robot in robots(game, solver, c):
        per_seed = [evaluate_robot(game, robot, c.episodes, seed) for seed in c.seeds]
        row: dict[str, Any] = {"game": "ask" if ask else "no ask", "beta": beta, "corridor": corridor,
                               "method": robot.name, "seeds": len(c.seeds), "episodes": c.episodes}  # fmt: skip
        for key in per_seed[0]:
            if key != "episodes":
                row[key.replace("/mean", "")] = float(np.mean([s[key] for s in per_seed]))
        row["gold_std"] = float(np.std([s["gold/mean"] for s in per_seed]))
        row["exact"] = (
            exact_cirl if robot.name == "cirl" else exact_oracle if robot.name == "oracle" else None
        )
        rows.append(row)
    return rows, solve_s


def run_cirl_study(c: CIRLStudyConfig, quiet: bool = False) -> Path:
    """The sweep, the table (``cirl.json``/``cirl.md``, printed) and the figure (``cirl.png``); returns the table."""
    out = Path(c.out_dir)
    grid = [(a, b, k) for a in c.ask for b in c.betas for k in c.corridors]
    rows: list[dict[str, Any]] = []
    solve: dict[str, float] = {}
    t0 = time.perf_counter()
    for ask, beta, corridor in track(grid, description="cirl games", disable=quiet):
        game_rows, solve_s = measure_game(c, ask, beta, corridor)
        rows += game_rows
        solve[f"{'ask' if ask else 'no ask'} beta={beta:g} corridor={corridor}"] = solve_s
    extra = {"config": c.model_dump(mode="json"), "solve_s": solve, "wall_s": time.perf_counter() - t0}
    _, md = write_table(out, "cirl", rows, COLUMNS, extra)
    pivot = write_pivot(rows, out)
    plot_cirl(rows, c, out / "cirl.png")
    if not quiet:
        print(pivot.read_text())
    return md


def pivot_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per game: each robot's gold (mean over seeds), the CIRL robot's behaviour and the baselines'
    wrong-goal rate (``ask/wait/defer/wrong``: shares of episodes)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    games: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        g = games.setdefault((r["game"], r["beta"], r["corridor"]),
                             {"game": r["game"], "beta": f"{r['beta']:g}", "corridor": r["corridor"]})  # fmt: skip
        g[r["method"]] = f"{r['gold']:.2f} ± {r['gold_std']:.2f}"
        if r["method"] == "cirl":
            g["cirl ask/wait/defer/wrong"] = "/".join(f"{r[k]:.2f}" for k in ("ask_rate", "wait_rate", "defer_rate",
                                                                               "wrong_rate"))  # fmt: skip
        elif r["method"] != "oracle":
            g[f"{r['method']} wrong"] = r["wrong_rate"]
    columns = ["game", "beta", "corridor", *methods, "cirl ask/wait/defer/wrong"]
    columns += [f"{m} wrong" for m in methods if m not in ("cirl", "oracle")]
    return list(games.values()), columns


def write_pivot(rows: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    """``<out_dir>/cirl-pivot.md``: :func:`pivot_rows` as a markdown table (written atomically)."""
    table, columns = pivot_rows(rows)
    path = out_dir / "cirl-pivot.md"
    atomic_write_text(path, markdown_table(table, columns))
    return path


def _series(rows: Sequence[dict[str, Any]], x: str, y: str, **where: Any) -> tuple[list[float], list[float]]:
    pick = sorted((r for r in rows if all(r[k] == v for k, v in where.items())), key=lambda r: r[x])
    return [r[x] for r in pick], [r[y] for r in pick]


def plot_cirl(rows: Sequence[dict[str, Any]], c: CIRLStudyConfig, path: Path) -> Path:
    """Four panels: gold vs ambiguity and vs beta per robot; the CIRL robot's behaviour vs ambiguity (with and
    without ``ask``) next to the wrong-goal rate of the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    game = "ask" if "ask" in {r["game"] for r in rows} else "no ask"
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for m in methods:
        xs, ys = _series(rows, "corridor", "gold", method=m, game=game, beta=c.figure_beta)
        _, sd = _series(rows, "corridor", "gold_std", method=m, game=game, beta=c.figure_beta)
        axes[0, 0].errorbar(xs, ys, yerr=sd, marker="o", capsize=3, label=m)
        xs, ys = _series(rows, "beta", "gold", method=m, game=game, corridor=c.figure_corridor)
        axes[0, 1].plot(xs, ys, marker="o", label=m)
    axes[0, 0].set(xlabel="corridor (ambiguous human moves)", ylabel="gold return",
                   title=f"gold vs ambiguity ({game}, beta={c.figure_beta:g})")  # fmt: skip
    axes[0, 1].set(xlabel="human rationality beta", ylabel="gold return", xscale="log",
                   title=f"gold vs beta ({game}, corridor={c.figure_corridor})")  # fmt: skip
    axes[0, 1].set_xticks(sorted(set(c.betas)), [f"{b:g}" for b in sorted(set(c.betas))])
    axes[0, 1].minorticks_off()
    axes[0, 0].legend(fontsize=7)
    for ax, g in zip(axes[1], ("ask", "no ask"), strict=True):
        for y, style in (("ask_rate", "-"), ("wait_rate", "-"), ("defer_rate", "-"), ("wrong_rate", "-")):
            xs, ys = _series(rows, "corridor", y, method="cirl", game=g, beta=c.figure_beta)
            if xs:
                ax.plot(xs, ys, style, marker="o", label=f"cirl {y.removesuffix('_rate')}")
        for m in methods:
            if m not in ("cirl", "oracle"):
                xs, ys = _series(rows, "corridor", "wrong_rate", method=m, game=g, beta=c.figure_beta)
                if xs:
                    ax.plot(xs, ys, "--", marker="x", label=f"{m} wrong")
        ax.set(xlabel="corridor (ambiguous human moves)", ylabel="share of episodes", ylim=(-0.03, 1.03),
               title=f"behaviour ({g}, beta={c.figure_beta:g})")  # fmt: skip
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=100)
