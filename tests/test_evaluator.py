"""The batched evaluator agrees with one hooked forward per circuit through TransformerLens."""

from __future__ import annotations

import pytest
import torch

from discovery.scoring.evaluator import Evaluator, record_forward
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit, head, mlp
from discovery.types.errors import UsageError
from discovery.types.evaluation import Ablation
from tests import reference_impl as ref
from tests.random_inputs import random_circuits


def test_record_forward_reproduces_hf_logits(tiny_model3, tokenizer):
    ds = build_dataset(get_task("digits"), tokenizer, n=8, seed=3)
    engine = tiny_model3.engine
    rec = record_forward(engine, ds.clean_ids)
    ours = engine.logits(rec.resid_final)
    with torch.no_grad():
        theirs = tiny_model3.hf_model(ds.clean_ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("kind", ["mean", "resample", "zero"])
@pytest.mark.parametrize("ablate_mlps", [False, True])
def test_batched_matches_hooked_reference(tiny_model3, tokenizer, kind, ablate_mlps):
    ds = build_dataset(get_task("digits"), tokenizer, n=12, seed=1)
    ev = Evaluator(tiny_model3, ds, Ablation(kind=kind, ablate_mlps=ablate_mlps), max_tokens_per_chunk=200)
    circuits = random_circuits(tiny_model3.shape, 10, seed=7, with_mlps=ablate_mlps)
    scores = ev.evaluate(circuits)
    for circuit, score in zip(circuits, scores):
        expected = ref.ablated_metric(tiny_model3, ds, circuit, kind=kind, ablate_mlps=ablate_mlps)
        assert score.metric == pytest.approx(expected, abs=1e-4), circuit.canonical
    assert scores[0].metric == pytest.approx(ev.ablated_metric, abs=1e-6)
    assert scores[1].metric == pytest.approx(ev.full_metric, abs=1e-6)
    assert scores[1].normalised == pytest.approx(1.0, abs=1e-6)
    assert scores[0].normalised == pytest.approx(0.0, abs=1e-6)


def test_prob_diff_metric_matches_reference(tiny_model3, tokenizer):
    ds = build_dataset(get_task("greater-than"), tokenizer, n=6, seed=2)
    ev = Evaluator(tiny_model3, ds)
    circuits = random_circuits(tiny_model3.shape, 4, seed=3)
    for circuit, score in zip(circuits, ev.evaluate(circuits)):
        assert score.metric == pytest.approx(ref.ablated_metric(tiny_model3, ds, circuit), abs=1e-6)


def test_clean_source_and_full_model(tiny_model, tokenizer):
    ds = build_dataset(get_task("months"), tokenizer, n=5, seed=0)
    ev = Evaluator(tiny_model, ds, Ablation(source="clean"))
    c = Circuit.parse("0.1,1.3")
    assert ev.evaluate_one(c).metric == pytest.approx(ref.ablated_metric(tiny_model, ds, c, source="clean"), abs=1e-4)
    full_ref = ref.metric(ds, ref.last_logits(tiny_model, ds.clean_ids, []))
    assert ev.full_metric == pytest.approx(full_ref, abs=1e-4)


def test_equal_circuits_are_computed_once_and_prefixes_shared(tiny_model3, tokenizer):
    ds = build_dataset(get_task("digits"), tokenizer, n=4, seed=0)
    ev = Evaluator(tiny_model3, ds)
    ev.full_metric, ev.ablated_metric  # noqa: B018 - computed up front so the count below is only the batch
    before = ev.forward_count
    a, b = Circuit.parse("2.0,2.1"), Circuit.parse("2.0,2.2")
    ev.evaluate([a, b, a, b])
    assert ev.forward_count - before == 2


def test_score_carries_its_method(tiny_model, tokenizer):
    ds = build_dataset(get_task("digits"), tokenizer, n=4, seed=0)
    score = Evaluator(tiny_model, ds, Ablation(kind="resample")).evaluate_one(Circuit.parse("0.0"))
    m = score.method
    assert (m.ablation, m.level, m.ablate_mlps, m.metric) == ("resample", "node", False, "logit_diff")
    assert m.source == "digits[corruption=repeat-last,n=4,seed=0,length=4,template=plain]:corrupt"
    assert "(circuit - ablated) / (full - ablated)" in m.describe()


def test_out_of_range_component_is_refused(tiny_model, tokenizer):
    ds = build_dataset(get_task("digits"), tokenizer, n=2, seed=0)
    with pytest.raises(UsageError, match=r"component 2\.0: layer 2 is out of range"):
        Evaluator(tiny_model, ds).evaluate([Circuit.parse("2.0")])
    with pytest.raises(UsageError, match=r"component 1\.4: head 4 is out of range"):
        Evaluator(tiny_model, ds).evaluate([Circuit.of([head(1, 4), mlp(0)])])
