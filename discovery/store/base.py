"""The storage interface: what the evaluator decorator and the service need from a store.

Like Optuna's ``BaseStorage``, this is a documented contract, implemented by the SQL store
(:class:`discovery.store.repository.Store`, SQLite and PostgreSQL) and by an in-memory fake
(:class:`discovery.store.memory.MemoryStore`); :func:`discovery.store.open_store` picks one from a URL, and
``tests/test_store.py::TestStorageContract`` runs the same tests on all three, opened through it.

What only the SQL store has (:class:`~discovery.store.repository.Store`): statements (``read_only_sql``), the
best-circuit queries, evaluation counts by setting, and what the dashboard reads of patching heatmaps and a
job's evaluations; their callers take a ``Store`` and say so.

Thread safety. Every method may be called from several threads at once (a job's heartbeat thread
beside its search). The job methods are also safe across processes on the SQL store: ``claim_job`` is
one conditional update, so of concurrent claimers exactly one wins.

Records. Methods return frozen records (:mod:`discovery.store.records`) and
:class:`~discovery.scoring.evaluator.Score` values, never ORM rows or live objects: they stay valid after the
call and may be shared between threads.

Errors. An unknown id raises :class:`~discovery.types.errors.UsageError` ("no job with id 7"); a bad argument
(``stale_after <= 0``) raises :class:`~discovery.types.errors.UsageError`; the backend failing (the database
unreachable, a driver error) raises :class:`~discovery.types.errors.StoreError`. Nothing else is raised on
purpose. State changes never move a finished job: they return False instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from discovery.store.records import DatasetRecord, EvaluationRecord, JobRecord, ModelRecord, PatchingCell
from discovery.types.circuit import Circuit
from discovery.types.evaluation import EvaluationMethod, Score
from discovery.types.identity import ModelIdentity
from discovery.types.jobs import JobResult


@runtime_checkable
class Storage(Protocol):
    """The contract (see the module docstring). Writing methods are marked ``*``."""

    # models and datasets
    def get_or_create_model(self, identity: ModelIdentity) -> ModelRecord:
        """* The model's record, created on first use; the same record for the same name and weights."""
        ...

    def get_model(self, model_id: int) -> ModelRecord:
        """The model's record; UsageError for an unknown id."""
        ...

    def get_or_create_dataset(self, dataset: Any) -> DatasetRecord:
        """* The dataset's record (a :class:`~discovery.tasks.base.Dataset`: spec, metric, prompt hash)."""
        ...

    def get_dataset(self, dataset_id: int) -> DatasetRecord: ...

    # evaluations
    def lookup(
        self, circuits: Sequence[Circuit], model_id: int, dataset_id: int, method: EvaluationMethod
    ) -> dict[str, Score]:
        """Stored scores of ``circuits`` under exactly ``method``, keyed by ``circuit.key`` (missing ones absent)."""
        ...

    def save_scores(self, scores: Sequence[Score], model_id: int, dataset_id: int, job_id: int | None = None) -> int:
        """* Persist a batch atomically (all or nothing); returns how many were new (the rest already stored)."""
        ...

    def baseline(self, model_id: int, dataset_id: int, method: EvaluationMethod) -> tuple[float, float] | None:
        """The stored (full, ablated) pair under ``method`` (its level ignored), or None."""
        ...

    def count_evaluations(self) -> int: ...

    def scores_for_circuit(self, circuit: Circuit, limit: int = 1000) -> list[EvaluationRecord]:
        """Every stored score of ``circuit`` (any model, dataset, method), newest first."""
        ...

    def evaluations(
        self, task: str | None = None, model: str | None = None, job_id: int | None = None, limit: int = 1000
    ) -> list[EvaluationRecord]:
        """Stored scores, oldest first, optionally of one task, model (by name) or job (the one that stored them)."""
        ...

    # patching
    def save_patching(
        self,
        result: Any,
        model_id: int | None = None,
        dataset_id: int | None = None,
        *,
        model: ModelIdentity | None = None,
        dataset: Any = None,
        kind: str = "path",
        job_id: int | None = None,
    ) -> int:
        """* A patching heatmap's cells (NaN ones skipped); how many were new. The model and dataset by id, or
        ``model=`` and ``dataset=`` (UsageError with neither)."""
        ...

    def get_patching(
        self, model_id: int, dataset_id: int, kind: str | None = None, receiver: str | None = None
    ) -> list[PatchingCell]:
        """Stored cells, by receiver, sender layer, sender head."""
        ...

    # jobs
    def create_job(
        self,
        method: str,
        params: dict[str, Any],
        task: str,
        model: str,
        *,
        tasks: Sequence[str] | None = None,
        config: dict[str, Any] | None = None,
        model_id: int | None = None,
        total: int | None = None,
    ) -> int:
        """* A queued job; its id."""
        ...

    def claim_job(self, job_id: int, worker_id: str, stale_after: float = 120.0) -> bool:
        """* Mark it running for ``worker_id`` if queued, or running with a heartbeat older than
        ``stale_after`` seconds, or running under this same worker; whether this worker won."""
        ...

    def heartbeat(self, job_id: int, worker_id: str | None = None) -> bool:
        """* Refresh the heartbeat; False if the job is no longer running (for ``worker_id``)."""
        ...

    def update_progress(
        self, job_id: int, done: int, total: int | None, message: str = "", worker_id: str | None = None
    ) -> bool:
        """* Progress and a heartbeat; False if the job is no longer running (for ``worker_id``)."""
        ...

    def set_job_model(self, job_id: int, model_id: int) -> None: ...

    def finish_job(self, job_id: int, result: JobResult) -> bool:
        """* Succeeded with ``result``, kept as its circuit and :meth:`JobResult.summary`; False (no change)
        if it had already ended."""
        ...

    def fail_job(self, job_id: int, error_type: str, message: str, traceback: str | None = None) -> bool:
        """* Failed with the error; False if it had already ended."""
        ...

    def cancel_job(self, job_id: int) -> bool:
        """* Cancelled; False if it had already ended."""
        ...

    def get_job(self, job_id: int) -> JobRecord: ...

    def list_jobs(
        self,
        status: Any = None,
        task: str | None = None,
        method: str | None = None,
        model: str | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        """Jobs, newest first, optionally filtered."""
        ...

    def stale_jobs(self, stale_after: float = 120.0) -> list[JobRecord]:
        """Running jobs whose heartbeat is older than ``stale_after`` seconds."""
        ...

    def job_evaluation_count(self, job_id: int) -> int:
        """Evaluations first stored by this job."""
        ...

    def job_filter_values(self) -> dict[str, list[str]]:
        """The ``model``, ``task`` and ``method`` values that occur among the jobs, each sorted."""
        ...
