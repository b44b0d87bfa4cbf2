"""Comparison numbers on hand-made circuits, diagrams, and the compare / overlap / show commands."""

from __future__ import annotations

import numpy as np
import pytest

from discovery.analysis.compare import compare, component_names, jaccard, overlap_matrix, union_graph
from discovery.search.base import SearchResult
from discovery.types.circuit import Circuit
from discovery.types.evaluation import EvaluationMethod, Score
from tests.store_fixtures import BACKENDS, db_url, pg_database, store  # noqa: F401  (fixtures)

A = Circuit.parse("0.1,1.2,m0")
B = Circuit.parse("0.1,1.3,m0,m1")
C = Circuit.parse("2.0")
E1 = Circuit.parse("| embed->0.1.v, 0.1->1.3.q, 1.3->logits")
E2 = Circuit.parse("| embed->0.1.v, 0.1->1.3.k, 1.3->logits")


def test_jaccard_on_hand_made_circuits():
    r = compare(A, B)
    assert r.shared_nodes == ("0.1", "m0")
    assert r.only_a_nodes == ("1.2",)
    assert r.only_b_nodes == ("1.3", "m1")
    assert r.node_jaccard == pytest.approx(2 / 5)
    assert r.edge_jaccard is None  # node-level circuits have no edges
    assert compare(A, C).node_jaccard == 0.0
    assert compare(A, A).node_jaccard == 1.0
    assert jaccard(frozenset(), frozenset()) == 1.0


def test_edges_compare_with_their_receiver_input_and_embed_logits_do_not_count():
    r = compare(E1, E2)
    assert component_names(E1) == {"0.1", "1.3"}  # embed/logits left out
    assert r.node_jaccard == 1.0
    assert r.shared_edges == ("embed->0.1.v", "1.3->logits")
    assert r.only_a_edges == ("0.1->1.3.q",) and r.only_b_edges == ("0.1->1.3.k",)
    assert r.edge_jaccard == pytest.approx(2 / 4)


