"""The one transformer forward: per-head weights in TransformerLens's layout plus architecture flags.

Every scorer in the project (the node-level evaluator, the edge-level forward, EAP / EAP-IG, path
patching, the recording forward) is written against the primitives here, so a new architecture is
a new set of :class:`~discovery.engine.architectures.ArchitectureFlags`, never a new forward.

Layout (TransformerLens's): ``W_Q``/``W_K``/``W_V`` [heads, d_model, d_head] (grouped K/V are
expanded to one copy per query head by ``get_bridge_params``, which keeps per-head ablation and
per-head edges well defined), ``W_O`` [heads, d_head, d_model], MLP ``W_in``/``W_gate``
[d_model, d_mlp] and ``W_out`` [d_mlp, d_model], ``W_U`` [d_model, vocab]. Nothing is folded or
centred: the forward reproduces the Hugging Face model's logits to float precision (tested for
every fast-path family).

Shapes: activations are ``[..., positions, d_model]``; per-head tensors ``[..., positions, heads,
d_head]``. Prompts of one batch share their length, so positions are ``0 .. p-1`` and a query
restricted to the last position sits at ``p - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

from discovery.engine.architectures import ArchitectureFlags, flags_for

Projection = Literal["q", "k", "v"]

FOLDED_BYTES = 1 << 27
"""Largest rotary-folded weight (per projection, all positions) :meth:`Engine.project_position_major` keeps."""

CPU_CHUNK_BYTES = 24 << 20
"""On the CPU, the widest activation of one chunk of rows is kept under this size. glibc serves
blocks above its mmap threshold (at most 32 MiB) with fresh pages, returned to the system on free
and page-faulted in again at the next allocation; smaller blocks are reused from the heap. Measured
on 2 cores: filling a fresh 368 MB tensor took 160 ms, SiLU into a fresh 184 MB one 95 ms against
22 ms in place. With this budget instead of chunks of 32,768 tokens, the node-level evaluator
scored circuits 1.2-1.6x faster on a GPT-2-small-sized Llama and 1.1-1.5x on GPT-2 small's shape
(``python bench/eval_throughput.py``, before and after on one machine)."""
ACCELERATOR_CHUNK_TOKENS = 32768
"""Tokens a chunk holds on other devices: the earlier default for every device, kept where a caching
allocator reuses memory (not measured on a GPU here)."""


@dataclass(frozen=True, eq=False)
class LayerWeights:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor | None
    W_Q: torch.Tensor  # [h, d, dh]
    W_K: torch.Tensor
    W_V: torch.Tensor
    b_Q: torch.Tensor  # [h, dh]
    b_K: torch.Tensor
    b_V: torch.Tensor
    W_O: torch.Tensor  # [h, dh, d]
    b_O: torch.Tensor  # [d]
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor | None
    W_in: torch.Tensor  # [d, d_mlp]
    b_in: torch.Tensor
    W_gate: torch.Tensor | None  # [d, d_mlp] for gated MLPs
    b_gate: torch.Tensor | None
    W_out: torch.Tensor  # [d_mlp, d]
    b_out: torch.Tensor

    def projection(self, which: Projection) -> tuple[torch.Tensor, torch.Tensor]:
        return {"q": (self.W_Q, self.b_Q), "k": (self.W_K, self.b_K), "v": (self.W_V, self.b_V)}[which]


class Engine:
    """Weights and flags of one model, and the layer primitives every scorer composes."""

    def __init__(
        self,
        flags: ArchitectureFlags,
        W_E: torch.Tensor,
        W_pos: torch.Tensor | None,
        layers: tuple[LayerWeights, ...],
        lnf_w: torch.Tensor,
        lnf_b: torch.Tensor | None,
        W_U: torch.Tensor,
        b_U: torch.Tensor | None,
        n_ctx: int,
        rotary_module: Any = None,
    ) -> None:
        self.flags = flags
        self.W_E = W_E
        self.W_pos = W_pos
        # gated MLPs: W_gate and W_in as the two halves of one [d, 2 * d_mlp] matrix (one matmul for both)
        self._gate_in: list[torch.Tensor | None] = []
        fused = []
        for w in layers:
            if w.W_gate is None:
                self._gate_in.append(None)
                fused.append(w)
                continue
            both = torch.cat((w.W_gate, w.W_in), dim=1)
            d_mlp = w.W_in.shape[1]
            self._gate_in.append(both)
            fused.append(replace(w, W_gate=both[:, :d_mlp], W_in=both[:, d_mlp:]))
        self.layers = tuple(fused)
        # the MLP biases that are not all zero (a zero bias is not added: one pass fewer, the same values)
        self._mlp_biases = [self._mlp_bias(w) for w in self.layers]
        self.lnf_w = lnf_w
        self.lnf_b = lnf_b
        self.W_U = W_U
        self.b_U = b_U
        self.n_ctx = n_ctx
        self.n_heads = int(layers[0].W_Q.shape[0])
        self.d_head = int(layers[0].W_Q.shape[2])
        self._rotary_module = rotary_module
        self._rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        self._kv_sources: dict[int, torch.Tensor] = {}
        self._folded: dict[str, tuple[tuple[int, int], torch.Tensor, torch.Tensor]] = {}
        """Per projection (q, k): the (layer, positions) of the last rotary-folded weights and biases built."""
        self.fold_rotary: bool | None = None
        """:meth:`project_position_major`'s default: fold rotary into the weights when cheaper (None), always, never."""

    # --- construction ------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def from_bridge(cls, hf_model: Any, bridge: Any) -> Engine:
        """Read the TL-layout weights off a ``TransformerBridge`` (``get_bridge_params``)."""
        from transformer_lens.model_bridge.get_params_util import get_bridge_params

        flags = flags_for(hf_model, bridge.cfg)
        params = {k: v.detach() for k, v in get_bridge_params(bridge).items()}
        off = flags.norm_weight_offset

        def norm_w(key: str) -> torch.Tensor:
            return (params[key] + off) if off else params[key]

        layers = []
        for i in range(int(bridge.cfg.n_layers)):
            p = f"blocks.{i}."
            layers.append(
                LayerWeights(
                    ln1_w=norm_w(p + "ln1.w"),
                    ln1_b=params.get(p + "ln1.b"),
                    W_Q=params[p + "attn.W_Q"].contiguous(),
                    W_K=params[p + "attn.W_K"].contiguous(),
                    W_V=params[p + "attn.W_V"].contiguous(),
                    b_Q=params[p + "attn.b_Q"].contiguous(),
                    b_K=params[p + "attn.b_K"].contiguous(),
                    b_V=params[p + "attn.b_V"].contiguous(),
                    W_O=params[p + "attn.W_O"].contiguous(),
                    b_O=params[p + "attn.b_O"],
                    ln2_w=norm_w(p + "ln2.w"),
                    ln2_b=params.get(p + "ln2.b"),
                    W_in=params[p + "mlp.W_in"].contiguous(),
                    b_in=params[p + "mlp.b_in"],
                    W_gate=params[p + "mlp.W_gate"].contiguous() if p + "mlp.W_gate" in params else None,
                    b_gate=params.get(p + "mlp.b_gate"),
                    W_out=params[p + "mlp.W_out"].contiguous(),
                    b_out=params[p + "mlp.b_out"],
                )
            )
        b_U = params.get("unembed.b_U")
        rotary = None
        if flags.positions == "rotary":
            rotary = next(
                m for m in hf_model.modules() if type(m).__name__.endswith("RotaryEmbedding") and hasattr(m, "inv_freq")
            )
        return cls(
            flags,
            W_E=params["embed.W_E"],
            W_pos=params.get("pos_embed.W_pos") if flags.positions == "learned" else None,
            layers=tuple(layers),
            lnf_w=norm_w("ln_final.w"),
            lnf_b=params.get("ln_final.b"),
            W_U=params["unembed.W_U"],
            b_U=b_U if b_U is not None and bool(b_U.abs().max() > 0) else None,
            n_ctx=int(bridge.cfg.n_ctx),
            rotary_module=rotary,
        )

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.W_E.shape[1])

    @property
    def device(self) -> torch.device:
        return self.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_E.dtype

    @property
    def parallel(self) -> bool:
        return self.flags.parallel_attn_mlp

    def tokens_per_chunk(self, positions: int) -> int:
        """How many tokens (prompts x positions) a scorer should put through one layer at once.

        On the CPU, as many as keep the widest activation of a layer (the MLP's hidden layer, both
        halves for gated MLPs, or the attention scores of ``positions``-token prompts) under
        :data:`CPU_CHUNK_BYTES`; on other devices :data:`ACCELERATOR_CHUNK_TOKENS`.
        """
        if self.device.type != "cpu":
            return ACCELERATOR_CHUNK_TOKENS
        hidden = int(self.layers[0].W_in.shape[1]) * (2 if self.flags.gated_mlp else 1)
        widest = max(hidden, self.n_heads * positions, self.d_model)
        return max(1, CPU_CHUNK_BYTES // (widest * self.dtype.itemsize))

    # --- embedding and norms --------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token (and learned position) embedding: [n, p] -> [n, p, d]."""
        x = self.W_E[ids]
        if self.flags.embedding_scale != 1.0:
            x = x * torch.tensor(self.flags.embedding_scale, dtype=x.dtype)
        if self.W_pos is not None:
            x = x + self.W_pos[: ids.shape[-1]]
        return x

    def norm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.flags.normalization == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), w, b, self.flags.norm_eps)
        # RMSNorm: the mean square from one reading of x (vector_norm), then two products
        d = x.shape[-1]
        ss = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        out = x * torch.rsqrt(ss * ss / d + self.flags.norm_eps)
        return out * w if out.requires_grad or w.requires_grad else out.mul_(w)

    def ln1(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        w = self.layers[layer]
        return self.norm(x, w.ln1_w, w.ln1_b)

    def ln2(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        w = self.layers[layer]
        return self.norm(x, w.ln2_w, w.ln2_b)

    # --- attention ------------------------------------------------------------------------------
    def _rotary_tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [length, rotary_dim], from the model's own rotary module (its scaling included)."""
        if self._rotary is None or self._rotary[0].shape[0] < length:
            size = max(length, 64)
            positions = torch.arange(size, device=self.device).unsqueeze(0)
            probe = torch.zeros(1, size, self.d_head, device=self.device, dtype=self.dtype)
            cos, sin = self._rotary_module(probe, positions)
            self._rotary = (cos[0].to(self.dtype), sin[0].to(self.dtype))
        cos, sin = self._rotary
        return cos[:length], sin[:length]

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary position embedding of q or k [..., p, h, e] at absolute ``positions`` [p]."""
        rd = self.flags.rotary_dim
        cos, sin = self._rotary_tables(int(positions.max()) + 1)
        cos, sin = cos[positions][:, None, :], sin[positions][:, None, :]  # [p, 1, rd]
        rot = x[..., :rd]
        half = rd // 2
        rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        out = rot * cos + rotated * sin
        return out if rd == x.shape[-1] else torch.cat((out, x[..., rd:]), dim=-1)

    def project(
        self,
        layer: int,
        which: Projection,
        x: torch.Tensor,
        heads: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        per_head_input: bool = False,
    ) -> torch.Tensor:
        """q, k or v of ``heads`` (all when None) from normed residuals, rotary applied to q and k.

        ``x`` is [..., p, d] (every head reads the same stream) or, with ``per_head_input``,
        [..., h, p, d] (each head reads its own stream, as at edge level). Returns [..., p, h, e].
        ``positions`` [p] are the absolute positions of ``x``'s p rows (default ``0 .. p-1``).
        """
        W, b = self.layers[layer].projection(which)
        if heads is not None:
            W, b = W[heads], b[heads]
        h, d, e = W.shape
        if per_head_input:
            out = torch.einsum("...hpd,hde->...phe", x, W) + b
        else:
            flat = x.reshape(-1, d) @ W.permute(1, 0, 2).reshape(d, h * e)
            out = flat.reshape(*x.shape[:-1], h, e) + b
        if which != "v" and self.flags.positions == "rotary":
            p = out.shape[-3]
            pos = positions if positions is not None else torch.arange(p, device=out.device)
            out = self.rotate(out, pos)
        return out

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_positions: torch.Tensor) -> torch.Tensor:
        """Causal attention: q [..., q, h, e], k and v [..., p, h, e] -> z [..., q, h, e]."""
        scores = torch.einsum("...qhe,...khe->...hqk", q, k) * self.flags.attn_scale
        p = k.shape[-3]
        causal = q_positions[:, None] >= torch.arange(p, device=q.device)[None, :]
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        return torch.einsum("...hqk,...khe->...qhe", pattern, v)

    def attention_z(
        self, layer: int, normed: torch.Tensor, heads: torch.Tensor | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """z of ``heads`` when every head reads the same normed stream [..., p, d]: [..., q, h, e]."""
        p = normed.shape[-2]
        all_pos = torch.arange(p, device=normed.device)
        q_pos = all_pos[-1:] if last_only else all_pos
        q = self.project(layer, "q", normed[..., -1:, :] if last_only else normed, heads, q_pos)
        k = self.project(layer, "k", normed, heads, all_pos)
        v = self.project(layer, "v", normed, heads, all_pos)
        return self.attend(q, k, v, q_pos)

    def kv_sources(self, layer: int) -> torch.Tensor:
        """[heads] for each query head, the first head whose K and V weights and biases equal its own.

        ``get_bridge_params`` expands grouped K/V (GQA, MQA) to one copy per query head; heads that
        share a key/value head have identical K/V weights, so their keys and values are equal and can
        be computed once (:meth:`attention_z_shared_kv`). Detected from the weights themselves, so a
        model whose expanded copies differ (or that has no grouping) maps every head to itself.
        """
        if layer not in self._kv_sources:
            w = self.layers[layer]
            sources: list[int] = []
            for h in range(self.n_heads):
                same = (
                    j
                    for j in range(h)
                    if sources[j] == j
                    and torch.equal(w.W_K[h], w.W_K[j])
                    and torch.equal(w.W_V[h], w.W_V[j])
                    and torch.equal(w.b_K[h], w.b_K[j])
                    and torch.equal(w.b_V[h], w.b_V[j])
                )
                sources.append(next(same, h))
            self._kv_sources[layer] = torch.tensor(sources, device=self.device)
        return self._kv_sources[layer]

    def attention_z_shared_kv(
        self, layer: int, normed: torch.Tensor, heads: torch.Tensor | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """:meth:`attention_z` computing K and V once per key/value head (:meth:`kv_sources`).

        The same z to float precision, by a faster route for many rows: q, k and v are computed
        position-major (``[p, rows, h, e]``, the layout whose batched matmuls need no copies, see
        :meth:`project_position_major`), the K/V projections of query heads that share a key/value
        head are computed once and indexed per query head, and the last-position-only query needs no
        causal mask. Returns [..., q, h, e] (a view: not necessarily contiguous).
        """
        if heads is None:
            heads = torch.arange(self.n_heads, device=normed.device)
        sources = self.kv_sources(layer)[heads]
        unique, per_head = torch.unique(sources, return_inverse=True)
        shared = len(unique) < len(heads)
        lead, (p, d) = normed.shape[:-2], normed.shape[-2:]
        rows = normed.reshape(-1, p, d)
        q = self.project_position_major(layer, "q", rows, heads, last_only)  # [q, m, h, e]
        k = self.project_position_major(layer, "k", rows, unique if shared else heads)  # [p, m, h|u, e]
        v = self.project_position_major(layer, "v", rows, unique if shared else heads)
        if shared:
            k, v = k[:, :, per_head], v[:, :, per_head]
        scores = torch.einsum("qmhe,kmhe->mhqk", q, k).mul_(self.flags.attn_scale)
        if not last_only:  # the last query sees every key
            causal = torch.ones(p, p, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill_(~causal, float("-inf"))
        pattern = scores.softmax(-1)
        z = torch.matmul(pattern, v.permute(1, 2, 0, 3))  # [m, h, q, e]
        return z.transpose(1, 2).reshape(*lead, q.shape[0], len(heads), self.d_head)

    def project_position_major(
        self,
        layer: int,
        which: Projection,
        rows: torch.Tensor,
        heads: torch.Tensor,
        last_only: bool = False,
        fold: bool | None = None,
    ) -> torch.Tensor:
        """q, k or v of ``heads`` from normed residuals ``rows`` [m, p, d] at positions ``0 .. p-1``: [q, m, h, e].

        The same values as :meth:`project` (to float precision), position-major: one batched matmul
        over positions, whose batches read ``rows`` in place. Rotary models fold the rotation into
        per-position weights (``W R_p``, ``b R_p``: the rotation is linear), so q and k cost one
        matmul and no elementwise pass; the folded weights of the last layer seen are kept, and are
        built only when that is cheaper than rotating this call's outputs (``fold``: force either way).
        ``last_only``: the last position only (q = 1).
        """
        m, p, d = rows.shape
        by_position = rows.transpose(0, 1)  # [p, m, d], a view
        if last_only:
            by_position = by_position[-1:]
        n_pos = by_position.shape[0]
        h, e = len(heads), self.d_head
        if which != "v" and self.flags.positions == "rotary":
            fold = self.fold_rotary if fold is None else fold
            # folding costs p * d * heads once per layer; rotating outputs p * m * h per call
            build = (m * h >= d * self.n_heads) if fold is None else fold
            folded = self._folded_weights(layer, which, p, build) if fold is not False else None
            if folded is None:  # rotate the outputs
                positions = torch.arange(p - n_pos, p, device=rows.device)
                return self.project(layer, which, rows[:, -1:] if last_only else rows, heads, positions).transpose(0, 1)
            W, b = folded
            W, b = (W[-1:], b[-1:]) if last_only else (W, b)
            if h < self.n_heads or not bool((heads == torch.arange(h, device=heads.device)).all()):
                W, b = W[:, :, heads], b[:, heads]
            out = torch.baddbmm(b.reshape(n_pos, 1, h * e), by_position, W.reshape(n_pos, d, h * e))
        else:
            W, b = self.layers[layer].projection(which)
            W = W[heads].permute(1, 0, 2).reshape(d, h * e)
            b = b[heads].reshape(h * e)
            if n_pos == 1:
                out = torch.addmm(b, by_position[0], W).unsqueeze(0)
            else:
                out = torch.baddbmm(b, by_position, W.expand(n_pos, d, h * e))
        return out.view(n_pos, m, h, e)

    def _folded_weights(
        self, layer: int, which: Projection, p: int, build: bool
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotary folded into the weights of every head at positions ``0 .. p-1``: W [p, d, h, e], b [p, h, e].

        Kept for the last (layer, p) of each projection; built when ``build`` and no larger than
        :data:`FOLDED_BYTES` (long prompts rotate outputs instead).
        """
        key = (layer, p)
        cached = self._folded.get(which)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        W, b = self.layers[layer].projection(which)
        h, d, e = W.shape
        if not build or p * d * h * e * W.element_size() > FOLDED_BYTES:
            return None
        positions = torch.arange(p, device=W.device)
        # rotate() treats its input as [..., p, h, e]: the weight rows (d) lead, the biases have none
        W_p = self.rotate(W.permute(1, 0, 2).unsqueeze(1).expand(d, p, h, e), positions).permute(1, 0, 2, 3)
        b_p = self.rotate(b.unsqueeze(0).expand(p, h, e), positions)
        self._folded[which] = (key, W_p.contiguous(), b_p.contiguous())
        return self._folded[which][1], self._folded[which][2]

    def head_outputs(self, layer: int, z: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        """Each head's write to the residual stream: z [..., p, h, e] -> [..., h, p, d] (no bias)."""
        W_O = self.layers[layer].W_O if heads is None else self.layers[layer].W_O[heads]
        return torch.einsum("...phe,hed->...hpd", z, W_O)

    def attention_output(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """The attention block's output from every head's z [..., p, h, e]: [..., p, d] (b_O included)."""
        w = self.layers[layer]
        h, e, d = w.W_O.shape
        return (z.reshape(*z.shape[:-2], h * e) @ w.W_O.reshape(h * e, d)) + w.b_O

    # --- MLP --------------------------------------------------------------------------------------
    def act(self, x: torch.Tensor) -> torch.Tensor:
        a = self.flags.activation
        if a == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        if a == "gelu":
            return F.gelu(x)
        if a == "silu":
            return F.silu(x)
        return F.relu(x)

    @staticmethod
    def _mlp_bias(w: LayerWeights) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(bias of the first matmul, gate and input halves for gated MLPs; output bias), None where all zero."""
        if w.W_gate is None:
            first: torch.Tensor | None = w.b_in
        else:
            first = torch.cat((w.b_gate if w.b_gate is not None else torch.zeros_like(w.b_in), w.b_in))
        out: torch.Tensor | None = w.b_out
        first = None if first is None or not bool(first.any()) else first
        out = None if out is None or not bool(out.any()) else out
        return first, out

    def mlp(self, layer: int, normed: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The MLP's output (bias included) from its normed input [..., d]; plus ``residual`` [..., d] if given."""
        w = self.layers[layer]
        flat = normed.reshape(-1, normed.shape[-1])
        first_bias, out_bias = self._mlp_biases[layer]
        gate_in = self._gate_in[layer]
        W_first = w.W_in if gate_in is None else gate_in
        pre = flat @ W_first if first_bias is None else torch.addmm(first_bias, flat, W_first)
        if gate_in is not None:
            d_mlp = w.W_in.shape[1]
            act = self.act(pre[:, :d_mlp])
            hidden = act * pre[:, d_mlp:] if torch.is_grad_enabled() else act.mul_(pre[:, d_mlp:])
        else:
            hidden = self.act(pre)
        if residual is not None:
            out = torch.addmm(residual.reshape(flat.shape[0], -1), hidden, w.W_out)
            if out_bias is not None:
                out = out.add_(out_bias) if not out.requires_grad else out + out_bias
        elif out_bias is not None:
            out = torch.addmm(out_bias, hidden, w.W_out)
        else:
            out = hidden @ w.W_out
        return out.reshape(normed.shape)

    def mlp_input(self, block_input: torch.Tensor, after_attention: torch.Tensor) -> torch.Tensor:
        """The residual the MLP reads: the block's input for parallel blocks, else the stream after attention."""
        return block_input if self.parallel else after_attention

    def block_with_attention(self, layer: int, x: torch.Tensor, attention_out: torch.Tensor) -> torch.Tensor:
        """The rest of block ``layer`` once its attention output is known: the residual leaving the block."""
        after = x + attention_out
        return after + self.mlp(layer, self.ln2(layer, self.mlp_input(x, after)))

    # --- readout ------------------------------------------------------------------------------------
    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        return self.norm(resid, self.lnf_w, self.lnf_b)

    def token_logits(self, normed_final: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``tokens`` (all when None) from the final-normed residual [..., d]."""
        W = self.W_U if tokens is None else self.W_U[:, tokens]
        out = normed_final @ W
        if self.b_U is not None:
            out = out + (self.b_U if tokens is None else self.b_U[tokens])
        return out

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        return self.token_logits(self.final_norm(resid))


@dataclass(frozen=True, eq=False)
class Recording:
    """Activations of an unablated forward pass."""

    z: tuple[torch.Tensor, ...]  # per layer [n, seq, heads, d_head]
    mlp_out: tuple[torch.Tensor, ...]  # per layer [n, seq, d]
    resid_final: torch.Tensor  # [n, seq, d]
    embed: torch.Tensor  # [n, seq, d] the input embedding


@torch.no_grad()
def record_forward(engine: Engine, ids: torch.Tensor) -> Recording:
    """A plain forward over ``ids`` recording each head's z and each MLP's output."""
    x = embedded = engine.embed(ids)
    zs, mlps = [], []
    for layer in range(engine.n_layers):
        z = engine.attention_z(layer, engine.ln1(layer, x))
        after = x + engine.attention_output(layer, z)
        m = engine.mlp(layer, engine.ln2(layer, engine.mlp_input(x, after)))  # block_with_attention, keeping m
        x = after + m
        zs.append(z)
        mlps.append(m)
    return Recording(tuple(zs), tuple(mlps), x, embedded)
