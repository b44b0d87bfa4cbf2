"""``iterative-pruning`` (Lan & Barez 2024): the planted circuit, their loop written out literally,
and on ``ref:sequences`` a result above the threshold that every single removal takes below it."""

from __future__ import annotations

import pytest

from discovery.scoring.evaluator import Evaluator
from discovery.search import get_method, run_search
from discovery.search.iterative_pruning import pass_order
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit, head, mlp
from discovery.types.errors import UsageError
from discovery.types.evaluation import Ablation
from tests.planted_fixtures import TARGET, heads_of, necessary, planted  # noqa: F401  (fixtures)


def literal_pruning(evaluator, threshold, value):
    """Their ``run_node_ablation.py`` loop, one evaluation per decision: backward (layers L-1..0, MLP
    then heads), then forward (layers 0..L-1, heads then MLP), until a pass removes nothing."""
    shape = evaluator.shape
    heads = [head(l, h) for l in range(shape.n_layers) for h in range(shape.n_heads)]
    mlps = [mlp(l) for l in range(shape.n_layers)]
    kept = set(heads + mlps)

    def try_remove(c):
        if c in kept and value(evaluator.evaluate([Circuit.of(kept - {c})])[0]) > threshold:
            kept.discard(c)
            return True
        return False

    while True:
        changed = False
        for l in range(shape.n_layers - 1, -1, -1):
            changed |= try_remove(mlp(l))
            for h in range(shape.n_heads):
                changed |= try_remove(head(l, h))
        if not changed:
            break
        changed = False
        for l in range(shape.n_layers):
            for h in range(shape.n_heads):
                changed |= try_remove(head(l, h))
            changed |= try_remove(mlp(l))
        if not changed:
            break
    return Circuit.of(kept)


def test_pass_order_is_theirs():
    assert [n.name for n in pass_order(2, 2, "backward", True)] == ["m1", "1.0", "1.1", "m0", "0.0", "0.1"]
    assert [n.name for n in pass_order(2, 2, "forward", True)] == ["0.0", "0.1", "m0", "1.0", "1.1", "m1"]
    assert [n.name for n in pass_order(2, 2, "backward", False)] == ["1.0", "1.1", "0.0", "0.1"]


def test_registered_with_their_defaults():
    spec = get_method("iterative-pruning")
    defaults = {p.name: p.default for p in spec.params}
    assert defaults["threshold"] == 0.8 and defaults["score"] == "ratio" and defaults["mlps"] is True


def test_returns_the_planted_circuit(planted, necessary):
    _, ev = planted
    result = run_search("iterative-pruning", ev, {"threshold": TARGET, "score": "normalised", "mlps": False})
    assert heads_of(result.circuit) == necessary
    assert result.target_met and result.extra["converged"]
    assert result.score.normalised > TARGET


def test_mlp_pruning_needs_mlp_ablation(planted):
    _, ev = planted
    with pytest.raises(UsageError, match="--ablate-mlps"):
        run_search("iterative-pruning", ev, {})


@pytest.mark.slow
def test_matches_their_loop_written_out(tiny_model3, tokenizer):
    ds = build_dataset(get_task("digits"), tokenizer, n=8, seed=0)
    ev = Evaluator(tiny_model3, ds, Ablation(kind="mean", ablate_mlps=True))
    for threshold in (0.5, 0.8):
        want = literal_pruning(ev, threshold, lambda s: s.normalised)
        for batch in (1, 5):
            got = run_search(
                "iterative-pruning", ev, {"threshold": threshold, "score": "normalised", "batch": batch}
            ).circuit
            assert got == want, (threshold, batch)


@pytest.mark.slow
def test_on_ref_sequences_every_component_is_needed(sequences_reference):
    """Their setting on the sequences reference model: done-template digits, heads and MLPs mean-ablated
    over the random-member prompts, score LD(circuit) / LD(full), threshold 80 %."""
    from discovery.model import load_model

    model = load_model(str(sequences_reference.path))
    task = get_task("lan-barez-digits", templates="done", filter="correct")
    ds = build_dataset(task, model.tokenizer, n=128, seed=0, model=model)
    ev = Evaluator(model, ds, Ablation(kind="mean", ablate_mlps=True))
    full = ev.full_metric
    assert full > 1.0  # the model does the task: the ratio means something
    result = run_search("iterative-pruning", ev, {})
    ratio = result.score.metric / full
    assert result.target_met and ratio > 0.8
    components = result.circuit.heads + result.circuit.mlps
    assert 0 < len(components) < 20  # it pruned something and kept something
    drops = ev.evaluate([result.circuit.without_nodes(c) for c in components])
    assert all(s.metric / full <= 0.8 for s in drops), [(c.name, s.metric / full) for c, s in zip(components, drops)]
    assert result.circuit == literal_pruning(ev, 0.8, lambda s: s.metric / full)
