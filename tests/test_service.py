"""The service: submit -> Celery worker subprocesses on Redis -> job rows in PostgreSQL.

Unit tier (no servers): submit-time validation and the in-process path on a SQLite store.
Integration tier (``-m integration``): a fresh PostgreSQL database per session (dropped afterwards),
an isolated corner of the shared Redis (own DB number, key prefix and queue; nothing restarted),
real ``celery -A workers worker`` subprocesses, always killed in ``finally``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from discovery.service import JobRequest, submit, validate_request
from discovery.types.errors import UsageError
from tests.service_fixtures import (
    REDIS_BASE,
    TcpProxy,
    Worker,
    fresh_postgres_database,
    isolated_redis,
    queue_length,
    run_cli,
    save_tiny_model,
    services_available,
    wait_for,
    workers,
)

N_PROMPTS = 10
# an exhaustive search long enough to interrupt: 16 heads, subsets up to size 5 (6,884 circuits),
# a target no subset reaches so every size is tried
LONG_PARAMS = {"k": 5, "target": 2.0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory) -> Path:
    """4 layers x 4 heads: exhaustive search over 16 heads takes seconds, long enough to interrupt."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny44", n_layers=4, n_heads=4, seed=3)


def request(model: Path, task: str = "digits", method: str = "greedy", **params) -> JobRequest:
    return JobRequest(task=task, method=method, model=str(model), params=params or {"target": 0.9}, n=N_PROMPTS)


# ----------------------------------------------------------------------------------------------
# unit tier
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        ({"task": "no-such-task"}, "unknown task 'no-such-task'"),
        ({"method": "no-such-method"}, "unknown search method 'no-such-method'"),
        ({"params": {"target": "high"}}, "target='high' is not a float"),
        ({"params": {"k": 3}}, "has no parameter k"),
        ({"model": "/nonexistent/model/dir"}, "does not exist"),
        ({"model": "ref:no-such-model"}, "unknown reference model 'ref:no-such-model'"),
        ({"ablation": "median"}, "unknown ablation 'median'"),
        ({"corruption": "nonsense"}, "has no corruption 'nonsense'"),
        ({"n": 0}, "between 1 and"),
        # the audit's bad inputs that used to be accepted here and fail on the worker (issue 17)
        ({"n": 100_000_000}, "between 1 and 100,000"),
        ({"params": {"target": "nan"}}, "target=nan is not a finite number"),
        ({"params": {"target": 0.9, "pool": "12.3"}}, "layer 12 is out of range"),
        ({"params": {"target": 0.9, "start": "99.0"}}, "layer 99 is out of range"),
        ({"params": {"target": 0.9, "pool": "0.1,banana"}}, "banana"),
        ({"task_params": {"colour": "red"}}, "task 'digits' has no parameter colour"),
        ({"device": "cuda"}, "CUDA device"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_message(model_dir, change, message):
    from dataclasses import replace

    from discovery.types.evaluation import AblationChoice

    with pytest.raises(UsageError, match=message):
        if "ablation" in change:  # a request carries a parsed ablation: the bad word is refused as it is parsed
            change = {**change, "ablation": AblationChoice.parse(change["ablation"])}
        validate_request(replace(request(model_dir), **change))


def test_a_job_rows_ablation_keys_load_as_they_were_stored():
    """The job row keeps the ablation under the keys it always had; a row stored before ``ablate_embed``
    existed (its ablation resolved) kept the embedding, whatever the method's default is now."""
    from discovery.types.evaluation import Ablation, AblationChoice

    old = {"n": 8, "ablation": "resample", "ablation_source": "clean", "ablate_mlps": True}
    loaded = JobRequest.from_settings("digits", "acdc", "ref:sequences", {}, old)
    assert loaded.resolved_ablation() == Ablation("resample", "clean", ablate_mlps=True, ablate_embed=False)
    chosen = JobRequest("digits", "acdc", "ref:sequences", ablation=AblationChoice.parse(source="clean"))
    keys = {k: chosen.settings()[k] for k in ("ablation", "ablation_source", "ablate_mlps", "ablate_embed")}
    assert keys == {"ablation": None, "ablation_source": "clean", "ablate_mlps": None, "ablate_embed": None}
    again = JobRequest.from_settings("digits", "acdc", "ref:sequences", {}, chosen.settings())
    assert again == chosen and again.resolved_ablation() == Ablation("resample", "clean", True, True)


def test_a_corrupt_weights_file_or_a_short_context_is_refused_at_submit(tmp_path, model_dir):
    import json

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(UsageError, match="unreadable"):
        validate_request(request(broken))
    short = tmp_path / "short"
    shutil.copytree(model_dir, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "n_positions": 3}))
    with pytest.raises(UsageError, match="context is 3 tokens"):
        validate_request(request(short))


