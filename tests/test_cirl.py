"""The CIRL assistance game: the belief update, the exact solver, the robots, the env and the study (issue 24)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rewardlab.control.cirl import (
    CIRLRobot,
    CIRLSolver,
    FixedReward,
    IRLThenOptimize,
    Oracle,
    belief_update,
    evaluate_robot,
    map_theta,
    move_distribution,
    play_episode,
    usable_actions,
)
from rewardlab.studies.cirl import CIRLStudyConfig, run_cirl_study
from rewardlab.studies.common import load_study
from rewardlab.tasks.registry import make_env
from rewardlab.utils import RewardlabError

UP, DOWN, LEFT, RIGHT, STAY = range(5)


def game(**kw):
    return make_env("rewardlab/Assistance-v0", **kw).unwrapped.model()


def test_layout_and_starts() -> None:
    env = make_env("rewardlab/Assistance-v0", n_goals=3, arm=2, corridor=2, render_mode="ansi").unwrapped
    assert env.layout == ("#######", "###c###", "### ###", "#a   b#", "### ###", "### ###", "#######")
    m = env.model()
    assert m.cells[m.robot_start] == (3, 3) and m.cells[m.human_start] == (5, 3)
    assert [m.cells[g] for g in m.goals] == [(3, 1), (3, 5), (1, 3)]
    np.testing.assert_allclose(m.human_policy.sum(axis=2), 1.0)
    env.reset(seed=0)
    assert env.render().count("R") == 1


def test_belief_update_equals_hand_computed_posterior() -> None:
    # Bayes by hand: prior (0.5, 0.3, 0.2) x likelihood (0.2, 0.5, 0.1) = (0.10, 0.15, 0.02) / 0.27
    post = belief_update(np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.5, 0.1]))
    np.testing.assert_allclose(post, [0.10 / 0.27, 0.15 / 0.27, 0.02 / 0.27])
    with pytest.raises(ValueError, match="probability 0"):
        belief_update(np.array([1.0, 0.0]), np.array([0.0, 0.7]))
    # On the game: two goals, arm 2, the human at the fork with beta = 1. Towards goal a (2 cells left):
    # Q(left) = -2, Q(right) = Q(down) = -4, Q(stay) = -3, so pi_a(left) = e^-2 / Z and pi_b(left) = e^-4 / Z.
    m = game(n_goals=2, arm=2, corridor=1, beta=1.0)
    fork = m.robot_start
    z = math.exp(-2) + 2 * math.exp(-4) + math.exp(-3)
    np.testing.assert_allclose(m.human_policy[:, fork, LEFT], [math.exp(-2) / z, math.exp(-4) / z])
    assert m.human_policy[0, fork, UP] == 0.0  # a wall: not a move
    post = belief_update(m.prior, m.human_policy[:, fork, LEFT])
    np.testing.assert_allclose(post, [1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))])
    p = move_distribution(m.prior, m.human_policy, fork)
    np.testing.assert_allclose(p[LEFT], 0.5 * (math.exp(-2) + math.exp(-4)) / z)


def test_deterministic_unambiguous_human_gives_the_optimum() -> None:
    # beta = inf, the human starts at the fork: its first move names the goal, before the robot acts.
    m = game(n_goals=3, arm=2, corridor=0, beta=math.inf)
    solver = CIRLSolver(m)
    optimum = 10.0 - 2 * 1.0  # two steps to any goal
    assert solver.root_value() == pytest.approx(optimum)
    rng = np.random.default_rng(0)
    for theta in range(3):
        cirl, oracle = play_episode(m, CIRLRobot(solver), theta, rng), play_episode(m, Oracle(m), theta, rng)
        assert cirl.gold == oracle.gold == pytest.approx(optimum)
        assert (cirl.outcome, cirl.asked, cirl.waits) == ("right", False, 0)


def test_ambiguous_first_move_makes_the_robot_wait_or_ask() -> None:
    for ask, expected in ((True, "ask"), (False, "wait")):
        m = game(n_goals=3, arm=2, corridor=4, beta=math.inf, allow_ask=ask)
        first = m.human_policy[:, m.human_start, :]
        assert np.all(first == first[0])  # the corridor move is the same whatever the goal: no evidence
        solver = CIRLSolver(m)
        robot = CIRLRobot(solver)
        robot.reset(np.random.default_rng(0), 0)
        robot.observe(m.human_start, UP)
        np.testing.assert_allclose(robot.belief, m.prior)
        action = robot.act(0, m.robot_start, int(m.human_next[m.human_start, UP]))
        assert m.action_names[action] == expected
        # no move beats it (with ask: asking is strictly better; without: a step away and back ties with waiting,
        # and ties go to wait), and the robot never commits to a wrong goal
        q = solver.q_values(0, m.robot_start, int(m.human_next[m.human_start, UP]), robot.belief)
        moves = [q[a] for a in (UP, DOWN, LEFT, RIGHT)]
        assert max(moves) < q[action] if ask else max(moves) <= q[action] + 1e-9
        assert evaluate_robot(m, CIRLRobot(solver), 30, seed=0)["wrong_rate"] == 0.0
    # corridor 4, no ask: waiting 4 rounds then 2 steps beats a blind guess (E = -10/3 - 2)
    m = game(n_goals=3, arm=2, corridor=4, beta=math.inf, allow_ask=False)
    assert CIRLSolver(m).root_value() == pytest.approx(10.0 - 4 - 2)


def test_a_short_horizon_makes_the_robot_defer() -> None:
    # three goals, no ask, the goal is revealed too late to reach: a guess is worth (10 - 20) / 3 - 2 < 0.
    m = game(n_goals=3, arm=2, corridor=4, beta=math.inf, allow_ask=False, horizon=5)
    solver = CIRLSolver(m)
    ep = play_episode(m, CIRLRobot(solver), 1, np.random.default_rng(0))
    assert (ep.outcome, ep.steps, ep.gold) == ("defer", 1, -1.0)  # one round's cost, defer_reward 0
    assert solver.root_value() == pytest.approx(-1.0)


def _brute_force(m, t, robot, human, history, theta_known=None) -> float:
    """The game's value by enumerating every history (no memo, the belief recomputed from the whole history)."""
    if t >= m.horizon:
        return 0.0
    lik = np.ones(len(m.goals))
    for h, u in history:
        lik = lik * m.human_policy[:, h, u]
    belief = m.prior * lik
    belief = belief / belief.sum()
    if theta_known is not None:
        belief = np.eye(len(m.goals))[theta_known]
    total = 0.0
    for u in range(5):
        p = float(belief @ m.human_policy[:, human, u])
        if p == 0:
            continue
        hist = [*history, (human, u)]
        h2 = int(m.human_next[human, u])
        post = belief * m.human_policy[:, human, u] / p
        best = -np.inf
        for a in usable_actions(m, robot):
            if a == m.ask:
                v = sum(post[k] * (m.reward[k, robot, a] + _brute_force(m, t + 1, robot, h2, hist, k))
                        for k in range(len(post)) if post[k] > 0)  # fmt: skip
            else:
                v = float(post @ m.reward[:, robot, a])
                if not m.ends[robot, a]:
                    v += _brute_force(m, t + 1, int(m.robot_next[robot, a]), h2, hist, theta_known)
            best = max(best, v)
        total += p * best
    return total


