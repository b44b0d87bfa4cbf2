"""Everything the dashboard reads, in one place: the store's public methods, plus the few SQL queries the
store has no method for (distinct filter values, a circuit by key, patching heatmaps, a job's evaluation
times). Should the store's interface be renamed, this is the one file of the dashboard that changes.

Each function returns plain JSON-safe values (dicts, lists, strings, numbers, None): the JSON API
returns them as they are and the pages render them. A number that has no meaning (a normalised score
when full == ablated, an ETA for an open-ended search) is None, with a ``*_note`` saying why.

Read-only mode (the default) opens the database so that the database itself refuses writes:
``PRAGMA query_only`` on every SQLite connection, ``default_transaction_read_only`` on PostgreSQL
sessions; and it never migrates or creates anything (a missing or un-migrated database is an error
naming ``circuits db upgrade``).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from discovery.store import JobRecord, Store
from discovery.store.engine import database_url, describe_url, make_engine
from discovery.store.migrate import check_schema
from discovery.store.models import CircuitRow, DatasetRow, Evaluation, Job, Model, PatchingResult, db_now
from discovery.store.repository import json_safe
from discovery.types.circuit import Circuit
from discovery.types.errors import StoreError, UsageError

C, E, M, D, J, P = (
    CircuitRow.__table__,
    Evaluation.__table__,
    Model.__table__,
    DatasetRow.__table__,
    Job.__table__,
    PatchingResult.__table__,
)
TABLES = ("models", "datasets", "jobs", "circuits", "evaluations", "patching_results")
COMPARE_METHOD = "compare"


class NotFound(UsageError):
    """A job, circuit or heatmap the URL names is not in the store (the pages answer 404)."""


# --- opening -----------------------------------------------------------------------------------
def open_dashboard_store(url: str | None = None, read_only: bool = True) -> Store:
    """The store at ``url`` (else ``CIRCUITS_DATABASE_URL``, else the embedded SQLite file).

    ``read_only``: every connection refuses writes, and nothing is created or migrated."""
    resolved = database_url(url)
    try:
        parsed = make_url(resolved)
    except sa.exc.ArgumentError as e:
        raise UsageError(f"--db {resolved!r} is not a database URL: {e}") from e
    sqlite = parsed.get_backend_name() == "sqlite"
    if read_only and sqlite:
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise UsageError(f"the dashboard needs a SQLite file, not {resolved!r}")
        if not Path(database).expanduser().is_file():  # a missing store, as for every reading command
            raise StoreError(
                f"no store at {database}: nothing to show yet (run a job first, or pass --db / CIRCUITS_DATABASE_URL)"
            )
    try:
        engine = make_engine(resolved)
    except (sa.exc.SQLAlchemyError, ImportError, ValueError) as e:
        raise StoreError(f"cannot open the store at {describe_url(resolved)}: {e}") from e
    if read_only:

        @sa.event.listens_for(engine, "connect")
        def _read_only(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if sqlite:
                cursor.execute("PRAGMA query_only = ON")
            else:
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cursor.close()
            if not sqlite:
                dbapi_connection.commit()

    check_schema(engine, create_if_empty=not read_only)
    return Store(engine)


def row_counts(store: Store) -> dict[str, int]:
    """Rows per table (the read-only tests compare these before and after)."""
    with store.engine.connect() as conn:
        return {t: int(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES}


def _db_now(store: Store) -> datetime:
    """The database's clock (job timestamps come from it, so elapsed times use it too)."""
    with store.engine.connect() as conn:
        value = _utc_time(conn.execute(sa.select(db_now())).scalar_one())
    assert value is not None
    return value


# --- jobs -----------------------------------------------------------------------------------------
def filter_values(store: Store) -> dict[str, list[str]]:
    """The models, tasks and methods that occur in the jobs table (the jobs page's filters)."""
    with store.engine.connect() as conn:
        return {
            col: [r[0] for r in conn.execute(sa.select(J.c[col]).distinct().order_by(J.c[col])) if r[0] is not None]
            for col in ("model", "task", "method")
        }


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else max(0.0, (b - a).total_seconds())


