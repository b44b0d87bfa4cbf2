"""Store benchmark: batched evaluation writes per second, and the latency of an overlap query over
100,000 stored evaluations, on SQLite and PostgreSQL. Prints ONE JSON line.

Scores are synthetic (random circuits over GPT-2 small's 12 x 12 heads, made-up numbers): the
benchmark measures the store, not the evaluator. 25,000 distinct circuits are each stored for 4 tasks
(100,000 evaluations), written through ``Store.save_scores`` in batches of ``--batch`` (64, the
StoredEvaluator's default). The overlap query is what ``circuits overlap`` runs: the best stored
circuit of each of the 4 tasks (no search jobs: the smallest circuit reaching normalised >= 0.8,
found by scanning the evaluations) plus the Jaccard matrix; reported as the median of 5 runs.
``lookup_64_ms`` is the cache-hit path: the stored scores of 64 circuits.

    python bench/store.py [--n 100000] [--batch 64] [--pg postgresql+psycopg2://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from types import SimpleNamespace

import numpy as np
import sqlalchemy as sa

from discovery.analysis.compare import overlap_matrix
from discovery.store import open_store
from discovery.tasks.base import DatasetSpec
from discovery.types.circuit import Circuit, head
from discovery.types.evaluation import EvaluationMethod, Score
from discovery.types.identity import ModelIdentity

TASKS = ("digits", "months", "greater-than", "number-words")


def synthetic(n_circuits: int, seed: int = 0) -> list[Circuit]:
    rng = np.random.default_rng(seed)
    seen: dict[str, Circuit] = {}
    while len(seen) < n_circuits:
        size = int(rng.integers(2, 30))
        cells = rng.choice(144, size=size, replace=False)
        c = Circuit(frozenset(head(int(i) // 12, int(i) % 12) for i in cells))
        seen.setdefault(c.key, c)
    return list(seen.values())


def run_backend(url: str, n: int, batch: int) -> dict:
    store = open_store(url)
    identity = ModelIdentity("bench-gpt2-small", "GPT2LMHeadModel", "0" * 64, 12, 12, 768, 3072, 50257)
    model_id = store.get_or_create_model(identity).id
    per_task = n // len(TASKS)
    circuits = synthetic(per_task)
    rng = np.random.default_rng(1)
    writes = []
    datasets = {}
    for task in TASKS:
        ds = SimpleNamespace(
            spec=DatasetSpec(task, "default", 50, 0), metric="logit_diff", prompt_hash=uuid.uuid4().hex
        )
        dataset_id = store.get_or_create_dataset(ds).id
        datasets[task] = dataset_id
        method = EvaluationMethod("mean", f"{task}[n=50]:corrupt", "node", False, "logit_diff")
        normalised = rng.uniform(-0.2, 1.1, size=len(circuits))
        scores = [Score(c, float(v), float(v), 1.0, 0.0, method) for c, v in zip(circuits, normalised)]
        writes.append((dataset_id, scores))
    start = time.perf_counter()
    written = 0
    for dataset_id, scores in writes:
        for b in range(0, len(scores), batch):
            written += store.save_scores(scores[b : b + batch], model_id, dataset_id)
    write_s = time.perf_counter() - start
    assert written == per_task * len(TASKS) == store.count_evaluations(), written

    def overlap_query() -> None:
        best = {t: store.best_circuits(t, identity.name, limit=1, threshold=0.8)[0].circuit for t in TASKS}
        overlap_matrix(best)

    latencies = []
    for _ in range(5):
        t0 = time.perf_counter()
        overlap_query()
        latencies.append(time.perf_counter() - t0)
    method = EvaluationMethod("mean", f"{TASKS[0]}[n=50]:corrupt", "node", False, "logit_diff")
    lookups = []
    for i in range(5):
        t0 = time.perf_counter()
        found = store.lookup(circuits[i * 64 : (i + 1) * 64], model_id, datasets[TASKS[0]], method)
        lookups.append(time.perf_counter() - t0)
        assert len(found) == 64
    store.close()
    return {
        "evaluations": written,
        "write_seconds": round(write_s, 2),
        "writes_per_s": round(written / write_s),
        "overlap_query_ms": round(1000 * statistics.median(latencies), 1),
        "lookup_64_ms": round(1000 * statistics.median(lookups), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--pg", default=os.environ.get("CIRCUITS_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    )
    args = parser.parse_args()
    out: dict = {
        "bench": "store",
        "synthetic_scores": True,
        "n_evaluations": args.n,
        "batch_size": args.batch,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out["sqlite"] = run_backend(f"sqlite:///{tmp}/bench.db", args.n, args.batch)
    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"circuits_bench_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as e:
        out["postgresql"] = {"skipped": f"not reachable: {str(e.orig).strip().splitlines()[0]}"}
    else:
        try:
            out["postgresql"] = run_backend(
                sa.engine.make_url(args.pg).set(database=name).render_as_string(hide_password=False), args.n, args.batch
            )
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
