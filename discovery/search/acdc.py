"""``acdc``: ACDC-style edge pruning (Conmy et al. 2023) over the evaluator's edge-level ablation.

Receivers are visited from the logits backwards (a layer's MLP, then its heads' v, k, q inputs);
each incoming edge still in the circuit is removed, ablated to its sender's replacement output,
when the normalised score drops by less than ``tau`` (with ``absolute``: changes by less than tau
either way). A receiver head with no outgoing edge left cannot affect the output, so its incoming
edges are dropped without evaluation.

GPT-2-small has ~30k ablatable edges; on a CPU restrict the walk: ``nodes`` starts from the edges
among those components (plus the logits, and the MLPs when they are not ablated), ``eap_top`` from
the top edges by EAP score. Edges outside the start set are ablated from the outset.

Speculation (``batch``): up to ``batch`` successive removals are scored in one ``evaluate`` call
assuming each is accepted; the first rejection discards the rest. The decisions are exactly the
sequential ones; only the evaluation count grows a little.
"""

from __future__ import annotations

from typing import Any

from discovery.circuit import LOGITS, Circuit, Edge
from discovery.edge_forward import graph_of
from discovery.errors import UsageError
from discovery.progress import ProgressCallback
from discovery.search._helpers import parse_nodes
from discovery.search.base import Param, SearchMethodSpec, SearchResult, register
from discovery.search.scorer import Scorer


def _start_edges(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> list[Edge]:
    graph = graph_of(evaluator)
    edges = list(graph.edges)
    if params["nodes"]:
        allowed = set(parse_nodes(evaluator, params["nodes"], "acdc", "nodes"))
        receivers = allowed | {LOGITS} | (set() if graph.ablate_mlps else set(evaluator.shape.all_mlps()))
        edges = [e for e in edges if e.sender in allowed and e.receiver in receivers]
    if params["eap_top"]:
        from discovery.search.eap import ranked_edges

        keep = set(edges)
        ranked = [e for e, _ in ranked_edges(evaluator, params["eap_steps"], progress) if e in keep]
        edges = ranked[: params["eap_top"]]
    if not edges:
        raise UsageError("method 'acdc': the restriction leaves no edge to walk")
    return sorted(edges, key=lambda e: e.sort_key)


def acdc(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    tau, batch = params["tau"], params["batch"]
    graph = graph_of(evaluator)
    current_edges = set(_start_edges(evaluator, params, progress))
    start_count = len(current_edges)
    current = evaluator.evaluate([Circuit.from_edges(current_edges)])[0]
    steps = [current]
    removed, free_removed = 0, 0

    def keeps(before: float, after: float) -> bool:
        change = before - after
        return abs(change) < tau if params["absolute"] else change < tau

    visited = 0
    for receiver, inp in reversed(graph.receivers):
        incoming = sorted(
            (e for e in current_edges if e.receiver == receiver and e.receiver_input == inp),
            key=lambda e: e.sender.sort_key,
            reverse=True,
        )
        if not incoming:
            continue
        visited += 1
        if (
            receiver != LOGITS
            and graph.ablatable_node(receiver)
            and not any(e.sender == receiver for e in current_edges)
        ):
            current_edges -= set(incoming)  # its output is ablated everywhere: its inputs cannot matter
            free_removed += len(incoming)
            continue
        i = 0
        while i < len(incoming):
            chunk = incoming[i : i + batch]
            trial, circuits = set(current_edges), []
            for e in chunk:
                trial.discard(e)
                circuits.append(Circuit.from_edges(trial))
            scores = evaluator.evaluate(circuits)
            for e, s in zip(chunk, scores):
                if keeps(current.normalised, s.normalised):
                    current_edges.discard(e)
                    current = s
                    removed += 1
                    i += 1
                else:
                    i += 1
                    break
        steps.append(current)
        progress(
            visited,
            None,
            f"{receiver.name}{'.' + inp if inp else ''}: {len(current_edges)} edges, score {current.normalised:.3f}",
        )
    circuit = Circuit.from_edges(current_edges)
    final = evaluator.evaluate([circuit])[0]
    extra = {
        "start_edges": start_count,
        "removed_by_test": removed,
        "removed_unreachable": free_removed,
        "edges": sorted(e.name for e in current_edges),
    }
    return SearchResult("acdc", params, circuit, final, 0, 0.0, tuple(steps), extra)


register(
    SearchMethodSpec(
        key="acdc",
        summary="ACDC edge pruning from the logits backwards, removing edges that change the score by < tau",
        params=(
            Param("tau", float, 0.01, "largest drop in normalised score an edge's removal may cause", minimum=0),
            Param("absolute", bool, False, "compare |change| with tau (also keep edges whose removal helps a lot)"),
            Param("nodes", list, None, "restrict to edges among these components, comma list"),
            Param("eap_top", int, 0, "restrict to the top N edges by EAP score (0: off)", minimum=0),
            Param("eap_steps", int, 1, "EAP-IG steps for eap_top (1: plain EAP)", minimum=1),
            Param("batch", int, 8, "removals scored per evaluate call (speculative; same decisions)", minimum=1),
        ),
        func=acdc,
        level="edge",
    )
)
