"""Comparing circuits: shared and distinct components and edges, Jaccard similarity, overlap matrices.

Pure functions over :class:`~discovery.types.circuit.Circuit` values (and their networkx graphs); nothing
here reads the store or runs a model.

Components are heads and MLPs (``9.1``, ``m8``). ``embed`` and ``logits`` are left out of the node
sets: every edge-level circuit contains both, and counting them would make any two edge-level
circuits look alike. Edges are compared by their full spelling, receiver input included
(``0.1->1.2.q`` and ``0.1->1.2.k`` are different edges).

Jaccard similarity is ``|A & B| / |A | B|``; for two empty sets it is defined as 1.0 (two empty
circuits are identical). Edges are compared only when both circuits are edge-level: a node-level
circuit has no edges (it keeps every edge among its components), so its edge Jaccard with an
edge-level circuit would be a meaningless 0; it is ``None`` then, and :func:`overlap_matrix` on
edges refuses node-level circuits.

Comparisons across tasks answer a question only when every circuit was found and scored the same
way. :func:`best_stored` picks a task's best stored circuit *for one dataset and evaluation method*
(the dataset's task, corruption, size, seed and parameters; ablation, MLP handling, level, metric)
and, optionally, one search method, for a model identified by its weight hash; its
:class:`Origin` says where each circuit came from, and is what the CLI prints beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from discovery.types.circuit import Circuit, parse_edge, parse_node
from discovery.types.errors import UsageError

if TYPE_CHECKING:
    from discovery.store.repository import Store


def component_names(circuit: Circuit) -> frozenset[str]:
    """The circuit's heads and MLPs by name."""
    return frozenset(n.name for n in circuit.nodes if n.kind in ("head", "mlp"))


def edge_names(circuit: Circuit) -> frozenset[str]:
    return frozenset(e.name for e in circuit.edges)


def jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    """``|a & b| / |a | b|``; 1.0 when both are empty."""
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def _sorted(names: frozenset[str]) -> tuple[str, ...]:
    """Names in canonical order (by layer, heads before the MLP; edges by receiver then sender)."""
    return tuple(sorted(names, key=lambda n: parse_edge(n).sort_key if "->" in n else (parse_node(n).sort_key,)))


@dataclass(frozen=True)
class CircuitComparison:
    """How two circuits overlap: shared and distinct components and edges, and the Jaccard indices."""

    a: Circuit
    b: Circuit
    shared_nodes: tuple[str, ...]
    only_a_nodes: tuple[str, ...]
    only_b_nodes: tuple[str, ...]
    shared_edges: tuple[str, ...]
    only_a_edges: tuple[str, ...]
    only_b_edges: tuple[str, ...]
    node_jaccard: float
    edge_jaccard: float | None
    """None unless both circuits are edge-level."""

    @property
    def mixed_levels(self) -> bool:
        """One circuit is node-level and the other edge-level: only their components compare."""
        return self.a.level != self.b.level

    def as_dict(self) -> dict:
        return {
            "a": self.a.canonical,
            "b": self.b.canonical,
            "shared_nodes": list(self.shared_nodes),
            "only_a_nodes": list(self.only_a_nodes),
            "only_b_nodes": list(self.only_b_nodes),
            "shared_edges": list(self.shared_edges),
            "only_a_edges": list(self.only_a_edges),
            "only_b_edges": list(self.only_b_edges),
            "node_jaccard": self.node_jaccard,
            "edge_jaccard": self.edge_jaccard,
        }


def compare(a: Circuit, b: Circuit) -> CircuitComparison:
    """Shared and distinct components and edges of ``a`` and ``b`` (each list in canonical order)."""
    na, nb = component_names(a), component_names(b)
    ea, eb = edge_names(a), edge_names(b)
    return CircuitComparison(
        a,
        b,
        _sorted(na & nb),
        _sorted(na - nb),
        _sorted(nb - na),
        _sorted(ea & eb),
        _sorted(ea - eb),
        _sorted(eb - ea),
        jaccard(na, nb),
        jaccard(ea, eb) if (a.level == "edge" and b.level == "edge") else None,
    )


