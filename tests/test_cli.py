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
def test_bad_input_is_one_line_exit_1(model_dir, tmp_path, args, message):
    out = run("evaluate", "--model", str(model_dir), "--n", "4", *args, tmp=tmp_path)
    assert out.returncode == 1
    assert message in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr
