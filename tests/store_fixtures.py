"""Fixtures for the store tests: one fresh database per backend and test.

- SQLite: a file in the test's tmp folder.
- PostgreSQL (``integration``): one uniquely named database per test session on localhost
  (``CIRCUITS_TEST_PG`` overrides the server URL, default ``postgresql+psycopg2://postgres@127.0.0.1:5432/test``),
  one fresh schema per test inside it (``search_path``); the database is dropped at the end of the
  session. Without a reachable server the PostgreSQL cases are skipped, saying so.

Import with ``from tests.store_fixtures import *`` (the shared conftest is not this area's file).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import sqlalchemy as sa

PG_SERVER = os.environ.get("CIRCUITS_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.integration),
]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session (dropped afterwards); its URL."""
    admin = sa.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as e:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {PG_SERVER} is not reachable: {str(e.orig).strip().splitlines()[0]}")
    name = f"circuits_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _pg_schema_url(database_url: str) -> str:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine.dispose()
    sep = "&" if "?" in database_url else "?"
    return f"{database_url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """An empty database: a SQLite file, or a fresh schema in the session's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'circuits.db'}"
    return _pg_schema_url(request.getfixturevalue("pg_database"))


@pytest.fixture
def store(db_url: str):  # type: ignore[no-untyped-def]
    from discovery.store import open_store

    s = open_store(db_url)
    yield s
    s.close()
