"""The edge-level forward and EAP against a literal per-edge loop in double precision.

The reference reads HF's own modules (``c_attn``/``c_proj`` Conv1D weights, LayerNorms, the MLP),
not :mod:`discovery.engine`, and builds every receiver input as an explicit sum over senders:
input(r) = embed + biases + sum_s (rep_s + mask(s->r) * (out_s - rep_s)) for ablatable senders,
plus out_s for senders that are never ablated (MLPs when they are kept).
"""

from __future__ import annotations

import pytest
import torch

from discovery.scoring.edge_forward import edge_attribution, edge_metric_values, graph_of
from discovery.scoring.evaluator import Evaluator
from discovery.search import run_search
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit, all_edges
from discovery.types.evaluation import Ablation
from tests import reference_impl as ref
from tests.edge_reference import Literal
from tests.random_inputs import random_edge_circuits, sample_edges


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mean", "resample", "zero"])
@pytest.mark.parametrize(("ablate_mlps", "ablate_embed"), [(False, False), (True, False), (True, True)])
def test_edge_circuits_match_literal_reference(tiny_model3, tokenizer, kind, ablate_mlps, ablate_embed):
    ds = build_dataset(get_task("digits"), tokenizer, n=6, seed=2)
    ev = Evaluator(tiny_model3, ds, Ablation(kind=kind, ablate_mlps=ablate_mlps, ablate_embed=ablate_embed))
    lit = Literal(tiny_model3, ds, kind, ablate_mlps, ablate_embed)
    circuits = random_edge_circuits(tiny_model3.shape, 5, seed=11)
    scores = ev.evaluate(circuits)
    for c, s in zip(circuits, scores):
        assert s.method.level == "edge" and s.method.ablate_embed == ablate_embed
        assert s.metric == pytest.approx(lit.circuit_metric(c), abs=1e-4)
    # ACDC's walk: circuits that differ from a remembered one above some layer start from there
    base = circuits[1]
    dropped = sorted(base.edges, key=lambda e: e.sort_key)[-6:]
    walk = [Circuit.from_edges(base.edges - set(dropped[i:])) for i in range(len(dropped))]
    for c, value in zip(walk, edge_metric_values(ev, [base] + walk)[1:]):
        assert value == pytest.approx(lit.circuit_metric(c), abs=1e-4)


def test_ablatable_embedding_edges(tiny_model3, tokenizer):
    """With ``ablate_embed`` the embedding sends prunable edges: all edges is still the full model,
    and removing every embed edge is the model run on the replacement embedding (resample: the
    corrupted prompts' tokens) with every other edge kept."""
    ds = build_dataset(get_task("digits"), tokenizer, n=6, seed=3)
    ev = Evaluator(tiny_model3, ds, Ablation(kind="resample", ablate_mlps=True, ablate_embed=True))
    graph = graph_of(ev)
    assert graph.senders[0].name == "embed" and graph.ablatable(all_edges(tiny_model3.shape)[0])
    full = Circuit.from_edges(graph.edges)
    no_embed = Circuit.from_edges([e for e in graph.edges if e.sender.name != "embed"])
    values = edge_metric_values(ev, [full, no_embed])
    assert values[0] == pytest.approx(ev.full_metric, abs=1e-5)
    lit = Literal(tiny_model3, ds, "resample", True, True)
    assert values[1] == pytest.approx(lit.circuit_metric(no_embed), abs=1e-4)
    assert abs(values[1] - values[0]) > 1e-3  # the embedding matters: its edges are not free


