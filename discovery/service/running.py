"""Running a job: claim it, keep its heart beating, run the search through the store, end its row.

:func:`run_job` (what a worker's task calls) claims the row with a conditional update, so of two
deliveries of the same message only one runs; loads the model and dataset; wraps the evaluator in
the store's ``StoredEvaluator`` tied to the job, so every evaluated circuit is persisted and a
redelivered job (its worker was killed) is served what the first run stored instead of computing it
again; runs the search with a progress callback that writes progress rows and stops the search when
the job was cancelled (checked between evaluation passes too, so a long ``evaluate`` call stops
within one pass); and ends the row. :func:`_run_claimed` is the one place a job's outcome is decided
(succeeded / failed with its error / cancelled / lost to another worker / the database failed).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from discovery.scoring.scorer import Scorer, ScorerWrapper
from discovery.service.evaluators import build_evaluator
from discovery.service.jobs import (
    COMPARE_METHOD,
    JobCancelled,
    JobLost,
    Outcome,
    default_worker_id,
    is_finished,
    job_request,
    status_of,
)
from discovery.service.requests import JobRequest
from discovery.service.settings import settings
from discovery.types.circuit import Circuit
from discovery.types.errors import CircuitsError, StoreError
from discovery.types.evaluation import Score
from discovery.types.progress import ProgressCallback

if TYPE_CHECKING:
    from discovery.store.base import Storage


def stale_after() -> float:
    """Seconds without a heartbeat after which a running job counts as abandoned (``CIRCUITS_STALE_AFTER``)."""
    return settings().stale_after


class JobProgress:
    """The search's progress callback, adapted to job rows.

    A call (at most every ``interval`` seconds, always the first and the last) writes the progress
    and a heartbeat in one conditional update. When that update finds the job no longer running for
    this worker, the search is stopped from inside: :class:`JobCancelled` if the job was cancelled,
    :class:`JobLost` if another worker claimed it. :meth:`checkpoint` (called by the store's
    evaluator between passes) does the same check without a progress row. ``also`` receives every
    call (the in-process CLI's progress bar).
    """

    def __init__(
        self,
        store: Storage,
        job_id: int,
        worker_id: str | None = None,
        interval: float | None = None,
        also: ProgressCallback | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self.interval = settings().progress_interval if interval is None else interval
        self.tracker: Tracker | None = None
        self.also = also
        self.stopped = threading.Event()
        """Set by the heartbeat thread when it finds the job no longer ours, or by Ctrl-C."""
        self.interrupted = False
        """Ctrl-C arrived (in-process runs): the next progress call or checkpoint raises KeyboardInterrupt."""
        self._last = 0.0
        self.calls = 0

    def message(self, message: str) -> str:
        if self.tracker and self.tracker.best is not None:
            b = self.tracker.best
            return f"{message} | best so far {b.circuit} ({b.normalised:.4f}, {b.circuit.size} components)"
        return message

    def __call__(self, done: int, total: int | None, message: str) -> None:
        self.calls += 1
        if self.interrupted:
            raise KeyboardInterrupt
        if self.also:
            self.also(done, total, message)
        now = time.monotonic()
        last = total is not None and done >= total
        if self.calls > 1 and not last and now - self._last < self.interval and not self.stopped.is_set():
            return
        self._last = now
        try:
            running = self.store.update_progress(
                self.job_id,
                int(done),
                None if total is None else int(total),
                self.message(message),
                worker_id=self.worker_id,
            )
        except StoreError:
            return  # a missed progress row is not worth the job; the evaluations' writes will tell
        if not running:
            self.raise_stopped()

    def checkpoint(self) -> None:
        """Between two evaluation passes: stop if the job was cancelled or taken over. One indexed read
        per pass, not throttled: a pass (hundreds of circuits) costs far more than the read, and on a
        small model hundreds of passes fit in any throttle interval, so a cancel would land late."""
        if self.interrupted:
            raise KeyboardInterrupt
        try:
            job = self.store.get_job(self.job_id)
        except StoreError:
            return
        if status_of(job) != "running" or (self.worker_id is not None and job.worker_id != self.worker_id):
            self.raise_stopped(job)

    def raise_stopped(self, job: Any = None) -> None:
        job = job if job is not None else self.store.get_job(self.job_id)
        if status_of(job) == "cancelled":
            raise JobCancelled(f"job {self.job_id} was cancelled")
        raise JobLost(f"job {self.job_id} is {status_of(job)} under worker {job.worker_id}, no longer this one")


class Tracker(ScorerWrapper):
    """Wraps a scorer: remembers the best circuit seen (highest normalised score, then fewest
    components), so a running job reports its best so far. Every other member is forwarded
    (:class:`~discovery.scoring.scorer.ScorerWrapper`); ``with_metric`` returns the inner scorer's
    sibling untracked: scores under another metric (ACDC's KL criterion) are not candidates for the best."""

    def __init__(self, inner: Scorer) -> None:
        super().__init__(inner)
        self.best: Score | None = None

    def evaluate(self, circuits: Sequence[Circuit], progress: ProgressCallback | None = None) -> list[Score]:
        scores = self.inner.evaluate(circuits, progress)
        for s in scores:
            if math.isnan(s.normalised):
                continue
            if (
                self.best is None
                or s.normalised > self.best.normalised
                or (s.normalised == self.best.normalised and s.circuit.size < self.best.circuit.size)
            ):
                self.best = s
        return scores


class Heartbeat:
    """A daemon thread beating a job's heart every ``interval`` seconds while it runs, so model
    loading or one long ``evaluate`` call never look like a dead worker. If a beat finds the job no
    longer this worker's, it sets ``progress.stopped`` (the next progress call or checkpoint stops it)."""

    def __init__(
        self,
        store: Storage,
        job_id: int,
        worker_id: str | None,
        progress: JobProgress | None = None,
        interval: float | None = None,
    ) -> None:
        self.store, self.job_id, self.worker_id, self.progress = store, job_id, worker_id, progress
        self.interval = settings().heartbeat_interval if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                alive = self.store.heartbeat(self.job_id, worker_id=self.worker_id)
            except Exception:  # a missed beat (database blip) is not worth stopping the job for
                continue
            if not alive and self.progress is not None:
                self.progress.stopped.set()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


def claim(store: Storage, job_id: int, worker_id: str) -> tuple[Outcome | None, Any]:
    """Claim the job; return (the outcome to stop with, or None to run it; the job record)."""
    job = store.get_job(job_id)
    if is_finished(job):
        return "skipped", job
    if not store.claim_job(job_id, worker_id, stale_after=stale_after()):
        job = store.get_job(job_id)
        return ("skipped" if is_finished(job) else "busy"), job
    return None, store.get_job(job_id)


@contextlib.contextmanager
def interrupt_between_passes(callback: JobProgress) -> Any:
    """Ctrl-C on an in-process run stops the search at its next progress call or pass boundary
    instead of wherever the signal lands: a KeyboardInterrupt raised inside a database write or a
    connection checkout can leave the store locked, and the job could then never be marked cancelled.
    A second Ctrl-C interrupts at once. Only on the main thread (signals cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        if callback.interrupted:
            raise KeyboardInterrupt
        callback.interrupted = True
        callback.stopped.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_claimed(
    store: Storage,
    job: Any,
    worker_id: str,
    progress: ProgressCallback | None,
    body: Callable[[JobProgress], Any],
    reraise: bool = False,
    in_process: bool = False,
) -> Outcome:
    """The one place a claimed job ends: ``body(callback)`` returns the search result to store.

    succeeded: the result is stored (unless the job was cancelled meanwhile: cancelled);
    cancelled / skipped: the search was stopped because the job was cancelled / taken over;
    failed: the body raised, and the error's type, message and traceback are stored;
    the database failing (StoreError) is re-raised: not the job's fault, and its row cannot be written
    anyway; the caller retries (a worker: later, resuming from what was stored);
    KeyboardInterrupt (Ctrl-C on an in-process run, ``in_process``: at the next pass boundary, see
    :func:`interrupt_between_passes`): the job is marked cancelled, then re-raised.
    """
    callback = JobProgress(store, job.id, worker_id, also=progress)
    interrupts = interrupt_between_passes(callback) if in_process else contextlib.nullcontext()
    with interrupts, Heartbeat(store, job.id, worker_id, callback):
        try:
            result = body(callback)
            if not store.finish_job(job.id, result):
                return "cancelled" if status_of(store.get_job(job.id)) == "cancelled" else "skipped"
            return "succeeded"
        except JobCancelled:
            return "cancelled"
        except JobLost:
            return "skipped"
        except StoreError:
            raise
        except KeyboardInterrupt:
            try:
                store.cancel_job(job.id)
            finally:
                raise
        except Exception as e:
            store.fail_job(job.id, type(e).__name__, str(e), traceback.format_exc())
            if reraise:  # the in-process caller reports the error itself (after the row says so)
                raise
            return "failed"


def run_job(
    job_id: int,
    store: Storage,
    worker_id: str | None = None,
    progress: ProgressCallback | None = None,
    device: str | None = None,
    in_process: bool = False,
) -> Outcome:
    """Run one discovery job to its end: ``succeeded``, ``failed`` or ``cancelled``.

    ``skipped``: the job had already ended (a duplicate delivery) or another worker took it over;
    ``busy``: another worker holds it with a fresh heartbeat (retry later: if that worker died, its
    heartbeat goes stale after ``CIRCUITS_STALE_AFTER`` seconds and the job can be claimed again).
    ``device`` overrides the job's device (a GPU worker: ``circuits worker --device cuda``).
    ``in_process``: run from a terminal (not a worker), so Ctrl-C cancels the job between passes.
    Raises :class:`~discovery.types.errors.StoreError` when the database fails: the job is then neither
    failed nor finished (its row cannot be written) and should be retried.
    """
    worker_id = worker_id or default_worker_id()
    stop, job = claim(store, job_id, worker_id)
    if stop:
        return stop
    if job.method == COMPARE_METHOD:
        return _run_compare_claimed(store, job, worker_id, progress, device, in_process)

    def search(callback: JobProgress) -> Any:
        from discovery.scoring.stored import StoredEvaluator

        request = job_request(job)
        callback(0, None, "loading model and dataset")
        # a reference model trained on first use reports its training steps as the job's progress
        evaluator = build_evaluator(request, device, progress=callback)
        stored = StoredEvaluator(evaluator, store, job_id=job_id, checkpoint=callback.checkpoint)
        return _tracked_search(store, job_id, request, stored, callback, worker_id, store.get_job(job_id).attempts)

    return _run_claimed(store, job, worker_id, progress, search, in_process=in_process)


def _tracked_search(
    store: Storage, job_id: int, request: Any, stored: Any, callback: JobProgress, worker_id: str, attempt: int
) -> Any:
    """Run the job's search through the store and the best-so-far tracker; the result carries how
    many circuits were computed and served, by which worker and attempt, on which dataset."""
    from discovery.search import run_search

    store.set_job_model(job_id, stored.model_id)
    tracker = Tracker(stored)
    callback.tracker = tracker
    result = run_search(request.method, tracker, request.params, callback)
    service = {
        "computed": stored.cache_misses,
        "served_from_store": stored.cache_hits,
        "attempt": attempt,
        "worker": worker_id,
        "dataset": stored.dataset_record.description,
    }
    return replace(result, extra=dict(result.extra, service=service))


def run_compare(
    job_id: int,
    store: Storage,
    worker_id: str | None = None,
    progress: ProgressCallback | None = None,
    device: str | None = None,
    in_process: bool = False,
) -> Outcome:
    """Run a sweep's comparison job once its task jobs have ended; outcomes as :func:`run_job`.

    If some task job is still queued or running (a duplicate delivery, or a chord callback fired
    early), returns ``busy`` without claiming, so the caller retries later.
    """
    job = store.get_job(job_id)
    if is_finished(job):
        return "skipped"
    if not all(is_finished(store.get_job(j)) for j in job.params.get("jobs", [])):
        return "busy"
    worker_id = worker_id or default_worker_id()
    stop, job = claim(store, job_id, worker_id)
    if stop:
        return stop
    return _run_compare_claimed(store, job, worker_id, progress, device, in_process)


def _run_compare_claimed(
    store: Storage,
    job: Any,
    worker_id: str,
    progress: ProgressCallback | None,
    device: str | None,
    in_process: bool = False,
) -> Outcome:
    from discovery.service.comparison import compare_jobs, comparison_result

    def body(callback: JobProgress) -> Any:
        return comparison_result(compare_jobs(store, list(job.params.get("jobs", [])), job.id, callback, device))

    return _run_claimed(store, job, worker_id, progress, body, in_process=in_process)


def run_discovery(
    request: JobRequest, evaluator: Any, store: Storage, progress: ProgressCallback | None = None
) -> tuple[int, Any, Any]:
    """``circuits discover``: run a search here on an evaluator already built, recorded as a job exactly
    as ``submit`` records one (method, parameters, dataset, result; every score stored under the job).
    Returns (job id, the search result, the StoredEvaluator). An error in the search is stored as the
    job's failure and raised; Ctrl-C leaves the job cancelled."""
    from discovery.scoring.stored import StoredEvaluator
    from discovery.search import get_method
    from discovery.service.jobs import create_job

    request = replace(request, params=get_method(request.method).validate(dict(request.params)))
    job_id = create_job(store, request)
    worker_id = f"in-process@{default_worker_id()}"
    if not store.claim_job(job_id, worker_id, stale_after=stale_after()):
        raise StoreError(f"job {job_id} was taken by another process before it started")
    job = store.get_job(job_id)
    out: dict[str, Any] = {}

    def search(callback: JobProgress) -> Any:
        stored = StoredEvaluator(evaluator, store, job_id=job_id, checkpoint=callback.checkpoint)
        out["result"] = _tracked_search(store, job_id, request, stored, callback, worker_id, 1)
        out["stored"] = stored
        return out["result"]

    outcome = _run_claimed(store, job, worker_id, progress, search, reraise=True, in_process=True)
    if outcome != "succeeded":  # cancelled from another shell, or taken over: the caller's error, one line
        raise CircuitsError(f"job {job_id} ended {outcome}")
    return job_id, out["result"], out["stored"]
