"""An in-memory :class:`~discovery.store.base.Storage`: the contract's fake (tests, notebooks without a
database). One lock guards everything, so it is thread-safe; nothing survives the process."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from discovery.store.records import DatasetRecord, EvaluationRecord, JobRecord, ModelRecord, PatchingCell
from discovery.store.repository import json_safe, patching_cells
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.evaluation import EvaluationMethod, Score
from discovery.types.identity import ModelIdentity
from discovery.types.jobs import JobResult, JobStatus


class _Stored(NamedTuple):
    """A stored score and where it came from."""

    score: Score
    job_id: int | None
    id: int
    created_at: datetime


def _method_key(m: EvaluationMethod, level: bool = True) -> tuple:
    edge_setting = (m.level, bool(m.ablate_embed)) if level else None  # the ends are node-level quantities
    return (m.ablation, m.source, edge_setting, bool(m.ablate_mlps), m.metric)


class MemoryStore:
    """See the module docstring; every method as documented on :class:`~discovery.store.base.Storage`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._models: dict[tuple[str, str], ModelRecord] = {}
        self._datasets: dict[tuple, DatasetRecord] = {}
        self._scores: dict[tuple, _Stored] = {}  # (circuit key, model id, dataset id, method key) -> score
        self._patching: dict[tuple, float] = {}  # (model id, dataset id, kind, receiver, layer, head) -> effect
        self._jobs: dict[int, JobRecord] = {}
        self._beats: dict[int, float] = {}  # job id -> monotonic time of its last heartbeat

    # models and datasets
    def get_or_create_model(self, identity: ModelIdentity) -> ModelRecord:
        with self._lock:
            key = (identity.name, identity.weight_hash)
            if key not in self._models:
                self._models[key] = ModelRecord(next(self._ids), identity)
            return self._models[key]

    def get_model(self, model_id: int) -> ModelRecord:
        with self._lock:
            for m in self._models.values():
                if m.id == model_id:
                    return m
        raise UsageError(f"no stored model with id {model_id}")

    def get_or_create_dataset(self, dataset: Any) -> DatasetRecord:
        spec = dataset.spec
        params = json_safe(dict(spec.params))
        key = (
            spec.task,
            spec.corruption,
            int(spec.n),
            int(spec.seed),
            repr(sorted(params.items())),
            dataset.prompt_hash,
        )
        with self._lock:
            if key not in self._datasets:
                self._datasets[key] = DatasetRecord(
                    next(self._ids),
                    spec.task,
                    spec.corruption,
                    int(spec.n),
                    int(spec.seed),
                    params,
                    bool(spec.prepend_bos),
                    dataset.metric,
                    dataset.prompt_hash,
                    spec.describe(),
                )
            return self._datasets[key]

    def get_dataset(self, dataset_id: int) -> DatasetRecord:
        with self._lock:
            for d in self._datasets.values():
                if d.id == dataset_id:
                    return d
        raise UsageError(f"no stored dataset with id {dataset_id}")

    # evaluations
    def lookup(
        self, circuits: Sequence[Circuit], model_id: int, dataset_id: int, method: EvaluationMethod
    ) -> dict[str, Score]:
        found = {}
        with self._lock:
            for c in circuits:
                hit = self._scores.get((c.key, model_id, dataset_id, _method_key(method)))
                if hit is not None:
                    found[c.key] = replace(hit.score, circuit=c)
        return found

    def save_scores(self, scores: Sequence[Score], model_id: int, dataset_id: int, job_id: int | None = None) -> int:
        new = 0
        with self._lock:
            for s in scores:
                key = (s.circuit.key, model_id, dataset_id, _method_key(s.method))
                if key not in self._scores:
                    self._scores[key] = _Stored(s, job_id, next(self._ids), datetime.now(timezone.utc))
                    new += 1
        return new

    def baseline(self, model_id: int, dataset_id: int, method: EvaluationMethod) -> tuple[float, float] | None:
        wanted = _method_key(method, level=False)
        with self._lock:
            for (_, m, d, k), stored in self._scores.items():
                if (m, d) == (model_id, dataset_id) and (k[0], k[1], None, k[3], k[4]) == wanted:
                    return (float(stored.score.full), float(stored.score.ablated))
        return None

    def count_evaluations(self) -> int:
        with self._lock:
            return len(self._scores)

    def _record(self, key: tuple, stored: _Stored) -> EvaluationRecord:
        model, dataset = self.get_model(key[1]), self.get_dataset(key[2])
        return EvaluationRecord(
            stored.id, stored.score, model.name, model.id, dataset.task, dataset.description, dataset.id,
            stored.job_id, stored.created_at,
        )  # fmt: skip

    def scores_for_circuit(self, circuit: Circuit, limit: int = 1000) -> list[EvaluationRecord]:
        with self._lock:
            found = [self._record(k, v) for k, v in self._scores.items() if k[0] == circuit.key]
        return sorted(found, key=lambda r: (r.created_at, r.id), reverse=True)[:limit]

    def evaluations(
        self, task: str | None = None, model: str | None = None, job_id: int | None = None, limit: int = 1000
    ) -> list[EvaluationRecord]:
        with self._lock:
            records = [self._record(k, v) for k, v in self._scores.items()]
        wanted = [
            r
            for r in records
            if (not task or r.task == task) and (not model or r.model == model) and (job_id in (None, r.job_id))
        ]
        return sorted(wanted, key=lambda r: r.id)[:limit]

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
        if model_id is None:
            if model is None:
                raise UsageError("save_patching needs model_id or model=")
            model_id = self.get_or_create_model(model).id
        if dataset_id is None:
            if dataset is None:
                raise UsageError("save_patching needs dataset_id or dataset=")
            dataset_id = self.get_or_create_dataset(dataset).id
        new = 0
        with self._lock:
            for c in patching_cells(result):
                key = (model_id, dataset_id, kind, c.receiver, int(c.sender_layer), int(c.sender_head))
                if not math.isnan(c.effect) and key not in self._patching:
                    self._patching[key] = float(c.effect)
                    new += 1
        return new

    def get_patching(
        self, model_id: int, dataset_id: int, kind: str | None = None, receiver: str | None = None
    ) -> list[PatchingCell]:
        with self._lock:
            cells = [
                PatchingCell(k[3], k[4], k[5], effect)
                for k, effect in self._patching.items()
                if k[:2] == (model_id, dataset_id) and (not kind or k[2] == kind) and (not receiver or k[3] == receiver)
            ]
        return sorted(cells, key=lambda c: (c.receiver, c.sender_layer, c.sender_head))

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
        with self._lock:
            job_id = next(self._ids)
            self._jobs[job_id] = JobRecord(
                job_id, method, json_safe(params or {}), json_safe(config or {}), task, tuple(tasks or ()), model,
                model_id, JobStatus.QUEUED, 0, total, None, datetime.now(timezone.utc), None, None, None, None, 0,
                None, None, None, None, None,
            )  # fmt: skip
            return job_id

    def _job(self, job_id: int) -> JobRecord:
        if job_id not in self._jobs:
            raise UsageError(f"no job with id {job_id}")
        return self._jobs[job_id]

    def _stale(self, job_id: int, stale_after: float) -> bool:
        beat = self._beats.get(job_id)
        return beat is None or time.monotonic() - beat > stale_after

    def claim_job(self, job_id: int, worker_id: str, stale_after: float = 120.0) -> bool:
        if not stale_after > 0:
            raise UsageError(f"stale_after must be above 0 seconds, got {stale_after}")
        with self._lock:
            job = self._job(job_id)
            running = job.status is JobStatus.RUNNING
            if not (
                job.status is JobStatus.QUEUED
                or (running and (self._stale(job_id, stale_after) or job.worker_id == worker_id))
            ):
                return False
            now = datetime.now(timezone.utc)
            self._jobs[job_id] = replace(
                job,
                status=JobStatus.RUNNING,
                worker_id=worker_id,
                heartbeat_at=now,
                started_at=job.started_at or now,
                attempts=job.attempts + 1,
            )
            self._beats[job_id] = time.monotonic()
            return True

    def age_heartbeat(self, job_id: int, seconds: float) -> None:
        """Test hook: make the job's heartbeat ``seconds`` old (the SQL stores use an UPDATE)."""
        with self._lock:
            self._beats[job_id] = time.monotonic() - seconds
            job = self._job(job_id)
            self._jobs[job_id] = replace(job, heartbeat_at=datetime.now(timezone.utc) - timedelta(seconds=seconds))

    def _update_running(self, job_id: int, worker_id: str | None, **values: Any) -> bool:
        with self._lock:
            job = self._job(job_id)
            if job.status is not JobStatus.RUNNING or (worker_id is not None and job.worker_id != worker_id):
                return False
            self._jobs[job_id] = replace(job, heartbeat_at=datetime.now(timezone.utc), **values)
            self._beats[job_id] = time.monotonic()
            return True

    def heartbeat(self, job_id: int, worker_id: str | None = None) -> bool:
        return self._update_running(job_id, worker_id)

    def update_progress(
        self, job_id: int, done: int, total: int | None, message: str = "", worker_id: str | None = None
    ) -> bool:
        return self._update_running(
            job_id, worker_id, progress_done=int(done), progress_total=total, progress_message=message
        )

    def set_job_model(self, job_id: int, model_id: int) -> None:
        with self._lock:
            self._jobs[job_id] = replace(self._job(job_id), model_id=model_id)

    def _end(self, job_id: int, **values: Any) -> bool:
        with self._lock:
            job = self._job(job_id)
            if job.status.is_finished():
                return False
            self._jobs[job_id] = replace(job, finished_at=datetime.now(timezone.utc), **values)
            return True

    def finish_job(self, job_id: int, result: JobResult) -> bool:
        return self._end(
            job_id, status=JobStatus.SUCCEEDED, result_circuit=result.circuit, result_score=json_safe(result.summary())
        )

    def fail_job(self, job_id: int, error_type: str, message: str, traceback: str | None = None) -> bool:
        return self._end(
            job_id,
            status=JobStatus.FAILED,
            error_type=error_type[:200],
            error_message=message,
            error_traceback=traceback,
        )

    def cancel_job(self, job_id: int) -> bool:
        return self._end(job_id, status=JobStatus.CANCELLED)

    def get_job(self, job_id: int) -> JobRecord:
        with self._lock:
            return self._job(job_id)

    def list_jobs(
        self,
        status: Any = None,
        task: str | None = None,
        method: str | None = None,
        model: str | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        wanted = None if status is None else JobStatus(status)
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: -j.id)
        return [
            j
            for j in jobs
            if (wanted is None or j.status is wanted)
            and (not task or j.task == task)
            and (not method or j.method == method)
            and (not model or j.model == model)
        ][:limit]

    def stale_jobs(self, stale_after: float = 120.0) -> list[JobRecord]:
        with self._lock:
            return [j for j in self._jobs.values() if j.status is JobStatus.RUNNING and self._stale(j.id, stale_after)]

    def job_evaluation_count(self, job_id: int) -> int:
        with self._lock:
            return sum(1 for stored in self._scores.values() if stored.job_id == job_id)

    def job_filter_values(self) -> dict[str, list[str]]:
        with self._lock:
            jobs = list(self._jobs.values())
        return {
            "model": sorted({j.model for j in jobs if j.model is not None}),
            "task": sorted({j.task for j in jobs if j.task is not None}),
            "method": sorted({j.method for j in jobs if j.method is not None}),
        }
