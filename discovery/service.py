"""Discovery jobs: the library side of the service (submit, run, cancel, inspect).

A job is a row in the store (:mod:`discovery.store`), not a Celery object. Its life:

1. :func:`submit` validates the request *before* anything is stored or enqueued (unknown task or
   method, bad parameters, a model path that is not a model directory: all refused here with a
   :class:`~discovery.errors.UsageError`), creates the job row (``queued``), then either enqueues a
   Celery task carrying only the job id (a broker is configured: ``CIRCUITS_BROKER_URL``) or runs
   the job right away in this process (no broker: the embedded default).
2. :func:`run_job` (what a worker's task calls) claims the row with a conditional update, so of two
   deliveries of the same message only one runs; loads the model and dataset; wraps the evaluator
   in the store's ``StoredEvaluator`` tied to the job, so every evaluated circuit is persisted and a
   redelivered job (its worker was killed) is served what the first run stored instead of computing
   it again; runs the search with a progress callback that writes progress rows, beats the heart and
   stops the search when the job was cancelled (a heartbeat thread keeps the row fresh meanwhile);
   and finishes or fails the row (error type, message and traceback stored). A running job whose
   heartbeat is older than ``CIRCUITS_STALE_AFTER`` seconds may be claimed by another delivery.
3. A sweep (several tasks) is one job per task plus a ``compare`` job run after them (a Celery
   chord; sequentially in-process) whose result is the circuits' overlap matrix and cross-task
   scores (every circuit scored on every task).

The job rows are the truth, the broker only carries job ids: :func:`requeue` publishes a job's
message again if a broker lost it, and a duplicate delivery is harmless. Nothing here imports
Celery at module level; :mod:`workers.tasks` are thin wrappers over :func:`run_job` and
:func:`run_compare`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from discovery.circuit import Circuit
from discovery.errors import CircuitsError, StoreError, UsageError
from discovery.evaluator import Ablation, Evaluator, Score
from discovery.progress import ProgressCallback

COMPARE_METHOD = "compare"
"""The method name of a sweep's final job."""

FINISHED_STATES = ("succeeded", "failed", "cancelled")

Outcome = Literal["succeeded", "failed", "cancelled", "busy", "skipped"]


class JobCancelled(CircuitsError):
    """Raised inside a running search when its job was cancelled (by ``circuits cancel``)."""


class EnqueueError(CircuitsError):
    """The broker could not be reached to enqueue a job (the job row is marked failed)."""


# --------------------------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRequest:
    """Everything a job needs, JSON-serialisable; validated by :func:`validate_request`."""

    task: str
    method: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    """The search method's parameters (validated against its declared schema)."""
    n: int = 50
    seed: int = 0
    corruption: str | None = None
    task_params: dict[str, Any] = field(default_factory=dict)
    ablation: str = "mean"
    ablation_source: str = "corrupt"
    ablate_mlps: bool = False
    device: str = "cpu"

    def settings(self) -> dict[str, Any]:
        """What the job row keeps besides method, params, task and model."""
        return {
            "n": self.n,
            "seed": self.seed,
            "corruption": self.corruption,
            "task_params": self.task_params,
            "ablation": self.ablation,
            "ablation_source": self.ablation_source,
            "ablate_mlps": self.ablate_mlps,
            "device": self.device,
        }

    @classmethod
    def from_settings(
        cls, task: str, method: str, model: str, params: dict[str, Any], settings: dict[str, Any]
    ) -> JobRequest:
        known = {
            k: settings[k]
            for k in ("n", "seed", "corruption", "task_params", "ablation", "ablation_source", "ablate_mlps", "device")
            if k in settings
        }
        return cls(task=task, method=method, model=model, params=dict(params or {}), **known)


def validate_request(request: JobRequest) -> JobRequest:
    """Check everything that can be checked without running: raise :class:`UsageError` naming the
    bad input; return the request with the method's parameters coerced and defaults filled in."""
    from discovery.search import get_method
    from discovery.tasks import get_task

    spec = get_method(request.method)
    params = spec.validate(dict(request.params))
    Ablation(kind=request.ablation, source=request.ablation_source, ablate_mlps=request.ablate_mlps)  # type: ignore[arg-type]
    if request.n < 1:
        raise UsageError(f"the number of prompts must be at least 1, got {request.n}")
    task = get_task(request.task, **request.task_params)
    task.check_corruption(request.corruption)
    _check_device(request.device)
    tokenizer = check_model_spec(request.model)
    if tokenizer is not None:
        from discovery.tasks import build_dataset

        build_dataset(task, tokenizer, n=request.n, seed=request.seed, corruption=request.corruption)
    try:
        json.dumps(params)
        json.dumps(request.task_params)
    except TypeError as e:
        raise UsageError(f"job parameters must be JSON values: {e}") from e
    return replace(request, params=params)


