"""Recipe: a control study, ``rewardlab run configs/control-*.yaml`` (a config with a ``control`` section).

For each seed (an arm folder ``seed<k>``) it trains, on one environment with a hidden gold reward:

1. ``gold``        - the reference: the optimizer on the gold reward itself (PPO; or exact planning on a
                     tabular model);
2. ``visible``     - the same optimizer on the environment's visible (proxy) reward: Goodhart's law;
3. ``preferences`` - preference comparisons (:mod:`rewardlab.control.preferences`): the optimizer on a reward
                     learned from at most ``preferences.budget`` simulated comparisons;

each writing ``<run_dir>/seed<k>/<method>/audit.jsonl`` rows (``step``, ``proxy/mean``, ``gold/mean`` and the KL
of the policy to its starting policy, ``kl/k1..k3``: sampled per step and summed over an episode for PPO, exact
for a tabular policy against the uniform start) and ``summary.json``, then
``rewardlab report`` draws the run with the same code as the language-model side. The preference run also
keeps its labels (``comparisons.jsonl``, replayable records) and says how many queries it needed to reach
``target`` (default 90%) of the gold-trained reference's gold return (``queries_to_target``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rewardlab.control.deep import PPOAgent, PPOConfig, audit_row, train_ppo
from rewardlab.control.preferences import PreferenceConfig, TabularAgent, learn_from_preferences
from rewardlab.feedback.records import save_comparisons
from rewardlab.runs import console
from rewardlab.utils import RewardlabError, atomic_write_text, read_text_file


class ControlConfig(BaseModel):
    """The ``control`` section: environment, optimizer and the preference loop."""

    model_config = ConfigDict(extra="forbid")
    env_id: str = Field(
        "rewardlab/CartPoleTravel-v0", description="a registered gymnasium id with info['gold_reward']"
    )
    agent: Literal["ppo", "tabular"] = Field("ppo", description="ppo (SB3) or tabular (exact planning)")
    methods: list[Literal["gold", "visible", "preferences"]] = Field(
        default_factory=lambda: ["gold", "visible", "preferences"]
    )
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    ppo_steps: int = Field(60_000, ge=1, description="PPO steps of the gold and visible runs")
    steps_per_round: int = Field(8_000, ge=1, description="PPO steps per preference round")
    evals: int = Field(6, ge=1, description="audit rows of the gold and visible PPO runs")
    eval_episodes: int = Field(10, ge=1)
    preferences: PreferenceConfig = Field(default_factory=PreferenceConfig)
    target: float = Field(0.9, gt=0, le=1, description="share of the gold reference's return to reach")


class ControlStudyConfig(BaseModel):
    """A control study's whole config file."""

    model_config = ConfigDict(extra="forbid")
    run_dir: str = "runs/control"
    seed: int = 0
    seeds: list[int] | None = Field(None, description="several seeds, one arm each (default: [seed])")
    threads: int = Field(1, ge=1, description="torch threads")
    control: ControlConfig = Field(default_factory=ControlConfig)


def is_control_config(path: Path | None) -> bool:
    """Whether a YAML config file describes a control study (has a top-level ``control`` section)."""
    if path is None or not Path(path).is_file():
        return False
    try:
        data = yaml.safe_load(read_text_file(path, "config file"))
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "control" in data


def load_control_config(path: Path, overrides: list[str]) -> ControlStudyConfig:
    """The study's config with ``--set`` overrides; errors name the file and the field."""
    from rewardlab.config import _format_validation_error, apply_overrides

    data = yaml.safe_load(read_text_file(path, "config file")) or {}
    data = apply_overrides(data, overrides)
    try:
        return ControlStudyConfig.model_validate(data)
    except ValidationError as e:
        raise RewardlabError(_format_validation_error(e, str(path))) from None


# ------------------------------------------------------------------------------------------ the recipe
def run_control(cfg: ControlStudyConfig, *, quiet: bool = False) -> Path:
    """Run every seed's methods, then the report; returns the report's path."""
    from rewardlab.report.build import build_report

    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    c = cfg.control
    # step 1. the run folder: resolved config and the task's description for the report
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    atomic_write_text(run_dir / "task.json", json.dumps(task_info(c.env_id), indent=2) + "\n")
    for seed in cfg.seeds or [cfg.seed]:
        arm = run_dir / f"seed{seed}"
        arm.mkdir(exist_ok=True)
        atomic_write_text(arm / "arm.json", json.dumps({"name": f"seed{seed}", "preset": "teacher",
                                                        "role": "treatment", "seed": seed}) + "\n")  # fmt: skip
        reference = None
        # step 2. the reference on gold, 3. the visible reward, 4. preferences
        for name in c.methods:
            t = time.perf_counter()
            rows, extra = METHOD_RUNS[name](c, seed, reference)
            if name == "gold":
                reference = rows[-1]["gold/mean"]
            extra["wall_s"] = time.perf_counter() - t
            write_method(arm / name, rows, extra)
            if not quiet:
                console.print(f"[bold]control[/] seed {seed} {name}: gold {rows[-1]['gold/mean']:.2f} "
                              f"({extra['wall_s']:.0f} s)")  # fmt: skip
    # step 5. the preference curve, then the report (the same code as for language-model runs)
    if "preferences" in c.methods:
        plot_preference_curve(run_dir, c, run_dir / "plots" / "preferences.png")
    return build_report(run_dir)


