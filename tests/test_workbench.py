"""The researcher's workbench: faithfulness curves, EAP-IG exports, --format output, the Python API, progress."""

from __future__ import annotations

import io
import json

import pytest
import torch

import discovery as cd
from discovery.analysis.curves import default_grid, faithfulness_curve
from discovery.cli import main
from discovery.formats.eap_ig import from_eap_graph, read_eap_graph, to_eap_graph, write_eap_graph
from discovery.model import random_gpt2
from discovery.scoring.evaluator import Evaluator
from discovery.search import run_search
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit, ModelShape, all_edges
from discovery.types.evaluation import Ablation

S = ("0.1", "1.2", "2.3")


@pytest.fixture(scope="module")
def planted(tokenizer):
    """tests/test_search.py's plant: only the heads of S write anything (zero ablation: S alone is the full model)."""
    model = random_gpt2(n_layers=3, n_heads=4, d_model=64, seed=9, tokenizer=tokenizer)
    with torch.no_grad():
        for layer, block in enumerate(model.hf_model.transformer.h):
            for h in range(4):
                rows = slice(h * 16, (h + 1) * 16)
                if f"{layer}.{h}" in S:
                    block.attn.c_proj.weight[rows] *= 5.0
                else:
                    block.attn.c_proj.weight[rows] = 0.0
    ds = build_dataset(get_task("digits"), tokenizer, n=10, seed=0)
    return model, ds, Evaluator(model, ds, Ablation(kind="zero"))


# --- faithfulness curves ----------------------------------------------------------------------------
def test_curve_of_a_planted_circuit_reaches_the_full_score_at_its_size(planted):
    _, _, ev = planted
    ranked = run_search("topk", ev, {"k": 3})
    ranking = [name for name, _ in ranked.extra["ranking"]]
    assert set(ranking[:3]) == set(S)
    curve = faithfulness_curve(ev, ranking, "components", label="topk")
    assert [p.k for p in curve.points] == list(range(13))  # 12 heads: every k
    by_k = {p.k: p.normalised for p in curve.points}
    assert by_k[0] == pytest.approx(0.0, abs=1e-6)
    assert max(by_k[k] for k in (1, 2)) < 0.9  # each head of S is needed ...
    assert by_k[3] == pytest.approx(1.0, abs=1e-5)  # ... and S reaches the full score at its size
    assert all(by_k[k] == pytest.approx(1.0, abs=1e-5) for k in range(3, 13))
    assert curve.smallest_reaching(0.99).k == 3
    # summaries by hand: fraction x = k/12, trapezoids
    xs, ys = [k / 12 for k in range(13)], [by_k[k] for k in range(13)]
    cpr = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(12))
    assert curve.cpr == pytest.approx(cpr) and curve.cmd == pytest.approx(1 - cpr, abs=1e-5)
    assert 0.0 < curve.area < 1.0 and curve.meaningful


def test_edge_curve_and_the_mib_grid(planted):
    _, _, ev = planted
    grid = default_grid(32491)
    assert grid[:3] == [0, 1, 32] and grid[-1] == 32491  # MIB fractions of GPT-2's edges
    ranked = run_search("eap", ev, {"top_n": 5})
    names = [n for n, _ in ranked.extra["edge_scores"]]
    curve = faithfulness_curve(ev, names, "edges", grid=[0, 3, 10, len(names)])
    assert curve.unit == "edges" and curve.total == len(names)
    assert curve.points[-1].normalised == pytest.approx(1.0, abs=1e-4)  # every edge kept: the full model
    assert curve.points[0].normalised == pytest.approx(0.0, abs=1e-6)


def test_curve_is_stored_as_a_run_and_every_point_as_an_evaluation(planted, tmp_path):
    model, ds, _ = planted
    store = cd.open_store(f"sqlite:///{tmp_path / 'c.db'}")
    curve = cd.curve(model, ds, method="topk", ablation="zero", store=store, k=3)
    [job] = store.list_jobs()
    assert job.method == "curve" and job.status.value == "succeeded"
    stored = job.result_score["extra"]["curve"]
    assert [p["k"] for p in stored["points"]] == [p.k for p in curve.points]
    assert stored["cpr"] == pytest.approx(curve.cpr) and stored["unit"] == "components"
    assert store.job_evaluation_count(job.id) == len({p.circuit for p in curve.points} | {Circuit.of(S)})
    frame = cd.runs(store)
    assert list(frame["method"]) == ["curve"]
    with pytest.raises(Exception, match="no ranking"):
        cd.curve(model, ds, method="greedy", ablation="zero", store=False, max_size=1)


