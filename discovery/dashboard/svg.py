"""Inline SVG for the dashboard's pages: circuit diagrams, score-against-size plots, heatmaps, matrices.

Pure functions from plain values to SVG text (no store, no model). Every number drawn comes from the
values passed in; a missing value (None / NaN) is drawn as a hatched or empty cell and said so in
its tooltip, never as a number.

Circuit diagrams use the layer x head layout: one column per layer (``embed`` on the left and
``logits`` on the right for edge-level circuits), one row per head, the layer's MLP in a row below
its heads. Every position of the model is drawn as a faint slot (class ``slot``); each component of
the circuit is one element of class ``node`` with ``data-name`` (the browser test counts them).
Edges are drawn with a width proportional to |score| when the search gave edge scores (EAP's
ranking), and with one width otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from discovery.types.circuit import Circuit, Node

MEMBERSHIP_COLOURS = {"both": "#7c3aed", "a": "#2563eb", "b": "#ea580c", "in": "#2563eb"}
KIND_FILL = {"head": "#2563eb", "mlp": "#d97706", "embed": "#6b7280", "logits": "#6b7280"}


def _num(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def _fmt(x: float | None, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if _num(x) else "n/a"


def shape_of(circuits: Sequence[Circuit], n_layers: int | None = None, n_heads: int | None = None) -> tuple[int, int]:
    """The model shape to draw: the stored model's, else the smallest that holds every component."""
    layers = [n.layer for c in circuits for n in c.nodes if n.kind in ("head", "mlp")]
    heads = [n.head for c in circuits for n in c.nodes if n.kind == "head"]
    return (
        max(n_layers or 0, (max(layers) + 1) if layers else 1),
        max(n_heads or 0, (max(heads) + 1) if heads else 1),
    )


class _Layout:
    """Pixel positions of a model's components in the layer x head grid."""

    def __init__(self, n_layers: int, n_heads: int, edge_level: bool, cell: float = 52.0) -> None:
        self.n_layers, self.n_heads, self.edge_level, self.cell = n_layers, n_heads, edge_level, cell
        self.left = 54.0 + (cell + 12 if edge_level else 0.0)
        self.top = 34.0
        self.width = self.left + n_layers * cell + (cell if edge_level else 0.0) + 20
        self.height = self.top + (n_heads + 1) * cell + 22

    def pos(self, node: Node) -> tuple[float, float]:
        c = self.cell
        mid_y = self.top + (self.n_heads + 1) * c / 2 - c / 2
        if node.kind == "embed":
            return self.left - c + c / 2 - 4, mid_y
        if node.kind == "logits":
            return self.left + self.n_layers * c + c / 2 + 6, mid_y
        row = node.head if node.kind == "head" else self.n_heads
        return self.left + node.layer * c + c / 2, self.top + row * c + c / 2


def _node_shape(node: Node, x: float, y: float, r: float, fill: str, css: str, extra: str, label: bool) -> str:
    title = f"<title>{escape(extra)}</title>" if extra else ""
    text = (
        f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" class="node-label">{escape(node.name)}</text>'
        if label
        else ""
    )
    attrs = f'class="{css}" data-name="{escape(node.name)}"'
    if node.kind == "head":
        shape = f'<circle {attrs} cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{fill}">{title}</circle>'
    else:
        shape = (
            f'<rect {attrs} x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" rx="4" '
            f'fill="{fill}">{title}</rect>'
        )
    return shape + text


