"""The dashboard's web app (FastAPI, server-rendered Jinja2 pages, a JSON API under ``/api/``).

Every page has its data at the same path under ``/api/`` (``/jobs/3`` -> ``/api/jobs/3``), computed by
:mod:`discovery.dashboard.queries`; the pages poll the API for live progress. Errors are one-line
messages, never tracebacks: an unknown job, circuit or heatmap is a 404, a malformed parameter a 400,
an unreachable database a 503.

Read-only unless the app was created with ``allow_actions=True`` (``circuits dashboard --allow-actions``):
then ``POST /api/jobs/{id}/cancel`` and ``POST /api/jobs/{id}/resubmit`` (and the buttons on the job page)
cancel and resubmit jobs. Posts from another site are refused (the ``Origin`` must be this server),
so a page elsewhere cannot press those buttons through the user's browser.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from discovery.dashboard import queries, svg
from discovery.store import JobRecord, Store
from discovery.types.circuit import Circuit
from discovery.types.errors import CircuitsError, StoreError, UsageError

log = logging.getLogger("discovery.dashboard")
TEMPLATES = Path(__file__).parent / "templates"


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _short(spec: str | None) -> str:
    """A model spec as it fits a table cell: a local directory by its last component (the title has it all)."""
    if not spec:
        return "-"
    return Path(spec).name if "/" in spec and not spec.startswith("ref:") else spec


def _when(iso: str | None) -> str:
    """An ISO timestamp (UTC) as ``2026-12-01 21:14:13 UTC``."""
    if not iso:
        return "-"
    from datetime import datetime

    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ActionRefused(CircuitsError):
    """An action was asked of a read-only dashboard, or came from another site (403)."""


def create_app(store: Store, allow_actions: bool = False, title: str = "circuit-discovery") -> FastAPI:
    """The app over ``store`` (opened by :func:`queries.open_dashboard_store`, read-only by default)."""
    app = FastAPI(title=title, docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["fmt"] = _fmt
    templates.env.filters["duration"] = _duration
    templates.env.filters["short"] = _short
    templates.env.filters["when"] = _when
    templates.env.globals["cell_colour"] = svg.matrix_cell_colour
    app.state.store = store
    app.state.allow_actions = allow_actions

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("allow_actions", allow_actions)
        context.setdefault("database", store.url)
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    # --- errors: one line, never a traceback -----------------------------------------------------
    def error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message, "status": status}, status_code=status)
        return page(request, "error.html", status_code=status, status=status, message=message)

    @app.exception_handler(queries.NotFound)
    def _not_found(request: Request, e: queries.NotFound) -> Response:
        return error(request, 404, str(e))

    @app.exception_handler(ActionRefused)
    def _refused(request: Request, e: ActionRefused) -> Response:
        return error(request, 403, str(e))

    @app.exception_handler(UsageError)
    def _usage(request: Request, e: UsageError) -> Response:
        return error(request, 400, str(e))

    @app.exception_handler(StoreError)
    def _store_error(request: Request, e: StoreError) -> Response:
        return error(request, 503, str(e))

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, e: RequestValidationError) -> Response:
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body"))
            got = err.get("input")
            parts.append(f"{where}={got!r}: {err.get('msg', 'invalid')}" if got is not None else f"{where}: missing")
        return error(request, 400, "bad parameter: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, e: StarletteHTTPException) -> Response:
        message = "no such page" if e.status_code == 404 else str(e.detail)
        return error(request, e.status_code, message)

    @app.exception_handler(Exception)
    def _crash(request: Request, e: Exception) -> Response:
        log.exception("dashboard: %s %s failed", request.method, request.url.path)
        return error(request, 500, f"internal error ({type(e).__name__}); the server's log has the details")

    # --- jobs -------------------------------------------------------------------------------------
    def jobs_data(model: str | None, task: str | None, method: str | None, status: str | None, limit: int) -> Any:
        return queries.list_jobs(store, model or None, task or None, method or None, status or None, limit)

    # each parameter gets its own Query object (FastAPI binds one to the parameter it first declares)
    def Limit() -> Any:
        return Query(100, ge=1, le=1000, description="most jobs to list")

    @app.get("/api/jobs")
    def api_jobs(
        model: str | None = None,
        task: str | None = None,
        method: str | None = None,
        status: str | None = None,
        limit: int = Limit(),
    ) -> Any:
        return jobs_data(model, task, method, status, limit)

    @app.get("/", response_class=HTMLResponse)
    def jobs_page(
        request: Request,
        model: str | None = None,
        task: str | None = None,
        method: str | None = None,
        status: str | None = None,
        limit: int = Limit(),
    ) -> Response:
        return page(request, "jobs.html", data=jobs_data(model, task, method, status, limit))

    @app.get("/api/jobs/{job_id}")
    def api_job(job_id: int) -> Any:
        return queries.job_detail(store, job_id)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: int) -> Response:
        data = queries.job_detail(store, job_id)
        job = data["job"]
        diagram = None
        if job["result"] is not None and job["method"] != queries.COMPARE_METHOD:
            diagram = svg.circuit_svg(
                Circuit.parse(job["result"]["circuit"]),
                data["model_shape"]["n_layers"],
                data["model_shape"]["n_heads"],
                edge_scores=data["edge_scores"] or None,
            )
        plot = svg.score_size_svg(data["evaluations"], highlight=job["result"]["circuit"] if job["result"] else None)
        history = svg.history_svg(data["history"])
        return page(request, "job.html", data=data, job=job, diagram=diagram, plot=plot, history=history)

    # --- actions (only with allow_actions) ---------------------------------------------------------
    def check_action(request: Request) -> None:
        if not allow_actions:
            raise ActionRefused("this dashboard is read-only: start it with `circuits dashboard --allow-actions`")
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin and urlsplit(origin).netloc != request.headers.get("host"):
            raise ActionRefused(f"refused: the request came from {urlsplit(origin).netloc}, not this dashboard")

    def cancel(request: Request, job_id: int) -> dict[str, Any]:
        check_action(request)
        from discovery.service import cancel as cancel_job

        queries.get_job(store, job_id)
        job = cancel_job(job_id, store)
        return {"job": job_id, "status": job.status.value}

    def resubmit(request: Request, job_id: int) -> dict[str, Any]:
        check_action(request)
        new_id = resubmit_job(store, queries.get_job(store, job_id))
        return {"job": job_id, "new_job": new_id}

    @app.post("/api/jobs/{job_id}/cancel")
    def api_cancel(request: Request, job_id: int) -> Any:
        return cancel(request, job_id)

    @app.post("/api/jobs/{job_id}/resubmit")
    def api_resubmit(request: Request, job_id: int) -> Any:
        return resubmit(request, job_id)

    @app.post("/jobs/{job_id}/cancel")
    def cancel_form(request: Request, job_id: int) -> Response:
        cancel(request, job_id)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.post("/jobs/{job_id}/resubmit")
    def resubmit_form(request: Request, job_id: int) -> Response:
        new_id = resubmit(request, job_id)["new_job"]
        return RedirectResponse(f"/jobs/{new_id}", status_code=303)

    # --- circuits ----------------------------------------------------------------------------------
    @app.get("/api/circuits/{key}")
    def api_circuit(key: str) -> Any:
        return queries.circuit_detail(store, queries.find_circuit(store, key))

    @app.get("/circuits/{key}", response_class=HTMLResponse)
    def circuit_page(request: Request, key: str) -> Response:
        data = queries.circuit_detail(store, queries.find_circuit(store, key))
        diagram = svg.circuit_svg(
            Circuit.parse(data["circuit"]), data["model_shape"]["n_layers"], data["model_shape"]["n_heads"]
        )
        return page(request, "circuit.html", data=data, diagram=diagram)

    # --- compare -------------------------------------------------------------------------------------
    def Side() -> Any:  # one Query per parameter: FastAPI binds a Query object to the first name it is used for
        return Query(..., description="a job id (its result), a stored circuit key, or components such as 0.1,1.2")

    @app.get("/api/compare")
    def api_compare(a: str = Side(), b: str = Side()) -> Any:
        return queries.compare_circuits(store, a, b)

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request, a: str | None = None, b: str | None = None) -> Response:
        if a is None and b is None:  # the form alone
            return page(request, "compare.html", data=None, diagrams=None, a="", b="")
        if a is None or b is None:
            raise UsageError(f"bad parameter: {'a' if a is None else 'b'}: missing (compare needs ?a=...&b=...)")
        data = queries.compare_circuits(store, a, b)
        ca, cb = Circuit.parse(data["a"]), Circuit.parse(data["b"])
        membership = {n: "both" for n in data["shared_nodes"]}
        membership.update({n: "a" for n in data["only_a_nodes"]})
        membership.update({n: "b" for n in data["only_b_nodes"]})
        edge_membership = {e: "both" for e in data["shared_edges"]}
        edge_membership.update({e: "a" for e in data["only_a_edges"]})
        edge_membership.update({e: "b" for e in data["only_b_edges"]})
        union = Circuit(ca.nodes | cb.nodes, ca.edges | cb.edges)
        shape = svg.shape_of([ca, cb])
        diagrams = {
            "a": svg.circuit_svg(ca, *shape, membership={n: membership[n] for n in membership if n in _names(ca)}),
            "b": svg.circuit_svg(cb, *shape, membership={n: membership[n] for n in membership if n in _names(cb)}),
            "union": svg.circuit_svg(union, *shape, membership=membership, edge_membership=edge_membership),
        }
        return page(request, "compare.html", data=data, diagrams=diagrams, a=a, b=b)

    # --- overlap ---------------------------------------------------------------------------------------
    def overlap_data(model: str, task: list[str], threshold: float) -> Any:
        tasks = [t for t in dict.fromkeys(t.strip() for t in task) if t]
        if len(tasks) < 2:
            raise UsageError("overlap needs at least two distinct task parameters (?model=...&task=A&task=B)")
        return queries.overlap(store, model, tasks, threshold)

    def Model() -> Any:
        return Query(..., min_length=1, description="the model's stored name")

    def Tasks() -> Any:
        return Query(..., description="a task (repeat: at least two)")

    def Threshold() -> Any:
        return Query(0.8, ge=-10, le=10, description="without search jobs: the smallest circuit reaching this")

    @app.get("/api/overlap")
    def api_overlap(model: str = Model(), task: list[str] = Tasks(), threshold: float = Threshold()) -> Any:
        return overlap_data(model, task, threshold)

    @app.get("/overlap", response_class=HTMLResponse)
    def overlap_page(
        request: Request, model: str = Model(), task: list[str] = Tasks(), threshold: float = Threshold()
    ) -> Response:
        return page(request, "overlap.html", data=overlap_data(model, task, threshold))

    # --- patching --------------------------------------------------------------------------------------
    @app.get("/api/patching")
    def api_heatmaps() -> Any:
        return {"heatmaps": queries.list_heatmaps(store)}

    @app.get("/patching", response_class=HTMLResponse)
    def heatmaps_page(request: Request) -> Response:
        return page(request, "patching_list.html", heatmaps=queries.list_heatmaps(store))

    @app.get("/api/patching/{heatmap_id}")
    def api_heatmap(heatmap_id: int) -> Any:
        return queries.heatmap(store, heatmap_id)

    @app.get("/patching/{heatmap_id}", response_class=HTMLResponse)
    def heatmap_page(request: Request, heatmap_id: int) -> Response:
        data = queries.heatmap(store, heatmap_id)
        cells = [(c["layer"], c["head"], c["effect"]) for c in data["cells"]]
        return page(
            request, "patching.html", data=data, heatmap=svg.heatmap_svg(cells, data["n_layers"], data["n_heads"])
        )

    return app


def _names(circuit: Circuit) -> set[str]:
    return {n.name for n in circuit.nodes}


def resubmit_job(store: Store, job: JobRecord) -> int:
    """Queue a copy of ``job`` (same task, method, parameters, model and settings) and return its id.

    With ``CIRCUITS_BROKER_URL`` set the copy goes to the workers; without a broker it runs in a
    background thread of this process (the embedded setup), and the page polls its progress."""
    import os

    from discovery import service

    if job.method == queries.COMPARE_METHOD:
        raise UsageError(f"job {job.id} is a sweep's comparison: resubmit its sweep from the command line")
    request = service.validate_request(
        service.JobRequest.from_settings(job.task, job.method, job.model, dict(job.params), dict(job.config))
    )
    new_id = store.create_job(
        request.method, dict(request.params), request.task, request.model, config=request.settings()
    )
    if os.environ.get("CIRCUITS_BROKER_URL"):
        service.requeue(store, [new_id])
    else:
        threading.Thread(target=service.run_job, args=(new_id, store), name=f"job-{new_id}", daemon=True).start()
    return new_id
