"""KL divergence to the full model, the ratio score, the unreliable-span flag, and ACDC as published.

ACDC (Conmy et al. 2023) is checked edge for edge against a literal implementation of the published
walk: receivers from the logits backwards, each incoming edge removed when removing it raises
KL(full model || circuit) by less than tau, every receiver input scored by the per-edge literal
forward of ``test_edge_forward`` (float64, HF's own modules).
"""

from __future__ import annotations

import pytest
import torch

from discovery.scoring.edge_forward import graph_of
from discovery.scoring.evaluator import Evaluator
from discovery.search.base import run_search
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit
from discovery.types.evaluation import Ablation
from tests import reference_impl as ref
from tests.edge_reference import Literal
from tests.random_inputs import perturbed_model


@pytest.fixture(scope="module")
def model(tokenizer):
    return perturbed_model("gpt2", tokenizer, seed=5, n_layers=2)


@pytest.fixture(scope="module")
def dataset(tokenizer):
    return build_dataset(get_task("digits"), tokenizer, n=5, seed=3)


def literal_kl(lit: Literal, logits: torch.Tensor, full_logits: torch.Tensor) -> float:
    ref_logp = torch.log_softmax(full_logits, -1)
    return float((ref_logp.exp() * (ref_logp - torch.log_softmax(logits, -1))).sum(-1).mean())


def test_kl_metric_is_zero_for_the_full_model_and_matches_hooks(model, dataset):
    ev = Evaluator(model, dataset, Ablation(kind="mean"), metric="kl")
    assert ev.full_metric == pytest.approx(0.0, abs=1e-6)
    assert ev.ablated_metric > 0
    full_logits = ref.last_logits(model, dataset.clean_ids, []).double()
    for text in ("0.1,1.2", "1.0", "0.0,0.1,0.2,0.3"):
        circuit = Circuit.parse(text)
        kept = {(n.layer, n.head) for n in circuit.nodes}
        acts = ref.source_activations(model, dataset.corrupt_ids)
        hooks = []
        for layer in range(2):
            mean = acts[ref.z_hook(layer)].mean(0, keepdim=True)

            def patch(z, hook, layer=layer, mean=mean, kept=kept):
                z = z.clone()
                for h in range(4):
                    if (layer, h) not in kept:
                        z[:, :, h] = mean[:, :, h]
                return z

            hooks.append((ref.z_hook(layer), patch))
        logits = ref.last_logits(model, dataset.clean_ids, hooks).double()
        ref_logp = torch.log_softmax(full_logits, -1)
        expected = float((ref_logp.exp() * (ref_logp - torch.log_softmax(logits, -1))).sum(-1).mean())
        score = ev.evaluate_one(circuit)
        assert score.metric == pytest.approx(expected, abs=1e-5), text
        assert score.method.metric == "kl"
    edge_full = Circuit.from_edges(graph_of(ev).edges)
    assert ev.evaluate_one(edge_full).metric == pytest.approx(0.0, abs=1e-6)


def test_ratio_and_unreliable_span(model, dataset, tokenizer):
    ev = Evaluator(model, dataset)
    score = ev.evaluate_one(Circuit.parse("0.1,1.2"))
    assert score.ratio == pytest.approx(score.metric / score.full)
    assert score.reliable == ev.span_reliable
    # a model whose heads write nothing: ablating them changes nothing, so normalised means nothing
    silent = perturbed_model("gpt2", tokenizer, seed=5, n_layers=2)
    with torch.no_grad():
        for block in silent.hf_model.transformer.h:
            block.attn.c_proj.weight.zero_()
    flat = Evaluator(silent, dataset)
    assert not flat.span_reliable
    assert not flat.evaluate_one(Circuit.parse("0.1")).reliable
    assert "unreliable" in flat.span_note and ev.span_note == ("" if ev.span_reliable else ev.span_note)