def plot_preference_curve(run_dir: Path, c: ControlConfig, out: Path) -> Path:
    """Gold return of the policy trained on the learned reward vs comparisons asked, one line per seed, with the
    gold-trained reference and the ``target`` share of it (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    refs = []
    for arm in sorted(run_dir.glob("seed*")):
        audit, summary = arm / "preferences" / "audit.jsonl", arm / "preferences" / "summary.json"
        if not audit.is_file():
            continue
        rows = [json.loads(x) for x in audit.read_text().splitlines() if x.strip()]
        ax.plot(
            [r["step"] for r in rows],
            [r["gold/mean"] for r in rows],
            marker="o",
            label=f"{arm.name}: learned reward",
        )
        ref = json.loads(summary.read_text()).get("reference_gold")
        if ref is not None:
            refs.append(ref)
    if refs:
        ref = float(sum(refs) / len(refs))
        ax.axhline(ref, color="k", lw=1, label="trained on gold")
        ax.axhline(c.target * ref, color="k", lw=1, ls="--", label=f"{c.target:.0%} of gold-trained")
    ax.set_xlabel("comparisons asked")
    ax.set_ylabel("gold return")
    ax.set_title(f"preference comparisons on {c.env_id}")
    ax.legend(fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def task_info(env_id: str) -> dict[str, Any]:
    return {"name": env_id, "has_gold": True, "description": f"gymnasium environment {env_id}; gold = "
            "info['gold_reward'] summed over an episode, proxy = the reward the optimizer was trained on",
            "behaviors": {}, "headline": None, "headline_note": "", "gold_parts": [], "group": None,
            "highlight": None}  # fmt: skip


def write_method(folder: Path, rows: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    """``audit.jsonl`` (one row per audit) and ``summary.json`` of one method, each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    records = extra.pop("records", None)
    if records is not None:
        save_comparisons(folder / "comparisons.jsonl", records)
    atomic_write_text(folder / "audit.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(folder / "summary.json", json.dumps({"final": rows[-1], **extra}, indent=2) + "\n")


def _run_gold(
    c: ControlConfig, seed: int, reference: float | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return _optimize(c, seed, on="gold")


def _run_visible(c: ControlConfig, seed: int, reference: float | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    return _optimize(c, seed, on="visible")


def _optimize(c: ControlConfig, seed: int, on: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """PPO (or exact planning) on the gold or visible reward; rows ``step``/``gold/mean``/``proxy/mean``."""
    if c.agent == "ppo":
        _, rows = train_ppo(
            c.env_id, c.ppo, c.ppo_steps, seed, on=on, evals=c.evals, eval_episodes=c.eval_episodes
        )
        return rows, {"optimizer": "ppo", "trained_on": on}
    agent = TabularAgent(c.env_id)
    m = agent.model
    rows = [_tabular_row(agent, 0)]
    agent.plan(m.gold if on == "gold" else m.R)
    rows.append(_tabular_row(agent, 1))
    return rows, {"optimizer": "finite-horizon value iteration", "trained_on": on}


def _tabular_row(agent: TabularAgent, step: int) -> dict[str, Any]:
    return audit_row(step, agent.evaluate(None))


def _run_preferences(c: ControlConfig, seed: int, reference: float | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    agent: Any = (PPOAgent(c.env_id, c.ppo, c.steps_per_round, seed) if c.agent == "ppo"
                  else TabularAgent(c.env_id))  # fmt: skip
    result = learn_from_preferences(c.env_id, agent, c.preferences, seed)
    extra: dict[str, Any] = {"records": result.records, "budget": c.preferences.budget, "reference_gold": reference,
                             "target": c.target, "queries_to_target": queries_to_target(result.rows, reference, c.target)}  # fmt: skip
    return result.rows, extra


def queries_to_target(rows: list[dict[str, Any]], reference: float | None, target: float) -> int | None:
    """The first audit's query count whose gold return reaches ``target * reference`` (None: never, or no reference)."""
    if reference is None:
        return None
    for r in rows:
        if r["gold/mean"] >= target * reference:
            return int(r["step"])
    return None


METHOD_RUNS = {"gold": _run_gold, "visible": _run_visible, "preferences": _run_preferences}
