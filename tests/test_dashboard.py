"""The dashboard's pages and JSON API through FastAPI's TestClient, on SQLite and PostgreSQL.

The stores are filled through the store's own API with known values (jobs finished with known
circuits and scores, a running job with known progress, stored evaluations and a patching heatmap),
so every assertion checks a value that was written. The real search -> page path is the browser
test's (``tests/test_dashboard_browser.py``).
"""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from discovery.dashboard import create_app, open_dashboard_store
from discovery.dashboard.queries import row_counts
from discovery.search.base import SearchResult
from discovery.types.circuit import Circuit
from discovery.types.errors import StoreError
from discovery.types.evaluation import EvaluationMethod, Score
from tests.store_fixtures import *  # noqa: F403

MODEL = "tiny-model"
DIGITS = "digits[corruption=repeat-last,n=4,seed=0]:corrupt"
A, B, C = Circuit.parse("0.1,1.2,1.3"), Circuit.parse("0.1,1.3,m0"), Circuit.parse("0.2,1.2")


def method(source: str = DIGITS) -> EvaluationMethod:
    return EvaluationMethod("mean", source, "node", False, "logit_diff")


def finished_job(store, task: str, circuit: Circuit, normalised: float, extra=None) -> int:
    job = store.create_job("greedy", {"target": 0.9}, task, MODEL, config={"n": 4, "seed": 0})
    store.claim_job(job, "worker-1")
    score = Score(circuit, 0.5, normalised, 1.0, 0.0, method())
    store.finish_job(job, SearchResult("greedy", {"target": 0.9}, circuit, score, 12, 0.25, (), extra or {}))
    return job


@pytest.fixture
def filled(store, tiny_model, tokenizer):
    """A store holding: two finished digits/months jobs, a running job at 5/20, a queued one, the digits
    job's evaluations, a cross-score of its circuit on months, and one patching heatmap."""
    from discovery.tasks import build_dataset, get_task

    model_id = store.get_or_create_model(tiny_model.identity).id
    name = tiny_model.identity.name
    digits = build_dataset(get_task("digits"), tokenizer, n=4)
    months = build_dataset(get_task("months"), tokenizer, n=4)
    d_id, m_id = store.get_or_create_dataset(digits).id, store.get_or_create_dataset(months).id

    ids = {}
    job = store.create_job("greedy", {"target": 0.9}, "digits", name, config={"n": 4, "seed": 0}, model_id=model_id)
    store.claim_job(job, "worker-1")
    evaluated = [(Circuit(), 0.0), (Circuit.parse("0.1"), 0.4), (Circuit.parse("0.1,1.2"), 0.7), (A, 0.95)]
    store.save_scores(
        [Score(c, n, n, 1.0, 0.0, method(digits.description + ":corrupt")) for c, n in evaluated], model_id, d_id, job
    )
    score = Score(A, 0.95, 0.95, 1.0, 0.0, method(digits.description + ":corrupt"))
    store.finish_job(job, SearchResult("greedy", {"target": 0.9}, A, score, 4, 0.5))
    ids["digits"] = job
    ids["months"] = job_m = store.create_job("greedy", {}, "months", name, config={"n": 4}, model_id=model_id)
    store.claim_job(job_m, "worker-2")
    store.finish_job(job_m, SearchResult("greedy", {}, C, Score(C, 0.8, 0.8, 1.0, 0.0, method()), 9, 0.5))
    # A scored on months' data: the overlap page's cross-score
    store.save_scores([Score(A, 0.3, 0.3, 1.0, 0.0, method(months.description + ":corrupt"))], model_id, m_id)
    ids["running"] = running = store.create_job("exhaustive", {"k": 2}, "digits", name)
    store.claim_job(running, "worker-3")
    store.update_progress(running, 5, 20, "size 1")
    ids["queued"] = store.create_job("greedy", {}, "number-words", name)
    effects = [("logits", 0, 0, -0.5), ("logits", 0, 1, 0.25), ("logits", 1, 3, 1.5), ("logits", 1, -1, 0.125)]
    store.save_patching(effects, model_id, d_id, kind="path")
    return ids


