"""Persistence: every evaluated circuit, its score, task, model, ablation and job, in SQL.

- :class:`Storage` (:mod:`discovery.store.base`): the documented storage interface, implemented by the
  SQL store and by :class:`MemoryStore` (:mod:`discovery.store.memory`, an in-memory fake);
- :func:`open_store` (:mod:`discovery.store.backends`): the store a URL names (``memory:``, ``sqlite:///...``,
  ``postgresql+psycopg2://...``), the default one for None, a store instance as it is;
- :class:`Store` / :func:`open_sql_store` (:mod:`discovery.store.repository`): the SQL store, documented
  (thread safety, errors, every method), returning frozen records (:mod:`discovery.store.records`);
- :mod:`discovery.store.models`: the tables; :mod:`discovery.store.migrate`: Alembic, configured from
  Python (the scripts ship in the top-level ``migrations`` package);
- :mod:`discovery.store.readonly`: ``circuits sql``, read-only by construction.

The database is ``CIRCUITS_DATABASE_URL`` (any SQLAlchemy URL, PostgreSQL for the service; or
``memory:``, a store that lives as long as the process), else an embedded SQLite file in
``platformdirs.user_data_dir("circuit-discovery")``.

The evaluator decorator that serves stored scores and persists new ones sits one room up, with the
scorers it wraps: :class:`discovery.scoring.stored.StoredEvaluator` (the store knows no scorer).
"""

from discovery.store.backends import BACKENDS, open_store
from discovery.store.base import Storage
from discovery.store.engine import ENV_VAR, database_url, default_sqlite_path
from discovery.store.memory import MemoryStore
from discovery.store.models import JobStatus
from discovery.store.readonly import ReadOnlyViolation
from discovery.store.records import BestCircuit, DatasetRecord, EvaluationRecord, JobRecord, ModelRecord, PatchingCell
from discovery.store.repository import Store, open_sql_store

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "BestCircuit",
    "DatasetRecord",
    "EvaluationRecord",
    "JobRecord",
    "JobStatus",
    "MemoryStore",
    "ModelRecord",
    "PatchingCell",
    "ReadOnlyViolation",
    "Storage",
    "Store",
    "database_url",
    "default_sqlite_path",
    "open_sql_store",
    "open_store",
]
