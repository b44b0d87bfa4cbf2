"""``iterative-pruning``: Lan & Barez 2024's iterative node pruning (``src/iter_node_pruning`` of
apartresearch/seqcont_circuits, ``loop_node_ablation_fns.py``).

Start from the full model (every head and, by default, every MLP). A *backward* pass walks the
layers from the last to the first and, in each layer, tries the MLP and then heads 0..H-1; a
*forward* pass walks layers first to last, heads 0..H-1 and then the MLP. Each component still in
the circuit is removed when the circuit without it keeps a score above ``threshold``; later
decisions see the earlier removals. Backward and forward passes alternate until a pass removes
nothing, so every component of the result was tried against the result itself: removing any one
of them takes the score to the threshold or below.

The score is theirs: ``metric(circuit) / metric(full)`` (``score=ratio``; they use the logit
difference and 80 %, with heads and MLPs outside the circuit mean-ablated over the corrupted
prompts: the method's default evaluation), or the normalised score (``score=normalised``).

``batch`` scores the next few removals against the current circuit in one ``evaluate`` call; the
first one that keeps the score is taken and the ones after it are scored again against the new
circuit, so the decisions are exactly the one-at-a-time ones.
"""

from __future__ import annotations

from typing import Any

from discovery.search._helpers import ablates_mlps, parse_nodes
from discovery.search.base import EvaluationDefaults, Param, SearchMethodSpec, SearchResult, register
from discovery.types.circuit import Circuit, Node, head, mlp
from discovery.types.errors import UsageError
from discovery.types.evaluation import Score
from discovery.types.progress import ProgressCallback


def pass_order(n_layers: int, n_heads: int, direction: str, mlps: bool) -> list[Node]:
    """The components in the order a pass tries them (theirs: backward MLP then heads, forward heads then MLP)."""
    out: list[Node] = []
    layers = range(n_layers - 1, -1, -1) if direction == "backward" else range(n_layers)
    for layer in layers:
        heads = [head(layer, h) for h in range(n_heads)]
        if not mlps:
            out += heads
        elif direction == "backward":
            out += [mlp(layer)] + heads
        else:
            out += heads + [mlp(layer)]
    return out


def iterative_pruning(evaluator: Any, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    threshold = params["threshold"]
    prune_mlps = params["mlps"]
    ablated_mlps = ablates_mlps(evaluator)
    if prune_mlps and not ablated_mlps:
        raise UsageError(
            "method 'iterative-pruning' prunes MLPs, as Lan & Barez did, but this evaluation keeps every MLP: "
            "ablate them (--ablate-mlps, the method's default), or pass --param mlps=false to prune heads only"
        )
    full = float(evaluator.full_metric)
    use_ratio = params["score"] == "ratio"
    if use_ratio and not full > 0:
        raise UsageError(
            f"method 'iterative-pruning': the full model's metric is {full:.4g}, so metric(circuit) / metric(full) "
            "means nothing (the model does not do the task on these prompts); try score=normalised or filter=correct"
        )

    def value(score: Score) -> float:
        return score.metric / full if use_ratio else score.normalised

    shape = evaluator.shape
    if params["start"]:
        nodes = set(parse_nodes(evaluator, params["start"], "iterative-pruning", "start"))
    else:
        nodes = set(shape.all_heads()) | (set(shape.all_mlps()) if ablated_mlps else set())
    current = evaluator.evaluate([Circuit.of(nodes)])[0]
    steps = [current]
    path: list[list[Any]] = [["start", "", value(current)]]
    batch = params["batch"]
    done = 1
    rounds = 0
    passes = 0
    stop = False
    while not stop:
        for direction in ("backward", "forward"):
            order = [c for c in pass_order(shape.n_layers, shape.n_heads, direction, prune_mlps) if c in nodes]
            removed_here = 0
            i = 0
            while i < len(order):
                chunk = [c for c in order[i : i + batch] if c in current.circuit.nodes]
                if not chunk:
                    i += batch
                    continue
                scores = evaluator.evaluate([current.circuit.without_nodes(c) for c in chunk])
                done += len(chunk)
                accepted = next((k for k, s in enumerate(scores) if value(s) > threshold), None)
                if accepted is None:
                    i += batch
                else:
                    current = scores[accepted]
                    nodes.discard(chunk[accepted])
                    removed_here += 1
                    steps.append(current)
                    path.append([f"{direction} remove", chunk[accepted].name, value(current)])
                    # the candidates after the accepted one are scored again against the smaller circuit
                    i = order.index(chunk[accepted]) + 1
                progress(
                    done, None, f"round {rounds + 1} {direction}: {current.circuit.size} left, {value(current):.3f}"
                )
            passes += 1
            if removed_here == 0:
                stop = True
                break
        rounds += 1
        if params["max_rounds"] and rounds >= params["max_rounds"]:
            break
    final = value(current)
    return SearchResult(
        "iterative-pruning",
        params,
        current.circuit,
        current,
        0,
        0.0,
        tuple(steps),
        {
            "path": path,
            "rounds": rounds,
            "passes": passes,
            "converged": stop,
            "score": params["score"],
            "score_value": final,
            "threshold": threshold,
            "full_metric": full,
        },
        target_met=bool(final > threshold),
    )


register(
    SearchMethodSpec(
        key="iterative-pruning",
        summary="Lan & Barez 2024: remove heads and MLPs, backward then forward over the layers, "
        "while metric/full stays above the threshold, until nothing changes",
        params=(
            Param("threshold", float, 0.8, "keep a removal while the score stays above this (theirs: 0.8)"),
            Param(
                "score",
                str,
                "ratio",
                "ratio: metric(circuit) / metric(full) (theirs); or normalised",
                choices=("ratio", "normalised"),
            ),
            Param("mlps", bool, True, "prune MLPs too (needs --ablate-mlps); false: heads only"),
            Param("start", list, None, "components to start from, comma list (default: every head and MLP)"),
            Param(
                "max_rounds",
                int,
                0,
                "stop after this many backward+forward rounds (0: until nothing changes)",
                minimum=0,
            ),
            Param("batch", int, 8, "removals scored per evaluate call (same decisions as one at a time)", minimum=1),
        ),
        func=iterative_pruning,
        evaluation=EvaluationDefaults(ablate_mlps=True),  # Lan & Barez mean-ablate MLPs outside the circuit too
    )
)