def client_for(db_url: str, allow_actions: bool = False) -> TestClient:
    store = open_dashboard_store(db_url, read_only=not allow_actions)
    return TestClient(create_app(store, allow_actions=allow_actions), raise_server_exceptions=False)


def node_names(html: str, svg_class: str = "circuit") -> list[list[str]]:
    """The data-name of every class="node" element, per inline SVG of that class."""
    svgs = re.findall(rf'<svg[^>]*class="{svg_class}".*?</svg>', html, flags=re.S)
    return [re.findall(r'class="node[^"]*" data-name="([^"]+)"', s) for s in svgs]


def test_jobs_list_with_progress_eta_and_filters(filled, db_url):
    client = client_for(db_url)
    data = client.get("/api/jobs").json()
    jobs = {j["id"]: j for j in data["jobs"]}
    assert set(jobs) == set(filled.values())
    digits = jobs[filled["digits"]]
    assert digits["status"] == "succeeded" and digits["result"]["circuit"] == A.canonical
    assert digits["result"]["normalised"] == pytest.approx(0.95) and digits["dataset"] == {"n": 4, "seed": 0}
    running = jobs[filled["running"]]["progress"]
    assert (running["done"], running["total"], running["fraction"]) == (5, 20, 0.25)
    # ETA = elapsed * remaining / done, on the database clock
    assert running["eta_s"] == pytest.approx(running["elapsed_s"] * 15 / 5)
    assert jobs[filled["queued"]]["progress"]["eta_s"] is None and digits["progress"]["eta_s"] is None
    assert data["options"]["task"] == ["digits", "months", "number-words"]

    months = client.get("/api/jobs", params={"task": "months"}).json()["jobs"]
    assert [j["id"] for j in months] == [filled["months"]]
    assert [j["id"] for j in client.get("/api/jobs?status=running").json()["jobs"]] == [filled["running"]]

    page = client.get("/")
    assert page.status_code == 200
    for job_id in filled.values():
        assert f'<tr data-job="{job_id}">' in page.text
    assert A.canonical in page.text and 'fetch("/api/jobs"' in page.text  # the live poll
    assert f'<tr data-job="{filled["months"]}">' in client.get("/?method=greedy&task=months").text
    assert f'<tr data-job="{filled["digits"]}">' not in client.get("/?task=months").text


def test_job_page_draws_the_result_and_every_evaluated_circuit(filled, db_url):
    client = client_for(db_url)
    data = client.get(f"/api/jobs/{filled['digits']}").json()
    assert [e["circuit"] for e in data["evaluations"]] == ["", "0.1", "0.1,1.2", A.canonical]
    assert data["model_shape"] == {"n_layers": 2, "n_heads": 4}
    assert data["history"][-1]["evaluations"] == 4
    assert data["sweep"] is None

    html = client.get(f"/jobs/{filled['digits']}").text
    (diagram,) = node_names(html)
    assert sorted(diagram) == sorted(n.name for n in A.nodes)  # one node per component
    assert html.count('class="slot"') == 2 * 4 + 2  # every head and MLP of the 2x4 model
    plot = re.search(r'<svg[^>]*class="plot".*?</svg>', html, flags=re.S).group(0)  # type: ignore[union-attr]
    assert plot.count("<circle") == 4 and plot.count('class="point result"') == 1
    assert "method: mean ablation over digits" in html