@pytest.mark.parametrize("ablate_mlps", [False, True])
def test_full_empty_and_node_equivalent_edge_sets(tiny_model3, tokenizer, ablate_mlps):
    ds = build_dataset(get_task("digits"), tokenizer, n=8, seed=0)
    ev = Evaluator(tiny_model3, ds, Ablation(kind="mean", ablate_mlps=ablate_mlps))
    edges = all_edges(tiny_model3.shape)
    full = Circuit.from_edges(edges)
    full_ref = ref.metric(ds, ref.last_logits(tiny_model3, ds.clean_ids, []))
    # node circuits, and the edge circuits of every edge leaving their components
    nodes = [Circuit.parse(t) for t in ("0.1,1.2,2.3", "0.0,0.3,1.1,2.0,2.2", "1.0")]
    if ablate_mlps:
        nodes = [c.with_nodes(*tiny_model3.shape.all_mlps()[:2]) for c in nodes]
    as_edges = [Circuit.from_edges([e for e in edges if e.sender in c.nodes]) for c in nodes]
    values = edge_metric_values(ev, [full, Circuit()] + as_edges)
    assert values[0] == pytest.approx(full_ref, abs=1e-4)
    assert values[0] == pytest.approx(ev.full_metric, abs=1e-5)
    assert values[1] == pytest.approx(ev.ablated_metric, abs=1e-5)  # no edges = node-level empty circuit
    no_edges = ev.evaluate([Circuit.from_edges([])])[0]  # scored by the edge forward, the same value
    assert no_edges.method.level == "edge" and no_edges.metric == pytest.approx(ev.ablated_metric, abs=1e-5)
    for node_c, value in zip(nodes, values[2:]):
        assert value == pytest.approx(ev.evaluate_one(node_c).metric, abs=1e-5), node_c.canonical
    # listing never-ablated edges (embed; MLPs when kept) changes nothing
    extra = [e for e in edges if not graph_of(ev).ablatable(e)]
    padded = Circuit.from_edges(list(as_edges[0].edges) + extra)
    assert edge_metric_values(ev, [padded])[0] == pytest.approx(values[2], abs=1e-6)


def test_the_edge_circuit_with_no_edges_is_its_own_circuit():
    """``Circuit.from_edges([])`` is edge-level (every edge removed), not the node-level empty circuit."""
    no_edges = Circuit.from_edges([])
    assert no_edges.level == "edge" and not no_edges.edges and str(no_edges) == "(no edges)"
    assert no_edges != Circuit() and no_edges.key != Circuit().key and Circuit().level == "node"
    assert Circuit.parse(no_edges.canonical) == no_edges and Circuit.parse("") == Circuit()
    assert Circuit.from_edges(["0.1->logits"]) == Circuit.of([], ["0.1->logits"])  # however it was built


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_no_edges_under_ablate_embed_is_every_edge_removed(tiny_model3, tokenizer, kind, tmp_path):
    """With the embedding's edges removable, the edge circuit with no edges is the forward in which
    every receiver reads only replacement values, the embedding included (EAP-IG's ``evaluate_graph``
    and auto-circuit's reading), not the node-level empty circuit, which keeps the clean embedding."""
    from discovery.scoring.stored import StoredEvaluator
    from discovery.store import open_store

    ds = build_dataset(get_task("digits"), tokenizer, n=6, seed=3)
    ev = Evaluator(tiny_model3, ds, Ablation(kind=kind, ablate_mlps=True, ablate_embed=True))
    lit = Literal(tiny_model3, ds, kind, True, True)
    no_edges = Circuit.from_edges([])
    score = ev.evaluate([no_edges])[0]
    assert score.method.level == "edge" and score.method.ablate_embed
    assert score.metric == pytest.approx(lit.circuit_metric(no_edges), abs=1e-4)
    assert abs(score.metric - ev.ablated_metric) > 1e-3  # the node-level empty circuit is another forward
    # a store keeps the two apart
    store = open_store(f"sqlite:///{tmp_path / 'empty.db'}")
    StoredEvaluator(Evaluator(tiny_model3, ds, ev.ablation), store).evaluate([no_edges, Circuit()])
    served = StoredEvaluator(Evaluator(tiny_model3, ds, ev.ablation), store)
    again = served.evaluate([no_edges, Circuit()])
    assert served.cache_hits == 2 and again[0].circuit == no_edges
    assert again[0].metric == pytest.approx(score.metric, abs=1e-9)
    assert again[1].metric == pytest.approx(ev.ablated_metric, abs=1e-9)
    store.close()


def test_batches_and_duplicates(tiny_model3, tokenizer):
    ds = build_dataset(get_task("months"), tokenizer, n=5, seed=1)
    ev = Evaluator(tiny_model3, ds)
    circuits = random_edge_circuits(tiny_model3.shape, 4, seed=3)
    together = edge_metric_values(ev, circuits + circuits[:2])
    alone = [edge_metric_values(ev, [c])[0] for c in circuits]
    assert together[:4] == pytest.approx(alone, abs=1e-6)
    assert together[4:] == pytest.approx(alone[:2], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("ablate_mlps", "ablate_embed"), [(False, False), (True, False), (True, True)])
