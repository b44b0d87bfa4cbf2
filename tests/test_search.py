"""Search methods on a planted circuit, and their scores against the evaluator's.

The planted model: a 3-layer random GPT-2 in which every head's ``W_O`` (its rows of HF's Conv1D
``c_proj``, weight [in, out]) is zeroed except the heads of S, whose rows are scaled up. Heads
outside S then write nothing, so their ablation changes nothing; with zero ablation the heads of S
contribute roughly additively and each of them is needed to reach 0.9 (the test checks that on
every proper subset of S before asking the methods for S). The plant and its fixtures are in
:mod:`tests.planted_fixtures`.
"""

from __future__ import annotations

import numpy as np
import pytest

from discovery.scoring.evaluator import Evaluator
from discovery.search import METHODS, get_method, run_search
from discovery.search.base import CountingEvaluator
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import LOGITS, Circuit, all_edges, parse_node
from discovery.types.errors import UsageError
from discovery.types.evaluation import Ablation
from tests.planted_fixtures import TARGET, S, heads_of, necessary, planted  # noqa: F401  (fixtures)


def test_every_method_is_registered_with_its_params():
    expected = {"greedy", "exhaustive", "layer-sweep", "cumulative-sweep", "topk", "threshold", "eap", "eap-ig", "acdc"}
    get_method("greedy")
    assert expected <= set(METHODS)
    assert get_method("eap-ig").level == "edge"
    with pytest.raises(UsageError, match="has no parameter"):
        get_method("greedy").validate({"nope": 1})


def test_greedy_finds_the_planted_circuit(planted, necessary):
    _, ev = planted
    result = run_search("greedy", ev, {"target": TARGET})
    assert heads_of(result.circuit) == necessary
    assert result.score.normalised >= TARGET
    assert result.extra["met_target"]
    assert result.steps[0].circuit == Circuit()
    assert result.n_evaluations > 12 and result.seconds > 0


def test_greedy_backward_removal_prunes_a_bad_start(planted, necessary):
    _, ev = planted
    result = run_search("greedy", ev, {"target": TARGET, "start": "0.0,1.1,0.1,1.2,2.3"})
    assert heads_of(result.circuit) == necessary
    assert [step[0] for step in result.extra["path"]].count("remove") == 2


def test_greedy_max_size_caps_the_forward_pass(planted):
    _, ev = planted
    result = run_search("greedy", ev, {"target": TARGET, "max_size": 1})
    assert result.circuit.size == 1 and not result.extra["met_target"]


def test_exhaustive_finds_the_planted_circuit(planted, necessary):
    _, ev = planted
    result = run_search("exhaustive", ev, {"k": 3, "target": TARGET})
    assert heads_of(result.circuit) == necessary
    sizes = [row[0] for row in result.extra["best_per_size"]]
    assert sizes == [0, 1, 2, 3]
    n = 12
    assert result.n_evaluations == 1 + n + n * (n - 1) // 2 + n * (n - 1) * (n - 2) // 6


def test_exhaustive_pool_and_limits(planted):
    _, ev = planted
    result = run_search("exhaustive", ev, {"k": 2, "pool": "0.1,1.2,2.3,0.0", "stop_at_target": False})
    assert result.n_evaluations == 1 + 4 + 6
    assert heads_of(result.circuit) <= set(S)
    with pytest.raises(UsageError, match="max_circuits"):
        run_search("exhaustive", ev, {"k": 3, "max_circuits": 10})
    with pytest.raises(UsageError, match="keeps every MLP"):
        run_search("exhaustive", ev, {"pool": "m0"})


def test_threshold_and_topk_select_the_planted_heads(planted):
    _, ev = planted
    result = run_search("threshold", ev, {"threshold": 0.01})
    effects = dict(result.extra["ranking"])
    # heads outside S write nothing: their path effect is exactly zero
    assert all(effects[h] == 0.0 for h in effects if h not in S)
    assert heads_of(result.circuit) == {h for h in S if abs(effects[h]) >= 0.01 * max(map(abs, effects.values()))}
    assert heads_of(result.circuit) == set(S)
    assert result.score.metric == pytest.approx(ev.evaluate_one(result.circuit).metric)
    top = run_search("topk", ev, {"k": 3})
    assert heads_of(top.circuit) == set(S)
    absolute = run_search("threshold", ev, {"threshold": 1e9, "relative": False})
    assert absolute.circuit == Circuit()


def test_sweeps_report_every_layer(planted):
    _, ev = planted
    sweep = run_search("layer-sweep", ev, {"base": "0.1"})
    assert len(sweep.steps) == 3 and sweep.n_evaluations == 3
    for layer, step in enumerate(sweep.steps):
        assert heads_of(step.circuit) == {"0.1"} | {f"{layer}.{h}" for h in range(4)}
    cumulative = run_search("cumulative-sweep", ev, {"target": TARGET})
    assert [s.circuit.size for s in cumulative.steps] == [4, 8, 12]
    assert cumulative.steps[-1].normalised == pytest.approx(1.0)
    assert cumulative.circuit.size == 12  # layer 2 holds 2.3: only the whole model meets the target


