"""The store's commands: ``db upgrade|current``, ``runs``, ``show``, ``sql``, ``compare``, ``overlap``, ``cross-score``.

Every command reads the store at ``CIRCUITS_DATABASE_URL`` (else the embedded SQLite file); ``--db URL``
overrides it for one command.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import typer
from rich.table import Table

from discovery.circuit import Circuit
from discovery.cli import common
from discovery.cli.common import console, err_console
from discovery.errors import UsageError

DbOpt = common.DbOpt


def _store(url: str | None, must_exist: bool = False) -> Any:
    from discovery.store import open_store

    return open_store(url, must_exist=must_exist)


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _when(dt: Any) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


# --- db --------------------------------------------------------------------------------------
db_app = typer.Typer(no_args_is_help=True, help="The store's schema: upgrade it, show its revision.")


@db_app.command("upgrade")
def db_upgrade(db: str | None = DbOpt, revision: str = typer.Option("head", help="target revision")) -> None:
    """Create or migrate the store's tables to the newest schema (safe to run again); on PostgreSQL also
    create the SELECT-only role ``circuits sql`` connects as (CIRCUITS_SQL_ROLE, default circuits_reader)."""
    from discovery.store import migrate
    from discovery.store.engine import database_url, describe_url, make_engine
    from discovery.store.readonly import ensure_reader_role

    url = database_url(db)
    engine = make_engine(url)
    try:
        before = migrate.current_revisions(engine)
        after = migrate.upgrade(engine, revision)
        reader = ensure_reader_role(engine)
    finally:
        engine.dispose()
    where = describe_url(url)
    if tuple(before) == tuple(after):
        console.print(f"{where}: already at {', '.join(after) or '(empty)'}")
    else:
        console.print(f"{where}: {', '.join(before) or '(empty)'} -> {', '.join(after)}")
    console.print(reader)


@db_app.command("current")
def db_current(db: str | None = DbOpt) -> None:
    """Print the store's URL, its schema revision and the newest revision this version knows."""
    from discovery.store import migrate
    from discovery.store.engine import database_url, describe_url, make_engine

    url = database_url(db)
    engine = make_engine(url)
    try:
        current = migrate.current_revisions(engine)
    finally:
        engine.dispose()
    heads = migrate.head_revisions()
    state = (
        "up to date"
        if set(current) == set(heads)
        else ("empty: run `circuits db upgrade`" if not current else "outdated: run `circuits db upgrade`")
    )
    console.print(f"database  {describe_url(url)}")
    console.print(f"revision  {', '.join(current) or '(none)'}")
    console.print(f"head      {', '.join(heads)} ({state})")


# --- runs and show -------------------------------------------------------------------------------
def runs(
    db: str | None = DbOpt,
    limit: int = typer.Option(20, help="jobs to list (newest first)"),
    status: str | None = typer.Option(None, help="only jobs in this state (queued, running, succeeded...)"),
    task: str | None = typer.Option(None, help="only jobs of this task"),
) -> None:
    """Jobs (newest first) and a summary of the stored evaluations per model, task and method."""
    store = _store(db, must_exist=True)
    jobs = store.list_jobs(status=status, task=task, limit=limit)
    table = Table(
        "job",
        "status",
        "method",
        "task",
        "model",
        "progress",
        "result",
        "normalised",
        "created",
        title=f"jobs in {store.url}",
    )
    for j in jobs:
        progress = f"{j.progress_done}/{j.progress_total if j.progress_total is not None else '?'}"
        table.add_row(
            str(j.id),
            j.status.value,
            j.method,
            ",".join(j.tasks) or j.task,
            j.model,
            progress,
            str(j.result_circuit) if j.result_circuit is not None else "-",
            _fmt((j.result_score or {}).get("normalised")),
            _when(j.created_at),
        )
    console.print(table)
    summary = Table(
        "model",
        "task",
        "ablation",
        "level",
        "MLPs",
        "metric",
        "evaluations",
        "circuits",
        "last",
        title="stored evaluations",
    )
    for r in store.evaluation_summary():
        summary.add_row(
            r["model"],
            r["task"],
            r["ablation"],
            r["level"],
            "ablated" if r["ablate_mlps"] else "kept",
            r["metric"],
            str(r["n"]),
            str(r["circuits"]),
            _when(r["last"]),
        )
    console.print(summary)


