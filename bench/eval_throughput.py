"""Evaluator throughput against a naive hooked loop, on a full-size model of each architecture.

Prints one JSON line. ``--architecture gpt2`` (default) has GPT-2 small's exact shape (12 layers,
12 heads, d_model 768, vocab 50257); ``gpt-neox`` Pythia-160m's; ``llama`` / ``qwen2`` / ``gemma``
a model of GPT-2 small's width and depth (``discovery.model.random_model(full_size=True)``). The
weights are random: the cost is the real model's, the scores mean nothing.

Workloads (50 digits prompts of 12 tokens; mean ablation over the corrupted prompts):
- ``random``: 200 dense random head circuits (each head kept with probability 1/2): nothing to skip;
- ``small``: 200 random circuits of 1 to 12 heads (the size of search candidates);
- ``greedy_step``: the 144 circuits of one greedy step (a base circuit plus each other head),
  which share their layer prefixes.
The naive loop is what a notebook does: one TransformerLens ``run_with_hooks`` forward per circuit,
patching ``hook_z`` of every ablated head with its mean; it is timed on the first ``--naive`` circuits
of each workload, half right before and half right after ours on that workload, so that a change in
the machine's load during the run weighs on both sides of the ratio (after one untimed warm-up forward).

    python bench/eval_throughput.py [--architecture gpt2|gpt-neox|llama|qwen2|gemma] [--circuits 200] [--naive 30]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from discovery.model import RANDOM_ARCHITECTURES, random_model
from discovery.scoring.evaluator import Evaluator
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit


def naive_scores(model, dataset, evaluator, circuits):
    """One hooked forward per circuit through the bridge, as a notebook would."""
    bridge = model.bridge
    means = evaluator.replacement.z  # per layer [1, seq, heads, d_head], from the corrupted prompts
    values = []
    for circuit in circuits:
        kept = {(n.layer, n.head) for n in circuit.heads}
        hooks = []
        for layer in range(model.shape.n_layers):
            ablated = [h for h in range(model.shape.n_heads) if (layer, h) not in kept]

            def hook(z, hook, layer=layer, ablated=ablated):
                z[:, :, ablated] = means[layer][:, :, ablated]
                return z

            hooks.append((f"blocks.{layer}.attn.hook_z", hook))
        with torch.no_grad():
            logits = bridge.run_with_hooks(dataset.clean_ids, fwd_hooks=hooks)[:, -1]
        answer = logits[:, dataset.answer_tokens]
        values.append(float((answer * dataset.answer_weights).sum(-1).mean()))
    return values


def forward_gflop(model, n_tokens: int, seq: int) -> float:
    """Multiply-adds x2 of one full forward (all positions, full unembedding)."""
    ident = model.identity
    d, d_mlp, layers, vocab = ident.d_model, ident.d_mlp, ident.n_layers, ident.vocab_size
    mlp_mats = 3 if model.engine.flags.gated_mlp else 2
    per_token = layers * (2 * 4 * d * d + 2 * mlp_mats * d * d_mlp + 2 * 2 * seq * d) + 2 * d * vocab
    return per_token * n_tokens / 1e9


def matmul_gflops() -> float:
    a, b = torch.randn(2048, 768), torch.randn(768, 3072)
    for _ in range(3):
        a @ b
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    return 2 * 2048 * 768 * 3072 * reps / (time.perf_counter() - start) / 1e9


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--architecture", default="gpt2", choices=RANDOM_ARCHITECTURES)
    parser.add_argument("--circuits", type=int, default=200)
    parser.add_argument("--naive", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = random_model(args.architecture, full_size=True, device=args.device)
    dataset = build_dataset(get_task("digits", length=11), model.tokenizer, n=50, seed=0).to(model.device)
    heads = model.shape.all_heads()
    rng = random.Random(0)
    random_circuits = [Circuit.of([h for h in heads if rng.random() < 0.5]) for _ in range(args.circuits)]
    small_circuits = [Circuit.of(rng.sample(heads, rng.randint(1, 12))) for _ in range(args.circuits)]
    base = Circuit.of(rng.sample(heads, 10))
    greedy_step = [base.with_nodes(h) for h in heads]

    evaluator = Evaluator(model, dataset)
    _ = evaluator.full_metric, evaluator.ablated_metric, evaluator.replacement  # setup, not timed below
    naive_scores(model, dataset, evaluator, [base])  # builds and warms the bridge, not timed

    def bracketed(circuits):
        """Ours on every circuit, between the naive loop on two halves of the first ``--naive``: load drift cancels."""
        first, second = circuits[: args.naive // 2], circuits[args.naive // 2 : args.naive]
        naive_a, t_a = timed(lambda: naive_scores(model, dataset, evaluator, first))
        ours, t_ours = timed(lambda: evaluator.metric_values(circuits))
        naive_b, t_b = timed(lambda: naive_scores(model, dataset, evaluator, second))
        return ours, t_ours, naive_a + naive_b, t_a + t_b

    ours_random, t_random, naive_random, t_naive = bracketed(random_circuits)
    ours_greedy, t_greedy, naive_greedy, t_naive_greedy = bracketed(greedy_step)
    ours_small, t_small, naive_small, t_naive_small = bracketed(small_circuits)
    _, t_forward = timed(lambda: model.hf_model(dataset.clean_ids))
    gflop = forward_gflop(model, dataset.n * dataset.seq_len, dataset.seq_len)
    peak = matmul_gflops()

    ours_rate = args.circuits / t_random
    naive_rate = args.naive / t_naive
    greedy_rate = len(greedy_step) / t_greedy
    naive_greedy_rate = args.naive / t_naive_greedy
    print(
        json.dumps(
            {
                "bench": "eval_throughput",
                "architecture": args.architecture,
                "model": f"{model.identity.name} ({model.identity.flags}), random weights",
                "workloads": {
                    "random": {"speedup": round(ours_rate / naive_rate, 2), "ours_circuits_per_s": round(ours_rate, 3)},
                    "small": {
                        "speedup": round((args.circuits / t_small) / (args.naive / t_naive_small), 2),
                        "ours_circuits_per_s": round(args.circuits / t_small, 3),
                    },
                    "greedy_step": {
                        "speedup": round(greedy_rate / naive_greedy_rate, 2),
                        "ours_circuits_per_s": round(greedy_rate, 3),
                    },
                },
                "device": str(model.device),
                "threads": args.threads,
                "prompts": dataset.n,
                "seq_len": dataset.seq_len,
                "random_circuits": args.circuits,
                "naive_circuits_timed": args.naive,
                "ours_circuits_per_s": round(ours_rate, 3),
                "naive_circuits_per_s": round(naive_rate, 3),
                "speedup": round(ours_rate / naive_rate, 2),
                "ours_small_circuits_per_s": round(args.circuits / t_small, 3),
                "naive_small_circuits_per_s": round(args.naive / t_naive_small, 3),
                "small_speedup": round((args.circuits / t_small) / (args.naive / t_naive_small), 2),
                "greedy_step_circuits": len(greedy_step),
                "ours_greedy_step_circuits_per_s": round(greedy_rate, 3),
                "naive_greedy_step_circuits_per_s": round(naive_greedy_rate, 3),
                "greedy_step_speedup": round(greedy_rate / naive_greedy_rate, 2),
                "max_abs_diff_vs_naive": max(
                    abs(a - b)
                    for a, b in zip(
                        list(ours_random[: args.naive])
                        + list(ours_greedy[: args.naive])
                        + list(ours_small[: args.naive]),
                        naive_random + naive_greedy + naive_small,
                    )
                ),
                "forward_gflop": round(gflop, 2),
                "hf_forward_s": round(t_forward, 3),
                "matmul_gflops_measured": round(peak, 1),
                "matmul_bound_s_per_forward": round(gflop / peak, 3),
                "ours_s_per_circuit": round(t_random / args.circuits, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
