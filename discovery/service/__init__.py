"""Discovery jobs: the library side of the service (submit, run, cancel, inspect, recover).

A job is a row in the store (:mod:`discovery.store`), not a Celery object. Its life:

1. :func:`submit` (:mod:`.submit`) validates the request *before* anything is stored or enqueued
   (:mod:`.requests`: unknown task, method or task parameter, bad parameters checked against the
   model's shape, a model directory that is not a model, prompts the tokenizer cannot express or
   longer than the context, a device this machine lacks: all refused with a
   :class:`~discovery.types.errors.UsageError`), checks that the broker answers, creates the job row
   (``queued``), then publishes a message carrying only the job id (:mod:`.broker`) or runs the job
   right away in this process (no broker: the embedded default). An identical job already queued or
   running is joined instead of computed twice.
2. :func:`run_job` (:mod:`.running`, what a worker's task calls) claims the row, runs the search
   through the store's evaluator (every score persisted, a redelivered job resumes from them), and
   ends the row in one place (:func:`.running._run_claimed`).
3. A sweep (several tasks) is one job per task plus a ``compare`` job (:mod:`.comparison`).
4. :mod:`.control`: :func:`wait`, :func:`cancel`, :func:`requeue`, and :func:`reap`, which every
   worker runs so a killed worker's job or a lost message recovers without an operator.

Settings are one validated object (:mod:`.settings`). Nothing here imports Celery at module level,
and nothing here imports :mod:`workers` (the workers import this).
"""

from discovery.service.broker import app_for_environment, celery_config
from discovery.service.comparison import compare_jobs, comparison_result
from discovery.service.control import Reaper, cancel, fail_abandoned, reap, requeue, wait
from discovery.service.evaluators import build_evaluator, cached_model
from discovery.service.jobs import (
    COMPARE_METHOD,
    COMPARE_TASK,
    FINISHED_STATES,
    RUN_TASK,
    EnqueueError,
    JobCancelled,
    JobLost,
    Outcome,
    default_worker_id,
    open_default_store,
    task_id,
)
from discovery.service.requests import MAX_PROMPTS, JobRequest, check_model_spec, check_task_params, validate_request
from discovery.service.running import (
    Heartbeat,
    JobProgress,
    Tracker,
    run_compare,
    run_discovery,
    run_job,
    stale_after,
)
from discovery.service.settings import ServiceSettings, reload_settings, settings
from discovery.service.submit import Submission, find_identical_active_job, submit

__all__ = [
    "COMPARE_METHOD",
    "COMPARE_TASK",
    "FINISHED_STATES",
    "MAX_PROMPTS",
    "RUN_TASK",
    "EnqueueError",
    "Heartbeat",
    "JobCancelled",
    "JobLost",
    "JobProgress",
    "JobRequest",
    "Outcome",
    "Reaper",
    "ServiceSettings",
    "Submission",
    "Tracker",
    "app_for_environment",
    "build_evaluator",
    "cached_model",
    "cancel",
    "celery_config",
    "check_model_spec",
    "check_task_params",
    "compare_jobs",
    "comparison_result",
    "default_worker_id",
    "fail_abandoned",
    "find_identical_active_job",
    "open_default_store",
    "reap",
    "reload_settings",
    "requeue",
    "run_compare",
    "run_discovery",
    "run_job",
    "settings",
    "stale_after",
    "submit",
    "task_id",
    "validate_request",
    "wait",
]
