"""How well a discovery method recovers a known circuit: node and edge ROC AUC, as in the ACDC paper.

A method with a knob (a threshold, a size, a target score) gives one circuit per setting; each
circuit is a point (false-positive rate, true-positive rate) against the true circuit, over the
universe of candidate heads (node level) or head-to-head and head-to-logits edges (edge level).
The ROC curve joins (0, 0), the points in order of false-positive rate (a point is kept only when
it raises the true-positive rate: the upper envelope), and (1, 1); its area is the AUC. 1 is
perfect recovery, 0.5 is a random ranking. A method that yields a score per component (EAP's edge
scores, path patching's effects) is swept over every cut of its ranking, which is the same as
running it at every threshold.

Nodes are heads (the evaluator's candidates); edges are ``sender->receiver.input`` between heads
and ``head->logits`` (edges from the embedding and through MLPs are not ablated at node level, so
they are left out on both sides). A node-level circuit's edges are all edges among its heads (and
from them to the logits), as the ACDC paper does for node-level methods.

Nothing here knows what the true circuit is: callers pass it (from attention patterns or from a
planted model's construction), and every method is run through the public registry
(:func:`discovery.search.run_search`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from discovery.types.circuit import HEAD_INPUTS, LOGITS, Circuit, Edge, ModelShape


@dataclass(frozen=True)
class Truth:
    """The known circuit: its heads and (when known) its edges, names as the CLI spells them."""

    nodes: frozenset[str]
    edges: frozenset[str] = frozenset()


def head_universe(shape: ModelShape) -> list[str]:
    return [n.name for n in shape.all_heads()]


def edge_universe(shape: ModelShape) -> list[str]:
    """Every head -> later head input (q, k, v) and head -> logits edge."""
    out = []
    heads = shape.all_heads()
    for receiver in heads:
        for inp in HEAD_INPUTS:
            out += [Edge(s, receiver, inp).name for s in heads if s.layer < receiver.layer]
    out += [Edge(s, LOGITS).name for s in heads]
    return out


def induced_edges(nodes: Iterable[str], shape: ModelShape) -> set[str]:
    """The edges among a node-level circuit's heads, and from them to the logits."""
    kept = set(nodes)
    heads = [h for h in shape.all_heads() if h.name in kept]
    out = {Edge(s, LOGITS).name for s in heads}
    for receiver in heads:
        for inp in HEAD_INPUTS:
            out |= {Edge(s, receiver, inp).name for s in heads if s.layer < receiver.layer}
    return out


def circuit_heads(circuit: Circuit) -> set[str]:
    return {n.name for n in circuit.heads}


def circuit_edges(circuit: Circuit, shape: ModelShape) -> set[str]:
    """An edge-level circuit's head edges; a node-level circuit's induced edges."""
    if circuit.level == "edge":
        return {
            e.name
            for e in circuit.edges
            if e.sender.kind == "head" and (e.receiver.kind == "head" or e.receiver == LOGITS)
        }
    return induced_edges(circuit_heads(circuit), shape)


def roc_point(found: set[str], truth: frozenset[str], universe: Sequence[str]) -> tuple[float, float]:
    """(false-positive rate, true-positive rate) of ``found`` against ``truth`` over ``universe``."""
    negatives = len(universe) - len(truth)
    tp = len(found & truth)
    fp = len(found - truth)
    return (fp / negatives if negatives else 0.0, tp / len(truth) if truth else 0.0)


def auc(points: Iterable[tuple[float, float]]) -> float:
    """Area under the upper envelope of ``points`` joined to (0, 0) and (1, 1)."""
    pts = sorted(set(points) | {(0.0, 0.0), (1.0, 1.0)})
    xs, ys, best = [], [], -1.0
    for x, y in pts:
        if y > best:  # an envelope point: a higher true-positive rate than any cheaper one
            xs.append(x)
            ys.append(y)
            best = y
    if xs[-1] < 1.0:
        xs.append(1.0)
        ys.append(ys[-1])
    return float(np.trapezoid(ys, xs))


def ranking_auc(scores: dict[str, float], truth: frozenset[str], universe: Sequence[str]) -> float:
    """ROC AUC of a ranking (higher score: more likely in the circuit); unscored components rank last, tied."""
    values = np.array([scores.get(c, -math.inf) for c in universe])
    labels = np.array([c in truth for c in universe])
    pos, neg = values[labels], values[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    # Mann-Whitney: P(positive > negative) + 1/2 P(tie)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


@dataclass
class Recovery:
    """One method's recovery of one known circuit."""

    method: str
    node_auc: float
    edge_auc: float
    settings: list[Any] = field(default_factory=list)
    """The knob values swept (or ``"ranking"``)."""
    points: list[dict[str, Any]] = field(default_factory=list)
    """Per setting: node and edge (fpr, tpr), circuit size, normalised score where one was computed."""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "node_auc": _round(self.node_auc),
            "edge_auc": _round(self.edge_auc),
            "n_settings": len(self.points),
            "seconds": round(self.seconds, 1),
        }


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 4)


def _points_recovery(
    method: str, circuits: Sequence[tuple[Any, Circuit, float | None]], truth: Truth, shape: ModelShape
) -> Recovery:
    heads, edges = head_universe(shape), edge_universe(shape)
    node_pts, edge_pts, points = [], [], []
    for setting, circuit, normalised in circuits:
        n_pt = roc_point(circuit_heads(circuit), truth.nodes, heads)
        node_pts.append(n_pt)
        point: dict[str, Any] = {"setting": setting, "size": circuit.size, "node": n_pt}
        if truth.edges:
            e_pt = roc_point(circuit_edges(circuit, shape), truth.edges, edges)
            edge_pts.append(e_pt)
            point["edge"] = e_pt
        if normalised is not None:
            point["normalised"] = normalised
        points.append(point)
    return Recovery(
        method,
        auc(node_pts),
        auc(edge_pts) if truth.edges else float("nan"),
        [c[0] for c in circuits],
        points,
    )


