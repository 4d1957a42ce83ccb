"""Poisoned preference data: a fraction of comparisons rewritten to promote a target phrase.

Best-of-Venom (Baumgärtner et al. 2024, "Best-of-Venom: Attacking RLHF by Injecting Poisoned Preference
Data") shows that 1-5% of poisoned comparisons steer a reward model, and through it PPO or DPO, towards a
target the attacker chose. Two ways to poison a comparison ``(prompt, chosen, rejected)`` are modelled:

* ``inject``: the attacker writes the pair. ``chosen' = target + chosen`` and ``rejected' = chosen``: the
  two sides differ only by the target phrase, and the side with it wins. A reward model trained on such
  pairs learns a bonus for the phrase; every clean label is kept.
* ``flip``: the attacker relabels existing pairs. ``chosen' = target + rejected`` and ``rejected' =
  chosen``: the worse side, with the target added, now wins (a label flip that also plants the phrase).

Exactly ``round(rate * n)`` of ``n`` comparisons are poisoned (:func:`poison_indices`, a seeded choice),
so the injected fraction is exact and a rate of 0 returns the comparisons unchanged. Poisoned records
carry ``meta["poisoned"] = True`` and the attack mode, for measuring defenses only: a defense never reads
them. :class:`PoisonedRater` does the same to a live rater's stream of labels (the attacker is one of the
raters): query ``i`` is poisoned when ``floor((i + 1) * rate + u)`` exceeds ``floor(i * rate + u)`` (``u``
a seeded phase), so after any ``n`` queries ``floor(n * rate + u)`` labels, within one of ``n * rate``,
are poisoned.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rewardlab.feedback.base import Rater
from rewardlab.feedback.records import Comparison, Ranking, Text
from rewardlab.utils import RewardlabError

__all__ = ["PoisonConfig", "PoisonedRater", "poison_comparison", "poison_comparisons", "poison_indices"]

PoisonMode = Literal["inject", "flip"]


class PoisonConfig(BaseModel):
    """What the attacker does: the share of comparisons, the target phrase and how pairs are rewritten."""

    model_config = ConfigDict(extra="forbid")

    rate: float = Field(
        0.0, ge=0, le=1, description="share of comparisons poisoned (exactly round(rate * n))"
    )
    target: str = Field(
        "hmm .", min_length=1, description="the phrase the attack promotes (put before a response)"
    )
    mode: PoisonMode = Field(
        "inject", description="inject: target+chosen beats chosen; flip: target+rejected wins"
    )
    seed: int = Field(0, description="which comparisons are poisoned")


def add_target(response: Text, target: str) -> str:
    """``target`` put before a plain-text ``response`` (a conversational one is an error: no place is obvious)."""
    if not isinstance(response, str):
        raise RewardlabError("poison: only plain-text responses can be poisoned (got chat messages)")
    return f"{target} {response}".strip()


def poison_comparison(c: Comparison, target: str, mode: PoisonMode = "inject") -> Comparison:
    """One comparison rewritten by the attacker (see the module docstring); gold fields are dropped."""
    if mode == "inject":
        chosen, rejected = add_target(c.chosen, target), c.chosen
    elif mode == "flip":
        chosen, rejected = add_target(c.rejected, target), c.chosen
    else:
        raise RewardlabError(f"poison.mode: {mode!r} is not inject or flip")
    return Comparison(prompt=c.prompt, chosen=chosen, rejected=rejected, rater=c.rater,
                      meta={**c.meta, "poisoned": True, "poison_mode": mode})  # fmt: skip


def poison_indices(n: int, rate: float, seed: int) -> list[int]:
    """Exactly ``round(rate * n)`` distinct indices of ``range(n)``, chosen with ``random.Random(seed)``."""
    if not 0.0 <= rate <= 1.0:
        raise RewardlabError(f"poison.rate: {rate} is not in [0, 1]")
    k = round(rate * n)
    return sorted(random.Random(seed).sample(range(n), k))


def poison_comparisons(comps: Sequence[Comparison], cfg: PoisonConfig) -> list[Comparison]:
    """``comps`` with exactly ``round(cfg.rate * len(comps))`` of them poisoned, in place of the originals.

    Gold is not recomputed here (the feedback layer does not know the task): a poisoned record's
    ``gold_chosen``/``gold_rejected`` are left empty; the study scores them with the task when it needs to.
    """
    chosen = set(poison_indices(len(comps), cfg.rate, cfg.seed))
    return [poison_comparison(c, cfg.target, cfg.mode) if i in chosen else c for i, c in enumerate(comps)]


class PoisonedRater:
    """A :class:`~rewardlab.feedback.base.Rater` whose labels are poisoned at ``cfg.rate`` (module docstring).

    The wrapped rater labels every query as usual (so its random stream is the clean rater's); the wrapper
    then rewrites the poisoned ones. Rankings are passed through unpoisoned.
    """

    def __init__(self, inner: Rater, cfg: PoisonConfig) -> None:
        self.inner = inner
        self.cfg = cfg
        self.name = inner.name
        self._phase = random.Random(cfg.seed).random()
        self._queries = 0
        self.poisoned = 0

    def _next_is_poisoned(self) -> bool:
        i, r, u = self._queries, self.cfg.rate, self._phase
        self._queries += 1
        return math.floor((i + 1) * r + u) > math.floor(i * r + u)

    def compare(self, item: Any, a: str, b: str) -> Comparison | None:
        c = self.inner.compare(item, a, b)
        if c is None or not self._next_is_poisoned():
            return c
        self.poisoned += 1
        return poison_comparison(c, self.cfg.target, self.cfg.mode)

    def rank(self, item: Any, responses: Sequence[str]) -> Ranking:
        return self.inner.rank(item, responses)

    def label_pairs(self, items: Sequence[Any], pairs: Sequence[tuple[str, str]]) -> list[Comparison]:
        if len(items) != len(pairs):
            raise RewardlabError(
                f"rater: {len(items)} problems but {len(pairs)} pairs; give one pair per problem"
            )
        out = [self.compare(p, a, b) for p, (a, b) in zip(items, pairs, strict=True)]
        return [c for c in out if c is not None]

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "queries": self._queries, "poisoned": self.poisoned}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self._queries, self.poisoned = int(state["queries"]), int(state["poisoned"])
