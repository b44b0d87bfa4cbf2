"""Path patching agrees with the literal two-run algorithm through TransformerLens hooks."""

from __future__ import annotations

import numpy as np
import pytest

from discovery.pictures.plots import save_heatmap
from discovery.scoring.patching import Receiver, path_patching
from discovery.tasks import build_dataset, get_task
from discovery.types.errors import UsageError
from tests import reference_impl as ref


@pytest.fixture(scope="module")
def dataset(tokenizer):
    return build_dataset(get_task("digits"), tokenizer, n=6, seed=4)


def test_logits_receiver_matches_reference(tiny_model3, dataset):
    result = path_patching(tiny_model3, dataset, "logits")
    assert not np.isnan(result.effects).any()
    for sender in [(0, 0), (1, 2), (2, 3)]:
        expected = ref.path_patching_effect(tiny_model3, dataset, sender, None)
        assert result.effects[sender] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("receiver_text", ["2.1.q", "2.1.k", "2.1.v", "2.0.v,1.3.q"])
def test_head_receiver_matches_reference(tiny_model3, dataset, receiver_text):
    receiver = Receiver.parse(receiver_text, tiny_model3.shape)
    result = path_patching(tiny_model3, dataset, receiver)
    first = receiver.first_layer
    assert np.isnan(result.effects[first:]).all()
    for sender in [(0, 1), (first - 1, 3)]:
        expected = ref.path_patching_effect(tiny_model3, dataset, sender, list(receiver.heads))
        assert result.effects[sender] == pytest.approx(expected, abs=1e-5)


def test_heatmap_png(tiny_model3, dataset, tmp_path):
    result = path_patching(tiny_model3, dataset, "2.1")
    path = save_heatmap(result, tmp_path / "map.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_receivers(tiny_model3):
    with pytest.raises(UsageError, match="layer 7 is out of range"):
        Receiver.parse("7.1.q", tiny_model3.shape)
    with pytest.raises(UsageError, match="no sender heads"):
        Receiver.parse("0.1.q", tiny_model3.shape)
    with pytest.raises(UsageError, match="write logits"):
        Receiver.parse("2.1.x", tiny_model3.shape)
