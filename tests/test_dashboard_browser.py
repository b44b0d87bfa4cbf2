"""The dashboard in a real browser: Debian's chromium driven by Selenium, headless (integration tier).

The test submits a sweep (digits and months, greedy, in-process) on a tiny random model into a fresh
SQLite store, starts a long exhaustive job in a thread (a job that is running while the pages are
open), serves the dashboard read-only with uvicorn on a free localhost port, and checks in the
browser: the jobs page lists the submitted jobs and the running job's progress moves by itself
(polling); the job page shows the result as an SVG with one node per circuit component; the compare
page names the shared heads. It writes screenshots of the jobs page and a job page into a temporary
folder; with ``CIRCUITS_UPDATE_SCREENSHOTS=1`` into ``docs/img/`` (the README's), so a test run
never changes checked-in files by accident.

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (``apt-get install -y chromium
chromium-driver``; ``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from discovery.analysis.compare import compare
from discovery.types.circuit import Circuit

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = (
    ROOT / "docs" / "img"
    if os.environ.get("CIRCUITS_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="circuits-screenshots-"))
)
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[object]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1440,1000")
    options.add_argument("--hide-scrollbars")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> Iterator[dict]:
    """A store with a sweep submitted in-process, and a long job running in a thread meanwhile."""
    from discovery.service import JobRequest, run_job, submit
    from discovery.store import open_store
    from tests.service_fixtures import save_tiny_model

    folder = tmp_path_factory.mktemp("dashboard")
    model = str(save_tiny_model(folder / "tiny-4x4", n_layers=4, n_heads=4, seed=3))
    url = f"sqlite:///{folder / 'circuits.db'}"
    store = open_store(url)
    sweep = submit(
        [JobRequest(task=t, method="greedy", model=model, params={"target": 0.9}, n=10) for t in ("digits", "months")],
        store,
        broker=False,
    )
    assert all(outcome == "succeeded" for outcome in sweep.outcomes.values()), sweep.outcomes
    # every subset of 16 heads up to size 6 against a target no subset reaches: runs until cancelled
    long_job = store.create_job(
        "exhaustive", {"k": 6, "target": 2.0}, "digits", model, config={"n": 10, "seed": 0, "device": "cpu"}
    )
    runner = threading.Thread(target=run_job, args=(long_job, store), daemon=True)
    runner.start()
    try:
        yield {"url": url, "store": store, "sweep": sweep, "long_job": long_job, "model": model}
    finally:
        store.cancel_job(long_job)  # the search stops at its next progress report
        runner.join(timeout=60)
        store.close()


@pytest.fixture(scope="module")
def server(submitted) -> Iterator[str]:
    """The dashboard (read-only) served by uvicorn on a free localhost port, in a thread."""
    import uvicorn

    from discovery.dashboard import create_app, open_dashboard_store

    store = open_dashboard_store(submitted["url"])
    port = _free_port()
    config = uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        store.close()


def _wait(driver, condition, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def _screenshot(driver, name: str) -> Path:  # type: ignore[no-untyped-def]
    """A screenshot of the whole page (the window resized to the page's height)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, min(max(int(height) + 20, 600), 2400))
    path = SCREENSHOTS / name
    assert driver.save_screenshot(str(path)), path
    driver.set_window_size(1440, 1000)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, path
    return path


def test_jobs_page_lists_the_submitted_jobs_and_polls_progress(browser, server, submitted):
    from selenium.webdriver.common.by import By

    store, long_job = submitted["store"], submitted["long_job"]
    _wait(browser, lambda _: store.get_job(long_job).progress_done > 0, timeout=120)
    browser.get(server + "/")
    rows = {r.get_attribute("data-job"): r for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-job]")}
    for job_id in [*submitted["sweep"].all_ids, long_job]:
        assert str(job_id) in rows, f"job {job_id} is not listed"
    for job_id in submitted["sweep"].job_ids:
        row = rows[str(job_id)]
        assert row.find_element(By.CSS_SELECTOR, '[data-field="status"]').text == "succeeded"
        assert row.find_element(By.CSS_SELECTOR, '[data-field="result"]').text.startswith(
            str(store.get_job(job_id).result_circuit)
        )
    running = rows[str(long_job)]
    assert running.find_element(By.CSS_SELECTOR, '[data-field="status"]').text == "running"
    first = running.find_element(By.CSS_SELECTOR, '[data-field="progress"]').text
    # the page polls /api/jobs: the running job's progress changes without a reload
    _wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-job="{long_job}"] [data-field="progress"]').text != first,
        timeout=60,
    )
    eta = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{long_job}"] [data-field="eta"]').text
    assert eta and eta != "unknown", eta  # exhaustive search knows its total
    _screenshot(browser, "dashboard-jobs.png")


def test_job_page_shows_the_result_as_a_diagram(browser, server, submitted):
    from selenium.webdriver.common.by import By

    job_id = submitted["sweep"].job_ids[0]
    circuit = submitted["store"].get_job(job_id).result_circuit
    browser.get(f"{server}/jobs/{job_id}")
    (diagram,) = browser.find_elements(By.CSS_SELECTOR, "#result svg.circuit")
    nodes = diagram.find_elements(By.CSS_SELECTOR, ".node")
    assert sorted(n.get_attribute("data-name") for n in nodes) == sorted(n.name for n in circuit.nodes)
    assert len(nodes) == circuit.size
    points = browser.find_elements(By.CSS_SELECTOR, "svg.plot circle.point")
    assert len(points) == submitted["store"].job_evaluation_count(job_id) - len(
        [e for e in submitted["store"].evaluations(job_id=job_id) if e.score.normalised != e.score.normalised]
    )
    assert browser.find_element(By.ID, "status").text == "succeeded"
    _screenshot(browser, "dashboard-job.png")


def test_compare_page_names_the_shared_heads(browser, server, submitted):
    from selenium.webdriver.common.by import By

    store = submitted["store"]
    a, b = (store.get_job(j).result_circuit for j in submitted["sweep"].job_ids)
    # a circuit sharing a head with A for sure: A's first head plus one A does not have
    first = a.heads[0]
    other = next(f"{l}.{h}" for l in range(4) for h in range(4) if f"{l}.{h}" not in {n.name for n in a.nodes})
    for target in (str(submitted["sweep"].job_ids[1]), f"{first.name},{other}"):
        other_circuit = b if target.isdigit() else Circuit.parse(target)
        expected = [n for n in compare(a, other_circuit).shared_nodes if not n.startswith("m")]
        browser.get(f"{server}/compare?a={submitted['sweep'].job_ids[0]}&b={target}")
        text = browser.find_element(By.ID, "shared-heads").text
        named = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#shared-heads b")]
        assert named == expected, text
        assert text == "Shared heads: " + (", ".join(expected) if expected else "none")
    assert expected == [first.name]
