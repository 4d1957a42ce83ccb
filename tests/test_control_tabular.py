"""Tabular planners against known optimal values, shaping invariance (potential shaping keeps optimal
policies; a progress bonus does not), and EPIC (0 for shaped, rescaled copies; large for unrelated rewards)."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from rewardlab.control.epic import (
    canonicalize,
    epic_distance,
    epic_distance_sampled,
    pearson_distance,
    tabular_reward_fn,
)
from rewardlab.control.shaping import potential_shaping, progress_bonus, random_potential
from rewardlab.control.sweep import SweepConfig, SweepPoint, add_arguments, run_sweep, sweep_command, turnover
from rewardlab.control.tabular import (
    discounted_values,
    evaluate,
    finite_horizon_q,
    greedy,
    optimal_actions,
    q_learning,
    soft_value_iteration,
    value_iteration,
)
from rewardlab.tasks.control.gridworlds import (
    BoatRace,
    CleaningRobot,
    RewardTampering,
    TabularModel,
    TomatoWatering,
)
from rewardlab.utils import RewardlabError

MODELS: dict[str, TabularModel] = {
    "boat": BoatRace().tabular(),
    "cleaning": CleaningRobot().tabular(),
    "tampering": RewardTampering().tabular(),
    "tomato": TomatoWatering().tabular(),
}


# --- planners ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "reward", "optimum"),
    [
        ("boat", "R", 20.0),  # 2 steps to the first checkpoint, then 19 loops of 2 steps
        ("boat", "gold", 40.0),  # 40 clockwise moves
        ("tampering", "gold", 4.0),  # 6 steps to the goal: 5 x -1 + (-1 + 10)
        ("tampering", "R", 102.0),  # 9 steps to the sensor (-8 + 5), then 21 x 5
        ("cleaning", "gold", 3.0),  # the three original messes
        ("cleaning", "R", 5.0),  # three messes + the two made by knocking bin and vase over
    ],
)
def test_finite_horizon_optimum_is_the_known_value(name: str, reward: str, optimum: float) -> None:
    m = MODELS[name]
    R = getattr(m, reward)
    Q = finite_horizon_q(m.P, R, m.horizon)
    assert Q[0][0].max() == pytest.approx(optimum)
    assert evaluate(m.P, R, greedy(Q), m.init, m.horizon) == pytest.approx(optimum)


def test_discounted_value_iteration_matches_the_closed_form() -> None:
    m, g = MODELS["tampering"], 0.9
    V, Q = value_iteration(m.P, m.gold, g)
    # five steps at -1, then the step into the goal pays -1 + 10; the goal absorbs with reward 0
    assert V[0] == pytest.approx(-(1 - g**5) / (1 - g) + g**5 * 9.0)
    np.testing.assert_allclose(discounted_values(m.P, m.gold, greedy(Q), g), V, atol=1e-8)
    assert optimal_actions(Q)[0].tolist() == [False, False, False, True]  # right, along the top row


def test_soft_value_iteration_limits_and_a_closed_form() -> None:
    m = MODELS["boat"]
    hard = finite_horizon_q(m.P, m.R, m.horizon)[0].max(axis=1)
    Q_cold, pi_cold = soft_value_iteration(m.P, m.R, 200.0, horizon=m.horizon)
    assert np.all(Q_cold[0].max(axis=1) >= hard - 1e-9)
    assert evaluate(m.P, m.R, pi_cold, m.init, m.horizon) == pytest.approx(20.0, abs=1e-3)
    _, pi_hot = soft_value_iteration(m.P, m.R, 0.0, horizon=m.horizon)
    np.testing.assert_allclose(pi_hot, 0.25)
    # one state, three actions, one step: V = (1/beta) log sum_a exp(beta r_a), pi = softmax(beta r)
    P = np.ones((1, 3, 1))
    R = np.array([0.0, 1.0, 2.0]).reshape(1, 3, 1)
    _Q, pi = soft_value_iteration(P, R, 2.0, horizon=1)
    np.testing.assert_allclose(pi[0, 0], np.exp(2 * R.ravel()) / np.exp(2 * R.ravel()).sum())
    # discounted: V = r_max-ish fixed point of V = (1/beta) log sum exp(beta (r + gamma V))
    Qd, _ = soft_value_iteration(P, R, 2.0, gamma=0.5)
    V = np.log(np.exp(2 * R.ravel()).sum()) / 2 / (1 - 0.5)
    assert Qd[0].tolist() == pytest.approx((R.ravel() + 0.5 * V).tolist())


def test_soft_optimal_visible_return_rises_with_beta() -> None:
    m = MODELS["boat"]
    returns = [
        evaluate(m.P, m.R, soft_value_iteration(m.P, m.R, b, horizon=m.horizon)[1], m.init, m.horizon)
        for b in (0.0, 0.5, 1.0, 2.0, 5.0, 20.0)
    ]
    assert all(b > a for a, b in itertools.pairwise(returns))


def test_q_learning_reaches_the_goal_on_gold_and_loops_the_boat_on_visible_reward() -> None:
    m = MODELS["tampering"]
    Q_gold = q_learning(RewardTampering(), 300, gamma=0.9, epsilon=0.2, seed=0,
                        reward_fn=lambda s, a, s2: m.gold[s, a, s2])  # fmt: skip
    assert evaluate(m.P, m.gold, greedy(Q_gold), m.init, m.horizon) == pytest.approx(4.0)
    b = MODELS["boat"]
    Q_vis = q_learning(BoatRace(), 150, gamma=0.9, epsilon=0.2, seed=0)
    assert evaluate(b.P, b.R, greedy(Q_vis), b.init, b.horizon) == pytest.approx(20.0)  # the optimum
    assert evaluate(b.P, b.gold, greedy(Q_vis), b.init, b.horizon) == pytest.approx(2.0)  # back and forth


def test_planners_refuse_bad_arguments_by_name() -> None:
    m = MODELS["boat"]
    with pytest.raises(ValueError, match="gamma"):
        value_iteration(m.P, m.R, 1.0)
    with pytest.raises(ValueError, match="beta"):
        soft_value_iteration(m.P, m.R, -1.0, horizon=3)


# --- shaping -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("reward", ["R", "gold"])
def test_potential_shaping_leaves_optimal_policies_unchanged(name: str, reward: str) -> None:
    m, g = MODELS[name], 0.9
    R = getattr(m, reward)
    phi = random_potential(m.n_states, seed=1, scale=5.0)
    _, Q = value_iteration(m.P, R, g)
    _, Q_shaped = value_iteration(m.P, potential_shaping(R, phi, g), g)
    np.testing.assert_allclose(Q_shaped, Q - phi[:, None], atol=1e-6)
    assert np.array_equal(optimal_actions(Q_shaped, 1e-6), optimal_actions(Q, 1e-6))
    _, soft = soft_value_iteration(m.P, R, 1.0, gamma=g)
    _, soft_shaped = soft_value_iteration(m.P, potential_shaping(R, phi, g), 1.0, gamma=g)
    np.testing.assert_allclose(soft_shaped, soft, atol=1e-6)


def test_a_progress_bonus_changes_the_optimal_policy() -> None:
    env, g = RewardTampering(), 0.9
    m = env.tabular()
    goal = env.cells["G"][0]
    distance = np.array([abs(s[0][0] - goal[0]) + abs(s[0][1] - goal[1]) for s in env.states], dtype=float)
    _, Q = value_iteration(m.P, m.gold, g)
    _, Q_bonus = value_iteration(m.P, progress_bonus(m.gold, distance, 8.0), g)
    assert not np.array_equal(optimal_actions(Q_bonus), optimal_actions(Q))
    # it steps back and forth next to the goal collecting the bonus instead of finishing
    assert evaluate(m.P, m.gold, greedy(Q_bonus), m.init, m.horizon) == pytest.approx(-30.0)
    # the potential version of the same idea (bonus * (d(s) - d(s'))) keeps the policy
    _, Q_potential = value_iteration(m.P, potential_shaping(m.gold, -3.0 * distance, g), g)
    assert np.array_equal(optimal_actions(Q_potential, 1e-6), optimal_actions(Q, 1e-6))


def test_shaping_checks_shapes() -> None:
    m = MODELS["boat"]
    with pytest.raises(ValueError, match="potential"):
        potential_shaping(m.R, np.zeros(3), 0.9)
    with pytest.raises(ValueError, match="progress"):
        progress_bonus(m.R, np.zeros(3), 1.0)


# --- EPIC ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_epic_is_zero_for_a_shaped_rescaled_copy_and_large_for_an_unrelated_reward(name: str) -> None:
    m, g = MODELS[name], 0.9
    for R in (m.R, m.gold):
        copy = 2.5 * potential_shaping(R, random_potential(m.n_states, seed=2, scale=4.0), g) + 1.0
        assert epic_distance(R, copy, g) < 1e-6
        unrelated = np.random.default_rng(3).normal(size=R.shape)
        assert epic_distance(R, unrelated, g) > 0.3
    np.testing.assert_allclose(canonicalize(potential_shaping(m.gold, np.arange(m.n_states), g), g),
                               canonicalize(m.gold, g), atol=1e-9)  # fmt: skip


def test_epic_properties() -> None:
    m, g = MODELS["boat"], 0.9
    assert epic_distance(m.R, -m.R, g) == pytest.approx(1.0)
    d = epic_distance(m.R, m.gold, g)
    assert 0.3 < d < 1.0 and d == pytest.approx(epic_distance(m.gold, m.R, g))
    with pytest.raises(ValueError, match="constant"):
        epic_distance(m.R, np.full(m.R.shape, 3.0), g)
    with pytest.raises(ValueError, match="same shape"):
        epic_distance(m.R, m.R[:, :2], g)
    assert pearson_distance(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == pytest.approx(0.0)
    assert pearson_distance(np.array([1.0, 2.0, 0.0]), np.array([1.0, 2.0, 5.0]),
                            weights=np.array([1.0, 1.0, 0.0])) == pytest.approx(0.0)  # fmt: skip


def test_sampled_epic_equals_tabular_on_full_coverage_and_estimates_it_on_samples() -> None:
    m, g = MODELS["tampering"], 0.9
    n_s, n_a = m.n_states, m.n_actions
    s, a, s2 = (x.ravel() for x in np.meshgrid(np.arange(n_s), np.arange(n_a), np.arange(n_s), indexing="ij"))
    every = (s, a, s2)
    states, actions = np.tile(np.arange(n_s), n_a), np.repeat(np.arange(n_a), n_s)
    f, h = tabular_reward_fn(m.R), tabular_reward_fn(m.gold)
    exact = epic_distance(m.R, m.gold, g)
    assert epic_distance_sampled(f, h, every, states, actions, g) == pytest.approx(exact, abs=1e-9)
    rng = np.random.default_rng(0)
    batch = tuple(rng.integers(n, size=4000) for n in (n_s, n_a, n_s))
    ms, ma = rng.integers(n_s, size=512), rng.integers(n_a, size=512)
    assert epic_distance_sampled(f, h, batch, ms, ma, g) == pytest.approx(exact, abs=0.05)
    shaped = tabular_reward_fn(3.0 * potential_shaping(m.R, random_potential(n_s, 4), g))
    assert epic_distance_sampled(f, shaped, batch, ms, ma, g) < 0.05


# --- the Goodhart sweep --------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ["rewardlab/BoatRace-v0", "rewardlab/CleaningRobot-v0"])
def test_goodhart_sweep_visible_rises_while_gold_falls_past_the_turnover(env_id: str) -> None:
    res = run_sweep(SweepConfig(env=env_id, levels=[0.0, 0.5, 1.0, 2.0, 4.0, 10.0, 50.0]))
    visible = [p.visible for p in res.points]
    gold = [p.gold for p in res.points]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(visible))
    assert res.turnover is not None and 0.0 < res.turnover < 50.0
    k = [p.level for p in res.points].index(res.turnover)
    assert gold[k] > gold[0] and gold[-1] < gold[k] - 2.0 and visible[-1] > visible[k] + 2.0


def test_turnover_needs_a_real_fall() -> None:
    pts = [SweepPoint(float(i), float(i), g) for i, g in enumerate([0.0, 1.0, 2.0, 1.99])]
    assert turnover(pts) is None  # within 5% of the range
    assert turnover([*pts, SweepPoint(4.0, 4.0, 0.5)]) == 2.0
    assert turnover(pts[:3]) is None  # still rising


def test_sweep_command_writes_rows_summary_and_figures(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)  # the options of `rewardlab sweep`
    args = parser.parse_args(["--env", "rewardlab/RewardTampering-v0", "--pressure", "horizon",
                              "--levels", "1,5,6,15", "--out", str(tmp_path), "--quiet"])  # fmt: skip
    rc = sweep_command(args)
    assert rc == 0
    rows = [
        json.loads(line)
        for line in (tmp_path / "RewardTampering-v0" / "sweep.jsonl").read_text().splitlines()
    ]
    assert [(r["level"], r["gold"]) for r in rows][-2:] == [
        (6.0, 4.0),
        (15.0, -30.0),
    ]  # sees the goal, then the sensor
    summary = json.loads((tmp_path / "RewardTampering-v0" / "summary.json").read_text())
    assert summary["turnover"] == 6.0 and summary["visible_at_max_pressure"] == pytest.approx(102.0)
    assert (tmp_path / "goodhart.png").stat().st_size > 1000 and (
        tmp_path / "RewardTampering-v0" / "sweep.png"
    ).exists()


def test_q_learning_pressure_and_config_errors() -> None:
    res = run_sweep(SweepConfig(env="rewardlab/BoatRace-v0", pressure="steps", levels=[2, 150], seeds=[0]))
    assert res.points[-1].visible == pytest.approx(20.0) and res.points[-1].gold == pytest.approx(2.0)
    with pytest.raises(ValidationError, match="levels"):
        SweepConfig(levels=[1.0, 0.5])
    with pytest.raises(ValidationError, match="pressure"):
        SweepConfig(pressure="money")
    with pytest.raises(RewardlabError, match="horizon levels"):
        run_sweep(SweepConfig(pressure="horizon", levels=[0.5]))