@pytest.mark.parametrize("ask", [True, False])
def test_solver_equals_brute_force_enumeration(ask: bool) -> None:
    m = game(n_goals=2, arm=1, corridor=1, beta=1.0, horizon=3, payoffs={"ask_cost": 0.5}, allow_ask=ask)
    expected = _brute_force(m, 0, m.robot_start, m.human_start, [])
    assert CIRLSolver(m).root_value() == pytest.approx(expected, abs=1e-9)


def test_cirl_robot_mean_return_matches_its_exact_value() -> None:
    m = game(n_goals=2, arm=2, corridor=1, beta=2.0, horizon=8)
    solver = CIRLSolver(m)
    res = evaluate_robot(m, CIRLRobot(solver), 500, seed=0)
    assert evaluate_robot(m, CIRLRobot(solver), 500, seed=0) == res  # same seed, same metrics
    assert res["gold/mean"] == pytest.approx(
        solver.root_value(), abs=0.25
    )  # gold's std is ~1: ~5 standard errors
    assert res["gold/mean"] <= evaluate_robot(m, Oracle(m), 500, seed=0)["gold/mean"] + 1e-9


def test_irl_then_optimize_picks_the_map_theta() -> None:
    m = game(n_goals=3, arm=2, corridor=0, beta=1.0, prior=[0.2, 0.3, 0.5])
    fork = m.robot_start
    right_cell = int(m.human_next[fork, RIGHT])
    # batch 1: right twice (onto goal b). Each move is e^2 times likelier under b than under a or c (beta = 1,
    # one step shorter): the likelihood ratio e^4 outweighs the prior 0.3 : 0.5, so MAP = b.
    # batch 2: right, then back left: the evidence cancels (equal likelihoods) and the prior decides: MAP = c.
    for batch, expected in (
        ([(fork, RIGHT), (right_cell, RIGHT)], 1),
        ([(fork, RIGHT), (right_cell, LEFT)], 2),
    ):
        robot = IRLThenOptimize(m, demo_steps=2)
        robot.reset(np.random.default_rng(0), 0)
        robot.observe(*batch[0])
        assert m.action_names[robot.act(0, fork, right_cell)] == "wait"  # still watching
        robot.observe(*batch[1])
        robot.act(1, fork, int(m.human_next[right_cell, batch[1][1]]))
        (h0, u0), (h1, u1) = batch
        by_hand = m.prior * m.human_policy[:, h0, u0] * m.human_policy[:, h1, u1]
        assert robot.goal == int(np.argmax(by_hand)) == expected
    # ties are broken at random among the maximizers only; without a generator, the first
    picks = {map_theta(np.array([0.4, 0.4, 0.2]), np.zeros(3), np.random.default_rng(s)) for s in range(30)}
    assert picks == {0, 1}
    assert map_theta(np.array([0.4, 0.4, 0.2]), np.zeros(3)) == 0


