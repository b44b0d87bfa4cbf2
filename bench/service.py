"""Throughput of the service: jobs per minute and evaluations per second through 1 and 2 Celery
workers, against running the same jobs in-process (``submit`` without a broker). One JSON line.

Each mode gets a fresh PostgreSQL database (so no mode is served another's stored evaluations) and
the same jobs: ``--jobs`` exhaustive searches (subsets of 16 heads up to size ``--k``, 2,517 circuits
for k=4) on a random
4-layer, 4-head GPT-2, one dataset seed per job. Workers are started (and have imported torch)
before the clock starts; their start-up time is reported separately. Then ``--small-jobs`` jobs of
17 circuits each, where the per-job cost (submit-time checks, enqueue, claim, dataset, rows)
dominates. Needs PostgreSQL and Redis on localhost (as the integration tests: ``CIRCUITS_TEST_PG``,
``CIRCUITS_TEST_REDIS``).

    python bench/service.py [--jobs 8] [--k 4] [--n 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _load_service_fixtures() -> ModuleType:
    """The integration tests' service helpers (databases, Redis, workers), loaded from their file: run as
    a script, this file has bench/ on sys.path, not the repository, and ``tests`` is not installed."""
    spec = importlib.util.spec_from_file_location("service_fixtures", ROOT / "tests" / "service_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_fixtures = _load_service_fixtures()
Worker = _fixtures.Worker
fresh_postgres_database = _fixtures.fresh_postgres_database
isolated_redis = _fixtures.isolated_redis
save_tiny_model = _fixtures.save_tiny_model
services_available = _fixtures.services_available
wait_for = _fixtures.wait_for


def requests(model: Path, jobs: int, k: int, n: int, first_seed: int = 0) -> list:
    from discovery.service import JobRequest

    return [
        JobRequest(task="digits", method="exhaustive", model=str(model), params={"k": k, "target": 2.0}, n=n, seed=seed)
        for seed in range(first_seed, first_seed + jobs)
    ]


def summarise(store, job_ids: list[int], seconds: float) -> dict:
    jobs = [store.get_job(j) for j in job_ids]
    failed = [j.id for j in jobs if j.status.value != "succeeded"]
    computed = sum((j.result_score or {}).get("extra", {}).get("service", {}).get("computed", 0) for j in jobs)
    return {
        "seconds": round(seconds, 2),
        "jobs_per_min": round(60 * len(jobs) / seconds, 1),
        "evals_per_s": round(computed / seconds, 1),
        "evaluations": computed,
        "failed": failed,
    }


def run_in_process(model: Path, args: argparse.Namespace) -> dict:
    from discovery.service import cached_model, submit
    from discovery.store.repository import open_store

    with fresh_postgres_database() as url:
        store = open_store(url)
        cached_model(str(model), "cpu")  # loaded before the clock, as a started worker has it
        start = time.perf_counter()
        ids = [submit(r, store, broker=False).job_ids[0] for r in requests(model, args.jobs, args.k, args.n)]
        out = summarise(store, ids, time.perf_counter() - start)
        start = time.perf_counter()
        ids = [
            submit(r, store, broker=False).job_ids[0]
            for r in requests(model, args.small_jobs, 1, args.n, first_seed=1000)
        ]
        out["small_jobs"] = summarise(store, ids, time.perf_counter() - start)
        store.close()
    return out


def run_workers(model: Path, args: argparse.Namespace, count: int, log_dir: Path) -> dict:
    from discovery.service import submit
    from discovery.store.repository import open_store

    with fresh_postgres_database() as url, isolated_redis() as broker:
        env = {**broker, "CIRCUITS_DATABASE_URL": url, "OMP_NUM_THREADS": str(args.threads)}
        os.environ.update(env)
        store = open_store(url)
        started: list[Worker] = []
        try:
            t0 = time.perf_counter()
            for _ in range(count):
                started.append(Worker(env, log_dir).start())
            startup = time.perf_counter() - t0
            # one warm-up job per worker loads the model there (as a long-lived worker has it)
            warm = [submit(r, store).job_ids[0] for r in requests(model, count, 1, args.n, first_seed=10_000)]
            wait_for(lambda: all(store.get_job(j).is_finished() for j in warm), 120, what="warm-up")
            start = time.perf_counter()
            ids = [submit(r, store).job_ids[0] for r in requests(model, args.jobs, args.k, args.n)]
            wait_for(lambda: all(store.get_job(j).is_finished() for j in ids), 1800, interval=0.05, what="all jobs")
            out = summarise(store, ids, time.perf_counter() - start)
            out["worker_startup_s"] = round(startup, 2)
            start = time.perf_counter()
            ids = [submit(r, store).job_ids[0] for r in requests(model, args.small_jobs, 1, args.n, first_seed=1000)]
            wait_for(lambda: all(store.get_job(j).is_finished() for j in ids), 1800, interval=0.05, what="small jobs")
            out["small_jobs"] = summarise(store, ids, time.perf_counter() - start)
            return out
        except Exception:
            for w in started:
                print(f"--- {w.name} ---\n{w.log()[-4000:]}", file=sys.stderr)
            raise
        finally:
            for w in started:
                w.stop()
            store.close()
            for k in env:
                os.environ.pop(k, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--k", type=int, default=4, help="exhaustive subset size (16 heads: k=4 is 2,516 circuits)")
    parser.add_argument("--n", type=int, default=10, help="prompts per dataset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (every mode alike)")
    parser.add_argument(
        "--small-jobs",
        type=int,
        default=16,
        help="then this many k=1 jobs (17 circuits each): the per-job overhead dominates",
    )
    args = parser.parse_args()
    reason = services_available()
    if reason:
        print(json.dumps({"bench": "service", "skipped": reason}))
        return
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_model(Path(tmp) / "tiny44", n_layers=4, n_heads=4, seed=3)
        result = {
            "bench": "service",
            "workload": f"{args.jobs} exhaustive k={args.k} jobs, digits n={args.n}, "
            "random GPT-2 4 layers x 4 heads d64; small_jobs: "
            f"{args.small_jobs} k=1 jobs",
            "cpu_cores": os.cpu_count(),
            "torch_threads_per_process": args.threads,
            "in_process": run_in_process(model, args),
        }
        for count in (1, 2):
            result[f"workers_{count}"] = run_workers(model, args, count, Path(tmp))
        base = result["in_process"]["jobs_per_min"]
        result["throughput_vs_in_process"] = {
            f"workers_{c}": round(result[f"workers_{c}"]["jobs_per_min"] / base, 2) for c in (1, 2)
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