def test_overlap_matrix():
    labels, m = overlap_matrix({"a": A, "b": B, "c": C})
    assert labels == ["a", "b", "c"]
    expected = np.array([[1, 2 / 5, 0], [2 / 5, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(m, expected)
    _, me = overlap_matrix([E1, E2], on="edges")
    np.testing.assert_allclose(me, [[1, 0.5], [0.5, 1]])
    with pytest.raises(ValueError):
        overlap_matrix([A], on="heads")


def test_union_graph_membership():
    g = union_graph(A, B)
    assert {n: d["membership"] for n, d in g.nodes(data=True)} == {
        "0.1": "both",
        "m0": "both",
        "1.2": "a",
        "1.3": "b",
        "m1": "b",
    }
    ge = union_graph(E1, E2)
    assert ge.edges["0.1", "1.3"]["membership"] == "both"  # the same two nodes, different inputs
    assert ge.edges["0.1", "1.3"]["inputs"] == {"q", "k"}


def test_draw_comparison_writes_a_png(tmp_path):
    from discovery.pictures.compare_plots import draw_comparison, draw_overlap_matrix

    path = draw_comparison(A, E2, tmp_path / "cmp.png", title="A vs E2")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels, m = overlap_matrix({"a": A, "b": B})
    assert draw_overlap_matrix(labels, m, tmp_path / "m.png").stat().st_size > 0


METHOD = EvaluationMethod("mean", "x:corrupt", "node", False, "logit_diff")


def _finished_job(store, task: str, circuit: Circuit, normalised: float) -> int:  # type: ignore[no-untyped-def]
    job = store.create_job("greedy", {}, task, "tiny")
    store.claim_job(job, "w")
    score = Score(circuit, 0.5, normalised, 1.0, 0.0, METHOD)
    store.finish_job(job, SearchResult("greedy", {}, circuit, score, 10, 0.1))
    return job


def _model_dir(tokenizer, path, seed: int = 3):  # type: ignore[no-untyped-def]
    from discovery.model import random_gpt2

    # a model of its own: save_pretrained must not touch the session's shared tiny_model
    random_gpt2(n_layers=3, n_heads=4, d_model=64, seed=seed, tokenizer=tokenizer).hf_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _method_for(model, task: str, n: int = 4, **params):  # type: ignore[no-untyped-def]
    import discovery as cd

    return cd.build_evaluator(model, cd.dataset(model, task, n=n, **params), store=False).method()


def _job_under(store, model, task, circuit, normalised, method, search="greedy") -> int:  # type: ignore[no-untyped-def]
    model_id = store.get_or_create_model(model.identity).id
    job = store.create_job(search, {}, task, model.identity.name, model_id=model_id)
    store.claim_job(job, "w")
    score = Score(circuit, 0.5, normalised, 1.0, 0.0, method)
    store.finish_job(job, SearchResult(search, {}, circuit, score, 10, 0.1))
    return job


@pytest.mark.slow  # over 20 s on the loaded 2-core machine (quick-tier durations, tests/conftest.py)
def test_comparisons_are_keyed_by_dataset_method_and_weights(store, db_url, capsys, tmp_path, tokenizer):
    import shutil

    import discovery as cd
    from discovery.cli import main

    model_dir = _model_dir(tokenizer, tmp_path / "model")
    model = cd.load_model(str(model_dir))
    digits, months = _method_for(model, "digits"), _method_for(model, "months")
    _job_under(store, model, "digits", B, 0.7, digits)
    best_digits = _job_under(store, model, "digits", A, 0.9, digits)
    best_months = _job_under(store, model, "months", C, 0.95, months)
    # a better digits circuit on another dataset (done-in template) and by another method: never pooled in
    done_in = _method_for(model, "digits", template="done-in")
    other = _job_under(store, model, "digits", Circuit.parse("0.0"), 0.99, done_in, search="eap")

    # the same weights under another path are the same model (identified by weight hash)
    copy = tmp_path / "copy-of-model"
    shutil.copytree(model_dir, copy)
    main(["overlap", "--task", "digits", "--task", "months", "--model", str(copy), "--n", "4", "--db", db_url,
          "--png", str(tmp_path / "o.png")])  # fmt: skip
    out = capsys.readouterr().out
    assert f"digits          {A}" in out and f"months          {C}" in out
    assert f"job {best_digits} (greedy)" in out and f"job {best_months} (greedy)" in out
    assert "dataset digits[corruption=repeat-last,n=4,seed=0,length=4,template=plain]; mean ablation" in out
    assert "dataset months[corruption=repeat-last,n=4,seed=0,length=4,template=plain]; mean ablation" in out
    assert model.identity.weight_hash[:12] in out
    assert "0.000" in out and "0.1, m0, 1.2" in out  # Jaccard 0 and A's distinct components
    assert (tmp_path / "o.png").exists()

    # naming the other dataset (and method) picks the other job
    main(["overlap", "--task", "digits", "--task", "digits", "--model", str(model_dir), "--n", "4",
          "--task-param", "template=done-in", "--method", "eap", "--db", db_url])  # fmt: skip
    out = capsys.readouterr().out
    assert f"job {other} (eap)" in out and "template=done-in" in out
    # nothing stored for months under it: the error names the dataset and the method
    with pytest.raises(SystemExit):
        main(["overlap", "--task", "digits", "--task", "months", "--model", str(model_dir), "--n", "4",
              "--task-param", "template=done-in", "--method", "eap", "--db", db_url])  # fmt: skip
    err = capsys.readouterr().err
    assert "no stored circuit for 'months' found by 'eap' on dataset months[" in err and "template=done-in" in err

    # node-level circuits compared on edges: refused
    with pytest.raises(SystemExit):
        main(["overlap", "--task", "digits", "--task", "months", "--model", str(model_dir), "--n", "4",
              "--on", "edges", "--level", "node", "--db", db_url])  # fmt: skip
    assert "node-level circuit (no edges)" in capsys.readouterr().err

    main(["compare", str(best_digits), "0.1,1.3,m0,m1", "--db", db_url, "--png", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert "0.400" in out and f"job {best_digits} (greedy, digits); dataset digits[" in out
    assert (tmp_path / "c.png").exists()
    main(["compare", str(A), str(E1), "--db", db_url])
    out = capsys.readouterr().out
    assert "edges not compared" in out and "│ edges " not in out

    main(["show", str(best_months), "--db", db_url])
    out = capsys.readouterr().out
    assert "succeeded" in out and "2.0" in out
    main(["runs", "--db", db_url])
    assert "greedy" in capsys.readouterr().out


def test_edge_jaccard_only_between_edge_circuits():
    assert compare(A, E1).edge_jaccard is None and compare(A, E1).mixed_levels
    assert compare(E1, E2).edge_jaccard == pytest.approx(2 / 4)
    with pytest.raises(Exception, match="node-level"):
        overlap_matrix({"a": A, "e": E1}, on="edges")


def test_best_circuit_without_jobs_is_the_smallest_reaching_the_threshold(store, tiny_model, tokenizer):
    from discovery.tasks import build_dataset, get_task

    ds = build_dataset(get_task("digits"), tokenizer, n=4)
    model_id = store.get_or_create_model(tiny_model.identity).id
    dataset_id = store.get_or_create_dataset(ds).id
    scores = [
        Score(Circuit.parse(c), 0.0, n, 1.0, 0.0, METHOD)
        for c, n in (("0.1", 0.5), ("0.1,1.2", 0.85), ("0.0,1.1", 0.9), ("0.0,0.1,1.1", 0.99))
    ]
    store.save_scores(scores, model_id, dataset_id)
    best = store.best_circuits("digits", tiny_model.identity.name, threshold=0.8)
    assert [str(b.circuit) for b in best] == ["0.0,1.1", "0.1,1.2", "0.0,0.1,1.1"]
    assert best[0].method == "evaluation" and best[0].normalised == 0.9


def test_cross_score_persists_like_any_evaluation(store, db_url, tokenizer, tmp_path, capsys):
    """cross-score on a model directory: the digits circuit scored on months' data, stored, then cached."""
    from discovery.cli import main
    from discovery.model import random_gpt2

    model_dir = tmp_path / "model"
    # a model of its own: save_pretrained must not touch the session's shared tiny_model
    random_gpt2(n_layers=2, n_heads=4, d_model=64, seed=3, tokenizer=tokenizer).hf_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = [
        "cross-score",
        "--circuit-from-task",
        "digits",
        "--task",
        "months",
        "--model",
        str(model_dir),
        "--n",
        "4",
        "--circuit",
        "0.1,1.2",
        "--db",
        db_url,
    ]
    main(args)
    out = capsys.readouterr().out
    assert "months" in out and "new" in out
    assert store.count_evaluations() == 1
    assert store.scores_for_circuit(Circuit.parse("0.1,1.2"))[0].task == "months"
    main(args)
    assert "cached" in capsys.readouterr().out and store.count_evaluations() == 1

    # another dataset than the circuit's own (other length, other corruption): printed and stored as such
    main(args + ["--task-param", "length=3", "--corruption", "random", "--task", "digits"])
    out = capsys.readouterr().out
    months = "months[corruption=random,n=4,seed=0,length=3,template=plain]"
    digits = "digits[corruption=random,n=4,seed=0,length=3,template=plain]"
    assert months in out and digits in out and f"scored by mean ablation over {months}:corrupt" in out
    stored = {r.dataset for r in store.scores_for_circuit(Circuit.parse("0.1,1.2"))}
    assert stored == {"months[corruption=repeat-last,n=4,seed=0,length=4,template=plain]", months, digits}