def circuit_svg(
    circuit: Circuit,
    n_layers: int | None = None,
    n_heads: int | None = None,
    edge_scores: Mapping[str, float] | None = None,
    membership: Mapping[str, str] | None = None,
    edge_membership: Mapping[str, str] | None = None,
    extra_nodes: Sequence[Node] = (),
    title: str | None = None,
) -> str:
    """The circuit in the layer x head grid. ``membership`` (compare view) colours nodes ``both``/``a``/``b``;
    ``extra_nodes`` are drawn as components too (the other circuit's nodes in a comparison)."""
    edge_level = bool(circuit.edges) or any(n.kind in ("embed", "logits") for n in circuit.nodes)
    L, H = shape_of([circuit, Circuit(frozenset(extra_nodes))], n_layers, n_heads)
    lay = _Layout(L, H, edge_level)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="circuit" viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" '
        f'width="{lay.width:.0f}" height="{lay.height:.0f}" role="img" '
        f'aria-label="{escape(title or "circuit " + circuit.canonical)}">'
    ]
    for layer in range(L):
        x = lay.left + layer * lay.cell + lay.cell / 2
        out.append(f'<text x="{x:.1f}" y="18" text-anchor="middle" class="axis">L{layer}</text>')
    for h in range(H):
        y = lay.top + h * lay.cell + lay.cell / 2
        out.append(f'<text x="8" y="{y + 4:.1f}" class="axis">head {h}</text>')
    out.append(f'<text x="8" y="{lay.top + H * lay.cell + lay.cell / 2 + 4:.1f}" class="axis">MLP</text>')
    r = lay.cell * 0.36
    for layer in range(L):  # every position of the model, faint
        for h in range(H):
            x, y = lay.pos(Node("head", layer, h))
            out.append(f'<circle class="slot" cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}"/>')
        x, y = lay.pos(Node("mlp", layer))
        out.append(
            f'<rect class="slot" x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" rx="4"/>'
        )
    # edges below nodes, width by |score| when the method scored them
    weights = {k: abs(v) for k, v in (edge_scores or {}).items() if _num(v)}
    top_weight = max(weights.values(), default=0.0)
    for edge in sorted(circuit.edges, key=lambda e: e.sort_key):
        (x1, y1), (x2, y2) = lay.pos(edge.sender), lay.pos(edge.receiver)
        w = weights.get(edge.name)
        width = 1.2 + 5.0 * (w / top_weight) if (w is not None and top_weight > 0) else 1.5
        colour = MEMBERSHIP_COLOURS.get((edge_membership or {}).get(edge.name, ""), "#64748b")
        label = f"{edge.name}" + (f": score {edge_scores[edge.name]:.4g}" if w is not None and edge_scores else "")
        bend = (x2 - x1) * 0.18
        # a head's q, k and v edges from one sender arrive side by side, not on top of each other
        lift = {"q": -7.0, "k": 0.0, "v": 7.0}.get(edge.receiver_input or "", 0.0)
        out.append(
            f'<path class="edge" data-edge="{escape(edge.name)}" '
            f'd="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1 + lift:.1f} '
            f'{x2 - bend:.1f},{y2 + lift:.1f} {x2:.1f},{y2:.1f}" stroke="{colour}" stroke-width="{width:.2f}" '
            f'fill="none" stroke-opacity="0.55"><title>{escape(label)}</title></path>'
        )
    nodes = {n for n in circuit.nodes} | set(extra_nodes)
    for node in sorted(nodes, key=lambda n: n.sort_key):
        x, y = lay.pos(node)
        if node.kind in ("embed", "logits"):
            out.append(
                f'<rect class="io" data-name="{node.name}" x="{x - 20:.1f}" y="{y - 12:.1f}" width="40" height="24" '
                f'rx="6" fill="#e5e7eb"/><text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" '
                f'class="io-label">{node.name}</text>'
            )
            continue
        member = (membership or {}).get(node.name)
        fill = MEMBERSHIP_COLOURS[member] if member else KIND_FILL[node.kind]
        tip = node.name + (f" ({ {'both': 'in both', 'a': 'only in A', 'b': 'only in B'}[member] })" if member else "")
        css = "node" + (f" member-{member}" if member else "")
        out.append(_node_shape(node, x, y, r, fill, css, tip, True))
    out.append("</svg>")
    return "".join(out)


