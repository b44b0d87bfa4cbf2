"""``Scorer``: everything a search method may ask of the thing that scores circuits.

A method receives a :class:`Scorer`, never a concrete class: the plain
:class:`~discovery.scoring.evaluator.Evaluator`, :class:`~discovery.scoring.stored.StoredEvaluator`
(serves stored scores, persists new ones), the registry's counting wrapper and the service's tracker
all implement it, so storage, resumption and counting hold for every method without the method
knowing. Scores come only from ``evaluate``; the attributes say what is being scored (model,
dataset, ablation, shape) and the two ends scores are normalised by. Attribution methods that
differentiate through the forward (EAP, EAP-IG) reach the forward itself through
``base_evaluator``; what they then pick is scored through ``evaluate``.

:class:`ScorerWrapper` is the base of those wrappers: it forwards every member of the protocol to
the scorer it wraps, so a wrapper overrides only what it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from discovery.types.circuit import Circuit, ModelShape
from discovery.types.progress import ProgressCallback

if TYPE_CHECKING:
    from discovery.model import LoadedModel
    from discovery.scoring.evaluator import Evaluator
    from discovery.tasks.base import Dataset
    from discovery.types.evaluation import Ablation, EvaluationMethod, Score


@runtime_checkable
class Scorer(Protocol):
    """Scores of circuits of one model on one dataset under one ablation."""

    @property
    def shape(self) -> ModelShape:
        """The model's layers and heads (what circuits are validated against)."""

    @property
    def model(self) -> LoadedModel: ...

    @property
    def dataset(self) -> Dataset: ...

    @property
    def ablation(self) -> Ablation: ...

    @property
    def full_metric(self) -> float:
        """The metric with nothing ablated (a normalised score of 1)."""

    @property
    def ablated_metric(self) -> float:
        """The metric with every ablatable component ablated (a normalised score of 0)."""

    @property
    def base_evaluator(self) -> Evaluator:
        """The evaluator whose forward is differentiated by attribution methods."""

    @property
    def circuits_per_pass(self) -> int:
        """How many circuits one pass of the forward scores (the store saves scores pass by pass)."""

    def method(self, level: Literal["node", "edge"] = "node") -> EvaluationMethod:
        """What a score means (ablation, mean source, level, MLP handling, metric, normaliser)."""

    def evaluate(self, circuits: Sequence[Circuit], progress: ProgressCallback | None = None) -> list[Score]:
        """One score per circuit, in order (equal circuits may be computed once)."""

    def evaluate_one(self, circuit: Circuit) -> Score:
        """``evaluate([circuit])[0]``."""

    def with_metric(self, metric: str) -> Scorer:
        """The same model, dataset and ablation scored by ``metric`` (``kl``, or the task's own)."""


class ScorerWrapper:
    """A :class:`Scorer` around another (``inner``): every member forwarded to it, one by one, so a
    wrapper that counts, tracks or stores overrides only the members it changes.

    ``evaluate_one`` goes through this wrapper's own ``evaluate``, so what a subclass does there
    (count, track, store) holds for it too; ``with_metric`` returns the inner scorer's sibling,
    unwrapped, unless a subclass wraps it as well."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner

    @property
    def shape(self) -> ModelShape:
        return self.inner.shape

    @property
    def model(self) -> LoadedModel:
        return self.inner.model

    @property
    def dataset(self) -> Dataset:
        return self.inner.dataset

    @property
    def ablation(self) -> Ablation:
        return self.inner.ablation

    @property
    def full_metric(self) -> float:
        return self.inner.full_metric

    @property
    def ablated_metric(self) -> float:
        return self.inner.ablated_metric

    @property
    def base_evaluator(self) -> Evaluator:
        return self.inner.base_evaluator

    @property
    def circuits_per_pass(self) -> int:
        return self.inner.circuits_per_pass

    def method(self, level: Literal["node", "edge"] = "node") -> EvaluationMethod:
        return self.inner.method(level)

    def evaluate(self, circuits: Sequence[Circuit], progress: ProgressCallback | None = None) -> list[Score]:
        return self.inner.evaluate(circuits, progress)

    def evaluate_one(self, circuit: Circuit) -> Score:
        return self.evaluate([circuit])[0]

    def with_metric(self, metric: str) -> Scorer:
        return self.inner.with_metric(metric)