def test_eap_matches_finite_differences(tiny_model3, tokenizer, ablate_mlps, ablate_embed):
    ds = build_dataset(get_task("digits"), tokenizer, n=6, seed=4)
    ev = Evaluator(tiny_model3, ds, Ablation(kind="mean", ablate_mlps=ablate_mlps, ablate_embed=ablate_embed))
    lit = Literal(tiny_model3, ds, "mean", ablate_mlps, ablate_embed)
    edges, scores = edge_attribution(ev, steps=1)
    eps = 1e-4
    for i in sample_edges(ev, 10, seed=5):
        name = edges[i].name
        plus = lit.metric(lambda n, name=name: 1.0 - eps if n == name else 1.0)
        minus = lit.metric(lambda n, name=name: 1.0 + eps if n == name else 1.0)
        # (rep - out) . grad: the derivative of the metric when the edge moves towards its replacement
        assert scores[i] == pytest.approx((plus - minus) / (2 * eps), abs=2e-6, rel=1e-3), name
    assert (scores != 0).sum() > len(scores) // 2


@pytest.mark.slow
@pytest.mark.parametrize("ablate_embed", [False, True])
def test_eap_ig_inputs_matches_literal_integrated_gradient(tiny_model3, tokenizer, ablate_embed):
    """EAP-IG as published: gradients of the full model on inputs interpolated corrupt -> clean."""
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=6)
    ev = Evaluator(tiny_model3, ds, Ablation(kind="resample", ablate_mlps=ablate_embed, ablate_embed=ablate_embed))
    lit = Literal(tiny_model3, ds, "resample", ablate_embed, ablate_embed)
    steps = 3
    edges, scores = edge_attribution(ev, steps=steps, interpolate="inputs")
    _, clean_out = lit.run(ds.clean_ids, lambda n: 1.0, {}, lit.rep)
    clean_x, corrupt_x = lit.embedding(ds.clean_ids), lit.embedding(ds.corrupt_ids)
    eps = 1e-4
    for i in sample_edges(ev, 6, seed=8):
        e = edges[i]
        direction = lit.rep[e.sender.name] - clean_out[e.sender.name]  # rep_s - out_s (clean run)
        total = 0.0
        for k in range(steps):
            x = corrupt_x + (k / steps) * (clean_x - corrupt_x)
            up = lit.metric(lambda n: 1.0, {e.receiver_name: eps * direction}, embed=x)
            down = lit.metric(lambda n: 1.0, {e.receiver_name: -eps * direction}, embed=x)
            total += (up - down) / (2 * eps)
        assert scores[i] == pytest.approx(total / steps, abs=2e-6, rel=1e-3), e.name


@pytest.mark.slow
def test_eap_ig_edges_matches_literal_integrated_gradient(tiny_model3, tokenizer):
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=6)
    ev = Evaluator(tiny_model3, ds, Ablation(kind="resample"))
    lit = Literal(tiny_model3, ds, "resample")
    steps = 3
    edges, scores = edge_attribution(ev, steps=steps, interpolate="edges")
    _, clean_out = lit.run(ds.clean_ids, lambda n: 1.0, {}, lit.rep)
    eps = 1e-4
    for i in sample_edges(ev, 6, seed=8):
        e = edges[i]
        direction = lit.rep[e.sender.name] - clean_out[e.sender.name]  # rep_s - out_s (clean run)
        total = 0.0
        for k in range(steps):
            alpha = (k + 0.5) / steps
            up = lit.metric(lambda n, alpha=alpha: alpha, {e.receiver_name: eps * direction})
            down = lit.metric(lambda n, alpha=alpha: alpha, {e.receiver_name: -eps * direction})
            total += (up - down) / (2 * eps)
        assert scores[i] == pytest.approx(total / steps, abs=2e-6, rel=1e-3), e.name


