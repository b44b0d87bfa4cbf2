"""The metric read off a forward's final residual stream, for every scorer (one place).

The task metrics (``logit_diff``, ``prob_diff``: :func:`discovery.tasks.base.metric_from_logits`)
read only the answer tokens' logits (and the log partition for ``prob_diff``). ``kl`` is the KL
divergence KL(full model || circuit) of the next-token distributions at the last position, the
criterion of ACDC (Conmy et al. 2023): 0 for the full model, larger as the circuit departs from it.
"""

from __future__ import annotations

from typing import Literal

import torch

from discovery.engine import Engine
from discovery.errors import UsageError
from discovery.tasks.base import Dataset, metric_from_logits

METRICS = ("logit_diff", "prob_diff", "kl")
MetricChoice = Literal["logit_diff", "prob_diff", "kl"]


def check_metric(dataset: Dataset, metric: str | None) -> str:
    """The metric an evaluation uses: the task's own, or ``kl`` (any task)."""
    if metric is None or metric == dataset.metric:
        return dataset.metric
    if metric != "kl":
        raise UsageError(
            f"metric {metric!r}: task {dataset.spec.task!r} is scored by {dataset.metric}; the other choice is kl"
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
    answer_logits = engine.token_logits(final_normed, dataset.answer_tokens)
    lse = torch.logsumexp(engine.token_logits(final_normed), dim=-1) if metric == "prob_diff" else None
    return metric_from_logits(dataset, answer_logits, lse)
