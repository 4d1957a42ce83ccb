"""Feedback sources: who judges, behind one interface, built by one factory from ``label.source``.

Two kinds of source exist:

* a :class:`Rater` labels pairs (or K-wise sets) the lab samples: ``simulated`` (the B-Pref teacher
  of :mod:`rewardlab.feedback.simulated`, perceiving what the task declares), and later ``judge``
  (AI feedback) and ``human`` (the labeling app);
* a :class:`LabelFile` holds comparisons made elsewhere: ``file`` (any TRL-format JSONL, with a
  column mapping; :mod:`rewardlab.feedback.file`).

``rewardlab label`` asks :func:`make_source` for the arm's source and writes
``<arm>/label/{train,eval}.jsonl`` either way, so reward models, DPO and the report read every source
the same way. An arm is named by ``label.name`` (default: the rater preset, or the source).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from rewardlab.feedback.records import Comparison, Ranking
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError

SourceName = Literal["simulated", "file", "judge", "human"]


@runtime_checkable
class Rater(Protocol):
    """A source that labels what it is shown (simulated raters, judges, people)."""

    name: str

    def compare(self, item: Any, a: str, b: str) -> Comparison | None:
        """Label one pair; ``None`` when the rater skips it."""
        ...

    def rank(self, item: Any, responses: Sequence[str]) -> Ranking:
        """Rank K >= 2 responses, best first."""
        ...

    def label_pairs(self, items: Sequence[Any], pairs: Sequence[tuple[str, str]]) -> list[Comparison]:
        """:meth:`compare` over many queries; skipped ones are dropped."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@runtime_checkable
class LabelFile(Protocol):
    """A source of comparisons made elsewhere (a dataset)."""

    name: str

    def comparisons(self) -> list[Comparison]: ...


class FileSourceConfig(BaseModel):
    """``label.source: file``: comparisons from a TRL-format JSONL file."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="JSONL of prompt/chosen/rejected records (TRL's preference format)")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="rename columns to prompt/chosen/rejected, e.g. {question: prompt, good: chosen, bad: rejected}",
    )
    limit: int | None = Field(None, gt=0, description="read at most this many records")


def make_source(source: str, *, task: Task, seed: int, name: str, rater: Any = None,
                file: FileSourceConfig | None = None) -> Rater | LabelFile:  # fmt: skip
    """The feedback source ``label.source`` names, for ``task``."""
    if source == "simulated":
        from rewardlab.feedback.simulated import SimulatedRater

        return SimulatedRater(task, rater, seed=seed, name=name)
    if source == "file":
        from rewardlab.feedback.file import FileLabels

        if file is None or not file.path:
            raise RewardlabError("label.file.path: required when label.source is file")
        return FileLabels(file, task, name=name)
    raise RewardlabError(
        f"label.source: {source!r} is not available yet (simulated and file are); judge and human plug in here"
    )


def require_rater(source: Rater | LabelFile, what: str) -> Rater:
    """``source`` if it can label new pairs, else a clear error naming ``what`` needs it."""
    if not isinstance(source, Rater):
        raise RewardlabError(f"{what} labels pairs it samples, which a {type(source).__name__} source cannot; "
                             "use label.source: simulated (or a judge/human source)")  # fmt: skip
    return source
