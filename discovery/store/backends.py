"""Which backend a store is: :func:`open_store` picks it, as Optuna's ``get_storage`` does.

- ``None``: the default URL, ``CIRCUITS_DATABASE_URL``, else the embedded SQLite file;
- a :class:`~discovery.store.base.Storage` (any backend's instance): returned as it is;
- a URL: the backend its scheme names (``memory:`` for :class:`~discovery.store.memory.MemoryStore`,
  ``sqlite:///...`` and ``postgresql+psycopg2://...`` for the SQL store). A scheme not in
  :data:`BACKENDS` is handed to the SQL store, which accepts any SQLAlchemy URL.

A new backend is one class implementing :class:`~discovery.store.base.Storage` and one line in
:data:`BACKENDS` (CONTRIBUTING.md, "Add a storage backend").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from discovery.store.base import Storage
from discovery.store.engine import database_url
from discovery.store.memory import MemoryStore
from discovery.store.repository import open_sql_store


def _open_memory(url: str | None, **options: Any) -> MemoryStore:
    """A fresh, empty in-memory store (the SQL options - schema checks, timeouts - mean nothing to it)."""
    return MemoryStore()


BACKENDS: dict[str, Callable[..., Storage]] = {
    "memory": _open_memory,
    "sqlite": open_sql_store,
    "postgresql": open_sql_store,
}
"""URL scheme (the part before ``:``, without a ``+driver``) -> the function that opens that backend, given
the URL as :func:`open_store` got it (None: the default URL) and its keyword options."""


def scheme_of(url: str) -> str:
    """``postgresql+psycopg2://u@h/db`` -> ``postgresql``; ``memory:`` -> ``memory``."""
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def open_store(
    store: str | Storage | None = None,
    *,
    create_if_empty: bool = True,
    check: bool = True,
    must_exist: bool = False,
    read_only: bool = False,
    connect_timeout: float | None = None,
) -> Storage:
    """The store ``store`` names (see the module docstring). The keyword options are the SQL store's
    (:func:`~discovery.store.repository.open_sql_store`); other backends may ignore them."""
    if store is not None and not isinstance(store, str):
        return store
    opener = BACKENDS.get(scheme_of(database_url(store)), open_sql_store)
    # the URL as given: the SQL store tells a named file (refused when missing, with must_exist) from
    # the default one (created on first use)
    return opener(
        store,
        create_if_empty=create_if_empty,
        check=check,
        must_exist=must_exist,
        read_only=read_only,
        connect_timeout=connect_timeout,
    )