def test_prompts_of_unknown_words_are_refused_at_submit(tmp_path):
    import json

    prompts = tmp_path / "unknown.json"
    row = {"clean": "zebra quokka", "corrupt": "quokka zebra", "answer": " 1", "wrong": " 2"}
    prompts.write_text(json.dumps([row] * 4))
    req = JobRequest(task=f"file:{prompts}", method="greedy", model="ref:sequences", params={"target": 0.9}, n=4)
    with pytest.raises(UsageError, match="not in the model's vocabulary"):
        validate_request(req)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CIRCUITS_STALE_AFTER": "0"}, "CIRCUITS_STALE_AFTER=0"),
        ({"CIRCUITS_STALE_AFTER": "-5"}, "above 0"),
        ({"CIRCUITS_STALE_AFTER": "soon"}, "a number of seconds"),
        ({"CIRCUITS_HEARTBEAT_INTERVAL": "60"}, "at most a third of CIRCUITS_STALE_AFTER"),
        ({"CIRCUITS_REAP_INTERVAL": "nan"}, "above 0"),
        ({"CIRCUITS_STORE_RETRIES": "2.5"}, "a whole number"),
    ],
)
def test_invalid_service_settings_are_refused_where_they_are_read(monkeypatch, env, message):
    from discovery.service import reload_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        with pytest.raises(UsageError, match=message):
            reload_settings()
    finally:
        monkeypatch.undo()
        reload_settings()


def test_defaults_are_the_documented_ones():
    from discovery.service import ServiceSettings

    s = ServiceSettings()
    assert (s.stale_after, s.heartbeat_interval, s.reap_interval, s.queued_grace) == (120.0, 10.0, 15.0, 60.0)


def test_cancel_stops_a_long_evaluate_call_between_passes(tmp_path, long_model_dir):
    """Exhaustive search evaluates thousands of circuits in one call; a cancel lands between two passes
    (it used to run to the end of the call: 1,820 circuits after the cancel)."""
    import threading

    from discovery.service import run_job
    from discovery.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    job = store.create_job("exhaustive", dict(LONG_PARAMS), "digits", str(long_model_dir), config={"n": N_PROMPTS})
    stored_at_cancel: list[int] = []

    def cancel_once_running() -> None:
        while store.job_evaluation_count(job) < 200:
            time.sleep(0.2)
        stored_at_cancel.append(store.job_evaluation_count(job))
        store.cancel_job(job)

    canceller = threading.Thread(target=cancel_once_running, daemon=True)
    canceller.start()
    assert run_job(job, store, worker_id="w") == "cancelled"
    canceller.join(5)
    after = store.job_evaluation_count(job)
    # at most the pass in flight and the next one (the checkpoint reads the row at most every 0.5 s)
    assert after - stored_at_cancel[0] <= 2 * 256, (stored_at_cancel, after)
    assert after < 6884 and store.get_job(job).status.value == "cancelled"
    store.close()


def test_an_identical_job_already_running_is_joined_not_recomputed(tmp_path, model_dir):
    from discovery.service import find_identical_active_job, validate_request
    from discovery.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    req = validate_request(request(model_dir))
    first = store.create_job(req.method, req.params, req.task, req.model, config=req.settings())
    store.claim_job(first, "elsewhere")
    assert find_identical_active_job(store, req) == first
    other = validate_request(request(model_dir, task="months"))
    assert find_identical_active_job(store, other) is None
    import threading

    threading.Timer(1.0, store.cancel_job, args=(first,)).start()  # the other run ends (here: cancelled)
    sub = submit(request(model_dir), store, broker=False)  # joins it and waits for it to end
    assert (sub.job_ids, sub.shared) == ([first], [first])
    assert len(store.list_jobs(limit=100)) == 1 and store.job_evaluation_count(first) == 0  # nothing recomputed
    store.close()


def test_a_directory_without_config_is_not_a_model(tmp_path, model_dir):
    with pytest.raises(UsageError, match="no config.json"):
        validate_request(request(tmp_path))


