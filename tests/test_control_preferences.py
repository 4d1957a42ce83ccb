"""Preference comparisons on control tasks: the teacher's knobs, replayable records, active queries, the loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rewardlab.control.preferences import (
    PreferenceConfig,
    RewardEnsemble,
    TabularAgent,
    TeacherConfig,
    cut_segments,
    from_record,
    learn_from_preferences,
    make_env,
    myopic_return,
    preference_accuracy,
    query_schedule,
    replay,
    rollout,
    select_queries,
    teacher_label,
    to_record,
    train_ensemble,
)
from rewardlab.feedback.records import load_comparisons, save_comparisons
from rewardlab.tasks.control.continuous import TRAVEL_ID, ContinuousCartPole

BOAT = "rewardlab/BoatRace-v0"


def _labels(
    r1: list[float], r2: list[float], cfg: TeacherConfig, n: int = 1, seed: int = 0
) -> list[float | None]:
    rng = np.random.default_rng(seed)
    return [teacher_label(np.array(r1), np.array(r2), cfg, rng) for _ in range(n)]


# ------------------------------------------------------------------------------------------ the teacher
def test_rational_teacher_prefers_the_larger_return_and_ties_exact_equals() -> None:
    cfg = TeacherConfig()
    assert _labels([1, 1], [0, 1], cfg) == [1.0]
    assert _labels([0, 1], [1, 1], cfg) == [0.0]
    assert _labels([1, 0], [0, 1], cfg) == [0.5]


def test_boltzmann_beta_matches_the_logistic_probability() -> None:
    beta, d = 0.5, 2.0  # P(first) = sigmoid(1) = 0.731
    labels = _labels([d, 0], [0, 0], TeacherConfig(beta=beta), n=4000)
    assert np.mean(labels) == pytest.approx(1 / (1 + math.exp(-beta * d)), abs=0.03)
    sharp = _labels([d, 0], [0, 0], TeacherConfig(beta=50.0), n=200)
    assert np.mean(sharp) == 1.0


def test_epsilon_flips_that_share_of_labels() -> None:
    assert np.mean(_labels([1], [0], TeacherConfig(epsilon=0.2), n=4000)) == pytest.approx(0.8, abs=0.03)
    assert _labels([1], [0], TeacherConfig(epsilon=1.0), n=5) == [0.0] * 5


def test_myopia_weighs_recent_steps_more() -> None:
    early, late = [1.0, 0, 0, 0], [0, 0, 0, 0.8]
    assert myopic_return(np.array(early), 0.5) == pytest.approx(0.125)
    assert _labels(early, late, TeacherConfig(gamma=1.0)) == [1.0]
    assert _labels(early, late, TeacherConfig(gamma=0.5)) == [0.0]


def test_skip_threshold_drops_queries_where_neither_segment_reaches_it() -> None:
    cfg = TeacherConfig(skip=2.0)
    assert _labels([1, 0.5], [0, 1], cfg) == [None]
    assert _labels([1, 1.5], [0, 1], cfg) == [1.0]


def test_equal_threshold_turns_close_returns_into_ties() -> None:
    cfg = TeacherConfig(equal=0.5)
    assert _labels([1.0, 0.2], [1.0, 0.0], cfg) == [0.5]
    assert _labels([1.0, 0.6], [1.0, 0.0], cfg) == [1.0]


def test_teacher_config_names_bad_fields() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        TeacherConfig(epsilon=1.5)
    with pytest.raises(ValueError, match="gamma"):
        TeacherConfig(gamma=0.0)


# ------------------------------------------------------------------------------------------ records
@pytest.mark.parametrize("env_id", [BOAT, TRAVEL_ID])
def test_records_round_trip_and_replay_to_the_same_returns(env_id: str, tmp_path: Path) -> None:
    env = make_env(env_id)
    rng = np.random.default_rng(0)
    episodes = [
        rollout(env_id, lambda obs, r: env.action_space.sample(), seed, rng, env=env) for seed in (3, 4)
    ]
    env.action_space.seed(0)
    segs = cut_segments(episodes, 6, rng, per_episode=2)
    recs = [
        to_record(segs[0], segs[1], 1.0),
        to_record(segs[2], segs[3], 0.0),
        to_record(segs[1], segs[2], 0.5),
    ]
    path = save_comparisons(tmp_path / "c.jsonl", recs)
    loaded = load_comparisons(path)
    assert loaded == recs
    for rec, (first, second) in zip(loaded, [(segs[0], segs[1]), (segs[3], segs[2]), (segs[1], segs[2])]):
        chosen, rejected, label = from_record(rec)
        assert label == (0.5 if rec.meta.get("tie") else 1.0)
        for got, want in ((chosen, first), (rejected, second)):
            np.testing.assert_array_equal(got.gold, want.gold)
            np.testing.assert_array_equal(got.visible, want.visible)
            np.testing.assert_allclose(got.features, want.features)
        assert rec.gold_chosen == pytest.approx(float(first.gold.sum()))
    assert json.loads(str(loaded[0].prompt)) == {"env_id": env_id, "segment_length": 6}


def test_replay_refuses_actions_past_the_end_of_the_episode() -> None:
    desc = {"env_id": TRAVEL_ID, "seed": 0, "start": 0, "actions": [[0.0]] * 201}
    with pytest.raises(ValueError, match="ended after 200 of 201"):
        replay(desc)


# ------------------------------------------------------------------------------------------ reward model
def _linear_ensemble(weights: list[float]) -> RewardEnsemble:
    model = RewardEnsemble(1, members=len(weights), hidden=0)
    with torch.no_grad():
        for net, w in zip(model.nets, weights):
            net.weight.fill_(w)  # type: ignore[union-attr]
            net.bias.zero_()  # type: ignore[union-attr]
    return model


def test_active_selection_picks_the_highest_disagreement_pairs() -> None:
    # P_k(a > b) = sigmoid(w_k x): the members' disagreement grows with |x| near 0
    model = _linear_ensemble([1.0, 2.0, 3.0])
    x = np.array([0.05, 0.4, 0.0, 0.2, 0.3], dtype=np.float32)
    a, b = x[:, None, None], np.zeros_like(x)[:, None, None]
    picked = select_queries(model, a, b, 2, np.random.default_rng(0))
    assert picked.tolist() == [1, 4]
    std = model.pair_probs(a, b).std(0)
    assert std[picked].min() >= np.delete(std, picked).max()
    uniform = select_queries(None, a, b, 3, np.random.default_rng(0))
    assert len(set(uniform.tolist())) == 3


def test_learned_reward_ranks_the_gold_better_segment_higher() -> None:
    env = make_env(BOAT)
    rng = np.random.default_rng(0)
    episodes = [rollout(BOAT, lambda obs, r: int(r.integers(4)), s, rng, env=env) for s in range(30)]
    segs = cut_segments(episodes, 8, rng, per_episode=6)
    pairs = rng.integers(0, len(segs), size=(400, 2))
    teacher = TeacherConfig()
    y = np.array(
        [teacher_label(segs[i].gold, segs[j].gold, teacher, rng) for i, j in pairs], dtype=np.float32
    )
    fa, fb = (np.stack([segs[k].features for k in pairs[:, c]]) for c in (0, 1))
    model = RewardEnsemble(fa.shape[-1], members=2, hidden=0, seed=0)
    before = preference_accuracy(model, fa[300:], fb[300:], y[300:])
    train_ensemble(model, fa[:300], fb[:300], y[:300], epochs=60, lr=3e-3)
    after = preference_accuracy(model, fa[300:], fb[300:], y[300:])
    assert after > 0.85 > before
    lap = rollout(BOAT, _clockwise_policy(env), 0, rng, env=env).segment(0, 8)  # gold +8
    back = rollout(BOAT, lambda obs, r: 2, 0, rng, env=env).segment(0, 8)  # left along the top, then walls
    assert lap.gold.sum() > back.gold.sum()
    assert model.reward(lap.features).sum() > model.reward(back.features).sum()


def _clockwise_policy(env: object):  # the gold-optimal policy, by planning on gold
    from rewardlab.control.tabular import finite_horizon_q

    m = env.unwrapped.tabular()  # type: ignore[attr-defined]
    Q = finite_horizon_q(m.P, m.gold, m.horizon)
    return lambda obs, r: int(np.argmax(Q[0, int(obs)]))


# ------------------------------------------------------------------------------------------ the loop
def test_query_schedule_spends_exactly_the_budget() -> None:
    assert query_schedule(100, 4, 0.25) == [25, 25, 25, 25]
    assert sum(query_schedule(1000, 7, 0.15)) == 1000
    assert query_schedule(10, 1, 0.3) == [10]


def test_loop_respects_the_budget_and_is_seeded() -> None:
    cfg = PreferenceConfig(budget=40, rounds=2, segment_length=5, episodes_per_round=3, segments_per_episode=3,
                           hidden=0, epochs=5, teacher=TeacherConfig(skip=1.0))  # fmt: skip
    runs = [learn_from_preferences(BOAT, TabularAgent(BOAT), cfg, seed=1) for _ in range(2)]
    rows = runs[0].rows
    assert [r["step"] for r in rows] == [12, 40]
    assert len(runs[0].records) == rows[-1]["labels"] <= 40  # skipped queries are asked but not labeled
    assert rows == runs[1].rows
    assert {"gold/mean", "proxy/mean", "visible/mean", "reward/loss"} <= set(rows[0])


def test_tabular_agent_plans_on_the_learned_reward() -> None:
    agent = TabularAgent(BOAT)
    gold = agent.model.gold
    idx, x = agent.features()
    table = {tuple(map(int, i)): k for k, i in enumerate(idx)}

    def reward(feats: np.ndarray) -> np.ndarray:  # the gold reward, looked up from the features
        assert feats.shape == x.shape
        return np.array([gold[s, a, s2] for s, a, s2 in table])

    agent.improve(reward)
    ev = agent.evaluate(reward)
    assert ev["gold"] == pytest.approx(agent.model.horizon)  # one clockwise move a step
    assert ev["learned"] == pytest.approx(ev["gold"])


def test_proxy_reward_wrapper_keeps_gold_in_info_and_the_proxy_is_hackable() -> None:
    env = make_env(TRAVEL_ID)
    env.reset(seed=0)
    _, visible, term, trunc, info = env.step(np.array([0.0], dtype=np.float32))
    assert info["proxy_reward"] == visible and info["gold_reward"] == 1.0 and not term and not trunc
    drive = rollout(
        TRAVEL_ID, lambda obs, r: np.array([1.0], dtype=np.float32), 0, np.random.default_rng(0), env=env
    )
    assert len(drive.actions) == 200
    assert drive.gold.sum() < 30 < drive.visible.sum()  # full throttle: the pole falls, the cart races right
    assert ContinuousCartPole(horizon=3).render().shape == (120, 240, 3)


def test_rewardlab_run_control_config_writes_audit_and_report(tmp_path: Path) -> None:
    from rewardlab.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "control-micro.yaml"
    run = tmp_path / "run"
    assert main(["run", str(config), "--run-dir", str(run), "--quiet",
                 "--set", "control.preferences.budget=20"]) == 0  # fmt: skip
    for method in ("gold", "visible", "preferences"):
        rows = [
            json.loads(line) for line in (run / "seed0" / method / "audit.jsonl").read_text().splitlines()
        ]
        assert rows and all({"step", "gold/mean", "proxy/mean"} <= set(r) for r in rows)
    summary = json.loads((run / "seed0" / "preferences" / "summary.json").read_text())
    assert summary["budget"] == 20 and summary["reference_gold"] == 40.0
    assert (
        len(load_comparisons(run / "seed0" / "preferences" / "comparisons.jsonl"))
        == summary["final"]["labels"]
    )
    assert (run / "report.html").is_file() and (run / "plots" / "goodhart.png").is_file()
    assert (run / "plots" / "preferences.png").is_file()


def test_control_config_errors_name_the_field(tmp_path: Path) -> None:
    from rewardlab.pipelines.control import load_control_config
    from rewardlab.utils import RewardlabError

    p = tmp_path / "c.yaml"
    p.write_text("control:\n  preferences:\n    budget: 0\n")
    with pytest.raises(RewardlabError, match="budget"):
        load_control_config(p, [])