def test_fixed_reward_robot_commits_to_its_goal() -> None:
    m = game(n_goals=2, arm=2, corridor=0, beta=math.inf)
    rng = np.random.default_rng(0)
    right, wrong = (play_episode(m, FixedReward(m, 0), theta, rng) for theta in (0, 1))
    assert (right.outcome, right.gold) == ("right", 8.0)
    assert (wrong.outcome, wrong.gold) == ("wrong", -12.0)


def test_env_step_matches_the_arrays() -> None:
    env = make_env("rewardlab/Assistance-v0", n_goals=3, arm=2, corridor=2, beta=1.0, horizon=10).unwrapped
    m = env.model()
    rng = np.random.default_rng(1)
    for ep in range(20):
        obs, info = env.reset(seed=ep)
        theta, done = env.theta, False
        while not done:
            robot, _ = divmod(obs, len(m.cells))
            a = int(rng.choice(usable_actions(m, robot)))
            obs, visible, term, trunc, info = env.step(a)
            assert info["gold_reward"] == pytest.approx(m.reward[theta, robot, a])
            assert visible == pytest.approx(-1.0 - (2.0 if a == m.ask else 0.0))  # step and ask costs only
            assert term == bool(m.ends[robot, a]) and info["robot"] == m.robot_next[robot, a]
            if a == m.ask:
                assert info["answer"] == theta
            done = term or trunc
    with pytest.raises(ValueError, match="allowed"):
        make_env("rewardlab/Assistance-v0", allow_ask=False).unwrapped.step(5)


def test_cirl_study_writes_table_and_figure(tmp_path: Path) -> None:
    cfg = load_study("configs/cirl-micro.yaml", CIRLStudyConfig, [f"out_dir={tmp_path}"])
    md = run_cirl_study(cfg, quiet=True)
    rows = json.loads((tmp_path / "cirl.json").read_text())["rows"]
    assert md.read_text().startswith("| game |") and (tmp_path / "cirl.png").stat().st_size > 0
    assert {r["method"] for r in rows} == {"oracle", "cirl", "irl (1 move)", "fixed (goal 0)"}
    pivot = (tmp_path / "cirl-pivot.md").read_text().splitlines()
    assert len(pivot) == 2 + 2 and "cirl ask/wait/defer/wrong" in pivot[0]  # one row per game
    for r in rows:
        oracle = next(o for o in rows if o["method"] == "oracle" and o["corridor"] == r["corridor"])
        assert r["gold"] <= oracle["gold"] + 1e-9
        assert r["right_rate"] + r["wrong_rate"] + r["defer_rate"] + r["timeout_rate"] == pytest.approx(1.0)
    with pytest.raises(RewardlabError, match="episodes"):
        load_study("configs/cirl-micro.yaml", CIRLStudyConfig, ["episodes=0"])
    with pytest.raises(RewardlabError, match="figure_beta"):
        load_study("configs/cirl-micro.yaml", CIRLStudyConfig, ["figure_beta=3.0"])
    with pytest.raises(RewardlabError, match="fixed_goal"):
        load_study("configs/cirl-micro.yaml", CIRLStudyConfig, ["fixed_goal=2"])


def test_payoffs_override_by_name_and_reject_unknown_fields():
    from rewardlab.tasks.control.assistance import Payoffs

    assert Payoffs.of(None) == Payoffs()
    assert Payoffs.of({"ask_cost": 0.5}) == Payoffs(ask_cost=0.5)
    with pytest.raises(ValueError, match="ask_csot"):
        Payoffs.of({"ask_csot": 0.5})
    m = game(n_goals=2, arm=1, corridor=1, beta=1.0, horizon=3, payoffs={"step_cost": 0.25, "ask_cost": 0.5})
    assert m.reward[0, 0, m.ask] == pytest.approx(-0.75)  # one round's cost plus the ask
