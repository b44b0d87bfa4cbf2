"""The store's commands: ``db upgrade|current``, ``runs``, ``show``, ``sql``, ``compare``, ``overlap``, ``cross-score``.

Every command reads the store at ``CIRCUITS_DATABASE_URL`` (else the embedded SQLite file); ``--db URL``
overrides it for one command.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import TYPE_CHECKING, Any, Literal

import typer
from rich.table import Table

from discovery.cli import common, output
from discovery.cli.common import console, err_console
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.evaluation import Ablation

if TYPE_CHECKING:
    from discovery.store.base import Storage

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
    fmt: str = output.FormatOpt,
) -> None:
    """Jobs (newest first) and a summary of the stored evaluations per model, task and method.

    ``--format csv`` writes the jobs; ``--format json`` an object with ``jobs`` and ``stored_evaluations``.
    """
    output.check_format(fmt)
    store = _store(db, must_exist=True)
    jobs = store.list_jobs(status=status, task=task, limit=limit)
    if fmt != "table":
        job_rows = [output.job_row(j) for j in jobs]
        if fmt == "csv":
            output.emit(job_rows, output.JOB_COLUMNS, fmt)
        else:
            summary_rows = store.evaluation_summary()
            console.print(
                json.dumps(
                    {
                        "jobs": json.loads(str(output.render(job_rows, output.JOB_COLUMNS, "json"))),
                        "stored_evaluations": json.loads(
                            str(output.render(summary_rows, list(summary_rows[0]) if summary_rows else [], "json"))
                        ),
                    }
                ),
                soft_wrap=True,
                emoji=False,
            )
        return
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


def show(
    target: str = typer.Argument(..., help="a circuit (e.g. 0.1,4.4) or a job id"),
    db: str | None = DbOpt,
    fmt: str = output.FormatOpt,
) -> None:
    """A circuit's stored scores across models, tasks and methods, or a job's details."""
    output.check_format(fmt)
    store = _store(db, must_exist=True)
    if _is_job_id(target):
        job = store.get_job(int(target))
        if fmt != "table":
            row = dict(output.job_row(job), evaluations_stored=store.job_evaluation_count(job.id))
            row["result_score"] = job.result_score
            output.emit([row], list(row), fmt)
            return
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
    if fmt != "table":
        score_rows = [
            {
                "circuit": circuit.canonical,
                "model": r.model,
                "task": r.task,
                "dataset": r.dataset,
                "ablation": r.method.ablation,
                "source": r.method.source,
                "level": r.method.level,
                "ablate_mlps": r.method.ablate_mlps,
                "metric_name": r.method.metric,
                "normaliser": r.method.normaliser,
                "score": r.score.metric,
                "normalised": r.score.normalised,
                "full": r.score.full,
                "ablated": r.score.ablated,
                "job": r.job_id,
                "created": r.created_at,
            }
            for r in records
        ]
        output.emit(score_rows, list(score_rows[0]) if score_rows else ["circuit"], fmt)
        return
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
SearchMethodOpt = typer.Option(
    None, "--method", help="only circuits found by this search method (default: any method, else stored scores)"
)
LevelOpt = typer.Option(None, "--level", help="node or edge circuits (default: edge with --on edges, else node)")


def _job_origin(store: Storage, job: Any) -> str:
    """A job's search method, dataset and evaluation method, as the comparisons print them."""
    method = (job.result_score or {}).get("evaluation_method") or {}
    source = method.get("source") or "dataset not recorded"
    how = (
        f"{method.get('ablation')} ablation, {method.get('level')} level, "
        f"{'MLPs ablated' if method.get('ablate_mlps') else 'MLPs kept'}, metric {method.get('metric')}"
        if method
        else "evaluation method not recorded"
    )
    return f"job {job.id} ({job.method}, {job.task}); dataset {source}; {how}; model {job.model}"


def _circuit_of(store: Storage, text: str) -> tuple[Circuit, str]:
    """A circuit string, or a stored job id (its result circuit); returns the circuit and where it came from."""
    if _is_job_id(text):
        job = store.get_job(int(text))
        if job.result_circuit is None:
            raise UsageError(f"job {job.id} ({job.status.value}) has no result circuit")
        return job.result_circuit, _job_origin(store, job)
    return Circuit.parse(text), "given on the command line"


