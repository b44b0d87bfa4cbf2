"""The task registry: ``get_task(name, **params)``; one module per task."""

from __future__ import annotations

from typing import Any

from discovery.tasks.base import Dataset, DatasetSpec, Example, Task
from discovery.tasks.building import build_dataset
from discovery.tasks.digits import DigitsTask
from discovery.tasks.greater_than import GreaterThanTask
from discovery.tasks.induction import InductionTask
from discovery.tasks.lan_barez import LanBarezDigitsTask, LanBarezMonthsTask, LanBarezNumberWordsTask
from discovery.tasks.months import MonthsTask
from discovery.tasks.number_words import NumberWordsTask
from discovery.tasks.user_file import FileTask
from discovery.types.errors import UsageError

TASKS: dict[str, type[Task]] = {
    t.name: t
    for t in (
        DigitsTask,
        NumberWordsTask,
        MonthsTask,
        GreaterThanTask,
        LanBarezDigitsTask,
        LanBarezNumberWordsTask,
        LanBarezMonthsTask,
        InductionTask,
    )
}


def task_names() -> list[str]:
    return sorted(TASKS) + ["file:PATH"]


def get_task(name: str, **params: Any) -> Task:
    """The task called ``name`` (``file:PATH`` for a prompt file), built with ``params``."""
    if name.startswith("file:"):
        return FileTask(name[len("file:") :], **params)
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    try:
        return TASKS[name](**params)
    except TypeError as e:
        raise UsageError(f"task {name!r}: bad parameters {params}: {e}") from e


__all__ = [
    "Dataset",
    "DatasetSpec",
    "Example",
    "Task",
    "TASKS",
    "build_dataset",
    "get_task",
    "task_names",
]