def test_sweep_comparison_is_shown_on_its_jobs(store, db_url):
    a, b = finished_job(store, "digits", A, 0.9), finished_job(store, "months", B, 0.8)
    comparison = {
        "kind": "comparison",
        "jobs": [a, b],
        "tasks": ["digits", "months"],
        "circuits": [A.canonical, B.canonical],
        "overlap": [[1.0, 0.5], [0.5, 1.0]],
        "edge_overlap": None,
        "shared_components": [[["0.1", "1.2", "1.3"], ["0.1", "1.3"]], [["0.1", "1.3"], ["0.1", "1.3", "m0"]]],
        "cross_scores": [[0.9, 0.2], [0.1, 0.8]],
        "common": "0.1,1.3",
        "missing": [],
    }
    cmp_job = store.create_job("compare", {"jobs": [a, b]}, "digits,months", MODEL, tasks=["digits", "months"])
    store.claim_job(cmp_job, "w")
    nan = float("nan")
    common = Circuit.parse("0.1,1.3")
    store.finish_job(
        cmp_job,
        SearchResult(
            "compare", {}, common, Score(common, nan, nan, nan, nan, method()), 0, 0.0, (), {"comparison": comparison}
        ),
    )
    client = client_for(db_url)
    sweep = client.get(f"/api/jobs/{a}").json()["sweep"]
    assert sweep["compare_job"] == cmp_job and sweep["comparison"]["cross_scores"] == [[0.9, 0.2], [0.1, 0.8]]
    html = client.get(f"/jobs/{a}").text
    assert f'href="/jobs/{cmp_job}"' in html and "0.200" in html and "0.500" in html


def test_circuit_page_lists_every_stored_score_with_its_method(filled, db_url):
    client = client_for(db_url)
    data = client.get(f"/api/circuits/{A.key}").json()
    assert data["circuit"] == A.canonical and data["size"] == 3
    tasks = sorted((s["task"], s["normalised"]) for s in data["scores"])
    assert tasks == [("digits", pytest.approx(0.95)), ("months", pytest.approx(0.3))]
    assert all(s["method"].startswith("mean ablation over ") for s in data["scores"])
    assert client.get(f"/api/circuits/{A.key[:12]}").json()["circuit"] == A.canonical  # a prefix works
    html = client.get(f"/circuits/{A.key}").text
    assert sorted(node_names(html)[0]) == ["0.1", "1.2", "1.3"]
    assert "months[" in html and "logit_diff" in html


def test_compare_names_shared_and_distinct_components(filled, db_url):
    client = client_for(db_url)
    data = client.get("/api/compare", params={"a": filled["digits"], "b": B.canonical}).json()
    assert data["shared_nodes"] == ["0.1", "1.3"] and data["only_a_nodes"] == ["1.2"]
    assert data["only_b_nodes"] == ["m0"] and data["node_jaccard"] == pytest.approx(0.5)
    assert data["shared_heads"] == ["0.1", "1.3"] and data["label_a"].startswith(f"job {filled['digits']}")
    html = client.get("/compare", params={"a": filled["digits"], "b": B.canonical}).text
    shared = re.search(r'<p id="shared-heads">(.*?)</p>', html, flags=re.S).group(1)  # type: ignore[union-attr]
    assert re.findall(r'<b class="mono">([^<]+)</b>', shared) == ["0.1", "1.3"]
    a_svg, b_svg, union = node_names(html)
    assert sorted(a_svg) == ["0.1", "1.2", "1.3"] and sorted(b_svg) == ["0.1", "1.3", "m0"]
    assert sorted(union) == ["0.1", "1.2", "1.3", "m0"] and 'class="node member-both"' in html
    by_key = client.get("/api/compare", params={"a": f"key:{A.key}", "b": filled["months"]}).json()
    assert by_key["a"] == A.canonical and by_key["b"] == C.canonical and by_key["shared_heads"] == ["1.2"]