def compare(
    a: str = typer.Argument(..., help="circuit A (e.g. 0.1,4.4) or a stored job id"),
    b: str = typer.Argument(..., help="circuit B or a stored job id"),
    db: str | None = DbOpt,
    png: str | None = typer.Option(None, "--png", help="write a diagram coloured by membership here"),
) -> None:
    """Shared and distinct components and edges of two circuits, and their Jaccard similarity.

    A job id prints the search method, dataset and evaluation method that found it. Edges are compared
    only when both circuits are edge-level.
    """
    from discovery.analysis.compare import compare as compare_circuits

    store = _store(db, must_exist=True) if _is_job_id(a) or _is_job_id(b) else None
    ca, label_a = _circuit_of(store, a) if store else (Circuit.parse(a), "given on the command line")
    cb, label_b = _circuit_of(store, b) if store else (Circuit.parse(b), "given on the command line")
    result = compare_circuits(ca, cb)
    console.print(f"A  {ca}  [{ca.level} level, size {ca.size}; {label_a}]")
    console.print(f"B  {cb}  [{cb.level} level, size {cb.size}; {label_b}]")
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
    if result.mixed_levels:
        console.print(
            "edges not compared: one circuit is node-level (it keeps every edge among its components), "
            "the other edge-level"
        )
    if png:
        from discovery.pictures.compare_plots import draw_comparison

        console.print(f"diagram  {draw_comparison(ca, cb, png, title=f'A: {a}  vs  B: {b}')}")


def _evaluation_methods(
    model: Any,
    tasks: list[str],
    n: int,
    seed: int,
    corruption: str | None,
    task_param: list[str] | None,
    ablation: Ablation,
    level: str,
) -> dict[str, Any]:
    """Each task's evaluation method (which names its dataset) under the given options, by task."""
    from discovery.scoring.build import build_evaluator

    if level not in ("node", "edge"):
        raise UsageError(f"--level {level!r}: choose node or edge")
    checked: Literal["node", "edge"] = "node" if level == "node" else "edge"
    out = {}
    for t in tasks:
        dataset = common.open_dataset(model, t, n, seed, corruption, task_param)
        out[t] = build_evaluator(model, dataset, ablation).method(checked)
    return out


def overlap(
    task: list[str] = typer.Option(..., "--task", "-t", help="a task (repeat: at least two)"),
    model: str = common.ModelOpt,
    db: str | None = DbOpt,
    on: str = typer.Option("nodes", help="compare components (nodes) or edges"),
    threshold: float = typer.Option(
        0.8, help="without search jobs: the smallest stored circuit reaching this normalised score is a task's best"
    ),
    png: str | None = typer.Option(None, "--png", help="write the matrix as a heatmap here"),
    search_method: str | None = SearchMethodOpt,
    level: str | None = LevelOpt,
    n: int = common.NOpt,
    seed: int = common.SeedOpt,
    corruption: str | None = common.CorruptionOpt,
    ablation: str = common.AblationOpt,
    mean_source: str = common.SourceOpt,
    ablate_mlps: bool = common.MlpsOpt,
    task_param: list[str] | None = common.TaskParamOpt,
    device: str = common.DeviceOpt,
) -> None:
    """Jaccard matrix, shared and distinct heads over each task's best stored circuit for one dataset setting.

    Each task's best circuit is looked up for exactly the dataset and evaluation method the options
    name (as `evaluate` takes them) and the model's weights (whatever path loaded them).
    """
    from discovery.analysis.compare import best_stored, compare, overlap_matrix

    if len(task) < 2:
        raise UsageError("overlap needs at least two --task options")
    if on not in ("nodes", "edges"):
        raise UsageError(f"--on {on!r}: choose nodes or edges")
    level = level or ("edge" if on == "edges" else "node")
    chosen = Ablation.parse(ablation, mean_source, ablate_mlps)
    store = _store(db, must_exist=True)
    loaded = common.open_model(model, device)
    methods = _evaluation_methods(loaded, task, n, seed, corruption, task_param, chosen, level)
    best = {t: best_stored(store, t, m, loaded.identity, search_method, threshold) for t, m in methods.items()}
    console.print(f"model  {loaded.identity.name} (weights sha256 {loaded.identity.weight_hash[:12]})")
    for t, origin in best.items():
        console.print(f"{t:<16}{origin.circuit}  [{origin.circuit.level} level, size {origin.circuit.size}]")
        console.print(f"{'':<16}from {origin.describe()}")
    circuits = {t: o.circuit for t, o in best.items()}
    labels, matrix = overlap_matrix(circuits, on=on)
    pairs = Table("A", "B", "shared", "only A", "only B", "Jaccard", title=f"pairs ({on})")
    for i, ta in enumerate(labels):
        for tb in labels[i + 1 :]:
            c = compare(circuits[ta], circuits[tb])
            shared, only_a, only_b = (
                (c.shared_nodes, c.only_a_nodes, c.only_b_nodes)
                if on == "nodes"
                else (c.shared_edges, c.only_a_edges, c.only_b_edges)
            )
            jac = c.node_jaccard if on == "nodes" else c.edge_jaccard
            pairs.add_row(
                ta, tb, ", ".join(shared) or "-", ", ".join(only_a) or "-", ", ".join(only_b) or "-", _fmt(jac, 3)
            )
    console.print(pairs)
    table = Table("", *labels, title=f"Jaccard ({on}) for {loaded.identity.name}")
    for i, label in enumerate(labels):
        table.add_row(label, *(f"{matrix[i, j]:.3f}" for j in range(len(labels))))
    console.print(table)
    if png:
        from discovery.pictures.compare_plots import draw_overlap_matrix

        title = f"Jaccard ({on}), {loaded.identity.name}, {ablation} ablation"
        console.print(f"heatmap  {draw_overlap_matrix(labels, matrix, png, title=title)}")


