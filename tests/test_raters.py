"""Simulated raters: presets, perception, the B-Pref label model, and error statistics."""

from __future__ import annotations

import math
import random

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rewardlab.feedback.records import Comparison
from rewardlab.feedback.simulated import RaterConfig, SimulatedRater, rater_error_rate
from rewardlab.tasks.arithmetic import (
    FILLERS,
    RATER_PRESETS,
    REFUSAL,
    ArithmeticTask,
    CorpusConfig,
    Problem,
    sample_corpus_response,
)
from rewardlab.utils import RewardlabError

TASK = ArithmeticTask()
INF = float("inf")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _wrong_belief_problem(rng: random.Random, difficulty: int) -> Problem:
    p = TASK.sample_problem(rng, difficulty=difficulty)
    return Problem(p.a, p.op, p.b, p.difficulty, belief=TASK.wrong_answer(p.answer, rng))


def _within(k: int, n: int, p: float, sds: float = 3.0) -> bool:
    se = math.sqrt(p * (1 - p) / n)
    return abs(k / n - p) <= sds * se


# ----------------------------------------------------------------------------------- config
def test_presets_values() -> None:
    assert RaterConfig().resolve(TASK.rater_presets()) == RaterConfig.from_preset("time-pressed", TASK)
    u = RaterConfig.from_preset("unbiased", TASK)
    assert u.verify_prob == [1, 1, 1] and u.epsilon == 0
    assert u.biases == {"agree": 0, "confident": 0, "match_belief": 0, "length": 0}
    t = RaterConfig.from_preset("time-pressed", TASK)
    assert t.verify_prob == [0.3, 0.15, 0.05]
    b = t.biases
    assert (b["agree"], b["confident"], b["match_belief"], b["length"], t.epsilon) == (2, 1, 0.5, 0, 0)
    s = RaterConfig.from_preset("sycophancy-prone", TASK)
    assert s.verify_prob == [0.1, 0.05, 0.0]
    b = s.biases
    assert (b["agree"], b["confident"], b["match_belief"], b["length"]) == (3, 1.5, 1.5, 0.02)
    for name in RATER_PRESETS:
        cfg = RaterConfig.from_preset(name, TASK)
        assert (cfg.beta, cfg.gold_scale, cfg.skip_threshold, cfg.tie_threshold) == (2.0, 2.0, None, 0.0)
    assert RaterConfig.from_preset("custom", TASK) == RaterConfig(preset="custom")
    assert all(f.description for f in RaterConfig.model_fields.values())


def test_yaml_style_dict_preset_plus_override() -> None:
    raw = yaml.safe_load("rater:\n  preset: sycophancy-prone\n  bias_agree: 0.5\n  beta: .inf\n")["rater"]
    given = RaterConfig.model_validate(raw)
    assert given.model_dump(exclude_unset=True) == {
        "preset": "sycophancy-prone",
        "biases": {"agree": 0.5},
        "beta": INF,
    }
    cfg = given.resolve(TASK.rater_presets())
    assert cfg.biases["agree"] == 0.5 and math.isinf(cfg.beta)
    assert cfg.verify_prob == [0.1, 0.05, 0.0] and cfg.biases["match_belief"] == 1.5
    assert RaterConfig.model_validate(cfg.model_dump()) == cfg
    assert RaterConfig.from_preset("unbiased", TASK, epsilon=0.1).epsilon == 0.1
    # presets never share their mutable lists
    a = RaterConfig.from_preset("unbiased", TASK)
    a.verify_prob.append(0.5)
    assert RaterConfig.from_preset("unbiased", TASK).verify_prob == [1, 1, 1]


@pytest.mark.parametrize(
    "bad",
    [
        {"beta": 0},
        {"beta": float("nan")},
        {"epsilon": 1.5},
        {"verify_prob": []},
        {"verify_prob": [0.5, 1.2]},
        {"tie_threshold": -1},
        {"bias_agree": INF},
        {"unknown": 1},
    ],
)
def test_config_rejects(bad: dict) -> None:
    with pytest.raises(ValidationError):
        RaterConfig.model_validate(bad)


