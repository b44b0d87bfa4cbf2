"""Loading by local directory, model identity, and the circuit vocabulary."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from discovery.model import load_model
from discovery.types.circuit import Circuit, ModelShape, all_edges, parse_edge
from discovery.types.errors import UsageError


def test_local_directory_loads_the_same_model(tiny_model, tmp_path):
    tiny_model.hf_model.save_pretrained(tmp_path)
    tiny_model.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.identity.weight_hash == tiny_model.identity.weight_hash
    assert loaded.identity.architecture == "GPT2LMHeadModel"
    assert (loaded.identity.n_layers, loaded.identity.n_heads) == (2, 4)
    ids = torch.tensor([[50256, 16, 362, 513]])
    with torch.no_grad():
        assert torch.allclose(loaded.hf_model(ids).logits, tiny_model.hf_model(ids).logits, atol=1e-6)


def test_weight_hash_sees_one_changed_weight(tiny_model, tmp_path):
    from discovery.model import weight_hash

    before = weight_hash(tiny_model.hf_model)
    param = tiny_model.hf_model.transformer.h[1].attn.c_proj.bias
    with torch.no_grad():
        param[0] += 1.0
        try:
            assert weight_hash(tiny_model.hf_model) != before
        finally:
            param[0] -= 1.0
    assert weight_hash(tiny_model.hf_model) == before


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_model(str(tmp_path / "nothing"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match="is a file"):
        load_model(str(tmp_path / "weights.bin"))
    with pytest.raises(UsageError, match="has no config.json"):
        load_model(str(tmp_path))


def test_circuit_canonical_form_and_key():
    a = Circuit.parse("9.1, 0.1,4.4,m8")
    b = Circuit.parse("m8,4.4,9.1,0.1")
    assert a == b and a.canonical == "0.1,4.4,m8,9.1" and a.key == b.key and len(a.key) == 64
    assert Circuit.parse("") == Circuit() and str(Circuit()) == "(empty)"
    e = Circuit.parse("0.1 | embed->0.1.v, 0.1->logits")
    assert e.level == "edge" and e.canonical == "0.1 | embed->0.1.v,0.1->logits"
    assert Circuit.parse(e.canonical) == e


def test_circuit_errors():
    shape = ModelShape(12, 12)
    with pytest.raises(UsageError, match=r"component 12\.3: layer 12 is out of range, the model has layers 0\.\.11"):
        Circuit.parse("12.3").validate(shape)
    with pytest.raises(UsageError, match="cannot read component 'x1'"):
        Circuit.parse("x1")
    with pytest.raises(UsageError, match="must name its input"):
        parse_edge("0.1->1.2")
    with pytest.raises(UsageError, match="does not come before"):
        Circuit.parse("| 2.1->1.0.q").validate(shape)


def test_networkx_graph():
    g = Circuit.parse("0.1,1.2 | embed->0.1.q,embed->0.1.k,0.1->1.2.v,1.2->logits").to_networkx()
    assert isinstance(g, nx.DiGraph)
    assert set(g.nodes) == {"embed", "0.1", "1.2", "logits"}
    assert g.edges["embed", "0.1"]["inputs"] == {"q", "k"}
    assert g.nodes["1.2"] == {"kind": "head", "layer": 1, "head": 2}


def test_full_edge_count():
    shape = ModelShape(2, 2)
    # senders before layer 0 heads: embed (1); before m0: 1+2; before layer 1 heads: 4; before m1: 6; logits: 7
    assert len(all_edges(shape)) == 2 * 3 * 1 + 3 + 2 * 3 * 4 + 6 + 7


def test_bridge_leaves_the_hf_model_untouched(tokenizer):
    from discovery.model import random_gpt2, weight_hash

    model = random_gpt2(n_layers=1, n_heads=2, d_model=32, seed=9, tokenizer=tokenizer)
    keys = list(model.hf_model.state_dict())
    model.bridge  # noqa: B018 - booting the bridge must not rewrap hf_model's modules
    assert list(model.hf_model.state_dict()) == keys
    assert weight_hash(model.hf_model) == model.identity.weight_hash


def test_packaged_gpt2_tokenizer_is_the_published_one(tokenizer):
    """The copy shipped in the package (no ../shared at run time) is GPT-2's original BPE, byte for byte."""
    import hashlib

    from discovery.model import GPT2_ASSETS

    digests = {
        name: hashlib.sha256((GPT2_ASSETS / name).read_bytes()).hexdigest() for name in ("vocab.json", "merges.txt")
    }
    assert digests == {
        "vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    }
    assert tokenizer("Hello, world!").input_ids == [15496, 11, 995, 0]
    assert tokenizer(" 5").input_ids == [642]
    ids = tokenizer("The war lasted from the year 1732 to the year 17").input_ids
    assert ids[-7:] == [614, 1596, 2624, 284, 262, 614, 1596]
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256
