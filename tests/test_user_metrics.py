"""User metrics: a function of the last position's logits, through the API, by name, and from a task file."""

from __future__ import annotations

import json

import pytest
import torch

import discovery as cd
from discovery.scoring.edge_forward import graph_of
from discovery.scoring.evaluator import Evaluator
from discovery.scoring.patching import path_patching
from discovery.store import StoredEvaluator, open_store
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.evaluation import Ablation


def answer_margin(logits: torch.Tensor, dataset) -> torch.Tensor:
    """Logit difference spelled out over the whole vocabulary's logits."""
    weights = dataset.answer_weights.to(logits.dtype)
    return (logits[..., dataset.answer_tokens] * weights).sum(-1)


def top_logit(logits: torch.Tensor, dataset) -> torch.Tensor:
    return logits.max(-1).values


def test_a_callable_metric_scores_like_the_builtin_it_spells_out_and_is_stored_by_name(
    tiny_model3, tokenizer, tmp_path
):
    ds = build_dataset(get_task("digits"), tokenizer, n=6, seed=0)
    builtin = Evaluator(tiny_model3, ds, Ablation(ablate_mlps=True))
    mine = Evaluator(tiny_model3, ds, Ablation(ablate_mlps=True), metric=answer_margin)
    assert mine.metric_name == "answer_margin"
    edges = graph_of(mine).edges
    circuits = [Circuit.parse("0.1,1.2,m0"), Circuit(), Circuit.from_edges(edges[::3])]
    for a, b in zip(builtin.evaluate(circuits), mine.evaluate(circuits)):
        assert b.metric == pytest.approx(a.metric, abs=1e-5) and b.normalised == pytest.approx(a.normalised, abs=1e-4)
        assert b.method.metric == "answer_margin"
    store = open_store(f"sqlite:///{tmp_path / 'm.db'}")
    StoredEvaluator(Evaluator(tiny_model3, ds, metric=top_logit), store).evaluate(circuits[:1])
    [record] = store.evaluations()
    assert record.method.metric == "top_logit"
    # another metric on the same circuit is another stored row, not a cache hit
    again = StoredEvaluator(Evaluator(tiny_model3, ds, metric=answer_margin), store)
    again.evaluate(circuits[:1])
    assert again.cache_misses == 1
    store.close()


def test_registered_metric_through_the_api_and_bad_metrics_refused(tiny_model3, tokenizer):
    cd.register_metric("highest", top_logit)
    ds = cd.dataset(tiny_model3, "digits", n=4)
    [score] = cd.evaluate(tiny_model3, "0.1", ds, store=False, metric="highest")
    assert score.method.metric == "highest"
    with pytest.raises(UsageError, match="needs a name"):
        Evaluator(tiny_model3, ds, metric=lambda logits, d: logits[..., 0])
    with pytest.raises(UsageError, match="built in"):
        cd.register_metric("kl", top_logit)
    with pytest.raises(UsageError, match="one value per prompt"):
        Evaluator(tiny_model3, ds, metric=lambda_free_bad_shape).evaluate_one(Circuit())


def lambda_free_bad_shape(logits: torch.Tensor, dataset) -> torch.Tensor:
    return logits  # [.., n, vocab]: not one value per prompt


def test_a_task_file_names_its_metric_in_a_python_file(tiny_model3, tokenizer, tmp_path):
    (tmp_path / "metrics.py").write_text(
        "def file_margin(logits, dataset):\n"
        "    w = dataset.answer_weights.to(logits.dtype)\n"
        "    return (logits[..., dataset.answer_tokens] * w).sum(-1)\n"
    )
    rows = [
        {"clean": f"1 2 {i}", "corrupt": f"1 2 {i + 1}", "answer": f" {i + 1}", "wrong": f" {i}"} for i in range(3, 8)
    ]
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps({"metric": "metrics.py:file_margin", "examples": rows}))
    ds = build_dataset(get_task(f"file:{task_file}"), tokenizer, n=5)
    assert ds.metric == "file_margin"
    ev = Evaluator(tiny_model3, ds)
    assert ev.metric_name == "file_margin"
    plain_rows = tmp_path / "plain.json"
    plain_rows.write_text(json.dumps({"examples": rows}))
    plain = Evaluator(tiny_model3, build_dataset(get_task(f"file:{plain_rows}"), tokenizer, n=5))
    head = Circuit.parse("1.1")
    assert ev.evaluate_one(head).metric == pytest.approx(plain.evaluate_one(head).metric)
    with pytest.raises(UsageError, match="answer tokens only"):
        path_patching(tiny_model3, ds, "logits")
    task_file.write_text(json.dumps({"metric": "metrics.py:missing", "examples": rows}))
    with pytest.raises(UsageError, match="no function 'missing'"):
        get_task(f"file:{task_file}")
