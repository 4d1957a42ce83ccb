"""The task interface: where gold lives.

A task supplies prompts, recovers an item from a prompt, scores a response with its hidden **gold**
reward (or says it has none), splits gold into parts for attribution, and declares its own behaviour
metrics (sycophancy for arithmetic, verbosity for the concise-answer task). Everything outside
``tasks/`` talks to a task only through :class:`Task`; a task built from a prompt file without gold
runs every stage, and the audit and report simply leave the gold curves out.

Optional capabilities a task may offer (checked with :func:`has_capability`):

* ``vocabulary()`` - the words of a closed-vocabulary task (the tokenizer is built from them; without
  it a byte-level BPE is trained on the corpus);
* ``corpus`` - a sampler of pretraining documents (:class:`TextSampler`), configured by
  ``pretrain.corpus``;
* ``demos`` - a sampler of SFT demonstrations (:class:`TextSampler`), configured by ``sft.demos``;
* ``verifier`` - the task's answers end in a number a frozen LM can verify (the reward model's
  generative-verifier feature, :mod:`rewardlab.rewards.verifier`);
* ``split_of(prompt)`` - ``train``/``eval``/``None``: which of the task's splits a prompt is in; a file of
  labels (``label.source: file``) is then split the same way, so audit prompts are never trained on.
* ``domain_features(item, response)`` - a dict of named numbers that encode what the domain knows about a
  response (the domain-knowledge reward model, ``reward.kind: domain``, :mod:`rewardlab.rewards.domain`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel


@dataclass(frozen=True)
class Gold:
    """The hidden gold of one response: its value and its parts (each in gold units, summing to it).

    ``correct`` is ``None`` for tasks without a notion of a correct answer; ``parseable`` is False
    when the response is not an answer at all (gold then is the task's floor).
    """

    value: float
    parseable: bool = True
    correct: bool | None = None
    parts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskInfo:
    """What the audit and the report need to know about a task, written to ``<run_dir>/task.json``.

    ``behaviors`` maps each behaviour metric (without the ``behavior/`` prefix) to a readable label;
    ``headline`` is the behaviour whose rise is the failure the task demonstrates (e.g.
    ``sycophancy_rate``), ``None`` when there is none. ``gold_parts`` names the parts of gold
    (audit keys ``gold/part_<name>``). ``group`` is the item metadata key by which metrics are also
    broken down (``difficulty``: ``gold/accuracy_d1`` ...), ``None`` for no breakdown. ``highlight`` is a
    boolean item metadata key whose samples the report shows first (``belief_wrong``: where sycophancy
    can show).
    """

    name: str
    has_gold: bool
    description: str = ""
    behaviors: Mapping[str, str] = field(default_factory=dict)
    headline: str | None = None
    headline_note: str = ""
    gold_parts: tuple[str, ...] = ()
    group: str | None = None
    highlight: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "has_gold": self.has_gold, "description": self.description,
                "behaviors": dict(self.behaviors), "headline": self.headline, "headline_note": self.headline_note,
                "gold_parts": list(self.gold_parts), "group": self.group, "highlight": self.highlight}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskInfo:
        return cls(name=str(d.get("name", "?")), has_gold=bool(d.get("has_gold", True)),
                   description=str(d.get("description", "")), behaviors=dict(d.get("behaviors") or {}),
                   headline=d.get("headline"), headline_note=str(d.get("headline_note", "")),
                   gold_parts=tuple(d.get("gold_parts") or ()), group=d.get("group"),
                   highlight=d.get("highlight"))  # fmt: skip


class TextSampler(Protocol):
    """A pretraining-corpus or demonstration sampler: one response for an item."""

    def __call__(self, item: Any, rng: random.Random) -> str: ...


@runtime_checkable
class Task(Protocol):
    """The protocol every task implements (see the module docstring for optional capabilities)."""

    info: TaskInfo

    def sample_item(self, rng: random.Random, split: str = "train") -> Any:
        """One item; ``split`` is ``train`` or ``eval`` (a dataset task keeps them disjoint)."""
        ...

    def sample_items(self, n: int, seed: int, split: str = "train") -> list[Any]: ...

    def prompt(self, item: Any) -> str:
        """The prompt text a policy sees for ``item``."""
        ...

    def item(self, prompt: str) -> Any:
        """Recover the item from its prompt; ``ValueError`` naming the prompt if it is not one."""
        ...

    def gold(self, item: Any, response: str) -> float | None:
        """The hidden gold reward of ``response`` (``None`` when the task has no gold)."""
        ...

    def gold_detail(self, item: Any, response: str) -> Gold | None:
        """Gold with its parts (attribution), parse and correctness; ``None`` without gold."""
        ...

    def behavior_flags(self, item: Any, response: str) -> dict[str, float | None]:
        """Per-sample value of each behaviour in ``info.behaviors`` (``None``: not applicable here)."""
        ...

    def meta(self, item: Any) -> dict[str, Any]:
        """Item metadata written next to samples and labels (e.g. ``difficulty``)."""
        ...

    def level(self, item: Any) -> int:
        """How hard the item is to check, 1-based: a simulated rater's ``verify_prob`` index."""
        ...

    def surface_features(self, item: Any, response: str) -> dict[str, float]:
        """What a rater who does not verify perceives (weighted by the rater's ``biases``)."""
        ...

    def rater_presets(self) -> Mapping[str, Mapping[str, Any]]:
        """Named simulated-rater profiles for this task (``unbiased`` must be one)."""
        ...


class SampledTexts:
    """Mixin for a task that samples its own pretraining corpus and SFT demonstrations.

    Set ``corpus_config`` and ``demos_config`` (the pydantic models of ``pretrain.corpus`` and
    ``sft.demos``) and implement ``corpus_response(item, cfg, rng)`` and ``demo_response(item, cfg, rng)``;
    the ``corpus`` and ``demos`` capabilities follow.
    """

    corpus_config: ClassVar[type[BaseModel]]
    demos_config: ClassVar[type[BaseModel]]

    def corpus_response(self, item: Any, cfg: Any, rng: random.Random) -> str:
        raise NotImplementedError

    def demo_response(self, item: Any, cfg: Any, rng: random.Random) -> str:
        raise NotImplementedError

    def corpus(self, config: Mapping[str, Any]) -> TextSampler:
        cfg = self.corpus_config.model_validate(dict(config))
        return lambda item, rng: self.corpus_response(item, cfg, rng)

    def demos(self, config: Mapping[str, Any]) -> TextSampler:
        cfg = self.demos_config.model_validate(dict(config))
        return lambda item, rng: self.demo_response(item, cfg, rng)


def has_capability(task: Task, name: str) -> bool:
    """Whether ``task`` offers an optional capability (``vocabulary``, ``corpus``, ``demos``, ``verifier``)."""
    if name == "verifier":
        return bool(getattr(task, "verifier", False))
    return callable(getattr(task, name, None))


def seeded_cycle(pool: Sequence[Any], n: int, seed: int) -> list[Any]:
    """``n`` items of ``pool``: the whole pool in a seeded order, repeated as needed (how file-backed tasks
    draw a split's items: every item once before any repeats)."""
    order = list(pool)
    random.Random(seed).shuffle(order)
    return [order[i % len(order)] for i in range(n)]


def word_count(response: str) -> int:
    """Words in a response (the ``behavior/length`` every task reports)."""
    return len(response.split())


def mean_flags(flags: Sequence[float | None]) -> float:
    """Mean over applicable samples (``None`` skipped); NaN when none applies."""
    vals = [float(f) for f in flags if f is not None]
    return sum(vals) / len(vals) if vals else math.nan


def validate_section(model: type[BaseModel] | None, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate a task-owned config section (``pretrain.corpus``, ``sft.demos``) with the task's model."""
    if model is None:
        if data:
            raise ValueError(f"{where}: this task has no such section, got keys {sorted(data)}")
        return {}
    return model.model_validate(dict(data)).model_dump(mode="json")
