"""AI feedback (RLAIF): judges that compare two responses under a constitution principle, as a rater source.

The judge protocol is ``(prompt, response A, response B, principle) -> P(A preferred)``. Each judge here
answers the narrower question ``P(the response shown first is preferred)``; :func:`judge_pairs` asks it
in both orders and averages, which cancels a judge's position bias (Zheng et al. 2023, "Judging
LLM-as-a-Judge"; Lee et al. 2023, "RLAIF")::

    q_ab = P(first preferred | A shown first),  q_ba = P(first preferred | B shown first)
    P(A preferred) = (q_ab + 1 - q_ba) / 2,      position bias = (q_ab + q_ba) / 2 - 1/2

Judges:

* :class:`LMJudge`: any local causal LM. The prompt is the constitution's comparison template filled with
  a principle, the question and the two responses (through the tokenizer's chat template when it has
  one); the probability is read off the log-probs of the two option tokens (``" A"`` / ``" B"``) with
  :class:`~rewardlab.evals.scoring.LMScorer`: ``q = sigmoid(log p(A) - log p(B))``.
* :class:`RewardModelJudge`: a trained reward model, ``q = sigmoid((r_first - r_second) / temperature)``.
* :class:`RuleJudge`: the task's gold (for toy tasks and tests), ``q = sigmoid(beta (g_first - g_second)
  + first_bias)``; ``first_bias`` plants a position bias.

:class:`JudgeRater` puts a judge behind the :class:`~rewardlab.feedback.base.Rater` protocol
(``label.source: judge``), so AI labels go through the same reward models, optimizers, audit and report
as simulated and human ones. Each label's ``meta`` keeps the judge's probabilities (``p_a``,
``q_ab``, ``q_ba``), the principle and which response was shown first, so the label stage measures the
judge's agreement with gold, its position bias and the decisions order averaging changed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field

from rewardlab.feedback.constitution import Constitution, Principle, load_constitution
from rewardlab.feedback.records import Comparison, Ranking, Text
from rewardlab.feedback.simulated import RaterConfig, SimulatedRater
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError

__all__ = [
    "Judge",
    "JudgeMixConfig",
    "JudgeRater",
    "JudgeScore",
    "JudgeSourceConfig",
    "JudgeTrainConfig",
    "LMJudge",
    "MixedRater",
    "RewardModelJudge",
    "RuleJudge",
    "judge_label_stats",
    "judge_pairs",
    "rank_by_judge",
]

#: A principle that says nothing, for judges that ignore principles (rule, reward model) without a constitution.
ANY = Principle(name="any", comparison="which response is better ?", critique="-", revision="-")


# ------------------------------------------------------------------------------------------- configs
class JudgeTrainConfig(BaseModel):
    """The tiny-model path: fine-tune a judge LM on K comparisons labelled by a (simulated) rater, rendered
    in the judge format (both orders), with the SFT loss on the option token (``rewardlab judge``)."""

    model_config = ConfigDict(extra="forbid")

    labels: int = Field(
        1000, gt=0, description="K: labelled comparisons the judge learns from (the human budget)"
    )
    rater: RaterConfig = Field(
        default_factory=lambda: RaterConfig(preset="unbiased"), description="who labels the K comparisons"
    )
    init_path: str | None = Field(None, description="the judge's starting LM; default: <run_dir>/sft/model")
    steps: int = Field(400, gt=0, description="optimizer steps")
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    max_length: int = Field(
        128, ge=32, description="the judge's positions (a tiny model's are raised to this)"
    )
    eval_pairs: int = Field(600, gt=0, description="held-out pairs the judge is measured on against gold")
    eval_every: int = Field(100, gt=0)


class JudgeMixConfig(BaseModel):
    """Mix AI labels with another rater's: a seeded share of the pairs goes to the simulated rater."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(
        0.0, ge=0, le=1, description="share of pairs labelled by `rater` instead of the judge"
    )
    rater: RaterConfig = Field(default_factory=lambda: RaterConfig(preset="time-pressed"))


