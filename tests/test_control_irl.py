"""MCE IRL recovers a reward whose optimal policy is the expert's; the zero reward and shaped rewards
explain the same demonstrations (ill-posedness); procedure cloning generalizes to held-out mazes, BC does not."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rewardlab.control.epic import epic_distance
from rewardlab.control.imitation import (
    ImitationConfig,
    Maze,
    bfs_distances,
    bfs_trace,
    compare,
    expert_action,
    expert_path,
    random_maze,
    rollout,
    tabular_bc,
)
from rewardlab.control.irl import (
    demo_log_likelihood,
    expert_is_optimal,
    ill_posedness,
    mce_irl,
    occupancy_from_demos,
)
from rewardlab.control.shaping import random_potential
from rewardlab.control.tabular import discounted_occupancy, evaluate, greedy, optimal_actions, value_iteration
from rewardlab.tasks.control.gridworlds import RewardTampering

GAMMA = 0.9


@pytest.fixture(scope="module")
def setting() -> dict:
    """The gold-optimal expert of RewardTampering (walks the top row to the goal), one demo, and IRL's answer."""
    env = RewardTampering()
    m = env.tabular()
    _, Q = value_iteration(m.P, m.gold, GAMMA)
    expert = greedy(Q)
    demo: list[tuple[int, int]] = []
    s, _ = env.reset(seed=0)
    for _ in range(m.horizon):
        a = int(np.argmax(expert[s]))
        demo.append((s, a))
        s, _, terminated, _, _ = env.step(a)
        if terminated:
            break
    states = [s for s, _ in demo] + [s]
    rho = occupancy_from_demos([states], m.n_states, GAMMA, terminal=m.terminal)
    result = mce_irl(m.P, m.init, rho, gamma=GAMMA, steps=120, lr=0.2)
    return {"env": env, "model": m, "Q": Q, "expert": expert, "demo": demo, "rho": rho, "result": result}


def test_demo_occupancy_equals_the_exact_one(setting: dict) -> None:
    m = setting["model"]
    exact = discounted_occupancy(m.P, setting["expert"], m.init, GAMMA).sum(axis=1)
    np.testing.assert_allclose(setting["rho"], exact, atol=1e-9)


def test_mce_irl_matches_features_and_recovers_the_experts_optimal_policy(setting: dict) -> None:
    m, result = setting["model"], setting["result"]
    assert result.history[-1] < 0.05 < result.history[0]
    _, Q_learned = value_iteration(m.P, result.reward, GAMMA)
    visited = (setting["rho"] > 0) & ~m.terminal
    # on every state the expert visits, the learned reward's optimal action is the expert's, and only it
    assert np.array_equal(optimal_actions(Q_learned)[visited], optimal_actions(setting["Q"])[visited])
    assert evaluate(m.P, m.gold, greedy(Q_learned), m.init, m.horizon) == pytest.approx(4.0)
    # the soft-optimal (MaxEnt) policy puts most of its mass on the demonstrated actions
    assert all(result.policy[s, a] > 0.9 for s, a in setting["demo"])


def test_the_zero_reward_and_a_shaped_reward_explain_the_demos_too(setting: dict) -> None:
    m, result, demo = setting["model"], setting["result"], [setting["demo"]]
    out = ill_posedness(m.P, result.reward, demo, GAMMA, random_potential(m.n_states, seed=0, scale=3.0))
    assert out["optimal_learned"] and out["optimal_shaped"] and out["optimal_zero"]
    assert out["loglik_shaped"] == pytest.approx(out["loglik_learned"], abs=1e-9)
    assert out["loglik_zero"] == pytest.approx(len(setting["demo"]) * np.log(0.25))
    assert out["loglik_learned"] > out["loglik_zero"]
    assert out["epic_learned_shaped"] < 1e-6 and out["max_abs_change_shaped"] > 3.0
    # the learned reward is not the gold reward, though it makes the same choices where the expert went
    assert epic_distance(result.reward, m.gold, GAMMA) > 0.3
    assert not expert_is_optimal(m.P, m.R, demo, GAMMA)  # the visible (tampered) reward does not explain them
    assert demo_log_likelihood(m.P, m.gold, demo, GAMMA) < out["loglik_learned"]


