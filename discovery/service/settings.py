"""The service's settings: ONE validated object, read from the environment once per process.

Every interval the service uses is here, checked where it is read: a value that is not a number, is
not above zero, or contradicts another (a heartbeat slower than the stale time) is refused with a
:class:`~discovery.types.errors.UsageError` naming the variable, instead of running with a setting that
silently breaks recovery (``CIRCUITS_STALE_AFTER=0`` would let every delivery steal every job).

``CIRCUITS_STALE_AFTER`` (120)
    Seconds without a heartbeat after which a running job counts as abandoned (its worker died):
    the reaper republishes it and another delivery may claim it.
``CIRCUITS_HEARTBEAT_INTERVAL`` (10)
    Seconds between a running job's heartbeats; at most a third of the stale time.
``CIRCUITS_PROGRESS_INTERVAL`` (0.5)
    Least seconds between progress rows.
``CIRCUITS_REAP_INTERVAL`` (15)
    Seconds between two sweeps of a worker's reaper (see :func:`discovery.service.control.reap`).
``CIRCUITS_QUEUED_GRACE`` (60)
    Seconds a job may stay queued with no message for it on the broker before the reaper
    republishes it (a broker that lost its data).
``CIRCUITS_BUSY_RETRY`` (15)
    Seconds before a delivery that found its job held by a live worker tries again.
``CIRCUITS_STORE_RETRIES`` (40)
    Times a job whose database failed is retried (one every ``CIRCUITS_BUSY_RETRY``).
``CIRCUITS_CONNECT_TIMEOUT`` (5)
    Seconds to wait for the broker or the database to answer a connection (submit, workers).

Tests that need other values set the environment and call :func:`reload_settings`.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, fields

from discovery.types.errors import UsageError


@dataclass(frozen=True)
class ServiceSettings:
    stale_after: float = 120.0
    heartbeat_interval: float = 10.0
    progress_interval: float = 0.5
    reap_interval: float = 15.0
    queued_grace: float = 60.0
    busy_retry: float = 15.0
    store_retries: int = 40
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value) or value <= 0:
                if f.name == "store_retries" and value == 0:
                    continue
                raise UsageError(f"{_env_name(f.name)}={value!r}: must be a number above 0")
        if self.heartbeat_interval * 3 > self.stale_after:
            raise UsageError(
                f"CIRCUITS_HEARTBEAT_INTERVAL={self.heartbeat_interval:g} must be at most a third of "
                f"CIRCUITS_STALE_AFTER={self.stale_after:g}, or a live job looks abandoned between two beats"
            )

    @classmethod
    def from_environment(cls) -> ServiceSettings:
        values: dict[str, float | int] = {}
        for f in fields(cls):
            raw = os.environ.get(_env_name(f.name), "").strip()
            if not raw:
                continue
            try:
                values[f.name] = int(raw) if f.name == "store_retries" else float(raw)
            except ValueError as e:
                kind = "a whole number" if f.name == "store_retries" else "a number of seconds"
                raise UsageError(f"{_env_name(f.name)}={raw!r}: must be {kind}") from e
        return cls(**values)  # type: ignore[arg-type]


def _env_name(field_name: str) -> str:
    return "CIRCUITS_" + field_name.upper()


@functools.lru_cache(maxsize=1)
def settings() -> ServiceSettings:
    """The process's settings, read and validated on first use."""
    return ServiceSettings.from_environment()


def reload_settings() -> ServiceSettings:
    """Read the environment again (tests, and a benchmark switching settings)."""
    settings.cache_clear()
    return settings()
