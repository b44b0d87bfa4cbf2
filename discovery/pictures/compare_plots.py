"""Diagrams of two circuits at once: components placed by layer, coloured by which circuit has them.

:func:`draw_comparison` writes a PNG (matplotlib, Agg backend): x is the layer (``embed`` left as
"emb", ``logits`` right as "out"; a layer's MLP just after its heads), y the head index (MLPs on a
row of their own below the heads). Colours: shared components and edges in purple, only in A in blue, only in B in
orange. Node-level circuits have no edges; their components are drawn alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from discovery.analysis.compare import compare, union_graph
from discovery.pictures.plots import grid_position, pyplot, save_figure, wrap
from discovery.types.circuit import Circuit

COLOURS = {"both": "#7b3fa0", "a": "#1f77b4", "b": "#ff7f0e"}


def draw_comparison(
    a: Circuit, b: Circuit, path: str | Path, title: str | None = None, labels: tuple[str, str] = ("A", "B")
) -> Path:
    """Write a PNG of ``a`` and ``b`` overlaid (see the module docstring); returns the path."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    graph = union_graph(a, b)
    n_layers = max([d["layer"] for _, d in graph.nodes(data=True)] + [0]) + 1
    n_heads = max([d["head"] for _, d in graph.nodes(data=True) if d["kind"] == "head"] + [0]) + 1
    pos = {n: grid_position(d["kind"], d["layer"], d["head"], n_layers, n_heads) for n, d in graph.nodes(data=True)}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * n_layers + 3), max(4.0, 0.45 * n_heads + 3)))
    for s, r, d in graph.edges(data=True):
        (x0, y0), (x1, y1) = pos[s], pos[r]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops=dict(
                arrowstyle="->",
                color=COLOURS[d["membership"]],
                alpha=0.6,
                lw=1.2,
                shrinkA=9,
                shrinkB=9,
                connectionstyle="arc3,rad=0.08",
            ),
        )
    for n, d in graph.nodes(data=True):
        x, y = pos[n]
        ax.scatter([x], [y], s=420, color=COLOURS[d["membership"]], zorder=3, edgecolors="black", linewidths=0.6)
        ax.text(
            x,
            y,
            {"embed": "emb", "logits": "out"}.get(n, n),
            ha="center",
            va="center",
            fontsize=7,
            color="white",
            zorder=4,
            fontweight="bold",
        )
    cmp = compare(a, b)
    ax.set_xlabel("layer")
    ax.set_ylabel("head (MLPs below)")
    ax.set_xlim(-1.6, n_layers + 0.6)
    ax.set_ylim(n_heads + 1.0, -1.0)  # head 0 at the top, MLPs on the bottom row
    ax.set_xticks(range(n_layers))
    ax.set_yticks(list(range(n_heads)) + [n_heads + 0.2], [str(h) for h in range(n_heads)] + ["MLP"])
    subtitle = f"node Jaccard {cmp.node_jaccard:.2f}" + (
        f", edge Jaccard {cmp.edge_jaccard:.2f}" if cmp.edge_jaccard is not None else ""
    )
    ax.set_title(wrap(f"{title}\n{subtitle}" if title else subtitle, 80), fontsize=9)
    handles = [
        Line2D([0], [0], marker="o", color="w", markerfacecolor=COLOURS[k], markersize=10, label=lab)
        for k, lab in (("both", "both"), ("a", f"only {labels[0]}"), ("b", f"only {labels[1]}"))
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return save_figure(fig, path)


def draw_overlap_matrix(labels: list[str], matrix: Any, path: str | Path, title: str | None = None) -> Path:
    """A heatmap of a Jaccard matrix (from :func:`discovery.analysis.compare.overlap_matrix`)."""
    plt = pyplot()

    n = len(labels)
    fig, ax = plt.subplots(figsize=(2 + 0.9 * n, 1.6 + 0.8 * n))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.2f}",
                ha="center",
                va="center",
                color="white" if matrix[i, j] < 0.6 else "black",
                fontsize=8,
            )
    fig.colorbar(im, ax=ax, label="Jaccard")
    if title:
        ax.set_title(wrap(title, 60), fontsize=9)
    return save_figure(fig, path)
