"""The one factory of feedback sources: ``label.source`` -> a :class:`~rewardlab.feedback.base.Rater` or a
:class:`~rewardlab.feedback.base.LabelFile`. To add a source, implement one of those protocols in its own
module under ``feedback/`` and add a branch here (docs/feedback.md)."""

from __future__ import annotations

from rewardlab.feedback.base import LabelFile, Rater
from rewardlab.feedback.file import FileLabels, FileSourceConfig
from rewardlab.feedback.human.config import HumanSourceConfig
from rewardlab.feedback.human.source import HumanLabels
from rewardlab.feedback.simulated import RaterConfig, SimulatedRater
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError


def make_source(source: str, *, task: Task, seed: int, name: str, rater: RaterConfig | None = None,
                file: FileSourceConfig | None = None, human: HumanSourceConfig | None = None) -> Rater | LabelFile:  # fmt: skip
    """The feedback source ``label.source`` names, for ``task``."""
    if source == "simulated":
        return SimulatedRater(task, rater or RaterConfig(), seed=seed, name=name)
    if source == "file":
        if file is None or not file.path:
            raise RewardlabError("label.file.path: required when label.source is file")
        return FileLabels(file, task, name=name)
    if source == "human":
        return HumanLabels(human or HumanSourceConfig(), task, name=name)
    raise RewardlabError(
        f"label.source: {source!r} is not available yet (simulated, file and human are); judge plugs in here"
    )


def require_rater(source: Rater | LabelFile, what: str) -> Rater:
    """``source`` if it can label new pairs, else a clear error naming ``what`` needs it."""
    if not isinstance(source, Rater):
        raise RewardlabError(f"{what} labels pairs it samples, which a {type(source).__name__} source cannot; "
                             "use label.source: simulated (or a judge source)")  # fmt: skip
    return source
