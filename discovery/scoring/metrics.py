"""The metrics: the registry of user metrics, and the one readout from a forward's final residual
(or logits) to a value per prompt, for every scorer (node evaluator, edge forward, path patching,
the hooked slow path).

A user metric is a function ``metric(logits, dataset) -> values``: ``logits`` [..., n, vocab] are the
last position's logits of the n prompts, ``values`` [..., n] one number per prompt (higher: more of
the behaviour, as for logit difference). Pass it as ``Evaluator(..., metric=fn)``, register it by name
(:func:`register_metric`), or name it in a task file (``"metric": "metrics.py:fn"``); scores are stored
under its name.

The built-in metrics (names in :mod:`discovery.types.metrics`) each have a readout in
:data:`BUILTIN_READOUTS`. The task metrics read only the answer tokens' logits: ``logit_diff`` sums
them signed by the dataset's answer weights, ``prob_diff`` sums the answer tokens' probabilities
(their logits minus the log partition over the whole vocabulary) the same way. ``kl`` is the KL
divergence KL(full model || circuit) of the next-token distributions at the last position, the
criterion of ACDC (Conmy et al. 2023): 0 for the full model, larger as the circuit departs from it;
it is summed in float64.

Why the registry is here and a task file's metric is registered late: scoring imports the tasks
(:class:`~discovery.tasks.base.Dataset`), so the tasks must not import scoring. A task file naming
``metrics.py:fn`` therefore only loads the function and keeps it on the task, which the dataset
carries (:attr:`~discovery.tasks.base.Dataset.metric_function`); :func:`check_metric`, which every
evaluator calls when it is built, registers it under the dataset's metric name, and refuses a bare
name that nothing registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from discovery.tasks.base import Dataset
from discovery.types.errors import UsageError
from discovery.types.metrics import BUILTIN_METRICS, TASK_METRICS, check_user_metric_name

__all__ = [
    "BUILTIN_READOUTS",
    "LOGITS",
    "USER_METRICS",
    "UserMetric",
    "check_metric",
    "per_prompt_metric",
    "reads_answer_tokens_only",
    "reads_full_model_reference",
    "register_metric",
]

UserMetric = Callable[[torch.Tensor, Dataset], torch.Tensor]
USER_METRICS: dict[str, UserMetric] = {}
"""User metrics by name: functions of the last position's logits (:func:`register_metric`)."""


def register_metric(name: str, fn: UserMetric) -> str:
    """Make ``fn(logits [..., n, vocab], dataset) -> [..., n]`` a metric called ``name``; returns the name."""
    USER_METRICS[check_user_metric_name(name)] = fn
    return name


def check_metric(dataset: Dataset, metric: str | Callable[..., torch.Tensor] | None) -> str:
    """The metric an evaluation uses, by name: the task's own, ``kl`` (any task), or a user metric
    (a name given to :func:`register_metric`, or the callable itself, registered under its ``__name__``).
    A task file's own metric function (``dataset.metric_function``) is registered here."""
    if callable(metric):
        name = getattr(metric, "__name__", "")
        if not name.isidentifier():
            raise UsageError(
                "a metric callable needs a name: def my_metric(logits, dataset) or register_metric(name, fn)"
            )
        return register_metric(name, metric)
    if dataset.metric_function is not None:
        register_metric(dataset.metric, dataset.metric_function)
    if metric is None or metric == dataset.metric:
        if dataset.metric not in TASK_METRICS and dataset.metric not in USER_METRICS:
            raise UsageError(
                f"task {dataset.spec.task!r} is scored by the metric {dataset.metric!r}, which is not registered: "
                f"register_metric({dataset.metric!r}, fn) first, or name FILE.py:FUNCTION in the task file"
            )
        return dataset.metric
    any_task = [m for m in BUILTIN_METRICS if m not in TASK_METRICS]  # kl: read against the full model
    if metric not in any_task and metric not in USER_METRICS:
        others = ", ".join([*any_task, *sorted(USER_METRICS)])
        raise UsageError(
            f"metric {metric!r}: task {dataset.spec.task!r} is scored by {dataset.metric}; "
            f"the other choices are {others}"
        )
    return metric


