"""The Celery application: configuration read from the environment, nothing else.

Environment
-----------
``CIRCUITS_BROKER_URL``
    Redis URL of the broker, e.g. ``redis://localhost:6379/0``. Unset: no service; ``circuits submit``
    runs jobs in-process (see :mod:`discovery.service`).
``CIRCUITS_RESULT_BACKEND``
    Celery's result backend (a sweep's chord needs one); defaults to the broker URL.
``CIRCUITS_DATABASE_URL``
    The job store (read by :func:`discovery.store.open_store`); every worker and submitter must
    point at the same database. Job state lives there, not in Celery.
``CIRCUITS_QUEUE``
    Queue name (default ``circuits``).
``CIRCUITS_VISIBILITY_TIMEOUT``
    Seconds a delivered but unacknowledged message may stay with a worker before Redis hands it to
    another (default 6 hours: above the longest job). Tasks acknowledge *after* they run
    (``acks_late``), so a worker killed mid-job leaves its message unacknowledged and it is
    redelivered after this timeout. A job that outlives it is redelivered while still running; the
    second delivery finds the job claimed with a fresh heartbeat and retries later, so nothing runs
    twice, but set it above your longest job. The kill test sets it to a few seconds.
``CIRCUITS_REDIS_PREFIX``
    Prefix for every Redis key kombu and the result backend write (tests isolate themselves with it).
``CIRCUITS_PUBLISH_RETRIES``
    Times ``submit`` retries publishing while the broker is unreachable (default 10, ~15 s); then the
    submit fails with a message and its job rows are marked failed.

Read by :mod:`discovery.service` and :mod:`workers.tasks`:

``CIRCUITS_STALE_AFTER``
    Seconds without a heartbeat after which a running job counts as abandoned and another delivery
    may take it over (default 120).
``CIRCUITS_HEARTBEAT_INTERVAL``
    Seconds between a running job's heartbeats (default 10; keep it well under the stale time).
``CIRCUITS_PROGRESS_INTERVAL``
    Least seconds between progress rows (default 0.5).
``CIRCUITS_BUSY_RETRY``
    Seconds before a delivery that found its job held by a live worker tries again (default 15,
    capped at a third of the visibility timeout).
``CIRCUITS_STORE_RETRIES``
    Times a job whose database failed is retried (default 40, one every ``CIRCUITS_BUSY_RETRY``).
``CIRCUITS_DEVICE``
    Device every job of this worker runs on (``circuits worker --device cuda`` sets it).

Habits (Celery docs, "Tasks: acks_late / Idempotence"; Redis transport, "visibility timeout"):
late acknowledgement, ``task_reject_on_worker_lost``, prefetch multiplier 1 (a worker reserves one
job at a time), broker connection retried forever at start-up and at run time, publishing retried.
"""

from __future__ import annotations

import json
import os

from celery import Celery

DEFAULT_QUEUE = "circuits"
DEFAULT_VISIBILITY_TIMEOUT = 6 * 3600


def broker_url() -> str | None:
    """The configured broker, or None (in-process mode)."""
    return os.environ.get("CIRCUITS_BROKER_URL") or None


def _float_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError as e:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from e


def celery_config() -> dict:
    """The Celery settings, from the environment at call time."""
    broker = broker_url() or "redis://127.0.0.1:6379/0"
    queue = os.environ.get("CIRCUITS_QUEUE") or DEFAULT_QUEUE
    visibility = _float_env("CIRCUITS_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT)
    # With a short visibility timeout (tests), sweep the unacked set often; kombu's default sweep
    # is every 10 s x 10 polls.
    restore_interval = max(1, min(10, int(visibility / 2)))
    transport = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": restore_interval,
        "unacked_restore_throttle": 1 if visibility < 600 else 10,
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "socket_keepalive": True,
        "health_check_interval": 10,
    }
    prefix = os.environ.get("CIRCUITS_REDIS_PREFIX")
    if prefix:
        transport["global_keyprefix"] = prefix
    backend_options = {k: v for k, v in transport.items() if k in ("visibility_timeout", "global_keyprefix")}
    return dict(
        broker_url=broker,
        result_backend=os.environ.get("CIRCUITS_RESULT_BACKEND") or broker,
        broker_transport_options=transport,
        result_backend_transport_options=backend_options,
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # a job's state is in SQL; Celery's results only carry chords
        result_expires=int(_float_env("CIRCUITS_RESULT_EXPIRES", 7 * 24 * 3600)),
        # faults
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=5,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": int(_float_env("CIRCUITS_PUBLISH_RETRIES", 10)),
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        redis_retry_on_timeout=True,
        redis_socket_keepalive=True,
        redis_backend_health_check_interval=10,
        # a long job must not be cut: no time limits here, cancellation is cooperative (SQL flag)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )


def make_app(config: dict | None = None) -> Celery:
    app = Celery("circuits", include=["workers.tasks"])
    app.conf.update(config or celery_config())
    return app


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


app = make_app()
_APPS: dict[str, Celery] = {_key(celery_config()): app}


def app_for_environment() -> Celery:
    """An app configured from the environment as it is *now* (a submitter whose environment changed
    after import, e.g. a test or a benchmark switching brokers, must not publish with a stale queue,
    key prefix or broker: Celery caches those once the app has connected)."""
    config = celery_config()
    key = _key(config)
    if key not in _APPS:
        _APPS[key] = make_app(config)
    return _APPS[key]