@pytest.mark.slow  # over 20 s on the loaded 2-core machine (quick-tier durations, tests/conftest.py)
def test_in_process_submit_runs_the_job_and_the_cli_prints_it(tmp_path, model_dir):
    env = {"CIRCUITS_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}", "CIRCUITS_BROKER_URL": ""}
    out = run_cli(
        [
            "submit",
            "--task",
            "digits",
            "--method",
            "greedy",
            "--target",
            "0.9",
            "--model",
            str(model_dir),
            "--n",
            str(N_PROMPTS),
        ],
        env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "succeeded" in out.stdout and "circuit" in out.stdout
    jobs = run_cli(["jobs"], env)
    assert jobs.returncode == 0 and "succeeded" in jobs.stdout
    bad = run_cli(["submit", "--task", "digits", "--method", "nope", "--model", str(model_dir)], env)
    assert bad.returncode == 2 and "unknown search method 'nope'" in bad.stderr and "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------------------------
# integration tier
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def services():
    """Short intervals, and why: these tests check *what* recovery does (redelivery, resume, cancel,
    retries) at a pace the suite can afford; how long recovery takes at the default settings is
    test_a_sigkilled_worker_at_default_settings_recovers_within_stale_after_plus_a_minute (slow)."""
    reason = services_available()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_database() as url, isolated_redis() as broker:
        env = {
            **broker,
            "CIRCUITS_DATABASE_URL": url,
            "CIRCUITS_HEARTBEAT_INTERVAL": "1",
            "CIRCUITS_STALE_AFTER": "4",
            "CIRCUITS_BUSY_RETRY": "1",
            "CIRCUITS_PROGRESS_INTERVAL": "0.2",
            "CIRCUITS_VISIBILITY_TIMEOUT": "120",
            "OMP_NUM_THREADS": "1",
        }
        yield env


@pytest.fixture()
def service_env(services, monkeypatch):
    """The service's environment in this process too (submit enqueues on the test broker)."""
    from discovery.service import reload_settings

    for k, v in services.items():
        monkeypatch.setenv(k, v)
    reload_settings()
    yield dict(services)
    monkeypatch.undo()
    reload_settings()


@pytest.fixture()
def store(service_env):
    from discovery.store import open_store

    s = open_store(service_env["CIRCUITS_DATABASE_URL"])
    yield s
    s.close()


def wait_done(store, job_id: int, timeout: float = 240):
    return wait_for(lambda: (j := store.get_job(job_id)).is_finished() and j, timeout, what=f"job {job_id} ends")


def in_process(requests, tmp_path: Path, name: str = "reference.db"):
    """The same submission run in this process on a throw-away SQLite store: the reference."""
    import torch

    from discovery.store import open_store

    ref = open_store(f"sqlite:///{tmp_path / name}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run (OMP_NUM_THREADS=1): faster for these tiny models
    try:
        return ref, submit(requests, ref, broker=False)
    finally:
        torch.set_num_threads(threads)


def evaluation_rows(store) -> tuple[int, int]:
    """(rows, distinct evaluation keys) in the evaluations table."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM evaluations")).scalar_one()
        keys = conn.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT DISTINCT circuit_id, model_id, dataset_id, ablation, source, level, "
                "ablate_mlps, metric FROM evaluations) AS k"
            )
        ).scalar_one()
    return int(rows), int(keys)


def job_circuits(store, job_id: int) -> list[str]:
    """The canonical circuits of the evaluation rows a job stored (one entry per row)."""
    with store.engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT c.canonical FROM evaluations e JOIN circuits c ON c.id = e.circuit_id WHERE e.job_id = :j"
                ),
                {"j": job_id},
            )
        ]


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_submit_worker_result_row(service_env, store, model_dir, tmp_path):
    with workers(service_env, tmp_path, 1) as (worker,):
        sub = submit(request(model_dir), store)
        job = wait_done(store, sub.job_ids[0])
    assert job.status.value == "succeeded", (job.error_type, job.error_message, worker.log()[-3000:])
    # the row as PostgreSQL holds it
    with sa.create_engine(service_env["CIRCUITS_DATABASE_URL"]).connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT j.status, j.worker_id, c.canonical FROM jobs j JOIN circuits c "
                "ON c.id = j.result_circuit_id WHERE j.id = :id"
            ),
            {"id": job.id},
        ).one()
    assert row.status == "succeeded" and worker.name in row.worker_id
    ref, ref_sub = in_process(request(model_dir), tmp_path)
    assert row.canonical == ref.get_job(ref_sub.job_ids[0]).result_circuit.canonical
    assert store.job_evaluation_count(job.id) > 0


@pytest.mark.integration
@pytest.mark.timeout(500)
def test_worker_killed_mid_job_is_redelivered_and_resumes(services, monkeypatch, long_model_dir, tmp_path):
    """SIGKILL the worker after some evaluations are stored; another worker finishes the job from the store."""
    from discovery.store import open_store

    env = {**services, "CIRCUITS_VISIBILITY_TIMEOUT": "3"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    store = open_store(env["CIRCUITS_DATABASE_URL"])
    req = request(long_model_dir, method="exhaustive", **LONG_PARAMS)
    first = Worker(env, tmp_path, "first").start()
    second = None
    try:
        job_id = submit(req, store).job_ids[0]
        stored_before = wait_for(
            lambda: (n := store.job_evaluation_count(job_id)) >= 1000 and n,
            240,
            interval=0.05,
            what="1000 evaluations stored",
        )
        first.kill()
        killed_at = store.job_evaluation_count(job_id)
        assert not store.get_job(job_id).is_finished(), "the job ended before the kill: make it longer"
        second = Worker(env, tmp_path, "second").start()
        job = wait_done(store, job_id, timeout=300)
    finally:
        first.kill()
        if second:
            second.stop()
    assert job.status.value == "succeeded", (job.error_type, job.error_message, second.log()[-3000:])
    assert "second" in job.worker_id and job.attempts >= 2
    ref, ref_sub = in_process(req, tmp_path)
    ref_job = ref.get_job(ref_sub.job_ids[0])
    assert job.result_circuit == ref_job.result_circuit
    # float32 batches grouped differently differ in the last digits
    assert job.result_score["normalised"] == pytest.approx(ref_job.result_score["normalised"], abs=1e-4)
    # nothing duplicated, nothing lost: one row per evaluation key, and the job stored exactly the
    # circuits the uninterrupted run stored
    rows, keys = evaluation_rows(store)
    assert rows == keys
    stored = job_circuits(store, job_id)
    assert len(stored) == store.job_evaluation_count(job_id)
    assert set(stored) == set(job_circuits(ref, ref_job.id))
    ref_rows = len(stored)
    # the second run was served what the first stored, and computed only the rest
    service = job.result_score["extra"]["service"]
    assert service["served_from_store"] >= killed_at >= stored_before
    assert service["computed"] <= ref_rows - killed_at
    store.close()


@pytest.mark.integration
@pytest.mark.timeout(500)
def test_two_workers_share_a_sweep(service_env, store, model_dir, tmp_path):
    tasks = ["digits", "months", "greater-than"]
    reqs = [request(model_dir, task=t) for t in tasks]
    with workers(service_env, tmp_path, 2) as pair:
        sub = submit(reqs, store)
        comparison_job = wait_done(store, sub.compare_job_id, timeout=400)
        logs = [w.log() for w in pair]
    assert comparison_job.status.value == "succeeded", (comparison_job.error_message, logs)
    ref, ref_sub = in_process(reqs, tmp_path)
    for job_id, ref_id in zip(sub.job_ids, ref_sub.job_ids):
        assert store.get_job(job_id).result_circuit == ref.get_job(ref_id).result_circuit
    got = comparison_job.result_score["extra"]["comparison"]
    want = ref.get_job(ref_sub.compare_job_id).result_score["extra"]["comparison"]
    assert got["tasks"] == want["tasks"] == tasks
    assert got["circuits"] == want["circuits"]
    assert got["overlap"] == want["overlap"]
    for row, ref_row in zip(got["cross_scores"], want["cross_scores"]):
        assert row == pytest.approx(ref_row, rel=1e-3, abs=1e-4)  # a normalised score divides by full - ablated
    ran_on = {store.get_job(j).worker_id.split("@")[0] for j in sub.all_ids}
    assert ran_on <= {w.name for w in pair}


@pytest.mark.integration
def test_bad_submissions_are_refused_before_the_queue(service_env, store, model_dir):
    before_queue, before_jobs = queue_length(service_env), len(store.list_jobs(limit=10_000))
    bad = [
        request(model_dir, task="no-such-task"),
        request(model_dir, method="no-such-method"),
        request(model_dir, target="very"),
        JobRequest(task="digits", method="greedy", model="/nonexistent/model", n=N_PROMPTS),
        [request(model_dir), request(model_dir, task="nope")],  # one bad member refuses the whole sweep
    ]
    for r in bad:
        with pytest.raises(UsageError):
            submit(r, store)
    out = run_cli(
        ["submit", "--task", "digits", "--method", "greedy", "--param", "target=x", "--model", str(model_dir)],
        service_env,
    )
    assert out.returncode == 2 and "target='x' is not a float" in out.stderr  # a usage error
    assert queue_length(service_env) == before_queue
    assert len(store.list_jobs(limit=10_000)) == before_jobs


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_job_that_raises_ends_failed_with_its_error(service_env, store, model_dir, tmp_path):
    doomed = tmp_path / "doomed-model"
    shutil.copytree(model_dir, doomed)
    job_id = submit(request(doomed), store).job_ids[0]  # valid when submitted ...
    shutil.rmtree(doomed)  # ... gone when the worker loads it
    assert queue_length(service_env) >= 1
    with workers(service_env, tmp_path, 1):
        job = wait_done(store, job_id)
    assert job.status.value == "failed"
    assert job.error_type == "UsageError" and "does not exist" in job.error_message
    assert "Traceback" in job.error_traceback and "load_model" in job.error_traceback


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_cancel_stops_a_running_job(service_env, store, model_dir, long_model_dir, tmp_path):
    req = request(long_model_dir, method="exhaustive", k=7, target=2.0)
    with workers(service_env, tmp_path, 1) as (worker,):
        job_id = submit(req, store).job_ids[0]
        wait_for(lambda: store.get_job(job_id).progress_done > 0, 240, what="progress reported")
        out = run_cli(["cancel", str(job_id)], service_env)
        assert out.returncode == 0 and "cancelled" in out.stdout
        wait_for(
            lambda: "circuits.run_job" in worker.log() and "'cancelled'" in worker.log(),
            120,
            what="the worker stops the search",
        )
        # the worker is free again: the next job runs
        next_id = submit(request(model_dir, task="months"), store).job_ids[0]
        assert wait_done(store, next_id).status.value == "succeeded"
    job = store.get_job(job_id)
    assert job.status.value == "cancelled" and job.result_circuit is None
    status = run_cli(["status", str(job_id)], service_env)
    assert status.returncode == 0 and "cancelled" in status.stdout


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_broker_away_for_a_few_seconds_loses_no_job(service_env, store, long_model_dir, tmp_path):
    """The worker reaches Redis through a proxy we control: closed at start, opened, then dropped mid-job."""
    host, port = REDIS_BASE.split("//", 1)[1].split(":")
    proxy = TcpProxy(host, int(port))
    db = service_env["CIRCUITS_BROKER_URL"].rsplit("/", 1)[1]
    via_proxy = {
        **service_env,
        "CIRCUITS_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/{db}",
        "CIRCUITS_RESULT_BACKEND": service_env["CIRCUITS_BROKER_URL"],
        "CIRCUITS_VISIBILITY_TIMEOUT": "5",
    }
    worker = Worker(via_proxy, tmp_path, "behind-proxy", via_cli=True)  # circuits worker: supervised
    try:
        job_id = submit(request(long_model_dir, method="exhaustive", **LONG_PARAMS), store).job_ids[0]
        worker.start(wait_ready=False)  # its broker port is closed: it must keep retrying, not exit
        time.sleep(4)
        assert worker.proc.poll() is None, worker.log()
        proxy.start()
        wait_for(lambda: store.get_job(job_id).progress_done > 0, 240, what="job running after the broker came up")
        proxy.stop()  # the broker disappears mid-job ...
        time.sleep(4)
        proxy.start()  # ... and comes back
        job = wait_done(store, job_id, timeout=300)
        assert job.status.value == "succeeded", (job.error_message, worker.log()[-3000:])
        # the broker is away when a job ends (its acknowledgement fails): with kombu 5.7 Celery's
        # consumer may die of it; circuits worker starts it again
        second = submit(request(long_model_dir, task="months", method="exhaustive", k=4, target=2.0), store).job_ids[0]
        wait_for(lambda: store.get_job(second).status.value == "running", 120, interval=0.05, what="second job runs")
        proxy.stop()
        assert wait_done(store, second).status.value == "succeeded", worker.log()[-3000:]
        time.sleep(2)
        proxy.start()
        # the worker reconnected (or was restarted) and still serves the queue
        third = submit(request(long_model_dir, task="greater-than"), store).job_ids[0]
        assert wait_done(store, third, timeout=120).status.value == "succeeded", worker.log()[-3000:]
        log = worker.log()
        assert "Cannot connect to redis" in log  # retried at start-up instead of exiting
        assert log.count("Connected to redis") >= 3  # and connected again after each drop
    finally:
        worker.kill()
        proxy.stop()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_submit_waits_out_a_short_broker_outage_and_reports_a_long_one(service_env, store, model_dir, monkeypatch):
    """Publishing is retried: a broker that comes up within the retry window gets the job; one that
    stays away makes submit fail with a clear error and the job row marked failed (nothing silently lost)."""
    import threading

    from discovery.service import EnqueueError

    host, port = REDIS_BASE.split("//", 1)[1].split(":")
    db = service_env["CIRCUITS_BROKER_URL"].rsplit("/", 1)[1]
    proxy = TcpProxy(host, int(port))
    monkeypatch.setenv("CIRCUITS_BROKER_URL", f"redis://127.0.0.1:{proxy.port}/{db}")
    monkeypatch.setenv("CIRCUITS_RESULT_BACKEND", service_env["CIRCUITS_BROKER_URL"])
    before = queue_length(service_env)
    opener = threading.Timer(2.0, proxy.start)
    try:
        opener.start()
        started = time.monotonic()
        job_id = submit(request(model_dir), store).job_ids[0]
        assert time.monotonic() - started >= 1.5  # it did wait for the broker
        assert queue_length(service_env) == before + 1
        assert store.get_job(job_id).status.value == "queued"
        store.cancel_job(job_id)  # nobody needs to run it
    finally:
        opener.cancel()
        proxy.stop()
    monkeypatch.setenv("CIRCUITS_PUBLISH_RETRIES", "1")
    jobs_before = len(store.list_jobs(limit=10_000))
    with pytest.raises(EnqueueError, match="did not answer.*nothing was queued or stored"):
        submit(request(model_dir), store)
    assert len(store.list_jobs(limit=10_000)) == jobs_before  # refused: no row left behind


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_broker_that_accepts_but_never_answers_is_refused_quickly(service_env, store, model_dir, monkeypatch):
    import socket
    import threading

    from discovery.service import EnqueueError

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    monkeypatch.setenv("CIRCUITS_BROKER_URL", f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
    monkeypatch.setenv("CIRCUITS_PUBLISH_RETRIES", "0")
    jobs_before = len(store.list_jobs(limit=10_000))
    started = time.monotonic()
    try:
        with pytest.raises(EnqueueError, match="did not answer"):
            submit(request(model_dir), store)
        took = time.monotonic() - started
    finally:
        silent.close()
        for c in accepted:
            c.close()
    assert took < 5 + 10  # one try of CIRCUITS_CONNECT_TIMEOUT (5 s), not minutes
    assert len(store.list_jobs(limit=10_000)) == jobs_before


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_lost_message_is_republished_by_the_workers_reaper(services, monkeypatch, model_dir, tmp_path):
    """No operator: the queue is emptied (a Redis restarted without persistence) and a worker's reaper
    finds the queued job with no message and publishes it again. Why shortened: the grace (60 s) and
    the reaper interval (15 s) are constants; what is tested is that the reaper finds and republishes."""
    import redis

    from discovery.store import open_store

    env = {**services, "CIRCUITS_QUEUED_GRACE": "2", "CIRCUITS_REAP_INTERVAL": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    store = open_store(env["CIRCUITS_DATABASE_URL"])
    job_id = submit(request(model_dir, task="number-words"), store).job_ids[0]
    client = redis.Redis.from_url(env["CIRCUITS_BROKER_URL"])
    client.delete(env["CIRCUITS_REDIS_PREFIX"] + env["CIRCUITS_QUEUE"])  # the broker loses it
    client.close()
    assert queue_length(env) == 0
    with workers(env, tmp_path, 1) as (w,):
        job = wait_done(store, job_id, timeout=200)
        assert "reaper: republished" in w.log()
    assert job.status.value == "succeeded"
    store.close()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sigkilled_worker_at_default_settings_recovers_within_stale_after_plus_a_minute(
    services, monkeypatch, long_model_dir, tmp_path
):
    """Every interval at its default (stale 120 s, heartbeat 10 s, reaper 15 s, visibility 6 h): two
    workers; the one running the job is SIGKILLed; the other's reaper republishes the job once its
    heartbeat is stale, and the job ends with the uninterrupted run's circuit within stale-after + 60 s
    of the kill (it used to stall for the 6-hour visibility timeout)."""
    from dataclasses import replace

    from discovery.service import reload_settings
    from discovery.store import open_store

    keep = (
        "CIRCUITS_DATABASE_URL",
        "CIRCUITS_BROKER_URL",
        "CIRCUITS_REDIS_PREFIX",
        "CIRCUITS_QUEUE",
        "OMP_NUM_THREADS",
    )
    env = {k: v for k, v in services.items() if k in keep or k == "CIRCUITS_RESULT_BACKEND"}
    for k in services:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    defaults = reload_settings()
    assert (defaults.stale_after, defaults.reap_interval) == (120.0, 15.0)
    store = open_store(env["CIRCUITS_DATABASE_URL"])
    # a seed no other test uses: every evaluation is computed here, none served from earlier tests' rows
    req = replace(request(long_model_dir, method="exhaustive", **LONG_PARAMS), seed=17)
    pool = [Worker(env, tmp_path, "alpha").start(), Worker(env, tmp_path, "beta").start()]
    try:
        job_id = submit(req, store).job_ids[0]
        wait_for(lambda: store.job_evaluation_count(job_id) >= 500, 300, interval=0.1, what="500 evaluations")
        holder = store.get_job(job_id).worker_id or ""
        victim = next(w for w in pool if holder.startswith(w.name + "@"))
        victim.kill()  # SIGKILL: no shutdown, the message stays unacknowledged
        killed = time.monotonic()
        assert not store.get_job(job_id).is_finished(), "the job ended before the kill: make it longer"
        job = wait_done(store, job_id, timeout=defaults.stale_after + 240)
        recovered_in = time.monotonic() - killed
    finally:
        for w in pool:
            w.kill()
        monkeypatch.undo()
        reload_settings()
    survivor = next(w for w in pool if w is not victim)
    assert job.status.value == "succeeded", (job.error_type, job.error_message, survivor.log()[-3000:])
    assert job.worker_id.startswith(survivor.name + "@") and job.attempts >= 2
    assert recovered_in <= defaults.stale_after + 60, f"recovered {recovered_in:.0f} s after the kill"
    ref, ref_sub = in_process(req, tmp_path)
    assert job.result_circuit == ref.get_job(ref_sub.job_ids[0]).result_circuit
    store.close()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_message_the_broker_lost_is_requeued_from_the_job_row(service_env, store, model_dir, tmp_path):
    import redis

    job_id = submit(request(model_dir, task="months"), store).job_ids[0]
    client = redis.Redis.from_url(service_env["CIRCUITS_BROKER_URL"])
    client.delete(service_env["CIRCUITS_REDIS_PREFIX"] + service_env["CIRCUITS_QUEUE"])  # the broker loses it
    client.close()
    assert queue_length(service_env) == 0
    out = run_cli(["requeue", str(job_id)], service_env)
    assert out.returncode == 0 and f"requeued 1 job(s): {job_id}" in out.stdout, out.stderr
    with workers(service_env, tmp_path, 1):
        assert wait_done(store, job_id).status.value == "succeeded"
        # and the CLI's --wait follows a queued job to its result
        waited = run_cli(
            [
                "submit",
                "--task",
                "digits",
                "--method",
                "greedy",
                "--target",
                "0.8",
                "--model",
                str(model_dir),
                "--n",
                str(N_PROMPTS),
                "--wait",
            ],
            service_env,
            timeout=240,
        )
    assert waited.returncode == 0, waited.stderr
    assert "succeeded" in waited.stdout and "circuit" in waited.stdout


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_database_away_mid_job_is_retried_and_resumed(service_env, store, long_model_dir, tmp_path):
    """The worker reaches PostgreSQL through a proxy we drop for a few seconds mid-job: the task
    retries, takes its job over once the heartbeat is stale and finishes it from the stored evaluations."""
    from sqlalchemy.engine import make_url

    url = make_url(service_env["CIRCUITS_DATABASE_URL"])
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    via_proxy = {
        **service_env,
        "CIRCUITS_DATABASE_URL": url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
    }
    # its own dataset (seed 7): nothing stored by other tests serves it
    req = JobRequest(
        task="digits", method="exhaustive", model=str(long_model_dir), params=LONG_PARAMS, n=N_PROMPTS, seed=7
    )
    worker = Worker(via_proxy, tmp_path, "db-behind-proxy").start()
    try:
        job_id = submit(req, store).job_ids[0]
        wait_for(lambda: store.job_evaluation_count(job_id) >= 500, 240, interval=0.05, what="500 evaluations")
        proxy.stop()  # the database disappears mid-job ...
        time.sleep(3)
        proxy.start()  # ... and comes back
        job = wait_done(store, job_id, timeout=300)
        log = worker.log()
    finally:
        worker.kill()
        proxy.stop()
    assert job.status.value == "succeeded", (job.error_type, job.error_message, log[-3000:])
    assert "Retry in" in log and "StoreError" in log  # the task was retried after the store failed
    assert job.attempts >= 2
    rows, keys = evaluation_rows(store)
    assert rows == keys
    ref, ref_sub = in_process(req, tmp_path)
    ref_job = ref.get_job(ref_sub.job_ids[0])
    assert job.result_circuit == ref_job.result_circuit
    assert set(job_circuits(store, job_id)) == set(job_circuits(ref, ref_job.id))


def test_circuits_worker_starts_celery_again_when_it_dies(tmp_path):
    """The supervisor behind ``circuits worker``: a child that dies is started again; a clean exit ends it."""
    import sys

    from discovery.cli.service_commands import _supervise

    flag = tmp_path / "died-once"
    child = [
        sys.executable,
        "-c",
        f"import pathlib, sys; p = pathlib.Path({str(flag)!r}); "
        "sys.exit(0) if p.exists() else (p.write_text('x'), sys.exit(3))",
    ]
    started = time.monotonic()
    assert _supervise(child, dict(os.environ)) == 0
    assert flag.exists() and time.monotonic() - started >= 1.0  # it died, waited, ran again


def test_a_killed_in_process_run_is_marked_failed_by_the_next_one(tmp_path, model_dir):
    """A SIGKILLed in-process run cannot end its row; the next in-process submit finds its heartbeat
    stale (aged explicitly here) and marks it failed, so no row stays "running" forever."""
    from discovery.service import fail_abandoned
    from discovery.store import open_store
    from tests.store_samples import age_heartbeat

    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    dead = store.create_job("greedy", {"target": 0.9}, "digits", str(model_dir))
    store.claim_job(dead, "in-process@gone:1")
    assert fail_abandoned(store) == []  # its heartbeat is fresh: maybe still alive
    age_heartbeat(store, dead, seconds=3600)
    assert fail_abandoned(store) == [dead]
    job = store.get_job(dead)
    assert job.status.value == "failed" and job.error_type == "Abandoned"
    store.close()


@pytest.mark.slow  # over 20 s on the loaded 2-core machine (quick-tier durations, tests/conftest.py)
def test_exit_codes_of_in_process_jobs_failed_and_interrupted(tmp_path, long_model_dir):
    """A failed in-process job exits 1 (it used to exit 0); Ctrl-C exits 130 and leaves its job cancelled."""
    import signal
    import subprocess
    import sys

    from discovery.store import open_store
    from tests.service_fixtures import ROOT

    env = {"CIRCUITS_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}", "CIRCUITS_BROKER_URL": ""}
    base = ["submit", "--method", "exhaustive", "--model", str(long_model_dir), "--n", str(N_PROMPTS)]
    # the search itself refuses (more circuits than max_circuits): the job fails while running
    failed = run_cli([*base, "--param", "k=5", "--param", "max_circuits=10"], env, timeout=300)
    assert failed.returncode == 1, failed.stderr
    assert "failed" in failed.stdout and "max_circuits" in failed.stdout
    code = "import sys; from discovery.cli import main; main(sys.argv[1:])"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *base, "--param", "k=5", "--param", "target=2.0"],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = open_store(env["CIRCUITS_DATABASE_URL"])
    try:
        wait_for(
            lambda: any(store.job_evaluation_count(j.id) > 50 for j in store.list_jobs(status="running")),
            240,
            what="the job running",
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert store.list_jobs(limit=1)[0].status.value == "cancelled"
    store.close()


def test_a_first_use_training_reports_its_steps_as_the_jobs_progress(tmp_path, long_model_dir, monkeypatch):
    """A reference model trained on first use (minutes) shows as the job's progress, not as silence."""
    from discovery import reference as model_module
    from discovery.service import run_job
    from discovery.service.evaluators import _MODEL_CACHE
    from discovery.store import open_store

    real_load = model_module.load_model

    def training_load(spec, device="cpu", progress=None):
        progress(5, 10, "training ref:fake: loss 1.000")
        return real_load(spec, device=device)

    monkeypatch.setattr(model_module, "load_model", training_load)
    _MODEL_CACHE.clear()
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    job = store.create_job("topk", {"k": 2}, "digits", str(long_model_dir), config={"n": N_PROMPTS})
    heard: list[tuple] = []
    outcome = run_job(job, store, worker_id="w", progress=lambda d, t, m: heard.append((d, t, m)))
    assert outcome == "succeeded", store.get_job(job).error_message
    assert (5, 10, "training ref:fake: loss 1.000") in heard
    _MODEL_CACHE.clear()
    store.close()