def _check_device(device: str) -> None:
    import torch

    if device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, auto)") from e


def check_model_spec(spec: str) -> Any:
    """Refuse a model spec that cannot load, cheaply (no weights read). Returns the model's
    tokenizer when it is a local directory (so the dataset can be checked too), else None.

    A worker may run on another machine: a local path must be valid here *and* there (the
    docker-compose file mounts the same model directory into every container)."""
    from discovery.model import SUPPORTED_ARCHITECTURES

    if spec.startswith("ref:"):
        name = spec[len("ref:") :]
        try:
            from discovery import reference
        except ImportError:
            return None
        known = getattr(reference, "REFERENCE_MODELS", None)
        if isinstance(known, dict) and name not in known:
            raise UsageError(f"unknown reference model {spec!r}; known: {', '.join('ref:' + k for k in sorted(known))}")
        # its tokenizer (built without training the model) lets the dataset be checked too
        make = getattr(reference, "reference_tokenizer", None)
        return make(name) if make is not None else None
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"model directory {spec!r} has no config.json: not a Hugging Face model directory")
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"model directory {spec!r}: config.json is unreadable: {e}") from e
        architectures = config.get("architectures") or []
        if architectures and not set(architectures) & set(SUPPORTED_ARCHITECTURES):
            raise UsageError(
                f"model {spec!r} is a {', '.join(architectures)}; the evaluator supports "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        try:
            return _tokenizer(str(path.resolve()), (path / "config.json").stat().st_mtime)
        except (OSError, ValueError) as e:
            raise UsageError(f"model directory {spec!r}: its tokenizer does not load: {e}") from e
    if path.exists():
        raise UsageError(f"model {spec!r} is a file; pass the Hugging Face directory that holds config.json")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UsageError(f"model directory {spec!r} does not exist")
    return None  # a hub name: the worker's machine may reach a hub this one cannot


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str, mtime: float) -> Any:
    """A model directory's tokenizer, loaded once per process (per version of the directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# --------------------------------------------------------------------------------------------
# the store seam (one place that knows how job rows are created and read)
# --------------------------------------------------------------------------------------------
def open_default_store(url: str | None = None) -> Any:
    """The store at ``url``, else ``CIRCUITS_DATABASE_URL``, else the embedded SQLite file."""
    from discovery.store.repository import open_store

    return open_store(url)


def _create_job(store: Any, request: JobRequest, tasks: Sequence[str] | None = None) -> int:
    return store.create_job(
        request.method, dict(request.params), request.task, request.model, tasks=tasks, config=request.settings()
    )


def _job_request(job: Any) -> JobRequest:
    return JobRequest.from_settings(job.task, job.method, job.model, dict(job.params or {}), dict(job.config or {}))


def _status(job: Any) -> str:
    return getattr(job.status, "value", job.status)


def _finished(job: Any) -> bool:
    return _status(job) in FINISHED_STATES


# --------------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------------
@dataclass
class Submission:
    """What :func:`submit` did: the job ids, the sweep's comparison job, and (in-process) outcomes."""

    job_ids: list[int]
    compare_job_id: int | None = None
    mode: Literal["queued", "in-process"] = "queued"
    outcomes: dict[int, Outcome] = field(default_factory=dict)

    @property
    def all_ids(self) -> list[int]:
        return self.job_ids + ([self.compare_job_id] if self.compare_job_id is not None else [])