def test_cli_curve_prints_and_draws(planted, tmp_path, capsys):
    model, _, _ = planted
    model_dir = tmp_path / "m"
    model.hf_model.save_pretrained(model_dir)
    model.tokenizer.save_pretrained(model_dir)
    png = tmp_path / "curve.png"
    main(["curve", "--model", str(model_dir), "--n", "10", "--ablation", "zero", "--method", "topk", "--png", str(png)])
    out = capsys.readouterr().out
    assert "CPR" in out and "CMD" in out and "area" in out and png.stat().st_size > 5000
    main(["curve", "--model", str(model_dir), "--n", "10", "--ablation", "zero", "--format", "json", "--png", str(png)])
    rows = json.loads(capsys.readouterr().out)
    assert [r["k"] for r in rows] == list(range(13)) and rows[3]["normalised"] == pytest.approx(1.0, abs=1e-5)


def plain_graph(data):  # type: ignore[no-untyped-def]
    return {k: v for k, v in data.items() if k != "circuit_discovery"}


# --- exports ------------------------------------------------------------------------------------------
def test_exported_eap_graph_loads_back_into_the_same_circuit(planted, tmp_path):
    _, _, ev = planted
    ranked = run_search("eap", ev, {"top_n": 7})
    scores = dict(ranked.extra["edge_scores"])
    graph = to_eap_graph(ranked.circuit, ev.shape, 64, edge_scores=scores, method="eap")
    path = write_eap_graph(tmp_path / "g.json", graph)
    assert read_eap_graph(path) == ranked.circuit
    data = json.loads(path.read_text())
    assert len(data["edges"]) == len(all_edges(ev.shape)) and sum(e["in_graph"] for e in data["edges"].values()) == 7
    top_name, top_score = ranked.extra["edge_scores"][0]
    eap_name = next(k for k, v in data["edges"].items() if v["in_graph"] and abs(v["score"] - top_score) < 1e-12)
    assert from_eap_graph({**plain_graph(data), "edges": {eap_name: {"score": top_score, "in_graph": True}}}) == (
        Circuit.parse(f"| {top_name}")
    )
    assert data["nodes"]["input"]["in_graph"] and data["nodes"]["logits"]["in_graph"]
    # EAP-IG's own files have no circuit_discovery key: read as the edge circuit they mark
    plain = {k: v for k, v in data.items() if k != "circuit_discovery"}
    assert from_eap_graph(plain) == ranked.circuit

    node = Circuit.parse("0.1,1.2,m2")
    back = from_eap_graph(json.loads(json.dumps(to_eap_graph(node, ev.shape, 64))))
    assert back == node
    kept = to_eap_graph(Circuit.parse("0.1,1.2"), ev.shape, 64, mlps_kept=True)
    assert kept["nodes"]["m0"]["in_graph"] and from_eap_graph(kept) == Circuit.parse("0.1,1.2")


