"""``Scorer``: everything a search method may ask of the thing that scores circuits.

A method receives a :class:`Scorer`, never a concrete class: the plain
:class:`~discovery.scoring.evaluator.Evaluator`, the store's ``StoredEvaluator`` (serves stored scores,
persists new ones) and the registry's counting wrapper all implement it, so storage, resumption and
counting hold for every method without the method knowing. Scores come only from ``evaluate``;
the attributes say what is being scored (model, dataset, ablation, shape) and the two ends scores
are normalised by. Attribution methods that differentiate through the forward (EAP, EAP-IG) reach
the forward itself through ``base_evaluator``; what they then pick is scored through ``evaluate``.
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

    def method(self, level: Literal["node", "edge"] = "node") -> EvaluationMethod:
        """What a score means (ablation, mean source, level, MLP handling, metric, normaliser)."""

    def evaluate(self, circuits: Sequence[Circuit], progress: ProgressCallback | None = None) -> list[Score]:
        """One score per circuit, in order (equal circuits may be computed once)."""

    def with_metric(self, metric: str) -> Scorer:
        """The same model, dataset and ablation scored by ``metric`` (``kl``, or the task's own)."""
