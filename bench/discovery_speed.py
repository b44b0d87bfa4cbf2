"""Edge-level and brute-force discovery speed against the plain forward; prints ONE JSON line.

Every figure is ``seconds`` and ``forwards``: seconds divided by the seconds of the Hugging Face
model's plain no-grad forward on the same prompts, timed right before and right after that figure
(each ACDC layer sample and each brute-force batch has its own), so a machine whose load changes
during the run still gives comparable ratios. GPT-2-small shape, random weights: the timings are
the real model's, the circuits mean nothing.

Workloads (keys of ``workloads``):

- ``edge_eval``: one edge-level evaluation from scratch (no remembered prefix) of a near-full
  circuit: every edge but 20 random ones; ``edge_eval_random98`` keeps each edge with probability
  0.98, so almost every receiver loses one (the worst case for a near-full circuit);
- ``eap``: EAP scores for every edge; ``eap_ig5``: EAP-IG (inputs) with 5 steps;
- ``acdc_full_pass``: one ACDC pass (KL criterion, speculative batches of 8 as the method runs) over
  the full graph, projected from a stratified sample: in every layer (and at the logits) a few
  receivers' first incoming edges are tested from the full graph, and each layer's mean cost per
  edge test is multiplied by that layer's edge count. ``check`` runs the same projection and a real
  full ACDC pass on a small model and gives their ratio;
- ``brute_force``: all 4,095 subsets of a 12-head pool, node level (``exhaustive``), on ``digits``
  done-in prompts (24 tokens).

``--memory`` adds, per workload, the peak resident memory of a fresh process running EAP, EAP-IG
(5 steps) and 8 ACDC edge tests on 50 ``induction`` prompts of 21 tokens. ``--quick`` (routine runs, under 3
minutes): fewer ACDC samples and a 7-head brute-force pool (127 subsets), labelled so.

    python bench/discovery_speed.py [--quick] [--memory] [--n 50] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from _brute_force import POOL, brute_force  # bench/, this script's folder, is on sys.path

from discovery.model import random_model
from discovery.scoring import edge_forward as ef
from discovery.scoring.evaluator import Evaluator
from discovery.search import run_search
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import LOGITS, Circuit


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, device: str, repeat: int = 1) -> float:
    """The fastest of ``repeat`` runs, seconds."""
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def plain_forward(model: Any, ids: torch.Tensor, device: str, repeat: int = 5) -> list[float]:
    with torch.no_grad():
        model.hf_model(ids)  # warm-up
        return [timed(lambda: model.hf_model(ids), device) for _ in range(repeat)]


class Unit:
    """The plain forward timed next to each figure: a figure's ``forwards`` is its seconds over the mean
    of the plain forward just before and just after it (the machine's load may change in between)."""

    def __init__(self, model: Any, ids: torch.Tensor, device: str) -> None:
        self.model, self.ids, self.device = model, ids, device
        self.all: list[float] = []

    def now(self) -> float:
        seconds = statistics.median(plain_forward(self.model, self.ids, self.device, 3))
        self.all.append(seconds)
        return seconds

    def measure(self, fn: Any) -> tuple[float, float]:
        """(seconds, forwards) of ``fn()``."""
        before = self.now()
        seconds = fn()
        return seconds, seconds / ((before + self.now()) / 2)


def edge_eval(evaluator: Evaluator, circuit: Circuit, device: str, repeat: int) -> float:
    graph = ef.graph_of(evaluator)
    masks = graph.mask([circuit])

    def once() -> None:
        evaluator.edge_prefixes.clear()  # from scratch
        with torch.no_grad():
            ef._forward(evaluator, masks)

    once()
    return timed(once, device, repeat)


def acdc_projection(
    evaluator: Evaluator, per_layer: int, batch: int, device: str, unit: Unit | None = None, seed: int = 0
) -> dict[str, Any]:
    """Project one ACDC pass over the full graph from ``per_layer`` sampled receivers per layer (with
    ``unit``: each layer's sample also in plain forwards timed next to it)."""
    judge = evaluator.with_metric("kl")
    graph = ef.graph_of(judge)
    full = set(graph.edges)
    judge.evaluate([Circuit.from_edges(full)])  # the walk's start: its prefix is remembered
    rng = random.Random(seed)
    by_layer: dict[int, list[tuple[Any, Any]]] = {}
    for receiver, inp in graph.receivers:
        layer = evaluator.shape.n_layers if receiver == LOGITS else receiver.layer
        by_layer.setdefault(layer, []).append((receiver, inp))
    edges_into: dict[int, int] = {}
    for e in graph.edges:
        layer = evaluator.shape.n_layers if e.receiver == LOGITS else e.receiver.layer
        edges_into[layer] = edges_into.get(layer, 0) + 1
    per_edge: dict[int, float] = {}
    per_edge_forwards: dict[int, float] = {}
    tested = 0
    for layer, slots in sorted(by_layer.items()):
        costs = []
        before = unit.now() if unit else 1.0
        for receiver, inp in rng.sample(slots, min(per_layer, len(slots))):
            incoming = sorted(
                (e for e in full if e.receiver == receiver and e.receiver_input == inp),
                key=lambda e: e.sender.sort_key,
                reverse=True,
            )[:batch]
            if not incoming:
                continue
            trial, circuits = set(full), []
            for e in incoming:
                trial.discard(e)
                circuits.append(Circuit.from_edges(trial))
            seconds = timed(lambda circuits=circuits: judge.evaluate(circuits), device)
            costs.append(seconds / len(circuits))
            tested += len(circuits)
        if costs:
            per_edge[layer] = statistics.mean(costs)
            per_edge_forwards[layer] = per_edge[layer] / ((before + (unit.now() if unit else 1.0)) / 2)
    projected = sum(per_edge[layer] * edges_into.get(layer, 0) for layer in per_edge)
    return {
        "projected_seconds": projected,
        "projected_forwards": sum(per_edge_forwards[layer] * edges_into.get(layer, 0) for layer in per_edge),
        "edges": len(graph.edges),
        "edge_tests_sampled": tested,
        "forwards_per_edge_by_layer": {str(k): round(v, 3) for k, v in per_edge_forwards.items()},
    }


def acdc_check(n: int, device: str, per_layer: int, batch: int) -> dict[str, Any]:
    """The projection against a real full ACDC pass on a small model (4 layers x 4 heads, width 128)."""
    model = random_model("gpt2", n_layers=4, n_heads=4, d_model=128, seed=1, device=device)
    dataset = build_dataset(get_task("digits"), model.tokenizer, n=n, seed=0)
    evaluator = Evaluator(model, dataset)
    projected = acdc_projection(evaluator, per_layer, batch, device)["projected_seconds"]
    fresh = Evaluator(model, dataset)
    # tau 0: an edge goes only when removing it lowers the KL, so (random weights) the walk tests
    # nearly every edge, as the projection assumes; a larger tau empties a random model at once
    result = run_search("acdc", fresh, {"tau": 0.0, "batch": batch})
    edges = len(ef.graph_of(fresh).edges)
    projected_per_test = projected / edges
    actual_per_evaluation = result.seconds / result.n_evaluations
    return {
        "model": "gpt2 4x4x128 (random)",
        "edges": edges,
        "projected_seconds_per_edge_test": round(projected_per_test, 5),
        "actual_seconds": round(result.seconds, 3),
        "actual_evaluations": result.n_evaluations,
        "actual_seconds_per_evaluation": round(actual_per_evaluation, 5),
        "actual_over_projected_per_test": round(actual_per_evaluation / projected_per_test, 3),
        "note": "tau 0 on random weights rejects about half the removals, so batch-8 speculation scores "
        "several circuits per edge; per evaluation, the projection's cost per test is what is checked",
        "edges_left": result.circuit.n_edges,
    }


def brute_force_workload(model: Any, n: int, pool: list[str]) -> dict[str, Any]:
    """``bench/_brute_force.py`` on ``digits`` done-in prompts: each scored batch over the plain forward
    timed next to it (the machine's load may change during the run)."""
    dataset = build_dataset(get_task("digits", template="done-in"), model.tokenizer, n=n, seed=0)
    out = brute_force(model, dataset, tuple(pool))
    keep = ("seconds", "forwards", "forwards_one_baseline", "circuits", "plain_forward_seconds", "seq_len")
    return {**{k: out[k] for k in keep}, "pool": " ".join(pool)}


def peak_gib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it starts afresh at exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**20, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def memory_child(workload: str, n: int, device: str) -> None:
    """One workload at 50 x 21 tokens in this (fresh) process; prints its peak resident memory."""
    model = random_model("gpt2", full_size=True, seed=0, device=device)
    dataset = build_dataset(get_task("induction", prefix=5), model.tokenizer, n=n, seed=0)  # 21 tokens
    evaluator = Evaluator(model, dataset)
    before = peak_gib()
    if workload == "eap":
        ef.edge_attribution(evaluator, steps=1)
    elif workload == "eap_ig5":
        ef.edge_attribution(evaluator, steps=5)
    else:
        _acdc_tests(evaluator)
    record = {"workload": workload, "peak_rss_gib": peak_gib(), "before_gib": before}
    print(json.dumps({**record, "prompts": dataset.n, "prompt_length": dataset.seq_len}))


def _acdc_tests(evaluator: Evaluator) -> None:
    judge = evaluator.with_metric("kl")
    graph = ef.graph_of(judge)
    full = set(graph.edges)
    judge.evaluate([Circuit.from_edges(full)])
    incoming = [e for e in graph.edges if e.receiver.layer == 6][:8]
    trial, circuits = set(full), []
    for e in incoming:
        trial.discard(e)
        circuits.append(Circuit.from_edges(trial))
    judge.evaluate(circuits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50, help="prompts")
    parser.add_argument("--quick", action="store_true", help="fewer samples, a 7-head brute-force pool")
    parser.add_argument("--memory", action="store_true", help="peak memory per workload at 50 x 21 tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.n, args.device)
        return

    model = random_model("gpt2", full_size=True, seed=0, device=args.device)
    dataset = build_dataset(get_task("digits"), model.tokenizer, n=args.n, seed=0)
    ids = dataset.clean_ids.to(model.device)
    evaluator = Evaluator(model, dataset)
    evaluator.full_metric, evaluator.ablated_metric  # noqa: B018
    unit = Unit(model, ids, args.device)
    graph = ef.graph_of(evaluator)
    rng = random.Random(0)
    dropped = set(rng.sample(range(len(graph.edges)), 20))
    near_full = Circuit.from_edges([e for i, e in enumerate(graph.edges) if i not in dropped])
    random98 = Circuit.from_edges([e for e in graph.edges if rng.random() < 0.98])
    repeat = 2 if args.quick else 3

    workloads: dict[str, dict[str, Any]] = {}
    figures = {
        "edge_eval": lambda: edge_eval(evaluator, near_full, args.device, repeat),
        "edge_eval_random98": lambda: edge_eval(evaluator, random98, args.device, repeat),
        "eap": lambda: timed(lambda: ef.edge_attribution(evaluator, steps=1), args.device),
        "eap_ig5": lambda: timed(lambda: ef.edge_attribution(evaluator, steps=5), args.device),
    }
    for key, fn in figures.items():
        seconds, forwards = unit.measure(fn)
        workloads[key] = {"seconds": round(seconds, 3), "forwards": round(forwards, 2)}
    acdc = acdc_projection(evaluator, 1 if args.quick else 3, 8, args.device, unit)
    plain = statistics.median(unit.all)
    projected = acdc.pop("projected_seconds")
    projected_forwards = acdc.pop("projected_forwards")
    workloads["acdc_full_pass"] = {
        "seconds": round(projected, 1),
        "forwards": round(projected_forwards, 1),
        "forwards_per_edge": round(projected_forwards / acdc["edges"], 3),
        "hours_at_median_forward": round(projected_forwards * plain / 3600, 2),
        **acdc,
        "check": acdc_check(args.n, args.device, 1 if args.quick else 3, 8),
    }
    pool = list(POOL[:7] if args.quick else POOL)
    workloads["brute_force"] = brute_force_workload(model, args.n, pool)
    out: dict[str, Any] = {
        "benchmark": "discovery",
        "weights": "random",
        "note": "random weights: timings only, circuits meaningless; forwards = seconds / plain_forward_seconds",
        "quick": args.quick,
        "model": {"n_layers": model.shape.n_layers, "n_heads": model.shape.n_heads, "d_model": model.engine.d_model},
        "task": "digits",
        "prompts": dataset.n,
        "prompt_length": dataset.seq_len,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "plain_forward_seconds": round(plain, 4),
        "plain_forward_spread": [round(min(unit.all), 4), round(max(unit.all), 4)],
        "workloads": workloads,
        "peak_rss_gib": peak_gib(),
    }
    if args.memory:
        peaks = {}
        for workload in ("eap", "eap_ig5", "acdc"):
            child = subprocess.run(
                [sys.executable, __file__, "--memory-child", workload, "--n", str(args.n), "--device", args.device],
                capture_output=True,
                text=True,
                check=True,
            )
            peaks[workload] = json.loads(child.stdout.strip().splitlines()[-1])
        out["memory_50x21"] = peaks
    print(json.dumps(out))


if __name__ == "__main__":
    main()
