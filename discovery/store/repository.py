"""The store's repository: every read and write of experiments goes through :class:`Store`.

Opening. :func:`open_sql_store(url) <open_sql_store>` (which :func:`discovery.store.open_store` calls for
``sqlite`` and ``postgresql`` URLs) connects to ``url``, else ``CIRCUITS_DATABASE_URL``, else the
embedded SQLite file, and checks the schema: an empty database is migrated to the newest
revision; one at an older revision is refused with a :class:`~discovery.types.errors.StoreError` naming
``circuits db upgrade``.

Records. Methods return frozen dataclasses (:mod:`discovery.store.records`) and
:class:`~discovery.scoring.evaluator.Score` values, never ORM rows: they stay valid after the call and may
be shared between threads.

Transactions. One helper, :meth:`Store._transaction`, owns every transaction: each public method is
one transaction (``save_scores`` writes a whole batch or nothing), committed on success and rolled
back on any exception. A unique-key conflict from a racing writer (the same evaluation, circuit,
model or dataset written by two processes at once) is not an error: it is an insert-or-ignore
(``ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL), and the row already there is the answer.

Errors. Any database or driver failure is raised as :class:`~discovery.types.errors.StoreError` (the
driver's exception chained as ``__cause__``); bad arguments (an unknown job id, a statement that
could write given to :meth:`Store.read_only_sql`) raise :class:`~discovery.types.errors.UsageError`
subclasses. Nothing else is raised on purpose.

Thread and process safety. A :class:`Store` holds one SQLAlchemy engine (a connection pool) and no
other state: one instance may be used from many threads at once. Do not share one across
``fork()``: each process (a Celery worker child) opens its own. The job methods are safe under
concurrent processes: :meth:`Store.claim_job` is a single conditional UPDATE, so of two workers
claiming the same job exactly one wins; state changes never move a finished job.

Methods (``*`` = writes):

- models, datasets: ``get_or_create_model(identity)*``, ``get_or_create_dataset(dataset)*``,
  ``get_model(id)``, ``get_dataset(id)``
- evaluations: ``lookup(circuits, model_id, dataset_id, method) -> {circuit.key: Score}``,
  ``save_scores(scores, model_id, dataset_id, job_id=None)* -> rows inserted``,
  ``baseline(model_id, dataset_id, method) -> (full, ablated) | None``,
  ``scores_for_circuit(circuit) -> [EvaluationRecord]``, ``evaluation_summary()``
- jobs: ``create_job(method, params, task, model, ...)* -> id``, ``claim_job(id, worker)* -> won?``,
  ``heartbeat(id)*``, ``update_progress(id, done, total, message)*``, ``finish_job(id, result)*``,
  ``fail_job(id, type, message, traceback)*``, ``cancel_job(id)*``, ``set_job_model(id, model_id)*``,
  ``get_job(id) -> JobRecord``, ``list_jobs(...)``, ``stale_jobs(seconds)``,
  ``job_evaluation_count(id)``, ``best_circuits(task, model)``
- patching: ``save_patching(result, model_id, dataset_id | model=, dataset=, kind)* -> rows inserted``,
  ``get_patching(model_id, dataset_id, kind=None, receiver=None) -> [PatchingCell]``
- SQL: ``read_only_sql(statement) -> (columns, rows)`` (refuses anything that could write)
- the dashboard's reads: ``database_now()``, ``row_counts()``, ``job_filter_values()``,
  ``circuits_by_key_prefix(prefix)``, ``job_evaluation_rows(id, limit)``, ``patching_heatmaps()``,
  ``patching_heatmap_of(cell id)``
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from discovery.store import migrate
from discovery.store.engine import ENV_VAR, SQLITE_BEGIN, database_url, describe_url, make_engine
from discovery.store.models import (
    EVALUATION_KEY,
    CircuitRow,
    DatasetRow,
    Evaluation,
    Job,
    JobStatus,
    Model,
    PatchingResult,
    db_now,
    db_seconds_ago,
)
from discovery.store.readonly import check_read_only, run_read_only
from discovery.store.records import BestCircuit, DatasetRecord, EvaluationRecord, JobRecord, ModelRecord, PatchingCell
from discovery.types.circuit import Circuit
from discovery.types.errors import StoreError, UsageError
from discovery.types.evaluation import EvaluationMethod, Score
from discovery.types.identity import ModelIdentity
from discovery.types.jobs import JobResult

_CHUNK = 500  # keys per IN (...) list
DEFAULT_STALE_SECONDS = 120.0

# the Core tables (mapped classes' __table__ is typed as a FromClause; these are Tables)
C, E, M, D, J, P = (
    cast(sa.Table, t)
    for t in (
        CircuitRow.__table__,
        Evaluation.__table__,
        Model.__table__,
        DatasetRow.__table__,
        Job.__table__,
        PatchingResult.__table__,
    )
)
TABLES = (M, D, J, C, E, P)
"""Every table, in the order :meth:`Store.row_counts` reports them."""


def open_sql_store(
    url: str | None = None,
    *,
    create_if_empty: bool = True,
    check: bool = True,
    must_exist: bool = False,
    read_only: bool = False,
    connect_timeout: float | None = None,
) -> Store:
    """Connect to ``url`` (else ``CIRCUITS_DATABASE_URL``, else the embedded SQLite file) and check its schema.

    ``must_exist``: refuse a named SQLite file (``url`` or ``CIRCUITS_DATABASE_URL``) that does not exist yet
    instead of creating an empty store there (the commands that only read use it, so a mistyped path is an
    error, not a new empty store); the embedded default file is still created on first use.

    ``read_only``: the database itself refuses writes (``PRAGMA query_only`` on every SQLite connection,
    read-only transactions on PostgreSQL sessions), the store must already exist (a SQLite file, never an
    in-memory database) and nothing is created or migrated (an un-migrated database is an error naming
    ``circuits db upgrade``). ``connect_timeout``: seconds a PostgreSQL server may take to answer
    (:func:`discovery.store.engine.connect_timeout`)."""
    resolved = database_url(url)
    if read_only:
        _require_sqlite_file(resolved, read_only=True)
    elif must_exist and (url or os.environ.get(ENV_VAR)):
        _require_sqlite_file(resolved)
    try:
        engine = make_engine(resolved, timeout=connect_timeout)
    except (sa.exc.SQLAlchemyError, ImportError, ValueError) as e:
        raise StoreError(
            f"cannot open the store at {describe_url(resolved) if '://' in resolved else resolved!r}: {e}"
        ) from e
    if read_only:
        _refuse_writes(engine)
    if check or read_only:
        migrate.check_schema(engine, create_if_empty=create_if_empty and not read_only)
    return Store(engine)


def _refuse_writes(engine: Engine) -> None:
    """Every connection of ``engine`` refuses writes (the database's own guarantee, not this code's)."""
    sqlite_file = engine.dialect.name == "sqlite"

    @sa.event.listens_for(engine, "connect")
    def _read_only(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if sqlite_file:
            cursor.execute("PRAGMA query_only = ON")
        else:
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cursor.close()
        if not sqlite_file:
            dbapi_connection.commit()


def _require_sqlite_file(url: str, read_only: bool = False) -> None:
    """Refuse a SQLite URL whose file does not exist (and, ``read_only``, one that names no file)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as e:
        if read_only:
            raise UsageError(f"--db {url!r} is not a database URL: {e}") from e
        raise StoreError(f"not a database URL: {url!r} ({e})") from e
    if parsed.get_backend_name() != "sqlite":
        return
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        if read_only:
            raise UsageError(f"the dashboard needs a SQLite file, not {url!r}")
        return
    from pathlib import Path

    if not Path(database).expanduser().is_file():
        if read_only:  # a missing store, as for every reading command
            raise StoreError(
                f"no store at {database}: nothing to show yet (run a job first, or pass --db / CIRCUITS_DATABASE_URL)"
            )
        raise StoreError(f"no store at {database} (is the path mistyped? any command that writes creates it)")


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _none_to_nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf as None, tuples as lists, dataclasses as dicts and unknown objects as strings."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, Circuit):
        return value.canonical
    if hasattr(value, "__dataclass_fields__"):
        return json_safe(asdict(value))
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    if hasattr(value, "item"):
        return json_safe(value.item())
    return str(value)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def circuit_values(circuit: Circuit) -> dict[str, Any]:
    return {
        "key": circuit.key,
        "canonical": circuit.canonical,
        "components": ",".join(n.name for n in circuit.sorted_nodes() if n.kind in ("head", "mlp")),
        "edges": ",".join(e.name for e in sorted(circuit.edges, key=lambda e: e.sort_key)),
        "size": circuit.size,
        "n_edges": circuit.n_edges,
    }


