"""``greedy``: forward addition then backward removal, towards a target normalised score.

Forward: starting from ``start`` (default empty), add the candidate that raises the normalised
score most, until the score reaches ``target`` or the circuit has ``max_size`` components.
Backward: while the circuit meets the target, drop the component whose removal costs least, as long
as the score stays at or above the target. Each step's candidates are scored in one ``evaluate``
call (the evaluator shares their common layer prefixes).
"""

from __future__ import annotations

from typing import Any

from discovery.scoring.scorer import Scorer
from discovery.search._helpers import best, candidate_pool, parse_nodes
from discovery.search.base import Param, SearchMethodSpec, SearchResult, register
from discovery.types.circuit import Circuit
from discovery.types.progress import ProgressCallback


def greedy(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    target = params["target"]
    pool = candidate_pool(evaluator, params["pool"], params["mlps"], "greedy")
    start_nodes = parse_nodes(evaluator, params["start"] or [], "greedy", "start")
    max_size = params["max_size"] or len(pool) + len(start_nodes)
    current = evaluator.evaluate([Circuit.of(start_nodes)])[0]
    steps = [current]
    path: list[list[Any]] = [["start", "", current.normalised]]
    done = 0
    while current.normalised < target and current.circuit.size < max_size:
        options = [n for n in pool if n not in current.circuit.nodes]
        if not options:
            break
        scores = evaluator.evaluate([current.circuit.with_nodes(n) for n in options])
        chosen = best(scores)
        added = next(iter(chosen.circuit.nodes - current.circuit.nodes))
        current = chosen
        steps.append(current)
        path.append(["add", added.name, current.normalised])
        done += 1
        progress(done, None, f"added {added.name}: {current.normalised:.3f}")
    if params["backward"] and current.normalised >= target:
        while current.circuit.size > 0:
            removable = current.circuit.heads + current.circuit.mlps
            scores = evaluator.evaluate([current.circuit.without_nodes(n) for n in removable])
            chosen = best(scores)
            if chosen.normalised < target:
                break
            dropped = next(iter(current.circuit.nodes - chosen.circuit.nodes))
            current = chosen
            steps.append(current)
            path.append(["remove", dropped.name, current.normalised])
            done += 1
            progress(done, None, f"removed {dropped.name}: {current.normalised:.3f}")
    return SearchResult(
        "greedy",
        params,
        current.circuit,
        current,
        0,
        0.0,
        tuple(steps),
        {"path": path, "met_target": bool(current.normalised >= target)},
        target_met=bool(current.normalised >= target),
    )


register(
    SearchMethodSpec(
        key="greedy",
        summary="forward addition then backward removal until the normalised score meets the target",
        params=(
            Param("target", float, 0.9, "normalised score to reach"),
            Param("max_size", int, 0, "largest circuit the forward pass may build (0: no cap)", minimum=0),
            Param("pool", list, None, "candidate components, comma list (default: every head)"),
            Param("mlps", bool, False, "also consider MLPs (needs --ablate-mlps)"),
            Param("start", list, None, "components the search starts from, comma list"),
            Param("backward", bool, True, "prune with backward removal after the forward pass"),
        ),
        func=greedy,
    )
)