class Unembedding(Protocol):
    """What a readout reads logits through: the engine, or :data:`LOGITS` for logits already read."""

    def token_logits(self, normed_final: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``tokens`` (all when None) from the final-normed residual [..., d]."""
        ...


class _LogitsRead:
    """The unembedding of logits a forward already returned (the hooked slow path): the logits
    themselves, or their columns ``tokens``."""

    def token_logits(self, normed_final: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        return normed_final if tokens is None else normed_final[..., tokens]


LOGITS = _LogitsRead()
"""Pass as the unembedding to :func:`per_prompt_metric` when ``final_normed`` is already the logits."""


def _logit_diff(
    unembed: Unembedding, dataset: Dataset, final_normed: torch.Tensor, reference: torch.Tensor | None
) -> torch.Tensor:
    answer_logits = unembed.token_logits(final_normed, dataset.answer_tokens)
    weights = dataset.answer_weights.to(answer_logits.dtype)
    return (answer_logits * weights).sum(-1)


def _prob_diff(
    unembed: Unembedding, dataset: Dataset, final_normed: torch.Tensor, reference: torch.Tensor | None
) -> torch.Tensor:
    answer_logits = unembed.token_logits(final_normed, dataset.answer_tokens)
    logsumexp = torch.logsumexp(unembed.token_logits(final_normed), dim=-1)
    weights = dataset.answer_weights.to(answer_logits.dtype)
    probs = torch.exp(answer_logits - logsumexp.unsqueeze(-1))
    return (probs * weights).sum(-1)


def _kl(
    unembed: Unembedding, dataset: Dataset, final_normed: torch.Tensor, reference: torch.Tensor | None
) -> torch.Tensor:
    if reference is None:
        raise ValueError("the kl metric needs the full model's log-probabilities")
    # in float64: a sum over the whole vocabulary of nearly equal terms, compared against a small tau
    logp = torch.log_softmax(unembed.token_logits(final_normed).double(), dim=-1)
    ref = reference.double()
    return (ref.exp() * (ref - logp)).sum(-1).to(final_normed.dtype)


@dataclass(frozen=True)
class BuiltinReadout:
    """How a built-in metric is read: ``read(unembed, dataset, final_normed, reference_logprobs)`` -> [..., n]."""

    read: Callable[[Unembedding, Dataset, torch.Tensor, torch.Tensor | None], torch.Tensor]
    answer_tokens_only: bool
    """Reads only the answer tokens' logits (no full-vocabulary logits): the evaluator then reads
    every group of circuits at once instead of one at a time."""
    full_model_reference: bool = False
    """Compares against the full model's next-token log-probabilities (``reference_logprobs``)."""


BUILTIN_READOUTS: dict[str, BuiltinReadout] = {
    "logit_diff": BuiltinReadout(_logit_diff, answer_tokens_only=True),
    "prob_diff": BuiltinReadout(_prob_diff, answer_tokens_only=False),
    "kl": BuiltinReadout(_kl, answer_tokens_only=False, full_model_reference=True),
}
"""One readout per name in :data:`~discovery.types.metrics.BUILTIN_METRICS` (``tests/test_user_metrics.py`` checks)."""


def reads_answer_tokens_only(metric: str) -> bool:
    """Whether ``metric`` reads no full-vocabulary logits (user metrics read them all)."""
    readout = BUILTIN_READOUTS.get(metric)
    return readout is not None and readout.answer_tokens_only


def reads_full_model_reference(metric: str) -> bool:
    """Whether ``metric``'s readout needs the full model's log-probabilities (``kl``)."""
    readout = BUILTIN_READOUTS.get(metric)
    return readout is not None and readout.full_model_reference


def per_prompt_metric(
    unembed: Unembedding,
    dataset: Dataset,
    final_normed: torch.Tensor,
    metric: str,
    reference_logprobs: torch.Tensor | None = None,
    task_metrics_only: bool = False,
) -> torch.Tensor:
    """The metric per prompt from the final-normed last-position residual [..., n, d] -> [..., n]
    (with ``unembed=LOGITS``: from the last position's logits [..., n, vocab]).

    ``reference_logprobs`` [n, vocab]: the full model's next-token log-probabilities (only read where
    :func:`reads_full_model_reference`: ``kl``).
    ``task_metrics_only``: refuse any metric but the task metrics (path patching, the hooked slow
    path, which score one dataset's own metric and keep no full-model reference)."""
    if task_metrics_only and metric not in TASK_METRICS:
        raise UsageError(
            f"metric {metric!r} reads the whole vocabulary's logits; this scorer (path patching, the "
            f"hooked slow path) reads the answer tokens only: use {' or '.join(TASK_METRICS)} here"
        )
    if metric in BUILTIN_METRICS:
        return BUILTIN_READOUTS[metric].read(unembed, dataset, final_normed, reference_logprobs)
    if metric not in USER_METRICS:
        raise UsageError(f"metric {metric!r} is not registered (register_metric)")
    # the user's function of the last position's logits [..., n, vocab]
    values = USER_METRICS[metric](unembed.token_logits(final_normed), dataset)
    expected = tuple(final_normed.shape[:-1])
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != expected:
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise UsageError(f"metric {metric!r} returned {got}; it must return one value per prompt, shape {expected}")
    return values.to(final_normed.dtype)