def _method_filter(method: EvaluationMethod, level: bool = True) -> list[Any]:
    """Rows scored under ``method``; without ``level``, at either level (and either embedding setting,
    which only edge circuits have)."""
    filters = [
        E.c.ablation == method.ablation,
        E.c.source == method.source,
        E.c.ablate_mlps == bool(method.ablate_mlps),
        E.c.metric == method.metric,
    ]
    if level:
        filters += [E.c.level == method.level, E.c.ablate_embed == bool(method.ablate_embed)]
    return filters


def _method_of(row: Any) -> EvaluationMethod:
    return EvaluationMethod(
        row.ablation,
        row.source,
        row.level,
        bool(row.ablate_mlps),
        row.metric,
        row.normaliser,
        ablate_embed=bool(row.ablate_embed),
    )


class Store:
    """The repository over one database (see the module docstring for the contract)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})

    @property
    def url(self) -> str:
        return describe_url(str(self.engine.url))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- the one transaction helper -----------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self, what: str, write: bool = False) -> Iterator[Connection]:
        """One transaction: committed if the block succeeds, rolled back otherwise; driver errors -> StoreError."""
        try:
            with (self._writer if write else self.engine).begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as e:
            orig = getattr(e, "orig", None) or e
            text = str(orig).strip().splitlines()
            raise StoreError(f"store: {what} failed: {type(orig).__name__}: {text[0] if text else ''}") from e

    def _insert_ignore(
        self,
        conn: Connection,
        table: sa.Table,
        rows: Sequence[dict[str, Any]],
        conflict: Sequence[str],
        returning: sa.Column | None = None,
    ) -> list[Any]:
        """INSERT ... ON CONFLICT DO NOTHING; returns the ``returning`` values of the rows actually inserted."""
        if not rows:
            return []
        name = conn.dialect.name
        if name in ("sqlite", "postgresql"):
            ins = sqlite.insert(table) if name == "sqlite" else postgresql.insert(table)
            stmt = ins.on_conflict_do_nothing(index_elements=list(conflict))
            if returning is not None:
                return [r[0] for r in conn.execute(stmt.returning(returning), list(rows))]
            conn.execute(stmt, list(rows))
            return []
        inserted = []  # other dialects: one savepoint per row
        for row in rows:
            try:
                with conn.begin_nested():
                    result = conn.execute(sa.insert(table).values(**row))
                    key = result.inserted_primary_key
                    if key is not None:
                        inserted.append(key[0])
            except sa.exc.IntegrityError:
                pass
        return inserted

    # --- models and datasets ------------------------------------------------------------------
    def get_or_create_model(self, identity: ModelIdentity) -> ModelRecord:
        row = {
            "name": identity.name,
            "architecture": identity.architecture,
            "weight_hash": identity.weight_hash,
            "n_layers": identity.n_layers,
            "n_heads": identity.n_heads,
            "d_model": identity.d_model,
            "d_mlp": identity.d_mlp,
            "vocab_size": identity.vocab_size,
            "flags": identity.flags,
            "parallel_attn_mlp": identity.parallel_attn_mlp,
        }
        with self._transaction("saving the model", write=True) as conn:
            self._insert_ignore(conn, M, [row], ["name", "weight_hash"])
            found = conn.execute(
                sa.select(M).where(M.c.name == identity.name, M.c.weight_hash == identity.weight_hash)
            ).one()
        return self._model_record(found)

    def get_model(self, model_id: int) -> ModelRecord:
        with self._transaction("reading a model") as conn:
            found = conn.execute(sa.select(M).where(M.c.id == model_id)).one_or_none()
        if found is None:
            raise UsageError(f"no stored model with id {model_id}")
        return self._model_record(found)

    @staticmethod
    def _model_record(r: Any) -> ModelRecord:
        identity = ModelIdentity(
            r.name,
            r.architecture,
            r.weight_hash,
            r.n_layers,
            r.n_heads,
            r.d_model,
            r.d_mlp or 0,
            r.vocab_size or 0,
            r.flags or "",
            bool(r.parallel_attn_mlp),
        )
        return ModelRecord(r.id, identity)

    def get_or_create_dataset(self, dataset: Any) -> DatasetRecord:
        """``dataset``: a :class:`~discovery.tasks.base.Dataset` (its spec, metric and prompt hash are stored)."""
        spec = dataset.spec
        params = json.dumps(json_safe(dict(spec.params)), sort_keys=True)
        key = {
            "task": spec.task,
            "corruption": spec.corruption,
            "n_prompts": int(spec.n),
            "seed": int(spec.seed),
            "params": params,
            "prepend_bos": bool(spec.prepend_bos),
            "prompt_hash": dataset.prompt_hash,
        }
        row = dict(key, metric=dataset.metric, description=spec.describe())
        with self._transaction("saving the dataset", write=True) as conn:
            self._insert_ignore(conn, D, [row], list(key))
            found = conn.execute(sa.select(D).where(*[D.c[k] == v for k, v in key.items()])).one()
        return self._dataset_record(found)

    def get_dataset(self, dataset_id: int) -> DatasetRecord:
        with self._transaction("reading a dataset") as conn:
            found = conn.execute(sa.select(D).where(D.c.id == dataset_id)).one_or_none()
        if found is None:
            raise UsageError(f"no stored dataset with id {dataset_id}")
        return self._dataset_record(found)

    @staticmethod
    def _dataset_record(r: Any) -> DatasetRecord:
        return DatasetRecord(
            r.id,
            r.task,
            r.corruption,
            r.n_prompts,
            r.seed,
            json.loads(r.params),
            bool(r.prepend_bos),
            r.metric,
            r.prompt_hash,
            r.description,
        )

    # --- circuits and evaluations -----------------------------------------------------------------
    def _ensure_circuits(self, conn: Connection, circuits: Iterable[Circuit]) -> dict[str, int]:
        unique = {c.key: c for c in circuits}
        rows = [circuit_values(c) for c in unique.values()]
        for start in range(0, len(rows), _CHUNK):
            self._insert_ignore(conn, C, rows[start : start + _CHUNK], ["key"])
        ids: dict[str, int] = {}
        keys = list(unique)
        for start in range(0, len(keys), _CHUNK):
            for r in conn.execute(sa.select(C.c.key, C.c.id).where(C.c.key.in_(keys[start : start + _CHUNK]))):
                ids[r.key] = r.id
        return ids

    def save_circuits(self, circuits: Iterable[Circuit]) -> dict[str, int]:
        """Store circuits (no scores); returns ``{key: circuit id}``."""
        with self._transaction("saving circuits", write=True) as conn:
            return self._ensure_circuits(conn, circuits)

    def lookup(
        self, circuits: Sequence[Circuit], model_id: int, dataset_id: int, method: EvaluationMethod
    ) -> dict[str, Score]:
        """Stored scores of ``circuits`` under exactly ``method`` (ablation, source, level, MLPs, metric)."""
        wanted = {c.key: c for c in circuits}
        found: dict[str, Score] = {}
        keys = list(wanted)
        with self._transaction("looking up stored scores") as conn:
            for start in range(0, len(keys), _CHUNK):
                stmt = (
                    sa.select(
                        C.c.key,
                        E.c.score,
                        E.c.normalised,
                        E.c.full,
                        E.c.ablated,
                        E.c.ablation,
                        E.c.source,
                        E.c.level,
                        E.c.ablate_mlps,
                        E.c.ablate_embed,
                        E.c.metric,
                        E.c.normaliser,
                    )
                    .select_from(E.join(C, E.c.circuit_id == C.c.id))
                    .where(
                        E.c.model_id == model_id,
                        E.c.dataset_id == dataset_id,
                        *_method_filter(method),
                        C.c.key.in_(keys[start : start + _CHUNK]),
                    )
                )
                for r in conn.execute(stmt):
                    found[r.key] = Score(
                        wanted[r.key],
                        float(r.score),
                        _none_to_nan(r.normalised),
                        float(r.full),
                        float(r.ablated),
                        _method_of(r),
                    )
        return found

    def save_scores(self, scores: Sequence[Score], model_id: int, dataset_id: int, job_id: int | None = None) -> int:
        """Persist a batch of scores in one transaction; returns how many were new (the rest were already stored)."""
        if not scores:
            return 0
        with self._transaction(f"saving {len(scores)} scores", write=True) as conn:
            ids = self._ensure_circuits(conn, (s.circuit for s in scores))
            rows: dict[tuple, dict[str, Any]] = {}
            for s in scores:
                m = s.method
                setting = (m.ablation, m.source, m.level, bool(m.ablate_mlps), bool(m.ablate_embed), m.metric)
                key = (s.circuit.key, *setting)
                rows.setdefault(
                    key,
                    {
                        "circuit_id": ids[s.circuit.key],
                        "model_id": model_id,
                        "dataset_id": dataset_id,
                        "ablation": m.ablation,
                        "source": m.source,
                        "level": m.level,
                        "ablate_mlps": bool(m.ablate_mlps),
                        "ablate_embed": bool(m.ablate_embed),
                        "metric": m.metric,
                        "normaliser": m.normaliser,
                        "score": float(s.metric),
                        "normalised": _nan_to_none(s.normalised),
                        "full": float(s.full),
                        "ablated": float(s.ablated),
                        "job_id": job_id,
                    },
                )
            inserted = self._insert_ignore(
                conn,
                E,
                list(rows.values()),
                list(EVALUATION_KEY),
                returning=E.c.id,
            )
        return len(inserted)

    def baseline(self, model_id: int, dataset_id: int, method: EvaluationMethod) -> tuple[float, float] | None:
        """The stored (full, ablated) metric pair of any evaluation under ``method`` (None if none is stored).

        ``level`` is ignored: both ends are node-level quantities (everything kept / nothing kept).
        """
        filters = _method_filter(method, level=False)
        with self._transaction("reading the baseline") as conn:
            r = conn.execute(
                sa.select(E.c.full, E.c.ablated)
                .where(E.c.model_id == model_id, E.c.dataset_id == dataset_id, *filters)
                .limit(1)
            ).one_or_none()
        return None if r is None else (float(r.full), float(r.ablated))

    def count_evaluations(self) -> int:
        with self._transaction("counting evaluations") as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(E)).scalar_one())

    def _evaluation_query(self) -> sa.Select:
        return sa.select(
            E.c.id,
            E.c.score,
            E.c.normalised,
            E.c.full,
            E.c.ablated,
            E.c.ablation,
            E.c.source,
            E.c.level,
            E.c.ablate_mlps,
            E.c.ablate_embed,
            E.c.metric,
            E.c.normaliser,
            E.c.job_id,
            E.c.created_at,
            E.c.model_id,
            E.c.dataset_id,
            C.c.canonical,
            M.c.name.label("model_name"),
            D.c.task,
            D.c.description,
        ).select_from(
            E.join(C, E.c.circuit_id == C.c.id).join(M, E.c.model_id == M.c.id).join(D, E.c.dataset_id == D.c.id)
        )

    @staticmethod
    def _evaluation_record(r: Any, circuit: Circuit | None = None) -> EvaluationRecord:
        c = circuit or Circuit.parse(r.canonical)
        score = Score(c, float(r.score), _none_to_nan(r.normalised), float(r.full), float(r.ablated), _method_of(r))
        return EvaluationRecord(
            r.id, score, r.model_name, r.model_id, r.task, r.description, r.dataset_id, r.job_id, _utc(r.created_at)
        )

    def scores_for_circuit(self, circuit: Circuit, limit: int = 1000) -> list[EvaluationRecord]:
        """Every stored score of ``circuit``: across models, tasks, datasets and methods (newest first)."""
        with self._transaction("reading a circuit's scores") as conn:
            rows = conn.execute(
                self._evaluation_query()
                .where(C.c.key == circuit.key)
                .order_by(E.c.created_at.desc(), E.c.id.desc())
                .limit(limit)
            ).all()
        return [self._evaluation_record(r, circuit) for r in rows]

    def evaluations(
        self, task: str | None = None, model: str | None = None, job_id: int | None = None, limit: int = 1000
    ) -> list[EvaluationRecord]:
        stmt = self._evaluation_query()
        if task:
            stmt = stmt.where(D.c.task == task)
        if model:
            stmt = stmt.where(M.c.name == model)
        if job_id is not None:
            stmt = stmt.where(E.c.job_id == job_id)
        with self._transaction("reading evaluations") as conn:
            rows = conn.execute(stmt.order_by(E.c.id).limit(limit)).all()
        return [self._evaluation_record(r) for r in rows]

    def evaluation_summary(self) -> list[dict[str, Any]]:
        """Evaluation counts per model, task and method: model, task, ablation, level, metric, n, best, last."""
        stmt = (
            sa.select(
                M.c.name.label("model"),
                D.c.task,
                E.c.ablation,
                E.c.level,
                E.c.ablate_mlps,
                E.c.metric,
                sa.func.count().label("n"),
                sa.func.count(sa.distinct(E.c.circuit_id)).label("circuits"),
                sa.func.max(E.c.created_at).label("last"),
            )
            .select_from(E.join(M, E.c.model_id == M.c.id).join(D, E.c.dataset_id == D.c.id))
            .group_by(M.c.name, D.c.task, E.c.ablation, E.c.level, E.c.ablate_mlps, E.c.metric)
            .order_by(M.c.name, D.c.task)
        )
        with self._transaction("summarising evaluations") as conn:
            return [dict(r._mapping, last=_utc(r.last)) for r in conn.execute(stmt)]

    # --- what the dashboard reads (plain values; see discovery.dashboard.queries) ---------------------
    def database_now(self) -> datetime:
        """The database's clock (job timestamps come from it, so elapsed times use it too)."""
        with self._transaction("reading the clock") as conn:
            value = _utc(conn.execute(sa.select(db_now())).scalar_one())
        assert value is not None
        return value

    def row_counts(self) -> dict[str, int]:
        """Rows per table."""
        with self._transaction("counting rows") as conn:
            return {t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()) for t in TABLES}

    def job_filter_values(self) -> dict[str, list[str]]:
        """The models, tasks and methods that occur among the jobs, each sorted."""
        with self._transaction("reading the jobs' filter values") as conn:
            return {
                col: [r[0] for r in conn.execute(sa.select(J.c[col]).distinct().order_by(J.c[col])) if r[0] is not None]
                for col in ("model", "task", "method")
            }

    def circuits_by_key_prefix(self, prefix: str, limit: int = 2) -> list[Circuit]:
        """Stored circuits whose key starts with ``prefix`` (at most ``limit``)."""
        with self._transaction("finding a circuit by key") as conn:
            rows = conn.execute(sa.select(C.c.canonical).where(C.c.key.like(prefix + "%")).limit(limit)).all()
        return [Circuit.parse(r[0]) for r in rows]

    def job_evaluation_rows(self, job_id: int, limit: int) -> list[dict[str, Any]]:
        """The evaluations a job stored first, oldest first, as plain rows: ``circuit`` (its stored canonical
        spelling), ``key``, ``size``, ``n_edges``, ``metric``, ``normalised``, ``task``, ``dataset`` (its
        description), ``method`` (an :class:`EvaluationMethod`, one value per distinct method) and
        ``created_at`` (UTC). Circuits are not parsed back into values: a job may have stored thousands,
        and parsing them would cost seconds for nothing."""
        stmt = (
            sa.select(
                C.c.canonical,
                C.c.key,
                C.c.size,
                C.c.n_edges,
                E.c.score,
                E.c.normalised,
                E.c.ablation,
                E.c.source,
                E.c.level,
                E.c.ablate_mlps,
                E.c.ablate_embed,
                E.c.metric,
                E.c.normaliser,
                E.c.created_at,
                D.c.task,
                D.c.description,
            )  # fmt: skip
            .select_from(E.join(C, E.c.circuit_id == C.c.id).join(D, E.c.dataset_id == D.c.id))
            .where(E.c.job_id == job_id)
            .order_by(E.c.id)
            .limit(limit)
        )
        methods: dict[tuple, EvaluationMethod] = {}
        out = []
        with self._transaction(f"reading the evaluations of job {job_id}") as conn:
            for r in conn.execute(stmt):
                key = (r.ablation, r.source, r.level, bool(r.ablate_mlps), r.metric, r.normaliser, bool(r.ablate_embed))
                if key not in methods:
                    methods[key] = _method_of(r)
                out.append(
                    {
                        "circuit": r.canonical,
                        "key": r.key,
                        "size": r.size,
                        "n_edges": r.n_edges,
                        "metric": r.score,
                        "normalised": r.normalised,
                        "task": r.task,
                        "dataset": r.description,
                        "method": methods[key],
                        "created_at": _utc(r.created_at),
                    }
                )
        return out

    def patching_heatmaps(self) -> list[dict[str, Any]]:
        """Stored patching heatmaps, newest first: one per (model, dataset, kind, receiver), with ``id`` (its
        first cell's id), ``model_id``, ``dataset_id``, ``kind``, ``receiver``, ``cells``, ``model`` (the
        name), ``task`` and ``description`` (the dataset's)."""
        stmt = (
            sa.select(
                sa.func.min(P.c.id).label("id"),
                P.c.model_id,
                P.c.dataset_id,
                P.c.kind,
                P.c.receiver,
                sa.func.count().label("cells"),
                M.c.name.label("model"),
                D.c.task,
                D.c.description,
            )
            .select_from(P.join(M, P.c.model_id == M.c.id).join(D, P.c.dataset_id == D.c.id))
            .group_by(P.c.model_id, P.c.dataset_id, P.c.kind, P.c.receiver, M.c.name, D.c.task, D.c.description)
            .order_by(sa.func.min(P.c.id).desc())
        )
        with self._transaction("listing patching heatmaps") as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def patching_heatmap_of(self, cell_id: int) -> dict[str, Any] | None:
        """The heatmap stored patching cell ``cell_id`` belongs to: ``model_id``, ``dataset_id``, ``kind`` and
        ``receiver`` (None for an unknown id)."""
        with self._transaction("reading a patching cell") as conn:
            row = conn.execute(
                sa.select(P.c.model_id, P.c.dataset_id, P.c.kind, P.c.receiver).where(P.c.id == cell_id)
            ).one_or_none()
        return None if row is None else dict(row._mapping)

    # --- jobs ------------------------------------------------------------------------------------
    def create_job(
        self,
        method: str,
        params: dict[str, Any],
        task: str,
        model: str,
        *,
        tasks: Sequence[str] | None = None,
        config: dict[str, Any] | None = None,
        model_id: int | None = None,
        total: int | None = None,
    ) -> int:
        """A queued job; returns its id. ``config``: anything else the worker needs (n, seed, ablation...)."""
        row = {
            "method": method,
            "params": json_safe(params or {}),
            "config": json_safe(config or {}),
            "task": task,
            "tasks": list(tasks) if tasks else None,
            "model": model,
            "model_id": model_id,
            "status": JobStatus.QUEUED,
            "progress_done": 0,
            "progress_total": total,
            "attempts": 0,
        }
        with self._transaction("creating a job", write=True) as conn:
            return int(conn.execute(sa.insert(J).values(**row).returning(J.c.id)).scalar_one())

    def claim_job(self, job_id: int, worker_id: str, stale_after: float = DEFAULT_STALE_SECONDS) -> bool:
        """Mark the job running for ``worker_id`` if it is queued, or running with a heartbeat older than
        ``stale_after`` seconds (its worker died), or running under this same ``worker_id`` (this worker's
        own retry after a database blip: it need not wait for its own heartbeat to go stale). One
        conditional UPDATE: returns whether this worker won."""
        if not stale_after > 0:
            raise UsageError(f"stale_after must be above 0 seconds, got {stale_after}")
        stale = sa.and_(
            J.c.status == JobStatus.RUNNING.value,
            sa.or_(
                J.c.heartbeat_at.is_(None),
                J.c.heartbeat_at < db_seconds_ago(stale_after),
                J.c.worker_id == worker_id,
            ),
        )
        stmt = (
            sa.update(J)
            .where(J.c.id == job_id, sa.or_(J.c.status == JobStatus.QUEUED.value, stale))
            .values(
                status=JobStatus.RUNNING,
                worker_id=worker_id,
                heartbeat_at=db_now(),
                started_at=sa.func.coalesce(J.c.started_at, db_now()),
                attempts=J.c.attempts + 1,
            )
        )
        with self._transaction(f"claiming job {job_id}", write=True) as conn:
            won = conn.execute(stmt).rowcount == 1
            if not won:
                self._require_job(conn, job_id)
        return won

    def _require_job(self, conn: Connection, job_id: int) -> None:
        if conn.execute(sa.select(J.c.id).where(J.c.id == job_id)).one_or_none() is None:
            raise UsageError(f"no job with id {job_id}")

    def _update_running(self, job_id: int, what: str, values: dict[str, Any], worker_id: str | None) -> bool:
        conds = [J.c.id == job_id, J.c.status == JobStatus.RUNNING.value]
        if worker_id is not None:
            conds.append(J.c.worker_id == worker_id)
        with self._transaction(what, write=True) as conn:
            ok = conn.execute(sa.update(J).where(*conds).values(**values)).rowcount == 1
            if not ok:
                self._require_job(conn, job_id)
        return ok

    def heartbeat(self, job_id: int, worker_id: str | None = None) -> bool:
        """Refresh the job's heartbeat (database clock). False if it is no longer running (cancelled,
        finished, or - with ``worker_id`` - re-claimed by another worker): the worker should stop."""
        return self._update_running(job_id, f"heartbeat of job {job_id}", {"heartbeat_at": db_now()}, worker_id)

    def update_progress(
        self, job_id: int, done: int, total: int | None, message: str = "", worker_id: str | None = None
    ) -> bool:
        """Record progress (and a heartbeat); False if the job is no longer running."""
        return self._update_running(
            job_id,
            f"progress of job {job_id}",
            {
                "progress_done": int(done),
                "progress_total": total,
                "progress_message": message,
                "heartbeat_at": db_now(),
            },
            worker_id,
        )

    def set_job_model(self, job_id: int, model_id: int) -> None:
        with self._transaction(f"setting the model of job {job_id}", write=True) as conn:
            conn.execute(sa.update(J).where(J.c.id == job_id).values(model_id=model_id))

    def _finish(
        self,
        job_id: int,
        what: str,
        values: dict[str, Any],
        from_states: Sequence[JobStatus],
        circuit: Circuit | None = None,
    ) -> bool:
        with self._transaction(what, write=True) as conn:
            if circuit is not None:
                values = dict(values, result_circuit_id=self._ensure_circuits(conn, [circuit])[circuit.key])
            stmt = (
                sa.update(J)
                .where(J.c.id == job_id, J.c.status.in_([s.value for s in from_states]))
                .values(finished_at=db_now(), **values)
            )
            ok = conn.execute(stmt).rowcount == 1
            if not ok:
                self._require_job(conn, job_id)
        return ok

    def finish_job(self, job_id: int, result: JobResult) -> bool:
        """Mark the job succeeded with ``result`` (a :class:`~discovery.types.jobs.JobResult`: a search's result).
        False (and no change) if the job was already finished, e.g. cancelled meanwhile."""
        return self._finish(
            job_id,
            f"finishing job {job_id}",
            {"status": JobStatus.SUCCEEDED, "result_score": json_safe(result.summary())},
            (JobStatus.RUNNING, JobStatus.QUEUED),
            circuit=result.circuit,
        )

    def fail_job(self, job_id: int, error_type: str, message: str, traceback: str | None = None) -> bool:
        """Mark the job failed with the error's type, message and traceback; False if it was already finished."""
        return self._finish(
            job_id,
            f"failing job {job_id}",
            {
                "status": JobStatus.FAILED,
                "error_type": error_type[:200],
                "error_message": message,
                "error_traceback": traceback,
            },
            (JobStatus.RUNNING, JobStatus.QUEUED),
        )

    def cancel_job(self, job_id: int) -> bool:
        """Cancel a queued or running job (a running worker sees it at its next heartbeat); False if finished."""
        return self._finish(
            job_id, f"cancelling job {job_id}", {"status": JobStatus.CANCELLED}, (JobStatus.RUNNING, JobStatus.QUEUED)
        )

    def _job_query(self) -> sa.Select:
        return sa.select(J, C.c.canonical.label("result_canonical")).select_from(
            J.outerjoin(C, J.c.result_circuit_id == C.c.id)
        )

    @staticmethod
    def _job_record(r: Any) -> JobRecord:
        status = r.status if isinstance(r.status, JobStatus) else JobStatus(r.status)
        return JobRecord(
            r.id,
            r.method,
            dict(r.params or {}),
            dict(r.config or {}),
            r.task,
            tuple(r.tasks or ()),
            r.model,
            r.model_id,
            status,
            r.progress_done,
            r.progress_total,
            r.progress_message,
            _utc(r.created_at),
            _utc(r.started_at),
            _utc(r.finished_at),
            _utc(r.heartbeat_at),
            r.worker_id,
            r.attempts,
            r.error_type,
            r.error_message,
            r.error_traceback,
            Circuit.parse(r.result_canonical) if r.result_canonical is not None else None,
            dict(r.result_score) if r.result_score is not None else None,
        )

    def get_job(self, job_id: int) -> JobRecord:
        with self._transaction(f"reading job {job_id}") as conn:
            r = conn.execute(self._job_query().where(J.c.id == job_id)).one_or_none()
        if r is None:
            raise UsageError(f"no job with id {job_id}")
        return self._job_record(r)

    def list_jobs(
        self,
        status: JobStatus | str | None = None,
        task: str | None = None,
        method: str | None = None,
        model: str | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        """Jobs, newest first, optionally filtered."""
        stmt = self._job_query()
        if status is not None:
            stmt = stmt.where(J.c.status == JobStatus(status).value)
        if task:
            stmt = stmt.where(J.c.task == task)
        if method:
            stmt = stmt.where(J.c.method == method)
        if model:
            stmt = stmt.where(J.c.model == model)
        with self._transaction("listing jobs") as conn:
            rows = conn.execute(stmt.order_by(J.c.id.desc()).limit(limit)).all()
        return [self._job_record(r) for r in rows]

    def stale_jobs(self, stale_after: float = DEFAULT_STALE_SECONDS) -> list[JobRecord]:
        """Running jobs whose heartbeat is older than ``stale_after`` seconds (for a reaper to re-queue or fail)."""
        with self._transaction("listing stale jobs") as conn:
            rows = conn.execute(
                self._job_query().where(
                    J.c.status == JobStatus.RUNNING.value,
                    sa.or_(J.c.heartbeat_at.is_(None), J.c.heartbeat_at < db_seconds_ago(stale_after)),
                )
            ).all()
        return [self._job_record(r) for r in rows]

    def job_evaluation_count(self, job_id: int) -> int:
        """Evaluations first stored by this job (scores it found already stored are not counted again)."""
        with self._transaction(f"counting evaluations of job {job_id}") as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(E).where(E.c.job_id == job_id)).scalar_one())

    def best_circuits(self, task: str, model: str | int, limit: int = 5, threshold: float = 0.8) -> list[BestCircuit]:
        """A task's best stored circuits for a model (by name, or model id), best first.

        From succeeded search jobs: their result circuits, highest normalised score first, then smallest.
        Without such jobs: the smallest stored node-level circuits whose normalised score reaches
        ``threshold`` (then highest score first).
        """
        model_cond = (M.c.id == model) if isinstance(model, int) else (M.c.name == model)
        with self._transaction("finding the best circuits") as conn:
            job_model = (
                (J.c.model_id == model)
                if isinstance(model, int)
                else sa.or_(J.c.model == model, J.c.model_id.in_(sa.select(M.c.id).where(M.c.name == model)))
            )
            jobs = conn.execute(
                self._job_query().where(
                    J.c.status == JobStatus.SUCCEEDED.value,
                    J.c.task == task,
                    job_model,
                    J.c.result_circuit_id.is_not(None),
                )
            ).all()
            if jobs:
                records = [self._job_record(r) for r in jobs]

                def rank(j: JobRecord) -> tuple:
                    norm = (j.result_score or {}).get("normalised")
                    return (-(norm if norm is not None else -math.inf), j.result_circuit.size, -j.id)  # type: ignore[union-attr]

                out = []
                for j in sorted(records, key=rank)[:limit]:
                    s = j.result_score or {}
                    out.append(
                        BestCircuit(
                            cast(Circuit, j.result_circuit),  # the query asked for a result circuit
                            task,
                            j.model,
                            s.get("normalised"),
                            s.get("metric"),
                            j.id,
                            j.method,
                            {"params": j.params},
                        )
                    )
                return out
            rows = conn.execute(
                sa.select(C.c.canonical, C.c.size, E.c.normalised, E.c.score, E.c.job_id, M.c.name)
                .select_from(
                    E.join(C, E.c.circuit_id == C.c.id)
                    .join(M, E.c.model_id == M.c.id)
                    .join(D, E.c.dataset_id == D.c.id)
                )
                .where(D.c.task == task, model_cond, E.c.level == "node", E.c.normalised >= threshold, C.c.size > 0)
                .order_by(C.c.size, E.c.normalised.desc(), E.c.id)
                .limit(limit)
            ).all()
        return [
            BestCircuit(
                Circuit.parse(r.canonical),
                task,
                r.name,
                r.normalised,
                r.score,
                r.job_id,
                "evaluation",
                {"threshold": threshold},
            )
            for r in rows
        ]

    def best_circuits_for(
        self,
        weight_hash: str,
        method: EvaluationMethod,
        search_method: str | None = None,
        limit: int = 5,
        threshold: float = 0.8,
    ) -> list[BestCircuit]:
        """The best stored circuits for one model's weights (any name it was loaded by) under one evaluation
        method, which names the dataset (``method.source``: task, corruption, n, seed, task parameters).

        From succeeded jobs whose result was scored under exactly ``method`` (and, when given, ran
        ``search_method``): highest normalised first, then smallest. Without such jobs, and when no
        ``search_method`` is asked for: the smallest stored circuits under ``method`` whose normalised score
        reaches ``threshold``. ``extra`` holds ``dataset`` and ``evaluation`` (the method, described).
        """
        wanted = json_safe(asdict(method))
        extra = {"dataset": method.source, "evaluation": method.describe(), "weight_hash": weight_hash}
        models = sa.select(M.c.id).where(M.c.weight_hash == weight_hash)
        with self._transaction("finding the best circuits") as conn:
            stmt = self._job_query().where(
                J.c.status == JobStatus.SUCCEEDED.value, J.c.model_id.in_(models), J.c.result_circuit_id.is_not(None)
            )
            if search_method is not None:
                stmt = stmt.where(J.c.method == search_method)
            jobs = [
                j
                for j in (self._job_record(r) for r in conn.execute(stmt).all())
                if (j.result_score or {}).get("evaluation_method") == wanted and j.result_circuit is not None
            ]
            if jobs or search_method is not None:

                def rank(j: JobRecord) -> tuple:
                    norm = (j.result_score or {}).get("normalised")
                    return (-(norm if norm is not None else -math.inf), j.result_circuit.size, -j.id)  # type: ignore[union-attr]

                return [
                    BestCircuit(
                        j.result_circuit,  # type: ignore[arg-type]
                        j.task,
                        j.model,
                        (j.result_score or {}).get("normalised"),
                        (j.result_score or {}).get("metric"),
                        j.id,
                        j.method,
                        {**extra, "params": j.params},
                    )
                    for j in sorted(jobs, key=rank)[:limit]
                ]
            rows = conn.execute(
                sa.select(C.c.canonical, E.c.normalised, E.c.score, E.c.job_id, M.c.name, D.c.task)
                .select_from(
                    E.join(C, E.c.circuit_id == C.c.id)
                    .join(M, E.c.model_id == M.c.id)
                    .join(D, E.c.dataset_id == D.c.id)
                )
                .where(
                    M.c.weight_hash == weight_hash,
                    *_method_filter(method),
                    E.c.normalised >= threshold,
                    C.c.size > 0,
                )
                .order_by(C.c.size, C.c.n_edges, E.c.normalised.desc(), E.c.id)
                .limit(limit)
            ).all()
        return [
            BestCircuit(
                Circuit.parse(r.canonical),
                r.task,
                r.name,
                r.normalised,
                r.score,
                r.job_id,
                "evaluation",
                {**extra, "threshold": threshold},
            )
            for r in rows
        ]

    # --- patching ------------------------------------------------------------------------------
    def save_patching(
        self,
        result: Any,
        model_id: int | None = None,
        dataset_id: int | None = None,
        *,
        model: ModelIdentity | None = None,
        dataset: Any = None,
        kind: str = "path",
        job_id: int | None = None,
    ) -> int:
        """Store a patching heatmap, one row per cell; returns the number of new cells (NaN cells are skipped).

        Name the model and dataset by id, or pass ``model=`` (a ModelIdentity) and ``dataset=`` (a Dataset).
        ``result``: a :class:`discovery.scoring.patching.PatchingResult` (``receiver`` and ``effects`` [layers, heads]),
        any object with ``receiver`` and ``effects`` (an extra last column, when ``n_heads`` says so, is the
        layer's MLP, stored with head -1), or an iterable of :class:`PatchingCell` /
        ``(receiver, layer, head, effect)``.
        """
        if model_id is None:
            if model is None:
                raise UsageError("save_patching needs model_id or model=")
            model_id = self.get_or_create_model(model).id
        if dataset_id is None:
            if dataset is None:
                raise UsageError("save_patching needs dataset_id or dataset=")
            dataset_id = self.get_or_create_dataset(dataset).id
        cells = [c for c in patching_cells(result) if not math.isnan(c.effect)]
        rows = [
            {
                "model_id": model_id,
                "dataset_id": dataset_id,
                "kind": kind,
                "receiver": c.receiver,
                "sender_layer": int(c.sender_layer),
                "sender_head": int(c.sender_head),
                "effect": float(c.effect),
                "job_id": job_id,
            }
            for c in cells
        ]
        with self._transaction("saving patching results", write=True) as conn:
            inserted = self._insert_ignore(
                conn,
                P,
                rows,
                ["model_id", "dataset_id", "kind", "receiver", "sender_layer", "sender_head"],
                returning=P.c.id,
            )
        return len(inserted)

    def get_patching(
        self, model_id: int, dataset_id: int, kind: str | None = None, receiver: str | None = None
    ) -> list[PatchingCell]:
        stmt = sa.select(P).where(P.c.model_id == model_id, P.c.dataset_id == dataset_id)
        if kind:
            stmt = stmt.where(P.c.kind == kind)
        if receiver:
            stmt = stmt.where(P.c.receiver == receiver)
        with self._transaction("reading patching results") as conn:
            rows = conn.execute(stmt.order_by(P.c.receiver, P.c.sender_layer, P.c.sender_head)).all()
        return [PatchingCell(r.receiver, r.sender_layer, r.sender_head, float(r.effect)) for r in rows]

    # --- SQL ---------------------------------------------------------------------------------------
    def read_only_sql(
        self, statement: str, max_rows: int | None = None, timeout: float | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one reading statement; returns (column names, at most ``max_rows`` rows). Anything that could
        write is refused (:class:`~discovery.store.readonly.ReadOnlyViolation`): first with a message from
        reading the statement, then by construction (a SELECT-only role on PostgreSQL, a ``mode=ro``
        connection on SQLite; see :mod:`discovery.store.readonly`). Stopped after ``timeout`` seconds."""
        check_read_only(statement)
        return run_read_only(self.engine, statement, max_rows, timeout)


def patching_cells(result: Any) -> Iterator[PatchingCell]:
    if hasattr(result, "cells") and callable(result.cells):
        result = result.cells()
    if hasattr(result, "effects") and hasattr(result, "receiver"):
        effects = result.effects.tolist() if hasattr(result.effects, "tolist") else result.effects
        n_heads = getattr(result, "n_heads", None)
        for layer, row in enumerate(effects):
            for h, value in enumerate(row):
                mlp_column = n_heads is not None and h == n_heads
                yield PatchingCell(str(result.receiver), layer, -1 if mlp_column else h, float(value))
        return
    for item in result:
        yield (
            item
            if isinstance(item, PatchingCell)
            else PatchingCell(str(item[0]), int(item[1]), int(item[2]), float(item[3]))
        )
