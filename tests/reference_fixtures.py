"""Session fixtures for the reference models: the trained ones are the package's shipped copies, the
hand-built ``induction`` is built once per test session.

Registered once in ``tests/conftest.py`` (importing them into several modules would build once per module).
Nothing trains: ``sequences`` and ``induction-trained`` are read in place from the package
(:mod:`discovery.reference.shipped`), their report from the ``reference.json`` their training wrote;
``induction`` is built into a session temporary directory, never into the user's cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from discovery.reference import TrainingReport, shipped_reference_dir, train_reference


@dataclass(frozen=True)
class TrainedReference:
    report: TrainingReport
    path: Path


def _build(tmp_path_factory: pytest.TempPathFactory, name: str) -> TrainedReference:
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp(f"ref-{name}") / name
    return TrainedReference(train_reference(name, out, seed=0), out)


def shipped(name: str) -> TrainedReference:
    """The shipped copy of trained reference model ``name`` (seed 0) and the report of its training."""
    path = shipped_reference_dir(name, seed=0)
    if path is None:
        pytest.fail(f"the package ships no {name} for its spec's current version: train and ship it")
    record = json.loads((path / "reference.json").read_text())
    return TrainedReference(TrainingReport(**{**record, "out_dir": path}), path)


@pytest.fixture(scope="session")
def induction_reference(tmp_path_factory: pytest.TempPathFactory) -> TrainedReference:
    """The full ``induction`` reference model (built by hand in seconds), seed 0."""
    return _build(tmp_path_factory, "induction")


@pytest.fixture(scope="session")
def sequences_reference() -> TrainedReference:
    """The shipped ``sequences`` reference model, seed 0."""
    return shipped("sequences")


@pytest.fixture(scope="session")
def induction_trained_reference() -> TrainedReference:
    """The shipped ``induction-trained`` reference model, seed 0."""
    return shipped("induction-trained")
