"""``eap`` and ``eap-ig``: edge attribution patching, plain and with integrated gradients.

Every ablatable edge ``s -> r`` (see :mod:`discovery.scoring.edge_forward`) gets

    score = (rep_s - out_s) . dMetric/d input(r)

with the gradient from one forward and one backward pass on the clean prompts (``eap``), or
averaged over ``steps`` runs of the full model on input embeddings interpolated from the corrupted
prompts to the clean ones, alpha = k/steps for k = 0 .. steps-1 (``eap-ig``, as published by Hanna
et al. 2024; with one step that is the gradient at the corrupted prompts, not ``eap``), or over
runs that scale every edge by alpha in (0, 1) (``eap-ig-edges``, this project's earlier variant).
The score estimates the metric change
when the edge alone is ablated (negative: the edge carries the behaviour). The circuit is the
``top_n`` edges by |score| (or every edge with |score| >= ``threshold`` when that is set), scored by
the evaluator as an edge-level circuit; ``extra["edge_scores"]`` holds the whole ranking.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from discovery.scoring.edge_forward import edge_attribution
from discovery.scoring.scorer import Scorer
from discovery.search.base import Param, SearchMethodSpec, SearchResult, register
from discovery.types.circuit import Circuit, Edge
from discovery.types.progress import ProgressCallback


def ranked_edges(
    evaluator: Scorer,
    steps: int,
    progress: ProgressCallback,
    interpolate: Literal["inputs", "edges"] | None = None,
    prompt_batch: int = 0,
) -> list[tuple[Edge, float]]:
    """Every ablatable edge with its attribution score, strongest |score| first (ties: canonical order).
    ``interpolate``: as :func:`~discovery.scoring.edge_forward.edge_attribution`'s (None: plain EAP
    with one step, EAP-IG over inputs with more). ``prompt_batch``: prompts per backward pass (0: as
    many as fit in about 600 MB of activations)."""
    progress(0, None, f"attribution over {steps} step(s)")
    edges, scores = edge_attribution(
        evaluator.base_evaluator,
        steps=steps,
        interpolate=interpolate,
        prompt_batch=prompt_batch or None,
        progress=progress,
    )
    order = np.argsort(-np.abs(scores), kind="stable")
    return [(edges[i], float(scores[i])) for i in order]


def _run(
    key: str,
    evaluator: Scorer,
    params: dict[str, Any],
    steps: int,
    progress: ProgressCallback,
    interpolate: Literal["inputs", "edges"] | None,
) -> SearchResult:
    ranked = ranked_edges(evaluator, steps, progress, interpolate, params["prompt_batch"])
    if params["threshold"] > 0:
        kept = [e for e, s in ranked if abs(s) >= params["threshold"]]
    else:
        kept = [e for e, _ in ranked[: params["top_n"]]]
    circuit = Circuit.from_edges(kept)
    score = evaluator.evaluate([circuit])[0]
    extra = {"edge_scores": [[e.name, s] for e, s in ranked], "n_edges_total": len(ranked)}
    return SearchResult(key, params, circuit, score, 0, 0.0, (score,), extra)


def eap(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    return _run("eap", evaluator, params, 1, progress, None)  # the gradient at the clean input


def eap_ig(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    return _run("eap-ig", evaluator, params, params["steps"], progress, "inputs")  # alpha = k/steps, any steps


def eap_ig_edges(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    return _run("eap-ig-edges", evaluator, params, params["steps"], progress, "edges")


PROMPT_BATCH = Param(
    "prompt_batch", int, 0, "prompts per backward pass, bounds memory (0: as many as fit in about 600 MB)", minimum=0
)
SELECT = (
    Param("top_n", int, 50, "number of top edges (by |score|) in the circuit", minimum=1),
    Param("threshold", float, 0.0, "if > 0: keep every edge with |score| >= threshold instead of top_n", minimum=0),
    PROMPT_BATCH,
)

register(
    SearchMethodSpec(
        key="eap",
        summary="edge attribution patching: top edges by (corrupt - clean) . gradient",
        params=SELECT,
        func=eap,
        level="edge",
    )
)

register(
    SearchMethodSpec(
        key="eap-ig",
        summary="EAP-IG as published: integrated gradients over inputs interpolated from corrupted to clean",
        params=SELECT + (Param("steps", int, 10, "integration steps", minimum=1, maximum=1000),),
        func=eap_ig,
        level="edge",
    )
)

register(
    SearchMethodSpec(
        key="eap-ig-edges",
        summary="EAP with integrated gradients over edge scaling (empty circuit to full model)",
        params=SELECT + (Param("steps", int, 10, "integration steps", minimum=1, maximum=1000),),
        func=eap_ig_edges,
        level="edge",
    )
)
