"""The metric read off a forward's final residual stream, for every scorer (one place).

A user metric is a function ``metric(logits, dataset) -> values``: ``logits`` [..., n, vocab] are the
last position's logits of the n prompts, ``values`` [..., n] one number per prompt (higher: more of
the behaviour, as for logit difference). Pass it as ``Evaluator(..., metric=fn)``, register it by name
(:func:`register_metric`), or name it in a task file (``"metric": "metrics.py:fn"``); scores are stored
under its name.

The task metrics (``logit_diff``, ``prob_diff``: :func:`discovery.tasks.base.metric_from_logits`)
read only the answer tokens' logits (and the log partition for ``prob_diff``). ``kl`` is the KL
divergence KL(full model || circuit) of the next-token distributions at the last position, the
criterion of ACDC (Conmy et al. 2023): 0 for the full model, larger as the circuit departs from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from discovery.engine import Engine
from discovery.tasks.base import USER_METRICS, Dataset, UserMetric, metric_from_logits, register_metric
from discovery.types.errors import UsageError

METRICS = ("logit_diff", "prob_diff", "kl")
MetricChoice = Literal["logit_diff", "prob_diff", "kl"]

__all__ = ["METRICS", "UserMetric", "check_metric", "per_prompt_metric", "register_metric"]


def check_metric(dataset: Dataset, metric: str | Callable[..., torch.Tensor] | None) -> str:
    """The metric an evaluation uses, by name: the task's own, ``kl`` (any task), or a user metric
    (a name given to :func:`register_metric`, or the callable itself, registered under its ``__name__``)."""
    if callable(metric):
        name = getattr(metric, "__name__", "")
        if not name.isidentifier():
            raise UsageError(
                "a metric callable needs a name: def my_metric(logits, dataset) or register_metric(name, fn)"
            )
        register_metric(name, metric)
        return name
    if metric is None or metric == dataset.metric:
        return dataset.metric
    if metric != "kl" and metric not in USER_METRICS:
        others = ", ".join(["kl", *sorted(USER_METRICS)])
        raise UsageError(
            f"metric {metric!r}: task {dataset.spec.task!r} is scored by {dataset.metric}; "
            f"the other choices are {others}"
        )
    return metric


def per_prompt_metric(
    engine: Engine,
    dataset: Dataset,
    final_normed: torch.Tensor,
    metric: str,
    reference_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """The metric per prompt from the final-normed last-position residual [..., n, d] -> [..., n].

    ``reference_logprobs`` [n, vocab]: the full model's next-token log-probabilities (``kl`` only)."""
    if metric == "kl":
        if reference_logprobs is None:
            raise ValueError("the kl metric needs the full model's log-probabilities")
        # in float64: a sum over the whole vocabulary of nearly equal terms, compared against a small tau
        logp = torch.log_softmax(engine.token_logits(final_normed).double(), dim=-1)
        ref = reference_logprobs.double()
        return (ref.exp() * (ref - logp)).sum(-1).to(final_normed.dtype)
    if metric in USER_METRICS:  # the user's function of the last position's logits [..., n, vocab]
        values = USER_METRICS[metric](engine.token_logits(final_normed), dataset)
        expected = tuple(final_normed.shape[:-1])
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != expected:
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise UsageError(f"metric {metric!r} returned {got}; it must return one value per prompt, shape {expected}")
        return values.to(final_normed.dtype)
    answer_logits = engine.token_logits(final_normed, dataset.answer_tokens)
    lse = torch.logsumexp(engine.token_logits(final_normed), dim=-1) if metric == "prob_diff" else None
    return metric_from_logits(dataset, answer_logits, lse)