def test_from_preset_unknown_name() -> None:
    with pytest.raises(RewardlabError, match="unknown rater preset 'lazy'"):
        RaterConfig.from_preset("lazy", TASK)


def test_verify_probability_beyond_list() -> None:
    cfg = RaterConfig.from_preset("time-pressed", TASK)
    assert [cfg.verify_probability(d) for d in (1, 2, 3, 4)] == [0.3, 0.15, 0.05, 0.05]


# ------------------------------------------------------------------------------- perception
def test_perceived() -> None:
    rater = SimulatedRater(TASK, RaterConfig.from_preset("sycophancy-prone", TASK), seed=0)
    p = Problem(12, "+", 30, 2, belief=40)
    syc = "you are right . well , the answer is definitely 40 ."
    assert rater.perceived(p, syc, verified=False) == pytest.approx(3.0 + 1.5 + 1.5 + 0.02 * 12)
    assert rater.perceived(p, syc, verified=True) == pytest.approx(2.0 * TASK.gold(p, syc))
    honest = "the answer is 42 ."
    assert rater.perceived(p, honest, verified=False) == pytest.approx(0.02 * 5)  # no correctness term
    for verified in (True, False):
        assert rater.perceived(p, REFUSAL, verified) == pytest.approx(2.0 * TASK.gold_min)
    assert rater.perceived(p.text, honest, True) == rater.perceived(p, honest, True)
    with pytest.raises(RewardlabError, match="not an arithmetic-task prompt"):
        rater.perceived("hello", honest, True)


# ------------------------------------------------------------------------------------ labels
_PROBLEMS = st.builds(
    lambda seed, d, belief: _problem_from(seed, d, belief),
    st.integers(0, 10**6),
    st.integers(1, 3),
    st.sampled_from(["none", "right", "wrong"]),
)


def _problem_from(seed: int, d: int, belief: str) -> Problem:
    rng = random.Random(seed)
    p = TASK.sample_problem(rng, difficulty=d)
    b = {"none": None, "right": p.answer, "wrong": TASK.wrong_answer(p.answer, rng)}[belief]
    return Problem(p.a, p.op, p.b, p.difficulty, belief=b)


_RESPONSE_SPEC = st.tuples(
    st.sampled_from(["correct", "belief", "near", "refuse"]),
    st.booleans(),  # agree
    st.booleans(),  # disagree
    st.sampled_from(["", "confident", "hedge"]),
    st.lists(st.sampled_from(FILLERS), max_size=2),
)


def _render(p: Problem, spec: tuple, rng: random.Random) -> str:
    kind, agree, disagree, mod, fillers = spec
    if kind == "refuse":
        return REFUSAL
    ans = {"correct": p.answer, "belief": p.belief if p.belief is not None else p.answer + 1}.get(
        kind, TASK.wrong_answer(p.answer, rng)
    )
    return TASK.render_response(
        ans,
        agree=agree,
        disagree=disagree,
        confident=mod == "confident",
        hedge=mod == "hedge",
        fillers=fillers,
    )


@settings(max_examples=200, deadline=None)
@given(_PROBLEMS, _RESPONSE_SPEC, _RESPONSE_SPEC, st.integers(0, 2**32))
def test_unbiased_argmax_rater_agrees_with_gold(p: Problem, sa: tuple, sb: tuple, seed: int) -> None:
    rng = random.Random(seed)
    a, b = _render(p, sa, rng), _render(p, sb, rng)
    rater = SimulatedRater(TASK, RaterConfig.from_preset("unbiased", TASK, beta=INF), seed=seed)
    c = rater.compare(p, a, b)
    assert c is not None and c.meta["verified"] and not c.meta["mistake"]
    if c.gold_chosen != c.gold_rejected:
        assert c.gold_chosen > c.gold_rejected, (a, b)


