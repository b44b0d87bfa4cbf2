"""The evaluator a job's request describes, on a model loaded once per worker process.

Its own module so that running a job (:mod:`.running`) and scoring a sweep's comparison
(:mod:`.comparison`) both build evaluators without importing each other.
"""

from __future__ import annotations

from typing import Any

from discovery.scoring.build import build_evaluator as make_evaluator
from discovery.scoring.build import task_dataset
from discovery.scoring.evaluator import Evaluator
from discovery.service.requests import JobRequest
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
    loaded = cached_model(request.model, device or request.device, progress)
    dataset = task_dataset(loaded, request.task, request.n, request.seed, request.corruption, request.task_params)
    return make_evaluator(loaded, dataset, request.resolved_ablation())
