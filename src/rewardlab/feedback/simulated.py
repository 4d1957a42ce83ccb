"""Simulated raters: where preference labels come from, and how they go wrong.

The label model is B-Pref's simulated "teacher" (Lee et al. 2021, "B-Pref: Benchmarking
Preference-Based Reinforcement Learning"): a Boltzmann-rational chooser with inverse temperature
``beta`` over a reward, plus its irrationalities: *skip* (both options look bad: no label),
*equal* (options look alike: a tie), *mistake* (with probability ``epsilon`` a uniformly random
label). Myopia has no counterpart here: a response is judged as a whole.

What the rater compares is not the gold reward but a **perceived** reward. Like the
time-constrained human evaluators of Wen et al. 2024 ("Language Models Learn to Mislead Humans via
RLHF", U-SOPHISTRY), the rater checks the answer only sometimes, less often for harder items
(``verify_prob`` per ``Task.level``). When it verifies it sees the gold reward (scaled by
``gold_scale``); when it does not, it falls back on the surface cues the task declares
(``Task.surface_features``, weighted by ``biases``): on arithmetic, agreeing with the user ("you are
right ."), sounding sure ("definitely"), repeating the user's stated belief, and length. The gap
between the two is exactly what a reward model trained on these labels can learn to exploit. The
presets (``unbiased``, ``time-pressed``, ...) are the task's (``Task.rater_presets``).

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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewardlab.feedback.records import Comparison, Ranking
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError

__all__ = [
    "RaterConfig",
    "SimulatedRater",
    "rater_error_rate",
]


class RaterConfig(BaseModel):
    """How a simulated rater perceives responses and turns perceptions into labels.

    ``preset`` names one of the task's rater profiles (``Task.rater_presets()``; ``unbiased`` always
    exists); it fills every field you do not set explicitly (also from a YAML dict such as
    ``{"preset": "sycophancy-prone", "beta": 5}``) when the config is resolved against the task
    (:meth:`resolve`). ``"custom"`` keeps the class defaults (an unbiased rater) and your fields.
    ``biases`` weighs the task's surface features (``Task.surface_features``: ``agree``,
    ``confident``, ``match_belief``, ``length`` on arithmetic); ``bias_<feature>: x`` is shorthand for
    ``biases: {<feature>: x}``.
    """

    model_config = ConfigDict(extra="forbid")

    preset: str = Field(
        "time-pressed",
        description="the task's rater profile; fills every field not set explicitly ('custom': class defaults)",
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
        default_factory=lambda: [1.0],
        description="chance the rater checks the answer, per item level 1, 2, 3 (later ones use the last)",
    )
    biases: dict[str, float] = Field(
        default_factory=dict,
        description="perceived bonus per unit of each task surface feature when the rater does not verify",
    )
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

    @model_validator(mode="before")
    @classmethod
    def _bias_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k.startswith("bias_") for k in data):
            data = dict(data)
            biases = dict(data.get("biases") or {})
            for k in [k for k in data if k.startswith("bias_")]:
                biases[k.removeprefix("bias_")] = data.pop(k)
            data["biases"] = biases
        return data

    @field_validator("verify_prob")
    @classmethod
    def _check_verify_prob(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("verify_prob needs at least one probability (for level 1)")
        if any(not (0.0 <= p <= 1.0) for p in v):
            raise ValueError(f"verify_prob entries must be probabilities in [0, 1], got {v}")
        return v

    @field_validator("biases")
    @classmethod
    def _check_biases(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: b for k, b in v.items() if not math.isfinite(b)}
        if bad:
            raise ValueError(f"biases must be finite, got {bad}")
        return v

    def resolve(self, presets: Mapping[str, Mapping[str, Any]]) -> RaterConfig:
        """This config with the preset's values in every field not set explicitly (biases merge)."""
        if self.preset == "custom":
            return self
        if self.preset not in presets:
            raise RewardlabError(
                f"label.rater.preset: unknown rater preset {self.preset!r} for this task; choose one of "
                f"{', '.join([*presets, 'custom'])}"
            )
        values = copy.deepcopy(dict(presets[self.preset]))
        explicit = self.model_dump(include=self.model_fields_set)
        if "biases" in explicit:
            explicit["biases"] = {**values.get("biases", {}), **explicit["biases"]}
        out = RaterConfig.model_validate({**values, **explicit})
        return out

    @classmethod
    def from_preset(cls, name: str, task: Task, **overrides: Any) -> RaterConfig:
        """The task's preset ``name``, then ``overrides`` (any field)."""
        return cls(preset=name, **overrides).resolve(task.rater_presets())

    def verify_probability(self, level: int) -> float:
        """``verify_prob`` for an item level (1-based; beyond the list, the last entry)."""
        return self.verify_prob[max(1, min(level, len(self.verify_prob))) - 1]


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
    same order give the same labels. What it perceives comes from the task: gold when it verifies,
    ``biases`` x :meth:`Task.surface_features` when it does not.
    """

    def __init__(self, task: Task, config: RaterConfig, seed: int, name: str | None = None) -> None:
        self.task = task
        self.config = config.resolve(task.rater_presets())
        self.seed = seed
        self.name = name if name is not None else config.preset
        self._rng = random.Random(seed)

    # ------------------------------------------------------------------------- perception
    def _problem(self, problem: Any) -> Any:
        if not isinstance(problem, str):
            return problem
        try:
            return self.task.item(problem)
        except ValueError as e:
            raise RewardlabError(f"rater: {e}") from None

    def perceived(self, problem: Any, response: str, verified: bool) -> float:
        """The reward the rater perceives; ``verified``: whether it checks the answer."""
        c = self.config
        p = self._problem(problem)
        g = self.task.gold_detail(p, response)
        if g is not None and not g.parseable:
            return c.gold_scale * g.value  # plainly not an answer, checked or not
        if verified:
            if g is None:
                raise RewardlabError("rater: this task has no gold to verify against; set verify_prob: [0]")
            return c.gold_scale * g.value
        feats = self.task.surface_features(p, response)
        return sum(c.biases.get(k, 0.0) * v for k, v in feats.items())

    def _draw_verified(self, p: Any) -> bool:
        return self._rng.random() < self.config.verify_probability(self.task.level(p))

    # ---------------------------------------------------------------------------- labels
    def compare(self, problem: Any, a: str, b: str) -> Comparison | None:
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
            prompt=self.task.prompt(p),
            chosen=chosen,
            rejected=rejected,
            rater=self.name,
            gold_chosen=self.task.gold(p, chosen),
            gold_rejected=self.task.gold(p, rejected),
            meta={
                "verified": verified,
                **self.task.meta(p),
                "perceived_chosen": r_ch,
                "perceived_rejected": r_rej,
                "mistake": mistake,
                "tie": tie,
            },
        )

    def rank(self, problem: Any, responses: Sequence[str]) -> Ranking:
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
            prompt=self.task.prompt(p),
            completions=list(responses),
            ranking=order,
            rater=self.name,
            golds=[self.task.gold(p, r) for r in responses] if self.task.info.has_gold else None,
            meta={
                "verified": verified,
                **self.task.meta(p),
                "perceived": perceived,
                "mistake": mistake,
            },
        )

    def state_dict(self) -> dict[str, Any]:
        """The rater's random state (for resuming a labelling loop)."""
        return {"rng": self._rng.getstate()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        st = state["rng"]
        self._rng.setstate((st[0], tuple(st[1]), st[2]) if isinstance(st, list) else st)

    def label_pairs(self, problems: Sequence[Any], pairs: Sequence[tuple[str, str]]) -> list[Comparison]:
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