def differentiable_metric(ds, last: torch.Tensor) -> torch.Tensor:
    """``reference_impl.metric`` as a tensor: the mean over prompts of the answers' weighted logits
    (logit_diff) or probabilities."""
    values = last if ds.metric == "logit_diff" else last.softmax(-1)
    return (values[:, ds.answer_tokens] * ds.answer_weights.to(last.dtype)).sum(-1).mean()


def literal_input_ig(lit: Literal, ds, steps: int) -> dict[str, float]:
    """EAP-IG over inputs written out: for every edge s -> r, the mean over alpha = k/steps
    (k = 0 .. steps-1) of (rep_s - out_s) . dMetric/d input(r), the gradient taken in a run of the full
    model on the input embedding corrupt + alpha (clean - corrupt), out_s the sender's clean output."""
    _, clean_out = lit.run(ds.clean_ids, lambda n: 1.0, {}, lit.rep)
    clean_x, corrupt_x = lit.embedding(ds.clean_ids), lit.embedding(ds.corrupt_ids)
    receivers = [f"{layer}.{h}.{inp}" for layer in range(lit.n_layers) for h in range(lit.n_heads) for inp in "qkv"]
    receivers += [f"m{layer}" for layer in range(lit.n_layers)] + ["logits"]
    gradient = {r: torch.zeros_like(clean_x) for r in receivers}
    for k in range(steps):
        x = corrupt_x + (k / steps) * (clean_x - corrupt_x)
        probes = {r: torch.zeros_like(clean_x, requires_grad=True) for r in receivers}
        logits, _ = lit.run(ds.clean_ids, lambda n: 1.0, probes, lit.rep, embed=x)
        value = differentiable_metric(ds, logits)
        if k == 0:  # the tensor metric is the reference's
            assert float(value.detach()) == pytest.approx(lit.metric(embed=x), abs=1e-9)
        for r, g in zip(receivers, torch.autograd.grad(value, list(probes.values()))):
            gradient[r] += g / steps
    scores = {}
    for s, out in clean_out.items():
        if (s == "embed" and not lit.ablate_embed) or not lit.ablatable(s):
            continue
        for r in receivers:
            scores[f"{s}->{r}"] = float(((lit.rep[s] - out) * gradient[r]).sum())
    return scores


@pytest.mark.slow
@pytest.mark.parametrize("ablate_embed", [False, True])
def test_eap_ig_inputs_at_every_step_count_matches_literal_input_ig(tiny_model3, tokenizer, ablate_embed):
    """alpha = k/steps for every step count: one step is the gradient at the corrupted input (as
    hannamw/EAP-IG's ``get_scores_eap_ig``), not plain EAP's at the clean one."""
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=6)
    ev = Evaluator(tiny_model3, ds, Ablation(kind="resample", ablate_mlps=ablate_embed, ablate_embed=ablate_embed))
    lit = Literal(tiny_model3, ds, "resample", ablate_embed, ablate_embed)
    for steps in (1, 2, 5):
        edges, scores = edge_attribution(ev, steps=steps, interpolate="inputs")
        literal = literal_input_ig(lit, ds, steps)
        assert scores == pytest.approx([literal[e.name] for e in edges], abs=2e-6, rel=1e-3), steps
        assert abs(scores).max() > 1e-3


def test_eap_ig_with_one_step_is_not_eap(tiny_model3, tokenizer):
    """``eap-ig`` with one step takes the gradient at the corrupted input (alpha = 0), ``eap`` at the
    clean one (the default of :func:`edge_attribution` with one step)."""
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=6)
    ev = Evaluator(tiny_model3, ds, Ablation(kind="resample", ablate_mlps=True, ablate_embed=True))
    edges, plain = edge_attribution(ev, steps=1)
    one_step = edge_attribution(ev, steps=1, interpolate="inputs")[1]
    assert abs(one_step - plain).max() > 1e-3
    ig_ranking = dict(run_search("eap-ig", ev, {"steps": 1, "top_n": 5}).extra["edge_scores"])
    eap_ranking = dict(run_search("eap", ev, {"top_n": 5}).extra["edge_scores"])
    assert [ig_ranking[e.name] for e in edges] == pytest.approx(one_step.tolist(), abs=1e-9)
    assert [eap_ranking[e.name] for e in edges] == pytest.approx(plain.tolist(), abs=1e-9)
