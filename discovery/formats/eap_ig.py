"""Exports: a circuit with its scores in the EAP-IG ``Graph`` JSON format (MIB's circuit-track submissions).

EAP-IG (Hanna et al.; ``eap.graph.Graph.to_json`` / ``from_json``) and the MIB circuit track read one JSON
object per circuit::

    {"cfg":   {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": false, "d_model": 768},
     "nodes": {"input": {"in_graph": true}, "a0.h1": {"in_graph": true, "score": 0.3}, "m0": {...}, "logits": {...}},
     "edges": {"input->a0.h1<q>": {"score": -0.12, "in_graph": true}, "a0.h1->m0": {...}, ...}}

with *every* node and edge of the model's graph listed (GPT-2 small: 32,491 edges), ``in_graph`` marking
the circuit. Names map one to one: ``embed`` is ``input``, head ``L.H`` is ``aL.hH``, ``mL`` stays ``mL``,
and a head's input is a suffix (``0.1->1.2.q`` is ``a0.h1->a1.h2<q>``).

A node-level circuit is written with its components (and ``input``/``logits``) in the graph and every
edge among them; with ``mlps_kept`` every MLP is in the graph too (this project's default evaluation keeps
the MLPs). The extra key ``"circuit_discovery"`` records the level, whether the MLPs were kept, and
the score's method; EAP-IG ignores it and :func:`from_eap_graph` reads a plain EAP-IG file without it
(as an edge-level circuit of its ``in_graph`` edges).

:func:`job_row` flattens a stored job into the row ``circuits runs|jobs --format csv|json`` and
``discovery.runs()`` write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from discovery.types.circuit import EMBED, LOGITS, Circuit, Edge, ModelShape, Node, all_edges, head, mlp
from discovery.types.errors import UsageError

FORMAT = "eap-ig-graph"


def eap_node_name(node: Node) -> str:
    if node == EMBED:
        return "input"
    if node == LOGITS:
        return "logits"
    if node.kind == "head":
        return f"a{node.layer}.h{node.head}"
    return f"m{node.layer}"


def eap_edge_name(edge: Edge) -> str:
    suffix = f"<{edge.receiver_input}>" if edge.receiver.kind == "head" else ""
    return f"{eap_node_name(edge.sender)}->{eap_node_name(edge.receiver)}{suffix}"


def parse_eap_node(name: str) -> Node:
    if name == "input":
        return EMBED
    if name == "logits":
        return LOGITS
    try:
        if name.startswith("a"):
            layer, h = name[1:].split(".h")
            return head(int(layer), int(h))
        if name.startswith("m"):
            return mlp(int(name[1:]))
    except ValueError:
        pass
    raise UsageError(f"EAP-IG node {name!r}: expected input, logits, aL.hH or mL")


def parse_eap_edge(name: str) -> Edge:
    left, sep, right = name.partition("->")
    if not sep:
        raise UsageError(f"EAP-IG edge {name!r}: expected PARENT->CHILD")
    receiver_input = None
    if right.endswith(">") and "<" in right:
        right, _, qkv = right[:-1].partition("<")
        receiver_input = qkv
    receiver = parse_eap_node(right)
    if (receiver.kind == "head") != (receiver_input in ("q", "k", "v")):
        raise UsageError(f"EAP-IG edge {name!r}: an edge into a head names its input (<q>, <k> or <v>), others none")
    return Edge(parse_eap_node(left), receiver, receiver_input)  # type: ignore[arg-type]


def to_eap_graph(
    circuit: Circuit,
    shape: ModelShape,
    d_model: int,
    edge_scores: Mapping[str, float] | None = None,
    node_scores: Mapping[str, float] | None = None,
    mlps_kept: bool = False,
    method: str | None = None,
) -> dict[str, Any]:
    """The EAP-IG ``Graph`` JSON object of ``circuit`` (see the module docstring).

    ``edge_scores`` (edge name in this project's spelling -> score, e.g. EAP's ranking) fill the edges'
    ``score`` (0.0 where absent); ``node_scores`` (component -> score) add the nodes' ``score``.
    """
    circuit.validate(shape)
    edges = all_edges(shape, include_mlps=True)
    every_node: list[Node] = [EMBED]
    for layer in range(shape.n_layers):
        every_node += [head(layer, h) for h in range(shape.n_heads)] + [mlp(layer)]
    every_node.append(LOGITS)
    if circuit.level == "edge":  # with no edges too: every edge removed
        in_edges = set(circuit.edges)
        in_nodes = {n for e in circuit.edges for n in (e.sender, e.receiver)} | {EMBED, LOGITS}
    else:
        in_nodes = set(circuit.nodes) | {EMBED, LOGITS} | (set(shape.all_mlps()) if mlps_kept else set())
        in_edges = {e for e in edges if e.sender in in_nodes and e.receiver in in_nodes}
    scores = dict(edge_scores or {})
    nodes_out: dict[str, dict[str, Any]] = {}
    for node in every_node:
        entry: dict[str, Any] = {"in_graph": node in in_nodes}
        if node_scores is not None and node.kind in ("head", "mlp"):
            entry["score"] = float(node_scores.get(node.name, 0.0))
        nodes_out[eap_node_name(node)] = entry
    return {
        "cfg": {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "parallel_attn_mlp": False, "d_model": d_model},
        "nodes": nodes_out,
        "edges": {
            eap_edge_name(e): {"score": float(scores.get(e.name, 0.0)), "in_graph": e in in_edges} for e in edges
        },
        "circuit_discovery": {
            "format": FORMAT,
            "level": circuit.level,
            "mlps_kept": bool(mlps_kept and circuit.level == "node"),
            "canonical": circuit.canonical,
            "method": method,
        },
    }


def from_eap_graph(data: Mapping[str, Any]) -> Circuit:
    """The circuit an EAP-IG ``Graph`` JSON object marks ``in_graph`` (this project's files or EAP-IG's own)."""
    for key in ("cfg", "nodes", "edges"):
        if key not in data:
            raise UsageError(f"not an EAP-IG graph: the JSON has no {key!r} key")
    meta = data.get("circuit_discovery") or {}
    if meta.get("level") == "node":
        nodes = [parse_eap_node(name) for name, v in data["nodes"].items() if v.get("in_graph")]
        components = [n for n in nodes if n.kind == "head" or (n.kind == "mlp" and not meta.get("mlps_kept"))]
        return Circuit.of(components)
    return Circuit.from_edges(parse_eap_edge(name) for name, v in data["edges"].items() if v.get("in_graph"))


def write_eap_graph(path: str | Path, graph: Mapping[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(graph))
    return out


def read_eap_graph(path: str | Path) -> Circuit:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read EAP-IG graph {str(path)!r}: {e}") from e
    return from_eap_graph(data)


JOB_COLUMNS = (
    "id",
    "status",
    "method",
    "task",
    "model",
    "progress_done",
    "progress_total",
    "result",
    "size",
    "normalised",
    "metric",
    "dataset",
    "params",
    "worker",
    "created",
    "finished",
    "error",
)


def job_row(job: Any) -> dict[str, Any]:
    """A job record as one flat row (the same columns for ``runs`` and ``jobs``)."""
    score = job.result_score or {}
    method = score.get("evaluation_method") or {}
    return {
        "id": job.id,
        "status": job.status.value if hasattr(job.status, "value") else job.status,
        "method": job.method,
        "task": ",".join(job.tasks) or job.task,
        "model": job.model,
        "progress_done": job.progress_done,
        "progress_total": job.progress_total,
        "result": job.result_circuit.canonical if job.result_circuit is not None else None,
        "size": job.result_circuit.size if job.result_circuit is not None else None,
        "normalised": score.get("normalised"),
        "metric": score.get("metric"),
        "dataset": method.get("source"),
        "params": job.params,
        "worker": job.worker_id,
        "created": job.created_at,
        "finished": job.finished_at,
        "error": f"{job.error_type}: {job.error_message}" if job.error_type else None,
    }
