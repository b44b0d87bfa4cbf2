"""The by-hand brute force at node level, timed in plain forwards (importable: ``brute_force``).

Workload: every non-empty subset (4,095) of a 12-head pool, scored through the registered
``exhaustive`` search with mean ablation, node level. "Forwards" are the search's seconds divided
by the seconds of the Hugging Face model's plain no-grad forward on the same clean prompts,
measured in the same process. The machine may be shared, so the plain forward is timed again after
every batch the search scores (outside the search's timing) and each batch's seconds are divided
by the plain forward measured next to it: ``forwards`` is the sum of those ratios, and does not
move when the load changes during the run. ``forwards_one_baseline`` divides the total by the
median of every plain forward instead.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from discovery.model import LoadedModel
from discovery.scoring.evaluator import Evaluator
from discovery.search.base import run_search
from discovery.tasks.base import Dataset
from discovery.types.evaluation import Ablation

POOL = ("0.1", "0.10", "1.5", "3.0", "4.4", "6.6", "6.10", "7.11", "8.6", "8.8", "9.1", "10.7")
"""The 12-head pool of the brute force (names valid on a 12 x 12 model)."""


def plain_forward_seconds(model: LoadedModel, dataset: Dataset, repeats: int = 5, warm_up: bool = True) -> list[float]:
    """Seconds of ``repeats`` plain no-grad HF forwards on the clean prompts (after one warm-up)."""
    ids = dataset.to(model.device).clean_ids
    times = []
    with torch.no_grad():
        if warm_up:
            model.hf_model(ids)
        for _ in range(repeats):
            start = time.perf_counter()
            model.hf_model(ids)
            times.append(time.perf_counter() - start)
    return times


def brute_force(
    model: LoadedModel,
    dataset: Dataset,
    pool: tuple[str, ...] = POOL,
    ablation: Ablation = Ablation(),
    evaluator: Any = None,
    repeats: int = 2,
) -> dict[str, Any]:
    """Run the exhaustive search over every subset of ``pool``; its seconds and seconds in plain forwards.

    ``evaluator`` (default: a new :class:`Evaluator` of ``model``, ``dataset``, ``ablation``) is
    set up first (replacement recording, the two normalisation ends: ``setup_seconds``, not part of
    ``seconds``). ``repeats`` plain forwards are timed after each scored batch (their median is
    that batch's unit).
    """
    plain = [statistics.median(plain_forward_seconds(model, dataset, repeats + 1))]
    start = time.perf_counter()
    evaluator = evaluator if evaluator is not None else Evaluator(model, dataset, ablation)
    evaluator.full_metric, evaluator.ablated_metric  # noqa: B018 - setup, timed apart
    setup = time.perf_counter() - start
    segments: list[float] = []
    mark = time.perf_counter()

    def progress(done: int, total: int, message: str) -> None:
        nonlocal mark
        segments.append(time.perf_counter() - mark)
        plain.append(statistics.median(plain_forward_seconds(model, dataset, repeats, warm_up=False)))
        mark = time.perf_counter()

    params = {"k": len(pool), "pool": list(pool), "target": 2.0, "max_circuits": 5000}
    result = run_search("exhaustive", evaluator, params, progress)
    segments.append(time.perf_counter() - mark)
    plain.append(statistics.median(plain_forward_seconds(model, dataset, repeats, warm_up=False)))
    seconds = sum(segments)
    per_batch = sum(s / p for s, p in zip(segments, plain[1:]))
    return {
        "bench": "brute_force",
        "model": model.identity.name,
        "pool": list(pool),
        "circuits": result.n_evaluations,
        "batches": len(segments),
        "prompts": dataset.n,
        "seq_len": dataset.seq_len,
        "threads": torch.get_num_threads(),
        "setup_seconds": round(setup, 3),
        "seconds": round(seconds, 3),
        "plain_forward_seconds": round(statistics.median(plain), 4),
        "plain_forward_seconds_range": [round(min(plain), 4), round(max(plain), 4)],
        "forwards": round(per_batch, 1),
        "forwards_one_baseline": round(seconds / statistics.median(plain), 1),
        "setup_forwards": round(setup / plain[0], 1),
        "best": str(result.circuit),
    }