def submit(
    requests: JobRequest | Sequence[JobRequest],
    store: Any = None,
    *,
    broker: bool | None = None,
    progress: ProgressCallback | None = None,
) -> Submission:
    """Validate, create and enqueue (or run in-process) one job per request.

    Several requests form a sweep: a ``compare`` job follows them. ``broker``: None queues when
    ``CIRCUITS_BROKER_URL`` is set and runs in-process otherwise; False forces in-process; True
    forces the queue (the broker and queue are always the environment's, see :mod:`workers.app`).
    Every request is validated before any row is created or any message sent, so a bad sweep leaves
    no trace. ``progress`` (in-process only) receives the searches' progress.
    """
    reqs = [requests] if isinstance(requests, JobRequest) else list(requests)
    if not reqs:
        raise UsageError("nothing to submit")
    checked = [validate_request(r) for r in reqs]
    if len({r.task for r in checked}) != len(checked):
        raise UsageError(f"a sweep names a task twice: {', '.join(r.task for r in checked)}")
    if broker is None:
        broker = bool(os.environ.get("CIRCUITS_BROKER_URL"))
    if broker and not os.environ.get("CIRCUITS_BROKER_URL"):
        raise UsageError("no broker: set CIRCUITS_BROKER_URL (e.g. redis://localhost:6379/0) or run in-process")
    store = store if store is not None else open_default_store()
    ids = [_create_job(store, r) for r in checked]
    compare_id = None
    if len(ids) > 1:
        compare_req = replace(
            checked[0], task=",".join(r.task for r in checked), method=COMPARE_METHOD, params={"jobs": list(ids)}
        )
        compare_id = _create_job(store, compare_req, tasks=[r.task for r in checked])
    sub = Submission(ids, compare_id, "queued" if broker else "in-process")
    if broker:
        try:
            _enqueue(ids, compare_id)
        except Exception as e:  # the broker stayed unreachable through the publish retries
            for job_id in sub.all_ids:
                store.fail_job(job_id, type(e).__name__, f"could not enqueue: {e}", traceback.format_exc())
            raise EnqueueError(
                f"could not enqueue job(s) {', '.join(map(str, sub.all_ids))} on the broker: {type(e).__name__}: {e}"
            ) from e
    else:
        worker = f"in-process@{default_worker_id()}"
        for job_id in ids:
            sub.outcomes[job_id] = run_job(job_id, store, worker_id=worker, progress=progress)
        if compare_id is not None:
            sub.outcomes[compare_id] = run_compare(compare_id, store, worker_id=worker, progress=progress)
    return sub


def _enqueue(ids: list[int], compare_id: int | None) -> None:
    """Publish the jobs' messages (job ids only); a sweep is chord(group(jobs), compare)."""
    from celery import chord, group

    from workers.app import app_for_environment

    app = app_for_environment()

    def sig(name: str, job_id: int) -> Any:
        return app.signature(name, args=(job_id,), immutable=True).set(task_id=task_id(job_id))

    if compare_id is None:
        sig(RUN_TASK, ids[0]).apply_async()
        return
    chord(group(sig(RUN_TASK, j) for j in ids), app=app)(sig(COMPARE_TASK, compare_id))


RUN_TASK = "circuits.run_job"
COMPARE_TASK = "circuits.compare"


def task_id(job_id: int) -> str:
    """The Celery task id of a job's message (stable, so a redelivery keeps it)."""
    return f"circuits-job-{job_id}"


# --------------------------------------------------------------------------------------------
# running a job
# --------------------------------------------------------------------------------------------
def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def stale_after() -> float:
    """Seconds without a heartbeat after which a running job counts as abandoned (its worker died)
    and may be claimed again: ``CIRCUITS_STALE_AFTER`` (default 120; keep it several heartbeats long)."""
    return _float_env("CIRCUITS_STALE_AFTER", 120.0)


class JobLost(CircuitsError):
    """This worker no longer holds the job (it was re-claimed after a missed heartbeat)."""


