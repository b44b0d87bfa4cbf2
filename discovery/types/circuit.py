"""The vocabulary of circuits: components, edges and the circuit value itself.

Spelling (the CLI's, the store's and the cache's):

- a head is ``L.H`` (``9.1`` is head 1 of layer 9), an MLP is ``mL`` (``m8``);
- the graph's source and sink are ``embed`` and ``logits``;
- an edge is ``SENDER->RECEIVER``; a head receives on one of its three inputs, written
  ``L.H.q``, ``L.H.k`` or ``L.H.v``; MLPs and ``logits`` receive on their only input.

A :class:`Circuit` is a frozen set of nodes and, optionally, edges. Node-level circuits (no
edges) are scored by ablating every node outside them; edge-level circuits by ablating every
edge outside them. The edge-level circuit with no edges (``Circuit.from_edges([])``, spelled
``|``) is every edge removed, which is not the node-level empty circuit when the embedding's
edges are removable too. Its :attr:`Circuit.canonical` string is unique per circuit and its
:attr:`Circuit.key` is a sha256 digest of that string: the dedup key across processes (never
Python's ``hash()``, which is salted per process).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import networkx as nx

from discovery.types.errors import UsageError

HeadInput = Literal["q", "k", "v"]
HEAD_INPUTS: tuple[HeadInput, ...] = ("q", "k", "v")


@dataclass(frozen=True, order=True)
class Node:
    """One component of the model's computational graph.

    ``kind`` orders nodes within a layer: a layer's heads come before its MLP, ``embed`` comes
    first and ``logits`` last (see :attr:`sort_key`).
    """

    kind: Literal["embed", "head", "mlp", "logits"]
    layer: int = -1
    """Layer index; -1 for ``embed``, and ``n_layers`` is not used: ``logits`` keeps -1 too."""
    head: int = -1
    """Head index for heads, -1 otherwise."""

    @property
    def sort_key(self) -> tuple[int, int, int]:
        if self.kind == "embed":
            return (-1, 0, 0)
        if self.kind == "logits":
            return (10**9, 0, 0)
        return (self.layer, 0 if self.kind == "head" else 1, self.head)

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"{self.layer}.{self.head}"
        if self.kind == "mlp":
            return f"m{self.layer}"
        return self.kind

    def __str__(self) -> str:
        return self.name


EMBED = Node("embed")
LOGITS = Node("logits")


def head(layer: int, index: int) -> Node:
    return Node("head", layer, index)


def mlp(layer: int) -> Node:
    return Node("mlp", layer)


@dataclass(frozen=True)
class Edge:
    """A sender's output read by one input of a receiver."""

    sender: Node
    receiver: Node
    receiver_input: HeadInput | None = None
    """For a head receiver, which of its inputs (q, k, v) reads the sender; None otherwise."""

    @property
    def receiver_name(self) -> str:
        if self.receiver.kind == "head":
            return f"{self.receiver.name}.{self.receiver_input}"
        return self.receiver.name

    @property
    def name(self) -> str:
        return f"{self.sender.name}->{self.receiver_name}"

    @property
    def sort_key(self) -> tuple:
        return (
            self.receiver.sort_key,
            HEAD_INPUTS.index(self.receiver_input) if self.receiver_input else -1,
            self.sender.sort_key,
        )

    def __str__(self) -> str:
        return self.name


_HEAD_RE = re.compile(r"^(\d+)\.(\d+)$")
_HEAD_INPUT_RE = re.compile(r"^(\d+)\.(\d+)\.([qkv])$")
_MLP_RE = re.compile(r"^m(\d+)$")


def parse_node(text: str) -> Node:
    """Parse ``9.1``, ``m8``, ``embed`` or ``logits`` (no range check: see :meth:`Circuit.validate`)."""
    text = text.strip()
    if text in ("embed", "logits"):
        return EMBED if text == "embed" else LOGITS
    if m := _HEAD_RE.match(text):
        return head(int(m.group(1)), int(m.group(2)))
    if m := _MLP_RE.match(text):
        return mlp(int(m.group(1)))
    raise UsageError(
        f"cannot read component {text!r}: write a head as LAYER.HEAD (e.g. 9.1), "
        "an MLP as mLAYER (e.g. m8), or embed / logits"
    )


