"""What differs between the architectures the engine runs, as declared flags.

The weights themselves come from TransformerLens (``get_bridge_params``: the bridge's TL-layout
per-head properties), so no architecture needs a weight converter here. What TransformerLens's
bridge config does not state (how many dimensions of a head are rotated, Gemma's ``1 + w`` norm
and its embedding scale) is read from the Hugging Face config in :func:`flags_for`, the one place
that knows those differences.

Architectures with a fast path are listed in :data:`FAST_PATH`; any other architecture that
TransformerLens can boot is scored through the bridge's ``hook_z`` hooks instead (correct, one
hooked forward per circuit, slow), and anything else is refused with an error naming it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from discovery.types.errors import UsageError

FAST_PATH: dict[str, str] = {
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt-neox",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "GemmaForCausalLM": "gemma",
}
"""HF model class -> the engine's name for its family. These run on the engine's own forward."""

_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
}


@dataclass(frozen=True)
class ArchitectureFlags:
    """Everything the one forward needs to know about an architecture besides its weights."""

    family: str
    """The engine's name for it: ``gpt2``, ``gpt-neox``, ``llama``, ``qwen2``, ``gemma``."""
    normalization: Literal["layernorm", "rmsnorm"]
    norm_eps: float
    norm_weight_offset: float
    """Added to every norm weight: 1.0 for Gemma, whose RMSNorm multiplies by ``1 + w``."""
    positions: Literal["learned", "rotary"]
    rotary_dim: int
    """Dimensions of each head that are rotated (partial rotary: Pythia rotates ``rotary_pct`` of them)."""
    n_kv_heads: int
    """Key/value heads (fewer than query heads: grouped-query or multi-query attention)."""
    gated_mlp: bool
    activation: Literal["gelu_tanh", "gelu", "relu", "silu"]
    parallel_attn_mlp: bool
    """GPT-NeoX / GPT-J: the MLP reads the block's input, not the residual after attention."""
    embedding_scale: float
    """Gemma multiplies token embeddings by sqrt(d_model); 1.0 elsewhere."""
    tied_unembedding: bool
    attn_scale: float
    """Multiplies q . k (1 / sqrt(d_head) for every fast-path family)."""

    def describe(self) -> str:
        """One line for the stored model identity and the CLI."""
        parts = [
            self.family,
            self.normalization + ("(1+w)" if self.norm_weight_offset else ""),
            "learned positions" if self.positions == "learned" else f"rotary({self.rotary_dim} dims)",
            f"{self.n_kv_heads} kv heads",
            ("gated " if self.gated_mlp else "") + self.activation + " MLP",
        ]
        if self.parallel_attn_mlp:
            parts.append("parallel attention+MLP")
        if self.embedding_scale != 1.0:
            parts.append(f"embedding x{self.embedding_scale:.4g}")
        parts.append("tied unembedding" if self.tied_unembedding else "untied unembedding")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def architecture_of(hf_model: Any) -> str:
    return type(hf_model).__name__


def has_fast_path(hf_model: Any) -> bool:
    """Whether the engine's own forward runs this model (else: the hooked slow path)."""
    architecture = architecture_of(hf_model)
    if architecture not in FAST_PATH:
        return False
    cfg = hf_model.config
    # GPT-2 attention variants the engine does not model: exact through the hooked path instead
    return not (
        getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(cfg, "reorder_and_upcast_attn", False)
    )


def _rotary_dim(hf_model: Any, d_head: int) -> int:
    """Rotated dimensions per head, read off the model's own rotary embedding (its inv_freq has half as many)."""
    for module in hf_model.modules():
        if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq"):
            return 2 * int(module.inv_freq.shape[-1])
    return d_head


def flags_for(hf_model: Any, bridge_cfg: Any) -> ArchitectureFlags:
    """The flags of a fast-path model, from TransformerLens's config plus what only the HF config says."""
    architecture = architecture_of(hf_model)
    family = FAST_PATH.get(architecture)
    if family is None:
        raise UsageError(f"architecture {architecture} has no fast path")
    cfg = hf_model.config
    act = _ACTIVATIONS.get(str(bridge_cfg.act_fn))
    if act is None:
        raise UsageError(f"model architecture {architecture}: activation {bridge_cfg.act_fn!r} is not supported")
    d_head = int(bridge_cfg.d_head)
    rotary = bridge_cfg.positional_embedding_type == "rotary"
    n_kv = int(getattr(bridge_cfg, "n_key_value_heads", None) or bridge_cfg.n_heads)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    return ArchitectureFlags(
        family=family,
        normalization="rmsnorm" if str(bridge_cfg.normalization_type).startswith("RMS") else "layernorm",
        norm_eps=float(bridge_cfg.eps),
        norm_weight_offset=1.0 if family == "gemma" else 0.0,
        positions="rotary" if rotary else "learned",
        rotary_dim=_rotary_dim(hf_model, d_head) if rotary else 0,
        n_kv_heads=n_kv,
        gated_mlp=bool(bridge_cfg.gated_mlp),
        activation=act,  # type: ignore[arg-type]
        # GPT-NeoX configs say it themselves (use_parallel_residual); the bridge assumes it for the family
        parallel_attn_mlp=bool(getattr(cfg, "use_parallel_residual", bridge_cfg.parallel_attn_mlp)),
        embedding_scale=math.sqrt(int(bridge_cfg.d_model)) if family == "gemma" else 1.0,
        tied_unembedding=tied,
        attn_scale=1.0 / math.sqrt(d_head),
    )
