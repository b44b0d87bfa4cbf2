"""Drawing a circuit's graph: components laid out by layer (embed at the bottom, logits on top)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from discovery.circuit import Circuit

KIND_COLOURS = {"embed": "#b0b0b0", "head": "#7fb3e6", "mlp": "#f2b36f", "logits": "#b0b0b0"}


def _positions(graph) -> dict[str, tuple[float, float]]:
    """x by head index (MLPs to the right of their layer's heads), y by layer."""
    rows: dict[float, list[str]] = {}
    for name, data in graph.nodes(data=True):
        kind = data.get("kind")
        y = -1.0 if kind == "embed" else (10**6 if kind == "logits" else float(data.get("layer", 0)))
        rows.setdefault(y, []).append(name)
    ys = sorted(rows)
    top = max((y for y in ys if y < 10**6), default=-1.0) + 1
    pos = {}
    for y in ys:
        names = sorted(rows[y], key=lambda n: (graph.nodes[n].get("kind") == "mlp", graph.nodes[n].get("head", 0)))
        width = len(names)
        for i, name in enumerate(names):
            pos[name] = (i - (width - 1) / 2, top if y == 10**6 else y)
    return pos


def draw_circuit(
    circuit: Circuit, path: str | Path, title: str | None = None, highlight: Mapping[str, str] | None = None
) -> Path:
    """Write a PNG of ``circuit.to_networkx()``; ``highlight`` maps node names to colours.

    Node-level circuits have no edges, so their nodes are drawn alone, layer by layer; edge-level
    circuits draw every edge, labelled with the receiving head's inputs (q, k, v).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    graph = circuit.to_networkx()
    if circuit.edges:
        for name, kind in (("embed", "embed"), ("logits", "logits")):
            if graph.has_node(name):
                graph.nodes[name]["kind"] = kind
    pos = _positions(graph)
    highlight = dict(highlight or {})
    colours = [highlight.get(n, KIND_COLOURS.get(graph.nodes[n].get("kind"), "#cccccc")) for n in graph.nodes]
    layers = {p[1] for p in pos.values()} or {0}
    widest = max((sum(1 for p in pos.values() if p[1] == y) for y in layers), default=1)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * widest + 2), max(3.0, 0.9 * len(layers) + 1.5)))
    if graph.number_of_nodes():
        nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colours, node_size=700, edgecolors="#333333")
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=8)
        if graph.number_of_edges():
            nx.draw_networkx_edges(
                graph,
                pos,
                ax=ax,
                arrows=True,
                arrowsize=10,
                node_size=700,
                edge_color="#555555",
                connectionstyle="arc3,rad=0.08",
            )
            labels = {(u, v): "".join(sorted(d.get("inputs") or ())) for u, v, d in graph.edges(data=True)}
            labels = {k: v for k, v in labels.items() if v}
            if labels:
                nx.draw_networkx_edge_labels(graph, pos, edge_labels=labels, ax=ax, font_size=6)
    else:
        ax.text(0.5, 0.5, "(empty circuit)", ha="center", va="center", transform=ax.transAxes)
    import textwrap

    text = title or str(circuit)
    ax.set_title("\n".join(textwrap.wrap(text[:400], 70)), fontsize=8)
    ax.set_axis_off()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
