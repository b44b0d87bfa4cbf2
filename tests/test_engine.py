"""The one engine against Hugging Face and TransformerLens, for every fast-path architecture.

For each family, on a tiny random model built in-process (every weight, norm and bias perturbed so
that none sits at its trivial initial value): the engine's logits equal the HF model's; node-level
mean / resample / zero scores equal the TransformerLens-hooked reference (one ``run_with_hooks``
per circuit on ``hook_z``); path patching to the logits equals the literal two-run algorithm.
Edge-level scores and EAP are checked against a literal per-edge loop for a rotary + gated + GQA
family (Llama, and Qwen2 with its q/k/v biases) here, and for GPT-2 in ``test_edge_forward``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from discovery.engine import FAST_PATH, record_forward
from discovery.model import RANDOM_ARCHITECTURES, load_model, wrap_model
from discovery.model.random import _random_config
from discovery.scoring.edge_forward import edge_attribution, graph_of
from discovery.scoring.evaluator import Evaluator
from discovery.scoring.patching import path_patching
from discovery.search.base import run_search
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit, parse_edge
from discovery.types.errors import UsageError
from discovery.types.evaluation import Ablation
from tests import reference_impl as ref
from tests.edge_reference import Literal
from tests.random_inputs import VARIANTS, perturbed_model, random_circuits, random_edge_circuits, sample_edges


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tokenizer):
    architecture, overrides = VARIANTS[request.param]
    return request.param, perturbed_model(architecture, tokenizer, seed=3, **overrides)


def test_every_random_architecture_is_on_the_fast_path(tokenizer):
    assert set(VARIANTS[v][0] for v in VARIANTS) == set(RANDOM_ARCHITECTURES) == set(FAST_PATH.values())


def test_engine_logits_equal_hugging_face(variant, tokenizer):
    name, model = variant
    ids = torch.randint(0, len(tokenizer), (3, 11), generator=torch.Generator().manual_seed(1))
    engine = model.engine
    ours = engine.logits(record_forward(engine, ids).resid_final)
    with torch.no_grad():
        theirs = model.hf_model(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (name, float((ours - theirs).abs().max()))
    assert model.identity.flags == engine.flags.describe()
    assert model.identity.architecture == type(model.hf_model).__name__


@pytest.mark.parametrize("kind", ["mean", "resample", "zero"])
def test_node_scores_equal_hooked_reference(variant, tokenizer, kind):
    name, model = variant
    ds = build_dataset(get_task("digits"), tokenizer, n=6, seed=2)
    for ablate_mlps in (False, True):
        ev = Evaluator(model, ds, Ablation(kind=kind, ablate_mlps=ablate_mlps), max_tokens_per_chunk=300)
        circuits = random_circuits(model.shape, 6, seed=5, with_mlps=ablate_mlps)
        for circuit, score in zip(circuits, ev.evaluate(circuits)):
            expected = ref.ablated_metric(model, ds, circuit, kind=kind, ablate_mlps=ablate_mlps)
            assert score.metric == pytest.approx(expected, abs=1e-4), (name, ablate_mlps, circuit.canonical)


def test_position_major_projections_equal_project(variant):
    """q, k, v by one matmul per position (rotary folded into the weights, or the outputs rotated) = project."""
    name, model = variant
    engine = model.engine
    rows = engine.ln1(1, torch.randn(6, 7, engine.d_model, generator=torch.Generator().manual_seed(0)))
    for which in ("q", "k", "v"):
        for heads in (torch.arange(engine.n_heads), torch.tensor([2, 0]), torch.tensor([3])):
            for last_only in (False, True):
                expected = engine.project(1, which, rows, heads).transpose(0, 1)  # [p, rows, h, e]
                expected = expected[-1:] if last_only else expected
                for fold in (True, False):
                    ours = engine.project_position_major(1, which, rows, heads, last_only, fold=fold)
                    assert ours.shape == expected.shape
                    assert torch.allclose(ours, expected, atol=1e-5), (name, which, heads, last_only, fold)


def test_node_scores_with_rotary_folded_equal_unfolded(variant, tokenizer):
    """Batched node scores with q/k rotary folded into the weights (big batches) = rotating the outputs."""
    name, model = variant
    ds = build_dataset(get_task("digits"), tokenizer, n=6, seed=2)
    circuits = random_circuits(model.shape, 40, seed=7, with_mlps=False)
    values = {}
    try:
        for fold in (True, False):
            model.engine.fold_rotary = fold
            values[fold] = Evaluator(model, ds, max_tokens_per_chunk=400).metric_values(circuits)
    finally:
        model.engine.fold_rotary = None
    np.testing.assert_allclose(values[True], values[False], atol=1e-5, rtol=0)


def test_path_patching_to_logits_equals_literal(variant, tokenizer):
    name, model = variant
    ds = build_dataset(get_task("digits"), tokenizer, n=5, seed=4)
    result = path_patching(model, ds, "logits")
    for sender in [(0, 1), (1, 2), (2, 3)]:
        expected = ref.path_patching_effect(model, ds, sender, None)
        assert result.effects[sender] == pytest.approx(expected, abs=1e-4), (name, sender)


def test_parallel_blocks_have_no_head_to_mlp_edge_in_a_layer(tokenizer):
    model = perturbed_model("gpt-neox", tokenizer)
    assert model.shape.parallel_attn_mlp
    with pytest.raises(UsageError, match="parallel blocks"):
        Circuit.from_edges([parse_edge("0.1->m0")]).validate(model.shape)
    Circuit.from_edges([parse_edge("0.1->m1")]).validate(model.shape)
    assert all(not (e.sender.layer == e.receiver.layer and e.receiver.kind == "mlp") for e in graph_of_model(model))


def graph_of_model(model):
    ds = build_dataset(get_task("digits"), model.tokenizer, n=2, seed=0)
    return graph_of(Evaluator(model, ds, Ablation(ablate_mlps=True))).edges


# --- edge level on a rotary + gated + GQA architecture ---------------------------------------------


class LlamaLiteral(Literal):
    """The per-edge literal loop for Llama-family HF modules (q/k/v/o projections, RMSNorm, rotary
    through HF's own ``apply_rotary_pos_emb``, grouped K/V, gated MLP), in float64."""

    def __init__(self, model, dataset, kind: str = "mean", ablate_mlps: bool = False, ablate_embed: bool = False):
        cfg = model.hf_model.config
        self.n_kv = cfg.num_key_value_heads
        self.eps = cfg.rms_norm_eps
        super().__init__(model, dataset, kind, ablate_mlps, ablate_embed)

    def _sizes(self):
        cfg = self.hf.config
        return cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads

    def rms(self, x, module):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.p(module.weight)

    def embedding(self, ids):
        return self.p(self.hf.model.embed_tokens.weight)[ids]

    def run(self, ids, mask, perturb, rep, embed=None):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        inner = self.hf.model
        p_len = ids.shape[1]
        embed = self.embedding(ids) if embed is None else embed
        cos, sin = inner.rotary_emb(embed.float(), torch.arange(p_len).unsqueeze(0))
        cos, sin = cos.double(), sin.double()
        outputs: dict[str, torch.Tensor] = {"embed": embed}
        order: list[str] = []

        def receive(name):
            x = self.start(embed, name, mask, rep)
            for s in order:
                if rep is not None and self.ablatable(s):
                    x = x + rep[s] + mask(f"{s}->{name}") * (outputs[s] - rep[s])
                else:
                    x = x + outputs[s]
            return x + perturb.get(name, 0.0)

        def proj(linear, x, rows):
            out = x @ self.p(linear.weight)[rows].T
            return out + self.p(linear.bias)[rows] if linear.bias is not None else out

        causal = torch.ones(p_len, p_len, dtype=torch.bool).tril()
        group = self.n_heads // self.n_kv
        for layer, block in enumerate(inner.layers):
            attn, dh = block.self_attn, self.dh
            new = {}
            for h in range(self.n_heads):
                kvh = h // group
                q = proj(
                    attn.q_proj, self.rms(receive(f"{layer}.{h}.q"), block.input_layernorm), slice(h * dh, (h + 1) * dh)
                )
                k = proj(
                    attn.k_proj,
                    self.rms(receive(f"{layer}.{h}.k"), block.input_layernorm),
                    slice(kvh * dh, (kvh + 1) * dh),
                )
                v = proj(
                    attn.v_proj,
                    self.rms(receive(f"{layer}.{h}.v"), block.input_layernorm),
                    slice(kvh * dh, (kvh + 1) * dh),
                )
                q, k = apply_rotary_pos_emb(q.unsqueeze(1), k.unsqueeze(1), cos, sin)
                scores = (q[:, 0] @ k[:, 0].transpose(-1, -2)) / dh**0.5
                z = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
                new[f"{layer}.{h}"] = z @ self.p(attn.o_proj.weight)[:, h * dh : (h + 1) * dh].T
            outputs.update(new)
            order.extend(new)
            x = self.rms(receive(f"m{layer}"), block.post_attention_layernorm)
            gate = x @ self.p(block.mlp.gate_proj.weight).T
            up = x @ self.p(block.mlp.up_proj.weight).T
            outputs[f"m{layer}"] = (F.silu(gate) * up) @ self.p(block.mlp.down_proj.weight).T
            order.append(f"m{layer}")
        final = self.rms(receive("logits"), inner.norm)[:, -1]
        return final @ self.p(self.hf.lm_head.weight).T, outputs


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def rotary_gqa_model(request, tokenizer):
    architecture, overrides = VARIANTS[request.param]
    return perturbed_model(architecture, tokenizer, seed=7, n_layers=2, **overrides)


@pytest.mark.parametrize("kind", ["mean", "resample"])
@pytest.mark.parametrize(("ablate_mlps", "ablate_embed"), [(False, False), (True, False), (True, True)])
def test_rotary_gqa_edge_circuits_equal_literal(rotary_gqa_model, tokenizer, kind, ablate_mlps, ablate_embed):
    model = rotary_gqa_model
    ds = build_dataset(get_task("digits"), tokenizer, n=4, seed=2)
    ev = Evaluator(model, ds, Ablation(kind=kind, ablate_mlps=ablate_mlps, ablate_embed=ablate_embed))
    lit = LlamaLiteral(model, ds, kind, ablate_mlps, ablate_embed)
    circuits = random_edge_circuits(model.shape, 4, seed=11)
    for c, s in zip(circuits, ev.evaluate(circuits)):
        assert s.metric == pytest.approx(lit.circuit_metric(c), abs=1e-4)


def test_rotary_gqa_eap_equals_finite_differences(rotary_gqa_model, tokenizer):
    model = rotary_gqa_model
    ds = build_dataset(get_task("digits"), tokenizer, n=4, seed=4)
    ev = Evaluator(model, ds, Ablation(kind="mean", ablate_mlps=True, ablate_embed=True))
    lit = LlamaLiteral(model, ds, "mean", True, True)
    edges, scores = edge_attribution(ev, steps=1)
    eps = 1e-4
    for i in sample_edges(ev, 8, seed=5):
        name = edges[i].name
        plus = lit.metric(lambda n, name=name: 1.0 - eps if n == name else 1.0)
        minus = lit.metric(lambda n, name=name: 1.0 + eps if n == name else 1.0)
        assert scores[i] == pytest.approx((plus - minus) / (2 * eps), abs=2e-6, rel=1e-3), name


# --- a planted circuit found on a non-GPT-2 architecture ---------------------------------------------

PLANTED = ("0.1", "1.2", "2.3")


def test_planted_circuit_recovered_on_llama(tokenizer):
    """Only three heads write anything (the others' o_proj columns are zero): greedy, exhaustive and
    EAP find exactly them on a rotary, gated, grouped-query model."""
    from transformers import AutoModelForCausalLM

    config = _random_config("llama", 3, 4, 64, 64, len(tokenizer))
    torch.manual_seed(9)
    hf = AutoModelForCausalLM.from_config(config).eval()
    dh = 16
    with torch.no_grad():
        for layer, block in enumerate(hf.model.layers):
            for h in range(4):
                cols = slice(h * dh, (h + 1) * dh)
                if f"{layer}.{h}" in PLANTED:
                    block.self_attn.o_proj.weight[:, cols] *= 8.0
                else:
                    block.self_attn.o_proj.weight[:, cols] = 0.0
    model = wrap_model(hf, tokenizer, name="planted-llama")
    ds = build_dataset(get_task("digits"), tokenizer, n=10, seed=0)
    ev = Evaluator(model, ds, Ablation(kind="zero"))
    assert ev.evaluate_one(Circuit.parse(",".join(PLANTED))).normalised == pytest.approx(1.0, abs=1e-5)
    greedy = run_search("greedy", ev, {"target": 0.999})
    assert {n.name for n in greedy.circuit.nodes} == set(PLANTED)
    exhaustive = run_search("exhaustive", ev, {"k": 3, "stop_at_target": True, "target": 0.999})
    assert {n.name for n in exhaustive.circuit.nodes} == set(PLANTED)
    eap = run_search("eap", ev, {"top_n": 10})
    # heads that write nothing have zero attribution on every edge; the planted ones do not
    nonzero = {name.split("->")[0] for name, score in eap.extra["edge_scores"] if abs(score) > 1e-9}
    assert nonzero == set(PLANTED)
    assert {e.sender.name for e in eap.circuit.edges} <= set(PLANTED)


# --- the slow path and refused architectures ------------------------------------------------------------


def test_other_architectures_take_the_hooked_slow_path(tokenizer, caplog):
    """Gemma-2 (soft-capping, extra norms) is not on the fast path: scored through hook_z, exactly."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    config = Gemma2Config(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
        intermediate_size=128, head_dim=16, vocab_size=len(tokenizer),
    )  # fmt: skip
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config).eval()
    with caplog.at_level(logging.WARNING, logger="discovery"):
        model = wrap_model(hf, tokenizer, name="tiny-gemma2")
    assert any("no fast path" in r.getMessage() for r in caplog.records)
    assert not model.fast_path and "slow path" in model.identity.flags
    ds = build_dataset(get_task("digits"), tokenizer, n=4, seed=1)
    ev = Evaluator(model, ds, Ablation(kind="mean", ablate_mlps=True))
    circuits = random_circuits(model.shape, 3, seed=2, with_mlps=True)
    for circuit, score in zip(circuits, ev.evaluate(circuits)):
        assert score.metric == pytest.approx(ref.ablated_metric(model, ds, circuit, ablate_mlps=True), abs=1e-4)
    with pytest.raises(UsageError, match="slow path"):
        ev.evaluate([Circuit.from_edges([parse_edge("0.1->logits")])])


def test_unknown_architecture_is_refused_naming_it(tokenizer, tmp_path):
    from transformers import CTRLConfig, CTRLLMHeadModel

    hf = CTRLLMHeadModel(CTRLConfig(n_layer=1, n_embd=32, n_head=2, dff=64, vocab_size=len(tokenizer)))
    with pytest.raises(UsageError, match="CTRLLMHeadModel, which neither the engine nor TransformerLens supports") as e:
        wrap_model(hf, tokenizer)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.slow  # over 20 s on the loaded 2-core machine (quick-tier durations, tests/conftest.py)
@pytest.mark.parametrize("architecture", ["gpt-neox", "llama", "qwen2"])
def test_cli_evaluates_a_saved_directory(architecture, tokenizer, tmp_path):
    """Months, not digits: a saved Qwen2 directory loads Qwen2's tokenizer class, which splits digits."""
    import subprocess
    import sys

    model = perturbed_model(architecture, tokenizer, seed=1, n_layers=2)
    model.hf_model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.identity.weight_hash == model.identity.weight_hash
    assert loaded.identity.flags == model.identity.flags
    out = subprocess.run(
        [sys.executable, "-m", "discovery.cli", "evaluate", "--model", str(tmp_path / "m"), "--task", "months",
         "--n", "6", "-c", "0.1,1.2"],
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "CIRCUITS_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    ds = build_dataset(get_task("months"), loaded.tokenizer, n=6, seed=0)
    expected = Evaluator(loaded, ds).evaluate_one(Circuit.parse("0.1,1.2")).metric
    assert f"{expected:.4f}" in out.stdout