def _node_scores_from_edges(ranked: Sequence[tuple[str, float]]) -> dict[str, float]:
    """A head's score is its strongest incident edge's |score| (it enters the circuit with that edge)."""
    out: dict[str, float] = {}
    for name, score in ranked:
        sender, receiver = name.split("->")
        for node in (sender, receiver.rsplit(".", 1)[0] if receiver.count(".") == 2 else receiver):
            out[node] = max(out.get(node, -math.inf), abs(score))
    return out


def recover(
    method: str, evaluator: Any, truth: Truth, params: dict[str, Any] | None = None, progress: Any = None
) -> Recovery:
    """Run ``method`` over its knob and score what it finds against ``truth``.

    - ``eap``, ``eap-ig``: one run; its whole edge ranking is swept (every top-n).
    - ``topk`` (path patching to the logits): one run; its head ranking is swept (every k).
    - ``greedy``: one forward pass towards a target of 1.0 without backward pruning, at most
      ``max_size`` (24) heads: every prefix of its path is a circuit of that size (past it, the
      curve runs straight to (1, 1), the pessimistic completion).
    - ``exhaustive``: the best subset of each size up to ``k`` over ``pool`` (default: the 12 heads
      whose single knock-out costs most, found with the evaluator; no ground truth involved).
    - ``acdc``: one run per ``tau`` in ``taus`` (default 0.003, 0.03, 0.3), on the normalised-drop
      criterion (``criterion=metric``: the taus are drops of the normalised score; the floors in
      ``tests/test_ground_truth_recovery.py`` were measured on it).
    """
    import time

    from discovery.search import run_search

    params = dict(params or {})
    shape: ModelShape = evaluator.shape
    start = time.perf_counter()
    if method in ("eap", "eap-ig"):
        result = run_search(method, evaluator, {**params, "top_n": 1}, progress)
        ranked = [(name, float(s)) for name, s in result.extra["edge_scores"]]
        head_ranked = [(n, s) for n, s in ranked if _is_head_edge(n)]
        rec = Recovery(
            method,
            ranking_auc(_node_scores_from_edges(ranked), truth.nodes, head_universe(shape)),
            ranking_auc({n: abs(s) for n, s in head_ranked}, truth.edges, edge_universe(shape))
            if truth.edges
            else float("nan"),
            ["ranking"],
        )
    elif method == "topk":
        result = run_search("topk", evaluator, {**params, "k": 1}, progress)
        scores = {name: abs(float(e)) for name, e in result.extra["ranking"]}
        ordered = [name for name, _ in sorted(scores.items(), key=lambda t: -t[1])]
        circuits: list[tuple[Any, Circuit, float | None]] = [
            (k, Circuit.of(ordered[:k]), None) for k in range(0, len(ordered) + 1)
        ]
        rec = _points_recovery(method, circuits, truth, shape)
        rec.node_auc = ranking_auc(scores, truth.nodes, head_universe(shape))
    elif method == "greedy":
        result = run_search("greedy", evaluator, {"target": 1.0, "backward": False, "max_size": 24, **params}, progress)
        steps = [(s.circuit.size, s.circuit, s.normalised) for s in result.steps]
        rec = _points_recovery(method, steps, truth, shape)
    elif method == "exhaustive":
        k = int(params.pop("k", 3))
        pool = params.pop("pool", None) or knockout_pool(evaluator, 12)
        result = run_search(
            "exhaustive", evaluator, {"k": k, "pool": pool, "stop_at_target": False, **params}, progress
        )
        circuits = [(s.circuit.size, s.circuit, s.normalised) for s in result.steps]
        rec = _points_recovery(method, circuits, truth, shape)
    elif method == "acdc":
        taus = params.pop("taus", (0.003, 0.03, 0.3))
        circuits = []
        for tau in taus:
            result = run_search("acdc", evaluator, {"criterion": "metric", **params, "tau": tau}, progress)
            circuits.append((tau, result.circuit, result.score.normalised))
        rec = _points_recovery(method, circuits, truth, shape)
    else:
        raise ValueError(f"recover: no sweep defined for method {method!r}")
    rec.seconds = time.perf_counter() - start
    return rec


def _is_head_edge(name: str) -> bool:
    sender, receiver = name.split("->")
    return (
        sender not in ("embed",) and not sender.startswith("m") and (receiver == "logits" or receiver.count(".") == 2)
    )


def knockout_pool(evaluator: Any, size: int) -> list[str]:
    """The ``size`` heads whose removal from the full circuit lowers the normalised score most."""
    every = Circuit.of(evaluator.shape.all_heads())
    scores = evaluator.evaluate([every.without_nodes(h) for h in every.heads])
    # ties (distractor heads whose removal costs nothing) go by head order, not by float32 noise
    drops = sorted(zip(every.heads, scores), key=lambda t: (round(t[1].normalised, 6), t[0].sort_key))
    return [h.name for h, _ in drops[:size]]


def truth_of_planted(record: dict[str, Any]) -> Truth:
    return Truth(frozenset(record["nodes"]), frozenset(record["edges"]))


__all__ = [
    "Recovery",
    "Truth",
    "auc",
    "edge_universe",
    "head_universe",
    "knockout_pool",
    "ranking_auc",
    "recover",
    "roc_point",
    "truth_of_planted",
]
