"""The deep path: SB3 PPO behind a learned-reward wrapper, deep MaxEnt IRL, and (slow) the real studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rewardlab.control.deep import (
    LearnedRewardVecEnv,
    PPOAgent,
    PPOConfig,
    deep_maxent_irl,
    evaluate_policy,
    make_vec_env,
    train_ppo,
)
from rewardlab.control.tabular import finite_horizon_q, greedy
from rewardlab.tasks.control.continuous import GOLD_ID, TRAVEL_ID

TINY = PPOConfig(n_envs=2, n_steps=16, batch_size=16, n_epochs=1)


def test_learned_reward_wrapper_replaces_the_reward_and_keeps_visible_and_gold() -> None:
    seen: list[np.ndarray] = []

    def reward(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return x[:, 4] * 10.0  # the action feature: [s(4), a(1), s'(4)]

    venv = make_vec_env(TRAVEL_ID, 2, seed=0, reward=reward)
    obs = venv.reset()
    actions = np.array([[0.5], [-0.25]], dtype=np.float32)
    nxt, rews, _, infos = venv.step(actions)
    np.testing.assert_allclose(rews, [5.0, -2.5])
    assert seen[0].shape == (2, 9)
    np.testing.assert_allclose(seen[0][:, :4], obs)
    np.testing.assert_allclose(seen[0][:, 5:], nxt)
    assert all("visible_reward" in i and "gold_reward" in i for i in infos)
    assert isinstance(venv, LearnedRewardVecEnv)
    venv.reward = None
    _, rews, _, infos = venv.step(actions)
    np.testing.assert_allclose(rews, [i["visible_reward"] for i in infos])


def test_wrapper_uses_the_terminal_observation_at_episode_ends() -> None:
    last: list[np.ndarray] = []
    venv = make_vec_env(TRAVEL_ID, 1, seed=0, reward=lambda x: (last.append(x.copy()), np.zeros(len(x)))[1])
    venv.reset()
    for _ in range(200):
        obs, _, dones, infos = venv.step(np.zeros((1, 1), dtype=np.float32))
    assert dones[0]
    np.testing.assert_allclose(last[-1][0, 5:], infos[0]["terminal_observation"])
    assert not np.allclose(last[-1][0, 5:], obs[0])


def test_ppo_agent_trains_on_the_learned_reward_it_is_given() -> None:
    calls = []
    agent = PPOAgent(TRAVEL_ID, TINY, steps_per_round=32, seed=0)
    agent.improve(lambda x: (calls.append(len(x)), np.ones(len(x)))[1])
    assert agent.model.num_timesteps >= 32 and sum(calls) >= 32
    ev = agent.evaluate(lambda x: np.ones(len(x)), episodes=1, seed=0)
    assert ev["learned"] == pytest.approx(200.0) and 0 <= ev["gold"] <= 200


def test_train_ppo_audits_gold_and_visible_and_refuses_unknown_targets() -> None:
    _, rows = train_ppo(GOLD_ID, TINY, 64, seed=0, on="gold", evals=2, eval_episodes=1)
    assert [r["step"] for r in rows] == [32, 64]
    assert all(r["gold/mean"] == r["proxy/mean"] for r in rows)  # on the gold env the visible reward is gold
    with pytest.raises(ValueError, match="on must be"):
        train_ppo(GOLD_ID, TINY, 64, seed=0, on="learned")


def test_evaluate_policy_is_seeded() -> None:
    act = lambda o: np.array([0.3], dtype=np.float32)  # noqa: E731
    assert evaluate_policy(TRAVEL_ID, act, 2, seed=5) == evaluate_policy(TRAVEL_ID, act, 2, seed=5)


def _chain(n: int = 6) -> np.ndarray:
    """A corridor: action 0 left, 1 right (walls at the ends)."""
    P = np.zeros((n, 2, n))
    for s in range(n):
        P[s, 0, max(s - 1, 0)] = 1.0
        P[s, 1, min(s + 1, n - 1)] = 1.0
    return P


def test_deep_maxent_irl_recovers_a_reward_whose_optimal_policy_matches_the_expert() -> None:
    n, horizon = 6, 8
    P, init = _chain(n), np.eye(n)[0]
    expert = [1, 2, 3, 4, 5, 5, 5, 5]  # walk right, then stay at the end
    visits = np.bincount(expert, minlength=n).astype(float)
    r = deep_maxent_irl(P, init, horizon, np.eye(n), visits, steps=150, lr=0.05, seed=0)
    assert np.argmax(r) == n - 1
    R = np.broadcast_to(r[None, None, :], P.shape)
    policy = greedy(finite_horizon_q(P, R, horizon))
    assert all(policy[0, s, 1] == 1.0 for s in range(n - 1))  # go right everywhere


# ------------------------------------------------------------------------------------------ the real studies
@pytest.mark.slow
@pytest.mark.parametrize("config", ["control-boatrace.yaml", "control-cartpole.yaml"])
def test_preferences_reach_90_percent_of_gold_within_1000_comparisons(config: str, tmp_path: Path) -> None:
    from rewardlab.cli import main

    path = Path(__file__).resolve().parents[1] / "configs" / config
    assert main(["run", str(path), "--run-dir", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((tmp_path / "seed0" / "preferences" / "summary.json").read_text())
    assert summary["queries_to_target"] is not None and summary["queries_to_target"] <= 1000
    visible = json.loads((tmp_path / "seed0" / "visible" / "summary.json").read_text())
    assert visible["final"]["gold/mean"] < 0.5 * summary["reference_gold"]  # the proxy is hacked


def test_policy_kl_is_zero_at_the_start_and_leaves_the_random_stream_alone() -> None:
    import copy

    import torch

    from rewardlab.control.deep import build_ppo, policy_kl

    model = build_ppo(make_vec_env(TRAVEL_ID, 1, seed=0), TINY, seed=0)
    ref = copy.deepcopy(model.policy)
    obs = np.zeros((5, 4), dtype=np.float32)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    kl = policy_kl(model.policy, ref, obs, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert kl == pytest.approx({"k1": 0.0, "k2": 0.0, "k3": 0.0})
    with torch.no_grad():
        model.policy.log_std.add_(1.0)  # a wider policy: KL > 0 under every estimator but k1's noise
    moved = policy_kl(model.policy, ref, obs, seed=3)
    assert moved["k2"] > 0 and moved["k3"] > 0
