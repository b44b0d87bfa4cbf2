"""Discovery scored against the truth: node and edge ROC AUC of every method on models whose circuit is known.

    python bench/ground_truth.py [--models planted-chains,planted-wide,induction] [--n 20] [--threads 2]

Prints one JSON line: per model and method, the node and edge ROC AUC over the method's threshold or
size (the ACDC paper's evaluation; see :mod:`discovery.reference.recovery`) and the seconds it took.
The truth comes from the planted models' construction (nodes and edges) and, for the trained
``induction`` model, from attention patterns: the heads whose grid-mean previous-token or induction
score exceeds 0.5, and as edges every previous-token head -> induction head key plus induction head
-> logits (the textbook K-composition circuit). Planted models are built in a temporary directory;
the induction model comes from the cache (``ref:induction``, trained on first use).
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

METHODS = ("greedy", "exhaustive", "topk", "eap", "eap-ig", "acdc")
PARAMS: dict[str, dict] = {
    "eap-ig": {"steps": 5},
    # on a CPU, ACDC walks the top 200 edges by EAP score (its documented restriction), 32 removals per call
    "acdc": {"batch": 32, "eap_top": 200},
    "greedy": {"max_size": 16},
}


def induction_truth(path: Path):
    from discovery.reference import head_scores_grid
    from discovery.reference.recovery import Truth

    grid = head_scores_grid(path, n=40)
    previous = [f"{l}.{h}" for l, h in grid.previous_token_heads(0.5)]
    induction = [f"{l}.{h}" for l, h in grid.induction_heads(0.5)]
    edges = {f"{p}->{i}.k" for p in previous for i in induction} | {f"{i}->logits" for i in induction}
    return Truth(frozenset(previous + induction), frozenset(edges))


def setting(name: str, tmp: Path, n: int):
    from discovery.model import load_model
    from discovery.reference import PLANTED, ensure_reference_model, planted_truth, train_reference
    from discovery.reference.recovery import Truth
    from discovery.scoring.evaluator import Evaluator
    from discovery.tasks import build_dataset, get_task

    if name in PLANTED and PLANTED[name].builder == "chains":
        path = tmp / name
        train_reference(name, path)
        record = planted_truth(path)
        truth = Truth(frozenset(record["nodes"]), frozenset(record["edges"]))
        task = get_task(f"file:{path}/task.json")
    else:  # the induction model: its truth from attention patterns, not from how it was made
        path = ensure_reference_model(name)
        truth = induction_truth(path)
        task = get_task("induction")
    model = load_model(str(path))
    return Evaluator(model, build_dataset(task, model.tokenizer, n=n, seed=0)), truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="planted-chains,induction")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--n", type=int, default=20, help="prompts per dataset")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from discovery.reference.recovery import recover

    result: dict = {
        "bench": "ground_truth",
        "n_prompts": args.n,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "ablation": "mean over the corrupted prompts, node level, MLPs kept; metric logit_diff",
        "models": {},
    }
    total = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            evaluator, truth = setting(name, Path(tmp), args.n)
            entry: dict = {
                "truth_nodes": len(truth.nodes),
                "truth_edges": len(truth.edges),
                "heads": evaluator.shape.n_layers * evaluator.shape.n_heads,
                "methods": {},
            }
            for method in args.methods.split(","):
                found = recover(method, evaluator, truth, dict(PARAMS.get(method, {}))).to_json()
                entry["methods"][method] = found
                print(f"{name} {method}: {found}", file=sys.stderr, flush=True)  # progress; stdout keeps one line
            result["models"][name] = entry
    result["total_seconds"] = round(time.perf_counter() - total, 1)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