def test_overlap_has_jaccard_cross_scores_and_shared_heads(filled, db_url, tiny_model):
    client = client_for(db_url)
    params = {"model": tiny_model.identity.name, "task": ["digits", "months"]}
    data = client.get("/api/overlap", params=params).json()
    assert [b["circuit"] for b in data["best"]] == [A.canonical, C.canonical]
    assert data["jaccard"] == [[1.0, pytest.approx(0.25)], [pytest.approx(0.25), 1.0]]
    assert data["shared_heads"][0][1] == ["1.2"] and data["common_heads"] == ["1.2"]
    (setting,) = data["cross_scores"]
    assert setting["setting"] == {
        "ablation": "mean",
        "level": "node",
        "ablate_mlps": False,
        "metric": "logit_diff",
        "means_from": "corrupt",
    }
    matrix = setting["matrix"]
    assert matrix[0][0][0]["normalised"] == pytest.approx(0.95) and matrix[0][1][0]["normalised"] == pytest.approx(0.3)
    assert matrix[0][1][0]["dataset"].startswith("months[") and matrix[1][0] is None  # C never scored on digits
    html = client.get("/overlap", params=params).text
    assert "not evaluated" in html and "0.250" in html and "0.300" in html and '<b class="mono">1.2</b>' in html


def test_patching_heatmap_cells_carry_their_effects(filled, db_url):
    client = client_for(db_url)
    (listed,) = client.get("/api/patching").json()["heatmaps"]
    assert listed["receiver"] == "logits" and listed["cells"] == 4
    data = client.get(f"/api/patching/{listed['id']}").json()
    assert data["top"][0] == {"sender": "1.3", "effect": 1.5} and data["n_heads"] == 4
    html = client.get(f"/patching/{listed['id']}").text
    effects = dict(re.findall(r'data-sender="([^"]+)" data-layer="\d+" data-head="-?\d+" data-effect="([^"]+)"', html))
    assert effects == {"0.0": "-0.5", "0.1": "0.25", "1.3": "1.5", "m1": "0.125"}
    assert html.count('class="cell missing"') == 2 * 5 - 4  # 2 layers x (4 heads + MLP), 4 stored
    assert "mouseenter" in html  # hovering a cell shows its effect


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/jobs/987654", 404, "no job with id 987654"),
        ("/api/jobs/987654", 404, "no job with id 987654"),
        ("/circuits/" + "ab" * 32, 404, "no stored circuit with key"),
        ("/api/circuits/0123456789abcdef", 404, "no stored circuit with key"),
        ("/patching/987654", 404, "no stored patching result"),
        ("/no/such/page", 404, "no such page"),
        ("/jobs/seven", 400, "job_id='seven'"),
        ("/api/jobs?limit=lots", 400, "limit='lots'"),
        ("/api/jobs?limit=0", 400, "limit='0': Input should be greater than or equal to 1"),
        ("/api/jobs?status=finished", 400, "status 'finished': choose one of"),
        ("/circuits/not-a-key", 400, "write the circuit's sha256 key"),
        ("/api/compare?a=0.1", 400, "b: missing"),
        ("/compare?a=0.1&b=x.y", 400, "x.y"),
        ("/compare?a=0.1", 400, "b: missing"),
        ("/compare?a=987654&b=0.1", 404, "no job with id 987654"),
        ("/api/overlap?model=m&task=digits", 400, "at least two distinct task"),
        ("/api/overlap?task=digits&task=months", 400, "model: missing"),
        ("/api/overlap?model=m&task=a&task=b&threshold=high", 400, "threshold='high'"),
    ],
)
def test_bad_input_is_a_clear_error_never_a_traceback(store, db_url, path, status, message):
    client = client_for(db_url)
    response = client.get(path)
    assert response.status_code == status, response.text
    text = unescape(response.text)
    assert message in text and "Traceback" not in text
    if path.startswith("/api/"):
        assert response.json()["status"] == status
    else:
        assert response.headers["content-type"].startswith("text/html")


