"""The one interface every search method sits behind.

A method is a plain function ``func(evaluator, params, progress) -> SearchResult`` registered as a
frozen :class:`SearchMethodSpec` with its parameters declared, so the CLI, the job submit check and
the store all read one schema. Adding a method is adding one module that calls :func:`register`.

Methods know nothing of SQL or Celery: they ask ``evaluator.evaluate(circuits)`` for scores. The
evaluator they get may be a :class:`~discovery.scoring.evaluator.Evaluator` or the store's
``StoredEvaluator`` (same interface, serving stored scores and persisting new ones), which is how
every evaluated circuit is kept and a resumed job skips what it already did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from discovery.scoring.scorer import Scorer, ScorerWrapper
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.evaluation import Ablation, AblationChoice, Score
from discovery.types.progress import ProgressCallback, no_progress


@dataclass(frozen=True)
class Param:
    """One declared parameter of a search method."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def coerce(self, value: Any, method: str) -> Any:
        if value is None:
            return None
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out: Any = value.lower() in ("true", "1", "yes")
            elif self.type is list:
                out = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
            else:
                out = self.type(value)
        except (TypeError, ValueError) as e:
            raise UsageError(f"method {method!r}: parameter {self.name}={value!r} is not a {self.type.__name__}") from e
        if self.choices is not None and out not in self.choices:
            raise UsageError(f"method {method!r}: parameter {self.name}={out!r}; choose one of {list(self.choices)}")
        if self.minimum is not None and out < self.minimum:
            raise UsageError(f"method {method!r}: parameter {self.name}={out} is below {self.minimum}")
        if self.maximum is not None and out > self.maximum:
            raise UsageError(f"method {method!r}: parameter {self.name}={out} is above {self.maximum}")
        return out


@dataclass(frozen=True)
class SearchResult:
    """What every method returns."""

    method: str
    params: dict[str, Any]
    circuit: Circuit
    score: Score
    n_evaluations: int
    """Circuits the method asked the evaluator for (cache hits included)."""
    seconds: float
    steps: tuple[Score, ...] = ()
    """The scores along the way (a sweep's steps, greedy's path), in order."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Method-specific results, JSON-serialisable (e.g. EAP's edge scores, top-k's ranking)."""
    target_met: bool | None = None
    """Methods with a target (greedy, exhaustive, iterative-pruning): whether the result meets it.
    None for methods without one. A missed target is said first, never left to be inferred."""

    def summary(self) -> dict[str, Any]:
        """What a store keeps of this result beside its circuit (a job's ``result_score``): the score, its
        evaluation method, the circuit's size, the cost and the method's parameters and extras. The values
        are as they are (a NaN normalised score stays NaN); a store makes them JSON-safe."""
        score = self.score
        return {
            "metric": score.metric,
            "normalised": score.normalised,
            "full": score.full,
            "ablated": score.ablated,
            "evaluation_method": asdict(score.method),
            "size": self.circuit.size,
            "n_edges": self.circuit.n_edges,
            "n_evaluations": self.n_evaluations,
            "seconds": self.seconds,
            "method": self.method,
            "params": self.params,
            "extra": self.extra,
        }


SearchFunc = Callable[[Scorer, dict[str, Any], ProgressCallback], SearchResult]


@dataclass(frozen=True)
class EvaluationDefaults:
    """The evaluation a method runs under when its caller leaves a setting unset: a method named
    after a paper runs what that paper ran (ACDC: paired resample patching, every edge prunable)."""

    ablation: str = "mean"
    ablate_mlps: bool = False
    ablate_embed: bool = False


@dataclass(frozen=True)
class SearchMethodSpec:
    key: str
    summary: str
    params: tuple[Param, ...]
    func: SearchFunc
    level: Literal["node", "edge"] = "node"
    evaluation: EvaluationDefaults = EvaluationDefaults()

    def resolve_evaluation(
        self, ablation: str | None = None, ablate_mlps: bool | None = None, ablate_embed: bool | None = None
    ) -> tuple[str, bool, bool]:
        """(ablation, ablate_mlps, ablate_embed): each given value, or this method's default."""
        d = self.evaluation
        return (
            d.ablation if ablation is None else ablation,
            d.ablate_mlps if ablate_mlps is None else bool(ablate_mlps),
            d.ablate_embed if ablate_embed is None else bool(ablate_embed),
        )

    def resolve_ablation(self, chosen: AblationChoice) -> Ablation:
        """The ablation this method runs under: each part the caller chose, else this method's default."""
        kind, mlps, embed = self.resolve_evaluation(chosen.kind, chosen.ablate_mlps, chosen.ablate_embed)
        return Ablation.parse(kind, chosen.source, mlps, embed)

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, values coerced and range-checked; unknown names refused."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise UsageError(
                f"method {self.key!r} has no parameter {', '.join(unknown)}; "
                f"its parameters: {', '.join(known) or '(none)'}"
            )
        return {name: p.coerce(params.get(name, p.default), self.key) for name, p in known.items()}


METHODS: dict[str, SearchMethodSpec] = {}


def register(spec: SearchMethodSpec) -> SearchMethodSpec:
    if spec.key in METHODS:
        raise ValueError(f"search method {spec.key!r} registered twice")
    METHODS[spec.key] = spec
    return spec


def get_method(key: str) -> SearchMethodSpec:
    import discovery.search  # noqa: F401 - importing the package registers every method

    if key not in METHODS:
        raise UsageError(f"unknown search method {key!r}; known methods: {', '.join(sorted(METHODS)) or '(none)'}")
    return METHODS[key]


class CountingEvaluator(ScorerWrapper):
    """Counts the circuits a method asks for; every other member is forwarded (:class:`ScorerWrapper`)."""

    def __init__(self, inner: Scorer) -> None:
        super().__init__(inner)
        self.n_evaluations = 0
        self.parent: CountingEvaluator | None = None

    def evaluate(self, circuits: Sequence[Circuit], progress: ProgressCallback | None = None) -> list[Score]:
        counter: CountingEvaluator | None = self
        while counter is not None:
            counter.n_evaluations += len(circuits)
            counter = counter.parent
        return self.inner.evaluate(circuits, progress)

    def with_metric(self, metric: str) -> CountingEvaluator:
        """Counted too: the circuits a method scores under another metric are evaluations as well."""
        sibling = CountingEvaluator(self.inner.with_metric(metric))
        sibling.parent = self
        return sibling


def run_search(
    key: str,
    evaluator: Scorer,
    params: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> SearchResult:
    """Validate ``params`` and run method ``key``; the returned timing and evaluation count are measured here."""
    spec = get_method(key)
    checked = spec.validate(params or {})
    counting = CountingEvaluator(evaluator)
    start = time.perf_counter()
    result = spec.func(counting, checked, progress or no_progress)
    seconds = time.perf_counter() - start
    return SearchResult(
        key,
        checked,
        result.circuit,
        result.score,
        counting.n_evaluations,
        seconds,
        result.steps,
        result.extra,
        result.target_met,
    )
