"""The names of the metrics a score can be read with (torch-free; the readouts and the registry of
user metrics live in :mod:`discovery.scoring.metrics`).

A built-in metric's name is written here once; every other module imports it from here.
"""

from __future__ import annotations

from typing import Literal, get_args

from discovery.types.errors import UsageError

TaskMetric = Literal["logit_diff", "prob_diff"]
"""Read off the answer tokens' logits at the last position (a task declares one of these)."""
BuiltinMetric = Literal[TaskMetric, "kl"]
"""The task metrics and ``kl`` (KL divergence to the full model, any task)."""
TASK_METRICS: tuple[str, ...] = get_args(TaskMetric)
BUILTIN_METRICS: tuple[str, ...] = get_args(BuiltinMetric)
MetricName = str
"""A built-in metric's name or a user metric's (registered with :func:`discovery.scoring.metrics.register_metric`)."""


def check_user_metric_name(name: str) -> str:
    """``name`` if a user metric may be called so (an identifier that no built-in metric has)."""
    if name in BUILTIN_METRICS:
        raise UsageError(f"metric name {name!r} is built in; choose another")
    if not name.isidentifier():
        raise UsageError(f"metric name {name!r}: use letters, digits and underscores")
    return name