class JobProgress:
    """The search's progress callback, adapted to job rows.

    A call (at most every ``interval`` seconds, always the first and the last) writes the progress
    and a heartbeat in one conditional update. When that update finds the job no longer running
    for this worker, the search is stopped from inside: :class:`JobCancelled` if the job was
    cancelled, :class:`JobLost` if another worker claimed it. ``also`` receives every call (the
    in-process CLI's progress bar).
    """

    def __init__(
        self,
        store: Any,
        job_id: int,
        worker_id: str | None = None,
        interval: float | None = None,
        also: ProgressCallback | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self.interval = _float_env("CIRCUITS_PROGRESS_INTERVAL", 0.5) if interval is None else interval
        self.tracker: Tracker | None = None
        self.also = also
        self.stopped = threading.Event()
        """Set by the heartbeat thread when it finds the job no longer ours."""
        self._last = 0.0
        self.calls = 0

    def message(self, message: str) -> str:
        if self.tracker and self.tracker.best is not None:
            b = self.tracker.best
            return f"{message} | best so far {b.circuit} ({b.normalised:.4f}, {b.circuit.size} components)"
        return message

    def __call__(self, done: int, total: int | None, message: str) -> None:
        self.calls += 1
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

    def raise_stopped(self) -> None:
        job = self.store.get_job(self.job_id)
        if _status(job) == "cancelled":
            raise JobCancelled(f"job {self.job_id} was cancelled")
        raise JobLost(f"job {self.job_id} is {_status(job)} under worker {job.worker_id}, no longer this one")


class Tracker:
    """Wraps an evaluator: remembers the best circuit seen (highest normalised score, then fewest
    components), so a running job reports its best so far."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
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

    def evaluate_one(self, circuit: Circuit) -> Score:
        return self.evaluate([circuit])[0]

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class Heartbeat:
    """A daemon thread beating a job's heart every ``interval`` seconds while it runs, so model
    loading or one long ``evaluate`` call never look like a dead worker. If a beat finds the job no
    longer this worker's, it sets ``progress.stopped`` (the next progress call stops the search)."""

    def __init__(
        self,
        store: Any,
        job_id: int,
        worker_id: str | None,
        progress: JobProgress | None = None,
        interval: float | None = None,
    ) -> None:
        self.store, self.job_id, self.worker_id, self.progress = store, job_id, worker_id, progress
        self.interval = _float_env("CIRCUITS_HEARTBEAT_INTERVAL", 10.0) if interval is None else interval
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


_MODEL_CACHE: dict[tuple[str, str], Any] = {}


def cached_model(spec: str, device: str) -> Any:
    """Load a model once per worker process (the last two kept): jobs on one model share it."""
    from discovery.model import load_model

    key = (spec, device)
    if key not in _MODEL_CACHE:
        while len(_MODEL_CACHE) >= 2:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = load_model(spec, device=device)
    return _MODEL_CACHE[key]


def build_evaluator(request: JobRequest, device: str | None = None) -> Evaluator:
    """The plain evaluator a job's request describes (model cached per process)."""
    from discovery.tasks import build_dataset, get_task

    loaded = cached_model(request.model, device or request.device)
    dataset = build_dataset(
        get_task(request.task, **request.task_params),
        loaded.tokenizer,
        n=request.n,
        seed=request.seed,
        corruption=request.corruption,
    )
    return Evaluator(
        loaded,
        dataset,
        Ablation(
            kind=request.ablation,
            source=request.ablation_source,  # type: ignore[arg-type]
            ablate_mlps=request.ablate_mlps,
        ),
    )


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim(store: Any, job_id: int, worker_id: str) -> tuple[Outcome | None, Any]:
    """Claim the job; return (the outcome to stop with, or None to run it; the job record)."""
    job = store.get_job(job_id)
    if _finished(job):
        return "skipped", job
    if not store.claim_job(job_id, worker_id, stale_after=stale_after()):
        job = store.get_job(job_id)
        return ("skipped" if _finished(job) else "busy"), job
    return None, store.get_job(job_id)


def run_job(
    job_id: int,
    store: Any,
    worker_id: str | None = None,
    progress: ProgressCallback | None = None,
    device: str | None = None,
) -> Outcome:
    """Run one discovery job to its end: ``succeeded``, ``failed`` or ``cancelled``.

    ``skipped``: the job had already ended (a duplicate delivery) or another worker took it over;
    ``busy``: another worker holds it with a fresh heartbeat (retry later: if that worker died, its
    heartbeat goes stale after ``CIRCUITS_STALE_AFTER`` seconds and the job can be claimed again).
    ``device`` overrides the job's device (a GPU worker: ``circuits worker --device cuda``).
    Raises :class:`~discovery.errors.StoreError` when the database fails: the job is then neither
    failed nor finished (its row cannot be written) and should be retried.
    """
    from discovery.search import run_search
    from discovery.store.evaluator import StoredEvaluator

    worker_id = worker_id or default_worker_id()
    stop, job = _claim(store, job_id, worker_id)
    if stop:
        return stop
    if job.method == COMPARE_METHOD:
        return _run_compare_claimed(job, store, worker_id, progress, device)
    callback = JobProgress(store, job_id, worker_id, also=progress)
    with Heartbeat(store, job_id, worker_id, callback):
        try:
            request = _job_request(job)
            callback(0, None, "loading model and dataset")
            stored = StoredEvaluator(build_evaluator(request, device), store, job_id=job_id)
            store.set_job_model(job_id, stored.model_id)
            tracker = Tracker(stored)
            callback.tracker = tracker
            result = run_search(request.method, tracker, request.params, callback)
            extra = dict(
                result.extra,
                service={
                    "computed": stored.cache_misses,
                    "served_from_store": stored.cache_hits,
                    "attempt": store.get_job(job_id).attempts,
                    "worker": worker_id,
                    "dataset": stored.dataset_record.description,
                },
            )
            if not store.finish_job(job_id, replace(result, extra=extra)):
                return "cancelled" if _status(store.get_job(job_id)) == "cancelled" else "skipped"
            return "succeeded"
        except JobCancelled:
            return "cancelled"
        except JobLost:
            return "skipped"
        except StoreError:
            # the database itself failed (unreachable?): not the job's fault, and the row cannot be
            # written anyway. The caller retries (a worker: later, resuming from what was stored).
            raise
        except Exception as e:
            store.fail_job(job_id, type(e).__name__, str(e), traceback.format_exc())
            return "failed"


# --------------------------------------------------------------------------------------------
# the sweep's comparison
# --------------------------------------------------------------------------------------------
def run_compare(
    job_id: int,
    store: Any,
    worker_id: str | None = None,
    progress: ProgressCallback | None = None,
    device: str | None = None,
) -> Outcome:
    """Run a sweep's comparison job once its task jobs have ended; outcomes as :func:`run_job`.

    If some task job is still queued or running (a duplicate delivery, or a chord callback fired
    early), returns ``busy`` without claiming, so the caller retries later.
    """
    job = store.get_job(job_id)
    if _finished(job):
        return "skipped"
    if not all(_finished(store.get_job(j)) for j in job.params.get("jobs", [])):
        return "busy"
    worker_id = worker_id or default_worker_id()
    stop, job = _claim(store, job_id, worker_id)
    if stop:
        return stop
    return _run_compare_claimed(job, store, worker_id, progress, device)


def _run_compare_claimed(
    job: Any, store: Any, worker_id: str, progress: ProgressCallback | None, device: str | None
) -> Outcome:
    callback = JobProgress(store, job.id, worker_id, also=progress)
    with Heartbeat(store, job.id, worker_id, callback):
        try:
            comparison = compare_jobs(store, list(job.params.get("jobs", [])), job.id, callback, device)
            if not store.finish_job(job.id, comparison_result(comparison)):
                return "cancelled" if _status(store.get_job(job.id)) == "cancelled" else "skipped"
            return "succeeded"
        except JobCancelled:
            return "cancelled"
        except JobLost:
            return "skipped"
        except StoreError:
            raise  # as in run_job: the caller retries
        except Exception as e:
            store.fail_job(job.id, type(e).__name__, str(e), traceback.format_exc())
            return "failed"


def compare_jobs(
    store: Any,
    job_ids: Sequence[int],
    compare_job_id: int | None = None,
    progress: ProgressCallback | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Overlap matrix and cross-task scores of finished jobs' circuits.

    ``overlap[i][j]``: Jaccard similarity of circuit i's and circuit j's heads and MLPs
    (:func:`discovery.compare.overlap_matrix`; ``edge_overlap`` likewise for edge-level circuits);
    ``cross_scores[i][j]``: circuit i's normalised score on task j's dataset (the diagonal is each
    job's own score), every score through the store (persisted, served if already there). Jobs that
    did not succeed are listed in ``missing`` and left out.
    """
    from discovery.compare import compare, overlap_matrix
    from discovery.store.evaluator import StoredEvaluator

    jobs = [store.get_job(j) for j in job_ids]
    done = [j for j in jobs if _status(j) == "succeeded" and j.result_circuit is not None]
    missing = [{"job": j.id, "task": j.task, "status": _status(j)} for j in jobs if j not in done]
    circuits = [j.result_circuit for j in done]
    overlap = overlap_matrix(circuits, on="nodes")[1].tolist()
    edge_overlap = overlap_matrix(circuits, on="edges")[1].tolist() if any(c.edges for c in circuits) else None
    shared = [[list(compare(a, b).shared_nodes) for b in circuits] for a in circuits]
    cross: list[list[float | None]] = [[None] * len(done) for _ in done]
    for j, target in enumerate(done):
        scorer = StoredEvaluator(build_evaluator(_job_request(target), device), store, job_id=compare_job_id)
        for i, s in enumerate(scorer.evaluate(circuits)):
            cross[i][j] = None if math.isnan(s.normalised) else s.normalised
        if progress:
            progress(j + 1, len(done), f"scored every circuit on {target.task}")
    common = frozenset.intersection(*(frozenset(c.nodes) for c in circuits)) if circuits else frozenset()
    return {
        "kind": "comparison",
        "jobs": [j.id for j in done],
        "tasks": [j.task for j in done],
        "circuits": [c.canonical for c in circuits],
        "overlap": overlap,
        "edge_overlap": edge_overlap,
        "shared_components": shared,
        "cross_scores": cross,
        "common": Circuit(common).canonical,
        "missing": missing,
    }


def comparison_result(comparison: dict[str, Any]) -> Any:
    """The comparison as the search result the store's ``finish_job`` keeps: the circuit is what
    every task's circuit shares; there is no single score (NaN, stored as null); the matrices are
    in ``extra['comparison']``."""
    from discovery.evaluator import EvaluationMethod
    from discovery.search.base import SearchResult

    nan = float("nan")
    common = Circuit.parse(comparison["common"])
    method = EvaluationMethod("mean", "sweep:" + ",".join(comparison["tasks"]), "node", False, "per task")
    score = Score(common, nan, nan, nan, nan, method)
    return SearchResult(
        COMPARE_METHOD, {"jobs": comparison["jobs"]}, common, score, 0, 0.0, (), {"comparison": comparison}
    )


# --------------------------------------------------------------------------------------------
# inspecting and cancelling
# --------------------------------------------------------------------------------------------
def requeue(store: Any, job_ids: Sequence[int] | None = None) -> list[int]:
    """Publish the messages of jobs again: the given ones (queued or running), or every running job
    whose heartbeat is stale (older than ``CIRCUITS_STALE_AFTER``). For a broker that lost its data
    (a Redis restarted without its append-only file): the job rows are the truth, and a duplicate
    message is harmless (the claim lets one delivery run, the store serves what was computed)."""
    if job_ids is None:
        jobs = store.stale_jobs(stale_after())
    else:
        jobs = [store.get_job(j) for j in job_ids]
        ended = [j.id for j in jobs if _finished(j)]
        if ended:
            raise UsageError(f"job(s) {', '.join(map(str, ended))} already ended; submit them again instead")
    if not os.environ.get("CIRCUITS_BROKER_URL"):
        raise UsageError("CIRCUITS_BROKER_URL is not set: nothing to requeue on")
    from workers.app import app_for_environment

    app = app_for_environment()
    for job in jobs:
        name = COMPARE_TASK if job.method == COMPARE_METHOD else RUN_TASK
        app.signature(name, args=(job.id,), immutable=True).set(task_id=task_id(job.id)).apply_async()
    return [j.id for j in jobs]


def wait(
    job_ids: Sequence[int],
    store: Any,
    timeout: float | None = None,
    poll: float = 1.0,
    progress: ProgressCallback | None = None,
) -> list[Any]:
    """Poll until every job has ended (or ``timeout`` seconds); returns their records."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        jobs = [store.get_job(j) for j in job_ids]
        if progress:
            running = [j for j in jobs if not _finished(j)]
            current = running[0] if running else jobs[-1]
            progress(
                current.progress_done,
                current.progress_total,
                f"job {current.id} {_status(current)}: {current.progress_message or ''}",
            )
        if all(_finished(j) for j in jobs) or (deadline is not None and time.monotonic() > deadline):
            return jobs
        time.sleep(poll)


def cancel(job_id: int, store: Any = None) -> Any:
    """Mark a job cancelled: a queued job never starts, a running one stops at its next progress
    report (or heartbeat). Returns the job's record; an ended job is left as it was."""
    store = store if store is not None else open_default_store()
    store.cancel_job(job_id)  # raises UsageError for an unknown id
    return store.get_job(job_id)
