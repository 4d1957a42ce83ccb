"""Feedback sources: who judges, behind one interface, built by one factory from ``label.source``.

Two kinds of source exist:

* a :class:`Rater` labels pairs (or K-wise sets) the lab samples: ``simulated`` (the B-Pref teacher
  of :mod:`rewardlab.feedback.simulated`, perceiving what the task declares), and later ``judge``
  (AI feedback) and ``human`` (the labeling app);
* a :class:`LabelFile` holds comparisons made elsewhere: ``file`` (any TRL-format JSONL, with a
  column mapping; :mod:`rewardlab.feedback.file`).

``rewardlab label`` asks :func:`rewardlab.feedback.factory.make_source` for the arm's source and writes
``<arm>/label/{train,eval}.jsonl`` either way, so reward models, DPO and the report read every source
the same way. An arm is named by ``label.name`` (default: the rater preset, or the source).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from rewardlab.feedback.records import Comparison, Ranking

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
