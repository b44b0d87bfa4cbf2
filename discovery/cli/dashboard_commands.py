"""``circuits dashboard``: the web dashboard over the store (FastAPI + uvicorn)."""

from __future__ import annotations

import typer

from discovery.cli.common import err_console
from discovery.types.errors import UsageError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def dashboard(
    db: str | None = typer.Option(
        None, "--db", help="database URL (default: CIRCUITS_DATABASE_URL, else the embedded SQLite file)"
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (default: this machine only)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    allow_actions: bool = typer.Option(
        False, "--allow-actions", help="enable cancelling and resubmitting jobs (default: read-only)"
    ),
) -> None:
    """Serve the dashboard: jobs with live progress, circuits as diagrams, comparisons, patching heatmaps.

    Read-only by default (the database refuses writes) and bound to localhost; open
    http://HOST:PORT/ in a browser. Point it at the service's database with --db or
    CIRCUITS_DATABASE_URL to watch the workers' jobs as they run.
    """
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: choose a port between 1 and 65535")
    import uvicorn

    from discovery.dashboard import create_app, open_dashboard_store

    store = open_dashboard_store(db, read_only=not allow_actions)
    app = create_app(store, allow_actions=allow_actions)
    mode = "actions enabled (cancel, resubmit)" if allow_actions else "read-only"
    err_console.print(f"dashboard on http://{host}:{port}/ over {store.url} ({mode}); Ctrl-C stops it")
    if host not in LOCAL_HOSTS:
        err_console.print(f"warning: listening on {host}: anyone who can reach it can read the store", style="yellow")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    app.command()(dashboard)
