"""Small pieces the search methods share (candidate pools, picking the best score)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from discovery.scoring.scorer import Scorer
from discovery.types.circuit import Circuit, Node, parse_node
from discovery.types.errors import UsageError
from discovery.types.evaluation import Score


def ablates_mlps(evaluator: Scorer) -> bool:
    ablation = getattr(evaluator, "ablation", None)
    return bool(getattr(ablation, "ablate_mlps", False))


def parse_nodes(evaluator: Scorer, names: Iterable[str], method: str, what: str = "pool") -> list[Node]:
    nodes = []
    for name in names:
        node = parse_node(name)
        if node.kind in ("embed", "logits"):
            raise UsageError(f"method {method!r}: {what} lists {name!r}; list heads (L.H) and MLPs (mL) only")
        evaluator.shape.check(node)
        if node.kind == "mlp" and not ablates_mlps(evaluator):
            raise UsageError(
                f"method {method!r}: {what} lists MLP {name!r}, but this evaluation keeps every MLP; "
                "pass --ablate-mlps to search over MLPs"
            )
        nodes.append(node)
    return sorted(set(nodes), key=lambda n: n.sort_key)


def candidate_pool(evaluator: Scorer, pool: Sequence[str] | None, mlps: bool, method: str) -> list[Node]:
    """The components a node-level search may pick: ``pool`` if given, else every head (and MLP)."""
    if pool:
        return parse_nodes(evaluator, pool, method)
    nodes = list(evaluator.shape.all_heads())
    if mlps:
        if not ablates_mlps(evaluator):
            raise UsageError(f"method {method!r}: mlps=true needs an evaluation that ablates MLPs (--ablate-mlps)")
        nodes += evaluator.shape.all_mlps()
    return sorted(nodes, key=lambda n: n.sort_key)


def best(scores: Sequence[Score]) -> Score:
    """The highest normalised score; ties go to the smaller, then canonically first, circuit."""
    return max(scores, key=lambda s: (_value(s.normalised), -s.circuit.size, _neg_key(s.circuit)))


def _value(x: float) -> float:
    return float("-inf") if x != x else x


def _neg_key(c: Circuit) -> tuple:
    # reverse canonical order so max() prefers the canonically first circuit among equals
    return tuple(-ord(ch) for ch in c.canonical)