def _is_job_id(text: str) -> bool:
    return text.strip().isdigit()


def _circuit_of(store: Any, text: str) -> tuple[Circuit, str]:
    """A circuit string, or a stored job id (its result circuit); returns the circuit and a label."""
    if _is_job_id(text):
        job = store.get_job(int(text))
        if job.result_circuit is None:
            raise UsageError(f"job {job.id} ({job.status.value}) has no result circuit")
        return job.result_circuit, f"job {job.id} ({job.method}, {job.task})"
    return Circuit.parse(text), "circuit"


def show(
    target: str = typer.Argument(..., help="a circuit (e.g. 0.1,4.4) or a job id"), db: str | None = DbOpt
) -> None:
    """A circuit's stored scores across models, tasks and methods, or a job's details."""
    store = _store(db, must_exist=True)
    if _is_job_id(target):
        job = store.get_job(int(target))
        rows = [
            ("job", str(job.id)),
            ("status", job.status.value),
            ("method", job.method),
            ("params", json.dumps(job.params)),
            ("task", ", ".join(job.tasks) or job.task),
            ("model", job.model),
            ("config", json.dumps(job.config)),
            (
                "progress",
                f"{job.progress_done}/{job.progress_total if job.progress_total is not None else '?'}"
                f" {job.progress_message or ''}",
            ),
            ("created", _when(job.created_at)),
            ("started", _when(job.started_at)),
            ("finished", _when(job.finished_at)),
            ("heartbeat", _when(job.heartbeat_at)),
            ("worker", job.worker_id or "-"),
            ("attempts", str(job.attempts)),
            ("evaluations stored", str(store.job_evaluation_count(job.id))),
        ]
        if job.result_circuit is not None:
            s = job.result_score or {}
            rows += [
                ("result", str(job.result_circuit)),
                ("size", str(job.result_circuit.size)),
                ("score", _fmt(s.get("metric"))),
                ("normalised", _fmt(s.get("normalised"))),
                ("full / ablated", f"{_fmt(s.get('full'))} / {_fmt(s.get('ablated'))}"),
            ]
        if job.error_type:
            rows += [("error", f"{job.error_type}: {job.error_message}")]
        for k, v in rows:
            console.print(f"{k:<20}{v}")
        if job.error_traceback:
            console.print(job.error_traceback)
        return
    circuit = Circuit.parse(target)
    records = store.scores_for_circuit(circuit)
    console.print(f"circuit  {circuit} (size {circuit.size}, key {circuit.key[:12]})")
    if not records:
        console.print("no stored scores")
        return
    table = Table(
        "model", "task", "dataset", "ablation", "level", "MLPs", "metric", "score", "normalised", "full", "job"
    )
    for r in records:
        m = r.method
        table.add_row(
            r.model,
            r.task,
            r.dataset,
            m.ablation,
            m.level,
            "ablated" if m.ablate_mlps else "kept",
            m.metric,
            _fmt(r.score.metric),
            _fmt(r.score.normalised),
            _fmt(r.score.full),
            str(r.job_id) if r.job_id is not None else "-",
        )
    console.print(table)


