"""GPT-2 weights rearranged per head, for the evaluator's own forward pass.

HF's GPT-2 keeps Q/K/V in one ``Conv1D`` (``c_attn``: [d_model, 3 * d_model]); ablation works per
head, so each layer's projections are split into [n_heads, d_model, d_head] (and W_O into
[n_heads, d_head, d_model]) once, at load time. Nothing is folded (no LayerNorm folding, no
centring): the forward reproduces HF's logits to float precision, which the tests check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True, eq=False)
class LayerWeights:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    W_Q: torch.Tensor  # [h, d, dh]
    W_K: torch.Tensor
    W_V: torch.Tensor
    b_Q: torch.Tensor  # [h, dh]
    b_K: torch.Tensor
    b_V: torch.Tensor
    W_O: torch.Tensor  # [h, dh, d]
    b_O: torch.Tensor  # [d]
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    W_in: torch.Tensor  # [d, d_mlp]
    b_in: torch.Tensor
    W_out: torch.Tensor  # [d_mlp, d]
    b_out: torch.Tensor


@dataclass(frozen=True, eq=False)
class GPT2Weights:
    W_E: torch.Tensor  # [vocab, d]
    W_pos: torch.Tensor  # [n_ctx, d]
    layers: tuple[LayerWeights, ...]
    lnf_w: torch.Tensor
    lnf_b: torch.Tensor
    W_U: torch.Tensor  # [d, vocab]
    n_heads: int
    d_head: int
    ln_eps: float
    activation: str

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @classmethod
    @torch.no_grad()
    def from_hf(cls, hf_model: Any) -> GPT2Weights:
        cfg = hf_model.config
        tr = hf_model.transformer
        d, h = cfg.n_embd, cfg.n_head
        dh = d // h
        layers = []
        for block in tr.h:
            w_qkv = block.attn.c_attn.weight  # [d, 3d]
            b_qkv = block.attn.c_attn.bias
            wq, wk, wv = (
                w_qkv[:, i * d : (i + 1) * d].reshape(d, h, dh).permute(1, 0, 2).contiguous() for i in range(3)
            )
            bq, bk, bv = (b_qkv[i * d : (i + 1) * d].reshape(h, dh).contiguous() for i in range(3))
            layers.append(
                LayerWeights(
                    block.ln_1.weight,
                    block.ln_1.bias,
                    wq,
                    wk,
                    wv,
                    bq,
                    bk,
                    bv,
                    block.attn.c_proj.weight.reshape(h, dh, d).contiguous(),
                    block.attn.c_proj.bias,
                    block.ln_2.weight,
                    block.ln_2.bias,
                    block.mlp.c_fc.weight,
                    block.mlp.c_fc.bias,
                    block.mlp.c_proj.weight,
                    block.mlp.c_proj.bias,
                )
            )
        return cls(
            tr.wte.weight,
            tr.wpe.weight,
            tuple(layers),
            tr.ln_f.weight,
            tr.ln_f.bias,
            hf_model.lm_head.weight.T,
            h,
            dh,
            cfg.layer_norm_epsilon,
            cfg.activation_function,
        )

    def layer_norm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), w, b, self.ln_eps)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation in ("gelu_new", "gelu_pytorch_tanh"):
            return F.gelu(x, approximate="tanh")
        if self.activation == "gelu":
            return F.gelu(x)
        return F.relu(x)

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP's output (bias included) from the residual stream ``x`` [..., d]."""
        w = self.layers[layer]
        hidden = self.act(torch.addmm(w.b_in, x.reshape(-1, x.shape[-1]), w.W_in))
        return torch.addmm(w.b_out, hidden, w.W_out).reshape(x.shape)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token plus position embedding: [n, seq] -> [n, seq, d]."""
        return self.W_E[ids] + self.W_pos[: ids.shape[-1]]

    @property
    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.d_head)
