"""Frozen records the store returns: plain values, safe to keep after the session that read them closed.

Timestamps are timezone-aware UTC datetimes on every backend (SQLite stores naive UTC; the store
attaches the zone when reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from discovery.types.circuit import Circuit
from discovery.types.evaluation import EvaluationMethod, Score
from discovery.types.identity import ModelIdentity
from discovery.types.jobs import JobStatus

__all__ = ["BestCircuit", "DatasetRecord", "EvaluationRecord", "JobRecord", "JobStatus", "ModelRecord", "PatchingCell"]


@dataclass(frozen=True)
class ModelRecord:
    """A stored model: its row id and its :class:`~discovery.model.ModelIdentity` (d_mlp and vocab_size
    are 0 for rows stored before schema revision 0002: unknown)."""

    id: int
    identity: ModelIdentity

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def weight_hash(self) -> str:
        return self.identity.weight_hash

    @property
    def architecture(self) -> str:
        return self.identity.architecture

    @property
    def n_layers(self) -> int:
        return self.identity.n_layers

    @property
    def n_heads(self) -> int:
        return self.identity.n_heads


@dataclass(frozen=True)
class DatasetRecord:
    id: int
    task: str
    corruption: str
    n_prompts: int
    seed: int
    params: dict[str, Any]
    prepend_bos: bool
    metric: str
    prompt_hash: str
    description: str


@dataclass(frozen=True)
class JobRecord:
    """A job's row. ``result_circuit`` is parsed back into a :class:`Circuit`."""

    id: int
    method: str
    params: dict[str, Any]
    config: dict[str, Any]
    task: str
    tasks: tuple[str, ...]
    model: str
    model_id: int | None
    status: JobStatus
    progress_done: int
    progress_total: int | None
    progress_message: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker_id: str | None
    attempts: int
    error_type: str | None
    error_message: str | None
    error_traceback: str | None
    result_circuit: Circuit | None
    result_score: dict[str, Any] | None

    def is_finished(self) -> bool:
        return self.status.is_finished()


@dataclass(frozen=True)
class EvaluationRecord:
    """A stored score with where it came from (model, task, dataset, job)."""

    id: int
    score: Score
    model: str
    model_id: int
    task: str
    dataset: str
    dataset_id: int
    job_id: int | None
    created_at: datetime | None

    @property
    def circuit(self) -> Circuit:
        return self.score.circuit

    @property
    def method(self) -> EvaluationMethod:
        return self.score.method


@dataclass(frozen=True)
class BestCircuit:
    """A task's best stored circuit for a model: a search job's result, or (without jobs) the smallest
    evaluated circuit that reaches the threshold."""

    circuit: Circuit
    task: str
    model: str
    normalised: float | None
    metric: float | None
    job_id: int | None
    method: str
    """The search method (for a job's result) or ``evaluation``."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PatchingCell:
    """One heatmap cell: the effect of patching sender (layer, head; head -1 for the MLP) into ``receiver``."""

    receiver: str
    sender_layer: int
    sender_head: int
    effect: float
