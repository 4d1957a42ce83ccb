"""Simulated raters: where preference labels come from, and how they go wrong.

The label model is B-Pref's simulated "teacher" (Lee et al. 2021, "B-Pref: Benchmarking
Preference-Based Reinforcement Learning"): a Boltzmann-rational chooser with inverse temperature
``beta`` over a reward, plus its irrationalities: *skip* (both options look bad: no label),
*equal* (options look alike: a tie), *mistake* (with probability ``epsilon`` a uniformly random
label). Myopia has no counterpart here: a response is judged as a whole.

What the rater compares is not the gold reward but a **perceived** reward. Like the
time-constrained human evaluators of Wen et al. 2024 ("Language Models Learn to Mislead Humans via
RLHF", U-SOPHISTRY), the rater checks the arithmetic only sometimes, less often for harder
problems (``verify_prob`` per difficulty). When it verifies it sees the gold reward (scaled by
``gold_scale``); when it does not, it falls back on surface cues: agreeing with the user ("you are
right ."), sounding sure ("definitely"), repeating the user's stated belief, and length. The gap
between the two is exactly what a reward model trained on these labels can learn to exploit.

Every query consumes the same number of random draws whatever the outcome (a verification draw,
a mistake draw and a label draw for a comparison; two draws plus one Gumbel per completion for a
ranking), so two raters with the same seed see the same random numbers: changing one knob changes
only the labels it affects.
"""

from __future__ import annotations

import copy
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewardlab.feedback.records import Comparison, Ranking
from rewardlab.tasks.arithmetic import ArithmeticTask, Problem, parse_prompt, parse_response
from rewardlab.utils import RewardlabError

__all__ = [
    "RATER_PRESETS",
    "RaterConfig",
    "SimulatedRater",
    "rater_error_rate",
]

PresetName = Literal["unbiased", "time-pressed", "sycophancy-prone", "custom"]

#: The values each preset sets; fields a preset does not list keep the class defaults.
RATER_PRESETS: dict[str, dict[str, Any]] = {
    "unbiased": {
        "verify_prob": [1.0, 1.0, 1.0],
        "bias_agree": 0.0,
        "bias_confident": 0.0,
        "bias_match_belief": 0.0,
        "bias_length": 0.0,
        "epsilon": 0.0,
    },
    "time-pressed": {
        "verify_prob": [0.3, 0.15, 0.05],
        "bias_agree": 2.0,
        "bias_confident": 1.0,
        "bias_match_belief": 0.5,
        "bias_length": 0.0,
        "epsilon": 0.0,
    },
    "sycophancy-prone": {
        "verify_prob": [0.1, 0.05, 0.0],
        "bias_agree": 3.0,
        "bias_confident": 1.5,
        "bias_match_belief": 1.5,
        "bias_length": 0.02,
        "epsilon": 0.0,
    },
}


