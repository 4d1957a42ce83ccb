"""The registry of tasks: ``task.kind`` in a config -> the task's config model and class.

This is the only module outside a task's own file that names concrete tasks; everything else builds
a task with :func:`build_task` and talks to it through :class:`rewardlab.tasks.base.Task`. To add a
task, write ``tasks/<name>.py`` (a config model with ``kind: Literal["<name>"]`` and a class
implementing the protocol) and add one line to ``TASKS``.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, Field

from rewardlab.tasks.arithmetic import ArithmeticTask, TaskConfig
from rewardlab.tasks.base import Task
from rewardlab.tasks.concise import ConciseTask, ConciseTaskConfig
from rewardlab.tasks.dataset import DatasetTask, DatasetTaskConfig
from rewardlab.tasks.gsm8k import GSM8KTask, GSM8KTaskConfig
from rewardlab.tasks.synthetic_gold import SyntheticGoldConfig, SyntheticGoldTask

#: kind -> (config model, task class). The config model's ``kind`` field is ``Literal[kind]``.
TASKS: dict[str, tuple[type[BaseModel], type]] = {
    "arithmetic": (TaskConfig, ArithmeticTask),
    "dataset": (DatasetTaskConfig, DatasetTask),
    "concise": (ConciseTaskConfig, ConciseTask),
    "gsm8k": (GSM8KTaskConfig, GSM8KTask),
    "synthetic-gold": (SyntheticGoldConfig, SyntheticGoldTask),
}

#: The ``task`` section of a pipeline config: one of the registered configs, chosen by ``kind``.
TaskSpec = Annotated[Union[tuple(c for c, _ in TASKS.values())], Field(discriminator="kind")]  # type: ignore[valid-type]  # noqa: UP007

DEFAULT_KIND = "arithmetic"


def build_task(config: BaseModel) -> Task:
    """The task a ``task`` config section describes."""
    kind = getattr(config, "kind", DEFAULT_KIND)
    return TASKS[kind][1](config)  # type: ignore[no-any-return]


def with_default_kind(data: Any) -> Any:
    """A ``task`` mapping without ``kind`` is the default task (today's config files stay valid)."""
    if isinstance(data, dict) and "kind" not in data:
        return {"kind": DEFAULT_KIND, **data}
    return data


def kinds() -> list[str]:
    return list(TASKS)


def make_env(env_id: str, **kwargs: Any) -> Any:
    """A control environment by gymnasium id (``rewardlab/BoatRace-v0`` ...; ``kwargs`` go to its class).

    Importing :mod:`rewardlab.tasks.control` registers the ``rewardlab/*`` ids; code outside ``tasks/``
    builds environments here instead of importing a concrete task module.
    """
    import gymnasium

    import rewardlab.tasks.control  # noqa: F401

    return gymnasium.make(env_id, **kwargs)