def job_summary(job: JobRecord, now: datetime) -> dict[str, Any]:
    """A job's row on the jobs page: status, progress with ETA, method, task, dataset settings, model, result."""
    end = job.finished_at or (now if job.status.value == "running" else None)
    elapsed = _seconds(job.started_at, end)
    done, total = job.progress_done, job.progress_total
    fraction = (done / total) if total else None
    eta: float | None = None
    eta_note = None
    if job.status.value == "running":
        if not total:
            eta_note = "open-ended search: no total to estimate from"
        elif done <= 0 or elapsed is None:
            eta_note = "no progress reported yet"
        else:
            eta = elapsed * (total - done) / done
            eta_note = "at the average rate so far"
    s = job.result_score or {}
    normalised = s.get("normalised")
    config = job.config or {}
    dataset = {k: config.get(k) for k in ("n", "seed", "corruption", "task_params") if k in config}
    return {
        "id": job.id,
        "status": job.status.value,
        "finished": job.is_finished(),
        "method": job.method,
        "params": job.params,
        "task": job.task,
        "tasks": list(job.tasks),
        "model": job.model,
        "dataset": dataset,
        "ablation": {k: config.get(k) for k in ("ablation", "ablation_source", "ablate_mlps") if k in config},
        "progress": {
            "done": done,
            "total": total,
            "fraction": fraction,
            "message": job.progress_message,
            "elapsed_s": elapsed,
            "eta_s": eta,
            "eta_note": eta_note,
        },
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
        "worker": job.worker_id,
        "attempts": job.attempts,
        "result": None
        if job.result_circuit is None
        else {
            "circuit": job.result_circuit.canonical,
            "key": job.result_circuit.key,
            "size": job.result_circuit.size,
            "n_edges": job.result_circuit.n_edges,
            "normalised": json_safe(normalised),
            "normalised_note": None
            if normalised is not None or job.method == COMPARE_METHOD
            else "undefined: the full and ablated metrics are equal",
            "metric": json_safe(s.get("metric")),
            "full": json_safe(s.get("full")),
            "ablated": json_safe(s.get("ablated")),
            "evaluation_method": s.get("evaluation_method"),
            "method_description": _describe_method(s.get("evaluation_method")),
            "n_evaluations": s.get("n_evaluations"),
            "seconds": s.get("seconds"),
        },
        "error": None
        if not job.error_type
        else {"type": job.error_type, "message": job.error_message, "traceback": job.error_traceback},
    }


def _describe_method(method: dict[str, Any] | None) -> str | None:
    if not method:
        return None
    from discovery.types.evaluation import EvaluationMethod

    try:
        return EvaluationMethod(**method).describe()
    except TypeError:
        return None