def test_eap_ranks_the_planted_edges_first(planted):
    _, ev = planted
    result = run_search("eap", ev, {"top_n": 10})
    ranked = result.extra["edge_scores"]
    assert len(ranked) == len([e for e in all_edges(ev.shape) if e.sender.kind == "head"])  # MLPs kept
    live = {parse_node(s) for s in S} | set(ev.shape.all_mlps()) | {LOGITS}
    nonzero = [(name, s) for name, s in ranked if abs(s) > 1e-9]
    assert len(nonzero) >= 6
    # exactly the edges from S to S's heads, the MLPs or the logits can matter; they come first
    first = ranked[: len(nonzero)]
    for name, _ in first:
        sender, receiver = name.split("->")
        assert sender in S and parse_node(receiver.rsplit(".", 1)[0] if receiver.count(".") == 2 else receiver) in live
    assert {name for name, _ in first} >= {f"{h}->logits" for h in S}
    assert result.circuit.n_edges == 10
    assert result.score.metric == pytest.approx(ev.evaluate_one(result.circuit).metric, abs=1e-6)


def test_eap_ig_and_threshold_selection(planted):
    _, ev = planted
    result = run_search("eap-ig", ev, {"steps": 4, "threshold": 1e-6})
    kept = {e.name for e in result.circuit.edges}
    assert kept == {name for name, s in result.extra["edge_scores"] if abs(s) >= 1e-6}
    assert {e.sender.name for e in result.circuit.edges} <= set(S)


@pytest.mark.parametrize("restriction", [{}, {"nodes": "0.1,1.2,2.3,0.0,1.0"}, {"eap_top": 40}])
def test_acdc_recovers_the_planted_heads(planted, necessary, restriction):
    _, ev = planted
    result = run_search("acdc", ev, {"tau": 0.02, "criterion": "metric", **restriction})
    assert heads_of(result.circuit) == necessary
    assert result.score.method.level == "edge"
    assert result.score.metric == pytest.approx(ev.evaluate_one(result.circuit).metric, abs=1e-6)
    # removing any kept edge costs at least tau, or the walk would have removed it
    assert result.score.normalised > 0.5


@pytest.mark.slow
def test_acdc_speculative_batches_make_the_sequential_decisions(planted):
    _, ev = planted
    one = run_search("acdc", ev, {"tau": 0.01, "batch": 1, "nodes": "0.1,1.2,2.3,1.1"})
    many = run_search("acdc", ev, {"tau": 0.01, "batch": 16, "nodes": "0.1,1.2,2.3,1.1"})
    assert one.circuit == many.circuit
    assert one.score.metric == pytest.approx(many.score.metric)


def test_methods_ask_only_the_evaluator(planted):
    """Every score a method reports is what ``evaluate`` says for that circuit."""
    _, ev = planted
    counting = CountingEvaluator(ev)
    result = get_method("greedy").func(counting, get_method("greedy").validate({"max_size": 2}), lambda *a: None)
    assert counting.n_evaluations > 0
    for step in result.steps:
        assert step.metric == pytest.approx(ev.evaluate_one(step.circuit).metric, abs=1e-6)
    assert not np.isnan(result.score.normalised)


def test_greedy_over_mlps_needs_mlp_ablation(planted, tokenizer):
    model, ev = planted
    with pytest.raises(UsageError, match="ablate-mlps"):
        run_search("greedy", ev, {"mlps": True})
    ds = build_dataset(get_task("digits"), tokenizer, n=4, seed=1)
    ev2 = Evaluator(model, ds, Ablation(kind="zero", ablate_mlps=True))
    result = run_search("greedy", ev2, {"mlps": True, "max_size": 2, "target": 2.0})
    assert result.circuit.size == 2


def test_cli_discover_prints_the_result_and_draws_it(tiny_model, tmp_path, monkeypatch, capsys):
    from discovery.cli import main

    model_dir = tmp_path / "model"
    tiny_model.hf_model.save_pretrained(model_dir)
    tiny_model.tokenizer.save_pretrained(model_dir)
    monkeypatch.setenv("CIRCUITS_NO_STORE", "1")
    png, out_json = tmp_path / "c.png", tmp_path / "r.json"
    main(
        [
            "discover",
            "--model",
            str(model_dir),
            "--n",
            "6",
            "--method",
            "greedy",
            "--target",
            "0.8",
            "--param",
            "max_size=3",
            "--png",
            str(png),
            "--json",
            str(out_json),
        ]
    )
    out = capsys.readouterr().out
    for label in ("circuit", "normalised", "size", "evaluations", "wall time", "mean ablation over digits"):
        assert label in out
    assert png.stat().st_size > 1000
    import json

    data = json.loads(out_json.read_text())
    assert data["params"]["max_size"] == 3 and data["n_evaluations"] > 0
    main(["methods"])
    assert "acdc" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["discover", "--model", str(model_dir), "--method", "eap", "--target", "0.9"])
    assert "takes no target" in capsys.readouterr().err


def test_draw_circuit_edge_level_with_highlight(tmp_path):
    from discovery.pictures.plots import draw_circuit

    c = Circuit.parse("| 0.1->1.2.q,0.1->1.2.k,1.2->logits,0.1->m1")
    path = draw_circuit(c, tmp_path / "e.png", highlight={"1.2": "red"})
    assert path.stat().st_size > 1000
    assert draw_circuit(Circuit(), tmp_path / "empty.png").exists()
