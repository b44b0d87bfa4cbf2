"""The dashboard beside the running service (integration): a real Celery worker subprocess runs a job
from Redis into PostgreSQL while the dashboard, read-only over the same database, shows it running
with its progress moving; a second dashboard with actions enabled cancels it and the worker stops.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from discovery.dashboard import create_app, open_dashboard_store
from discovery.service import JobRequest, submit
from tests.service_fixtures import (
    Worker,
    fresh_postgres_database,
    isolated_redis,
    save_tiny_model,
    services_available,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def service_env(monkeypatch):
    reason = services_available()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_database() as url, isolated_redis() as broker:
        env = {
            **broker,
            "CIRCUITS_DATABASE_URL": url,
            "CIRCUITS_HEARTBEAT_INTERVAL": "1",
            "CIRCUITS_PROGRESS_INTERVAL": "0.2",
            "OMP_NUM_THREADS": "1",
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        yield env


@pytest.mark.timeout(400)
def test_the_dashboard_shows_a_workers_running_job_and_cancels_it(service_env, tmp_path):
    from discovery.store import open_store

    model = save_tiny_model(tmp_path / "tiny44", n_layers=4, n_heads=4, seed=3)
    url = service_env["CIRCUITS_DATABASE_URL"]
    store = open_store(url)  # migrates the fresh database (the dashboard itself never does)
    viewer = open_dashboard_store(url)
    client = TestClient(create_app(viewer), raise_server_exceptions=False)
    worker = Worker(service_env, tmp_path, "dash-worker").start()
    try:
        # every subset of 16 heads up to size 6, a target none reaches: runs until cancelled
        request = JobRequest(task="digits", method="exhaustive", model=str(model), params={"k": 6, "target": 2.0}, n=10)
        job_id = submit(request, store).job_ids[0]

        def progress() -> dict:
            return client.get(f"/api/jobs/{job_id}").json()["job"]

        first = wait_for(
            lambda: (j := progress())["status"] == "running" and j["progress"]["done"] > 0 and j,
            180,
            what="the job running with progress on the dashboard",
        )
        assert worker.name in first["worker"] and first["progress"]["total"] == 14892
        assert first["progress"]["eta_s"] is not None and first["progress"]["eta_s"] > 0
        wait_for(lambda: progress()["progress"]["done"] > first["progress"]["done"], 60, what="progress moving")
        row = next(j for j in client.get("/api/jobs?status=running").json()["jobs"] if j["id"] == job_id)
        assert row["method"] == "exhaustive"
        page = client.get(f"/jobs/{job_id}").text
        assert 'id="status">running<' in page and worker.name in page

        acting = open_dashboard_store(url, read_only=False)
        actions = TestClient(create_app(acting, allow_actions=True), raise_server_exceptions=False)
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 403  # the read-only one refuses
        assert actions.post(f"/api/jobs/{job_id}/cancel").json() == {"job": job_id, "status": "cancelled"}
        assert progress()["status"] == "cancelled" and progress()["progress"]["done"] < 14892

        def stopped() -> bool:  # the worker's search stops at its next progress report: nothing more is stored
            before = store.job_evaluation_count(job_id)
            time.sleep(2)
            return store.job_evaluation_count(job_id) == before

        wait_for(stopped, 60, what="the worker to stop the cancelled search")
        assert store.job_evaluation_count(job_id) < 14892
        acting.close()
    finally:
        worker.stop()
        viewer.close()
        store.close()