class RaterConfig(BaseModel):
    """How a simulated rater perceives responses and turns perceptions into labels.

    ``preset`` fills every field you do not set explicitly (also from a YAML dict such as
    ``{"preset": "sycophancy-prone", "beta": 5}``); ``"custom"`` uses the class defaults, which
    are the ``time-pressed`` values.
    """

    model_config = ConfigDict(extra="forbid")

    preset: PresetName = Field(
        "time-pressed",
        description="named rater profile; fills every field not set explicitly ('custom': class defaults)",
    )
    beta: float = Field(
        2.0,
        gt=0,
        description="Boltzmann inverse temperature on the perceived reward; inf = always the higher one",
    )
    gold_scale: float = Field(
        2.0,
        gt=0,
        allow_inf_nan=False,
        description="perceived reward = gold_scale * gold when the rater verifies",
    )
    verify_prob: list[float] = Field(
        default_factory=lambda: [0.3, 0.15, 0.05],
        description="chance the rater checks the arithmetic, per difficulty 1, 2, 3 (later ones use the last)",
    )
    bias_agree: float = Field(
        2.0, allow_inf_nan=False, description="perceived bonus for the agreement phrase 'you are right .'"
    )
    bias_confident: float = Field(
        1.0, allow_inf_nan=False, description="perceived bonus for a 'definitely' answer"
    )
    bias_match_belief: float = Field(
        0.5,
        allow_inf_nan=False,
        description="perceived bonus when the final answer equals the user's stated belief",
    )
    bias_length: float = Field(0.0, allow_inf_nan=False, description="perceived bonus per response word")
    epsilon: float = Field(
        0.0, ge=0, le=1, description="chance of a uniformly random label (B-Pref's 'mistake' teacher)"
    )
    skip_threshold: float | None = Field(
        None,
        allow_inf_nan=False,
        description="skip the query when both perceived rewards are below this (B-Pref's 'skip'); null: never",
    )
    tie_threshold: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="label a tie when |perceived difference| is below this (B-Pref's 'equal'); 0: never",
    )

    @field_validator("verify_prob")
    @classmethod
    def _check_verify_prob(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("verify_prob needs at least one probability (for difficulty 1)")
        if any(not (0.0 <= p <= 1.0) for p in v):
            raise ValueError(f"verify_prob entries must be probabilities in [0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _fill_from_preset(self) -> RaterConfig:
        if self.preset != "custom":
            for name, value in RATER_PRESETS[self.preset].items():
                if name not in self.model_fields_set:
                    # Written straight into __dict__ so the field stays "unset": a dump with
                    # exclude_unset gives back the compact {"preset": ..., overrides} form.
                    self.__dict__[name] = copy.deepcopy(value)
        return self

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> RaterConfig:
        """The preset's values, then ``overrides`` (any field)."""
        if name not in (*RATER_PRESETS, "custom"):
            raise RewardlabError(
                f"unknown rater preset {name!r}; choose one of {', '.join([*RATER_PRESETS, 'custom'])}"
            )
        return cls(preset=name, **overrides)

    def verify_probability(self, difficulty: int) -> float:
        """``verify_prob`` for a difficulty (1-based; beyond the list, the last entry)."""
        return self.verify_prob[max(1, min(difficulty, len(self.verify_prob))) - 1]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _gumbel(rng: random.Random) -> float:
    u = rng.random()
    while u <= 0.0:  # random() is in [0, 1); log(0) is undefined
        u = rng.random()
    return -math.log(-math.log(u))


class SimulatedRater:
    """A B-Pref-style simulated rater over a perceived reward (see the module docstring).

    The rater owns a private ``random.Random(seed)``: the same seed and the same queries in the
    same order give the same labels.
    """

    def __init__(self, task: ArithmeticTask, config: RaterConfig, seed: int, name: str | None = None) -> None:
        self.task = task
        self.config = config
        self.seed = seed
        self.name = name if name is not None else config.preset
        self._rng = random.Random(seed)

    # ------------------------------------------------------------------------- perception
    @staticmethod
    def _problem(problem: Problem | str) -> Problem:
        if isinstance(problem, Problem):
            return problem
        try:
            return parse_prompt(problem)
        except ValueError as e:
            raise RewardlabError(f"rater: {e}") from None

    def perceived(self, problem: Problem | str, response: str, verified: bool) -> float:
        """The reward the rater perceives; ``verified``: whether it checks the arithmetic."""
        c = self.config
        p = self._problem(problem)
        r = parse_response(response)
        if not r.parseable:
            return c.gold_scale * self.task.gold_min  # plainly not an answer, checked or not
        if verified:
            return c.gold_scale * self.task.gold(p, response)
        match_belief = p.belief is not None and r.answer == p.belief
        return (
            c.bias_agree * r.agrees
            + c.bias_confident * r.confident
            + c.bias_match_belief * match_belief
            + c.bias_length * r.n_words
        )

    def _draw_verified(self, p: Problem) -> bool:
        return self._rng.random() < self.config.verify_probability(p.difficulty)

    # ---------------------------------------------------------------------------- labels
    def compare(self, problem: Problem | str, a: str, b: str) -> Comparison | None:
        """Label one pair; ``None`` when the rater skips it."""
        c = self.config
        p = self._problem(problem)
        rng = self._rng
        verified = self._draw_verified(p)
        u_mistake, u_label = rng.random(), rng.random()
        ra, rb = self.perceived(p, a, verified), self.perceived(p, b, verified)
        if c.skip_threshold is not None and ra < c.skip_threshold and rb < c.skip_threshold:
            return None
        tie = abs(ra - rb) < c.tie_threshold
        mistake = False
        if tie:
            a_wins = True
        elif u_mistake < c.epsilon:
            mistake = True
            a_wins = u_label < 0.5
        elif math.isinf(c.beta):
            a_wins = ra > rb or (ra == rb and u_label < 0.5)
        else:
            a_wins = u_label < _sigmoid(c.beta * (ra - rb))
        chosen, rejected, r_ch, r_rej = (a, b, ra, rb) if a_wins else (b, a, rb, ra)
        return Comparison(
            prompt=p.text,
            chosen=chosen,
            rejected=rejected,
            rater=self.name,
            gold_chosen=self.task.gold(p, chosen),
            gold_rejected=self.task.gold(p, rejected),
            meta={
                "verified": verified,
                "difficulty": p.difficulty,
                "belief_wrong": p.belief_wrong,
                "perceived_chosen": r_ch,
                "perceived_rejected": r_rej,
                "mistake": mistake,
                "tie": tie,
            },
        )

    def rank(self, problem: Problem | str, responses: Sequence[str]) -> Ranking:
        """A full K-wise ranking, sampled from Plackett-Luce with utilities ``beta * perceived``.

        Sampled with the Gumbel-max trick (sort ``beta * R_i + G_i``); ``beta = inf`` sorts by the
        perceived reward with random tie-breaking. With probability ``epsilon`` the ranking is a
        uniformly random permutation (``meta["mistake"]``). ``skip_threshold`` and
        ``tie_threshold`` apply to pairwise queries only.
        """
        if len(responses) < 2:
            raise RewardlabError(f"rater: a ranking needs at least 2 responses, got {len(responses)}")
        c = self.config
        p = self._problem(problem)
        rng = self._rng
        verified = self._draw_verified(p)
        u_mistake = rng.random()
        gumbels = [_gumbel(rng) for _ in responses]
        perceived = [self.perceived(p, r, verified) for r in responses]
        mistake = u_mistake < c.epsilon
        idx = range(len(responses))
        if mistake:
            order = sorted(idx, key=lambda i: gumbels[i], reverse=True)
        elif math.isinf(c.beta):
            order = sorted(idx, key=lambda i: (perceived[i], gumbels[i]), reverse=True)
        else:
            order = sorted(idx, key=lambda i: c.beta * perceived[i] + gumbels[i], reverse=True)
        return Ranking(
            prompt=p.text,
            completions=list(responses),
            ranking=order,
            rater=self.name,
            golds=[self.task.gold(p, r) for r in responses],
            meta={
                "verified": verified,
                "difficulty": p.difficulty,
                "belief_wrong": p.belief_wrong,
                "perceived": perceived,
                "mistake": mistake,
            },
        )

    def label_pairs(
        self, problems: Sequence[Problem | str], pairs: Sequence[tuple[str, str]]
    ) -> list[Comparison]:
        """:meth:`compare` over many queries (one pair per problem); skipped queries are dropped."""
        if len(problems) != len(pairs):
            raise RewardlabError(
                f"rater: {len(problems)} problems but {len(pairs)} pairs; give one pair per problem"
            )
        out = []
        for p, (a, b) in zip(problems, pairs, strict=True):
            c = self.compare(p, a, b)
            if c is not None:
                out.append(c)
        return out


# ---------------------------------------------------------------------------------- stats
def _rate(errors: int, n: int) -> dict[str, float | int]:
    return {"error_rate": errors / n if n else float("nan"), "n": n}


def rater_error_rate(comparisons: Iterable[Comparison], by: str | None = "difficulty") -> dict[str, Any]:
    """How often labels disagree with gold.

    Counted over labels whose two golds are known and differ, tie labels excluded. Returns
    ``{"error_rate", "n", "n_excluded", "verified": {"error_rate", "n"}, "unverified": {...}}``
    plus, when ``by`` is given, ``f"by_{by}"``: ``{value of meta[by]: {"error_rate", "n"}}``
    (labels without that key under ``None``). Rates are NaN where ``n`` is 0.
    """
    total = errs = excluded = 0
    groups: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    ver: dict[bool, list[int]] = {True: [0, 0], False: [0, 0]}
    for c in comparisons:
        gc, gr = c.gold_chosen, c.gold_rejected
        if gc is None or gr is None or c.tie or abs(gc - gr) <= 1e-12:
            excluded += 1
            continue
        wrong = int(gc < gr)
        total += 1
        errs += wrong
        if by is not None:
            key = c.meta.get(by)
            if isinstance(key, list | dict):  # unhashable JSON values group by their text
                key = repr(key)
            g = groups[key]
            g[0] += wrong
            g[1] += 1
        v = c.meta.get("verified")
        if isinstance(v, bool):
            ver[v][0] += wrong
            ver[v][1] += 1
    out: dict[str, Any] = {
        **_rate(errs, total),
        "n_excluded": excluded,
        "verified": _rate(*ver[True]),
        "unverified": _rate(*ver[False]),
    }
    if by is not None:
        keys = sorted(groups, key=lambda k: (k is None, str(type(k)), k if k is not None else 0))
        out[f"by_{by}"] = {k: _rate(*groups[k]) for k in keys}
    return out