def overlap_matrix(
    circuits: Mapping[str, Circuit] | Sequence[Circuit], on: str = "nodes"
) -> tuple[list[str], np.ndarray]:
    """Pairwise Jaccard indices: ``(labels, matrix)`` with ``matrix[i, j] = J(circuit_i, circuit_j)``.

    ``on``: ``nodes`` (components) or ``edges``. The matrix is symmetric with ones on the diagonal.
    """
    if on not in ("nodes", "edges"):
        raise UsageError(f"overlap on {on!r}: choose nodes or edges")
    if isinstance(circuits, Mapping):
        labels, values = list(circuits), list(circuits.values())
    else:
        values = list(circuits)
        labels = [str(c) for c in values]
    if on == "edges":
        node_level = [label for label, c in zip(labels, values) if c.level == "node"]
        if node_level:
            raise UsageError(
                f"overlap on edges: {', '.join(node_level)} is a node-level circuit (no edges); "
                "compare on nodes, or compare edge-level circuits"
            )
    sets = [component_names(c) if on == "nodes" else edge_names(c) for c in values]
    n = len(sets)
    matrix = np.ones((n, n), dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i, j] = matrix[j, i] = jaccard(sets[i], sets[j])
    return labels, matrix


def union_graph(a: Circuit, b: Circuit) -> nx.DiGraph:
    """Both circuits in one DiGraph; every node and edge has ``membership``: ``both``, ``a`` or ``b``."""
    ga, gb = a.to_networkx(), b.to_networkx()
    graph = nx.DiGraph(a=a.canonical, b=b.canonical)
    for node in set(ga.nodes) | set(gb.nodes):
        attrs = dict(ga.nodes[node]) if node in ga else dict(gb.nodes[node])
        attrs["membership"] = "both" if node in ga and node in gb else ("a" if node in ga else "b")
        graph.add_node(node, **attrs)
    for s, r in set(ga.edges) | set(gb.edges):
        in_a, in_b = ga.has_edge(s, r), gb.has_edge(s, r)
        inputs = (ga.edges[s, r]["inputs"] if in_a else set()) | (gb.edges[s, r]["inputs"] if in_b else set())
        graph.add_edge(s, r, inputs=inputs, membership="both" if in_a and in_b else ("a" if in_a else "b"))
    return graph


# --- which circuit, from where -----------------------------------------------------------------
@dataclass(frozen=True)
class Origin:
    """Where a compared circuit came from: its task, dataset, evaluation method, search method and model."""

    circuit: Circuit
    task: str
    dataset: str
    """The dataset the circuit was scored on, e.g. ``digits[corruption=repeat-last,n=50,seed=0,...]``."""
    evaluation: str
    """The rest of the evaluation method: ablation and its means, level, MLP handling, metric."""
    search: str
    """The search method (``greedy``...), ``evaluation`` for a stored score with no search job, or ``given``."""
    model: str
    weight_hash: str
    job_id: int | None = None
    normalised: float | None = None

    def describe(self) -> str:
        found = (
            f"job {self.job_id} ({self.search})"
            if self.job_id is not None and self.search != "evaluation"
            else ("smallest stored circuit reaching the threshold" if self.search == "evaluation" else self.search)
        )
        score = "" if self.normalised is None else f", normalised {self.normalised:.3f}"
        return (
            f"{found}{score}; dataset {self.dataset}; {self.evaluation}; "
            f"model {self.model} (weights sha256 {self.weight_hash[:12]})"
        )


def best_stored(
    store: Store,
    task: str,
    evaluation_method: Any,
    model_identity: Any,
    search_method: str | None = None,
    threshold: float = 0.8,
) -> Origin:
    """The task's best stored circuit for exactly this dataset and evaluation method (``evaluation_method``,
    an :class:`~discovery.scoring.evaluator.EvaluationMethod`, whose ``source`` names the dataset), this model's
    weights (``model_identity.weight_hash``, whatever path or name loaded them) and, when given, this
    search method. Raises :class:`UsageError` naming all of those when nothing matches."""
    found = store.best_circuits_for(
        model_identity.weight_hash, evaluation_method, search_method=search_method, limit=1, threshold=threshold
    )
    if not found:
        by = f" found by {search_method!r}" if search_method else ""
        hint = "" if search_method else f" (or none scored >= {threshold}: lower --threshold)"
        mlps = "MLPs ablated" if evaluation_method.ablate_mlps else "MLPs kept"
        raise UsageError(
            f"no stored circuit for {task!r}{by} on dataset {evaluation_method.source} under "
            f"{evaluation_method.ablation} ablation ({mlps}, "
            f"{evaluation_method.level} level) for model {model_identity.name} "
            f"(weights {model_identity.weight_hash[:12]}): run a search with these options first{hint}"
        )
    b = found[0]
    m = evaluation_method
    dataset, _, means = m.source.rpartition(":")
    how = (
        f"{m.ablation} ablation ({means} means), {m.level} level, "
        f"{'MLPs ablated' if m.ablate_mlps else 'MLPs kept'}, metric {m.metric}"
    )
    return Origin(
        b.circuit,
        task,
        dataset or m.source,
        how,
        b.method,
        model_identity.name,
        model_identity.weight_hash,
        b.job_id if b.method != "evaluation" else None,
        b.normalised,
    )
