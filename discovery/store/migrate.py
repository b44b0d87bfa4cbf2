"""Schema migrations, configured from Python so they work from an installed package.

The scripts live in the top-level ``migrations`` package (shipped in the wheel). :func:`upgrade`
brings a database to the newest revision (``circuits db upgrade``); :func:`check_schema` is what
:func:`discovery.store.open_store` runs: an empty database is migrated, a database at an older
revision is refused with a message naming ``circuits db upgrade``, and a database from a newer
version of this package is refused too.

Two processes upgrading the same database at once are serialised (a PostgreSQL advisory lock; a
``BEGIN IMMEDIATE`` transaction on SQLite), and the second finds nothing left to do.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from discovery.store.engine import SQLITE_BEGIN, describe_url
from discovery.store.models import Base
from discovery.types.errors import StoreError

_ADVISORY_LOCK_KEY = 0x63697263  # "circ"
UPGRADE_COMMAND = "circuits db upgrade"


def script_location() -> Path:
    import migrations

    # __path__, not __file__: an editable install made before the folder had __init__.py maps it as a namespace
    return Path(next(iter(migrations.__path__))).resolve()


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` pointing at the shipped ``migrations`` package (no ini file needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revisions() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def current_revisions(engine: Engine) -> tuple[str, ...]:
    """The revisions the database is at (empty for a database never migrated)."""
    try:
        with engine.connect() as conn:
            return tuple(MigrationContext.configure(conn).get_current_heads())
    except sa.exc.SQLAlchemyError as e:
        raise StoreError(f"cannot read the schema version of {describe_url(str(engine.url))}: {_first_line(e)}") from e


def upgrade(engine: Engine, revision: str = "head") -> tuple[str, ...]:
    """Migrate the database to ``revision``; returns the revisions it is at afterwards."""
    cfg = alembic_config()
    try:
        with engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"}).connect() as conn:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
    except sa.exc.SQLAlchemyError as e:
        raise StoreError(f"migrating {describe_url(str(engine.url))} failed: {_first_line(e)}") from e
    return current_revisions(engine)


def check_schema(engine: Engine, create_if_empty: bool = True) -> None:
    """Refuse a database whose schema is not this package's head; migrate an empty one."""
    where = describe_url(str(engine.url))
    current = set(current_revisions(engine))
    heads = set(head_revisions())
    if current == heads:
        return
    if not current:
        try:
            existing = set(sa.inspect(engine).get_table_names())
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot open the store at {where}: {_first_line(e)}") from e
        ours = existing & set(Base.metadata.tables)
        if ours:
            raise StoreError(
                f"the database at {where} has store tables ({', '.join(sorted(ours))}) but no "
                f"migration version; it was not created by `{UPGRADE_COMMAND}`"
            )
        if not create_if_empty:
            raise StoreError(f"the database at {where} has no store schema: run `{UPGRADE_COMMAND}`")
        upgrade(engine)
        from discovery.store.readonly import ensure_reader_role

        ensure_reader_role(engine)  # circuits sql's role (a user without CREATEROLE just gets no role)
        return
    unknown = current - known_revisions()
    if unknown:
        raise StoreError(
            f"the database at {where} is at schema revision {', '.join(sorted(unknown))}, which this "
            f"version of circuit-discovery does not know (written by a newer version?); "
            f"upgrade the package"
        )
    raise StoreError(
        f"the database at {where} is at schema revision {', '.join(sorted(current))} but this "
        f"version needs {', '.join(sorted(heads))}: run `{UPGRADE_COMMAND}` "
        f"(with CIRCUITS_DATABASE_URL set to this database)"
    )


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}"
