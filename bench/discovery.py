"""Time the discovery methods on a GPT-2-small-shaped random model (digits task); print ONE JSON line.

Random weights: the circuits found mean nothing; the numbers are for timing only.

    python bench/discovery.py [--n 20] [--greedy-size 4] [--ig-steps 5] [--acdc-top 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# run as a script, this file's folder comes first on sys.path and its name would shadow the package
sys.path = [entry for entry in sys.path if os.path.abspath(entry or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch  # noqa: E402

from discovery.evaluator import Evaluator  # noqa: E402
from discovery.model import random_gpt2  # noqa: E402
from discovery.search import run_search  # noqa: E402
from discovery.tasks import build_dataset, get_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20, help="prompts")
    parser.add_argument("--greedy-size", type=int, default=4, help="greedy's max_size (forward steps)")
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--acdc-top", type=int, default=60, help="ACDC walks the top N edges by EAP score")
    parser.add_argument("--acdc-tau", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = random_gpt2(full_size=True, seed=0)
    dataset = build_dataset(get_task("digits"), model.tokenizer, n=args.n, seed=0)
    evaluator = Evaluator(model, dataset)
    evaluator.full_metric, evaluator.ablated_metric  # noqa: B018 - the two ends, computed once, up front
    setup = time.perf_counter() - start

    runs = {
        "greedy": ("greedy", {"max_size": args.greedy_size, "backward": False}),
        "eap-ig": ("eap-ig", {"steps": args.ig_steps, "top_n": 100}),
        "acdc": ("acdc", {"eap_top": args.acdc_top, "tau": args.acdc_tau}),
    }
    methods = {}
    for label, (key, params) in runs.items():
        result = run_search(key, evaluator, params)
        methods[label] = {
            "seconds": round(result.seconds, 2),
            "evaluations": result.n_evaluations,
            "params": result.params,
            "circuit_size": result.circuit.size,
            "edges": result.circuit.n_edges,
        }
    print(
        json.dumps(
            {
                "benchmark": "discovery",
                "weights": "random",
                "note": "random weights: timings only, circuits meaningless",
                "model": {
                    "n_layers": model.shape.n_layers,
                    "n_heads": model.shape.n_heads,
                    "d_model": model.hf_model.config.n_embd,
                },
                "task": "digits",
                "prompts": dataset.n,
                "seq_len": dataset.seq_len,
                "ablation": "mean",
                "threads": torch.get_num_threads(),
                "device": str(model.device),
                "setup_seconds": round(setup, 2),
                "methods": methods,
            }
        )
    )


if __name__ == "__main__":
    main()
