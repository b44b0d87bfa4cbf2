"""Alembic environment: migrates the store's database (SQLite or PostgreSQL).

The URL is, in order: a connection handed over by ``discovery.store.migrate`` (``config.attributes
["connection"]``), ``sqlalchemy.url`` from the config, then ``CIRCUITS_DATABASE_URL`` / the embedded
SQLite default. SQLite gets ``render_as_batch`` (its ALTER TABLE is limited).
"""

from __future__ import annotations

from alembic import context

from discovery.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    from discovery.store.engine import database_url

    return config.get_main_option("sqlalchemy.url") or database_url()


def _configure(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    from discovery.store.engine import make_engine

    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
