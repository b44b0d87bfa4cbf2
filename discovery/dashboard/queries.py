"""Everything the dashboard reads, in one place, through the store's typed methods (no SQL here): the
dashboard's own reads (distinct filter values, a circuit by key, patching heatmaps, a job's evaluations)
are :class:`~discovery.store.Store` methods. Should the store's interface be renamed, this is the one file
of the dashboard that changes.

The store is the SQL one (:class:`~discovery.store.Store`), not any :class:`~discovery.store.Storage`: the
dashboard is a separate process over a database, read-only by the database's own refusal, and it reads
heatmaps and per-job evaluation rows that only the SQL store keeps.

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
from datetime import datetime
from typing import Any

from discovery.store import JobRecord, Store, open_sql_store
from discovery.store.repository import json_safe
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError

COMPARE_METHOD = "compare"


class NotFound(UsageError):
    """A job, circuit or heatmap the URL names is not in the store (the pages answer 404)."""


# --- opening -----------------------------------------------------------------------------------
def open_dashboard_store(url: str | None = None, read_only: bool = True) -> Store:
    """The store at ``url`` (else ``CIRCUITS_DATABASE_URL``, else the embedded SQLite file).

    ``read_only``: every connection refuses writes, and nothing is created or migrated."""
    return open_sql_store(url, read_only=read_only)


def row_counts(store: Store) -> dict[str, int]:
    """Rows per table (the read-only tests compare these before and after)."""
    return store.row_counts()


# --- jobs -----------------------------------------------------------------------------------------
def filter_values(store: Store) -> dict[str, list[str]]:
    """The models, tasks and methods that occur in the jobs table (the jobs page's filters)."""
    return store.job_filter_values()


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
    now = store.database_now()
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
    summary = job_summary(job, store.database_now())
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
    """The evaluations a job stored, oldest first: the circuits' stored canonical spelling, key and size as
    they are (see :meth:`Store.job_evaluation_rows`), and each method described once."""
    described: dict[Any, str] = {}
    out = []
    for r in store.job_evaluation_rows(job_id, limit):
        method = r["method"]
        if method not in described:
            described[method] = method.describe()
        created = r["created_at"]
        out.append(
            {
                "circuit": r["circuit"],
                "key": r["key"],
                "size": r["size"],
                "n_edges": r["n_edges"],
                "metric": json_safe(r["metric"]),
                "normalised": json_safe(r["normalised"]),
                "task": r["task"],
                "dataset": r["dataset"],
                "method": described[method],
                "created_at": created.isoformat() if created else None,
                "_created": created,
            }
        )
    return out


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
    found = store.circuits_by_key_prefix(key, limit=2)
    if not found:
        raise NotFound(f"no stored circuit with key {key}")
    if len(found) > 1:
        raise UsageError(f"circuit key prefix {key} is ambiguous: give more digits")
    return found[0]


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
    return store.patching_heatmaps()


def heatmap(store: Store, heatmap_id: int) -> dict[str, Any]:
    """The heatmap that patching-results row ``heatmap_id`` belongs to: every cell, the model's shape and
    the strongest senders."""
    row = store.patching_heatmap_of(heatmap_id)
    if row is None:
        raise NotFound(f"no stored patching result with id {heatmap_id}")
    cells = store.get_patching(row["model_id"], row["dataset_id"], kind=row["kind"], receiver=row["receiver"])
    model = store.get_model(row["model_id"])
    dataset = store.get_dataset(row["dataset_id"])
    finite = [c for c in cells if not math.isnan(c.effect)]
    top = sorted(finite, key=lambda c: -abs(c.effect))[:10]

    def name(layer: int, head: int) -> str:
        return f"m{layer}" if head == -1 else f"{layer}.{head}"

    return {
        "id": heatmap_id,
        "kind": row["kind"],
        "receiver": row["receiver"],
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
