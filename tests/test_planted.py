"""Planted circuits: hand-built GPT-2 models whose circuit is known from the construction.

Every claim is checked with the evaluator's public API on the saved Hugging Face directory (the
same path as any model): the planted circuit keeps the behaviour, its complement does not, every
planted head matters, every distractor writes to the residual stream and does not matter, and the
planted edges alone (an edge-level circuit) keep the behaviour.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from discovery.model import load_model
from discovery.reference import PLANTED, planted_truth, train_reference
from discovery.scoring.evaluator import Evaluator
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit
from discovery.types.evaluation import Ablation

torch.set_num_threads(2)


PLANTED_CIRCUITS = sorted(name for name, spec in PLANTED.items() if spec.builder == "chains")


@pytest.fixture(scope="module", params=PLANTED_CIRCUITS)
def planted(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / request.param
    report = train_reference(request.param, out)
    model = load_model(str(out))
    dataset = build_dataset(get_task(f"file:{out}/task.json"), model.tokenizer, n=60, seed=0)
    return request.param, out, report, model, dataset, planted_truth(out)


def test_planted_model_is_realistic_in_shape_and_circuit(planted) -> None:
    name, out, report, model, _, truth = planted
    cfg = model.hf_model.config
    assert type(model.hf_model).__name__ == "GPT2LMHeadModel"
    assert 8 <= cfg.n_layer <= 12 and 8 <= cfg.n_head <= 12
    nodes = [tuple(int(x) for x in n.split(".")) for n in truth["nodes"]]
    assert 8 <= len(nodes) <= 20, truth["nodes"]
    assert len({layer for layer, _ in nodes}) >= 4
    # composition: some head reads another head's output through its key, some through its value
    inputs = {e.rsplit(".", 1)[1] for e in truth["edges"] if not e.endswith("->logits")}
    assert {"k", "v"} <= inputs, truth["edges"]
    # every edge joins two planted heads (or a planted head and the logits)
    for edge in truth["edges"]:
        sender, receiver = edge.split("->")
        assert sender in truth["nodes"]
        assert receiver == "logits" or receiver.rsplit(".", 1)[0] in truth["nodes"]
    assert report.heldout_accuracy["task top-1"] >= 0.95, report


@pytest.mark.parametrize("kind", ["mean", "resample"])
def test_circuit_keeps_the_behaviour_and_its_complement_does_not(planted, kind: str) -> None:
    _, _, _, model, dataset, truth = planted
    ev = Evaluator(model, dataset, Ablation(kind))
    assert ev.full_metric > 3.0, ev.full_metric  # a clear logit difference to recover
    circuit = Circuit.of(truth["nodes"])
    complement = Circuit.of([h for h in ev.shape.all_heads() if h.name not in set(truth["nodes"])])
    kept, rest = ev.evaluate([circuit, complement])
    assert kept.normalised >= 0.95, kept
    assert rest.normalised <= 0.1, rest


def test_every_planted_head_matters_and_no_distractor_does(planted) -> None:
    _, _, _, model, dataset, truth = planted
    ev = Evaluator(model, dataset)
    full = Circuit.of(ev.shape.all_heads())
    scores = {s.circuit: s.normalised for s in ev.evaluate([full.without_nodes(h) for h in full.heads])}
    for h in full.heads:
        drop = 1.0 - scores[full.without_nodes(h)]
        if h.name in truth["nodes"]:
            assert drop >= 0.2, (h.name, drop)
        else:
            assert abs(drop) <= 0.01, (h.name, drop)


def test_distractors_write_to_the_residual_stream(planted) -> None:
    """A distractor's output is as large as a planted head's: it is ignored, not silent."""
    _, _, _, model, dataset, truth = planted
    with torch.no_grad():
        w = load_file(str(planted[1] / "model.safetensors"))
    n_head = model.hf_model.config.n_head
    d = model.hf_model.config.n_embd
    dh = d // n_head
    cache: dict[int, torch.Tensor] = {}

    def hook(layer: int):
        def run(module, args, kwargs, output):
            cache[layer] = args[0] if args else kwargs["hidden_states"]

        return run

    handles = [
        block.attn.c_proj.register_forward_hook(hook(i), with_kwargs=True)
        for i, block in enumerate(model.hf_model.transformer.h)
    ]
    try:
        with torch.no_grad():
            model.hf_model(dataset.clean_ids)
    finally:
        for handle in handles:
            handle.remove()
    norms = {}
    for layer, z in cache.items():  # z: [n, seq, d] = heads' outputs side by side, before W_O
        W_O = w[f"transformer.h.{layer}.attn.c_proj.weight"].reshape(n_head, dh, d)
        for h in range(n_head):
            out = z[..., h * dh : (h + 1) * dh] @ W_O[h]
            norms[f"{layer}.{h}"] = float(out[:, -1].norm(dim=-1).mean())
    distractors = [v for k, v in norms.items() if k not in truth["nodes"]]
    planted_norms = [norms[k] for k in truth["nodes"]]
    assert min(distractors) > 0.1 * max(planted_norms), (min(distractors), max(planted_norms))
    assert sum(d > min(planted_norms) for d in distractors) >= len(distractors) // 4


def test_planted_edges_alone_keep_the_behaviour(planted) -> None:
    _, _, _, model, dataset, truth = planted
    ev = Evaluator(model, dataset)
    edges = Circuit.from_edges(truth["edges"])
    assert ev.evaluate_one(edges).normalised >= 0.95
    # dropping any one planted edge costs
    some = sorted(truth["edges"])[:: max(1, len(truth["edges"]) // 4)]
    for edge in some:
        without = Circuit.from_edges([e for e in truth["edges"] if e != edge])
        assert ev.evaluate_one(without).normalised <= 0.8, edge


def test_planted_build_is_deterministic(tmp_path: Path) -> None:
    name = PLANTED_CIRCUITS[0]
    train_reference(name, tmp_path / "a")
    train_reference(name, tmp_path / "b")
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert planted_truth(tmp_path / "a") == planted_truth(tmp_path / "b")
    assert (tmp_path / "a" / "task.json").read_text() == (tmp_path / "b" / "task.json").read_text()
