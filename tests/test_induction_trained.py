"""``induction-trained``: the trained induction reference model (issue 16, item 1).

Short runs check what holds for any recipe: the same seed gives the same weights whatever thread
count the caller set (the spec trains on its own), the caller's setting comes back, and the
report's targets are the grid minima read from attention patterns. The full model is the package's
shipped copy (``tests/reference_fixtures.py``), measured again here; retraining it from the recipe
(about 5 minutes on idle cores) is checked by ``python bench/reference_models.py --only
induction-trained`` rather than in the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from discovery.reference import REFERENCE_MODELS, train_reference
from discovery.reference.training import ReferenceSpec
from tests.reference_fixtures import TrainedReference

NAME = "induction-trained"
GRID_TARGETS = {
    "previous-token (worst cell)": 0.8,
    "induction, layer 1 (worst cell)": 0.8,
    "repeated-half (worst cell)": 0.95,
}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


@pytest.mark.slow  # 16-23 s on the loaded 2 cores (quick-tier durations, tests/conftest.py)
def test_same_seed_same_weights_whatever_the_callers_thread_count(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = train_reference(NAME, tmp_path / "a", seed=5, steps=15)
        assert torch.get_num_threads() == 2  # the caller's setting is restored
        torch.set_num_threads(1)
        b = train_reference(NAME, tmp_path / "b", seed=5, steps=15)
        c = train_reference(NAME, tmp_path / "c", seed=6, steps=15)
    finally:
        torch.set_num_threads(before)
    wa, wb, wc = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert a.heldout_accuracy == b.heldout_accuracy
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert c.seed == 6


def test_targets_are_the_grid_minima_and_are_reported(tmp_path: Path) -> None:
    spec = REFERENCE_MODELS[NAME]
    assert isinstance(spec, ReferenceSpec) and spec.attention_only and spec.num_threads == 1
    for key, value in GRID_TARGETS.items():
        assert spec.targets[key] == value
    report = train_reference(NAME, tmp_path / "m", seed=0, steps=5)
    assert set(spec.targets) <= set(report.heldout_accuracy)
    assert all(0.0 <= v <= 1.0 for v in report.heldout_accuracy.values())
    assert not report.meets_targets  # 5 steps learn nothing: the targets do not pass by construction


def test_the_shipped_model_measures_as_its_record_says(induction_trained_reference: TrainedReference) -> None:
    """Measured again here from attention patterns and the task, not read from the record. The shipped
    copy (seed 0, trained on this project's 2-core build machine) misses the previous-token target
    (0.66 against 0.8, README): the record says so, and every other target is met."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = REFERENCE_MODELS[NAME]
    path = induction_trained_reference.path
    recorded = induction_trained_reference.report.heldout_accuracy
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    accuracy = spec.evaluate(model, AutoTokenizer.from_pretrained(path), 0)
    for key, target in spec.targets.items():
        assert accuracy[key] == pytest.approx(recorded[key], abs=0.01), (key, accuracy)
        if key != "previous-token (worst cell)":
            assert accuracy[key] >= target, (key, accuracy)


def _mean_attention_entropy(model, ids: torch.Tensor) -> float:
    from discovery.reference.training import mean_attention_entropy

    with torch.no_grad():
        model.set_attn_implementation("eager")
        return float(mean_attention_entropy(model(input_ids=ids, output_attentions=True).attentions))


@pytest.mark.slow  # 16-23 s on the loaded 2 cores (quick-tier durations, tests/conftest.py)
def test_the_entropy_polish_sharpens_the_heads_and_only_in_the_polish() -> None:
    import dataclasses

    import numpy as np

    from discovery.reference import reference_tokenizer
    from discovery.reference.training import train_model

    spec = REFERENCE_MODELS[NAME]
    assert isinstance(spec, ReferenceSpec) and spec.polish_entropy_penalty > 0
    tokenizer = reference_tokenizer(NAME)
    short = dataclasses.replace(spec, steps=20, polish_steps=40)
    ids = torch.from_numpy(spec.make_batch(np.random.default_rng(7), tokenizer, 16).ids)
    sharpened, _, _ = train_model(short, tokenizer, seed=3)
    plain, _, _ = train_model(dataclasses.replace(short, polish_entropy_penalty=0.0), tokenizer, seed=3)
    assert _mean_attention_entropy(sharpened, ids) < _mean_attention_entropy(plain, ids) - 0.05
    # without a polish phase the term never applies: the same weights as a spec without it
    a, _, _ = train_model(short, tokenizer, seed=3, steps=10)
    b, _, _ = train_model(dataclasses.replace(short, polish_entropy_penalty=0.0), tokenizer, seed=3, steps=10)
    for (key, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(wa, wb), key
