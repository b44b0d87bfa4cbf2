"""A sweep's comparison job: overlap matrix and cross-task scores of its finished jobs' circuits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from discovery.service.jobs import COMPARE_METHOD, job_request, status_of
from discovery.types.circuit import Circuit
from discovery.types.evaluation import Score
from discovery.types.progress import ProgressCallback

if TYPE_CHECKING:
    from discovery.store.base import Storage


def compare_jobs(
    store: Storage,
    job_ids: Sequence[int],
    compare_job_id: int | None = None,
    progress: ProgressCallback | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Overlap matrix and cross-task scores of finished jobs' circuits.

    ``overlap[i][j]``: Jaccard similarity of circuit i's and circuit j's heads and MLPs
    (:func:`discovery.analysis.compare.overlap_matrix`; ``edge_overlap`` likewise for edge-level circuits);
    ``cross_scores[i][j]``: circuit i's normalised score on task j's dataset (the diagonal is each
    job's own score), every score through the store (persisted, served if already there). Jobs that
    did not succeed are listed in ``missing`` and left out.
    """
    from discovery.analysis.compare import compare, overlap_matrix
    from discovery.scoring.stored import StoredEvaluator
    from discovery.service.evaluators import build_evaluator

    jobs = [store.get_job(j) for j in job_ids]
    done = [j for j in jobs if status_of(j) == "succeeded" and j.result_circuit is not None]
    missing = [{"job": j.id, "task": j.task, "status": status_of(j)} for j in jobs if j not in done]
    circuits = [j.result_circuit for j in done if j.result_circuit is not None]  # all of done's
    overlap = overlap_matrix(circuits, on="nodes")[1].tolist()
    edge_overlap = overlap_matrix(circuits, on="edges")[1].tolist() if any(c.edges for c in circuits) else None
    shared = [[list(compare(a, b).shared_nodes) for b in circuits] for a in circuits]
    cross: list[list[float | None]] = [[None] * len(done) for _ in done]
    for j, target in enumerate(done):
        scorer = StoredEvaluator(build_evaluator(job_request(target), device), store, job_id=compare_job_id)
        for i, s in enumerate(scorer.evaluate(circuits)):
            cross[i][j] = None if math.isnan(s.normalised) else s.normalised
        if progress:
            progress(j + 1, len(done), f"scored every circuit on {target.task}")
    common = frozenset.intersection(*(frozenset(c.nodes) for c in circuits)) if circuits else frozenset()
    return {
        "kind": "comparison",
        "jobs": [j.id for j in done],
        "tasks": [j.task for j in done],
        "circuits": [c.canonical for c in circuits],
        "overlap": overlap,
        "edge_overlap": edge_overlap,
        "shared_components": shared,
        "cross_scores": cross,
        "common": Circuit(common).canonical,
        "missing": missing,
    }


def comparison_result(comparison: dict[str, Any]) -> Any:
    """The comparison as the search result the store's ``finish_job`` keeps: the circuit is what
    every task's circuit shares; there is no single score (NaN, stored as null); the matrices are
    in ``extra['comparison']``."""
    from discovery.search.base import SearchResult
    from discovery.types.evaluation import EvaluationMethod

    nan = float("nan")
    common = Circuit.parse(comparison["common"])
    method = EvaluationMethod("mean", "sweep:" + ",".join(comparison["tasks"]), "node", False, "per task")
    score = Score(common, nan, nan, nan, nan, method)
    return SearchResult(
        COMPARE_METHOD, {"jobs": comparison["jobs"]}, common, score, 0, 0.0, (), {"comparison": comparison}
    )