class JudgeSourceConfig(BaseModel):
    """``label.source: judge``: which judge labels the arm's pairs, under which constitution, and how."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["lm", "reward_model", "rule"] = Field(
        "lm", description="an LM judge, a reward model, or the task's gold"
    )
    model_path: str | None = Field(
        None,
        description="lm: a local causal LM (an instruct model, or one `rewardlab judge` trained; default "
        "<run_dir>/<arm>/judge/model, trained on first use); reward_model: a reward-model folder",
    )
    constitution: str = Field("configs/constitutions/arithmetic.yaml", description="constitution YAML file")
    principle: str | None = Field(
        None, description="always this principle (default: the constitution's selection)"
    )
    order_average: bool = Field(True, description="score both orders and average (cancels position bias)")
    decision: Literal["argmax", "sample"] = Field(
        "argmax", description="label the more probable response, or sample the label from P(A preferred)"
    )
    tie_threshold: float = Field(0.0, ge=0, lt=0.5, description="|P(A) - 1/2| below this is a tie")
    temperature: float = Field(1.0, gt=0, description="reward_model: P = sigmoid(diff / temperature)")
    rule_beta: float = Field(5.0, gt=0, description="rule: P = sigmoid(beta * gold difference + first_bias)")
    first_bias: float = Field(
        0.0, description="rule: a planted position bias (logit) toward the first response"
    )
    batch_size: int = Field(64, gt=0)
    train: JudgeTrainConfig = JudgeTrainConfig()
    mix: JudgeMixConfig = JudgeMixConfig()


# -------------------------------------------------------------------------------------------- judges
class JudgeScore(NamedTuple):
    """One judged pair: ``p_a`` = P(A preferred) (order-averaged when ``q_ba`` is set), and the raw
    first-position probabilities of each order (``q_ba`` is NaN when only one order was asked)."""

    p_a: float
    q_ab: float
    q_ba: float


class Judge(Protocol):
    """A judge: ``P(first preferred)`` for each (prompt, first, second, principle)."""

    name: str

    def p_first(self, prompts: Sequence[Text], firsts: Sequence[str], seconds: Sequence[str],
                principles: Sequence[Principle]) -> list[float]: ...  # fmt: skip


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _plain(prompt: Text) -> str:
    """A prompt as one string (chat messages as ``role: content`` lines)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def judge_pairs(judge: Judge, prompts: Sequence[Text], a: Sequence[str], b: Sequence[str],
                principles: Sequence[Principle], order_average: bool = True) -> list[JudgeScore]:  # fmt: skip
    """``P(a preferred)`` for each pair: both orders averaged, or A shown first only."""
    q_ab = judge.p_first(prompts, a, b, principles)
    if not order_average:
        return [JudgeScore(q, q, float("nan")) for q in q_ab]
    q_ba = judge.p_first(prompts, b, a, principles)
    return [JudgeScore((x + 1.0 - y) / 2.0, x, y) for x, y in zip(q_ab, q_ba, strict=True)]


