"""The broker side, in the library: Celery's configuration, publishing job messages, and finding which
jobs still have a message. :mod:`workers` builds its app from :func:`celery_config`; the library never
imports :mod:`workers` (dependencies run one way). Celery is imported only when a broker is used.

Environment (besides :mod:`discovery.service.settings`):

``CIRCUITS_BROKER_URL``
    Redis URL of the broker, e.g. ``redis://localhost:6379/0``. Unset: no service; ``circuits submit``
    runs jobs in-process.
``CIRCUITS_RESULT_BACKEND``
    Celery's result backend (a sweep's chord needs one); defaults to the broker URL.
``CIRCUITS_QUEUE``
    Queue name (default ``circuits``).
``CIRCUITS_VISIBILITY_TIMEOUT``
    Seconds a delivered but unacknowledged message may stay with a worker before Redis hands it to
    another (default 6 hours: above the longest job). Recovery from a killed worker does not wait for
    it: the reaper (:func:`discovery.service.control.reap`) republishes a job whose heartbeat is stale.
``CIRCUITS_REDIS_PREFIX``
    Prefix for every Redis key kombu and the result backend write (tests isolate themselves with it).
``CIRCUITS_PUBLISH_RETRIES``
    Times a publish is retried while the broker is unreachable (default 3).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from discovery.service.jobs import COMPARE_TASK, RUN_TASK, EnqueueError, task_id
from discovery.service.settings import settings
from discovery.types.errors import UsageError

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
        number = float(value)
    except ValueError as e:
        raise UsageError(f"{name}={value!r} is not a number") from e
    if not number > 0:
        raise UsageError(f"{name}={value!r}: must be above 0")
    return number


def queue_name() -> str:
    return os.environ.get("CIRCUITS_QUEUE") or DEFAULT_QUEUE


def key_prefix() -> str:
    return os.environ.get("CIRCUITS_REDIS_PREFIX") or ""


def celery_config() -> dict:
    """The Celery settings, from the environment at call time."""
    broker = broker_url() or "redis://127.0.0.1:6379/0"
    visibility = _float_env("CIRCUITS_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT)
    connect = settings().connect_timeout
    # With a short visibility timeout (tests), sweep the unacked set often; kombu's default sweep
    # is every 10 s x 10 polls.
    restore_interval = max(1, min(10, int(visibility / 2)))
    transport: dict[str, Any] = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": restore_interval,
        "unacked_restore_throttle": 1 if visibility < 600 else 10,
        "socket_connect_timeout": connect,
        "socket_timeout": max(connect, 10.0),
        "socket_keepalive": True,
        "health_check_interval": 10,
    }
    prefix = key_prefix()
    if prefix:
        transport["global_keyprefix"] = prefix
    backend_options = {k: v for k, v in transport.items() if k in ("visibility_timeout", "global_keyprefix")}
    return dict(
        broker_url=broker,
        result_backend=os.environ.get("CIRCUITS_RESULT_BACKEND") or broker,
        broker_transport_options=transport,
        result_backend_transport_options=backend_options,
        task_default_queue=queue_name(),
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
        broker_connection_timeout=connect,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": int(_float_env("CIRCUITS_PUBLISH_RETRIES", 3)),
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        redis_retry_on_timeout=True,
        redis_socket_keepalive=True,
        redis_socket_connect_timeout=connect,
        redis_socket_timeout=max(connect, 10.0),
        redis_backend_health_check_interval=10,
        # a long job must not be cut: no time limits here, cancellation is cooperative (SQL flag)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )


def make_app(config: dict | None = None) -> Any:
    from celery import Celery

    app = Celery("circuits", include=["workers.tasks"])
    app.conf.update(config or celery_config())
    return app


_APPS: dict[str, Any] = {}


def app_for_environment() -> Any:
    """An app configured from the environment as it is *now* (a submitter whose environment changed
    after import, e.g. a test or a benchmark switching brokers, must not publish with a stale queue,
    key prefix or broker: Celery caches those once the app has connected)."""
    config = celery_config()
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _APPS:
        _APPS[key] = make_app(config)
    return _APPS[key]


def _redis() -> Any:
    import redis

    url = broker_url()
    if not url:
        raise UsageError("no broker: set CIRCUITS_BROKER_URL (e.g. redis://localhost:6379/0) or run in-process")
    t = settings().connect_timeout
    return redis.Redis.from_url(url, socket_connect_timeout=t, socket_timeout=t)


def check_broker() -> None:
    """Refuse (EnqueueError, one line naming the broker) unless the broker answers a PING: before any job
    row is created, so a refused submit leaves nothing behind. Each try waits at most
    ``CIRCUITS_CONNECT_TIMEOUT`` seconds (a broker that accepts connections and never answers cannot
    hang it); ``CIRCUITS_PUBLISH_RETRIES`` more tries, a second apart, wait out a broker restarting."""
    from sqlalchemy.engine import make_url

    url = broker_url() or ""
    shown = make_url(url.replace("redis://", "redis+x://", 1)).render_as_string(hide_password=True)
    shown = shown.replace("redis+x://", "redis://", 1)
    tries = (
        1 + int(_float_env("CIRCUITS_PUBLISH_RETRIES", 3)) if os.environ.get("CIRCUITS_PUBLISH_RETRIES") != "0" else 1
    )
    error: Exception | None = None
    for attempt in range(tries):
        if attempt:
            time.sleep(1.0)
        try:
            client = _redis()
            try:
                client.ping()
                return
            finally:
                client.close()
        except UsageError:
            raise
        except Exception as e:
            error = e
    raise EnqueueError(
        f"the broker at {shown} did not answer ({tries} tries, {settings().connect_timeout:g} s each; last: "
        f"{type(error).__name__}: {error}); nothing was queued or stored"
    ) from error


def publish(job_ids: Sequence[int], compare_id: int | None = None) -> None:
    """Publish the jobs' messages (job ids only); a sweep is chord(group(jobs), compare)."""
    from celery import chord, group

    app = app_for_environment()

    def sig(name: str, job_id: int) -> Any:
        return app.signature(name, args=(job_id,), immutable=True).set(task_id=task_id(job_id))

    if compare_id is None:
        for job_id in job_ids:
            sig(RUN_TASK, job_id).apply_async()
        return
    chord(group(sig(RUN_TASK, j) for j in job_ids), app=app)(sig(COMPARE_TASK, compare_id))


def republish(job_id: int, compare: bool) -> None:
    """One job's message again (a duplicate is harmless: the claim lets one delivery run)."""
    app = app_for_environment()
    name = COMPARE_TASK if compare else RUN_TASK
    app.signature(name, args=(job_id,), immutable=True).set(task_id=task_id(job_id)).apply_async()


def live_task_ids() -> set[str]:
    """Task ids that have a message on the broker: waiting in the queue, or delivered and not yet
    acknowledged (running, or waiting for a retry's countdown). Read straight from kombu's Redis keys."""
    client = _redis()
    prefix = key_prefix()
    found: set[str] = set()

    def add(raw: Any) -> None:
        try:
            message = json.loads(raw)
            if isinstance(message, list):  # the unacked hash holds [message, exchange, routing key]
                message = message[0]
            found.add(str(message["headers"]["id"]))
        except (ValueError, KeyError, TypeError, IndexError):
            pass

    for raw in client.lrange(prefix + queue_name(), 0, -1):
        add(raw)
    for raw in client.hvals(prefix + "unacked"):
        add(raw)
    return found
