"""``label.source: human``: the comparisons people gave in the labeling app, read from its database.

A :class:`~rewardlab.feedback.base.LabelFile`: the label stage reads what the queue holds (waiting for
``label.human.min_labels`` answers with a progress bar when ``label.human.wait`` is set), splits it and
writes ``train.jsonl``/``eval.jsonl`` as for any file source.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rewardlab.feedback.human.config import HumanSourceConfig
from rewardlab.feedback.human.db import LabelDB
from rewardlab.feedback.human.stats import to_comparisons
from rewardlab.feedback.records import Comparison
from rewardlab.runs import console
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError


class HumanLabels:
    """The answers of queue ``config.queue`` in database ``config.db`` as comparisons."""

    def __init__(self, config: HumanSourceConfig, task: Task, name: str, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.config, self.task, self.name, self._sleep = config, task, name, sleep

    @property
    def origin(self) -> str:
        """Where the comparisons come from, for the stage's log and summary."""
        return f"{self.config.db}#{self.config.queue}"

    def _open(self) -> LabelDB:
        path = Path(self.config.db)
        if not path.is_file():
            raise RewardlabError(
                f"label.human.db: {path} does not exist (create it with `rewardlab label enqueue`)"
            )
        return LabelDB(path)

    def wait_for_labels(self, db: LabelDB) -> int:
        """The queue's answer count once it reaches ``min_labels`` (polling with a progress bar when ``wait``)."""
        c = self.config
        have = db.count_answers(c.queue)
        if have >= c.min_labels:
            return have
        if not c.wait:
            raise RewardlabError(
                f"label.human.min_labels: queue {c.queue!r} of {c.db} has {have} of the {c.min_labels} comparisons "
                "needed (label more, or set label.human.wait: true to wait for them)"
            )
        start = time.monotonic()
        columns = (TextColumn(f"[bold cyan]label[/] waiting for people's labels ({c.queue})"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("labels", total=c.min_labels, completed=have)
            while have < c.min_labels:
                if c.timeout_s is not None and time.monotonic() - start > c.timeout_s:
                    raise RewardlabError(f"label.human.timeout_s: {have} of {c.min_labels} comparisons after "
                                         f"{c.timeout_s:g} s in queue {c.queue!r} of {c.db}")  # fmt: skip
                self._sleep(c.poll_s)
                have = db.count_answers(c.queue)
                bar.update(task, completed=min(have, c.min_labels))
        return have

    def comparisons(self) -> list[Comparison]:
        """Every left / right / tie answer of the queue (after waiting for ``min_labels`` of them)."""
        db = self._open()
        try:
            self.wait_for_labels(db)
            return [self._with_gold(c) for c in to_comparisons(db.labels(self.config.queue))]
        finally:
            db.close()

    def _with_gold(self, c: Comparison) -> Comparison:
        """Fill gold from the task when the item carried none and the task recognises the prompt."""
        if c.gold_chosen is not None or not self.task.info.has_gold or not isinstance(c.prompt, str):
            return c
        try:
            item = self.task.item(c.prompt)
        except ValueError:
            return c
        assert isinstance(c.chosen, str) and isinstance(c.rejected, str)
        return Comparison(prompt=c.prompt, chosen=c.chosen, rejected=c.rejected, rater=c.rater, margin=c.margin,
                          gold_chosen=self.task.gold(item, c.chosen), gold_rejected=self.task.gold(item, c.rejected),
                          meta=c.meta)  # fmt: skip