@dataclass
class LMJudge:
    """A causal LM as judge: the option tokens' log-probs after the constitution's comparison prompt.

    ``scorer`` is an :class:`~rewardlab.evals.scoring.LMScorer` (anything with ``logprobs(contexts,
    continuations)``) and ``render`` turns a judge prompt into the model's context (the tokenizer's chat
    format, :func:`rewardlab.policies.tokenizer.prompt_text`, as the judge was trained); the pipeline that
    loads the model builds both (:func:`rewardlab.pipelines.judge.load_judge`).
    """

    scorer: Any
    render: Callable[[str], str]
    constitution: Constitution
    name: str = "lm-judge"

    def contexts(self, prompts: Sequence[Text], firsts: Sequence[str], seconds: Sequence[str],
                 principles: Sequence[Principle]) -> list[str]:  # fmt: skip
        """The judge's contexts: the comparison prompts, rendered."""
        return [self.render(self.constitution.comparison_prompt(pr, _plain(p), f, s))
                for p, f, s, pr in zip(prompts, firsts, seconds, principles, strict=True)]  # fmt: skip

    def p_first(self, prompts: Sequence[Text], firsts: Sequence[str], seconds: Sequence[str],
                principles: Sequence[Principle]) -> list[float]:  # fmt: skip
        """``sigmoid(log p(" A" | ctx) - log p(" B" | ctx))``: the first option's share of the two."""
        ctx = self.contexts(prompts, firsts, seconds, principles)
        if not ctx:
            return []
        opt_a, opt_b = (" " + o for o in self.constitution.options)
        lp = self.scorer.logprobs([c for c in ctx for _ in (0, 1)], [o for _ in ctx for o in (opt_a, opt_b)])
        return [_sigmoid(lp[2 * i] - lp[2 * i + 1]) for i in range(len(ctx))]


@dataclass
class RewardModelJudge:
    """A reward model (any :class:`~rewardlab.rewards.proxy.Proxy`) as judge: ``sigmoid(dr / temperature)``."""

    proxy: Any
    temperature: float = 1.0
    name: str = "rm-judge"

    def p_first(self, prompts: Sequence[Text], firsts: Sequence[str], seconds: Sequence[str],
                principles: Sequence[Principle]) -> list[float]:  # fmt: skip
        r1 = self.proxy(list(prompts), list(firsts))
        r2 = self.proxy(list(prompts), list(seconds))
        return [_sigmoid((x - y) / self.temperature) for x, y in zip(r1, r2, strict=True)]


@dataclass
class RuleJudge:
    """The task's gold as judge (toy tasks, tests): ``sigmoid(beta (g_first - g_second) + first_bias)``."""

    task: Task
    beta: float = 5.0
    first_bias: float = 0.0
    name: str = "rule-judge"

    def p_first(self, prompts: Sequence[Text], firsts: Sequence[str], seconds: Sequence[str],
                principles: Sequence[Principle]) -> list[float]:  # fmt: skip
        out = []
        for p, f, s in zip(prompts, firsts, seconds, strict=True):
            item = self.task.item(p) if isinstance(p, str) else p
            g1, g2 = self.task.gold(item, f), self.task.gold(item, s)
            if g1 is None or g2 is None:
                raise RewardlabError("rule judge: this task has no gold; use an lm or reward_model judge")
            out.append(_sigmoid(self.beta * (g1 - g2) + self.first_bias))
        return out


def rank_by_judge(judge: Judge, prompt: Text, responses: Sequence[str], principle: Principle,
                  order_average: bool = True) -> tuple[list[int], list[float]]:  # fmt: skip
    """Rank K responses by their mean win probability over all K(K-1)/2 judged pairs (a Borda count).

    Returns the ranking (indices, best first; ties by index) and each response's mean win probability."""
    k = len(responses)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    scores = judge_pairs(judge, [prompt] * len(pairs), [responses[i] for i, _ in pairs],
                         [responses[j] for _, j in pairs], [principle] * len(pairs), order_average)  # fmt: skip
    wins = [0.0] * k
    for (i, j), s in zip(pairs, scores, strict=True):
        wins[i] += s.p_a
        wins[j] += 1.0 - s.p_a
    mean = [w / (k - 1) for w in wins]
    return sorted(range(k), key=lambda i: (-mean[i], i)), mean


