"""What every part of the service shares: job states and outcomes, the errors, the store seam."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from discovery.service.requests import JobRequest
from discovery.types.errors import CircuitsError
from discovery.types.jobs import FINISHED_STATES as FINISHED_STATES

if TYPE_CHECKING:
    from discovery.store.base import Storage

COMPARE_METHOD = "compare"
"""The method name of a sweep's final job."""

Outcome = Literal["succeeded", "failed", "cancelled", "busy", "skipped"]

RUN_TASK = "circuits.run_job"
"""The Celery task name of a discovery job (the worker registers it under this name, the broker sends it)."""
COMPARE_TASK = "circuits.compare"
"""The Celery task name of a sweep's final (comparison) job."""


class JobCancelled(Exception):
    """Raised inside a running search when its job was cancelled (by ``circuits cancel``).

    Control flow of a worker, not bad input: deliberately outside :class:`~discovery.types.errors.CircuitsError`,
    so no face prints it as a usage error."""


class JobLost(Exception):
    """This worker no longer holds the job (it was re-claimed after a missed heartbeat)."""


class EnqueueError(CircuitsError):
    """The broker could not be reached to enqueue a job."""


def task_id(job_id: int) -> str:
    """The Celery task id of a job's message (stable, so a redelivery keeps it)."""
    return f"circuits-job-{job_id}"


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_default_store(url: str | None = None, must_exist: bool = False) -> Storage:
    """The store at ``url``, else ``CIRCUITS_DATABASE_URL``, else the embedded SQLite file; a database that
    does not answer within ``CIRCUITS_CONNECT_TIMEOUT`` seconds is an error."""
    from discovery.service.settings import settings
    from discovery.store import open_store

    return open_store(url, must_exist=must_exist, connect_timeout=settings().connect_timeout)


def create_job(store: Storage, request: JobRequest, tasks: Sequence[str] | None = None) -> int:
    return store.create_job(
        request.method, dict(request.params), request.task, request.model, tasks=tasks, config=request.settings()
    )


def job_request(job: Any) -> JobRequest:
    return JobRequest.from_settings(job.task, job.method, job.model, dict(job.params or {}), dict(job.config or {}))


def status_of(job: Any) -> str:
    return getattr(job.status, "value", job.status)


def is_finished(job: Any) -> bool:
    return status_of(job) in FINISHED_STATES
