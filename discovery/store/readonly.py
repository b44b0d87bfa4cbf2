"""Read-only SQL for ``circuits sql``: read-only by construction, with a friendly first check.

The guarantee is the connection, not the parsing:

- **PostgreSQL**: the statement runs on a connection of its own as a dedicated login role
  (:data:`READER_ROLE`, ``circuits_reader``; ``CIRCUITS_SQL_ROLE`` renames it) that holds SELECT on
  the store's tables and nothing else: not a superuser, owns nothing, cannot ``COPY ... TO PROGRAM``,
  read server files or signal other roles' backends. :func:`ensure_reader_role` creates it and its
  grants (``circuits db upgrade`` runs it). The connection is read-only and time-limited at
  connection level (``default_transaction_read_only``, ``statement_timeout``,
  ``idle_in_transaction_session_timeout``, ``lock_timeout`` in the startup options, so no statement
  has to set them), and the statement is sent with the extended query protocol (psycopg 3, one
  prepared statement), which the server refuses to run with more than one command in it: a smuggled
  ``; COMMIT; BEGIN READ WRITE`` is a syntax error, not a second statement. Rows are streamed
  (single-row mode) and the row limit applies while fetching; the connection is closed afterwards.
- **SQLite**: a connection of its own opened with ``mode=ro`` (the file is never created or
  written; a mistyped path is an error, not a new empty store) and ``PRAGMA query_only``; the
  driver runs one statement per call; a progress handler aborts the statement at its timeout (an
  endless recursive CTE stops); rows are fetched in chunks up to the row limit.

:func:`check_read_only` reads the statement first (string literals, quoted identifiers, comments
and dollar quotes skipped) and refuses, with a message naming the reason, anything that is not one
single statement starting with SELECT / WITH / VALUES / EXPLAIN / SHOW / TABLE or that contains a
writing keyword: a clear message for the honest mistake, not the security boundary (the tests run
the injection strings past it straight to :func:`run_read_only`).

Settings (environment): ``CIRCUITS_SQL_TIMEOUT`` (seconds per statement, default 30),
``CIRCUITS_SQL_ROLE``, ``CIRCUITS_SQL_PASSWORD`` (the reader role's password, when the server asks
for one), ``CIRCUITS_SQL_URL`` (connect to this URL instead of the store's URL with the reader role).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from discovery.types.errors import StoreError, UsageError

ALLOWED_FIRST = {"select", "with", "values", "explain", "show", "table"}
WRITING_WORDS = {
    "insert",
    "update",
    "delete",
    "drop",
    "create",
    "alter",
    "truncate",
    "grant",
    "revoke",
    "merge",
    "attach",
    "detach",
    "vacuum",
    "reindex",
    "copy",
    "call",
    "lock",
    "pragma",
    "into",
    "replace",
    "upsert",
    "comment",
    "refresh",
    "cluster",
    "discard",
    "reset",
    "analyze",
    "do",
    "notify",
    "listen",
}
"""Words refused anywhere outside literals. ``replace`` and ``analyze`` are refused only as statements
(``replace(x, ...)`` is a string function; ``EXPLAIN ANALYZE`` runs the statement)."""
_AS_STATEMENT_ONLY = {"replace"}


class ReadOnlyViolation(UsageError):
    """``circuits sql`` was given a statement that could write (or more than one statement)."""


def _escape_string(sql: str, quote: int) -> bool:
    """Whether the quote at ``quote`` opens a PostgreSQL escape string (``E'...'``, where a backslash
    escapes): the E must be a word of its own, so ``name'\\'`` is the identifier ``name`` followed
    by a standard string in which a backslash is just a character."""
    if quote == 0 or sql[quote - 1] not in "eE":
        return False
    return quote == 1 or not (sql[quote - 2].isalnum() or sql[quote - 2] in "_$")


_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9$]*")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


def _scan(sql: str) -> tuple[list[list[str]], list[str]]:
    """Split into statements of lower-cased bare words; also return the words that precede a ``(``."""
    statements: list[list[str]] = [[]]
    called: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # doubled quote inside the literal
                        end += 2
                        continue
                    break
                if sql[end] == "\\" and ch == "'" and _escape_string(sql, i):
                    end += 2
                    continue
                end += 1
            i = end + 1
        elif sql.startswith("--", i):
            # a comment ends at a newline or a carriage return (PostgreSQL's lexer accepts either)
            ends = [e for e in (sql.find("\n", i), sql.find("\r", i)) if e >= 0]
            i = min(ends) + 1 if ends else n
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch == "$" and (m := _DOLLAR.match(sql, i)):
            tag = m.group(0)
            end = sql.find(tag, m.end())
            i = n if end < 0 else end + len(tag)
        elif ch == ";":
            statements.append([])
            i += 1
        elif m := _WORD.match(sql, i):
            word = m.group(0).lower()
            statements[-1].append(word)
            rest = sql[m.end() :].lstrip()
            if rest.startswith("("):
                called.append(word)
            i = m.end()
        else:
            i += 1
    return [s for s in statements if s], called


def check_read_only(statement: str) -> None:
    """Raise :class:`ReadOnlyViolation` unless ``statement`` is one statement that only reads."""
    statements, called = _scan(statement)
    if not statements:
        raise ReadOnlyViolation("empty statement: write one SELECT")
    if len(statements) > 1:
        raise ReadOnlyViolation(
            f"refused: {len(statements)} statements; circuits sql runs exactly one "
            "read-only statement (SELECT / WITH ... SELECT)"
        )
    words = statements[0]
    if words[0] not in ALLOWED_FIRST:
        raise ReadOnlyViolation(
            f"refused: {words[0].upper()} statements can write; circuits sql is read-only "
            f"and runs only {', '.join(sorted(w.upper() for w in ALLOWED_FIRST))}"
        )
    functions = set(called)
    for word in words[1:]:
        if word in WRITING_WORDS and not (word in _AS_STATEMENT_ONLY and word in functions):
            if word == "analyze" and words[0] != "explain":
                continue
            raise ReadOnlyViolation(
                f"refused: the statement contains {word.upper()}, which can write; circuits sql is read-only"
            )


# ------------------------------------------------------------------------------------------------
# running a statement where the database cannot write
# ------------------------------------------------------------------------------------------------
DEFAULT_TIMEOUT = 30.0
"""Seconds a ``circuits sql`` statement may run (``CIRCUITS_SQL_TIMEOUT``)."""
DEFAULT_MAX_ROWS = 100_000
"""Rows fetched at most when the caller names no limit (memory stays bounded on any result)."""
READER_ROLE = "circuits_reader"


def reader_role() -> str:
    name = os.environ.get("CIRCUITS_SQL_ROLE") or READER_ROLE
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise UsageError(f"CIRCUITS_SQL_ROLE={name!r}: write a plain lower-case role name")
    return name


def sql_timeout() -> float:
    value = os.environ.get("CIRCUITS_SQL_TIMEOUT")
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise UsageError(f"CIRCUITS_SQL_TIMEOUT={value!r}: a number of seconds above 0")
    return seconds


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ensure_reader_role(engine: Engine) -> str:
    """Create (if missing) the PostgreSQL login role ``circuits sql`` connects as, and grant it SELECT on
    every table of the store's schema (and on tables created there later). Returns a line saying what
    was done; on SQLite there is nothing to do. Needs a user allowed to create roles (the store's owner
    or an admin); without that privilege the reason is returned and ``circuits sql`` refuses to run
    until someone with it runs ``circuits db upgrade``."""
    if engine.dialect.name != "postgresql":
        return "no reader role needed (SQLite: circuits sql opens the file read-only)"
    role = reader_role()
    quoted = _quote_ident(role)
    password = os.environ.get("CIRCUITS_SQL_PASSWORD")
    try:
        with engine.connect() as conn:
            with conn.begin():
                exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
                if not exists:
                    # concurrent creators: the second CREATE fails with duplicate_object, caught below
                    with conn.begin_nested():
                        try:
                            conn.exec_driver_sql(
                                f"CREATE ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                            )
                        except sa.exc.ProgrammingError as e:
                            if "already exists" not in str(e):
                                raise
                if password:
                    conn.execute(sa.text(f"ALTER ROLE {quoted} PASSWORD :p"), {"p": password})
                database = conn.execute(sa.text("SELECT current_database()")).scalar_one()
                schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
                conn.exec_driver_sql(f"GRANT CONNECT ON DATABASE {_quote_ident(database)} TO {quoted}")
                conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {_quote_ident(schema)} TO {quoted}")
                conn.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA {_quote_ident(schema)} TO {quoted}")
                conn.exec_driver_sql(
                    f"ALTER DEFAULT PRIVILEGES IN SCHEMA {_quote_ident(schema)} GRANT SELECT ON TABLES TO {quoted}"
                )
    except sa.exc.SQLAlchemyError as e:
        orig = getattr(e, "orig", None) or e
        first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        return f"reader role {role} not set up ({first}); circuits sql refuses until an admin runs circuits db upgrade"
    return f"reader role {role}: SELECT on schema {schema} of {database}"


def run_read_only(
    engine: Engine, statement: str, max_rows: int | None = None, timeout: float | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one statement on a connection that cannot write (see the module docstring); returns
    (column names, at most ``max_rows`` rows, default :data:`DEFAULT_MAX_ROWS`). A statement running
    past ``timeout`` seconds (default ``CIRCUITS_SQL_TIMEOUT``, 30) is stopped with a StoreError.

    The statement goes to the driver as written (no parameter substitution: ``LIKE '%x'`` is fine).
    """
    limit = DEFAULT_MAX_ROWS if max_rows is None else int(max_rows)
    if limit < 0:
        raise UsageError(f"max_rows must be 0 or more, got {max_rows}")
    seconds = sql_timeout() if timeout is None else float(timeout)
    if not seconds > 0:
        raise UsageError(f"the SQL timeout must be above 0 seconds, got {timeout}")
    dialect = engine.dialect.name
    if dialect == "sqlite":
        return _run_sqlite(engine, statement, limit, seconds)
    if dialect == "postgresql":
        return _run_postgresql(engine, statement, limit, seconds)
    raise StoreError(f"read-only SQL is supported on SQLite and PostgreSQL, not {dialect}")


def _refusal(e: BaseException, seconds: float) -> Exception:
    text = str(e).strip().splitlines()
    message = text[0] if text else type(e).__name__
    lowered = message.lower()
    read_only = (
        "read-only",
        "readonly",
        "query_only",
        "one statement at a time",
        "multiple commands",
        "not authorized",
        "authorization denied",
    )
    if any(t in lowered for t in read_only):
        return ReadOnlyViolation(f"refused by the database: {message}")
    if "permission denied" in lowered or "must be superuser" in lowered or "privilege" in lowered:
        return ReadOnlyViolation(f"refused by the database (circuits sql may only read the store's tables): {message}")
    if "interrupted" in lowered or "statement timeout" in lowered or "canceling statement" in lowered:
        return StoreError(f"the statement ran past its {seconds:g} s timeout (CIRCUITS_SQL_TIMEOUT) and was stopped")
    return StoreError(f"SQL failed: {type(e).__name__}: {message}")


def _fetch(cursor: Any, limit: int) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    while len(rows) < limit:
        chunk = cursor.fetchmany(min(1000, limit - len(rows)))
        if not chunk:
            break
        rows.extend(tuple(r) for r in chunk)
    return rows


def _sqlite_path(engine: Engine) -> Path:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise StoreError("circuits sql needs a SQLite file (an in-memory or URI database cannot be reopened read-only)")
    return Path(database).expanduser()


_SQLITE_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


def _sqlite_authorizer(action: int, *args: Any) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_ALLOWED else sqlite3.SQLITE_DENY


def _run_sqlite(engine: Engine, statement: str, limit: int, seconds: float) -> tuple[list[str], list[tuple[Any, ...]]]:
    path = _sqlite_path(engine)
    if not path.is_file():
        raise StoreError(f"no SQLite store at {path} (circuits sql never creates one; check the path)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=seconds)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path} read-only: {e}") from e
    deadline = time.monotonic() + seconds
    # called every 10,000 virtual-machine steps: a non-zero return interrupts the statement
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        conn.execute("PRAGMA query_only = ON")
        # mode=ro and query_only keep the store unwritten, but ATTACH would still create a file and
        # VACUUM INTO write one: the authorizer allows reading and nothing else
        conn.set_authorizer(_sqlite_authorizer)
        cursor = conn.execute(statement)
        if cursor.description is None:
            return [], []
        columns = [d[0] for d in cursor.description]
        return columns, _fetch(cursor, limit)
    except sqlite3.Error as e:
        raise _refusal(e, seconds) from e
    finally:
        conn.close()


def reader_conninfo(engine: Engine, seconds: float) -> dict[str, Any]:
    """psycopg connection arguments for the reader role on the store's database (the store's URL with
    the reader role as user, or ``CIRCUITS_SQL_URL``), with the connection-level limits."""
    override = os.environ.get("CIRCUITS_SQL_URL")
    url = make_url(override) if override else engine.url.set(username=reader_role(), password=None)
    password = url.password if override else os.environ.get("CIRCUITS_SQL_PASSWORD")
    query = dict(url.query)
    options = str(query.pop("options", "") or "")
    ms = max(1, int(seconds * 1000))
    limits = (
        f"-c default_transaction_read_only=on -c statement_timeout={ms} "
        f"-c idle_in_transaction_session_timeout={ms + 5000} -c lock_timeout={ms}"
    )
    args: dict[str, Any] = {
        "host": url.host or "localhost",
        "port": url.port or 5432,
        "dbname": url.database,
        "user": url.username,
        "options": f"{options} {limits}".strip(),
        "connect_timeout": 10,
        "application_name": "circuits sql",
    }
    if password:
        args["password"] = password
    args.update({k: v for k, v in query.items() if isinstance(v, str)})
    return args


def _run_postgresql(
    engine: Engine, statement: str, limit: int, seconds: float
) -> tuple[list[str], list[tuple[Any, ...]]]:
    try:
        import psycopg
    except ImportError as e:  # a dependency of the package; only a broken install lacks it
        raise StoreError("circuits sql on PostgreSQL needs psycopg 3 (pip install 'psycopg[binary]')") from e
    args = reader_conninfo(engine, seconds)
    try:
        conn = psycopg.connect(**args)
    except psycopg.Error as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StoreError(
            f"circuits sql connects as the read-only role {args['user']}, and that failed: {first} "
            "(run circuits db upgrade as the store's owner to create it, or set CIRCUITS_SQL_URL)"
        ) from e
    try:
        return _stream(conn, statement, limit, seconds)
    finally:
        conn.close()


def _stream(conn: Any, statement: str, limit: int, seconds: float) -> tuple[list[str], list[tuple[Any, ...]]]:
    import psycopg

    cursor = conn.cursor()
    rows: list[tuple[Any, ...]] = []
    # stream(): the extended protocol (one command per statement, enforced by the server) in
    # single-row mode, so a huge result is never held in memory
    stream: Iterator[Any] = cursor.stream(statement)
    try:
        for row in stream:
            if len(rows) >= limit:
                conn.cancel_safe()  # stop the server producing the rest
                break
            rows.append(tuple(row))
        columns = [d.name for d in cursor.description] if cursor.description else []
    except psycopg.Error as e:
        raise _refusal(e, seconds) from e
    finally:
        try:
            stream.close()  # type: ignore[attr-defined]
        except psycopg.Error:
            pass  # the cancelled remainder
        if not conn.closed:
            conn.rollback()
    return columns, rows