# --------------------------------------------------------------------------------------- the rater
class JudgeRater:
    """A judge behind the :class:`~rewardlab.feedback.base.Rater` protocol (``label.source: judge``).

    Each query draws the principle and the label from a private ``random.Random(seed)`` (two draws,
    whatever the outcome), so the same seed and queries give the same labels. :meth:`prefetch` judges many
    pairs in batches first (a real LM judge is far faster batched); :meth:`compare` then reads the cache.
    """

    def __init__(self, judge: Judge, task: Task, constitution: Constitution | None, seed: int, name: str,
                 order_average: bool = True, decision: str = "argmax", tie_threshold: float = 0.0,
                 principle: str | None = None) -> None:  # fmt: skip
        self.judge, self.task, self.constitution = judge, task, constitution
        self.name, self.seed = name, seed
        self.order_average, self.decision, self.tie_threshold = order_average, decision, tie_threshold
        self.fixed = constitution.principle(principle) if (constitution and principle) else None
        self._rng = random.Random(seed)
        self._cache: dict[tuple[str, str, str], tuple[Principle, JudgeScore]] = {}

    def _pick(self) -> Principle:
        if self.constitution is None:
            self._rng.random()
            return ANY
        p = self.constitution.pick(self._rng)
        return self.fixed or p

    def _item(self, problem: Any) -> Any:
        return self.task.item(problem) if isinstance(problem, str) else problem

    def prefetch(self, items: Sequence[Any], completions: Sequence[Sequence[str]]) -> None:
        """Judge the pair of every item with two distinct completions in batches, drawing the principles now
        (a K-wise ranking is judged in one batch by :meth:`rank`)."""
        keys, prompts, a, b, principles = [], [], [], [], []
        for item, cs in zip(items, completions, strict=True):
            prompt = self.task.prompt(self._item(item))
            if len(cs) != 2 or cs[0] == cs[1] or (prompt, cs[0], cs[1]) in self._cache:
                continue
            keys.append((prompt, cs[0], cs[1]))
            prompts.append(prompt)
            a.append(cs[0])
            b.append(cs[1])
            principles.append(self._pick())
        for start in range(0, len(keys), 4096):
            sl = slice(start, start + 4096)
            scores = judge_pairs(self.judge, prompts[sl], a[sl], b[sl], principles[sl], self.order_average)
            for key, pr, s in zip(keys[sl], principles[sl], scores, strict=True):
                self._cache[key] = (pr, s)

    def _score(self, prompt: str, a: str, b: str) -> tuple[Principle, JudgeScore]:
        if (prompt, a, b) in self._cache:
            return self._cache.pop((prompt, a, b))
        if (prompt, b, a) in self._cache:
            pr, s = self._cache.pop((prompt, b, a))
            if self.order_average:
                return pr, JudgeScore(1.0 - s.p_a, s.q_ba, s.q_ab)
            self._cache[(prompt, b, a)] = (pr, s)
        pr = self._pick()
        return pr, judge_pairs(self.judge, [prompt], [a], [b], [pr], self.order_average)[0]

    def compare(self, problem: Any, a: str, b: str) -> Comparison | None:
        """Label one pair: the judge's more probable response (or one sampled from its probability)."""
        p = self._item(problem)
        prompt = self.task.prompt(p)
        principle, s = self._score(prompt, a, b)
        u = self._rng.random()
        tie = abs(s.p_a - 0.5) < self.tie_threshold or s.p_a == 0.5
        a_wins = (s.p_a > 0.5 or (tie and u < 0.5)) if self.decision == "argmax" else u < s.p_a
        chosen, rejected = (a, b) if a_wins else (b, a)
        gold = self.task.info.has_gold
        return Comparison(prompt=prompt, chosen=chosen, rejected=rejected, rater=self.name,
                          gold_chosen=self.task.gold(p, chosen) if gold else None,
                          gold_rejected=self.task.gold(p, rejected) if gold else None,
                          meta={**self.task.meta(p), "judge": self.judge.name, "principle": principle.name,
                                "p_a": s.p_a, "q_ab": s.q_ab, "q_ba": None if math.isnan(s.q_ba) else s.q_ba,
                                "a_chosen": a_wins, "tie": tie})  # fmt: skip

    def rank(self, problem: Any, responses: Sequence[str]) -> Ranking:
        """Rank K responses by their mean win probability against the others (:func:`rank_by_judge`)."""
        if len(responses) < 2:
            raise RewardlabError(f"judge: a ranking needs at least 2 responses, got {len(responses)}")
        p = self._item(problem)
        principle = self._pick()
        order, wins = rank_by_judge(self.judge, self.task.prompt(p), responses, principle, self.order_average)
        return Ranking(prompt=self.task.prompt(p), completions=list(responses), ranking=order, rater=self.name,
                       golds=[self.task.gold(p, r) for r in responses] if self.task.info.has_gold else None,
                       meta={**self.task.meta(p), "judge": self.judge.name, "principle": principle.name,
                             "win_prob": wins})  # fmt: skip

    def label_pairs(self, problems: Sequence[Any], pairs: Sequence[tuple[str, str]]) -> list[Comparison]:
        if len(problems) != len(pairs):
            raise RewardlabError(
                f"judge: {len(problems)} problems but {len(pairs)} pairs; give one pair per problem"
            )
        self.prefetch(problems, [list(x) for x in pairs])
        return [
            c for p, (a, b) in zip(problems, pairs, strict=True) if (c := self.compare(p, a, b)) is not None
        ]

    def label_stats(self, comparisons: Sequence[Comparison]) -> dict[str, float]:
        return judge_label_stats(comparisons)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.getstate()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        st = state["rng"]
        self._rng.setstate((st[0], tuple(st[1]), st[2]) if isinstance(st, list) else st)


