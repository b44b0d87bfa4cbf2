"""Pictures: the one figure-saving helper, path-patching heatmaps, circuit diagrams and faithfulness curves.

Every picture is drawn with matplotlib's Agg backend (no display needed) and written by
:func:`save_figure`, which keeps titles, colour-bar labels and tick labels inside the image at
every model size (``bbox_inches="tight"``).

Circuit diagrams share one layout: x is the layer (``embed`` on the left as "emb", ``logits`` on
the right as "out"; a layer's MLP just after its heads), y is the head index (head 0 at the top,
MLPs on a row of their own below the heads), so a circuit of GPT-2 small reads like its 12 x 12
grid of heads. Edge diagrams colour and thicken each edge by its score and can keep only the
``top_n`` strongest, which is what keeps a GPT-2-sized graph readable.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from discovery.types.circuit import Circuit, ModelShape

if TYPE_CHECKING:
    from discovery.analysis.curves import FaithfulnessCurve
    from discovery.scoring.patching import PatchingResult

KIND_COLOURS = {"embed": "#b0b0b0", "head": "#7fb3e6", "mlp": "#f2b36f", "logits": "#b0b0b0"}
MASKED_COLOUR = "#d9d9d9"
"""Heatmap cells that have no value (a head that cannot send to the receiver)."""


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported on first use: the library stays importable without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as an image at ``path`` (parent folders created), close it, return the path.

    ``bbox_inches="tight"`` grows the canvas to whatever the titles, colour bars and labels need, so
    nothing is clipped on a 2-layer model or on GPT-2 small.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return out


def wrap(text: str, width: int = 70, limit: int = 400) -> str:
    """A long title as lines of at most ``width`` characters (at most ``limit`` characters in all)."""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    # never at hyphens: "repeat-last" and "done-in" are names
    return "\n".join(
        textwrap.fill(part, width, break_on_hyphens=False, break_long_words=False) for part in text.split("\n")
    )


# --- heatmaps --------------------------------------------------------------------------------------
def save_heatmap(result: PatchingResult, path: str | Path, title: str | None = None) -> Path:
    """A layer x head heatmap of path-patching effects (diverging colours centred on zero) as a PNG.

    Heads that cannot send to the receiver (NaN: in or after the receiver's layer) are drawn grey
    and hatched, never as a zero effect. Small grids print each cell's value.
    """
    plt = pyplot()
    effects = np.asarray(result.effects, dtype=float)
    n_layers, n_heads = effects.shape
    finite = np.isfinite(effects)
    bound = float(np.nanmax(np.abs(effects))) if finite.any() else 1.0
    bound = bound if bound > 0 else 1.0
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 0.55 * n_heads), max(3.0, 1.2 + 0.42 * n_layers)))
    cmap = plt.get_cmap("RdBu").with_extremes(bad=MASKED_COLOUR)
    image = ax.imshow(np.ma.masked_invalid(effects), cmap=cmap, vmin=-bound, vmax=bound, aspect="auto")
    for layer, h in zip(*np.nonzero(~finite)):
        ax.add_patch(
            plt.Rectangle((h - 0.5, layer - 0.5), 1, 1, fill=False, hatch="//", edgecolor="#9a9a9a", linewidth=0)
        )
    if n_layers * n_heads <= 64:
        for layer, h in zip(*np.nonzero(finite)):
            v = effects[layer, h]
            ax.text(
                h,
                layer,
                f"{v:.2g}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(v) > 0.6 * bound else "black",
            )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    default = f"path patching -> {result.receiver}\n{result.dataset}"
    ax.set_title(wrap(title or default, width=max(50, 6 * n_heads)), fontsize=8)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    bar.set_label(f"{result.metric} change\n(patched - clean)", fontsize=8)
    if not finite.all():
        ax.annotate(
            "grey, hatched: cannot send to the receiver",
            xy=(0, 0),
            xycoords="axes fraction",
            xytext=(0, -36),
            textcoords="offset points",
            fontsize=7,
            color="#666666",
            va="top",
        )
    return save_figure(fig, path)


# --- circuit diagrams -------------------------------------------------------------------------------
def _grid_shape(circuit: Circuit, shape: ModelShape | None) -> tuple[int, int]:
    if shape is not None:
        return shape.n_layers, shape.n_heads
    layers = [n.layer for n in circuit.nodes if n.kind in ("head", "mlp")]
    heads = [n.head for n in circuit.nodes if n.kind == "head"]
    return (max(layers, default=0) + 1, max(heads, default=0) + 1)


def grid_position(kind: str, layer: int, head: int, n_layers: int, n_heads: int) -> tuple[float, float]:
    """Where a component sits in the layer x head layout (see the module docstring)."""
    middle = (n_heads - 1) / 2
    if kind == "embed":
        return (-1.0, middle)
    if kind == "logits":
        return (float(n_layers), middle)
    if kind == "mlp":
        return (layer + 0.45, n_heads + 0.2)
    return (float(layer), float(head))


def _grid_axes(ax: Any, n_layers: int, n_heads: int) -> None:
    ax.set_xlabel("layer")
    ax.set_ylabel("head (MLP row below)")
    ax.set_xlim(-1.6, n_layers + 0.6)
    ax.set_ylim(n_heads + 1.0, -1.0)
    step = 1 if n_layers <= 16 else 2
    ax.set_xticks([-1, *range(0, n_layers, step), n_layers], ["emb", *map(str, range(0, n_layers, step)), "out"])
    hstep = 1 if n_heads <= 16 else 2
    ax.set_yticks([*range(0, n_heads, hstep), n_heads + 0.2], [*map(str, range(0, n_heads, hstep)), "MLP"])
    ax.grid(True, color="#eeeeee", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)


def draw_circuit(
    circuit: Circuit,
    path: str | Path,
    title: str | None = None,
    highlight: Mapping[str, str] | None = None,
    *,
    shape: ModelShape | None = None,
    edge_scores: Mapping[str, float] | Sequence[tuple[str, float]] | None = None,
    top_n: int | None = None,
) -> Path:
    """Write a PNG of ``circuit`` on the layer x head grid; returns the path.

    ``shape`` (the model's) draws every head of the model faintly behind the circuit, so a node-level
    circuit shows where its heads sit. An edge-level circuit draws its edges; with ``edge_scores``
    (edge name -> score, e.g. EAP's ranking) each edge's width and colour follow its score (blue
    positive, red negative), and ``top_n`` keeps only the strongest edges. ``highlight`` maps
    component names to colours.
    """
    plt = pyplot()
    from matplotlib.collections import LineCollection

    n_layers, n_heads = _grid_shape(circuit, shape)
    size = max(n_layers, n_heads)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * n_layers + 3.5), max(4.0, 0.5 * n_heads + 2.5)))
    if shape is not None:
        xs = [layer for layer in range(n_layers) for _ in range(n_heads)]
        ys = [h for _ in range(n_layers) for h in range(n_heads)]
        ax.scatter(xs, ys, s=30 if size > 8 else 60, color="#f0f0f0", edgecolors="#cfcfcf", linewidths=0.5, zorder=1)
    scores = dict(edge_scores or {})
    edges = sorted(circuit.edges, key=lambda e: e.sort_key)
    shown_nodes = {n for n in circuit.nodes}
    if edges and top_n is not None and len(edges) > top_n:
        edges = sorted(edges, key=lambda e: -abs(scores.get(e.name, 0.0)))[:top_n]
        shown_nodes = {n for e in edges for n in (e.sender, e.receiver)}
    note = f"top {len(edges)} of {circuit.n_edges} edges by |score|" if len(edges) < circuit.n_edges else ""
    if edges:
        segments, colours, widths = [], [], []
        strongest = max((abs(scores.get(e.name, 0.0)) for e in edges), default=0.0) or 1.0
        cmap = plt.get_cmap("coolwarm_r")
        for e in edges:
            segments.append(
                [
                    grid_position(e.sender.kind, e.sender.layer, e.sender.head, n_layers, n_heads),
                    grid_position(e.receiver.kind, e.receiver.layer, e.receiver.head, n_layers, n_heads),
                ]
            )
            s = scores.get(e.name)
            if s is None:
                colours.append("#555555")
                widths.append(1.0)
            else:
                colours.append(cmap(0.5 + 0.5 * s / strongest))
                widths.append(0.4 + 3.6 * abs(s) / strongest)
        ax.add_collection(LineCollection(segments, colors=colours, linewidths=widths, alpha=0.7, zorder=2))
        if scores:
            mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(-strongest, strongest))
            bar = fig.colorbar(mappable, ax=ax, fraction=0.04, pad=0.02)
            bar.set_label("edge score (width: |score|)", fontsize=8)
    colours_by_kind = dict(highlight or {})
    node_size = 320 if size <= 8 else (260 if size <= 16 else 90)
    font = 7 if size <= 8 else (6 if size <= 16 else 4)
    for node in sorted(shown_nodes, key=lambda n: n.sort_key):
        x, y = grid_position(node.kind, node.layer, node.head, n_layers, n_heads)
        colour = colours_by_kind.get(node.name, KIND_COLOURS.get(node.kind, "#cccccc"))
        ax.scatter([x], [y], s=node_size, color=colour, edgecolors="#333333", linewidths=0.6, zorder=3)
        label = {"embed": "emb", "logits": "out"}.get(node.name, node.name)
        ax.text(x, y, label, ha="center", va="center", fontsize=font, zorder=4)
    if not shown_nodes:
        ax.text(0.5, 0.5, "(empty circuit)", ha="center", va="center", transform=ax.transAxes)
    _grid_axes(ax, n_layers, n_heads)
    text = title or str(circuit)
    if note:
        text += f"\n({note})"
    ax.set_title(wrap(text, width=max(60, int(9 * n_layers))), fontsize=8)
    return save_figure(fig, path)


# --- curves ------------------------------------------------------------------------------------------
def draw_curve(curve: FaithfulnessCurve, path: str | Path, title: str | None = None) -> Path:
    """The faithfulness curve (normalised score of the top-k against k), the full-model line at 1, and
    its area, CPR and CMD in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ks = [p.k for p in curve.points]
    ys = [p.normalised for p in curve.points]
    ax.plot(ks, ys, marker="o", markersize=3, color="#1f77b4", label=f"top-k {curve.unit}")
    ax.axhline(1.0, color="#888888", linestyle="--", linewidth=0.8, label="full model")
    ax.axhline(0.0, color="#bbbbbb", linestyle=":", linewidth=0.8, label="everything ablated")
    if len(ks) > 2 and ks[-1] > 20 * max(1, ks[1]):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(-0.3, ks[-1] * 1.15)
    ax.set_xlabel(f"k ({curve.unit} kept, strongest first; {curve.total} in all)")
    ax.set_ylabel("normalised score")
    summary = (
        f"area (log k) {_num(curve.area)}, CPR {_num(curve.cpr)}, CMD {_num(curve.cmd)}; "
        f"full {curve.full:.4g}, ablated {curve.ablated:.4g}"
    )
    ax.legend(fontsize=7, loc="best")
    text = title or f"faithfulness curve: {curve.ranking}\n{curve.method}"
    ax.set_title(wrap(f"{text}\n{summary}", width=100), fontsize=8)
    return save_figure(fig, path)


def _num(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