def list_jobs(
    store: Store,
    model: str | None = None,
    task: str | None = None,
    method: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    from discovery.store import JobStatus

    if status is not None and status not in {s.value for s in JobStatus}:
        raise UsageError(f"status {status!r}: choose one of {', '.join(s.value for s in JobStatus)}")
    now = _db_now(store)
    jobs = store.list_jobs(status=status, task=task, method=method, model=model, limit=limit)
    return {
        "now": now.isoformat(),
        "filters": {"model": model, "task": task, "method": method, "status": status},
        "options": filter_values(store),
        "jobs": [job_summary(j, now) for j in jobs],
    }


def get_job(store: Store, job_id: int) -> JobRecord:
    try:
        return store.get_job(job_id)
    except UsageError as e:
        raise NotFound(f"no job with id {job_id}") from e


def _model_shape(store: Store, model_id: int | None) -> tuple[int | None, int | None]:
    if model_id is None:
        return None, None
    try:
        m = store.get_model(model_id)
    except UsageError:
        return None, None
    return m.n_layers, m.n_heads


def job_detail(store: Store, job_id: int, max_evaluations: int = 5000) -> dict[str, Any]:
    """The job page's data: configuration, progress (and its history), result, every circuit it
    evaluated, and its sweep's comparison."""
    job = get_job(store, job_id)
    summary = job_summary(job, _db_now(store))
    evaluations = job_evaluations(store, job_id, max_evaluations)
    # progress over time: when each evaluation this job stored was written (one point per batch)
    history: list[dict[str, Any]] = []
    if job.started_at is not None:
        for i, e in enumerate(evaluations):
            if i == len(evaluations) - 1 or evaluations[i + 1]["created_at"] != e["created_at"]:
                history.append({"t_s": _seconds(job.started_at, e["_created"]), "evaluations": i + 1})
    for e in evaluations:
        del e["_created"]
    n_layers, n_heads = _model_shape(store, job.model_id)
    result = job.result_score or {}
    extra = result.get("extra") or {}
    edge_scores = {name: score for name, score in extra.get("edge_scores", [])} if "edge_scores" in extra else {}
    result_edges = {e.name for e in job.result_circuit.edges} if job.result_circuit is not None else set()
    return {
        "job": summary,
        "config": job.config,
        "model_shape": {"n_layers": n_layers, "n_heads": n_heads},
        "evaluations": evaluations,
        "evaluations_truncated": len(evaluations) >= max_evaluations,
        "evaluations_note": "circuits this job stored first; scores it was served from the store are not repeated",
        "unscored": sum(1 for e in evaluations if e["normalised"] is None),
        "history": history,
        "edge_scores": {k: v for k, v in edge_scores.items() if k in result_edges},
        "sweep": sweep_of(store, job),
    }


def job_evaluations(store: Store, job_id: int, limit: int) -> list[dict[str, Any]]:
    """The evaluations a job stored, oldest first, read straight from the tables: the circuits' stored
    canonical spelling, key and size are used as they are (parsing thousands of circuits back into
    values would cost seconds for nothing), and each method is described once."""
    from discovery.types.evaluation import EvaluationMethod

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
        )
        .select_from(E.join(C, E.c.circuit_id == C.c.id).join(D, E.c.dataset_id == D.c.id))
        .where(E.c.job_id == job_id)
        .order_by(E.c.id)
        .limit(limit)
    )
    described: dict[tuple, str] = {}
    out = []
    with store.engine.connect() as conn:
        for r in conn.execute(stmt):
            key = (r.ablation, r.source, r.level, bool(r.ablate_mlps), r.metric, r.normaliser, bool(r.ablate_embed))
            if key not in described:
                described[key] = EvaluationMethod(*key).describe()
            created = _utc_time(r.created_at)
            out.append(
                {
                    "circuit": r.canonical,
                    "key": r.key,
                    "size": r.size,
                    "n_edges": r.n_edges,
                    "metric": json_safe(r.score),
                    "normalised": json_safe(r.normalised),
                    "task": r.task,
                    "dataset": r.description,
                    "method": described[key],
                    "created_at": created.isoformat() if created else None,
                    "_created": created,
                }
            )
    return out


def _utc_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def sweep_of(store: Store, job: JobRecord) -> dict[str, Any] | None:
    """The sweep comparison this job is (a ``compare`` job) or belongs to, with its matrices."""
    compare_job = job if job.method == COMPARE_METHOD else None
    if compare_job is None:
        for candidate in store.list_jobs(method=COMPARE_METHOD, limit=1000):
            if job.id in (candidate.params or {}).get("jobs", []):
                compare_job = candidate
                break
    if compare_job is None:
        return None
    comparison = ((compare_job.result_score or {}).get("extra") or {}).get("comparison")
    return {
        "compare_job": compare_job.id,
        "status": compare_job.status.value,
        "jobs": list((compare_job.params or {}).get("jobs", [])),
        "comparison": comparison,
    }


# --- circuits --------------------------------------------------------------------------------------
def find_circuit(store: Store, key: str) -> Circuit:
    """A stored circuit by its sha256 key (or a prefix of at least 8 hex digits)."""
    key = key.strip().lower()
    if not (8 <= len(key) <= 64) or any(ch not in "0123456789abcdef" for ch in key):
        raise UsageError(f"circuit key {key!r}: write the circuit's sha256 key (8 to 64 hex digits)")
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(C.c.canonical).where(C.c.key.like(key + "%")).limit(2)).all()
    if not rows:
        raise NotFound(f"no stored circuit with key {key}")
    if len(rows) > 1:
        raise UsageError(f"circuit key prefix {key} is ambiguous: give more digits")
    return Circuit.parse(rows[0][0])