class MixedRater:
    """AI labels mixed with another rater's: each query goes to ``other`` with probability ``fraction``
    (e.g. AI labels for one criterion and people for another); ``meta["source"]`` says which labelled it."""

    def __init__(self, judge: JudgeRater, other: Any, fraction: float, seed: int, name: str) -> None:
        self.judge, self.other, self.fraction, self.name = judge, other, fraction, name
        self._rng = random.Random(seed + 7919)

    def prefetch(self, items: Sequence[Any], completions: Sequence[Sequence[str]]) -> None:
        self.judge.prefetch(items, completions)

    def compare(self, problem: Any, a: str, b: str) -> Comparison | None:
        use_other = self._rng.random() < self.fraction
        c = (self.other if use_other else self.judge).compare(problem, a, b)
        if c is None:
            return None
        return Comparison(prompt=c.prompt, chosen=c.chosen, rejected=c.rejected, rater=self.name, margin=c.margin,
                          gold_chosen=c.gold_chosen, gold_rejected=c.gold_rejected,
                          meta={**c.meta, "source": "simulated" if use_other else "judge"})  # fmt: skip

    def rank(self, problem: Any, responses: Sequence[str]) -> Ranking:
        return (self.other if self._rng.random() < self.fraction else self.judge).rank(problem, responses)

    def label_pairs(self, problems: Sequence[Any], pairs: Sequence[tuple[str, str]]) -> list[Comparison]:
        self.prefetch(problems, [list(x) for x in pairs])
        return [
            c for p, (a, b) in zip(problems, pairs, strict=True) if (c := self.compare(p, a, b)) is not None
        ]

    def label_stats(self, comparisons: Sequence[Comparison]) -> dict[str, float]:
        own = [c for c in comparisons if c.meta.get("source") == "judge"]
        return {**judge_label_stats(own), "judge/mixed_fraction": 1.0 - len(own) / max(1, len(comparisons))}

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self._rng.getstate(),
            "judge": self.judge.state_dict(),
            "other": self.other.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        st = state["rng"]
        self._rng.setstate((st[0], tuple(st[1]), st[2]) if isinstance(st, list) else st)
        self.judge.load_state_dict(state["judge"])
        self.other.load_state_dict(state["other"])


