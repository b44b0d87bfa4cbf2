"""The by-hand brute force (4,095 subsets of a 12-head pool, node level) in plain forwards; ONE JSON line.

GPT-2-small-shaped random model (seed 0), task ``digits`` with ``template=done-in``, 50 prompts,
mean ablation. Random weights: the scores mean nothing, the timings are real. See
``bench/_brute_force.py`` (``brute_force``, shared with ``bench/discovery_speed.py``).

    python bench/brute_force.py [--threads 2] [--n 50] [--architecture gpt2]
"""

from __future__ import annotations

import argparse
import json

import torch
from _brute_force import brute_force  # bench/, this script's folder, is on sys.path

from discovery.model import RANDOM_ARCHITECTURES, random_model
from discovery.tasks import build_dataset, get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=50, help="prompts")
    parser.add_argument("--architecture", default="gpt2", choices=RANDOM_ARCHITECTURES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = random_model(args.architecture, full_size=True, seed=0)
    dataset = build_dataset(get_task("digits", template="done-in"), model.tokenizer, n=args.n, seed=0)
    print(json.dumps(brute_force(model, dataset)))


if __name__ == "__main__":
    main()