def parse_edge(text: str) -> Edge:
    """Parse ``SENDER->RECEIVER`` where a head receiver names its input: ``0.1->1.2.k``."""
    if "->" not in text:
        raise UsageError(f"cannot read edge {text!r}: write SENDER->RECEIVER, e.g. 0.1->1.2.k")
    left, right = (part.strip() for part in text.split("->", 1))
    sender = parse_node(left)
    if sender == LOGITS:
        raise UsageError(f"edge {text!r}: logits cannot send")
    if m := _HEAD_INPUT_RE.match(right):
        receiver = head(int(m.group(1)), int(m.group(2)))
        receiver_input: HeadInput | None = m.group(3)  # type: ignore[assignment]
    else:
        receiver = parse_node(right)
        receiver_input = None
        if receiver.kind == "head":
            raise UsageError(f"edge {text!r}: a head receiver must name its input, e.g. {right}.q, .k or .v")
        if receiver == EMBED:
            raise UsageError(f"edge {text!r}: embed cannot receive")
    return Edge(sender, receiver, receiver_input)


@dataclass(frozen=True)
class ModelShape:
    """What a circuit is validated against."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    """GPT-NeoX-style blocks: a layer's MLP reads the block's input, so no head -> MLP edge within a layer."""

    def all_heads(self) -> list[Node]:
        return [head(layer, h) for layer in range(self.n_layers) for h in range(self.n_heads)]

    def all_mlps(self) -> list[Node]:
        return [mlp(layer) for layer in range(self.n_layers)]

    def check(self, node: Node) -> None:
        if node.kind == "head":
            if not 0 <= node.layer < self.n_layers:
                raise UsageError(
                    f"component {node.name}: layer {node.layer} is out of range, "
                    f"the model has layers 0..{self.n_layers - 1}"
                )
            if not 0 <= node.head < self.n_heads:
                raise UsageError(
                    f"component {node.name}: head {node.head} is out of range, "
                    f"the model has heads 0..{self.n_heads - 1} per layer"
                )
        elif node.kind == "mlp" and not 0 <= node.layer < self.n_layers:
            raise UsageError(
                f"component {node.name}: layer {node.layer} is out of range, "
                f"the model has layers 0..{self.n_layers - 1}"
            )


def _layer_order(node: Node) -> float:
    """Position of a node's output in the residual stream (embed first, a layer's heads before its MLP)."""
    if node.kind == "embed":
        return -1
    if node.kind == "logits":
        return float("inf")
    return node.layer + (0.0 if node.kind == "head" else 0.5)


@dataclass(frozen=True)
class Circuit:
    """A frozen set of nodes and (for edge-level circuits) edges.

    Build one with :meth:`parse`, :meth:`of` or :meth:`from_edges`; compare, hash and store it by
    :attr:`canonical` / :attr:`key`.
    """

    nodes: frozenset[Node] = field(default_factory=frozenset)
    edges: frozenset[Edge] = field(default_factory=frozenset)
    edge_level: bool = False
    """Whether the circuit is edge-level: always when it has edges; set without edges only by
    :meth:`from_edges` (every edge removed)."""

    def __post_init__(self) -> None:
        if self.edges and not self.edge_level:  # one value per circuit, however it was built
            object.__setattr__(self, "edge_level", True)

    @classmethod
    def of(cls, nodes: Iterable[Node | str], edges: Iterable[Edge | str] = ()) -> Circuit:
        node_set = frozenset(parse_node(n) if isinstance(n, str) else n for n in nodes)
        edge_set = frozenset(parse_edge(e) if isinstance(e, str) else e for e in edges)
        return cls(node_set | _edge_nodes(edge_set), edge_set)

    @classmethod
    def from_edges(cls, edges: Iterable[Edge | str]) -> Circuit:
        """The edge-level circuit of ``edges``; with none, every edge removed (not the node-level empty circuit)."""
        circuit = cls.of((), edges)
        return circuit if circuit.edges else cls(edge_level=True)

    @classmethod
    def parse(cls, text: str) -> Circuit:
        """Read the canonical spelling: ``0.1,4.4,m8`` or ``NODES | EDGES`` with comma-separated edges.

        The empty string (or ``-``) is the empty circuit: everything ablated. ``|`` is the
        edge-level circuit with no edges: every edge removed.
        """
        text = text.strip()
        if text in ("", "-", "{}"):
            return cls()
        if text == "|":
            return cls.from_edges(())
        nodes_text, _, edges_text = text.partition("|")
        nodes = [t for t in (p.strip() for p in nodes_text.split(",")) if t]
        edges = [t for t in (p.strip() for p in edges_text.split(",")) if t]
        return cls.of(nodes, edges)

    # --- identity -------------------------------------------------------------------------
    @cached_property
    def canonical(self) -> str:
        # embed/logits are implied by edges; node-level circuits list only heads and MLPs
        nodes = ",".join(n.name for n in self.sorted_nodes() if n.kind in ("head", "mlp"))
        if not self.edge_level:
            return nodes
        edges = ",".join(e.name for e in sorted(self.edges, key=lambda e: e.sort_key))
        return f"{nodes} | {edges}"

    @cached_property
    def key(self) -> str:
        """sha256 hex digest of :attr:`canonical`: stable across processes and machines."""
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    def __str__(self) -> str:
        if self.edge_level and not self.edges:
            return "(no edges)"
        return self.canonical or "(empty)"

    # --- views ----------------------------------------------------------------------------
    @property
    def level(self) -> Literal["node", "edge"]:
        return "edge" if self.edge_level else "node"

    def sorted_nodes(self) -> list[Node]:
        return sorted(self.nodes, key=lambda n: n.sort_key)

    @property
    def heads(self) -> list[Node]:
        return [n for n in self.sorted_nodes() if n.kind == "head"]

    @property
    def mlps(self) -> list[Node]:
        return [n for n in self.sorted_nodes() if n.kind == "mlp"]

    @property
    def size(self) -> int:
        """Number of heads and MLPs (edges counted separately in :attr:`n_edges`)."""
        return len(self.heads) + len(self.mlps)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def with_nodes(self, *nodes: Node) -> Circuit:
        return Circuit(self.nodes | frozenset(nodes), self.edges)

    def without_nodes(self, *nodes: Node) -> Circuit:
        gone = frozenset(nodes)
        return Circuit(
            self.nodes - gone, frozenset(e for e in self.edges if e.sender not in gone and e.receiver not in gone)
        )

    def validate(self, shape: ModelShape) -> Circuit:
        """Raise :class:`UsageError` naming any component outside the model; return self."""
        for node in self.sorted_nodes():
            shape.check(node)
        for edge in self.edges:
            if _layer_order(edge.sender) >= _layer_order(edge.receiver):
                raise UsageError(f"edge {edge.name}: the sender does not come before the receiver")
            if (
                shape.parallel_attn_mlp
                and edge.sender.kind == "head"
                and edge.receiver.kind == "mlp"
                and edge.sender.layer == edge.receiver.layer
            ):
                raise UsageError(
                    f"edge {edge.name}: in this model's parallel blocks a layer's MLP reads the block's "
                    "input, not its heads"
                )
        return self

    def to_networkx(self) -> nx.DiGraph:
        """A DiGraph with one node per component (attrs: kind, layer, head) and the circuit's edges.

        Node-level circuits have no edges; an edge-level circuit's edges carry ``inputs`` (the set
        of receiver inputs, e.g. {"q", "v"}) since several edges may join the same two nodes.
        """
        graph = nx.DiGraph(canonical=self.canonical, level=self.level)
        for node in self.sorted_nodes():
            graph.add_node(node.name, kind=node.kind, layer=node.layer, head=node.head)
        for edge in self.edges:
            s, r = edge.sender.name, edge.receiver.name
            if graph.has_edge(s, r):
                graph.edges[s, r]["inputs"].add(edge.receiver_input)
            else:
                graph.add_edge(s, r, inputs={edge.receiver_input} - {None})
        return graph


def _edge_nodes(edges: frozenset[Edge]) -> frozenset[Node]:
    return frozenset(n for e in edges for n in (e.sender, e.receiver))


def all_edges(shape: ModelShape, include_mlps: bool = True) -> list[Edge]:
    """Every edge of the full graph (embed, heads with q/k/v inputs, MLPs, logits), in canonical order."""
    senders: list[Node] = [EMBED]
    edges: list[Edge] = []
    for layer in range(shape.n_layers):
        layer_heads = [head(layer, h) for h in range(shape.n_heads)]
        for receiver in layer_heads:
            for receiver_input in HEAD_INPUTS:
                edges.extend(Edge(s, receiver, receiver_input) for s in senders)
        senders = senders + layer_heads
        if include_mlps:
            mlp_senders = [s for s in senders if not (shape.parallel_attn_mlp and s in layer_heads)]
            edges.extend(Edge(s, mlp(layer)) for s in mlp_senders)
            senders = senders + [mlp(layer)]
    edges.extend(Edge(s, LOGITS) for s in senders)
    return edges
