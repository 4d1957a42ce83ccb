"""``label.source: file``: preference comparisons from a TRL-format JSONL file.

Each record has ``prompt``, ``chosen`` and ``rejected`` (plain text or chat messages, as TRL's
preference datasets), after the optional column mapping ``label.file.columns`` renames a file's own
names (``{question: prompt, good: chosen, bad: rejected}``). Known optional keys (``margin``,
``rater``, ``gold_chosen``, ``gold_rejected``, ``meta``) are kept; any other column goes into
``meta``. When the task has gold and recognises the prompt, each side is scored with it (for the
audit only); otherwise the golds stay empty and the report leaves gold out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rewardlab.feedback.records import Comparison
from rewardlab.tasks.base import Task
from rewardlab.utils import RewardlabError, read_jsonl_numbered


class FileSourceConfig(BaseModel):
    """``label.source: file``: comparisons from a TRL-format JSONL file."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None, description="JSONL of prompt/chosen/rejected records (TRL's preference format)"
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="rename columns to prompt/chosen/rejected, e.g. {question: prompt, good: chosen, bad: rejected}",
    )
    limit: int | None = Field(None, gt=0, description="read at most this many records")
    skip_bad_records: bool = Field(
        False, description="count, log and skip malformed records instead of stopping (--skip-bad-records)"
    )


_KNOWN = ("prompt", "chosen", "rejected", "rater", "margin", "gold_chosen", "gold_rejected", "meta")


class FileLabels:
    """Comparisons read once from a file; ``rater`` defaults to the arm name."""

    def __init__(self, config: FileSourceConfig, task: Task, name: str) -> None:
        self.config, self.task, self.name = config, task, name

    def _row(self, raw: dict[str, Any], where: str) -> dict[str, Any]:
        row = {self.config.columns.get(k, k): v for k, v in raw.items()}
        meta = dict(row.pop("meta", None) or {})
        meta.update({k: row.pop(k) for k in [k for k in row if k not in _KNOWN]})
        row.setdefault("rater", self.name)
        if meta:
            row["meta"] = meta
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

    def comparisons(self) -> list[Comparison]:
        path = Path(str(self.config.path))
        if not path.is_file():
            raise RewardlabError(f"label.file.path: {path} not found")
        out = []
        for line, raw in read_jsonl_numbered(path):
            where = f"{path}:{line}"
            out.append(Comparison.from_dict(self._row(raw, where), where=where))
            if self.config.limit and len(out) >= self.config.limit:
                break
        if not out:
            raise RewardlabError(f"{path}: no records")
        return out
