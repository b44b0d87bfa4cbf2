"""Which database, and how to connect to it.

``CIRCUITS_DATABASE_URL`` names any SQLAlchemy URL (``postgresql+psycopg2://user@host/db`` for the
service); without it the store is an embedded SQLite file in the user's data folder
(``platformdirs.user_data_dir("circuit-discovery")/circuits.db``).

SQLite connections run in WAL mode (readers never wait for the writer) with foreign keys on and a
60 s busy timeout; writing transactions start with ``BEGIN IMMEDIATE`` so two processes writing at
once queue for the lock instead of failing half way through a transaction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from discovery.types.errors import UsageError

ENV_VAR = "CIRCUITS_DATABASE_URL"
SQLITE_BEGIN = "sqlite_begin"
"""Execution option naming the SQLite BEGIN mode (DEFERRED, IMMEDIATE) of a connection's transactions."""


def default_sqlite_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("circuit-discovery")) / "circuits.db"


def database_url(url: str | None = None) -> str:
    """``url``, else ``CIRCUITS_DATABASE_URL``, else the embedded SQLite file."""
    if url:
        return url
    if env := os.environ.get(ENV_VAR):
        return env
    return f"sqlite:///{default_sqlite_path()}"


def describe_url(url: str) -> str:
    """The URL with any password hidden (for messages)."""
    return make_url(url).render_as_string(hide_password=True)


CONNECT_TIMEOUT_VAR = "CIRCUITS_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 5.0
"""Seconds a PostgreSQL connection may take to answer (``CIRCUITS_CONNECT_TIMEOUT`` overrides it; the
service passes its own validated setting, which reads the same variable)."""


def connect_timeout(value: float | None = None) -> float:
    """``value``, else ``CIRCUITS_CONNECT_TIMEOUT``, else 5 seconds."""
    if value is not None:
        return value
    raw = os.environ.get(CONNECT_TIMEOUT_VAR, "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        return float(raw)
    except ValueError as e:
        raise UsageError(f"{CONNECT_TIMEOUT_VAR}={raw!r}: must be a number of seconds") from e


def make_engine(url: str, *, timeout: float | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the SQLite settings above (the parent folder of a SQLite file is created).

    ``timeout``: seconds a PostgreSQL server may take to accept a connection (see :func:`connect_timeout`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
            # a server that accepts and never answers must not hang a submit or a worker for minutes
            connect_args = {
                "connect_timeout": max(1, int(connect_timeout(timeout))),
                **kwargs.pop("connect_args", {}),
            }
            return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)
        return sa.create_engine(url, pool_pre_ping=True, **kwargs)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60}, **kwargs)
    file_backed = bool(database) and database != ":memory:"

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # SQLAlchemy, not the driver, decides when transactions begin (see _on_begin)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 60000")
        if file_backed:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
