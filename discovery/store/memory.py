"""An in-memory :class:`~discovery.store.base.Storage`: the contract's fake (tests, notebooks without a
database). One lock guards everything, so it is thread-safe; nothing survives the process."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from discovery.store.models import JobStatus
from discovery.store.records import DatasetRecord, JobRecord, ModelRecord
from discovery.store.repository import json_safe
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.evaluation import EvaluationMethod, Score
from discovery.types.identity import ModelIdentity


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
        self._scores: dict[tuple, tuple[Score, int | None]] = {}
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
                    found[c.key] = replace(hit[0], circuit=c)
        return found

    def save_scores(self, scores: Sequence[Score], model_id: int, dataset_id: int, job_id: int | None = None) -> int:
        new = 0
        with self._lock:
            for s in scores:
                key = (s.circuit.key, model_id, dataset_id, _method_key(s.method))
                if key not in self._scores:
                    self._scores[key] = (s, job_id)
                    new += 1
        return new

    def baseline(self, model_id: int, dataset_id: int, method: EvaluationMethod) -> tuple[float, float] | None:
        wanted = _method_key(method, level=False)
        with self._lock:
            for (_, m, d, k), (s, _) in self._scores.items():
                if (m, d) == (model_id, dataset_id) and (k[0], k[1], None, k[3], k[4]) == wanted:
                    return (float(s.full), float(s.ablated))
        return None

    def count_evaluations(self) -> int:
        with self._lock:
            return len(self._scores)

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

    def finish_job(self, job_id: int, result: Any) -> bool:
        score: Score = result.score
        summary = {
            "metric": score.metric,
            "normalised": None if math.isnan(score.normalised) else score.normalised,
            "full": score.full,
            "ablated": score.ablated,
            "evaluation_method": asdict(score.method),
            "size": result.circuit.size,
            "n_edges": result.circuit.n_edges,
            "n_evaluations": result.n_evaluations,
            "seconds": result.seconds,
            "method": result.method,
            "params": result.params,
            "extra": result.extra,
        }
        return self._end(
            job_id, status=JobStatus.SUCCEEDED, result_circuit=result.circuit, result_score=json_safe(summary)
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
            return sum(1 for _, owner in self._scores.values() if owner == job_id)