def test_unbiased_rater_on_sampled_pairs() -> None:
    rng = random.Random(1)
    problems = TASK.sample_problems(1500, seed=2)
    cc = CorpusConfig()
    pairs = [
        (sample_corpus_response(TASK, p, cc, rng), sample_corpus_response(TASK, p, cc, rng)) for p in problems
    ]
    labels = SimulatedRater(TASK, RaterConfig.from_preset("unbiased", TASK, beta=INF), seed=3).label_pairs(
        problems, pairs
    )
    assert len(labels) == len(problems)
    assert all(c.meta["verified"] for c in labels)
    stats = rater_error_rate(labels)
    assert stats["n"] > 800 and stats["error_rate"] == 0.0
    assert stats["unverified"]["n"] == 0 and math.isnan(stats["unverified"]["error_rate"])


def test_time_pressed_error_rises_with_difficulty() -> None:
    rng = random.Random(0)
    rater = SimulatedRater(TASK, RaterConfig(), seed=1)
    labels: list[Comparison] = []
    n_per = 1500
    for d in (1, 2, 3):
        for _ in range(n_per):
            p = _wrong_belief_problem(rng, d)
            honest = TASK.render_response(p.answer)
            syc = TASK.render_response(p.belief, agree=True, confident=True)  # type: ignore[arg-type]
            labels.append(
                rater.compare(p, honest, syc) if rng.random() < 0.5 else rater.compare(p, syc, honest)
            )
    stats = rater_error_rate(labels)
    by = stats["by_difficulty"]
    assert sorted(by) == [1, 2, 3] and all(by[d]["n"] == n_per for d in (1, 2, 3))
    e1, e2, e3 = (by[d]["error_rate"] for d in (1, 2, 3))
    # error ~ 1 - verify_prob: 0.70, 0.85, 0.95 (SE <= 0.012); a difficulty-blind rater has equal rates
    assert e3 > e2 + 0.05 and e2 > e1 + 0.08
    for d, e in zip((1, 2, 3), (e1, e2, e3)):
        assert abs(e - (1 - rater.config.verify_probability(d))) < 0.04
    assert stats["verified"]["error_rate"] < 0.01 and stats["unverified"]["error_rate"] > 0.99


def test_agreement_bias_when_unverified() -> None:
    rater = SimulatedRater(TASK, RaterConfig(verify_prob=[0.0]), seed=5)
    rng = random.Random(6)
    wins = n = 0
    for _ in range(1000):
        p = _problem_from(rng.randrange(10**6), rng.randint(1, 3), rng.choice(["right", "wrong"]))
        ans = p.answer if rng.random() < 0.5 else TASK.wrong_answer(p.answer, rng)
        plain = TASK.render_response(ans)
        agreeing = TASK.render_response(ans, agree=True)
        c = rater.compare(p, plain, agreeing)
        assert c is not None and not c.meta["verified"]
        wins += c.chosen == agreeing
        n += 1
    assert wins / n > 0.5
    assert _within(wins, n, _sigmoid(2.0 * 2.0))  # beta * bias_agree


@pytest.mark.parametrize(("beta", "gap"), [(2.0, 0.3), (1.0, 1.0), (0.5, -0.8), (4.0, 0.0)])
def test_boltzmann_choice_rate(beta: float, gap: float) -> None:
    cfg = RaterConfig.from_preset(
        "custom", TASK, verify_prob=[0.0], beta=beta, bias_agree=abs(gap), bias_confident=0.0
    )
    cfg = cfg.model_copy(update={"biases": {**cfg.biases, "match_belief": 0.0, "length": 0.0}})
    p = Problem(2, "+", 2, 1)
    plain = "the answer is 4 ."
    agreeing = "you are right . the answer is 4 ."
    a, b = (agreeing, plain) if gap >= 0 else (plain, agreeing)
    rater = SimulatedRater(TASK, cfg, seed=11)
    n = 4000
    k = 0
    for _ in range(n):
        c = rater.compare(p, a, b)
        assert c is not None
        assert c.meta["perceived_chosen"] - c.meta["perceived_rejected"] == pytest.approx(
            gap if c.chosen == a else -gap
        )
        k += c.chosen == a
    assert _within(k, n, _sigmoid(beta * gap))


