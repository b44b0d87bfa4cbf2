"""A job's life, as the store records it and every face shows it (torch-free)."""

from __future__ import annotations

import enum


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
