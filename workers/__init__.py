"""Celery workers for discovery jobs: ``celery -A workers worker`` (or ``circuits worker``).

The tasks are thin wrappers over :mod:`discovery.service`; see :mod:`workers.app` for the
configuration (environment variables) and :mod:`workers.tasks` for the tasks.
"""

from workers.app import app

celery = app  # ``celery -A workers`` looks for ``app`` or ``celery``

__all__ = ["app", "celery"]
