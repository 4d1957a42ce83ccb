"""``label.human``: where the labeling database is, which queue the label stage reads, how long it waits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class HumanSourceConfig(BaseModel):
    """``label.source: human``: comparisons people gave in the labeling app (docs/human-labeling.md)."""

    model_config = ConfigDict(extra="forbid")

    db: str = Field(
        "labels.sqlite", description="the labeling database (SQLite), shared with `rewardlab label serve`"
    )
    queue: str = Field("default", pattern=QUEUE_PATTERN, description="the queue whose labels the arm uses")
    min_labels: int = Field(
        1,
        ge=1,
        description="comparisons (left / right / tie answers) the label stage needs before it continues",
    )
    wait: bool = Field(
        False,
        description="with fewer than min_labels: wait for them with a progress bar (true) or stop with an error",
    )
    timeout_s: float | None = Field(None, gt=0, description="with wait: give up after this many seconds")
    poll_s: float = Field(2.0, gt=0, description="with wait: seconds between looks at the database")
