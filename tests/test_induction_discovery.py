"""Every discovery method finds the induction circuit of the trained ``induction`` reference model.

The ground truth comes from attention patterns alone (``discovery.reference.ground_truth``), never
from a hard-coded list: the layer-1 heads with induction score > 0.5 and the layer-0 heads with
previous-token score > 0.5 that they read from, both averaged over the grid of half lengths 4..24,
with and without BOS. Each method's circuit must contain all of them and
keep >= 0.9 of the full model's logit difference under mean ablation.
"""

from __future__ import annotations

import pytest

from discovery.model import load_model
from discovery.reference import head_scores_grid
from discovery.scoring.evaluator import Evaluator
from discovery.search import run_search
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit

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


def _earlier_occurrence_corrupted(tmp_path, n: int = 50) -> str:
    """A ``file:`` task with the induction task's clean prompts, corrupted in the *first* occurrence.

    The task's own corruption re-randomises the second occurrence, which leaves everything an
    induction head's key reads (the earlier occurrence and what preceded each of its tokens)
    unchanged, so no path into a key can carry an effect under it; re-randomising the earlier
    occurrence instead is what tests K-composition."""
    import json

    import numpy as np

    from discovery.tasks.words import INDUCTION_WORDS

    task = get_task("induction")
    rng = np.random.default_rng(5)
    rows = []
    for ex in task.examples(n, 0, "random", _tokenizer_for_words()):
        words = ex.clean.split()
        fresh = [w for w in INDUCTION_WORDS if w not in set(words)]
        first = slice(task.prefix, task.prefix + task.length)
        corrupt = list(words)
        corrupt[first] = [str(w) for w in rng.choice(fresh, task.length, replace=False)]
        rows.append({"clean": ex.clean, "corrupt": " ".join(corrupt), "answer": ex.correct[0], "wrong": ex.wrong[0]})
    path = tmp_path / "induction-first-corrupted.json"
    path.write_text(json.dumps({"examples": rows}))
    return f"file:{path}"


def _tokenizer_for_words():
    from discovery.reference import reference_tokenizer

    return reference_tokenizer("induction")


def test_threshold_walks_back_from_the_logits(setting, tmp_path):
    """Path patching as in the IOI work: heads that write to the logits, then the heads whose
    output reaches those heads' keys (with the earlier occurrence corrupted: see above)."""
    evaluator, required = setting
    writers = run_search("threshold", evaluator, {"receiver": "logits", "threshold": 0.5})
    receivers = ",".join(f"{name}.k" for name in sorted(heads(writers.circuit)))
    keyed = build_dataset(get_task(_earlier_occurrence_corrupted(tmp_path)), evaluator.model.tokenizer, n=50, seed=0)
    readers = run_search("threshold", Evaluator(evaluator.model, keyed), {"receiver": receivers, "threshold": 0.5})
    circuit = Circuit.of(writers.circuit.heads + readers.circuit.heads)
    assert required <= heads(circuit), circuit.canonical
    assert evaluator.evaluate_one(circuit).normalised >= 0.9