def test_eap_graph_names_match_eap_ig_on_gpt2_small():
    shape = ModelShape(12, 12)
    graph = to_eap_graph(Circuit.parse("| 0.1->1.2.q,1.2->logits,embed->m0"), shape, 768)
    assert len(graph["edges"]) == 32491  # MIB's edge count for GPT-2 small
    assert {k for k, v in graph["edges"].items() if v["in_graph"]} == {"a0.h1->a1.h2<q>", "a1.h2->logits", "input->m0"}
    assert graph["cfg"] == {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": False, "d_model": 768}


def test_cli_export_of_a_job_carries_its_edge_scores(tiny_model, tmp_path, capsys):
    model_dir = tmp_path / "m"
    tiny = random_gpt2(n_layers=2, n_heads=4, d_model=64, seed=5, tokenizer=tiny_model.tokenizer)
    tiny.hf_model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = cd.open_store(url)
    loaded = cd.load_model(str(model_dir))
    ds = cd.dataset(loaded, "digits", n=4)
    result = cd.discover(loaded, ds, method="eap", store=store, top_n=6)
    job = store.create_job("eap", {"top_n": 6}, "digits", loaded.identity.name)
    store.finish_job(job, result)
    main(["export", str(job), "--model", str(model_dir), "--db", url, "--out", str(tmp_path / "g.json")])
    assert "6 of" in capsys.readouterr().out
    data = json.loads((tmp_path / "g.json").read_text())
    assert read_eap_graph(tmp_path / "g.json") == result.circuit
    assert sum(1 for e in data["edges"].values() if e["score"] != 0.0) > 6  # the whole ranking's scores


# --- the API reproduces the CLI --------------------------------------------------------------------------
def test_api_reproduces_the_cli_numbers_for_a_directory_an_hf_object_and_a_bridge(tokenizer, tmp_path, capsys):
    source = random_gpt2(n_layers=2, n_heads=4, d_model=64, seed=4, tokenizer=tokenizer)
    model_dir = tmp_path / "m"
    source.hf_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    url = f"sqlite:///{tmp_path / 'api.db'}"
    circuits = ["0.1,1.2", "0.0,0.3,1.1"]
    argv = ["evaluate", "--model", str(model_dir), "--n", "6", "--task-param", "length=3", "--format", "json"]
    for c in circuits:
        argv += ["--circuit", c]
    main(argv)
    cli = json.loads(capsys.readouterr().out)

    by_dir = cd.load_model(str(model_dir))
    by_object = cd.load_model(source.hf_model, tokenizer=tokenizer, name="mine")
    by_bridge = cd.load_model(source.bridge)
    assert by_dir.identity.weight_hash == by_object.identity.weight_hash == by_bridge.identity.weight_hash
    for model in (by_dir, by_object, by_bridge):
        scores = cd.evaluate(model, circuits, cd.dataset(model, "digits", n=6, length=3), store=url)
        for row, s in zip(cli, scores):
            assert row["circuit"] == s.circuit.canonical
            assert row["score"] == pytest.approx(s.metric, abs=1e-6)
            assert row["normalised"] == pytest.approx(s.normalised, abs=1e-6)
            assert row["dataset"] == "digits[corruption=repeat-last,n=6,seed=0,length=3,template=plain]"
            assert s.method.source == row["source"] and row["ablation"] == "mean"
    frame = cd.evaluations(url)
    # one row per model name the weights were loaded by (the path, "mine", the bridge's) x circuit
    assert len(frame) == 3 * 2 and set(frame["model"]) == {str(model_dir), "mine", "in-memory:TransformerBridge"}
    assert set(frame["circuit"]) == set(circuits)
    assert set(cd.circuits(url)["circuit"]) == set(circuits)


# --- --format ------------------------------------------------------------------------------------------
def test_formats_for_runs_show_jobs_and_patch(tokenizer, tmp_path, capsys):
    model = random_gpt2(n_layers=2, n_heads=4, d_model=64, seed=6, tokenizer=tokenizer)
    model_dir = tmp_path / "m"
    model.hf_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    store = cd.open_store(url)
    loaded = cd.load_model(str(model_dir))
    result = cd.discover(loaded, cd.dataset(loaded, "digits", n=4), method="greedy", store=store, max_size=1)
    job = store.create_job("greedy", {"max_size": 1}, "digits", loaded.identity.name)
    store.finish_job(job, result)

    main(["runs", "--db", url, "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert data["jobs"][0]["id"] == job and data["jobs"][0]["result"] == result.circuit.canonical
    assert data["stored_evaluations"][0]["task"] == "digits"
    main(["runs", "--db", url, "--format", "csv"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("id,status,method") and lines[1].startswith(f"{job},succeeded,greedy")
    main(["jobs", "--db", url, "--format", "csv"])
    assert capsys.readouterr().out.splitlines()[1].startswith(f"{job},succeeded")
    main(["show", str(job), "--db", url, "--format", "json"])
    assert json.loads(capsys.readouterr().out)[0]["normalised"] == pytest.approx(result.score.normalised)
    main(["show", result.circuit.canonical, "--db", url, "--format", "csv"])
    assert "digits[corruption=repeat-last,n=4" in capsys.readouterr().out
    argv = ["patch", "--model", str(model_dir), "--n", "4", "--receiver", "1.2", "--png", str(tmp_path / "p.png")]
    main(argv + ["--format", "json"])
    cells = json.loads(capsys.readouterr().out)
    assert len(cells) == 8 and cells[0]["sender"] == "0.0" and cells[0]["receiver"] == "1.2.k,1.2.q,1.2.v"
    assert [c["effect"] is None for c in cells] == [False] * 4 + [True] * 4  # layer 1 cannot send to 1.2
    with pytest.raises(SystemExit):
        main(["runs", "--db", url, "--format", "xml"])
    assert "choose table, csv or json" in capsys.readouterr().err


def test_tables_are_not_cut_at_80_columns_off_a_terminal(capsys):
    main(["methods"])
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) > 80
    assert "ACDC edge pruning from the logits backwards, removing edges that change the score by < tau" in out


# --- progress ---------------------------------------------------------------------------------------------
def test_progress_log_lines_with_eta_when_not_a_terminal():
    from discovery.cli.progress import LogLineProgress
    from discovery.types.progress import ProgressClock, format_seconds

    now = [100.0]
    clock = ProgressClock(lambda: now[0])
    now[0] = 110.0
    assert clock.eta(25, 100) == pytest.approx(30.0) and clock.eta(0, 100) is None and clock.eta(3, None) is None
    assert format_seconds(65) == "1m05s" and format_seconds(None) == "?"

    stream = io.StringIO()
    t = [0.0]
    lines = LogLineProgress("greedy", stream, interval=10.0, clock=lambda: t[0], wall=lambda: 0.0)
    lines.start()
    for i in range(1, 101):
        t[0] = i * 0.5  # 50 s of work, a line at most every 10 s
        lines(i, 100, "step")
    lines.finish()
    text = stream.getvalue().splitlines()
    assert text[0].endswith("greedy: started") and text[-1].endswith("done in 50s (100/100)")
    assert 4 <= len(text) <= 9
    assert "21/100 (21%), 10s elapsed, about 40s left  step" in "\n".join(text)
