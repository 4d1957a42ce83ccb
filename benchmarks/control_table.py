"""The normalized-return table of the control reward learners: BC, procedure cloning, IRL, preference comparisons.

    python benchmarks/control_table.py                      # every row, seeds 0-4
    python benchmarks/control_table.py --rows irl,deep-irl --seeds 0,1

Score normalization as in imitation's benchmark: ``(score - random) / (expert - random)`` where ``random`` is
the uniform-random policy and ``expert`` the expert (gold-optimal planner; BFS on mazes); mean and standard
deviation over seeds. Rows (method on environment; the score each is measured by):

* ``bc``/``pc`` - behavioural and procedure cloning (:mod:`rewardlab.control.imitation`) on 20 training mazes,
  success rate on 100 held-out 9x9 mazes (random: a uniform random walk with the same step budget);
* ``bc-tab`` - tabular BC on CleaningRobot from 10 demonstrations of an epsilon-greedy (0.1) expert: the demo
  majority action where demonstrated, uniform elsewhere; exact expected gold return;
* ``irl`` - tabular MCE IRL (:func:`rewardlab.control.irl.mce_irl`, one-hot state features) from the same demos;
  gold return of the finite-horizon optimal policy of the learned reward;
* ``deep-irl`` - deep MaxEnt IRL (:func:`rewardlab.control.deep.deep_maxent_irl`) from the same demos;
* ``pref-boat``/``pref-clean`` - preference comparisons with 1,000 simulated comparisons
  (``configs/control-boatrace.yaml`` settings) on BoatRace / CleaningRobot;
* ``pref-cartpole`` - preference comparisons + PPO on the continuous cart-pole (``configs/control-cartpole.yaml``;
  random: uniform actions, expert: PPO on gold, both measured per seed).

Results append to ``--out`` (JSON lines, one per row and seed; rows already there are skipped), then the
table is printed in Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLEAN, BOAT = "rewardlab/CleaningRobot-v0", "rewardlab/BoatRace-v0"


def _tabular(env_id: str) -> Any:
    from rewardlab.control.preferences import make_env

    return make_env(env_id).unwrapped.tabular()


def _gold_of(m: Any, policy: np.ndarray) -> float:
    from rewardlab.control.tabular import evaluate

    return evaluate(m.P, m.gold, policy, m.init, m.horizon)


GAMMA = 0.95


def _plan(m: Any, R: np.ndarray) -> np.ndarray:
    """The stationary greedy policy of discounted value iteration (``GAMMA``): discounting breaks the ties of a
    finite horizon (an undiscounted expert may wait first, and BC would copy the waiting)."""
    from rewardlab.control.tabular import greedy, value_iteration

    return greedy(value_iteration(m.P, R, GAMMA)[1])


def _bounds(m: Any) -> tuple[float, float]:
    uniform = np.full((m.n_states, m.n_actions), 1.0 / m.n_actions)
    return _gold_of(m, uniform), _gold_of(m, _plan(m, m.gold))


def _demos(m: Any, seed: int, n: int = 10, epsilon: float = 0.1) -> list[list[tuple[int, int]]]:
    """``n`` epsilon-greedy expert episodes as ``(state, action)`` lists (the state entered last included, action -1)."""
    rng = np.random.default_rng(seed)
    expert = _plan(m, m.gold)
    demos = []
    for _ in range(n):
        s, demo = int(rng.choice(m.n_states, p=m.init)), []
        for _t in range(m.horizon):
            a = int(rng.integers(m.n_actions)) if rng.random() < epsilon else int(np.argmax(expert[s]))
            demo.append((s, a))
            s = int(rng.choice(m.n_states, p=m.P[s, a]))
        demos.append([*demo, (s, -1)])
    return demos


def row_bc_tab(seed: int) -> dict[str, float]:
    m = _tabular(CLEAN)
    counts = np.zeros((m.n_states, m.n_actions))
    for demo in _demos(m, seed):
        for s, a in demo:
            if a >= 0:
                counts[s, a] += 1
    seen = counts.sum(1, keepdims=True) > 0
    best = (counts == counts.max(1, keepdims=True)) & seen
    policy = np.where(seen, best / np.maximum(best.sum(1, keepdims=True), 1), 1.0 / m.n_actions)
    return {"score": _gold_of(m, policy), **dict(zip(("random", "expert"), _bounds(m)))}


def row_irl(seed: int) -> dict[str, float]:
    from rewardlab.control.irl import mce_irl, occupancy_from_demos

    m = _tabular(CLEAN)
    rho = occupancy_from_demos([[s for s, _ in d] for d in _demos(m, seed)], m.n_states, GAMMA, m.terminal)
    res = mce_irl(m.P, m.init, rho, gamma=GAMMA, steps=150, lr=0.1)
    return {"score": _gold_of(m, _plan(m, res.reward)), **dict(zip(("random", "expert"), _bounds(m)))}


def row_deep_irl(seed: int) -> dict[str, float]:
    from rewardlab.control.deep import deep_maxent_irl

    m = _tabular(CLEAN)
    demos = _demos(m, seed)
    visits = np.zeros(m.n_states)
    for d in demos:
        for s, _ in d[1:]:
            visits[s] += 1.0 / len(demos)
    r = deep_maxent_irl(m.P, m.init, m.horizon, np.eye(m.n_states), visits, steps=150, lr=0.02, seed=seed)
    R = np.broadcast_to(r[None, None, :], m.P.shape)
    return {"score": _gold_of(m, _plan(m, R)), **dict(zip(("random", "expert"), _bounds(m)))}


def _maze_rows(seed: int) -> dict[str, dict[str, float]]:
    from rewardlab.control.imitation import ImitationConfig, compare, random_maze, rollout

    cfg = ImitationConfig(n_train=20, n_test=100, seed=seed)
    res = compare(cfg)
    rng = np.random.default_rng(seed)
    test = [random_maze(cfg.size, 10**9 + cfg.seed * 1_000_003 + i, cfg.wall_prob, cfg.min_distance)
            for i in range(cfg.n_test)]  # fmt: skip
    rand = float(np.mean([rollout(mz, lambda p: int(rng.integers(4)), 2 * mz.walls.size)[0] for mz in test]))
    return {k: {"score": res[f"test/{k}_success"], "random": rand, "expert": 1.0} for k in ("bc", "pc")}


_MAZE_CACHE: dict[int, dict[str, dict[str, float]]] = {}


def _maze(seed: int) -> dict[str, dict[str, float]]:
    if seed not in _MAZE_CACHE:  # one training of both cloners per seed
        _MAZE_CACHE[seed] = _maze_rows(seed)
    return _MAZE_CACHE[seed]


def row_bc(seed: int) -> dict[str, float]:
    return _maze(seed)["bc"]


def row_pc(seed: int) -> dict[str, float]:
    return _maze(seed)["pc"]


def _pref_config(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "configs" / name).read_text())["control"]  # type: ignore[no-any-return]


def _pref_tabular(env_id: str, seed: int) -> dict[str, float]:
    from rewardlab.control.preferences import PreferenceConfig, TabularAgent, learn_from_preferences

    cfg = PreferenceConfig.model_validate(_pref_config("control-boatrace.yaml")["preferences"])
    agent = TabularAgent(env_id)
    rows = learn_from_preferences(env_id, agent, cfg, seed).rows
    return {"score": rows[-1]["gold/mean"], **dict(zip(("random", "expert"), _bounds(agent.model)))}


def row_pref_boat(seed: int) -> dict[str, float]:
    return _pref_tabular(BOAT, seed)


def row_pref_clean(seed: int) -> dict[str, float]:
    return _pref_tabular(CLEAN, seed)


def row_pref_cartpole(seed: int) -> dict[str, float]:
    from rewardlab.control.deep import PPOAgent, PPOConfig, evaluate_policy, train_ppo
    from rewardlab.control.preferences import PreferenceConfig, learn_from_preferences, make_env

    c = _pref_config("control-cartpole.yaml")
    env_id, ppo = c["env_id"], PPOConfig.model_validate(c.get("ppo", {}))
    agent = PPOAgent(env_id, ppo, c["steps_per_round"], seed)
    rows = learn_from_preferences(env_id, agent, PreferenceConfig.model_validate(c["preferences"]), seed).rows
    _, gold_rows = train_ppo(env_id, ppo, c["ppo_steps"], seed, on="gold", evals=1)
    space = make_env(env_id).action_space
    space.seed(seed)
    rand = evaluate_policy(env_id, lambda o: space.sample(), 10, seed=10_000 + seed)["gold"]
    return {"score": rows[-1]["gold/mean"], "random": rand, "expert": gold_rows[-1]["gold/mean"]}


ROWS: dict[str, tuple[str, str, Callable[[int], dict[str, float]]]] = {
    "bc": ("BC", "held-out 9x9 mazes (success)", row_bc),
    "pc": ("procedure cloning", "held-out 9x9 mazes (success)", row_pc),
    "bc-tab": ("BC (tabular, 10 demos)", "CleaningRobot (gold return)", row_bc_tab),
    "irl": ("MCE IRL (tabular, 10 demos)", "CleaningRobot (gold return)", row_irl),
    "deep-irl": ("deep MaxEnt IRL (10 demos)", "CleaningRobot (gold return)", row_deep_irl),
    "pref-boat": ("preferences (1,000 comparisons)", "BoatRace (gold return)", row_pref_boat),
    "pref-clean": ("preferences (1,000 comparisons)", "CleaningRobot (gold return)", row_pref_clean),
    "pref-cartpole": (
        "preferences + PPO (1,000 comparisons)",
        "CartPoleTravel (gold return)",
        row_pref_cartpole,
    ),
}


def normalized(r: dict[str, float]) -> float:
    """``(score - random) / (expert - random)`` (imitation's benchmark normalization)."""
    return (r["score"] - r["random"]) / (r["expert"] - r["random"])


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| method | environment (score) | seeds | score | random | expert | normalized (mean ± sd) | wall s/seed |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, (label, env, _) in ROWS.items():
        rs = [r for r in results if r["row"] == key]
        if not rs:
            continue
        norm = [normalized(r) for r in rs]
        mean = lambda k, rs=rs: float(np.mean([r[k] for r in rs]))  # noqa: E731
        lines.append(f"| {label} | {env} | {len(rs)} | {mean('score'):.2f} | {mean('random'):.2f} | "
                     f"{mean('expert'):.2f} | {np.mean(norm):.2f} ± {np.std(norm):.2f} | {mean('wall_s'):.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-control-table.jsonl")
    args = p.parse_args()
    torch.set_num_threads(1)
    done = [json.loads(x) for x in args.out.read_text().splitlines()] if args.out.exists() else []
    for key in [k.strip() for k in args.rows.split(",") if k.strip()]:
        for seed in (int(s) for s in args.seeds.split(",")):
            if any(r["row"] == key and r["seed"] == seed for r in done):
                continue
            t = time.perf_counter()
            row = {"row": key, "seed": seed, **ROWS[key][2](seed), "wall_s": 0.0}
            row["wall_s"] = time.perf_counter() - t
            done.append(row)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{key} seed {seed}: {row}", file=sys.stderr, flush=True)
    print(table(done))


if __name__ == "__main__":
    main()