def circuit_detail(store: Store, circuit: Circuit) -> dict[str, Any]:
    """A circuit's every stored score, across models, datasets and methods, each with its method."""
    records = store.scores_for_circuit(circuit)
    shape: tuple[int | None, int | None] = (None, None)
    if records:
        shape = _model_shape(store, records[0].model_id)
    return {
        "circuit": circuit.canonical,
        "key": circuit.key,
        "size": circuit.size,
        "n_edges": circuit.n_edges,
        "level": circuit.level,
        "model_shape": {"n_layers": shape[0], "n_heads": shape[1]},
        "scores": [
            {
                "model": r.model,
                "task": r.task,
                "dataset": r.dataset,
                "metric": json_safe(r.score.metric),
                "normalised": json_safe(r.score.normalised),
                "full": json_safe(r.score.full),
                "ablated": json_safe(r.score.ablated),
                "ablation": r.method.ablation,
                "level": r.method.level,
                "ablate_mlps": r.method.ablate_mlps,
                "metric_name": r.method.metric,
                "method": r.method.describe(),
                "job": r.job_id,
                "created_at": r.created_at.isoformat() if r.created_at else None,
            }
            for r in records
        ],
    }


def resolve_circuit(store: Store, text: str) -> tuple[Circuit, str]:
    """A job id (its result), a stored circuit key (``key:HEX`` or 64 hex digits) or a circuit spelling."""
    text = text.strip()
    if not text:
        raise UsageError("empty circuit: give a job id, a circuit key or components such as 0.1,1.2")
    if text.isdigit():
        job = get_job(store, int(text))
        if job.result_circuit is None:
            raise UsageError(f"job {job.id} ({job.status.value}) has no result circuit")
        return job.result_circuit, f"job {job.id} ({job.method}, {job.task})"
    if text.startswith("key:") or (len(text) == 64 and all(ch in "0123456789abcdef" for ch in text)):
        return find_circuit(store, text.removeprefix("key:")), "stored circuit"
    return Circuit.parse(text), "circuit"


def compare_circuits(store: Store, a: str, b: str) -> dict[str, Any]:
    from discovery.analysis.compare import compare

    ca, label_a = resolve_circuit(store, a)
    cb, label_b = resolve_circuit(store, b)
    result = compare(ca, cb).as_dict()
    return dict(
        result,
        label_a=label_a,
        label_b=label_b,
        key_a=ca.key,
        key_b=cb.key,
        shared_heads=[n for n in result["shared_nodes"] if not n.startswith("m")],
    )