# --- sql ------------------------------------------------------------------------------------------
def sql(
    statement: str = typer.Argument(..., help='one read-only statement, e.g. "SELECT * FROM jobs"'),
    db: str | None = DbOpt,
    format: str = typer.Option("table", "--format", "-f", help="table, csv or json"),
    max_rows: int = typer.Option(1000, "--max-rows", help="print at most this many rows (fetched no further)"),
    timeout: float | None = typer.Option(
        None, "--timeout", help="stop the statement after this many seconds (default CIRCUITS_SQL_TIMEOUT, 30)"
    ),
) -> None:
    """Run one read-only SQL statement on the store (anything that could write is refused).

    Tables: models, datasets, jobs, circuits, evaluations, patching_results.
    """
    if format not in ("table", "csv", "json"):
        raise UsageError(f"--format {format!r}: choose table, csv or json")
    if max_rows < 1:
        raise UsageError(f"--max-rows {max_rows}: at least 1")
    if timeout is not None and not timeout > 0:
        raise UsageError(f"--timeout {timeout}: a number of seconds above 0")
    store = _store(db, must_exist=True)
    columns, rows = store.read_only_sql(statement, max_rows=max_rows + 1, timeout=timeout)
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    if truncated:
        err_console.print(f"(only the first {max_rows} rows: --max-rows N shows more)")
    if format == "json":
        from discovery.store.repository import json_safe

        console.print(json.dumps([dict(zip(columns, json_safe(list(r)))) for r in rows], default=str))
    elif format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows(rows)
        console.print(buf.getvalue(), end="")
    else:
        table = Table(*columns)
        for r in rows:
            table.add_row(*(_fmt(v, 6) for v in r))
        console.print(table)
        console.print(f"({len(rows)} rows)")


# --- comparisons ----------------------------------------------------------------------------------
def compare(
    a: str = typer.Argument(..., help="circuit A (e.g. 0.1,4.4) or a stored job id"),
    b: str = typer.Argument(..., help="circuit B or a stored job id"),
    db: str | None = DbOpt,
    png: str | None = typer.Option(None, "--png", help="write a diagram coloured by membership here"),
) -> None:
    """Shared and distinct components and edges of two circuits, and their Jaccard similarity."""
    from discovery.compare import compare as compare_circuits

    store = _store(db, must_exist=True) if _is_job_id(a) or _is_job_id(b) else None
    ca, label_a = _circuit_of(store, a) if store else (Circuit.parse(a), "circuit")
    cb, label_b = _circuit_of(store, b) if store else (Circuit.parse(b), "circuit")
    result = compare_circuits(ca, cb)
    console.print(f"A  {ca}  [{label_a}, size {ca.size}]")
    console.print(f"B  {cb}  [{label_b}, size {cb.size}]")
    table = Table("", "shared", "only A", "only B", "Jaccard")
    table.add_row(
        "components",
        ", ".join(result.shared_nodes) or "-",
        ", ".join(result.only_a_nodes) or "-",
        ", ".join(result.only_b_nodes) or "-",
        f"{result.node_jaccard:.3f}",
    )
    if result.edge_jaccard is not None:
        table.add_row(
            "edges",
            ", ".join(result.shared_edges) or "-",
            ", ".join(result.only_a_edges) or "-",
            ", ".join(result.only_b_edges) or "-",
            f"{result.edge_jaccard:.3f}",
        )
    console.print(table)
    if png:
        from discovery.compare_plots import draw_comparison

        console.print(f"diagram  {draw_comparison(ca, cb, png, title=f'A: {label_a}  vs  B: {label_b}')}")


def _best(store: Any, task: str, model: str, threshold: float) -> Any:
    best = store.best_circuits(task, model, limit=1, threshold=threshold)
    if not best:
        raise UsageError(
            f"no stored circuit for task {task!r} and model {model!r}: run a search for it first "
            f"(or lower --threshold, now {threshold})"
        )
    return best[0]


