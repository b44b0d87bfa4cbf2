"""The planted circuit the search tests look for, and its fixtures.

The planted model: a 3-layer random GPT-2 in which every head's ``W_O`` (its rows of HF's Conv1D
``c_proj``, weight [in, out]) is zeroed except the heads of S, whose rows are scaled up. Heads
outside S then write nothing, so their ablation changes nothing; with zero ablation the heads of S
contribute roughly additively and each of them is needed to reach ``TARGET`` (:func:`necessary`
checks that on every proper subset of S).

Import the fixtures into a test module with ``from tests.planted_fixtures import ...`` (as the
store tests do with :mod:`tests.store_fixtures`).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from discovery.model import random_gpt2
from discovery.scoring.evaluator import Evaluator
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit
from discovery.types.evaluation import Ablation

S = ("0.1", "1.2", "2.3")
TARGET = 0.9


@pytest.fixture(scope="module")
def planted(tokenizer):
    model = random_gpt2(n_layers=3, n_heads=4, d_model=64, seed=9, tokenizer=tokenizer)
    dh = 16
    with torch.no_grad():
        for layer, block in enumerate(model.hf_model.transformer.h):
            for h in range(4):
                rows = slice(h * dh, (h + 1) * dh)
                if f"{layer}.{h}" in S:
                    block.attn.c_proj.weight[rows] *= 5.0
                else:
                    block.attn.c_proj.weight[rows] = 0.0
    ds = build_dataset(get_task("digits"), tokenizer, n=10, seed=0)
    return model, Evaluator(model, ds, Ablation(kind="zero"))


@pytest.fixture(scope="module")
def necessary(planted) -> set[str]:
    """The smallest subsets of S meeting the target: the test needs exactly one, and it is S."""
    _, ev = planted
    subsets = [c for k in range(len(S) + 1) for c in itertools.combinations(S, k)]
    scores = ev.evaluate([Circuit.parse(",".join(c)) for c in subsets])
    meeting = [set(c) for c, s in zip(subsets, scores) if s.normalised >= TARGET]
    smallest = min(len(c) for c in meeting)
    minimal = [c for c in meeting if len(c) == smallest]
    assert len(minimal) == 1
    # a meaningful plant: S's heads all matter, each one visibly
    assert minimal[0] == set(S)
    singles = [s.normalised for c, s in zip(subsets, scores) if len(c) == 1]
    assert min(singles) > 0.1
    return minimal[0]


def heads_of(circuit: Circuit) -> set[str]:
    return {n.name for n in circuit.heads}
