"""Celery tasks: thin, idempotent wrappers that take only a job id.

All state is in the job's row (claimed with a conditional update), so a task may be delivered twice
(a worker killed mid-job; a job outliving the visibility timeout) without running the job twice:

- the job already ended -> nothing to do;
- another worker holds it with a fresh heartbeat -> retry later (if that worker dies, its heartbeat
  goes stale and the retry claims the job, resuming from the evaluations the store kept);
- otherwise this worker claims it and runs it;
- the database fails mid-job -> retry later: the retry (same worker) reclaims its own job at once
  and resumes from the evaluations stored before the failure.
"""

from __future__ import annotations

import os
import socket

from discovery.service.jobs import COMPARE_TASK, RUN_TASK
from workers.app import app

_STORE = None


def store():
    """One store per worker process (``CIRCUITS_DATABASE_URL``)."""
    global _STORE
    if _STORE is None:
        from discovery.service import open_default_store

        _STORE = open_default_store()
    return _STORE


def _retry_delay() -> float:
    """Seconds before a busy job is tried again: below the visibility timeout, or Redis would hand the
    waiting (unacknowledged) retry to another worker as well."""
    from discovery.service.broker import celery_config
    from discovery.service.settings import settings

    visibility = celery_config()["broker_transport_options"]["visibility_timeout"]
    return min(settings().busy_retry, max(0.5, visibility / 3))


def _worker_id(task) -> str:
    return f"{task.request.hostname or socket.gethostname()}:{os.getpid()}"


def _store_retries() -> int:
    from discovery.service.settings import settings

    return settings().store_retries


def _run(task, runner, job_id):
    """Run ``runner(job_id, store, ...)``; busy -> retry later; the database failing -> retry later
    (the job resumes from the evaluations stored before), up to ``CIRCUITS_STORE_RETRIES`` times."""
    from discovery.types.errors import StoreError

    try:
        outcome = runner(job_id, store(), worker_id=_worker_id(task), device=os.environ.get("CIRCUITS_DEVICE") or None)
    except StoreError as e:
        if task.request.retries >= _store_retries():
            _fail_quietly(job_id, e)
            raise
        raise task.retry(exc=e, countdown=_retry_delay()) from e
    if outcome == "busy":
        raise task.retry(countdown=_retry_delay())
    return outcome


def _fail_quietly(job_id, error) -> None:
    import traceback

    try:
        store().fail_job(
            job_id,
            type(error).__name__,
            f"gave up after {_store_retries()} retries: {error}",
            "".join(traceback.format_exception(error)),
        )
    except Exception:
        pass  # still no database: the row stays running, its heartbeat goes stale (circuits requeue)


@app.task(bind=True, name=RUN_TASK, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_discovery_job(self, job_id):
    """Run discovery job ``job_id`` (see :func:`discovery.service.run_job`); returns its outcome."""
    from discovery.service import run_job

    return _run(self, run_job, job_id)


@app.task(bind=True, name=COMPARE_TASK, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def compare_jobs(self, job_id):
    """A sweep's final job: overlap matrix and cross-task scores (:func:`discovery.service.run_compare`)."""
    from discovery.service import run_compare

    return _run(self, run_compare, job_id)