def overlap(
    task: list[str] = typer.Option(..., "--task", "-t", help="a task (repeat: at least two)"),
    model: str = common.ModelOpt,
    db: str | None = DbOpt,
    on: str = typer.Option("nodes", help="compare components (nodes) or edges"),
    threshold: float = typer.Option(
        0.8, help="without search jobs: the smallest stored circuit reaching this normalised score is a task's best"
    ),
    png: str | None = typer.Option(None, "--png", help="write the matrix as a heatmap here"),
) -> None:
    """A Jaccard matrix over the best stored circuit of each task for the model."""
    from discovery.compare import overlap_matrix

    if len(task) < 2:
        raise UsageError("overlap needs at least two --task options")
    store = _store(db, must_exist=True)
    best = {t: _best(store, t, model, threshold) for t in task}
    for t, b in best.items():
        origin = (
            f"job {b.job_id} ({b.method})"
            if b.method != "evaluation"
            else f"smallest stored with normalised >= {threshold}"
        )
        console.print(f"{t:<16}{b.circuit}  [size {b.circuit.size}, normalised {_fmt(b.normalised, 3)}; {origin}]")
    labels, matrix = overlap_matrix({t: b.circuit for t, b in best.items()}, on=on)
    table = Table("", *labels, title=f"Jaccard ({on}) for {model}")
    for i, label in enumerate(labels):
        table.add_row(label, *(f"{matrix[i, j]:.3f}" for j in range(len(labels))))
    console.print(table)
    if png:
        from discovery.compare_plots import draw_overlap_matrix

        console.print(f"heatmap  {draw_overlap_matrix(labels, matrix, png, title=f'Jaccard ({on}), {model}')}")


def cross_score(
    circuit_from_task: str = typer.Option(
        ..., "--circuit-from-task", "--from-task", help="take this task's best stored circuit for the model"
    ),
    task: list[str] = typer.Option(..., "--task", "-t", help="score it on this task's data (repeatable)"),
    model: str = common.ModelOpt,
    n: int = common.NOpt,
    seed: int = common.SeedOpt,
    ablation: str = common.AblationOpt,
    mean_source: str = common.SourceOpt,
    ablate_mlps: bool = common.MlpsOpt,
    device: str = common.DeviceOpt,
    db: str | None = DbOpt,
    threshold: float = typer.Option(
        0.8,
        help="without search jobs: the smallest stored circuit reaching this "
        "normalised score is the source task's best",
    ),
    circuit: str | None = typer.Option(
        None, "--circuit", "-c", help="score this circuit (or job id) instead of the source task's best"
    ),
) -> None:
    """Evaluate the circuit found for one task on other tasks' data (stored like any evaluation).

    Prints each score as a share of the other task's full-model score (score / full) and normalised.
    """
    from discovery.evaluator import Ablation, Evaluator
    from discovery.store import StoredEvaluator

    store = _store(db)
    if circuit is not None:
        source_circuit, label = _circuit_of(store, circuit)
    else:
        best = _best(store, circuit_from_task, model, threshold)
        source_circuit = best.circuit
        label = (
            f"best stored for {circuit_from_task}: job {best.job_id} ({best.method})"
            if best.job_id and best.method != "evaluation"
            else f"smallest stored for {circuit_from_task} with normalised >= {threshold}"
        )
    loaded = common.open_model(model, device)
    source_circuit.validate(loaded.shape)
    console.print(f"circuit  {source_circuit}  [{label}, size {source_circuit.size}]")
    table = Table("task", "dataset", "score", "full", "ablated", "share of full", "normalised", "stored")
    for t in task:
        dataset = common.open_dataset(loaded, t, n, seed, None)
        evaluator = StoredEvaluator(
            Evaluator(
                loaded,
                dataset,
                Ablation(
                    kind=ablation,  # type: ignore[arg-type]
                    source=mean_source,  # type: ignore[arg-type]
                    ablate_mlps=ablate_mlps,
                ),
            ),
            store,
        )
        with common.progress_bar(f"scoring on {t}") as progress:
            score = evaluator.evaluate([source_circuit], progress=progress)[0]
        share = score.metric / score.full if score.full != 0 else float("nan")
        table.add_row(
            t,
            dataset.description,
            _fmt(score.metric),
            _fmt(score.full),
            _fmt(score.ablated),
            _fmt(share, 3),
            _fmt(score.normalised, 3),
            "cached" if evaluator.cache_hits else "new",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.add_typer(db_app, name="db")
    app.command()(runs)
    app.command()(show)
    app.command()(sql)
    app.command()(compare)
    app.command()(overlap)
    app.command("cross-score")(cross_score)
