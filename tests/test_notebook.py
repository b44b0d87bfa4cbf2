"""``examples/find_a_circuit.ipynb`` executes top to bottom (nbclient) on the trained ``sequences`` model.

The notebook asserts what matters itself (greedy reaches 0.9; the greedy circuit is in the store); this
test runs it against the session's trained reference model and a store of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "find_a_circuit.ipynb"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a kernel start, several searches and pictures: minutes on a busy machine
def test_the_notebook_executes(sequences_reference, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat")
    nbclient = pytest.importorskip("nbclient", reason="the test extra installs nbclient")

    monkeypatch.setenv("CIRCUITS_NOTEBOOK_MODEL", str(sequences_reference.path))
    monkeypatch.setenv("CIRCUITS_NOTEBOOK_STORE", f"sqlite:///{tmp_path / 'notebook.db'}")
    monkeypatch.setenv("CIRCUITS_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parent.parent))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("name") == "stdout"
    )
    assert "normalised" in text and "CPR" in text
    for picture in ("patching.png", "greedy.png", "curve.png"):
        assert (tmp_path / picture).stat().st_size > 5000
