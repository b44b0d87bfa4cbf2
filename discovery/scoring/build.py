"""The one way a dataset and an evaluator are built from a caller's choices.

The Python API (:mod:`discovery.api`), the commands (:mod:`discovery.cli`) and the service's jobs
(:mod:`discovery.service.evaluators`) each turn their words into a task's dataset and an
:class:`~discovery.types.evaluation.Ablation`, then call these two functions, so a score means the
same whichever of them asked for it. Storing scores is the caller's wrapper around what
:func:`build_evaluator` returns (:class:`~discovery.scoring.stored.StoredEvaluator`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from discovery.scoring.evaluator import Evaluator
from discovery.tasks import Dataset, build_dataset, get_task
from discovery.types.evaluation import Ablation
from discovery.types.progress import ProgressCallback

if TYPE_CHECKING:
    import torch

    from discovery.model import LoadedModel


def task_dataset(
    model: LoadedModel,
    task: str,
    n: int = 50,
    seed: int = 0,
    corruption: str | None = None,
    task_params: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> Dataset:
    """Task ``task``'s prompts (its parameters ``task_params``) tokenised for ``model``. The model is
    passed on so that a task built with ``filter=correct`` keeps the prompts it answers correctly;
    ``progress`` reports that filter's forward passes."""
    return build_dataset(
        get_task(task, **dict(task_params or {})),
        model.tokenizer,
        n=n,
        seed=seed,
        corruption=corruption,
        model=model,
        progress=progress,
    )


def build_evaluator(
    model: LoadedModel,
    dataset: Dataset,
    ablation: Ablation = Ablation(),
    metric: str | Callable[..., torch.Tensor] | None = None,
    source_dataset: Dataset | None = None,
) -> Evaluator:
    """The evaluator of circuits of ``model`` on ``dataset`` under ``ablation``, scored by ``metric`` (the
    task's when None; see :mod:`discovery.scoring.metrics`), with replacement values from
    ``source_dataset`` (default: ``dataset`` itself)."""
    return Evaluator(model, dataset, ablation, metric=metric, source_dataset=source_dataset)
