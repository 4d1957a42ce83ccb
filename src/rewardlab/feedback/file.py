"""``label.source: file``: preference comparisons from a file in the ecosystem's formats.

Each record has ``prompt``, ``chosen`` and ``rejected`` (plain text or chat messages, as TRL's
preference datasets), after the optional column mapping ``label.file.columns`` renames a file's own
names (``{question: prompt, good: chosen, bad: rejected}``); an implicit prompt (only ``chosen`` and
``rejected``) is extracted from their shared prefix, and Anthropic's HH-RLHF transcripts are split into
turns. Files: JSONL, JSON, CSV (each optionally gzip'd) and Parquet, or a folder of them
(:mod:`rewardlab.feedback.readers`). Known optional keys (``margin``, ``rater``, ``gold_chosen``,
``gold_rejected``, ``meta``) are kept; any other column goes into ``meta``. When the task has gold and
recognises the prompt, each side is scored with it (for the audit only); otherwise the golds stay empty
and the report leaves gold out.

``label.file.split`` reads one part of the fixed 80/10/10 split (:func:`rewardlab.data.hh.hh_split`);
with ``split: train`` the label stage evaluates on the ``validation`` part (:meth:`FileLabels.held_out`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rewardlab.feedback.readers import FileFormat, PreferenceData, ReadStats, SplitChoice, read_preferences
from rewardlab.feedback.records import Comparison
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError


class FileSourceConfig(BaseModel):
    """``label.source: file``: comparisons from a preference file (TRL's formats or HH-RLHF)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None,
        description="preference file (.jsonl, .json, .csv, optionally .gz, or .parquet) or a folder of them, "
        "e.g. ../shared/data/hh-rlhf",
    )
    format: FileFormat = Field(
        "auto",
        description="auto (by file name; HH-RLHF transcripts detected per record) | jsonl | json | csv | parquet | "
        "hh (HH-RLHF transcript pairs in JSONL)",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="rename columns to prompt/chosen/rejected, e.g. {question: prompt, good: chosen, bad: rejected}",
    )
    split: SplitChoice = Field(
        "all",
        description="all | train | validation | test: one part of the fixed 80/10/10 split keyed on each record's "
        "opening user turn (docs/data-formats.md); with train, the label stage evaluates on validation",
    )
    limit: int | None = Field(None, gt=0, description="read at most this many records")
    eval_limit: int | None = Field(
        None,
        gt=0,
        description="with split: train, read at most this many validation records; default: limit / 8 (the "
        "split's 10:80 ratio), all when limit is unset",
    )
    skip_bad_records: bool = Field(
        False, description="count, log and skip malformed records instead of stopping (--skip-bad-records)"
    )


class FileLabels:
    """Comparisons read once from a file; ``rater`` defaults to the arm name.

    :attr:`stats` describes the last read (records read, kept, skipped as malformed with the first
    reasons, dropped), for the label stage's log and summary.
    """

    def __init__(self, config: FileSourceConfig, task: Task, name: str) -> None:
        self.config, self.task, self.name = config, task, name
        self.stats: ReadStats | None = None

    def _gold(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.task.info.has_gold and "gold_chosen" not in row and isinstance(row.get("prompt"), str):
            try:
                item = self.task.item(row["prompt"])
            except ValueError:
                item = None
            if (
                item is not None
                and isinstance(row.get("chosen"), str)
                and isinstance(row.get("rejected"), str)
            ):
                row["gold_chosen"] = self.task.gold(item, row["chosen"])
                row["gold_rejected"] = self.task.gold(item, row["rejected"])
        return row

    def _read(self, split: SplitChoice, limit: int | None) -> PreferenceData:
        if not self.config.path:
            raise RewardlabError("label.file.path: required when label.source is file")
        c = self.config
        return read_preferences(c.path, columns=c.columns, format=c.format, split=split, limit=limit,
                                skip_bad_records=c.skip_bad_records, rater=self.name, finish=self._gold)  # fmt: skip

    def comparisons(self) -> list[Comparison]:
        """The records of ``label.file.split`` (at most ``label.file.limit``)."""
        data = self._read(self.config.split, self.config.limit)
        self.stats = data.stats
        return data.comparisons

    def held_out(self) -> list[Comparison] | None:
        """With ``split: train``, the ``validation`` records (the label stage's eval pairs); else ``None``."""
        if self.config.split != "train":
            return None
        return self._read("validation", self.eval_limit()).comparisons

    def eval_limit(self) -> int | None:
        """How many validation records :meth:`held_out` reads: ``eval_limit``, else ``ceil(limit / 8)``."""
        c = self.config
        if c.eval_limit is not None:
            return c.eval_limit
        return -(-c.limit // 8) if c.limit is not None else None
