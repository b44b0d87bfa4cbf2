"""Read-only SQL for ``circuits sql``: two independent guards.

1. :func:`check_read_only` reads the statement (string literals, quoted identifiers, comments and
   PostgreSQL dollar quotes skipped) and refuses, with a message naming the reason, anything that
   is not one single statement starting with SELECT / WITH / VALUES / EXPLAIN / SHOW / TABLE, or
   that contains a writing keyword anywhere (a ``DELETE`` inside a CTE, ``SELECT ... INTO``).
2. :func:`run_read_only` runs the statement where the database itself refuses writes: a
   ``SET TRANSACTION READ ONLY`` transaction on PostgreSQL (the session's default made read-only as
   well, and the connection discarded afterwards), a connection with ``PRAGMA query_only`` on
   SQLite (whose driver also refuses more than one statement); the transaction is always rolled
   back, never committed.

The first gives a clear message; the second is the guarantee (the tests check each on its own).
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from discovery.errors import StoreError, UsageError

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
                if sql[end] == "\\" and ch == "'" and i > 0 and sql[i - 1] in "eE":
                    end += 2
                    continue
                end += 1
            i = end + 1
        elif sql.startswith("--", i):
            nl = sql.find("\n", i)
            i = n if nl < 0 else nl + 1
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


def run_read_only(
    engine: Engine, statement: str, max_rows: int | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one statement in a transaction the database keeps read-only; always rolled back.

    The statement goes to the driver as written (no parameter substitution: ``LIKE '%x'`` is fine).
    """
    dialect = engine.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise StoreError(f"read-only SQL is supported on SQLite and PostgreSQL, not {dialect}")
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        raw = engine.raw_connection()
    except sa.exc.SQLAlchemyError as e:
        raise StoreError(f"cannot connect: {e}") from e
    try:
        cursor = raw.cursor()
        if dialect == "sqlite":  # the driver is in autocommit mode (see engine.py): we open the transaction
            cursor.execute("PRAGMA query_only = ON")
            cursor.execute("BEGIN")
        else:  # psycopg2 opens the transaction before the first statement
            cursor.execute("SET TRANSACTION READ ONLY")
            # and the session's later transactions too (should a COMMIT ever get through); the connection
            # is discarded afterwards, so this never leaks into the pool
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cursor.execute("SET LOCAL statement_timeout = '300s'")
        cursor.execute(statement)
        if cursor.description is None:
            return [], []
        columns = [d[0] for d in cursor.description]
        rows = [tuple(r) for r in (cursor.fetchmany(max_rows) if max_rows else cursor.fetchall())]
        return columns, rows
    except dbapi_error as e:
        text = str(e).strip().splitlines()
        message = text[0] if text else type(e).__name__
        if any(t in message.lower() for t in ("read-only", "readonly", "query_only", "one statement at a time")):
            raise ReadOnlyViolation(f"refused by the database: {message}") from e
        raise StoreError(f"SQL failed: {type(e).__name__}: {message}") from e
    finally:
        try:
            raw.rollback()
            if dialect == "sqlite":
                raw.cursor().execute("PRAGMA query_only = OFF")
            else:
                raw.invalidate()
        finally:
            raw.close()