# ------------------------------------------------------------------------------------ measurements
def _gold_sides(c: Comparison) -> tuple[float, float] | None:
    """(gold of the response shown first, gold of the second), or None without distinct golds."""
    if c.gold_chosen is None or c.gold_rejected is None or abs(c.gold_chosen - c.gold_rejected) <= 1e-12:
        return None
    return (
        (c.gold_chosen, c.gold_rejected) if c.meta.get("a_chosen", True) else (c.gold_rejected, c.gold_chosen)
    )


def judge_label_stats(comparisons: Sequence[Comparison]) -> dict[str, float]:
    """What a judge's labels say about the judge (from each label's ``meta``), as ``judge/*`` metrics.

    * ``position_bias``: mean ``(q_ab + q_ba)/2 - 1/2``, the pull toward the first slot of one order alone
      (order averaging removes it exactly: the averaged judge is symmetric);
    * ``order_flip_rate``: share of pairs whose single-order decision changes when the order is swapped;
    * ``error_first_order`` / ``error_averaged``: disagreement with gold deciding from ``q_ab`` alone
      (A shown first) or from the order-averaged probability, over pairs with distinct golds, and the
      latter by difficulty when the task's ``meta`` has it.
    """
    both = [c for c in comparisons if isinstance(c.meta.get("q_ba"), float | int)]
    out: dict[str, float] = {"judge/labels": float(len(comparisons))}
    if both:
        out["judge/position_bias"] = sum((c.meta["q_ab"] + c.meta["q_ba"]) / 2 - 0.5 for c in both) / len(
            both
        )
        out["judge/order_flip_rate"] = sum(
            (c.meta["q_ab"] > 0.5) == (c.meta["q_ba"] > 0.5) for c in both
        ) / len(both)
    single_err, avg_err, n = 0, 0, 0
    by: dict[Any, list[int]] = {}
    for c in comparisons:
        sides = _gold_sides(c)
        if sides is None or "q_ab" not in c.meta:
            continue
        a_better = sides[0] > sides[1]
        n += 1
        single_err += int((c.meta["q_ab"] > 0.5) != a_better)
        wrong = int((c.meta["p_a"] > 0.5) != a_better)
        avg_err += wrong
        g = by.setdefault(c.meta.get("difficulty"), [0, 0])
        g[0] += wrong
        g[1] += 1
    if n:
        out["judge/error_first_order"] = single_err / n
        out["judge/error_averaged"] = avg_err / n
        for k, (e, m) in sorted(by.items(), key=lambda kv: str(kv[0])):
            if k is not None:
                out[f"judge/error_averaged_difficulty_{k}"] = e / m
    return out


# ------------------------------------------------------------------------------------------ factory
def make_judge_rater(cfg: JudgeSourceConfig, task: Task, seed: int, name: str,
                     judge: Judge | None = None) -> JudgeRater | MixedRater:  # fmt: skip
    """``label.source: judge``: the judge as a rater, mixed with a simulated rater when ``mix.fraction`` > 0.

    A ``rule`` judge is built here; an ``lm`` or ``reward_model`` judge is a model the caller loaded
    (:func:`rewardlab.pipelines.judge.load_judge`), passed as ``judge``."""
    if cfg.kind == "rule":
        judge = RuleJudge(task, cfg.rule_beta, cfg.first_bias)
    elif judge is None:
        raise RewardlabError(
            f"label.judge: a {cfg.kind} judge is a model; the label stage loads it from model_path"
        )
    constitution = load_constitution(cfg.constitution) if cfg.kind == "lm" or cfg.principle else None
    rater = JudgeRater(judge, task, constitution, seed, name, cfg.order_average, cfg.decision, cfg.tie_threshold,
                       cfg.principle)  # fmt: skip
    if cfg.mix.fraction <= 0:
        return rater
    return MixedRater(rater, SimulatedRater(task, cfg.mix.rater, seed=seed + 1, name=name), cfg.mix.fraction, seed,
                      name)  # fmt: skip
