"""Random inputs the tests score: tiny perturbed models of every fast-path family, random node and
edge circuits, and a spread sample of a graph's edges.

Shared by several test modules (a helper module, not a test module, so no test module imports another).
"""

from __future__ import annotations

import random

import torch

from discovery.model import wrap_model
from discovery.model.random import _random_config
from discovery.scoring.edge_forward import graph_of
from discovery.types.circuit import Circuit, all_edges

# the families' real variants: Llama-2 style (plain rope, multi-head), Llama-3 style (GQA, llama3 rope
# scaling), Pythia (parallel blocks, partial rotary) and a sequential GPT-NeoX
VARIANTS = {
    "gpt2": ("gpt2", {}),
    "gpt-neox": ("gpt-neox", {}),
    "gpt-neox-sequential": ("gpt-neox", {"use_parallel_residual": False, "rotary_pct": 0.5}),
    "llama3": ("llama", {}),
    "llama2": ("llama", {"num_key_value_heads": 4, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
    "qwen2": ("qwen2", {}),
    "gemma": ("gemma", {}),
}


def perturbed_model(architecture: str, tokenizer, seed: int = 0, n_layers: int = 3, **overrides):
    """A tiny random model whose every parameter moved off its initial value (zero biases, unit norms)."""
    from transformers import AutoModelForCausalLM

    config = _random_config(architecture, n_layers, 4, 64, 64, len(tokenizer))
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return wrap_model(hf, tokenizer, name=f"perturbed-{architecture}-{seed}")


def random_circuits(shape, count: int, seed: int, with_mlps: bool = False) -> list[Circuit]:
    """The empty and the full node circuit, then ``count`` random non-empty proper subsets of the heads
    (and MLPs with ``with_mlps``)."""
    rng = random.Random(seed)
    nodes = shape.all_heads() + (shape.all_mlps() if with_mlps else [])
    out = [Circuit(), Circuit.of(nodes)]
    for _ in range(count):
        out.append(Circuit.of(rng.sample(nodes, rng.randint(1, len(nodes) - 1))))
    return out


def random_edge_circuits(shape, count: int, seed: int) -> list[Circuit]:
    """``count`` random edge circuits, each keeping every edge with one probability of 0.1, 0.5 or 0.9."""
    rng = random.Random(seed)
    edges = all_edges(shape)
    out = []
    for _ in range(count):
        frac = rng.choice([0.1, 0.5, 0.9])
        out.append(Circuit.from_edges([e for e in edges if rng.random() < frac]))
    return out


def sample_edges(ev, count: int, seed: int) -> list[int]:
    """Indices into ``graph_of(ev).edges``: one edge per (receiver kind, input), a few embedding edges,
    the rest at random, about ``count`` in all."""
    graph = graph_of(ev)
    rng = random.Random(seed)
    by_receiver_kind = {}
    for i, e in enumerate(graph.edges):
        by_receiver_kind.setdefault((e.receiver.kind, e.receiver_input), []).append(i)
    picked = [rng.choice(v) for v in by_receiver_kind.values()]
    picked += [i for i, e in enumerate(graph.edges) if e.sender.kind == "embed"][:: max(1, len(graph.edges) // 40)][:3]
    picked += rng.sample(range(len(graph.edges)), max(0, count - len(picked)))
    return picked
