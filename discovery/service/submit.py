"""Submitting jobs: validate everything, then create the rows, then publish (or run in-process)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from discovery.service.jobs import (
    COMPARE_METHOD,
    EnqueueError,
    Outcome,
    create_job,
    default_worker_id,
    job_request,
    open_default_store,
)
from discovery.service.requests import JobRequest, validate_request
from discovery.types.errors import UsageError
from discovery.types.progress import ProgressCallback

if TYPE_CHECKING:
    from discovery.store.base import Storage


@dataclass
class Submission:
    """What :func:`submit` did: the job ids, the sweep's comparison job, and (in-process) outcomes.

    ``shared``: ids of jobs that were already queued or running with exactly this request when it
    was submitted; the submission joined them instead of computing the same search twice."""

    job_ids: list[int]
    compare_job_id: int | None = None
    mode: Literal["queued", "in-process"] = "queued"
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    shared: list[int] = field(default_factory=list)

    @property
    def all_ids(self) -> list[int]:
        return self.job_ids + ([self.compare_job_id] if self.compare_job_id is not None else [])


def find_identical_active_job(store: Storage, request: JobRequest) -> int | None:
    """A queued or running job with exactly this request (method, parameters, task, model, settings)."""
    for status in ("running", "queued"):
        for job in store.list_jobs(status=status, task=request.task, method=request.method, model=request.model):
            if job_request(job) == request:
                return int(job.id)
    return None


def submit(
    requests: JobRequest | Sequence[JobRequest],
    store: Storage | None = None,
    *,
    broker: bool | None = None,
    progress: ProgressCallback | None = None,
) -> Submission:
    """Validate, create and enqueue (or run in-process) one job per request.

    Several requests form a sweep: a ``compare`` job follows them. ``broker``: None queues when
    ``CIRCUITS_BROKER_URL`` is set and runs in-process otherwise; False forces in-process; True
    forces the queue (the broker and queue are always the environment's). Every request is validated
    and the broker checked (it must answer within ``CIRCUITS_CONNECT_TIMEOUT``) before any row is
    created or any message sent, so a refused submit leaves no trace. A single request identical to
    a job already queued or running joins that job (its id is returned, listed in ``shared``).
    ``progress`` (in-process only) receives the searches' progress.
    """
    from discovery.service.broker import check_broker, publish

    reqs = [requests] if isinstance(requests, JobRequest) else list(requests)
    if not reqs:
        raise UsageError("nothing to submit")
    if broker is None:
        broker = bool(os.environ.get("CIRCUITS_BROKER_URL"))
    if broker and not os.environ.get("CIRCUITS_BROKER_URL"):
        raise UsageError("no broker: set CIRCUITS_BROKER_URL (e.g. redis://localhost:6379/0) or run in-process")
    checked = [validate_request(r, local_device=not broker) for r in reqs]
    if len({r.task for r in checked}) != len(checked):
        raise UsageError(f"a sweep names a task twice: {', '.join(r.task for r in checked)}")
    if broker:
        check_broker()
    store = store if store is not None else open_default_store()
    if not broker:
        from discovery.service.control import fail_abandoned

        fail_abandoned(store)  # no reaper runs without workers: in-process runs clean up after killed ones
    mode: Literal["queued", "in-process"] = "queued" if broker else "in-process"
    if len(checked) == 1:
        existing = find_identical_active_job(store, checked[0])
        if existing is not None:
            sub = Submission([existing], None, mode, shared=[existing])
            if not broker:
                from discovery.service.control import wait

                wait([existing], store, progress=progress)
            return sub
    ids = [create_job(store, r) for r in checked]
    compare_id = None
    if len(ids) > 1:
        compare_req = replace(
            checked[0], task=",".join(r.task for r in checked), method=COMPARE_METHOD, params={"jobs": list(ids)}
        )
        compare_id = create_job(store, compare_req, tasks=[r.task for r in checked])
    sub = Submission(ids, compare_id, mode)
    if broker:
        try:
            publish(ids, compare_id)
        except Exception as e:  # the broker went away between the check and the publish
            for job_id in sub.all_ids:
                store.cancel_job(job_id)
            raise EnqueueError(
                f"the broker stopped answering while job(s) {', '.join(map(str, sub.all_ids))} were published "
                f"({type(e).__name__}: {e}); they were cancelled, submit again"
            ) from e
    else:
        from discovery.service.running import run_compare, run_job

        worker = f"in-process@{default_worker_id()}"
        for job_id in ids:
            sub.outcomes[job_id] = run_job(job_id, store, worker_id=worker, progress=progress, in_process=True)
        if compare_id is not None:
            sub.outcomes[compare_id] = run_compare(
                compare_id, store, worker_id=worker, progress=progress, in_process=True
            )
    return sub