def cross_score(
    circuit_from_task: str = typer.Option(
        ..., "--circuit-from-task", "--from-task", help="take this task's best stored circuit for the model"
    ),
    task: list[str] = typer.Option(..., "--task", "-t", help="score it on this task's data (repeatable)"),
    model: str = common.ModelOpt,
    n: int = common.NOpt,
    seed: int = common.SeedOpt,
    corruption: str | None = common.CorruptionOpt,
    ablation: str = common.AblationOpt,
    mean_source: str = common.SourceOpt,
    ablate_mlps: bool = common.MlpsOpt,
    task_param: list[str] | None = common.TaskParamOpt,
    search_method: str | None = SearchMethodOpt,
    level: str = typer.Option("node", "--level", help="the source circuit's level: node or edge"),
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

    The dataset options (--n, --seed, --corruption, --task-param) and the ablation options apply to the
    source task's lookup and to every target. Prints where the circuit came from, and for each target
    its dataset, the score as a share of the target's full-model score (score / full) and normalised.
    """
    from discovery.analysis.compare import best_stored
    from discovery.scoring.build import build_evaluator
    from discovery.scoring.stored import StoredEvaluator

    chosen = Ablation.parse(ablation, mean_source, ablate_mlps)
    store = _store(db)
    loaded = common.open_model(model, device)
    if circuit is not None:
        source_circuit, label = _circuit_of(store, circuit)
    else:
        source_method = _evaluation_methods(
            loaded, [circuit_from_task], n, seed, corruption, task_param, chosen, level
        )[circuit_from_task]
        origin = best_stored(store, circuit_from_task, source_method, loaded.identity, search_method, threshold)
        source_circuit, label = origin.circuit, f"best stored for {circuit_from_task}: {origin.describe()}"
    source_circuit.validate(loaded.shape)
    console.print(f"model    {loaded.identity.name} (weights sha256 {loaded.identity.weight_hash[:12]})")
    console.print(f"circuit  {source_circuit}  [{source_circuit.level} level, size {source_circuit.size}]")
    console.print(f"from     {label}")
    table = Table("task", "dataset", "score", "full", "ablated", "share of full", "normalised", "stored")
    described = []
    for t in task:
        dataset = common.open_dataset(loaded, t, n, seed, corruption, task_param)
        evaluator = StoredEvaluator(build_evaluator(loaded, dataset, chosen), store)
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
        described.append((t, score.method.describe()))
    console.print(table)
    for t, how in described:
        console.print(f"{t}: scored by {how}")
    console.print(
        "share of full = score / the target's full-model score; normalised = (score - ablated) / (full - ablated)"
    )


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.add_typer(db_app, name="db")
    app.command()(runs)
    app.command()(show)
    app.command()(sql)
    app.command()(compare)
    app.command()(overlap)
    app.command("cross-score")(cross_score)
