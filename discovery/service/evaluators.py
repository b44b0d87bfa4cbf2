"""The evaluator a job's request describes, on a model loaded once per worker process.

Its own module so that running a job (:mod:`.running`) and scoring a sweep's comparison
(:mod:`.comparison`) both build evaluators without importing each other.
"""

from __future__ import annotations

from typing import Any

from discovery.scoring.evaluator import Evaluator
from discovery.service.requests import JobRequest
from discovery.types.evaluation import Ablation
from discovery.types.progress import ProgressCallback

_MODEL_CACHE: dict[tuple[str, str], Any] = {}


def cached_model(spec: str, device: str, progress: ProgressCallback | None = None) -> Any:
    """Load a model once per worker process (the last two kept): jobs on one model share it."""
    from discovery.reference import load_model

    key = (spec, device)
    if key not in _MODEL_CACHE:
        while len(_MODEL_CACHE) >= 2:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = load_model(spec, device=device, progress=progress)  # progress: a first-use training
    return _MODEL_CACHE[key]


def build_evaluator(
    request: JobRequest, device: str | None = None, progress: ProgressCallback | None = None
) -> Evaluator:
    """The plain evaluator a job's request describes (model cached per process)."""
    from discovery.tasks import build_dataset, get_task

    request = request.resolved()
    loaded = cached_model(request.model, device or request.device, progress)
    dataset = build_dataset(
        get_task(request.task, **request.task_params),
        loaded.tokenizer,
        n=request.n,
        seed=request.seed,
        corruption=request.corruption,
        model=loaded,
    )
    return Evaluator(
        loaded,
        dataset,
        Ablation(
            kind=request.ablation,  # type: ignore[arg-type]
            source=request.ablation_source,  # type: ignore[arg-type]
            ablate_mlps=bool(request.ablate_mlps),
            ablate_embed=bool(request.ablate_embed),
        ),
    )
