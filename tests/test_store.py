"""The store's contract, run on SQLite and (``integration``) the real PostgreSQL on localhost."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from discovery.scoring.evaluator import Evaluator
from discovery.scoring.stored import StoredEvaluator
from discovery.search import run_search
from discovery.store import JobStatus, PatchingCell, ReadOnlyViolation, migrate, open_store
from discovery.store.engine import make_engine
from discovery.store.readonly import check_read_only, run_read_only
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit
from discovery.types.errors import StoreError, UsageError
from discovery.types.evaluation import Ablation, EvaluationMethod, Score
from tests.store_fixtures import BACKENDS, db_url, pg_database, store  # noqa: F401  (fixtures)
from tests.store_samples import METHOD, age_heartbeat, synthetic_scores

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"models", "datasets", "jobs", "circuits", "evaluations", "patching_results", "alembic_version"}


@pytest.fixture(scope="module")
def dataset(tokenizer):
    return build_dataset(get_task("digits"), tokenizer, n=8, seed=0)


@pytest.fixture
def ids(store, tiny_model, dataset):
    return store.get_or_create_model(tiny_model.identity).id, store.get_or_create_dataset(dataset).id


# --- migrations ----------------------------------------------------------------------------------
def test_alembic_upgrade_head_from_empty(db_url):
    """The developer path (`alembic upgrade head` with the repo's alembic.ini) creates every table."""
    env = dict(os.environ, CIRCUITS_DATABASE_URL=db_url)
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    engine = make_engine(db_url)
    assert TABLES <= set(sa.inspect(engine).get_table_names())
    assert migrate.current_revisions(engine) == migrate.head_revisions() == ("0004",)
    engine.dispose()


def test_migrations_match_models_and_downgrade(db_url):
    """`circuits db upgrade`'s path (Config from Python); the migration equals the models; down and up again."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from discovery.store.models import Base

    engine = make_engine(db_url)
    assert migrate.upgrade(engine) == ("0004",)
    assert migrate.upgrade(engine) == ("0004",)  # again: nothing to do
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    cfg = migrate.alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert not (set(sa.inspect(engine).get_table_names()) & (TABLES - {"alembic_version"}))
    migrate.upgrade(engine)
    assert TABLES <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_open_store_migrates_an_empty_database(db_url):
    s = open_store(db_url)
    assert TABLES <= set(sa.inspect(s.engine).get_table_names())
    assert s.count_evaluations() == 0
    s.close()


def test_outdated_or_unknown_schema_is_refused(db_url, monkeypatch):
    open_store(db_url).close()
    monkeypatch.setattr(migrate, "head_revisions", lambda: ("0005_future",))
    monkeypatch.setattr(migrate, "known_revisions", lambda: {"0001_initial", "0002", "0003", "0004", "0005_future"})
    with pytest.raises(StoreError, match="circuits db upgrade"):
        open_store(db_url)
    monkeypatch.undo()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    engine.dispose()
    with pytest.raises(StoreError, match="does not know"):
        open_store(db_url)


# --- records ---------------------------------------------------------------------------------------
def test_records_read_back_equal_what_was_written(store, tiny_model, dataset):
    model = store.get_or_create_model(tiny_model.identity)
    assert store.get_or_create_model(tiny_model.identity) == model == store.get_model(model.id)
    assert model.identity == tiny_model.identity  # the whole identity, d_mlp and vocab size included
    assert (model.name, model.weight_hash, model.n_layers) == (
        tiny_model.identity.name,
        tiny_model.identity.weight_hash,
        2,
    )
    ds = store.get_or_create_dataset(dataset)
    assert store.get_or_create_dataset(dataset) == ds == store.get_dataset(ds.id)
    assert (ds.task, ds.n_prompts, ds.seed, ds.prompt_hash) == ("digits", 8, 0, dataset.prompt_hash)
    assert ds.params == dict(dataset.spec.params)

    scores = synthetic_scores(5)
    nan = Score(
        Circuit.parse("0.0 | embed->0.0.v, 0.0->logits"),
        0.25,
        float("nan"),
        0.5,
        0.5,
        EvaluationMethod("zero", "x:clean", "edge", True, "prob_diff"),
    )
    job = store.create_job("greedy", {"target": 0.9}, "digits", model.name, config={"n": 8})
    assert store.save_scores(scores + [nan], model.id, ds.id, job_id=job) == 6
    assert store.save_scores(scores, model.id, ds.id) == 0  # already stored: a cache hit, not an error
    got = store.lookup([s.circuit for s in scores], model.id, ds.id, METHOD)
    assert [got[s.circuit.key] for s in scores] == scores
    back = store.lookup([nan.circuit], model.id, ds.id, nan.method)[nan.circuit.key]
    assert math.isnan(back.normalised) and back.circuit == nan.circuit and back.method == nan.method
    assert (
        store.lookup(
            [scores[0].circuit],
            model.id,
            ds.id,
            EvaluationMethod("resample", METHOD.source, "node", False, "logit_diff"),
        )
        == {}
    )
    assert store.job_evaluation_count(job) == 6
    records = store.scores_for_circuit(scores[2].circuit)
    assert [r.score for r in records] == [scores[2]] and records[0].task == "digits" and records[0].job_id == job

    rec = store.get_job(job)
    assert (rec.method, rec.params, rec.config, rec.task, rec.model, rec.status) == (
        "greedy",
        {"target": 0.9},
        {"n": 8},
        "digits",
        model.name,
        JobStatus.QUEUED,
    )
    assert rec.created_at is not None and rec.created_at.tzinfo is not None and not rec.is_finished()

    cells = [PatchingCell("logits", 0, 1, 0.5), PatchingCell("logits", 1, -1, -0.25), PatchingCell("1.2.q", 0, 3, 1.0)]
    assert store.save_patching(cells, model.id, ds.id) == 3
    assert store.save_patching(cells, model.id, ds.id) == 0
    assert sorted(store.get_patching(model.id, ds.id), key=str) == sorted(cells, key=str)
    assert store.get_patching(model.id, ds.id, receiver="1.2.q") == [cells[2]]


def test_job_lifecycle_and_claims(store, tiny_model):
    from discovery.search.base import SearchResult

    job = store.create_job("greedy", {}, "digits", "m", tasks=["digits", "months"], total=10)
    assert store.claim_job(job, "w1") is True
    assert store.claim_job(job, "w2") is False  # running with a fresh heartbeat
    assert store.heartbeat(job, "w1") and not store.heartbeat(job, "w2")
    assert store.update_progress(job, 3, 10, "step 3", worker_id="w1")
    age_heartbeat(store, job, seconds=3600)  # explicitly old (not a race against the clock's resolution)
    assert store.claim_job(job, "w2") is True  # stale heartbeat: re-claimed at the default stale time
    rec = store.get_job(job)
    assert (rec.worker_id, rec.attempts, rec.progress_done, rec.progress_message, rec.tasks) == (
        "w2",
        2,
        3,
        "step 3",
        ("digits", "months"),
    )
    assert not store.heartbeat(job, "w1")  # the old worker learns it lost the job
    assert store.stale_jobs() == []  # w2's claim beat its heart
    age_heartbeat(store, job, seconds=3600)
    assert [j.id for j in store.stale_jobs()] == [job]
    assert store.claim_job(job, "w2") is True  # a worker's own retry reclaims its job at once
    assert store.get_job(job).attempts == 3
    with pytest.raises(UsageError, match="above 0"):
        store.claim_job(job, "w3", stale_after=0.0)

    circuit = Circuit.parse("0.1,1.2")
    score = Score(circuit, 0.3, 0.8, 0.4, -0.1, METHOD)
    result = SearchResult("greedy", {"target": 0.8}, circuit, score, 12, 1.5, (score,), {"path": ["0.1"]})
    assert store.finish_job(job, result)
    rec = store.get_job(job)
    assert rec.status is JobStatus.SUCCEEDED and rec.is_finished() and rec.result_circuit == circuit
    assert rec.result_score["normalised"] == 0.8 and rec.result_score["n_evaluations"] == 12
    assert rec.finished_at >= rec.started_at
    assert not store.cancel_job(job) and not store.fail_job(job, "E", "late")  # finished jobs never move
    assert not store.claim_job(job, "w3")

    other = store.create_job("acdc", {"tau": 0.1}, "months", "m")
    assert store.cancel_job(other) and store.get_job(other).status is JobStatus.CANCELLED
    assert not store.claim_job(other, "w1")
    failing = store.create_job("eap", {}, "digits", "m")
    assert store.claim_job(failing, "w1")
    assert store.fail_job(failing, "ValueError", "bad", "Traceback ...")
    rec = store.get_job(failing)
    assert (rec.status, rec.error_type, rec.error_message, rec.error_traceback) == (
        JobStatus.FAILED,
        "ValueError",
        "bad",
        "Traceback ...",
    )
    assert [j.id for j in store.list_jobs()] == [failing, other, job]
    assert [j.id for j in store.list_jobs(status="cancelled")] == [other]
    with pytest.raises(UsageError, match="no job"):
        store.get_job(9999)
    with pytest.raises(UsageError, match="no job"):
        store.claim_job(9999, "w")


def test_only_one_of_many_concurrent_claims_wins(db_url):
    open_store(db_url).close()
    stores = [open_store(db_url) for _ in range(6)]
    jobs = [stores[0].create_job("greedy", {}, "digits", "m") for _ in range(5)]
    wins: dict[int, list[str]] = {j: [] for j in jobs}
    barrier = threading.Barrier(len(stores))

    def worker(i: int) -> None:
        barrier.wait()
        for j in jobs:
            if stores[i].claim_job(j, f"w{i}"):
                wins[j].append(f"w{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(w) == 1 for w in wins.values()), wins
    assert all(stores[0].get_job(j).worker_id == wins[j][0] for j in jobs)
    for s in stores:
        s.close()


# --- the cache -----------------------------------------------------------------------------------------
def test_repeated_evaluate_costs_no_forward_pass(store, tiny_model, dataset):
    circuits = [Circuit.parse(t) for t in ("0.1", "0.1,1.2", "1.0,1.3", "0.0,0.1,0.2", "0.1")]
    first = StoredEvaluator(Evaluator(tiny_model, dataset), store, batch_size=2)
    scores = first.evaluate(circuits)
    assert first.evaluator.forward_count > 0 and first.cache_misses == 4 and first.cache_hits == 0
    assert store.count_evaluations() == 4

    inner = Evaluator(tiny_model, dataset)
    again = StoredEvaluator(inner, store)
    assert again.evaluate(circuits) == scores
    assert (inner.forward_count, again.cache_hits, again.cache_misses) == (0, 5, 0)
    assert (again.full_metric, again.ablated_metric) == (scores[0].full, scores[0].ablated)
    assert inner.forward_count == 0  # the two ends came from the store too
    assert again.shape == tiny_model.shape and again.method("node") == scores[0].method  # delegated

    mixed = again.evaluate(circuits[:2] + [Circuit.parse("1.1")])
    # one new circuit computed; the wrapped evaluator (never written into) computes its own two ends once
    assert inner.forward_count == 1 + 2 and again.cache_misses == 1 and mixed[:2] == scores[:2]
    assert mixed[2].full == scores[0].full and mixed[2].ablated == scores[0].ablated  # the same ends as stored
    assert not hasattr(again, "__getattr__") and "full_metric" in vars(inner)  # computed by itself, not seeded
    other = StoredEvaluator(Evaluator(tiny_model, dataset, Ablation(kind="zero")), store)
    other.evaluate(circuits[:1])
    assert other.cache_misses == 1  # another ablation is another evaluation


def test_search_rerun_hits_the_cache_for_every_circuit(store, tiny_model, dataset):
    params = {"target": 0.9}
    first_inner = Evaluator(tiny_model, dataset)
    first = run_search("greedy", StoredEvaluator(first_inner, store, job_id=None), params)
    stored = store.count_evaluations()
    assert stored > 0 and first_inner.forward_count > 0
    inner = Evaluator(tiny_model, dataset)
    wrapped = StoredEvaluator(inner, store)
    second = run_search("greedy", wrapped, params)
    assert inner.forward_count == 0 and wrapped.cache_misses == 0 and wrapped.cache_hits == second.n_evaluations
    assert second.circuit == first.circuit and second.score == first.score
    assert store.count_evaluations() == stored


# --- crashes --------------------------------------------------------------------------------------------
class _Boom(RuntimeError):
    pass


def test_an_exception_mid_run_keeps_every_committed_batch(store, tiny_model, dataset):
    inner = Evaluator(tiny_model, dataset, circuits_per_pass=2)
    calls = {"n": 0}
    real = inner.evaluate

    def flaky(circuits, progress=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Boom("worker died")
        return real(circuits, progress)

    inner.evaluate = flaky  # type: ignore[method-assign]
    wrapped = StoredEvaluator(inner, store, batch_size=2)
    circuits = [Circuit.parse(t) for t in ("0.0", "0.1", "0.2", "0.3", "1.0", "1.1")]
    with pytest.raises(_Boom):
        wrapped.evaluate(circuits)
    assert store.count_evaluations() == 4  # two whole passes of two
    resumed_inner = Evaluator(tiny_model, dataset)
    resumed = StoredEvaluator(resumed_inner, store)
    resumed.evaluate(circuits)
    assert (resumed.cache_hits, resumed.cache_misses) == (4, 2)


_CRASH_CHILD = r"""
import os, sys
import sqlalchemy as sa
from tests.store_samples import synthetic_scores
from discovery.store import open_store
url, model_id, dataset_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = open_store(url)
store.save_scores(synthetic_scores(40), model_id, dataset_id)  # batch 1: committed

@sa.event.listens_for(store.engine, "after_cursor_execute")
def die(conn, cursor, statement, parameters, context, executemany):
    if "INSERT INTO evaluations" in statement:  # batch 2's rows are in the transaction, not committed
        os._exit(17)

store.save_scores(synthetic_scores(40, offset=40), model_id, dataset_id)
os._exit(0)
"""


def test_a_process_killed_mid_batch_leaves_only_whole_committed_rows(store, ids, db_url):
    model_id, dataset_id = ids
    done = subprocess.run(
        [sys.executable, "-c", _CRASH_CHILD, db_url, str(model_id), str(dataset_id)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 17, done.stderr
    assert store.count_evaluations() == 40
    written = synthetic_scores(40)
    got = store.lookup([s.circuit for s in written], model_id, dataset_id, METHOD)
    assert [got[s.circuit.key] for s in written] == written  # every committed row whole and equal
    lost = synthetic_scores(40, offset=40)
    assert store.lookup([s.circuit for s in lost], model_id, dataset_id, METHOD) == {}
    _, rows = store.read_only_sql("SELECT count(*) FROM circuits")
    assert rows[0][0] == 40  # batch 2's circuits went with its transaction
    assert store.save_scores(lost, model_id, dataset_id) == 40  # and the store is fine afterwards


# --- concurrent writers -----------------------------------------------------------------------------------
def _write_same_scores(url: str, model_id: int, dataset_id: int, barrier, queue) -> None:  # type: ignore[no-untyped-def]
    from discovery.store import open_store as open_

    s = open_(url)
    barrier.wait()
    inserted = 0
    for start in range(0, 200, 25):
        inserted += s.save_scores(synthetic_scores(25, offset=start), model_id, dataset_id)
    queue.put(inserted)
    s.close()


def test_concurrent_processes_writing_the_same_evaluations_leave_one_row_each(store, ids, db_url):
    model_id, dataset_id = ids
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_write_same_scores, args=(db_url, model_id, dataset_id, barrier, queue)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    inserted = [queue.get(timeout=5) for _ in procs]
    assert sum(inserted) == 200  # every evaluation inserted exactly once; the others were cache hits
    assert store.count_evaluations() == 200
    _, rows = store.read_only_sql("SELECT count(*), count(DISTINCT circuit_id) FROM evaluations")
    assert tuple(rows[0]) == (200, 200)


def test_concurrent_threads_with_separate_engines(db_url, tiny_model, dataset):
    stores = [open_store(db_url) for _ in range(4)]
    model_id = stores[0].get_or_create_model(tiny_model.identity).id
    dataset_id = stores[0].get_or_create_dataset(dataset).id
    results: list[int] = []
    barrier = threading.Barrier(len(stores))

    def write(s):  # type: ignore[no-untyped-def]
        barrier.wait()
        results.append(s.save_scores(synthetic_scores(100), model_id, dataset_id))

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 100 and stores[0].count_evaluations() == 100
    for s in stores:
        s.close()


# --- read-only SQL -----------------------------------------------------------------------------------------
WRITES = [
    "DELETE FROM evaluations",
    "UPDATE circuits SET size = 0",
    "INSERT INTO models (name, architecture, weight_hash, n_layers, n_heads, d_model) VALUES ('x','y','z',1,1,1)",
    "DROP TABLE evaluations",
    "WITH gone AS (DELETE FROM circuits RETURNING *) SELECT count(*) FROM gone",
    "SELECT 1; DELETE FROM circuits",
    "select 1 ; commit; drop table jobs",
    "/* harmless */ delete from jobs -- really",
    "SELECT * INTO copy_of_jobs FROM jobs",
    "CREATE TABLE t (a int)",
    "PRAGMA query_only = OFF",
    "EXPLAIN ANALYZE DELETE FROM circuits",
]


def _row_counts(store) -> tuple:  # type: ignore[no-untyped-def]
    return tuple(
        store.read_only_sql(f"SELECT count(*) FROM {t}")[1][0][0]
        for t in ("models", "datasets", "circuits", "evaluations", "jobs")
    )


def test_sql_refuses_every_write(store, ids):
    store.save_scores(synthetic_scores(3), *ids)
    store.create_job("greedy", {}, "digits", "m")
    before = _row_counts(store)
    for statement in WRITES:
        with pytest.raises(ReadOnlyViolation):
            store.read_only_sql(statement)
    assert _row_counts(store) == before
    columns, rows = store.read_only_sql(
        "SELECT c.canonical, e.score FROM evaluations e JOIN circuits c ON c.id = e.circuit_id "
        "WHERE c.canonical LIKE '%0.0%' ORDER BY e.score"
    )
    assert columns == ["canonical", "score"] and [r[0] for r in rows] == ["0.0", "0.0,0.1"]
    assert store.read_only_sql("SELECT replace(canonical, ',', ' ') AS r FROM circuits WHERE size = 2")[1] == [
        ("0.0 0.1",)
    ]


@pytest.mark.parametrize("statement", [w for w in WRITES if not w.startswith("PRAGMA")])
def test_the_database_itself_refuses_writes_the_guard_missed(store, ids, statement):
    """run_read_only alone (no keyword check): the read-only transaction / query_only connection refuses."""
    store.save_scores(synthetic_scores(3), *ids)
    store.create_job("greedy", {}, "digits", "m")
    before = _row_counts(store)
    try:
        run_read_only(store.engine, statement)
    except (ReadOnlyViolation, StoreError):
        pass  # refused (on SQLite a CTE write or a second statement is an error of its own)
    assert _row_counts(store) == before
    assert "copy_of_jobs" not in sa.inspect(store.engine).get_table_names()


def test_guard_reads_literals_and_comments():
    check_read_only("SELECT 'DELETE FROM x; DROP TABLE y' AS s -- ; delete\n")
    check_read_only('SELECT "update" FROM t;')
    check_read_only("SELECT $$ ; drop table x $$")
    with pytest.raises(ReadOnlyViolation, match="2 statements"):
        check_read_only("SELECT ';'; SELECT 2")
    with pytest.raises(ReadOnlyViolation, match="empty"):
        check_read_only(" -- nothing\n ; ")


def test_cli_sql_refuses_and_prints(store, ids, db_url, capsys):
    from discovery.cli import main

    store.save_scores(synthetic_scores(2), *ids)
    with pytest.raises(SystemExit) as exit_info:
        main(["sql", "DELETE FROM evaluations", "--db", db_url])
    assert exit_info.value.code == 2  # a usage error
    assert "read-only" in capsys.readouterr().err
    main(["sql", "SELECT count(*) AS n FROM evaluations", "--db", db_url, "--format", "csv"])
    assert capsys.readouterr().out.split() == ["n", "2"]
    main(["sql", "SELECT size FROM circuits ORDER BY size", "--db", db_url, "--format", "json"])
    assert capsys.readouterr().out.strip() == '[{"size": 1}, {"size": 1}]'


# the audit's injection strings (issue 17): each either smuggled a second statement past the old keyword
# check, or wrote / ran programs / read files / signalled backends as the store's superuser
def _injections(marker: Path) -> list[str]:
    return [
        "SELECT name'\\'; COMMIT; BEGIN READ WRITE; DELETE FROM jobs; SELECT 'x'",
        "SELECT 1 --\r; COMMIT; BEGIN READ WRITE; DELETE FROM evaluations",
        "SELECT 1 --\r; SET statement_timeout = 0",
        f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
        f"COPY jobs TO '{marker}'",
        "SELECT pg_read_file('/etc/hostname')",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
        f"ATTACH DATABASE '{marker}' AS smuggled",
        f"VACUUM INTO '{marker}'",
        "SELECT set_config('role', 'postgres', false); DELETE FROM jobs",
    ]


def test_injections_are_refused_by_construction_and_write_nothing(store, ids, tmp_path):
    """Past the keyword check (run_read_only alone) and through it (read_only_sql): refused, nothing
    written, no file created, no other backend signalled."""
    store.save_scores(synthetic_scores(3), *ids)
    store.create_job("greedy", {}, "digits", "m")
    before = _row_counts(store)
    marker = tmp_path / "written-by-sql"
    ran = []
    with store.engine.connect() as bystander:  # a backend pg_terminate_backend would kill
        for statement in _injections(marker):
            for run in (lambda s: run_read_only(store.engine, s), store.read_only_sql):
                try:
                    run(statement)
                    ran.append(statement)
                except (ReadOnlyViolation, StoreError):
                    pass
        assert bystander.exec_driver_sql("SELECT 1").scalar_one() == 1
    # PostgreSQL refuses every one; SQLite reads "--\r;..." as one commented-out SELECT 1 (its comments
    # end at a newline only), harmless, and rejects the rest
    assert ran == ([] if store.dialect == "postgresql" else _injections(marker)[1:3])
    assert _row_counts(store) == before
    assert not marker.exists()
    # the friendly check now reads the two strings that fooled it
    for statement in _injections(marker)[:3]:
        with pytest.raises(ReadOnlyViolation, match="statements"):
            check_read_only(statement)


@pytest.mark.integration
def test_postgresql_sql_runs_as_the_select_only_role(pg_database):
    from tests.store_fixtures import _pg_schema_url

    store = open_store(_pg_schema_url(pg_database))
    try:
        columns, rows = run_read_only(
            store.engine,
            "SELECT current_user, r.rolsuper, current_setting('transaction_read_only'), "
            "current_setting('statement_timeout') FROM pg_roles r WHERE r.rolname = current_user",
        )
        assert rows == [("circuits_reader", False, "on", "30s")]
    finally:
        store.close()


def test_an_endless_query_is_stopped_at_its_timeout(store):
    """The timeout's plumbing at one second (the default's 30 s is the slow test below)."""
    endless = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
    started = time.monotonic()
    with pytest.raises(StoreError, match="timeout"):
        store.read_only_sql(endless, timeout=1.0)
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_an_endless_query_is_stopped_at_the_default_timeout(store):
    from discovery.store.readonly import DEFAULT_TIMEOUT

    endless = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
    started = time.monotonic()
    with pytest.raises(StoreError, match="30 s timeout"):
        store.read_only_sql(endless)
    assert DEFAULT_TIMEOUT - 1 < time.monotonic() - started < DEFAULT_TIMEOUT + 15


def test_a_huge_result_is_cut_while_fetching(store):
    """20 M rows, 10 wanted: the row limit applies while streaming (the old code held every row first)."""
    huge = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 20000000) SELECT i FROM r"
    started = time.monotonic()
    columns, rows = store.read_only_sql(huge, max_rows=10)
    assert rows == [(i,) for i in range(1, 11)]
    assert time.monotonic() - started < 10  # all 20 M would take minutes


def test_reading_commands_refuse_a_mistyped_sqlite_path(tmp_path):
    from discovery.cli import main

    missing = tmp_path / "typo" / "circuits.db"
    for args in (["sql", "SELECT 1"], ["runs"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--db", f"sqlite:///{missing}"])
        assert exit_info.value.code == 1
    assert not missing.exists() and not missing.parent.exists()


# --- the storage contract: one test class, run on SQLite, PostgreSQL and the in-memory fake ----------------
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration), "memory"])
def storage(request, tmp_path):  # type: ignore[no-untyped-def]
    """Each backend, opened the way every caller opens one: by its URL, through ``open_store``."""
    if request.param == "memory":
        url = "memory:"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'c.db'}"
    else:
        from tests.store_fixtures import _pg_schema_url

        url = _pg_schema_url(request.getfixturevalue("pg_database"))
    s = open_store(url)
    yield s
    if hasattr(s, "close"):
        s.close()


def _age(storage, job_id: int, seconds: float) -> None:  # type: ignore[no-untyped-def]
    if hasattr(storage, "age_heartbeat"):
        storage.age_heartbeat(job_id, seconds)
    else:
        age_heartbeat(storage, job_id, seconds)


class TestStorageContract:
    """What :class:`discovery.store.base.Storage` documents, held by every implementation."""

    def test_it_is_a_storage(self, storage):
        from discovery.store.base import Storage

        assert isinstance(storage, Storage)

    def test_records_read_back(self, storage, tiny_model, dataset):
        model = storage.get_or_create_model(tiny_model.identity)
        assert storage.get_or_create_model(tiny_model.identity) == model == storage.get_model(model.id)
        assert model.identity == tiny_model.identity
        ds = storage.get_or_create_dataset(dataset)
        assert storage.get_or_create_dataset(dataset) == ds == storage.get_dataset(ds.id)
        assert (ds.task, ds.n_prompts, ds.prompt_hash) == ("digits", dataset.n, dataset.prompt_hash)
        with pytest.raises(UsageError, match="no stored model"):
            storage.get_model(99_999)
        scores = synthetic_scores(5)
        assert storage.save_scores(scores, model.id, ds.id) == 5
        assert storage.save_scores(scores[:3] + synthetic_scores(2, offset=5), model.id, ds.id) == 2
        assert storage.count_evaluations() == 7
        found = storage.lookup([s.circuit for s in scores], model.id, ds.id, METHOD)
        assert {k: (v.metric, v.normalised) for k, v in found.items()} == {
            s.circuit.key: (s.metric, s.normalised) for s in scores
        }
        other = EvaluationMethod("zero", METHOD.source, "node", False, "logit_diff")
        assert storage.lookup([scores[0].circuit], model.id, ds.id, other) == {}
        assert storage.baseline(model.id, ds.id, METHOD) == (scores[0].full, scores[0].ablated)
        assert storage.baseline(model.id, ds.id, other) is None
        # one edge circuit scored with the embedding kept and with its edges ablatable: two rows
        edge_circuit = Circuit.parse("0.0 | embed->0.0.v, 0.0->logits")
        kept = EvaluationMethod("resample", METHOD.source, "edge", True, "kl")
        prunable = EvaluationMethod("resample", METHOD.source, "edge", True, "kl", ablate_embed=True)
        pair = [Score(edge_circuit, 0.1, 0.9, 1.0, 0.0, kept), Score(edge_circuit, 0.3, 0.7, 1.0, 0.0, prunable)]
        assert storage.save_scores(pair, model.id, ds.id) == 2
        for score in pair:
            back = storage.lookup([edge_circuit], model.id, ds.id, score.method)[edge_circuit.key]
            assert (back.metric, back.method) == (score.metric, score.method)
        assert "embedding edges ablatable" in prunable.describe() and "embedding" not in kept.describe()

    def test_job_lifecycle_and_claims(self, storage):
        from discovery.search.base import SearchResult

        job = storage.create_job("greedy", {"target": 0.8}, "digits", "m", config={"n": 8})
        assert storage.get_job(job).status is JobStatus.QUEUED
        assert storage.claim_job(job, "w1") and not storage.claim_job(job, "w2")
        assert storage.update_progress(job, 2, 9, "two", worker_id="w1")
        assert storage.stale_jobs() == []
        _age(storage, job, 3600)
        assert [j.id for j in storage.stale_jobs()] == [job]
        assert storage.claim_job(job, "w2") and not storage.heartbeat(job, "w1")
        assert storage.claim_job(job, "w2")  # its own retry
        rec = storage.get_job(job)
        assert (rec.worker_id, rec.attempts, rec.progress_done, rec.config) == ("w2", 3, 2, {"n": 8})
        circuit = Circuit.parse("0.1")
        score = Score(circuit, 0.3, 0.8, 0.4, -0.1, METHOD)
        assert storage.finish_job(job, SearchResult("greedy", {}, circuit, score, 3, 0.1, (), {}))
        rec = storage.get_job(job)
        assert rec.status is JobStatus.SUCCEEDED and rec.result_circuit == circuit
        assert rec.result_score["normalised"] == 0.8
        assert (
            not storage.cancel_job(job) and not storage.fail_job(job, "E", "late") and not storage.claim_job(job, "w")
        )
        with pytest.raises(UsageError, match="no job"):
            storage.get_job(99_999)
        with pytest.raises(UsageError, match="above 0"):
            storage.claim_job(job, "w", stale_after=0)

    def test_one_of_many_threads_claiming_wins(self, storage):
        jobs = [storage.create_job("greedy", {}, "digits", "m") for _ in range(4)]
        wins: dict[int, list[str]] = {j: [] for j in jobs}
        barrier = threading.Barrier(6)

        def claim(i: int) -> None:
            barrier.wait()
            for j in jobs:
                if storage.claim_job(j, f"w{i}"):
                    wins[j].append(f"w{i}")

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(len(w) == 1 for w in wins.values()), wins

    def test_stored_evaluator_serves_what_it_stored(self, storage, tiny_model, dataset):
        circuits = [Circuit.parse(t) for t in ("0.1", "0.1,1.2", "1.0,1.3")]
        first = StoredEvaluator(Evaluator(tiny_model, dataset), storage)
        scores = first.evaluate(circuits)
        inner = Evaluator(tiny_model, dataset)
        again = StoredEvaluator(inner, storage)
        assert again.evaluate(circuits) == scores and inner.forward_count == 0 and again.cache_hits == 3

    def test_evaluations_read_back_with_their_origin(self, storage, tiny_model, dataset):
        model = storage.get_or_create_model(tiny_model.identity)
        ds = storage.get_or_create_dataset(dataset)
        job = storage.create_job("greedy", {}, "digits", model.name)
        scores = synthetic_scores(3)
        storage.save_scores(scores[:2], model.id, ds.id, job_id=job)
        storage.save_scores(scores[2:], model.id, ds.id)
        every = storage.evaluations()
        assert [r.circuit for r in every] == [s.circuit for s in scores]  # oldest first
        assert [r.id for r in every] == sorted(r.id for r in every)
        first = every[0]
        assert (first.model, first.model_id, first.task, first.dataset, first.dataset_id, first.job_id) == (
            model.name, model.id, "digits", ds.description, ds.id, job,
        )  # fmt: skip
        assert first.score.metric == scores[0].metric and first.method == METHOD and first.created_at is not None
        assert [r.circuit for r in storage.evaluations(job_id=job)] == [s.circuit for s in scores[:2]]
        assert storage.evaluations(task="other") == [] and storage.evaluations(model="other") == []
        assert len(storage.evaluations(task="digits", model=model.name, limit=2)) == 2
        (only,) = storage.scores_for_circuit(scores[1].circuit)
        assert (only.circuit, only.score.normalised, only.job_id) == (scores[1].circuit, scores[1].normalised, job)
        other = EvaluationMethod("zero", METHOD.source, "node", False, "logit_diff")
        storage.save_scores([Score(scores[1].circuit, 0.5, 0.5, 1.0, 0.0, other)], model.id, ds.id)
        assert [r.method for r in storage.scores_for_circuit(scores[1].circuit)] == [other, METHOD]  # newest first
        assert storage.scores_for_circuit(Circuit.parse("2.3")) == []

    def test_patching_cells_read_back(self, storage, tiny_model, dataset):
        cells = [PatchingCell("logits", 0, 1, 0.5), PatchingCell("logits", 0, 0, -0.25), ("1.2.q", 0, -1, 0.125)]
        assert storage.save_patching(cells, model=tiny_model.identity, dataset=dataset) == 3
        model = storage.get_or_create_model(tiny_model.identity)
        ds = storage.get_or_create_dataset(dataset)
        nan = [PatchingCell("logits", 1, 0, float("nan")), PatchingCell("logits", 0, 1, 9.0)]
        assert storage.save_patching(nan, model.id, ds.id) == 0  # NaN skipped, the stored cell kept
        assert storage.get_patching(model.id, ds.id) == [
            PatchingCell("1.2.q", 0, -1, 0.125), PatchingCell("logits", 0, 0, -0.25), PatchingCell("logits", 0, 1, 0.5),
        ]  # fmt: skip
        assert storage.get_patching(model.id, ds.id, receiver="1.2.q") == [PatchingCell("1.2.q", 0, -1, 0.125)]
        assert storage.get_patching(model.id, ds.id, kind="other") == []
        with pytest.raises(UsageError, match="model_id or model="):
            storage.save_patching(cells)

    def test_job_filter_values(self, storage):
        assert storage.job_filter_values() == {"model": [], "task": [], "method": []}
        for method, task, model in [("greedy", "ioi", "m2"), ("topk", "digits", "m1"), ("greedy", "digits", "m1")]:
            storage.create_job(method, {}, task, model)
        assert storage.job_filter_values() == {
            "model": ["m1", "m2"], "task": ["digits", "ioi"], "method": ["greedy", "topk"],
        }  # fmt: skip

    def test_a_finished_job_keeps_the_results_summary(self, storage):
        from discovery.search.base import SearchResult

        job = storage.create_job("greedy", {}, "digits", "m")
        circuit = Circuit.parse("0.1,1.2")
        score = Score(circuit, 0.3, float("nan"), 0.4, 0.4, METHOD)
        result = SearchResult("greedy", {"target": 0.8}, circuit, score, 7, 1.5, (), {"note": (1, 2)})
        assert storage.finish_job(job, result)
        assert storage.get_job(job).result_score == {
            "metric": 0.3, "normalised": None, "full": 0.4, "ablated": 0.4,
            "evaluation_method": {
                "ablation": "mean", "source": METHOD.source, "level": "node", "ablate_mlps": False,
                "metric": "logit_diff", "normaliser": METHOD.normaliser, "ablate_embed": False,
            },
            "size": 2, "n_edges": 0, "n_evaluations": 7, "seconds": 1.5, "method": "greedy",
            "params": {"target": 0.8}, "extra": {"note": [1, 2]},
        }  # fmt: skip


def test_open_store_dispatches_on_the_url(tmp_path, monkeypatch):
    from discovery.store import BACKENDS, MemoryStore, Store
    from discovery.store.backends import scheme_of

    memory = open_store("memory:")
    assert isinstance(memory, MemoryStore) and open_store(memory) is memory  # an instance as it is
    assert open_store("memory:") is not memory  # each URL opens a fresh one
    sql = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert isinstance(sql, Store) and open_store(sql) is sql
    sql.close()
    monkeypatch.setenv("CIRCUITS_DATABASE_URL", "memory:")
    assert isinstance(open_store(), MemoryStore)  # None: the default URL
    monkeypatch.setenv("CIRCUITS_DATABASE_URL", f"sqlite:///{tmp_path / 'b.db'}")
    default = open_store()
    assert isinstance(default, Store) and default.url.endswith("b.db")
    default.close()
    assert scheme_of("postgresql+psycopg2://u@h/db") == "postgresql" and scheme_of("memory:") == "memory"
    assert {"memory", "sqlite", "postgresql"} <= set(BACKENDS)


def test_the_store_does_not_import_torch_or_the_service():
    code = (
        "import sys, discovery.store, discovery.dashboard.queries; "
        "assert 'torch' not in sys.modules, 'torch'; assert 'discovery.service' not in sys.modules, 'service'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