def score_size_svg(
    points: Sequence[dict[str, Any]], highlight: str | None = None, width: int = 560, height: int = 300
) -> str:
    """Normalised score against circuit size, one dot per evaluated circuit (``points``: size, normalised,
    circuit); ``highlight`` (a canonical string) is drawn larger. The frontier (best score at each size
    or smaller) is drawn as a step line. Points without a normalised score are left out (the caller
    says how many)."""
    pts = [p for p in points if _num(p.get("normalised"))]
    pad_l, pad_r, pad_t, pad_b = 52, 16, 14, 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="normalised score against circuit size">'
    ]
    if not pts:
        out.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="axis">no scored circuits</text>'
        )
        return "".join(out) + "</svg>"
    xs = [int(p["size"]) for p in pts]
    ys = [float(p["normalised"]) for p in pts]
    x0, x1 = -0.4, max(max(xs), 1) + 0.4
    y0, y1 = min(0.0, min(ys)), max(1.0, max(ys))
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def X(v: float) -> float:
        return pad_l + (v - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return pad_t + (1 - (v - y0) / (y1 - y0)) * ph

    out.append(f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" class="frame"/>')
    for t in _ticks(y0, y1):
        out.append(
            f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>'
            f'<text x="{pad_l - 6}" y="{Y(t) + 4:.1f}" text-anchor="end" class="axis">{t:g}</text>'
        )
    step = max(1, math.ceil((x1 - x0) / 12))
    for t in range(0, int(x1) + 1, step):
        out.append(f'<text x="{X(t):.1f}" y="{pad_t + ph + 16}" text-anchor="middle" class="axis">{t}</text>')
    out.append(
        f'<text x="{pad_l + pw / 2}" y="{height - 6}" text-anchor="middle" class="axis">'
        "circuit size (components)</text>"
        f'<text x="14" y="{pad_t + ph / 2}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 14 {pad_t + ph / 2})">normalised score</text>'
    )
    if y0 < 1.0 < y1 or y1 == 1.0:
        out.append(f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{Y(1):.1f}" y2="{Y(1):.1f}" class="ref"/>')
    best: dict[int, float] = {}
    for x, y in zip(xs, ys):
        best[x] = max(best.get(x, -math.inf), y)
    frontier, running = [], -math.inf
    for x in sorted(best):
        running = max(running, best[x])
        frontier.append((x, running))
    if len(frontier) > 1:
        d = f"M{X(frontier[0][0]):.1f},{Y(frontier[0][1]):.1f}"
        for (_, ya), (xb, yb) in zip(frontier, frontier[1:]):
            d += f" L{X(xb):.1f},{Y(ya):.1f} L{X(xb):.1f},{Y(yb):.1f}"
        out.append(f'<path d="{d}" class="frontier"/>')
    for p, x, y in zip(pts, xs, ys):
        hl = highlight is not None and p.get("circuit") == highlight
        tip = f"{p.get('circuit') or '(empty)'}: size {x}, normalised {y:.4f}"
        out.append(
            f'<circle class="point{" result" if hl else ""}" cx="{X(x):.1f}" cy="{Y(y):.1f}" r="{6 if hl else 3.2}">'
            f"<title>{escape(tip)}</title></circle>"
        )
    return "".join(out) + "</svg>"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    raw = span / n if span > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _diverging(value: float, scale: float) -> str:
    """White at 0, red for positive, blue for negative, saturated at |value| = scale."""
    t = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    if t >= 0:
        r, g, b = 255, int(255 - 180 * t), int(255 - 190 * t)
    else:
        r, g, b = int(255 + 200 * t), int(255 + 135 * t), 255
    return f"rgb({r},{g},{b})"


def heatmap_svg(cells: Sequence[tuple[int, int, float]], n_layers: int, n_heads: int, label: str = "effect") -> str:
    """A patching heatmap: rows are layers, columns heads (and ``MLP`` when a cell has head -1). Each cell
    carries ``data-layer``, ``data-head``, ``data-effect``; hovering shows the effect (inline script on
    the page) and a native tooltip. Cells with no stored value are hatched."""
    has_mlp = any(h == -1 for _, h, _ in cells)
    cols = n_heads + (1 if has_mlp else 0)
    values = {(lay, h if h >= 0 else n_heads): e for lay, h, e in cells}
    scale = max((abs(e) for e in values.values() if _num(e)), default=0.0)
    c, left, top = 42, 56, 30
    width, height = left + cols * c + 90, top + n_layers * c + 14
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="patching heatmap">'
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#cbd5e1" stroke-width="2"/></pattern></defs>'
    ]
    for col in range(cols):
        name = "MLP" if col == n_heads else f"H{col}"
        out.append(f'<text x="{left + col * c + c / 2}" y="20" text-anchor="middle" class="axis">{name}</text>')
    for layer in range(n_layers):
        out.append(
            f'<text x="{left - 8}" y="{top + layer * c + c / 2 + 4}" text-anchor="end" class="axis">L{layer}</text>'
        )
        for col in range(cols):
            x, y = left + col * c, top + layer * c
            head = -1 if col == n_heads else col
            name = f"m{layer}" if head == -1 else f"{layer}.{head}"
            e = values.get((layer, col))
            if e is None or not _num(e):
                out.append(
                    f'<rect class="cell missing" x="{x}" y="{y}" width="{c - 2}" height="{c - 2}" fill="url(#hatch)" '
                    f'data-sender="{name}"><title>{name}: no stored value (cannot send to the receiver)</title></rect>'
                )
                continue
            out.append(
                f'<rect class="cell" x="{x}" y="{y}" width="{c - 2}" height="{c - 2}" fill="{_diverging(e, scale)}" '
                f'data-sender="{name}" data-layer="{layer}" data-head="{head}" data-effect="{e:.6g}">'
                f"<title>{name}: {label} {e:.4g}</title></rect>"
            )
    # colour bar
    bx = left + cols * c + 24
    for i in range(20):
        v = scale * (1 - 2 * i / 19) if scale > 0 else 0.0
        out.append(
            f'<rect x="{bx}" y="{top + i * (n_layers * c - 2) / 20:.1f}" width="14" '
            f'height="{(n_layers * c - 2) / 20 + 0.5:.1f}" fill="{_diverging(v, scale)}"/>'
        )
    out.append(
        f'<text x="{bx + 18}" y="{top + 8}" class="axis">{_fmt(scale, 3)}</text>'
        f'<text x="{bx + 18}" y="{top + n_layers * c - 4}" class="axis">{_fmt(-scale, 3)}</text>'
    )
    return "".join(out) + "</svg>"


def matrix_cell_colour(value: float | None) -> str:
    """Background of a matrix cell in [0, 1] (Jaccard, normalised score); grey when there is no value."""
    if not _num(value):
        return "#f1f5f9"
    t = max(0.0, min(1.0, float(value)))  # type: ignore[arg-type]
    return f"rgba(37, 99, 235, {0.08 + 0.55 * t:.2f})"


def history_svg(history: Sequence[dict[str, Any]], width: int = 420, height: int = 150) -> str:
    """Evaluations stored against seconds since the job started (one point per stored batch)."""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot history" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="evaluations stored over time">'
    ]
    pts = [(float(h["t_s"]), int(h["evaluations"])) for h in history if _num(h.get("t_s"))]
    if not pts:
        out.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="axis">nothing stored yet</text>'
        )
        return "".join(out) + "</svg>"
    pad_l, pad_r, pad_t, pad_b = 46, 12, 10, 32
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b
    t1 = max(max(t for t, _ in pts), 1e-3)
    n1 = max(n for _, n in pts)

    def X(t: float) -> float:
        return pad_l + t / t1 * pw

    def Y(n: float) -> float:
        return pad_t + (1 - n / n1) * ph

    d = f"M{X(0):.1f},{Y(0):.1f} " + " ".join(f"L{X(t):.1f},{Y(n):.1f}" for t, n in pts)
    out.append(
        f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" class="frame"/>'
        f'<path d="{d}" fill="none" stroke="#2563eb" stroke-width="2"/>'
        f'<text x="{pad_l - 6}" y="{pad_t + 10}" text-anchor="end" class="axis">{n1}</text>'
        f'<text x="{pad_l - 6}" y="{pad_t + ph}" text-anchor="end" class="axis">0</text>'
        f'<text x="{pad_l}" y="{pad_t + ph + 14}" class="axis">0 s</text>'
        f'<text x="{pad_l + pw}" y="{pad_t + ph + 14}" text-anchor="end" class="axis">{t1:.1f} s</text>'
        f'<text x="{pad_l + pw / 2}" y="{height - 4}" text-anchor="middle" class="axis">'
        "seconds since the job started</text>"
    )
    return "".join(out) + "</svg>"
