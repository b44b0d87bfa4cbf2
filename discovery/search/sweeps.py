"""``layer-sweep`` and ``cumulative-sweep``: whole layers of heads at a time.

``layer-sweep`` adds every head of one layer to a base circuit, for each layer; ``cumulative-sweep``
keeps every head of layers 0..L (plus the base), for each L. Every step's score is in ``steps``.
The layer sweep returns its best step; the cumulative sweep the first step that meets ``target``
(the best step when none does).
"""

from __future__ import annotations

from typing import Any

from discovery.scoring.scorer import Scorer
from discovery.search._helpers import best, parse_nodes
from discovery.search.base import Param, SearchMethodSpec, SearchResult, register
from discovery.types.circuit import Circuit, head
from discovery.types.progress import ProgressCallback


def _layer_heads(evaluator: Scorer, layer: int) -> list:
    return [head(layer, h) for h in range(evaluator.shape.n_heads)]


def layer_sweep(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    base = parse_nodes(evaluator, params["base"] or [], "layer-sweep", "base")
    circuits = [Circuit.of(base + _layer_heads(evaluator, layer)) for layer in range(evaluator.shape.n_layers)]
    scores = evaluator.evaluate(circuits, progress)
    chosen = best(scores)
    table = [[layer, s.normalised] for layer, s in enumerate(scores)]
    return SearchResult(
        "layer-sweep",
        params,
        chosen.circuit,
        chosen,
        0,
        0.0,
        tuple(scores),
        {"per_layer": table, "base": [n.name for n in base]},
    )


def cumulative_sweep(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    base = parse_nodes(evaluator, params["base"] or [], "cumulative-sweep", "base")
    circuits = []
    nodes = list(base)
    for layer in range(evaluator.shape.n_layers):
        nodes += _layer_heads(evaluator, layer)
        circuits.append(Circuit.of(nodes))
    scores = evaluator.evaluate(circuits, progress)
    meeting = [s for s in scores if s.normalised >= params["target"]]
    chosen = meeting[0] if meeting else best(scores)
    table = [[layer, s.normalised] for layer, s in enumerate(scores)]
    return SearchResult(
        "cumulative-sweep",
        params,
        chosen.circuit,
        chosen,
        0,
        0.0,
        tuple(scores),
        {"per_layer": table, "met_target": bool(meeting)},
    )


register(
    SearchMethodSpec(
        key="layer-sweep",
        summary="add all heads of one layer to a base circuit, for each layer",
        params=(Param("base", list, None, "components every step keeps, comma list"),),
        func=layer_sweep,
    )
)

register(
    SearchMethodSpec(
        key="cumulative-sweep",
        summary="all heads of layers 0..L, for each L; the first meeting the target",
        params=(
            Param("target", float, 0.9, "normalised score to reach"),
            Param("base", list, None, "components every step keeps, comma list"),
        ),
        func=cumulative_sweep,
    )
)