def test_means_from_a_separate_larger_source_set(model, dataset, tokenizer):
    big = build_dataset(get_task("digits"), tokenizer, n=20, seed=9)
    ev = Evaluator(model, dataset, Ablation(kind="mean"), source_dataset=big)
    assert big.description in ev.method().source
    circuit = Circuit.parse("0.1,1.2")
    acts = ref.source_activations(model, big.corrupt_ids)
    kept = {(n.layer, n.head) for n in circuit.nodes}
    hooks = []
    for layer in range(2):
        mean = acts[ref.z_hook(layer)].mean(0, keepdim=True)

        def patch(z, hook, layer=layer, mean=mean):
            z = z.clone()
            for h in range(4):
                if (layer, h) not in kept:
                    z[:, :, h] = mean[:, :, h]
            return z

        hooks.append((ref.z_hook(layer), patch))
    expected = ref.metric(dataset, ref.last_logits(model, dataset.clean_ids, hooks))
    assert ev.evaluate_one(circuit).metric == pytest.approx(expected, abs=1e-4)


def literal_acdc(model, dataset, ev, tau: float, ablate_mlps: bool = True, ablate_embed: bool = True) -> set[str]:
    """The published walk, literally: KL criterion, every edge (embedding and MLPs too), paired
    (resample) patching."""
    lit = Literal(model, dataset, "resample", ablate_mlps, ablate_embed)
    graph = graph_of(ev)
    senders_ablatable = {s.name for s in graph.senders}
    full_logits = lit.run(dataset.clean_ids, lambda name: 1.0, {}, lit.rep)[0]

    def kl(kept: set[str]) -> float:
        logits = lit.run(dataset.clean_ids, lambda name: 1.0 if name in kept else 0.0, {}, lit.rep)[0]
        return literal_kl(lit, logits, full_logits)

    current = {e.name for e in graph.edges}
    cur = kl(current)
    for receiver, inp in reversed(graph.receivers):
        incoming = sorted(
            (e for e in graph.edges if e.receiver == receiver and e.receiver_input == inp and e.name in current),
            key=lambda e: e.sender.sort_key,
            reverse=True,
        )
        if not incoming:
            continue
        if receiver.name in senders_ablatable and not any(name.split("->")[0] == receiver.name for name in current):
            current -= {e.name for e in incoming}  # nothing reads this head (or ablatable MLP) any more
            continue
        for e in incoming:
            trial = current - {e.name}
            value = kl(trial)
            if value - cur < tau:
                current, cur = trial, value
    return current


