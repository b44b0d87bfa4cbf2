"""Dashboard benchmark: server-side latency of the pages and their JSON over a store with many jobs and
one big job, on SQLite. Prints ONE JSON line.

Synthetic rows (made-up scores on random GPT-2-small-shaped circuits): it measures the dashboard and
the store's reads, not any model. ``--jobs`` finished jobs (default 500, each with a result) fill the
jobs table; one of them stored ``--evaluations`` evaluations (default 5,000), which its job page
draws as a table and a score-against-size plot (its read is also timed against ``Store.evaluations``, which
parses every circuit back into a value, in the same run). Each figure is the median of 5 requests through
FastAPI's TestClient (in-process: no network, the server's work only), in milliseconds.

    python bench/dashboard.py [--jobs 500] [--evaluations 5000]
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
from fastapi.testclient import TestClient

from discovery.dashboard import create_app, open_dashboard_store
from discovery.search.base import SearchResult
from discovery.store import open_store
from discovery.tasks.base import DatasetSpec
from discovery.types.circuit import Circuit, head
from discovery.types.evaluation import EvaluationMethod, Score
from discovery.types.identity import ModelIdentity


def random_circuits(n: int, rng: np.random.Generator) -> list[Circuit]:
    seen: dict[str, Circuit] = {}
    while len(seen) < n:
        cells = rng.choice(144, size=int(rng.integers(1, 25)), replace=False)
        c = Circuit(frozenset(head(int(i) // 12, int(i) % 12) for i in cells))
        seen.setdefault(c.key, c)
    return list(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--evaluations", type=int, default=5000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        store = open_store(url)
        identity = ModelIdentity("bench-gpt2-small", "GPT2LMHeadModel", "0" * 64, 12, 12, 768, 3072, 50257)
        model_id = store.get_or_create_model(identity).id
        ds = SimpleNamespace(
            spec=DatasetSpec("digits", "default", 50, 0), metric="logit_diff", prompt_hash=uuid.uuid4().hex
        )
        dataset_id = store.get_or_create_dataset(ds).id
        method = EvaluationMethod("mean", "digits[n=50]:corrupt", "node", False, "logit_diff")
        circuits = random_circuits(args.evaluations, rng)
        t0 = time.perf_counter()
        job_ids = []
        for i in range(args.jobs):
            task = ("digits", "months", "number-words")[i % 3]
            job = store.create_job("greedy", {"target": 0.9}, task, identity.name, model_id=model_id)
            store.claim_job(job, "bench")
            c = circuits[i % len(circuits)]
            store.finish_job(job, SearchResult("greedy", {}, c, Score(c, 0.9, 0.9, 1.0, 0.0, method), 10, 1.0))
            job_ids.append(job)
        big = job_ids[0]
        scores = [
            Score(c, float(v), float(v), 1.0, 0.0, method)
            for c, v in zip(circuits, rng.uniform(-0.2, 1.1, len(circuits)))
        ]
        for b in range(0, len(scores), 500):
            store.save_scores(scores[b : b + 500], model_id, dataset_id, job_id=big)
        fill_s = time.perf_counter() - t0
        store.close()

        viewer = open_dashboard_store(url)
        client = TestClient(create_app(viewer))
        paths = {
            "jobs_page": "/",
            "jobs_api": "/api/jobs",
            "big_job_page": f"/jobs/{big}",
            "big_job_api": f"/api/jobs/{big}",
            "small_job_page": f"/jobs/{job_ids[-1]}",
            "circuit_page": f"/circuits/{circuits[0].key}",
            "overlap_page": f"/overlap?model={identity.name}&task=digits&task=months&task=number-words",
        }
        out: dict = {
            "bench": "dashboard",
            "synthetic_rows": True,
            "backend": "sqlite",
            "jobs": args.jobs,
            "big_job_evaluations": args.evaluations,
            "fill_seconds": round(fill_s, 1),
            "cpus": os.cpu_count(),
            "median_ms": {},
            "bytes": {},
        }
        for name, path in paths.items():
            client.get(path)  # warm
            times = []
            for _ in range(5):
                t = time.perf_counter()
                response = client.get(path)
                times.append(time.perf_counter() - t)
                assert response.status_code == 200, (path, response.text[:200])
            out["median_ms"][name] = round(1000 * statistics.median(times), 1)
            out["bytes"][name] = len(response.content)
        # the job page's read, against the store's generic one (which parses every circuit back) as baseline
        from discovery.dashboard.queries import job_evaluations

        def median_ms(fn) -> float:  # type: ignore[no-untyped-def]
            times = []
            for _ in range(3):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return round(1000 * statistics.median(times), 1)

        ours = median_ms(lambda: job_evaluations(viewer, big, args.evaluations))
        baseline = median_ms(lambda: viewer.evaluations(job_id=big, limit=args.evaluations))
        out["job_evaluations_read_ms"] = {"dashboard_query": ours, "store_evaluations_baseline": baseline}
        out["job_evaluations_speedup"] = round(baseline / ours, 1)
        viewer.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
