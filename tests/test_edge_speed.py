"""The edge-level fast paths against the straightforward edge forward, on three families.

The straightforward forward gives every receiver its own stream built from the kept edges (what
``edge_forward`` does with probes, all zeros); it is itself checked against literal per-edge loops
in ``test_edge_forward`` (GPT-2) and ``test_engine`` (Llama, Qwen2). Here: the removed-edge form
used for near-full circuits, the remembered prefix that ACDC's walk reuses (circuits recomputed
only from the lowest layer where they differ), and attribution in prompt batches.
"""

from __future__ import annotations

import random

import pytest
import torch

from discovery.scoring import edge_forward as ef
from discovery.scoring.evaluator import Evaluator
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import LOGITS, Circuit
from discovery.types.evaluation import Ablation
from tests.random_inputs import VARIANTS, perturbed_model

FAMILIES = ["gpt2", "gpt-neox", "llama3"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tokenizer):
    architecture, overrides = VARIANTS[request.param]
    return perturbed_model(architecture, tokenizer, seed=5, **overrides)


def straightforward(ev: Evaluator, circuits: list[Circuit]) -> list[float]:
    graph = ef.graph_of(ev)
    masks = graph.mask(circuits)
    n, p = ev.dataset.clean_ids.shape
    zeros = torch.zeros(len(circuits), len(graph.receivers), n, p, ev.engine.d_model)
    with torch.no_grad():
        return ef.edge_forward(ev, masks, probes=zeros).mean(-1).double().tolist()


def layer_of(edge, n_layers: int) -> int:
    return n_layers if edge.receiver == LOGITS else edge.receiver.layer


def walk_circuits(ev: Evaluator, start: set, seed: int) -> list[list[Circuit]]:
    """Batches as ACDC's walk makes them: from the top layer down, each batch removes edges into one
    layer's receivers on top of what earlier batches removed."""
    rng = random.Random(seed)
    n_layers = ev.shape.n_layers
    current = set(start)
    batches = []
    for layer in range(n_layers, -1, -1):
        into = sorted((e for e in current if layer_of(e, n_layers) == layer), key=lambda e: e.sort_key)
        if not into:
            continue
        batch, trial = [], set(current)
        for e in rng.sample(into, min(3, len(into))):
            trial.discard(e)
            batch.append(Circuit.from_edges(trial))
        batches.append(batch)
        current = trial
    return batches


@pytest.mark.parametrize("kind,ablate_mlps", [("mean", False), ("resample", True), ("zero", True)])
def test_walk_from_remembered_prefix_equals_straightforward(family, tokenizer, kind, ablate_mlps, monkeypatch):
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=1)
    ev = Evaluator(family, ds, Ablation(kind=kind, ablate_mlps=ablate_mlps))
    graph = ef.graph_of(ev)
    starts: list[int] = []
    real_forward = ef._forward

    def spy(*args, **kwargs):
        starts.append(kwargs.get("start_layer", 0))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(ef, "_forward", spy)
    rng = random.Random(2)
    for start in (set(graph.edges), {e for e in graph.edges if rng.random() < 0.6}):
        ev.edge_prefixes.clear()
        first = Circuit.from_edges(start)
        assert ev.evaluate([first])[0].metric == pytest.approx(straightforward(ev, [first])[0], abs=1e-5)
        for batch in walk_circuits(ev, start, seed=3):
            got = [s.metric for s in ev.evaluate(batch)]
            assert got == pytest.approx(straightforward(ev, batch), abs=1e-5)
    assert max(starts) == ev.shape.n_layers and sum(1 for s in starts if s > 0) >= 2 * ev.shape.n_layers


def test_near_full_near_empty_and_mixed_batches(family, tokenizer):
    ds = build_dataset(get_task("months"), tokenizer, n=4, seed=0)
    ev = Evaluator(family, ds, Ablation(ablate_mlps=True))
    edges = ef.graph_of(ev).edges
    rng = random.Random(7)
    circuits = [
        Circuit.from_edges(edges),
        Circuit.from_edges([e for e in edges if rng.random() < 0.97]),  # most receivers lose one edge
        Circuit.from_edges(edges[: len(edges) - 3]),  # the logits lose three
        Circuit.from_edges([e for e in edges if rng.random() < 0.05]),
        Circuit.from_edges([e for e in edges if rng.random() < 0.5]),
    ]
    expected = straightforward(ev, circuits)
    ev.edge_prefixes.clear()
    together = [s.metric for s in ev.evaluate(circuits)]
    alone = []
    for c in circuits:
        ev.edge_prefixes.clear()
        alone.append(ev.evaluate([c])[0].metric)
    assert together == pytest.approx(expected, abs=1e-5)
    assert alone == pytest.approx(expected, abs=1e-5)
    assert together[0] == pytest.approx(ev.full_metric, abs=1e-5)


@pytest.mark.slow  # over 20 s on the loaded 2-core machine (quick-tier durations, tests/conftest.py)
@pytest.mark.parametrize("steps", [1, 3])
def test_attribution_in_prompt_batches_equals_one_batch(family, tokenizer, steps):
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=3)
    ev = Evaluator(family, ds, Ablation(kind="resample", ablate_mlps=True))
    edges, whole = ef.edge_attribution(ev, steps=steps, prompt_batch=5)
    _, batched = ef.edge_attribution(ev, steps=steps, prompt_batch=2)
    assert len(edges) == len(whole) and abs(whole).max() > 0
    assert batched == pytest.approx(whole, abs=1e-6, rel=1e-4)
