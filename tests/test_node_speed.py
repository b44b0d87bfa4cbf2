"""The node-level fast path agrees with scoring each circuit alone.

The batched path sorts circuits by their masks before splitting them into passes, builds the trie
of mask prefixes within a pass, lets each trie group drop to the last position from its own last
kept layer on, and computes grouped keys/values once per key/value head. Every one of those must
give the value a circuit gets when it is scored alone (one circuit per call) and, for a sample,
the TransformerLens-hooked reference. No timing here (``bench/brute_force.py`` measures it).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from discovery.engine import core
from discovery.model import random_gpt2
from discovery.scoring.evaluator import Evaluator
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit, head, mlp
from discovery.types.evaluation import Ablation
from tests import reference_impl as ref
from tests.random_inputs import perturbed_model


@pytest.fixture(scope="module")
def gpt2_4layer(tokenizer):
    return random_gpt2(n_layers=4, n_heads=4, d_model=64, seed=2, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def llama_gqa(tokenizer):
    """Llama with 4 query heads on 2 key/value heads (the expanded K/V weights come in pairs)."""
    return perturbed_model("llama", tokenizer, seed=4, n_layers=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def neox_parallel(tokenizer):
    """Pythia-style parallel blocks: the MLP reads the block's input, computed once per trie node."""
    return perturbed_model("gpt-neox", tokenizer, seed=6, n_layers=4)