def test_read_only_mode_writes_nothing(filled, db_url, store):
    before = row_counts(store)
    client = client_for(db_url)
    heatmap = client.get("/api/patching").json()["heatmaps"][0]["id"]
    for path in [
        "/",
        "/api/jobs",
        f"/jobs/{filled['digits']}",
        f"/jobs/{filled['running']}",
        f"/circuits/{A.key}",
        f"/compare?a={filled['digits']}&b={filled['months']}",
        "/overlap?model=x&task=digits&task=months",
        "/compare",
        "/patching",
        f"/patching/{heatmap}",
    ]:
        assert client.get(path).status_code == 200, path
    for path in (f"/api/jobs/{filled['queued']}/cancel", f"/jobs/{filled['digits']}/resubmit"):
        response = client.post(path)
        assert response.status_code == 403 and "read-only" in response.text
    assert row_counts(store) == before
    assert store.get_job(filled["queued"]).status.value == "queued"
    # and the connection itself refuses writes, whatever the app's code did
    read_only = open_dashboard_store(db_url)
    with pytest.raises(StoreError, match="(?i)read.only|readonly"):
        read_only.create_job("greedy", {}, "digits", MODEL)
    assert row_counts(store) == before


def test_read_only_mode_creates_and_migrates_nothing(tmp_path, db_url):
    missing = tmp_path / "nothing-here.db"
    with pytest.raises(StoreError, match="no store at"):
        open_dashboard_store(f"sqlite:///{missing}")
    assert not missing.exists()
    if db_url.startswith("sqlite"):
        Path(db_url.removeprefix("sqlite:///")).touch()  # an empty file: no schema
    with pytest.raises(StoreError, match="circuits db upgrade"):
        open_dashboard_store(db_url)
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


def test_actions_cancel_and_resubmit(store, db_url, tmp_path):
    from tests.service_fixtures import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model")
    queued = store.create_job("greedy", {"target": 0.5}, "digits", str(model_dir), config={"n": 4, "seed": 0})
    client = client_for(db_url, allow_actions=True)
    refused = client.post(f"/api/jobs/{queued}/cancel", headers={"origin": "http://evil.example"})
    assert refused.status_code == 403 and store.get_job(queued).status.value == "queued"
    assert client.post(f"/api/jobs/{queued}/cancel").json() == {"job": queued, "status": "cancelled"}
    assert store.get_job(queued).status.value == "cancelled"

    form = client.post(f"/jobs/{queued}/resubmit", follow_redirects=False)
    assert form.status_code == 303
    new_id = int(form.headers["location"].rsplit("/", 1)[1])
    from discovery.service import wait

    (job,) = wait([new_id], store, timeout=120, poll=0.2)  # no broker: it runs in the dashboard's process
    assert job.status.value == "succeeded", job.error_message
    assert (job.task, job.method, job.params["target"], job.config["n"]) == ("digits", "greedy", 0.5, 4)
    assert store.job_evaluation_count(new_id) > 0


def test_cli_refuses_bad_options_before_serving(tmp_path, capsys):
    from discovery.cli import main

    with pytest.raises(SystemExit) as e:
        main(["dashboard", "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert e.value.code == 1 and "no store at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dashboard", "--port", "70000"])
    assert "--port 70000" in capsys.readouterr().err


def test_edge_level_result_is_drawn_with_edges_weighted_by_score(store, db_url):
    circuit = Circuit.from_edges(["0.1->1.2.q", "1.2->logits"])
    extra = {"edge_scores": [["1.2->logits", -2.0], ["0.1->1.2.q", 0.5], ["0.0->1.1.k", 0.1]]}
    job = finished_job(store, "digits", circuit, 0.7, extra=extra)
    client = client_for(db_url)
    assert client.get(f"/api/jobs/{job}").json()["edge_scores"] == {"1.2->logits": -2.0, "0.1->1.2.q": 0.5}
    page = client.get(f"/jobs/{job}").text
    assert sorted(node_names(page)[0]) == ["0.1", "1.2"]  # heads and MLPs only; embed/logits are the frame
    widths = {unescape(k): v for k, v in re.findall(r'data-edge="([^"]+)"[^>]*stroke-width="([\d.]+)"', page)}
    # width 1.2 + 5 * |score| / max |score|
    assert widths == {"0.1->1.2.q": "2.45", "1.2->logits": "6.20"}
    assert "Edge width is proportional to |edge score|" in page
