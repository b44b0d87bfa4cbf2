"""A job's life, as the store records it and every face shows it (torch-free)."""

from __future__ import annotations

import enum
from typing import Any, Protocol

from discovery.types.circuit import Circuit


class JobStatus(str, enum.Enum):
    """A job's life: queued -> running -> succeeded | failed | cancelled (a stale running job may be re-claimed)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
"""The states a job never leaves. Members are ``str``s too: ``"failed" in FINISHED_STATES`` holds."""


class JobResult(Protocol):
    """What a store keeps of a finished job's result (a search's :class:`~discovery.search.base.SearchResult`):
    its circuit, and a JSON-able summary (score, evaluation method, size, cost, parameters). A protocol
    here, so the store takes results without importing the searches that make them."""

    @property
    def circuit(self) -> Circuit: ...

    def summary(self) -> dict[str, Any]: ...