def mixed_circuits(shape, count: int, seed: int, with_mlps: bool) -> list[Circuit]:
    """Empty, full, single components at every layer, exhaustive subsets of a small pool, random ones, repeats."""
    rng = random.Random(seed)
    heads = shape.all_heads()
    nodes = heads + (shape.all_mlps() if with_mlps else [])
    out = [Circuit(), Circuit.of(nodes)]
    out += [Circuit.of([n]) for n in nodes]
    pool = rng.sample(heads, 6)
    out += [Circuit.of(c) for size in range(1, 4) for c in itertools.combinations(pool, size)]
    while len(out) < count:
        out.append(Circuit.of(rng.sample(nodes, rng.randint(1, max(1, len(nodes) // 3)))))
    out += rng.sample(out, 10)  # repeats, scored once
    rng.shuffle(out)
    return out


def last_kept_layer(circuit: Circuit) -> int:
    return max((n.layer for n in circuit.nodes if n.kind == "head"), default=-1)


def alone(ev: Evaluator, circuits: list[Circuit]) -> np.ndarray:
    return np.array([ev.metric_values([c])[0] for c in circuits])


@pytest.mark.slow  # over 20 s on the loaded 2-core machine (quick-tier durations, tests/conftest.py)
@pytest.mark.parametrize("ablate_mlps", [False, True])
def test_batched_equals_alone_gpt2(gpt2_4layer, tokenizer, ablate_mlps):
    ds = build_dataset(get_task("digits"), tokenizer, n=6, seed=4)
    circuits = mixed_circuits(gpt2_4layer.shape, 300, seed=ablate_mlps, with_mlps=ablate_mlps)
    # several passes, several chunks per layer
    ev = Evaluator(gpt2_4layer, ds, Ablation(ablate_mlps=ablate_mlps), max_tokens_per_chunk=150, circuits_per_pass=64)
    first_pass = [circuits[i] for i in ev._pass_order(circuits)[:64]]
    assert len({last_kept_layer(c) for c in first_pass}) >= 3  # groups leave the full positions at different layers
    batched = ev.metric_values(circuits)
    single = alone(Evaluator(gpt2_4layer, ds, Ablation(ablate_mlps=ablate_mlps)), circuits)
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    for circuit, value in list(zip(circuits, batched))[:: len(circuits) // 12]:
        expected = ref.ablated_metric(gpt2_4layer, ds, circuit, ablate_mlps=ablate_mlps)
        assert value == pytest.approx(expected, abs=1e-4), circuit.canonical


def test_one_pass_with_mixed_last_layers(gpt2_4layer, tokenizer):
    """One pass (no sorting): circuits ending at layers 0..3 and none, next to each other."""
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=1)
    circuits = [Circuit(), Circuit.of([head(3, 1)]), Circuit.of([head(0, 0)]), Circuit.of([head(0, 0), head(2, 3)])]
    circuits += [Circuit.of([head(0, 0), head(1, 2)]), Circuit.of([head(0, 1), head(1, 2), head(3, 0)])]
    for kind in ("mean", "resample", "zero"):
        ev = Evaluator(gpt2_4layer, ds, Ablation(kind=kind))
        batched = ev.metric_values(circuits)
        np.testing.assert_allclose(batched, alone(ev, circuits), atol=1e-5, rtol=0)
        for circuit, value in zip(circuits, batched):
            assert value == pytest.approx(ref.ablated_metric(gpt2_4layer, ds, circuit, kind=kind), abs=1e-4)


def test_caller_order_and_counts(gpt2_4layer, tokenizer):
    ds = build_dataset(get_task("digits"), tokenizer, n=4, seed=0)
    ev = Evaluator(gpt2_4layer, ds, circuits_per_pass=8)
    circuits = mixed_circuits(gpt2_4layer.shape, 40, seed=3, with_mlps=False)
    values = ev.metric_values(circuits)
    shuffled = list(reversed(circuits))
    np.testing.assert_allclose(ev.metric_values(shuffled), values[::-1], atol=1e-5, rtol=0)
    order = ev._pass_order(circuits)
    assert sorted(order.tolist()) == list(range(len(circuits)))
    seen = []
    ev.metric_values(circuits, progress=lambda done, total, _: seen.append((done, total)))
    assert seen[-1] == (len(circuits), len(circuits)) and len(seen) == -(-len(circuits) // 8)


def test_edge_circuits_keep_their_values_next_to_sorted_node_circuits(tiny_model3, tokenizer):
    ds = build_dataset(get_task("digits"), tokenizer, n=4, seed=0)
    ev = Evaluator(tiny_model3, ds, circuits_per_pass=4)
    edges = [Circuit.of([], ["0.1->2.2.v"]), Circuit.of([], ["embed->1.0.q", "1.0->logits"])]
    nodes = mixed_circuits(tiny_model3.shape, 12, seed=1, with_mlps=False)
    circuits = nodes[:5] + [edges[0]] + nodes[5:] + [edges[1]]
    values = ev.metric_values(circuits)
    expected = alone(ev, circuits)
    np.testing.assert_allclose(values, expected, atol=1e-5, rtol=0)


def test_kv_heads_detected_and_shared(llama_gqa):
    engine = llama_gqa.engine
    assert engine.flags.n_kv_heads == 2
    for layer in range(engine.n_layers):
        assert engine.kv_sources(layer).tolist() == [0, 0, 2, 2]
    normed = engine.ln1(1, torch.randn(2, 3, 7, engine.d_model, generator=torch.Generator().manual_seed(0)))
    for heads in (None, torch.tensor([1, 2, 3]), torch.tensor([0, 1]), torch.tensor([3])):
        for last_only in (False, True):
            ours = engine.attention_z_shared_kv(1, normed, heads, last_only)
            theirs = engine.attention_z(1, normed, heads, last_only)
            assert torch.allclose(ours, theirs, atol=1e-6)


def test_multi_head_models_share_nothing(gpt2_4layer):
    assert gpt2_4layer.engine.kv_sources(0).tolist() == [0, 1, 2, 3]


@pytest.mark.slow  # over 20 s on the loaded 2-core machine (quick-tier durations, tests/conftest.py)
@pytest.mark.parametrize("ablate_mlps", [False, True])
def test_batched_equals_alone_gqa(llama_gqa, tokenizer, ablate_mlps):
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=2)
    circuits = mixed_circuits(llama_gqa.shape, 200, seed=5, with_mlps=ablate_mlps)
    circuits.append(Circuit.of([head(1, 0), head(1, 1), mlp(2)] if ablate_mlps else [head(1, 0), head(1, 1)]))
    ev = Evaluator(llama_gqa, ds, Ablation(ablate_mlps=ablate_mlps), max_tokens_per_chunk=120, circuits_per_pass=50)
    batched = ev.metric_values(circuits)
    np.testing.assert_allclose(
        batched, alone(Evaluator(llama_gqa, ds, Ablation(ablate_mlps=ablate_mlps)), circuits), atol=1e-5, rtol=0
    )
    for circuit, value in list(zip(circuits, batched))[:: len(circuits) // 10]:
        expected = ref.ablated_metric(llama_gqa, ds, circuit, ablate_mlps=ablate_mlps)
        assert value == pytest.approx(expected, abs=1e-4), circuit.canonical


@pytest.mark.slow  # over 20 s on the loaded 2-core machine (quick-tier durations, tests/conftest.py)
@pytest.mark.parametrize("ablate_mlps", [False, True])
def test_batched_equals_alone_parallel_blocks(neox_parallel, tokenizer, ablate_mlps):
    """Siblings of a trie node share its MLP (parallel blocks) and its heads' z; each still gets its own value."""
    assert neox_parallel.engine.parallel
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=3)
    circuits = mixed_circuits(neox_parallel.shape, 200, seed=6, with_mlps=ablate_mlps)
    ev = Evaluator(neox_parallel, ds, Ablation(ablate_mlps=ablate_mlps), max_tokens_per_chunk=400, circuits_per_pass=80)
    batched = ev.metric_values(circuits)
    single = alone(Evaluator(neox_parallel, ds, Ablation(ablate_mlps=ablate_mlps)), circuits)
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    for circuit, value in list(zip(circuits, batched))[:: len(circuits) // 8]:
        expected = ref.ablated_metric(neox_parallel, ds, circuit, ablate_mlps=ablate_mlps)
        assert value == pytest.approx(expected, abs=1e-4), circuit.canonical


@pytest.mark.parametrize("fixture", ["gpt2_4layer", "llama_gqa"])
def test_default_chunks_keep_the_widest_activation_under_the_cpu_budget(fixture, tokenizer, monkeypatch, request):
    """Left unset, a chunk holds what keeps a layer's widest activation (the MLP's hidden layer, both
    halves when gated) under ``CPU_CHUNK_BYTES``; the scores are those of one chunk a layer."""
    model = request.getfixturevalue(fixture)
    ds = build_dataset(get_task("digits"), tokenizer, n=6, seed=4)
    circuits = mixed_circuits(model.shape, 60, seed=7, with_mlps=False)
    one_chunk = Evaluator(model, ds, max_tokens_per_chunk=10**9).metric_values(circuits)
    engine = model.engine
    hidden = engine.layers[0].W_in.shape[1] * (2 if engine.flags.gated_mlp else 1)
    tokens_per_group = ds.n * ds.seq_len
    budget = 3 * tokens_per_group * hidden * 4  # three full-position groups a chunk
    monkeypatch.setattr(core, "CPU_CHUNK_BYTES", budget)
    ev = Evaluator(model, ds)
    states: list[int] = []  # the input tokens of each full-position chunk of states
    groups: list[int] = []  # the groups of each full-position chunk of groups
    state_parts, group_outputs = ev._state_parts, ev._group_outputs

    def spy_states(layer, x, parent_of, head_mask, mlp_mask, last_only):
        if x.shape[2] == ds.seq_len:
            states.append(len(x) * tokens_per_group)
        return state_parts(layer, x, parent_of, head_mask, mlp_mask, last_only)

    def spy_groups(layer, parts, parent_of, head_mask, mlp_mask):
        if parts.block_in.shape[2] == ds.seq_len:
            groups.append(len(head_mask))
        return group_outputs(layer, parts, parent_of, head_mask, mlp_mask)

    monkeypatch.setattr(ev, "_state_parts", spy_states)
    monkeypatch.setattr(ev, "_group_outputs", spy_groups)
    np.testing.assert_allclose(ev.metric_values(circuits), one_chunk, atol=1e-5, rtol=0)
    assert max(states) == 3 * tokens_per_group and max(states) * hidden * 4 <= budget
    assert max(groups) == 3


@pytest.mark.parametrize("fixture", ["gpt2_4layer", "neox_parallel"])
def test_a_state_read_by_many_chunks_of_groups_is_computed_once(fixture, tokenizer, monkeypatch, request):
    """Every circuit reads the embedding at layer 0. With chunks of two groups, its 16 groups (one per
    mask of layer 0's four heads) take eight chunks, yet its norm, its heads' z and (parallel blocks)
    its MLP are computed once; each circuit still gets the value it gets alone."""
    model = request.getfixturevalue(fixture)
    ds = build_dataset(get_task("digits"), tokenizer, n=4, seed=5)
    last = model.shape.n_layers - 1
    layer0 = [h for h in model.shape.all_heads() if h.layer == 0]
    circuits = [  # each keeps a last-layer head, so every group keeps every position at layer 0
        Circuit.of([*subset, head(last, 1)]) for size in range(5) for subset in itertools.combinations(layer0, size)
    ]
    ev = Evaluator(model, ds, max_tokens_per_chunk=2 * ds.n * ds.seq_len)
    _ = ev.replacement
    engine = model.engine
    calls = {"ln1": 0, "mlp": 0}
    ln1, mlp_fn = engine.ln1, engine.mlp

    def count(name, fn):
        def counted(layer, *args, **kwargs):
            calls[name] += layer == 0
            return fn(layer, *args, **kwargs)

        return counted

    monkeypatch.setattr(engine, "ln1", count("ln1", ln1))
    monkeypatch.setattr(engine, "mlp", count("mlp", mlp_fn))
    batched = ev.metric_values(circuits)
    monkeypatch.undo()
    assert calls["ln1"] == 1  # one norm (and z) for the 15 groups that keep a layer-0 head
    # parallel blocks: one MLP for all 16 groups; sequential blocks: one per chunk of groups (it reads their heads)
    assert calls["mlp"] == (1 if engine.parallel else 8)
    np.testing.assert_allclose(batched, alone(Evaluator(model, ds), circuits), atol=1e-5, rtol=0)
