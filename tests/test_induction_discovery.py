"""Every discovery method finds the induction circuit of the trained ``induction`` reference model.

The ground truth comes from attention patterns alone (``discovery.reference.ground_truth``), never
from a hard-coded list: the layer-1 heads with induction score > 0.5 and the layer-0 heads with
previous-token score > 0.5 that they read from, both averaged over the grid of half lengths 4..24,
with and without BOS. Each method's circuit must contain all of them and
keep >= 0.9 of the full model's logit difference under mean ablation.
"""

from __future__ import annotations

import pytest

from discovery.circuit import Circuit
from discovery.evaluator import Evaluator
from discovery.model import load_model
from discovery.reference import head_scores_grid
from discovery.search import run_search
from discovery.tasks import build_dataset, get_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setting(induction_reference):
    scores = head_scores_grid(induction_reference.path, n=40)
    previous = {f"{l}.{h}" for l, h in scores.previous_token_heads(0.5) if l == 0}
    induction = {f"{l}.{h}" for l, h in scores.induction_heads(0.5) if l == 1}
    assert previous and induction, (scores.previous_token_mean, scores.induction_mean)
    model = load_model(str(induction_reference.path))
    dataset = build_dataset(get_task("induction"), model.tokenizer, n=50, seed=0)
    return Evaluator(model, dataset), previous | induction


def heads(circuit: Circuit) -> set[str]:
    return {n.name for n in circuit.heads}


@pytest.mark.parametrize(
    "method,params",
    [
        ("greedy", {}),
        ("eap", {}),
        ("eap-ig", {"steps": 5}),
        ("acdc", {}),
    ],
)
def test_method_recovers_the_induction_circuit(setting, method, params):
    evaluator, required = setting
    result = run_search(method, evaluator, params)
    assert required <= heads(result.circuit), (method, result.circuit.canonical)
    assert result.score.normalised >= 0.9
    assert evaluator.evaluate_one(result.circuit).metric == pytest.approx(result.score.metric, abs=1e-4)


def test_threshold_walks_back_from_the_logits(setting):
    """Path patching as in the IOI work: heads that write to the logits, then the heads whose
    output reaches those heads' keys."""
    evaluator, required = setting
    writers = run_search("threshold", evaluator, {"receiver": "logits", "threshold": 0.5})
    receivers = ",".join(f"{name}.k" for name in sorted(heads(writers.circuit)))
    readers = run_search("threshold", evaluator, {"receiver": receivers, "threshold": 0.5})
    circuit = Circuit.of(writers.circuit.heads + readers.circuit.heads)
    assert required <= heads(circuit), circuit.canonical
    assert evaluator.evaluate_one(circuit).normalised >= 0.9
