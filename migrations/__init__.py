"""Alembic migrations of the circuit-discovery store, shipped inside the package.

``discovery.store.migrate`` points an Alembic ``Config`` at this folder, so ``circuits db upgrade``
works from an installed wheel; developers may also run ``alembic upgrade head`` from the repository
root (``alembic.ini``). New revisions: ``alembic revision --autogenerate -m "what changed"``, then
review the generated file (and give it a readable revision id, ``0002_...``).
"""