def test_irl_checks_its_inputs(setting: dict) -> None:
    m = setting["model"]
    with pytest.raises(ValueError, match="expert_rho"):
        mce_irl(m.P, m.init, np.ones(3), steps=1)
    with pytest.raises(ValueError, match="features"):
        mce_irl(m.P, m.init, setting["rho"], features=np.ones((3, 2)), steps=1)


# --- behavioural cloning vs procedure cloning on held-out mazes ------------------------------------------------
HAND_MAZE = ["#######", "#A  # #", "# # # #", "# #   #", "#   #G#", "#######"]


def test_bfs_expert_and_its_trace_on_a_hand_maze() -> None:
    walls = np.array([[ch == "#" for ch in row] for row in HAND_MAZE])
    dist = bfs_distances(walls, (4, 5))
    maze = Maze(walls, (1, 1), (4, 5), dist)
    assert (dist[1, 1], dist[1, 5], dist[2, 1], dist[0, 0]) == (7, 3, 8, -1)
    path = expert_path(maze)
    assert "".join("udlr"[a] for _, a in path) == "rrddrrd"
    assert [maze.dist[p] for p, _ in path] == list(range(7, 0, -1))
    trace = bfs_trace(maze)
    assert len(trace) == 9 and trace[0].sum() == 1 and trace[0][4, 5]
    assert all((a <= b).all() for a, b in itertools.pairwise(trace)) and trace[-1].sum() == (dist >= 0).sum()
    assert maze.layout() == HAND_MAZE


def test_random_mazes_are_solvable_and_seeded() -> None:
    a, b = random_maze(9, 7), random_maze(9, 7)
    assert np.array_equal(a.walls, b.walls) and a.start == b.start and a.dist[a.start] >= 4
    assert not np.array_equal(a.walls, random_maze(9, 8).walls)
    assert rollout(a, lambda p: expert_action(a, p), 100) == (True, a.dist[a.start])


def test_procedure_cloning_generalizes_to_held_out_mazes_and_behavioural_cloning_does_not() -> None:
    torch.set_num_threads(1)
    res = compare(ImitationConfig(n_train=5, n_test=12, steps=200, width=8, lr=1e-2, seed=0))
    assert res["train/bc_success"] >= 0.8  # BC fits the mazes it saw ...
    assert res["test/bc_success"] <= 0.25  # ... and fails on new ones
    assert res["test/pc_success"] >= 0.9 and res["train/pc_success"] == 1.0


@pytest.mark.slow
def test_procedure_cloning_vs_bc_at_the_documented_size() -> None:
    torch.set_num_threads(1)
    res = compare(ImitationConfig(n_train=20, n_test=100, seed=1))
    assert res["test/pc_success"] >= 0.95 and res["test/bc_success"] <= 0.3


def test_tabular_bc_copies_the_demonstrated_actions_and_is_uniform_elsewhere(setting: dict) -> None:
    m, demo = setting["model"], setting["demo"]
    policy = tabular_bc([demo, demo[:2]], m.n_states, m.n_actions)
    assert all(policy[s, a] == 1.0 for s, a in demo)
    unseen = sorted(set(range(m.n_states)) - {s for s, _ in demo})[0]
    assert policy[unseen].tolist() == [0.25] * 4
    mixed = tabular_bc([[(0, 1)], [(0, 3)], [(0, 3)]], 2, 4)
    assert mixed[0].tolist() == pytest.approx([0, 1 / 3, 0, 2 / 3])
    assert evaluate(m.P, m.gold, policy, m.init, m.horizon) == pytest.approx(4.0)  # the expert's return
