"""Operating on jobs after submit: waiting, cancelling, requeueing, and the reaper that recovers jobs
without an operator.

The job rows are the truth, the broker only carries job ids. :func:`reap` runs in every worker (a
thread, every ``CIRCUITS_REAP_INTERVAL`` seconds) and republishes

- running jobs whose heartbeat is older than ``CIRCUITS_STALE_AFTER`` (their worker was killed: a
  SIGKILL or the OOM killer leaves the message unacknowledged for the 6-hour visibility timeout, and
  the job would stall that long), and
- queued jobs older than ``CIRCUITS_QUEUED_GRACE`` that have no message on the broker (a Redis
  restarted without persistence lost it);

it fails stale in-process jobs (their process is gone: nothing will resume them). A duplicate
message is harmless (the claim lets one delivery run, the store serves what was computed), so two
workers reaping at once do no harm.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from discovery.service.jobs import COMPARE_METHOD, is_finished, open_default_store, status_of, task_id
from discovery.service.settings import settings
from discovery.types.errors import UsageError
from discovery.types.progress import ProgressCallback

if TYPE_CHECKING:
    from discovery.store.base import Storage


def requeue(store: Storage, job_ids: Sequence[int] | None = None) -> list[int]:
    """Publish the messages of jobs again: the given ones (queued or running), or what :func:`reap`
    would republish (stale running jobs, and queued jobs without a message on the broker)."""
    from discovery.service.broker import check_broker, republish

    if not os.environ.get("CIRCUITS_BROKER_URL"):
        raise UsageError("CIRCUITS_BROKER_URL is not set: nothing to requeue on")
    if job_ids is None:
        return reap(store, queued_grace=0.0)["republished"]
    jobs = [store.get_job(j) for j in job_ids]
    ended = [j.id for j in jobs if is_finished(j)]
    if ended:
        raise UsageError(f"job(s) {', '.join(map(str, ended))} already ended; submit them again instead")
    check_broker()
    for job in jobs:
        republish(job.id, job.method == COMPARE_METHOD)
    return [j.id for j in jobs]


def _age(when: datetime | None) -> float:
    if when is None:
        return float("inf")
    return (datetime.now(timezone.utc) - when).total_seconds()


def fail_abandoned(store: Storage) -> list[int]:
    """Mark failed the in-process jobs whose process stopped without ending them (killed, or the
    machine went down): their heartbeat is stale and nothing will ever resume them. Run by every
    reaper sweep and by each in-process submit, so no row stays "running" forever."""
    s = settings()
    failed = []
    for job in store.stale_jobs(s.stale_after):
        if (job.worker_id or "").startswith("in-process@") and store.fail_job(
            job.id,
            "Abandoned",
            f"its in-process run ({job.worker_id}) stopped without ending it (no heartbeat for "
            f"{s.stale_after:g} s); submit it again",
        ):
            failed.append(job.id)
    return failed


_REPUBLISHED: dict[int, float] = {}
"""Job id -> when this process last republished it as stale (at most once per stale time)."""


def reap(store: Storage, queued_grace: float | None = None) -> dict[str, list[int]]:
    """One sweep (see the module docstring); returns ``{"republished": [...], "failed": [...]}``."""
    from discovery.service.broker import live_task_ids, republish

    s = settings()
    grace = s.queued_grace if queued_grace is None else queued_grace
    republished: list[int] = []
    failed = fail_abandoned(store)
    for job in store.stale_jobs(s.stale_after):
        if (job.worker_id or "").startswith("in-process@"):
            continue
        last = _REPUBLISHED.get(job.id)
        if last is not None and time.monotonic() - last < s.stale_after:
            continue  # this process republished it lately; no worker has been free to claim it yet
        republish(job.id, job.method == COMPARE_METHOD)
        _REPUBLISHED[job.id] = time.monotonic()
        republished.append(job.id)
    queued = [j for j in store.list_jobs(status="queued", limit=1000) if _age(j.created_at) >= grace]
    if queued:
        live = live_task_ids()
        for job in queued:
            if task_id(job.id) not in live:
                republish(job.id, job.method == COMPARE_METHOD)
                republished.append(job.id)
    return {"republished": republished, "failed": failed}


class Reaper:
    """A daemon thread running :func:`reap` every ``CIRCUITS_REAP_INTERVAL`` seconds (a worker starts one).
    ``store_factory`` is called once, in the thread, for a store of its own (never one shared across fork).

    A sweep that fails (the database or the broker away) is logged through ``log`` and tried again at
    the next interval."""

    def __init__(self, store_factory: Any, log: Any = None, interval: float | None = None) -> None:
        self.store_factory = store_factory
        self.log = log
        self.interval = settings().reap_interval if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="circuits-reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        store = None
        while not self._stop.wait(self.interval):
            try:
                store = store if store is not None else self.store_factory()
                done = reap(store)
                if self.log and (done["republished"] or done["failed"]):
                    self.log(f"reaper: republished {done['republished']}, failed abandoned {done['failed']}")
            except Exception as e:  # noqa: BLE001 - a sweep must never kill the worker
                if self.log:
                    self.log(f"reaper: sweep failed ({type(e).__name__}: {e}); trying again in {self.interval:g} s")


def wait(
    job_ids: Sequence[int],
    store: Storage,
    timeout: float | None = None,
    poll: float = 1.0,
    progress: ProgressCallback | None = None,
) -> list[Any]:
    """Poll until every job has ended (or ``timeout`` seconds); returns their records."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        jobs = [store.get_job(j) for j in job_ids]
        if progress:
            running = [j for j in jobs if not is_finished(j)]
            current = running[0] if running else jobs[-1]
            progress(
                current.progress_done,
                current.progress_total,
                f"job {current.id} {status_of(current)}: {current.progress_message or ''}",
            )
        if all(is_finished(j) for j in jobs) or (deadline is not None and time.monotonic() > deadline):
            return jobs
        time.sleep(poll)


def cancel(job_id: int, store: Storage | None = None) -> Any:
    """Mark a job cancelled: a queued job never starts, a running one stops within one evaluation pass
    (checked between passes) or at its next heartbeat. Returns the job's record; an ended job is left
    as it was."""
    store = store if store is not None else open_default_store()
    store.cancel_job(job_id)  # raises UsageError for an unknown id
    return store.get_job(job_id)
