"""The one factory of feedback sources: ``label.source`` -> a :class:`~rewardlab.feedback.base.Rater` or a
:class:`~rewardlab.feedback.base.LabelFile`. To add a source, implement one of those protocols in its own
module under ``feedback/`` and add a branch here (docs/feedback.md)."""

from __future__ import annotations

from rewardlab.feedback.base import LabelFile, Rater
from rewardlab.feedback.file import FileLabels, FileSourceConfig
from rewardlab.feedback.human.config import HumanSourceConfig
from rewardlab.feedback.human.source import HumanLabels
from rewardlab.feedback.judge import Judge, JudgeSourceConfig, make_judge_rater
from rewardlab.feedback.simulated import RaterConfig, SimulatedRater
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError


def make_source(source: str, *, task: Task, seed: int, name: str, rater: RaterConfig | None = None,
                file: FileSourceConfig | None = None, human: HumanSourceConfig | None = None,
                judge: JudgeSourceConfig | None = None, judge_model: Judge | None = None) -> Rater | LabelFile:  # fmt: skip
    """The feedback source ``label.source`` names, for ``task`` (``judge_model``: the loaded LM or reward-model
    judge of ``label.source: judge``; the label stage loads it, :func:`rewardlab.pipelines.judge.judge_source`)."""
    if source == "simulated":
        return SimulatedRater(task, rater or RaterConfig(), seed=seed, name=name)
    if source == "file":
        if file is None or not file.path:
            raise RewardlabError("label.file.path: required when label.source is file")
        return FileLabels(file, task, name=name)
    if source == "human":
        return HumanLabels(human or HumanSourceConfig(), task, name=name)
    if source == "judge":
        return make_judge_rater(judge or JudgeSourceConfig(), task, seed, name, judge_model)
    raise RewardlabError(f"label.source: {source!r} is not a feedback source (simulated, file, human, judge)")


def require_rater(source: Rater | LabelFile, what: str) -> Rater:
    """``source`` if it can label new pairs, else a clear error naming ``what`` needs it."""
    if not isinstance(source, Rater):
        raise RewardlabError(f"{what} labels pairs it samples, which a {type(source).__name__} source cannot; "
                             "use label.source: simulated (or a judge source)")  # fmt: skip
    return source