def test_epsilon_gives_random_labels() -> None:
    eps = 0.3
    rater = SimulatedRater(TASK, RaterConfig.from_preset("unbiased", TASK, beta=INF, epsilon=eps), seed=2)
    p = Problem(2, "+", 2, 1)
    n = 4000
    labels = [rater.compare(p, "the answer is 4 .", "the answer is 5 .") for _ in range(n)]
    mistakes = sum(c.meta["mistake"] for c in labels)  # type: ignore[union-attr]
    assert _within(mistakes, n, eps)
    errors = sum(c.chosen == "the answer is 5 ." for c in labels)  # type: ignore[union-attr]
    assert _within(errors, n, eps / 2)  # a random label is right half the time
    assert all(c.chosen == "the answer is 4 ." for c in labels if not c.meta["mistake"])  # type: ignore[union-attr]


def test_skip_and_tie() -> None:
    p = Problem(12, "+", 30, 2, belief=40)
    cfg = RaterConfig(verify_prob=[0.0], skip_threshold=0.5, tie_threshold=0.25)
    rater = SimulatedRater(TASK, cfg, seed=0, name="alice")
    plain_right, plain_wrong = "the answer is 42 .", "the answer is 41 ."  # both perceived 0
    assert rater.compare(p, plain_right, plain_wrong) is None  # both below skip threshold
    syc = "you are right . the answer is 40 ."  # 2.0 + 0.5
    c = rater.compare(p, plain_right, syc)
    assert c is not None and c.rater == "alice" and not c.meta["tie"]
    # "you are right . the answer is 41 ." (2.0) vs "... is 40 ." (2.5) differ by more than 0.25: labeled
    tie_cfg = cfg.model_copy(update={"tie_threshold": 0.6})
    tie_rater = SimulatedRater(TASK, tie_cfg, seed=0)
    a, b = "you are right . the answer is 41 .", syc
    for _ in range(50):
        t = tie_rater.compare(p, a, b)
        assert t is not None and t.tie and t.meta["tie"] and (t.chosen, t.rejected) == (a, b)
    assert math.isnan(rater_error_rate([t])["error_rate"]) and rater_error_rate([t])["n_excluded"] == 1
    # label_pairs drops skips
    labels = rater.label_pairs([p, p], [(plain_right, plain_wrong), (plain_right, syc)])
    assert len(labels) == 1
    with pytest.raises(RewardlabError, match="one pair per problem"):
        rater.label_pairs([p], [])


def test_record_fields() -> None:
    p = Problem(12, "+", 30, 2, belief=40)
    c = SimulatedRater(TASK, RaterConfig(), seed=0).compare(p, "the answer is 42 .", "the answer is 40 .")
    assert c is not None and c.prompt == p.text and c.rater == "time-pressed"
    assert c.gold_chosen == TASK.gold(p, c.chosen) and c.gold_rejected == TASK.gold(p, c.rejected)
    assert set(c.meta) == {
        "verified", "difficulty", "belief_wrong", "perceived_chosen", "perceived_rejected", "mistake", "tie",
    }  # fmt: skip
    assert c.meta["difficulty"] == 2 and c.meta["belief_wrong"] is True


def test_same_seed_same_labels() -> None:
    problems = TASK.sample_problems(300, seed=4)
    rng = random.Random(0)
    cc = CorpusConfig()
    pairs = [
        (sample_corpus_response(TASK, p, cc, rng), sample_corpus_response(TASK, p, cc, rng)) for p in problems
    ]
    cfg = RaterConfig(epsilon=0.1, beta=1.0)
    first = SimulatedRater(TASK, cfg, seed=9).label_pairs(problems, pairs)
    again = SimulatedRater(TASK, cfg, seed=9).label_pairs(problems, pairs)
    other = SimulatedRater(TASK, cfg, seed=10).label_pairs(problems, pairs)
    assert first == again
    assert first != other
    r1 = SimulatedRater(TASK, cfg, seed=9)
    r2 = SimulatedRater(TASK, cfg, seed=9)
    assert [r1.rank(p, [*pr, REFUSAL]) for p, pr in zip(problems[:50], pairs)] == [
        r2.rank(p, [*pr, REFUSAL]) for p, pr in zip(problems[:50], pairs)
    ]


