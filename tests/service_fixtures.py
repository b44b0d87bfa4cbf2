"""Helpers for the service's integration tests: a throw-away PostgreSQL database, an isolated corner of
the shared Redis (its own DB number and key prefix), a tiny model saved to disk, and worker
subprocesses that are always killed.

Nothing here touches the shared Redis beyond keys under this session's prefix, and nothing restarts
it. Environment: ``CIRCUITS_TEST_PG`` (admin URL, default
``postgresql+psycopg2://postgres@127.0.0.1:5432/test``, else the ``postgres`` database),
``CIRCUITS_TEST_REDIS`` (default ``redis://127.0.0.1:6379``), ``CIRCUITS_TEST_REDIS_DB`` (default 11).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_CANDIDATES = (
    [os.environ["CIRCUITS_TEST_PG"]]
    if os.environ.get("CIRCUITS_TEST_PG")
    else [
        "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
        # docker-compose's server has no `test` database; `postgres` always exists
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
    ]
)
PG_ADMIN = PG_ADMIN_CANDIDATES[0]
REDIS_BASE = os.environ.get("CIRCUITS_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("CIRCUITS_TEST_REDIS_DB", "11"))


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def services_available() -> str | None:
    """None when PostgreSQL and Redis answer; otherwise why not (the skip reason)."""
    try:
        import redis

        redis.Redis.from_url(f"{REDIS_BASE}/{REDIS_DB}", socket_connect_timeout=2).ping()
    except Exception as e:
        return f"Redis at {REDIS_BASE} does not answer: {e}"
    global PG_ADMIN
    import sqlalchemy as sa

    errors = []
    for url in PG_ADMIN_CANDIDATES:
        try:
            engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
            with engine.connect():
                pass
            engine.dispose()
            PG_ADMIN = url
            return None
        except Exception as e:
            errors.append(f"{url}: {str(e).splitlines()[0]}")
    return f"PostgreSQL does not answer: {'; '.join(errors)}"


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create a database for this test session and drop it afterwards; yields its SQLAlchemy URL."""
    import sqlalchemy as sa

    name = unique("circuits_svc")
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def isolated_redis() -> Iterator[dict[str, str]]:
    """Environment for an isolated broker: own DB number, key prefix and queue; keys deleted afterwards."""
    import redis

    tag = unique("circuits-test")
    env = {
        "CIRCUITS_BROKER_URL": f"{REDIS_BASE}/{REDIS_DB}",
        "CIRCUITS_REDIS_PREFIX": f"{tag}:",
        "CIRCUITS_QUEUE": tag,
    }
    client = redis.Redis.from_url(env["CIRCUITS_BROKER_URL"], socket_connect_timeout=2)
    try:
        yield env
    finally:
        for key in client.scan_iter(match=f"{tag}*", count=500):
            client.delete(key)
        client.close()


def queue_length(env: dict[str, str]) -> int:
    """Messages waiting in the test queue (kombu's Redis list, under the key prefix)."""
    import redis

    client = redis.Redis.from_url(env["CIRCUITS_BROKER_URL"], socket_connect_timeout=2)
    try:
        return int(client.llen(env["CIRCUITS_REDIS_PREFIX"] + env["CIRCUITS_QUEUE"]))
    finally:
        client.close()


def save_tiny_model(directory: Path, n_layers: int = 2, n_heads: int = 4, d_model: int = 64, seed: int = 0) -> Path:
    """A random GPT-2 with GPT-2's tokenizer saved with ``save_pretrained`` (what a worker loads)."""
    from discovery.model import random_gpt2

    loaded = random_gpt2(n_layers=n_layers, n_heads=n_heads, d_model=d_model, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    loaded.hf_model.save_pretrained(str(directory))
    loaded.tokenizer.save_pretrained(str(directory))
    return directory


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``circuits ARGS`` in a subprocess with ``env`` added to this process's environment."""
    full = {**os.environ, "COLUMNS": "200", **env}
    # the ``circuits`` entry point, run from the repository root (so the checkout's packages are used)
    code = "import sys; from discovery.cli import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=full, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


class Worker:
    """A ``celery -A workers worker`` subprocess (solo pool) with its log in a file."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str | None = None, via_cli: bool = False) -> None:
        self.name = name or unique("w")
        self.via_cli = via_cli
        """Start it as ``circuits worker`` (the supervised entry point) instead of ``celery -A workers worker``."""
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 90, wait_ready: bool = True) -> Worker:
        self._log = open(self.log_path, "w")
        if self.via_cli:
            command = [
                sys.executable,
                "-c",
                "import sys; from discovery.cli import main; main(sys.argv[1:])",
                "worker",
                "--loglevel",
                "info",
                "--hostname",
                f"{self.name}@%h",
            ]
        else:
            command = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "info",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--hostname",
                f"{self.name}@%h",
            ]
        self.proc = subprocess.Popen(
            command, env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if not wait_ready:
            return self
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if "ready." in self.log():
                return self
            time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"worker {self.name} not ready after {ready_timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would: no warm shutdown, no acknowledgement."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self, timeout: float = 20) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()


@contextlib.contextmanager
def workers(env: dict[str, str], log_dir: Path, count: int = 1) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for _ in range(count):
            started.append(Worker(env, log_dir).start())
        yield started
    finally:
        for w in started:
            w.stop()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.3, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s")


class TcpProxy:
    """A throw-away TCP forwarder in this process: ``start()`` opens ``port`` and forwards it to
    ``target``; ``stop()`` closes the port and drops every connection through it. The tests use it
    to take "Redis" away from a worker for a few seconds without touching the shared Redis."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        import socket

        self.target = (target_host, target_port)
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self._server: Any = None
        self._conns: list[Any] = []
        self._threads: list[Any] = []

    def start(self) -> TcpProxy:
        import socket
        import threading

        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        server.settimeout(0.2)
        self._server = server
        self._running = True
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self) -> None:
        import socket
        import threading

        while self._running:
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: Any, dst: Any) -> None:
        try:
            src.settimeout(None)
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        import socket

        self._running = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        self._conns = []
