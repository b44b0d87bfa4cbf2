"""``circuits submit``, ``jobs``, ``status``, ``cancel``, ``requeue`` and ``worker``: the service's shell.

With ``CIRCUITS_BROKER_URL`` set, ``submit`` enqueues and prints job ids for workers to run; without
it, ``submit`` runs the job in this process and prints the result (no server needed).
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from discovery.cli import common, output
from discovery.cli.common import console, err_console
from discovery.types.errors import UsageError
from discovery.types.evaluation import AblationChoice

if TYPE_CHECKING:
    from discovery.store.base import Storage


def _store(db: str | None, must_exist: bool = True) -> Any:
    """The store; commands that only read or change existing jobs refuse a SQLite file that is not there."""
    from discovery.service import open_default_store

    return open_default_store(db, must_exist=must_exist)


def _get(job: Any, name: str, default: Any = None) -> Any:
    value = getattr(job, name, default)
    return getattr(value, "value", value)


def _progress_text(job: Any) -> str:
    done, total = _get(job, "progress_done"), _get(job, "progress_total")
    if done is None:
        return ""
    return f"{done}/{total}" if total else str(done)


def submit(
    task: list[str] = typer.Option(
        ["digits"], "--task", "-t", help="task name (repeat for a sweep: one job per task and a comparison)"
    ),
    method: str = typer.Option("greedy", "--method", help="search method (circuits methods lists them)"),
    target: float | None = typer.Option(None, "--target", help="shorthand for --param target=VALUE"),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="method parameter KEY=VALUE; repeatable"),
    model: str = common.ModelOpt,
    n: int = common.NOpt,
    seed: int = common.SeedOpt,
    corruption: str | None = common.CorruptionOpt,
    ablation: str | None = common.MethodAblationOpt,
    mean_source: str = common.SourceOpt,
    ablate_mlps: bool | None = common.MethodMlpsOpt,
    ablate_embed: bool | None = common.MethodEmbedOpt,
    device: str = common.DeviceOpt,
    task_param: list[str] | None = common.TaskParamOpt,
    db: str | None = common.DbOpt,
    in_process: bool = typer.Option(False, "--in-process", help="run here even if a broker is configured"),
    wait: bool = typer.Option(False, "--wait", help="with a broker: wait for the jobs and print their results"),
) -> None:
    """Submit a discovery job (several --task: a sweep); print its id, or run it here when no broker is set."""
    from discovery.service import JobRequest
    from discovery.service import submit as submit_jobs

    params = common.parse_params(param)
    if target is not None:
        params["target"] = target
    task_params = common.parse_task_params(task_param)
    chosen = AblationChoice.parse(ablation, mean_source, ablate_mlps, ablate_embed)
    requests = [
        JobRequest(
            task=t,
            method=method,
            model=model,
            params=params,
            n=n,
            seed=seed,
            corruption=corruption,
            task_params=task_params,
            ablation=chosen,
            device=device,
        )
        for t in task
    ]
    store = _store(db, must_exist=False)
    if in_process or not os.environ.get("CIRCUITS_BROKER_URL"):
        with common.progress_bar("running") as bar:
            sub = submit_jobs(requests, store, broker=False, progress=bar)
        for job_id in sub.shared:
            err_console.print(f"job {job_id} with the same request was already queued or running: joined it")
        for job_id in sub.all_ids:
            _print_job(store.get_job(job_id))
        ended = [store.get_job(j) for j in sub.all_ids]
        if any(_get(j, "status") != "succeeded" for j in ended):
            raise typer.Exit(1)
        return
    sub = submit_jobs(requests, store)
    for job_id, t in zip(sub.job_ids, task):
        joined = " (an identical job was already queued or running: joined it)" if job_id in sub.shared else ""
        console.print(f"{job_id}\tqueued\t{method} on {t}{joined}")
    if sub.compare_job_id is not None:
        console.print(f"{sub.compare_job_id}\tqueued\tcompare {', '.join(task)}")
    if wait:
        from discovery.service import wait as wait_for_jobs

        with common.progress_bar("waiting for workers") as bar:
            done = wait_for_jobs(sub.all_ids, store, progress=bar)
        for job in done:
            _print_job(job, store)
        if any(_get(j, "status") != "succeeded" for j in done):
            raise typer.Exit(1)


def jobs(
    limit: int = typer.Option(50, "--limit", help="most recent jobs shown"),
    db: str | None = common.DbOpt,
    fmt: str = output.FormatOpt,
) -> None:
    """List jobs with their status and progress."""
    output.check_format(fmt)
    store = _store(db)
    if fmt != "table":
        output.emit([output.job_row(j) for j in store.list_jobs(limit=limit)], output.JOB_COLUMNS, fmt)
        return
    table = Table("id", "status", "method", "task", "progress", "result", "worker", "created")
    for job in store.list_jobs(limit=limit):
        score = (job.result_score or {}).get("normalised")
        result = "" if job.result_circuit is None else f"{job.result_circuit.size} components"
        if score is not None:
            result += f", {score:.3f}"
        if _get(job, "status") == "failed":
            result = f"{job.error_type}"
        table.add_row(
            str(job.id),
            str(_get(job, "status")),
            job.method,
            job.task,
            _progress_text(job),
            result,
            job.worker_id or "",
            f"{job.created_at:%Y-%m-%d %H:%M:%S}" if job.created_at else "",
        )
    console.print(table)


def status(
    job_id: str = typer.Argument(..., help="job id"),
    db: str | None = common.DbOpt,
    as_json: bool = typer.Option(False, "--json", help="print the job's result as JSON"),
) -> None:
    """Show a job: status, evaluations done, best circuit so far (or the result) and its score."""
    key = _job_key(job_id)
    store = _store(db)
    job = store.get_job(key)
    if as_json:
        console.print(
            json.dumps(
                {
                    "id": job.id,
                    "status": _get(job, "status"),
                    "circuit": None if job.result_circuit is None else job.result_circuit.canonical,
                    "result": job.result_score,
                    "error_type": job.error_type,
                    "error_message": job.error_message,
                },
                indent=2,
            )
        )
        return
    _print_job(job, store)


def cancel(
    job_id: str = typer.Argument(..., help="job id"),
    db: str | None = common.DbOpt,
) -> None:
    """Cancel a job: a queued job never starts, a running one stops within one evaluation pass."""
    from discovery.service import cancel as cancel_job

    key = _job_key(job_id)
    job = cancel_job(key, _store(db))
    console.print(f"{job.id}\t{_get(job, 'status')}")


def requeue(
    job_id: list[str] | None = typer.Argument(
        None, help="job ids (default: stale running jobs and queued jobs with no message on the broker)"
    ),
    db: str | None = common.DbOpt,
) -> None:
    """Publish jobs' messages again (workers' reapers do this on their own); duplicates are harmless."""
    from discovery.service import requeue as requeue_jobs

    keys = [_job_key(j) for j in job_id] if job_id else None
    ids = requeue_jobs(_store(db), keys)
    console.print(f"requeued {len(ids)} job(s){': ' + ', '.join(map(str, ids)) if ids else ''}")


def worker(
    concurrency: int = typer.Option(
        1, "--concurrency", "-c", help="jobs run at once by this worker (1: one process, the solo pool)"
    ),
    queue: str | None = typer.Option(None, "--queue", "-Q", help="queue (default: CIRCUITS_QUEUE or circuits)"),
    device: str | None = typer.Option(None, "--device", help="run every job on this device (e.g. cuda)"),
    loglevel: str = typer.Option("info", "--loglevel", "-l"),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="node name, e.g. gpu1@%h"),
    restart: bool = typer.Option(
        True,
        "--restart/--no-restart",
        help="start Celery again if it dies (SIGTERM or Ctrl-C stop the worker for good)",
    ),
) -> None:
    """Start a Celery worker (``celery -A workers worker`` with the service's settings), kept running."""
    if not os.environ.get("CIRCUITS_BROKER_URL"):
        raise UsageError(
            "CIRCUITS_BROKER_URL is not set: a worker needs a broker, e.g. redis://localhost:6379/0 "
            "(without one, circuits submit runs jobs in-process)"
        )
    env = dict(os.environ)
    if device:
        env["CIRCUITS_DEVICE"] = device
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers",
        "worker",
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    args += ["--pool", "solo"] if concurrency == 1 else ["--pool", "prefork", "--concurrency", str(concurrency)]
    if queue:
        args += ["--queues", queue]
    if hostname:
        args += ["--hostname", hostname]
    if not restart:
        os.execvpe(args[0], args, env)  # signals reach celery itself
    sys.exit(_supervise(args, env))


def _supervise(args: list[str], env: dict[str, str]) -> int:
    """Run ``args`` until it exits cleanly or we are told to stop; start it again when it dies.

    Why: Celery's consumer can die on an unrecoverable error while the broker is away (seen with
    kombu 5.7: an acknowledgement that fails while Redis is unreachable ends in an AttributeError
    on reconnect). Its job is safe (its message is unacknowledged, its row in SQL), but the worker
    must come back. SIGTERM and SIGINT are passed on as SIGTERM (Celery's warm shutdown: the
    running job finishes) and end the loop. Docker's ``restart: unless-stopped`` is a second net.
    """
    import signal
    import subprocess
    import time

    state: dict[str, Any] = {"stopping": False, "child": None}

    def stop(signum: int, frame: Any) -> None:
        state["stopping"] = True
        child = state["child"]
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        backoff = 1.0
        while True:
            started = time.monotonic()
            state["child"] = subprocess.Popen(args, env=env)
            rc = state["child"].wait()
            if state["stopping"] or rc == 0:
                return rc
            err_console.print(f"circuits worker: celery exited with status {rc}; starting it again in {backoff:.0f}s")
            time.sleep(backoff)
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _job_key(text: str) -> int:
    if not text.strip().isdigit():
        raise UsageError(f"job id {text!r} is not a number (circuits jobs lists them)")
    return int(text)


def _print_job(job: Any, store: Storage | None = None) -> None:
    status_text = _get(job, "status")
    console.print(
        f"job       {job.id}  {status_text}"
        + (f"  (worker {job.worker_id}, attempt {job.attempts})" if job.worker_id else "")
    )
    console.print(f"method    {job.method} {json.dumps(job.params or {}, sort_keys=True)}")
    console.print(f"task      {job.task}")
    console.print(f"model     {job.model}")
    progress = _progress_text(job)
    if progress or job.progress_message:
        console.print(f"progress  {progress}  {job.progress_message or ''}")
    if store is not None and job.method != "compare":
        console.print(f"evaluated {store.job_evaluation_count(job.id)} circuits stored by this job")
    if status_text == "failed":
        console.print(f"error     {job.error_type}: {job.error_message}")
    result = job.result_score
    if not result:
        return
    comparison = (result.get("extra") or {}).get("comparison")
    if comparison:
        _print_comparison(comparison)
        return
    circuit = job.result_circuit
    norm = result.get("normalised")
    console.print(f"circuit   {circuit or '(empty)'}  ({result.get('size')} components)")
    console.print(
        f"score     {'nan' if norm is None else f'{norm:.4f}'} normalised, metric {result['metric']:.4f} "
        f"(full {result['full']:.4f}, ablated {result['ablated']:.4f})"
    )
    if result.get("evaluation_method"):
        from discovery.types.evaluation import EvaluationMethod

        console.print(f"scored by {EvaluationMethod(**result['evaluation_method']).describe()}")
    service = (result.get("extra") or {}).get("service", {})
    console.print(
        f"searched  {result.get('n_evaluations')} evaluations in {result.get('seconds', 0):.1f}s "
        f"({service.get('computed', '?')} computed, {service.get('served_from_store', '?')} served "
        "from the store)"
    )


def _print_comparison(result: dict[str, Any]) -> None:
    tasks = result["tasks"]
    overlap = Table("overlap (Jaccard)", *tasks)
    for t, row in zip(tasks, result["overlap"]):
        overlap.add_row(t, *(f"{v:.2f}" for v in row))
    console.print(overlap)
    cross = Table("circuit of \\ scored on", *tasks)
    for t, c, row in zip(tasks, result["circuits"], result["cross_scores"]):
        cross.add_row(f"{t}: {c or '(empty)'}", *("-" if v is None else f"{v:.3f}" for v in row))
    console.print(cross)
    console.print(f"shared by all: {result.get('common') or '(nothing)'}")
    for m in result.get("missing", []):
        console.print(f"left out: job {m['job']} ({m['task']}) is {m['status']}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command()(submit)
    app.command()(jobs)
    app.command()(status)
    app.command()(cancel)
    app.command()(requeue)
    app.command()(worker)