def test_verified_share() -> None:
    unbiased = SimulatedRater(TASK, RaterConfig.from_preset("unbiased", TASK), seed=0)
    problems = TASK.sample_problems(500, seed=1)
    labels = unbiased.label_pairs(problems, [("the answer is 1 .", "the answer is 2 .")] * len(problems))
    assert all(c.meta["verified"] for c in labels)
    rater = SimulatedRater(TASK, RaterConfig(), seed=0)
    rng = random.Random(2)
    n = 3000
    for d in (1, 2, 3):
        labels = [rater.compare(TASK.sample_problem(rng, d), "the answer is 1 .", "hmm .") for _ in range(n)]
        k = sum(c.meta["verified"] for c in labels)  # type: ignore[union-attr]
        assert _within(k, n, rater.config.verify_probability(d))


# ---------------------------------------------------------------------------------- ranking
def test_rank_argmax_unbiased_sorts_by_gold() -> None:
    rater = SimulatedRater(TASK, RaterConfig.from_preset("unbiased", TASK, beta=INF), seed=0)
    p = Problem(12, "+", 30, 2, belief=40)
    responses = [
        "you are right . the answer is definitely 40 .",
        "the answer is 42 .",
        REFUSAL,
        "well , the answer is 42 .",
        "the answer is maybe 41 .",
    ]
    r = rater.rank(p, responses)
    assert r.ranking == [1, 3, 4, 0, 2]
    assert r.golds == [TASK.gold(p, x) for x in responses]
    assert r.meta["verified"] and len(r.meta["perceived"]) == 5 and r.rater == "unbiased"
    with pytest.raises(RewardlabError, match="at least 2"):
        rater.rank(p, ["x"])


def test_rank_plackett_luce_top_choice_rate() -> None:
    cfg = RaterConfig.from_preset(
        "custom", TASK, verify_prob=[0.0], beta=1.0, bias_agree=2.0, bias_confident=0.0, bias_match_belief=0.0
    )
    rater = SimulatedRater(TASK, cfg, seed=3)
    p = Problem(2, "+", 2, 1)
    responses = ["the answer is 4 .", "you are right . the answer is 4 .", "the answer is 5 ."]  # R = 0, 2, 0
    n = 4000
    top = [rater.rank(p, responses).ranking[0] for _ in range(n)]
    z = 2 + math.exp(2.0)
    assert _within(top.count(1), n, math.exp(2.0) / z)
    assert _within(top.count(0), n, 1 / z)


def test_rank_epsilon_is_uniform() -> None:
    rater = SimulatedRater(TASK, RaterConfig.from_preset("unbiased", TASK, beta=INF, epsilon=1.0), seed=0)
    p = Problem(2, "+", 2, 1)
    rs = [rater.rank(p, ["the answer is 4 .", "the answer is 5 .", REFUSAL]) for _ in range(3000)]
    assert all(r.meta["mistake"] for r in rs)
    assert _within(sum(r.ranking[0] == 2 for r in rs), 3000, 1 / 3)


# ------------------------------------------------------------------------------------ stats
def test_rater_error_rate_grouping() -> None:
    def mk(gc: float | None, gr: float | None, **meta: object) -> Comparison:
        return Comparison("p", "a", "b", gold_chosen=gc, gold_rejected=gr, meta=dict(meta))

    items = [
        mk(1, 0, difficulty=1, verified=True),
        mk(0, 1, difficulty=1, verified=False),
        mk(0, 1, difficulty=2, verified=False),
        mk(0, 0, difficulty=2, verified=False),  # equal golds: excluded
        mk(0, 1, difficulty=2, verified=False, tie=True),  # tie: excluded
        mk(None, 1),  # no gold: excluded
        mk(1, 0),  # no difficulty key: grouped under None
    ]
    s = rater_error_rate(items)
    assert (s["n"], s["n_excluded"]) == (4, 3)
    assert s["error_rate"] == 0.5
    assert s["by_difficulty"] == {
        1: {"error_rate": 0.5, "n": 2},
        2: {"error_rate": 1.0, "n": 1},
        None: {"error_rate": 0.0, "n": 1},
    }
    assert s["verified"] == {"error_rate": 0.0, "n": 1} and s["unverified"] == {"error_rate": 1.0, "n": 2}
    assert "by_difficulty" not in rater_error_rate(items, by=None)
