"""Faithfulness curves: the score of a ranking's top-k for a grid of k, with its area, MIB's CPR and CMD.

A method that ranks components (``topk``/``threshold``: heads by path-patching effect) or edges
(``eap``/``eap-ig``: edges by attribution score) is judged by more than the one circuit it returns:
keep the k strongest, score that circuit with the evaluator, and do it for many k (auto-circuit's
curve; Miller et al. 2024). Every point is an ordinary evaluator score (so the store keeps each one),
normalised as ``(circuit - ablated) / (full - ablated)``: the full model is 1 and everything ablated 0.

Three summaries, all over x = k / total (the fraction of components or edges kept, 0..1) by the
trapezoid rule on the points computed:

- ``cpr`` (MIB's integrated circuit performance ratio, Mueller et al. 2025): the area under the
  normalised score; higher is better;
- ``cmd`` (MIB's integrated circuit-model distance): the area under ``|1 - normalised|``; lower is
  better;
- ``area``: the area under the normalised score over a log-scaled x, ``log(1 + k) / log(1 + total)``,
  which weighs small circuits the way auto-circuit's log-x plots do.

The grid (:func:`default_grid`) is every k when the ranking has at most 200 entries (heads), else
MIB's fractions 0, 0.1 %, 0.2 %, 0.5 %, 1 %, 2 %, 5 %, 10 %, 20 %, 50 %, 100 % plus the k a method
returned. When the full and ablated metrics are equal the normalisation is undefined: every point and
summary is NaN, and :attr:`FaithfulnessCurve.meaningful` is False.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from discovery.types.circuit import Circuit, parse_edge, parse_node
from discovery.types.errors import UsageError
from discovery.types.progress import ProgressCallback

MIB_FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
EVERY_K_UP_TO = 200

Unit = Literal["components", "edges"]


@dataclass(frozen=True)
class CurvePoint:
    k: int
    fraction: float
    metric: float
    normalised: float
    circuit: Circuit


@dataclass(frozen=True)
class FaithfulnessCurve:
    """A ranking's top-k scores and their summaries (see the module docstring)."""

    ranking: str
    """Where the ranking came from, e.g. ``eap (top_n=50)`` or ``job 12 (topk)``."""
    unit: Unit
    total: int
    points: tuple[CurvePoint, ...]
    method: str
    """The evaluation method every point was scored under (:meth:`EvaluationMethod.describe`)."""
    full: float
    ablated: float

    @property
    def meaningful(self) -> bool:
        return all(not math.isnan(p.normalised) for p in self.points)

    @property
    def cpr(self) -> float:
        return _trapezoid([p.fraction for p in self.points], [p.normalised for p in self.points])

    @property
    def cmd(self) -> float:
        return _trapezoid([p.fraction for p in self.points], [abs(1.0 - p.normalised) for p in self.points])

    @property
    def area(self) -> float:
        scale = math.log1p(self.total) or 1.0
        return _trapezoid([math.log1p(p.k) / scale for p in self.points], [p.normalised for p in self.points])

    def smallest_reaching(self, target: float) -> CurvePoint | None:
        """The first point (smallest k) whose normalised score reaches ``target``."""
        return next((p for p in self.points if p.normalised >= target), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ranking": self.ranking,
            "unit": self.unit,
            "total": self.total,
            "method": self.method,
            "full": self.full,
            "ablated": self.ablated,
            "area": self.area,
            "cpr": self.cpr,
            "cmd": self.cmd,
            "points": [
                {"k": p.k, "fraction": p.fraction, "metric": p.metric, "normalised": p.normalised} for p in self.points
            ],
        }


def _trapezoid(xs: Sequence[float], ys: Sequence[float]) -> float:
    total = 0.0
    for i in range(len(xs) - 1):
        total += (xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2
    return total


def default_grid(total: int, extra: Sequence[int] = ()) -> list[int]:
    """Every k in 0..total for short rankings, else MIB's fractions of ``total`` (plus ``extra``)."""
    if total <= EVERY_K_UP_TO:
        ks = set(range(total + 1))
    else:
        ks = {round(f * total) for f in MIB_FRACTIONS} | {1}
    return sorted(ks | {k for k in extra if 0 <= k <= total})


def ranking_of(result: Any) -> tuple[list[str], Unit]:
    """The ranking a search result carries, strongest first: EAP's ``edge_scores`` (edges) or
    path patching's ``ranking`` (components). Raises :class:`UsageError` for a method that ranks nothing."""
    extra = getattr(result, "extra", None) or {}
    if extra.get("edge_scores"):
        return [name for name, _ in extra["edge_scores"]], "edges"
    if extra.get("ranking"):
        return [name for name, _ in extra["ranking"]], "components"
    method = getattr(result, "method", "?")
    raise UsageError(
        f"method {method!r} returns no ranking: a faithfulness curve needs a method that ranks components "
        "(topk, threshold) or edges (eap, eap-ig)"
    )


def top_k_circuit(ranking: Sequence[str], k: int, unit: Unit) -> Circuit:
    if unit == "edges":
        return Circuit.from_edges(parse_edge(name) for name in ranking[:k])
    return Circuit.of(parse_node(name) for name in ranking[:k])


def faithfulness_curve(
    evaluator: Any,
    ranking: Sequence[str],
    unit: Unit,
    grid: Sequence[int] | None = None,
    label: str = "ranking",
    progress: ProgressCallback | None = None,
) -> FaithfulnessCurve:
    """Score the top-k of ``ranking`` (names, strongest first) for each k of ``grid`` (default
    :func:`default_grid`) in one batched ``evaluator.evaluate`` call."""
    if unit not in ("components", "edges"):
        raise UsageError(f"unit {unit!r}: choose components or edges")
    ranking = list(ranking)
    total = len(ranking)
    if total == 0:
        raise UsageError("the ranking is empty: nothing to draw a curve over")
    ks = sorted(set(grid)) if grid is not None else default_grid(total)
    bad = [k for k in ks if not 0 <= k <= total]
    if bad:
        raise UsageError(f"curve grid: k={bad[0]} is outside 0..{total} (the ranking's length)")
    # k = 0 is the empty circuit (everything ablated: normalised 0 by definition) at either level
    circuits = [top_k_circuit(ranking, k, unit) for k in ks]
    scores = evaluator.evaluate(circuits, progress)
    method = scores[0].method.describe() if scores else ""
    points = tuple(
        CurvePoint(k, k / total, float(s.metric), float(s.normalised), c) for k, s, c in zip(ks, scores, circuits)
    )
    first = scores[0]
    return FaithfulnessCurve(label, unit, total, points, method, float(first.full), float(first.ablated))


def curve_of_result(
    evaluator: Any, result: Any, grid: Sequence[int] | None = None, progress: ProgressCallback | None = None
) -> FaithfulnessCurve:
    """The curve of a search result's own ranking (its returned circuit's k is on the grid)."""
    ranking, unit = ranking_of(result)
    returned = result.circuit.n_edges if unit == "edges" else result.circuit.size
    ks = grid if grid is not None else default_grid(len(ranking), extra=[returned])
    label = f"{result.method} {result.params}" if getattr(result, "params", None) else str(result.method)
    return faithfulness_curve(evaluator, ranking, unit, ks, label=label, progress=progress)
