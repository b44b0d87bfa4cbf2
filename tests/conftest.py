"""Shared fixtures, and the tiers. Every skip says why.

Tiers, by marker (never by file list):

- quick, ``bash dev.sh test`` (``pytest -m "not slow and not integration"``): unit tests on tiny
  in-process models and the shipped reference models.
- ``integration``: needs the real PostgreSQL and Redis on localhost.
- ``slow``: over about 10 s on its own: GPT-2-small-shaped models, reference-model retraining, the
  literal reference loops of the edge-level forward, EAP-IG, ACDC and iterative pruning.
- everything, ``bash dev.sh test-all`` (plain ``pytest``), as CI runs it.

Measured here, 2 cores shared with other jobs (load average about 5, so wall times are 2 to 3 times a
quiet machine's): the quick tier was 400 tests in 29 minutes; its nine longest tests (over 20 s each)
and the training of the reference models (now shipped, see ``discovery/reference/shipped.py``) have
since left it. The whole quick tier has not been timed on a quiet machine.
"""

from __future__ import annotations

import pytest
import torch

from discovery.model import LoadedModel, gpt2_tokenizer, random_gpt2

# registered here, once: a session fixture imported into several test modules becomes one fixture
# per module, and each built its own copy of the model
from tests.reference_fixtures import (  # noqa: E402,F401
    induction_reference,
    induction_trained_reference,
    sequences_reference,
)

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def isolated_store(tmp_path_factory):
    """Tests never write to the user's real database: the default store is a session tmp file
    (a test that needs another store passes its own URL)."""
    import os

    path = tmp_path_factory.mktemp("store") / "circuits.db"
    previous = os.environ.get("CIRCUITS_DATABASE_URL")
    os.environ["CIRCUITS_DATABASE_URL"] = f"sqlite:///{path}"
    yield
    if previous is None:
        os.environ.pop("CIRCUITS_DATABASE_URL", None)
    else:
        os.environ["CIRCUITS_DATABASE_URL"] = previous


@pytest.fixture(scope="session")
def tokenizer():
    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> LoadedModel:
    """A 2-layer, 4-head random GPT-2 with GPT-2's tokenizer (built in-process, no files)."""
    return random_gpt2(n_layers=2, n_heads=4, d_model=64, seed=0, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tiny_model3(tokenizer) -> LoadedModel:
    """A 3-layer, 4-head random GPT-2: enough layers for prefix sharing and path patching to matter."""
    return random_gpt2(n_layers=3, n_heads=4, d_model=64, seed=1, tokenizer=tokenizer)
