"""Session fixtures for the reference models: each full model is trained once per test session.

Registered once in ``tests/conftest.py`` (importing them into several modules would train once per module); they train
into a session temporary directory, never into the user's cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from discovery.reference import TrainingReport, train_reference


@dataclass(frozen=True)
class TrainedReference:
    report: TrainingReport
    path: Path


def _train(tmp_path_factory: pytest.TempPathFactory, name: str) -> TrainedReference:
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp(f"ref-{name}") / name
    return TrainedReference(train_reference(name, out, seed=0), out)


@pytest.fixture(scope="session")
def induction_reference(tmp_path_factory: pytest.TempPathFactory) -> TrainedReference:
    """The full ``induction`` reference model, seed 0."""
    return _train(tmp_path_factory, "induction")


@pytest.fixture(scope="session")
def sequences_reference(tmp_path_factory: pytest.TempPathFactory) -> TrainedReference:
    """The full ``sequences`` reference model, seed 0."""
    return _train(tmp_path_factory, "sequences")
