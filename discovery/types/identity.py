"""Which model a score was computed on: its spec, architecture, shape and weights' digest (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

from discovery.types.circuit import ModelShape


@dataclass(frozen=True)
class ModelIdentity:
    """What a score's model is: the spec it was loaded by, its architecture, and its weights' digest."""

    name: str
    architecture: str
    weight_hash: str
    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    vocab_size: int
    flags: str = ""
    """The engine's architecture flags in words (``ArchitectureFlags.describe``), or the slow path's notice."""
    parallel_attn_mlp: bool = False

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.n_layers, self.n_heads, self.parallel_attn_mlp)