@pytest.mark.slow
@pytest.mark.parametrize("every_edge", [True, False])
def test_acdc_equals_the_literal_published_algorithm(model, dataset, every_edge):
    """As published (every edge prunable, the default), and with the embedding and MLPs kept."""
    chosen = Ablation(kind="resample", ablate_mlps=every_edge, ablate_embed=every_edge)
    ev = Evaluator(model, dataset, chosen)
    full = Circuit.from_edges(graph_of(ev).edges)
    kl_ev = ev.with_metric("kl")
    # a tau inside the spread of single-edge effects, so the walk both keeps and removes edges
    singles = sorted(
        s.metric for s in kl_ev.evaluate([Circuit.from_edges(full.edges - {e}) for e in graph_of(ev).edges[::7]])
    )
    tau = (singles[len(singles) // 2] + singles[len(singles) // 2 + 1]) / 2  # between two effects: no tie at tau
    result = run_search("acdc", ev, {"tau": tau})
    expected = literal_acdc(model, dataset, ev, tau, every_edge, every_edge)
    assert {e.name for e in result.circuit.edges} == expected
    assert 0 < len(expected) < len(graph_of(ev).edges)
    if every_edge:  # the walk tested (and kept or pruned) the embedding's and the MLPs' edges
        assert any(e.sender.kind == "embed" for e in graph_of(ev).edges)
        assert result.score.method.ablate_embed and result.score.method.ablate_mlps
    assert result.extra["criterion"] == "kl" and result.extra["final_kl"] >= 0
    assert result.score.method.metric == dataset.metric  # the reported score is the task's, normalised


def test_interrupted_acdc_resumes_from_stored_scores_with_the_same_result(model, dataset, tmp_path):
    """A killed ACDC job's rerun replays the walk from the store: no circuit scored twice, and the
    same circuit as an uninterrupted run; progress counts work up to its total (the ETA's basis)."""
    from discovery.scoring.stored import StoredEvaluator
    from discovery.store import open_store

    params = {"tau": 0.02, "batch": 4}
    uninterrupted = run_search("acdc", Evaluator(model, dataset), params)

    class Killed(Exception):
        pass

    store = open_store(f"sqlite:///{tmp_path / 'acdc.db'}")
    first = StoredEvaluator(Evaluator(model, dataset), store)
    calls = []

    def die_midway(done, total, message):
        calls.append((done, total))
        if len(calls) == 3:
            raise Killed

    with pytest.raises(Killed):
        run_search("acdc", first, params, die_midway)
    assert first.cache_misses > 0
    second = StoredEvaluator(Evaluator(model, dataset), store)
    seen = []
    resumed = run_search("acdc", second, params, lambda d, t, m: seen.append((d, t, m)))
    assert resumed.circuit == uninterrupted.circuit
    assert second.cache_hits >= first.cache_misses  # everything the killed run scored is served
    assert second.cache_misses + first.cache_misses == uninterrupted.n_evaluations
    totals = {t for _, t, _ in seen if t is not None and t > 1}
    assert len(totals) == 1 and seen[-1][0] == totals.pop() and "edges tested" in seen[-1][2]
    store.close()


def test_acdc_runs_as_published_unless_told_otherwise(model, dataset):
    """Left unset, ACDC's evaluation is the paper's: paired resample patching, every edge prunable;
    a setting the caller gives wins, and whatever ran is what the score records."""
    import discovery as cd
    from discovery.search import get_method

    spec = get_method("acdc")
    assert spec.resolve_evaluation() == ("resample", True, True)
    assert spec.resolve_evaluation("mean", False, None) == ("mean", False, True)
    assert get_method("greedy").resolve_evaluation() == ("mean", False, False)
    assert get_method("iterative-pruning").resolve_evaluation() == ("mean", True, False)
    result = cd.discover(model, dataset, method="acdc", store=False, tau=0.05)
    method = result.score.method
    assert (method.ablation, method.ablate_mlps, method.ablate_embed, method.level) == ("resample", True, True, "edge")
    kept = cd.discover(model, dataset, method="acdc", store=False, tau=0.05, ablation="mean", ablate_embed=False)
    assert (kept.score.method.ablation, kept.score.method.ablate_embed) == ("mean", False)
    assert not any(e.sender.kind == "embed" for e in kept.circuit.edges)


@pytest.mark.slow
def test_acdc_that_removes_every_edge_says_so(model, dataset):
    evaluator = Evaluator(model, dataset, Ablation(kind="resample", ablate_mlps=True, ablate_embed=True))
    result = run_search("acdc", evaluator, {"tau": 1e6})
    assert result.circuit == Circuit.from_edges([]) and "removed every edge" in result.extra["warning"]
    # scored as every edge removed (the embedding's too, ACDC's graph), not as the node-level empty circuit
    lit = Literal(model, dataset, "resample", ablate_mlps=True, ablate_embed=True)
    assert result.score.method.level == "edge" and result.score.method.ablate_embed
    assert result.score.metric == pytest.approx(lit.circuit_metric(result.circuit), abs=1e-4)
    assert abs(result.score.metric - evaluator.ablated_metric) > 1e-3
    kept = run_search("acdc", Evaluator(model, dataset), {"tau": 0.0})
    assert kept.circuit.edges and kept.extra["warning"] is None
