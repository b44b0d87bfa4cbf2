"""Train every reference model fresh (into a temporary directory) and time the README's main job; print ONE JSON line:
training seconds, steps and held-out top-1 accuracy per model, whether a trained model's weights equal
the package's shipped copy (they do only on a machine that sums floats as the shipping one did), plus
the induction model's strongest previous-token (layer 0) and induction (layer 1) head scores.

    python bench/reference_models.py [--threads 2] [--seed 0] [--only induction]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

MAIN_JOB = [
    "submit",
    "--model",
    "ref:sequences",
    "--task",
    "digits",
    "--task-param",
    "template=done-in",
    "--method",
    "greedy",
    "--target",
    "0.9",
]


def main_job(threads: int) -> dict:
    """The README's main job as a user runs it (``bash dev.sh demo`` without the install): first in an
    empty cache and store (ref:sequences is the shipped copy: nothing trains), then again (the store
    serves the scores)."""
    import subprocess

    out: dict = {"main_job": "circuits " + " ".join(MAIN_JOB)}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            CIRCUITS_CACHE_DIR=tmp,
            CIRCUITS_DATABASE_URL=f"sqlite:///{tmp}/circuits.db",
            OMP_NUM_THREADS=str(threads),
        )
        env.pop("CIRCUITS_BROKER_URL", None)
        for key in ("main_job_seconds", "main_job_rerun_seconds"):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "discovery.cli", *MAIN_JOB],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if done.returncode != 0:
                raise SystemExit(f"main job failed: {done.stderr[-2000:]}")
            out[key] = round(time.perf_counter() - start, 1)
        out["main_job_circuit"] = next(
            (line.split()[1] for line in done.stdout.splitlines() if line.startswith("circuit ")), None
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", default=None, help="train only this model (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from discovery.reference import REFERENCE_MODELS, head_scores_grid, shipped_reference_dir, train_reference
    from discovery.reference.shipped import directory_weight_hash, shipped_record

    result: dict = {
        "bench": "reference_models",
        "seed": args.seed,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "models": {},
    }
    total = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or list(REFERENCE_MODELS):
            report = train_reference(name, Path(tmp) / name, seed=args.seed)
            entry = {
                "seconds": report.seconds,
                "cpu_seconds": report.cpu_seconds,
                "steps": report.steps,
                "final_loss": report.final_loss,
                "heldout_accuracy": report.heldout_accuracy,
                "targets": report.targets,
                "meets_targets": report.meets_targets,
            }
            if (shipped := shipped_reference_dir(name, args.seed)) is not None:
                entry["same_weights_as_shipped"] = (
                    directory_weight_hash(Path(tmp) / name) == shipped_record(shipped)["weight_hash"]
                )
            if name == "induction":
                grid = head_scores_grid(Path(tmp) / name)
                previous, induction = grid.previous_token_heads(), grid.induction_heads()
                entry["previous_token_heads"] = [f"{l}.{h}" for l, h in previous]
                entry["induction_heads"] = [f"{l}.{h}" for l, h in induction]
                # the worst grid cell (halves 4..24, BOS on/off, random offsets) of the weakest such head
                entry["worst_cell_previous_token_score"] = round(
                    min((float(grid.previous_token_min[l, h]) for l, h in previous), default=float("nan")), 3
                )
                entry["worst_cell_induction_score"] = round(
                    min((float(grid.induction_min[l, h]) for l, h in induction), default=float("nan")), 3
                )
                entry["worst_cell_top1_repeated_half"] = round(grid.accuracy_min, 3)

            result["models"][name] = entry
    if not args.only:
        result.update(main_job(args.threads))
    result["total_seconds"] = round(time.perf_counter() - total, 1)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
