"""The by-hand brute force at node level, timed in plain forwards (importable: ``brute_force``).

Workload: every non-empty subset (4,095) of a 12-head pool, scored through the registered
``exhaustive`` search with mean ablation, node level. "Forwards" are the search's seconds divided
by the seconds of the Hugging Face model's plain no-grad forward on the same clean prompts,
measured in the same process (the median of several, taken before and after the search), so the
number is a ratio that does not depend on how loaded the machine is.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from discovery.evaluator import Ablation, Evaluator
from discovery.model import LoadedModel
from discovery.search.base import run_search
from discovery.tasks.base import Dataset

POOL = ("0.1", "0.10", "1.5", "3.0", "4.4", "6.6", "6.10", "7.11", "8.6", "8.8", "9.1", "10.7")
"""The 12-head pool of the brute force (names valid on a 12 x 12 model)."""


def plain_forward_seconds(model: LoadedModel, dataset: Dataset, repeats: int = 5) -> list[float]:
    """Seconds of ``repeats`` plain no-grad HF forwards on the clean prompts (after one warm-up)."""
    ids = dataset.to(model.device).clean_ids
    times = []
    with torch.no_grad():
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
    repeats: int = 5,
) -> dict[str, Any]:
    """Run the exhaustive search over every subset of ``pool``; seconds and seconds in plain forwards.

    ``seconds`` is the search alone (``run_search``), after the evaluator's setup (the replacement
    recording and the two normalisation ends), which is reported as ``setup_seconds``.
    """
    forwards_before = plain_forward_seconds(model, dataset, repeats)
    start = time.perf_counter()
    evaluator = Evaluator(model, dataset, ablation)
    evaluator.full_metric, evaluator.ablated_metric  # noqa: B018 - setup, timed apart
    setup = time.perf_counter() - start
    params = {"k": len(pool), "pool": list(pool), "target": 2.0, "max_circuits": 5000}
    start = time.perf_counter()
    result = run_search("exhaustive", evaluator, params)
    seconds = time.perf_counter() - start
    forwards_after = plain_forward_seconds(model, dataset, repeats)
    plain = statistics.median(forwards_before + forwards_after)
    return {
        "bench": "brute_force",
        "model": model.identity.name,
        "pool": list(pool),
        "circuits": result.n_evaluations,
        "prompts": dataset.n,
        "seq_len": dataset.seq_len,
        "threads": torch.get_num_threads(),
        "setup_seconds": round(setup, 3),
        "seconds": round(seconds, 3),
        "plain_forward_seconds": round(plain, 4),
        "forwards": round(seconds / plain, 1),
        "setup_forwards": round(setup / plain, 1),
        "best": str(result.circuit),
    }
