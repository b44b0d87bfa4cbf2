"""The command line as a user runs it: a subprocess, a saved model directory, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model3):
    path = tmp_path_factory.mktemp("model")
    tiny_model3.hf_model.save_pretrained(path)
    tiny_model3.tokenizer.save_pretrained(path)
    return path


def run(*args: str, env_db=None, tmp=None):
    import os

    env = dict(os.environ)
    if tmp is not None:
        env["CIRCUITS_DATABASE_URL"] = f"sqlite:///{tmp}/cli.db"
    env["COLUMNS"] = "250"  # rich tables fit their cells outside a terminal
    return subprocess.run(
        [sys.executable, "-m", "discovery.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_evaluate_prints_all_scores_with_method(model_dir, tmp_path):
    out = run(
        "evaluate",
        "--model",
        str(model_dir),
        "--task",
        "digits",
        "--n",
        "8",
        "-c",
        "0.1,1.2,2.3",
        "-c",
        "",
        tmp=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for word in (
        "full",
        "ablated",
        "normalised",
        "0.1,1.2,2.3",
        "(empty)",
        "mean ablation over digits[corruption=repeat-last,n=8,seed=0",
        "MLPs kept",
    ):
        assert word in text, text


def test_patch_writes_png(model_dir, tmp_path):
    png = tmp_path / "heat.png"
    out = run("patch", "--model", str(model_dir), "--receiver", "2.1.q", "--png", str(png), "--n", "6", tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "receiver  2.1.q" in out.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--task", "nope", "-c", "1.1"], "unknown task 'nope'"),
        (["-c", "3.0"], "component 3.0: layer 3 is out of range"),
        (["-c", "1.1", "--ablation", "shuffle"], "unknown ablation 'shuffle'"),
    ],
)
def test_bad_input_is_one_line_exit_2(model_dir, tmp_path, args, message):
    out = run("evaluate", "--model", str(model_dir), "--n", "4", *args, tmp=tmp_path)
    assert out.returncode == 2
    assert message in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["submitt"], "No such command 'submitt'"),
        (["sql"], "Missing argument"),
        (["evaluate", "--n", "abc"], "Invalid value for '--n'"),
        (["jobs", "--database", "x"], "No such option: --database"),  # one store option name: --db
        (["status", "x"], "job id 'x' is not a number"),
        (["evaluate", "--task-param", "colour=red", "-c", "0.1"], "task 'digits' has no parameter colour"),
        (["discover", "--param", "max_size"], "--param 'max_size': write KEY=VALUE"),
        (["evaluate", "--n", "100000000", "-c", "0.1"], "between 1 and 100,000"),
    ],
)
def test_usage_errors_are_one_line_exit_2(model_dir, tmp_path, args, message):
    out = run(*args, "--model", str(model_dir), tmp=tmp_path) if args[0] in ("evaluate", "discover") else run(*args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and message in out.stderr, out.stderr


def test_version_prints_one_line():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip().startswith("circuits ") and out.stderr == ""


@pytest.mark.slow  # over 20 s on the loaded 2-core machine (quick-tier durations, tests/conftest.py)
def test_discover_is_recorded_as_a_run(model_dir, tmp_path):
    out = run(
        "discover", "--model", str(model_dir), "--n", "6", "--method", "greedy", "--target", "0.5",
        "--png", str(tmp_path / "c.png"), tmp=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("run "))
    job_id = int(line.split("job ")[1].split()[0])
    from discovery.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/cli.db")
    job = store.get_job(job_id)
    circuit_line = next(x for x in out.stdout.splitlines() if x.startswith("circuit "))
    assert (job.status.value, job.method, job.task, job.model) == ("succeeded", "greedy", "digits", str(model_dir))
    assert job.params["target"] == 0.5 and job.config["n"] == 6 and job.config["ablation"] == "mean"
    assert str(job.result_circuit) == circuit_line.split(None, 1)[1].strip()
    assert store.job_evaluation_count(job_id) > 0  # its scores are stored under the run
    assert job.result_score["extra"]["service"]["dataset"].startswith("digits")
    store.close()
    listed = run("runs", tmp=tmp_path)
    assert listed.returncode == 0 and "greedy" in listed.stdout and "succeeded" in listed.stdout
