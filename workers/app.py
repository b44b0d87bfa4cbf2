"""The Celery application, configured by the library (:func:`discovery.service.broker.celery_config`).

Every environment variable the service reads is documented where it is read: the broker, queue and
visibility timeout in :mod:`discovery.service.broker`, the intervals (stale time, heartbeat,
progress, reaper, retries, connection timeouts) in :mod:`discovery.service.settings`, the database
in :mod:`discovery.store`. ``CIRCUITS_DEVICE`` names the device every job of this worker runs on
(``circuits worker --device cuda`` sets it).

Each worker process runs a reaper thread (:class:`discovery.service.control.Reaper`, started when the
worker is ready): a job whose worker was SIGKILLed is republished once its heartbeat is stale, and a
queued job whose message the broker lost is republished, with no operator action.

Habits (Celery docs, "Tasks: acks_late / Idempotence"; Redis transport, "visibility timeout"):
late acknowledgement, ``task_reject_on_worker_lost``, prefetch multiplier 1 (a worker reserves one
job at a time), broker connection retried forever at start-up and at run time, publishing retried.
"""

from __future__ import annotations

import logging

from celery.signals import worker_ready, worker_shutdown

from discovery.service.broker import app_for_environment, celery_config, make_app

app = make_app()

_log = logging.getLogger("circuits.worker")
_REAPER = None


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    global _REAPER
    from discovery.service.control import Reaper
    from discovery.service.jobs import open_default_store

    _REAPER = Reaper(open_default_store, log=_log.warning).start()


@worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    if _REAPER is not None:
        _REAPER.stop()


__all__ = ["app", "app_for_environment", "celery_config"]
