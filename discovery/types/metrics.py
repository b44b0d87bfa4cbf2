"""The names of the metrics a score can be read with (torch-free; the functions live in
:mod:`discovery.scoring.metrics`)."""

from __future__ import annotations

from typing import Literal

TASK_METRICS: tuple[str, ...] = ("logit_diff", "prob_diff")
"""Read off the answer tokens' logits at the last position (a task declares one of these)."""
BUILTIN_METRICS: tuple[str, ...] = (*TASK_METRICS, "kl")
"""The task metrics and ``kl`` (KL divergence to the full model, any task)."""
BuiltinMetric = Literal["logit_diff", "prob_diff", "kl"]
MetricName = str
"""A built-in metric's name or a user metric's (registered with :func:`discovery.scoring.metrics.register_metric`)."""