# --- overlap across tasks ---------------------------------------------------------------------------
def overlap(store: Store, model: str, tasks: list[str], threshold: float = 0.8) -> dict[str, Any]:
    """Each task's best stored circuit for ``model``, their Jaccard matrix and shared heads, and the
    cross-score matrices: circuit i's stored normalised score on task j's data, one matrix per
    evaluation setting (ablation, level, MLPs, metric) and dataset of each task. Nothing is computed:
    a cross-score that was never evaluated is None (``circuits cross-score`` or a sweep stores them)."""
    from discovery.analysis.compare import compare, overlap_matrix

    best: dict[str, Any] = {}
    missing: list[str] = []
    for t in tasks:
        found = store.best_circuits(t, model, limit=1, threshold=threshold)
        if found:
            best[t] = found[0]
        else:
            missing.append(t)
    labels = list(best)
    circuits = [best[t].circuit for t in labels]
    _, jac = overlap_matrix(circuits, on="nodes") if circuits else ([], None)
    shared = [[[n for n in compare(a, b).shared_nodes if not n.startswith("m")] for b in circuits] for a in circuits]
    # cross-scores, from stored evaluations only
    groups: dict[tuple, dict[str, Any]] = {}
    for i in range(len(labels)):
        for r in store.scores_for_circuit(circuits[i]):
            if r.model != model or r.task not in best:
                continue
            m = r.method
            setting = (m.ablation, m.level, bool(m.ablate_mlps), m.metric, m.source.rsplit(":", 1)[-1])
            g = groups.setdefault(
                setting,
                {
                    "setting": {
                        "ablation": m.ablation,
                        "level": m.level,
                        "ablate_mlps": bool(m.ablate_mlps),
                        "metric": m.metric,
                        "means_from": m.source.rsplit(":", 1)[-1],
                    },
                    "datasets": {},
                    "cells": {},
                },
            )
            j = labels.index(r.task)
            g["datasets"].setdefault(r.task, set()).add(r.dataset)
            cell = g["cells"].setdefault((i, j), [])
            cell.append({"normalised": json_safe(r.score.normalised), "dataset": r.dataset, "method": m.describe()})
    cross = []
    for g in groups.values():
        n = len(labels)
        matrix: list[list[Any]] = [[None] * n for _ in range(n)]
        for (i, j), values in g["cells"].items():
            matrix[i][j] = values
        cross.append(
            {
                "setting": g["setting"],
                "datasets": {t: sorted(ds) for t, ds in g["datasets"].items()},
                "matrix": matrix,
            }
        )
    return {
        "model": model,
        "tasks": labels,
        "missing": missing,
        "threshold": threshold,
        "best": [
            {
                "task": t,
                "circuit": best[t].circuit.canonical,
                "key": best[t].circuit.key,
                "size": best[t].circuit.size,
                "normalised": json_safe(best[t].normalised),
                "job": best[t].job_id,
                "method": best[t].method,
            }
            for t in labels
        ],
        "jaccard": None if jac is None else [[float(x) for x in row] for row in jac],
        "shared_heads": shared,
        "common_heads": _common_heads(circuits),
        "cross_scores": cross,
    }


def _common_heads(circuits: list[Circuit]) -> list[str]:
    if not circuits:
        return []
    common = frozenset.intersection(*(frozenset(n for n in c.nodes if n.kind == "head") for c in circuits))
    return [n.name for n in sorted(common, key=lambda n: n.sort_key)]


# --- patching ----------------------------------------------------------------------------------------
def list_heatmaps(store: Store) -> list[dict[str, Any]]:
    """Stored patching heatmaps: one per (model, dataset, kind, receiver); the id is its first cell's id."""
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
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def heatmap(store: Store, heatmap_id: int) -> dict[str, Any]:
    """The heatmap that patching-results row ``heatmap_id`` belongs to: every cell, the model's shape and
    the strongest senders."""
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(P.c.model_id, P.c.dataset_id, P.c.kind, P.c.receiver).where(P.c.id == heatmap_id)
        ).one_or_none()
    if row is None:
        raise NotFound(f"no stored patching result with id {heatmap_id}")
    cells = store.get_patching(row.model_id, row.dataset_id, kind=row.kind, receiver=row.receiver)
    model = store.get_model(row.model_id)
    dataset = store.get_dataset(row.dataset_id)
    finite = [c for c in cells if not math.isnan(c.effect)]
    top = sorted(finite, key=lambda c: -abs(c.effect))[:10]

    def name(layer: int, head: int) -> str:
        return f"m{layer}" if head == -1 else f"{layer}.{head}"

    return {
        "id": heatmap_id,
        "kind": row.kind,
        "receiver": row.receiver,
        "model": model.name,
        "n_layers": model.n_layers,
        "n_heads": model.n_heads,
        "task": dataset.task,
        "dataset": dataset.description,
        "metric": dataset.metric,
        "cells": [
            {
                "sender": name(c.sender_layer, c.sender_head),
                "layer": c.sender_layer,
                "head": c.sender_head,
                "effect": c.effect,
            }
            for c in cells
        ],
        "top": [{"sender": name(c.sender_layer, c.sender_head), "effect": c.effect} for c in top],
    }
