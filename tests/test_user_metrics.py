"""User metrics: a function of the last position's logits, through the API, by name, and from a task file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import discovery as cd
from discovery.scoring.edge_forward import graph_of
from discovery.scoring.evaluator import Evaluator
from discovery.scoring.metrics import BUILTIN_READOUTS, LOGITS, per_prompt_metric
from discovery.scoring.patching import path_patching
from discovery.scoring.stored import StoredEvaluator
from discovery.store import open_store
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.evaluation import Ablation
from discovery.types.metrics import BUILTIN_METRICS, TASK_METRICS


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


def by_hand(metric: str, logits: torch.Tensor, dataset, reference: torch.Tensor) -> torch.Tensor:
    """Each built-in metric written out from the last position's logits [..., n, vocab]."""
    weights = dataset.answer_weights.to(logits.dtype)
    if metric == "logit_diff":
        return (logits[..., dataset.answer_tokens] * weights).sum(-1)
    if metric == "prob_diff":
        return (torch.softmax(logits, dim=-1)[..., dataset.answer_tokens] * weights).sum(-1)
    if metric == "kl":
        return torch.nn.functional.kl_div(
            logits.double().log_softmax(-1), reference, log_target=True, reduction="none"
        ).sum(-1)
    raise AssertionError(f"no formula for the built-in metric {metric!r}: add one here")


def test_every_builtin_metric_has_a_readout_that_matches_its_formula(tokenizer):
    assert set(BUILTIN_READOUTS) == set(BUILTIN_METRICS) and set(TASK_METRICS) < set(BUILTIN_METRICS)
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=0)
    logits = torch.randn(3, ds.n, tokenizer.vocab_size, generator=torch.Generator().manual_seed(0))
    reference = torch.randn(ds.n, tokenizer.vocab_size, generator=torch.Generator().manual_seed(1)).double()
    reference = reference.log_softmax(-1)
    for metric in BUILTIN_METRICS:
        values = per_prompt_metric(LOGITS, ds, logits, metric, reference)
        assert values.shape == (3, ds.n) and values.dtype == logits.dtype
        torch.testing.assert_close(values.double(), by_hand(metric, logits, ds, reference).double(), msg=metric)
    for metric in set(BUILTIN_METRICS) - set(TASK_METRICS):
        with pytest.raises(UsageError, match="answer tokens only"):
            per_prompt_metric(LOGITS, ds, logits, metric, reference, task_metrics_only=True)


def test_a_task_file_may_name_a_registered_metric_and_an_unregistered_one_is_refused(tiny_model3, tokenizer, tmp_path):
    rows = [{"clean": f"1 2 {i}", "corrupt": f"1 2 {i + 1}", "answer": f" {i + 1}", "wrong": f" {i}"} for i in (3, 4)]
    task_file = tmp_path / "task.json"
    cd.register_metric("registered_margin", answer_margin)
    task_file.write_text(json.dumps({"metric": "registered_margin", "examples": rows}))
    ev = Evaluator(tiny_model3, build_dataset(get_task(f"file:{task_file}"), tokenizer, n=2))
    assert ev.metric_name == "registered_margin"
    task_file.write_text(json.dumps({"metric": "nobody_registered_this", "examples": rows}))
    ds = build_dataset(get_task(f"file:{task_file}"), tokenizer, n=2)
    with pytest.raises(UsageError, match="not registered"):
        Evaluator(tiny_model3, ds)
    for bad in ("kl", "not a name"):
        task_file.write_text(json.dumps({"metric": bad, "examples": rows}))
        with pytest.raises(UsageError, match="unknown metric"):
            get_task(f"file:{task_file}")


def test_the_tasks_do_not_import_scoring():
    """Scoring imports the tasks (Dataset), so a task file's metric is registered from scoring, not tasks."""
    code = "import sys, discovery.tasks; print(sorted(m for m in sys.modules if m.startswith('discovery.scoring')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
