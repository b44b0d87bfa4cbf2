"""The literal edge-level reference: one straightforward float64 forward of a GPT-2 per call, every
receiver input summed sender by sender from HF's own modules (not :mod:`discovery.engine`).

Shared by the edge-forward, engine and ACDC tests (a helper module, not a test module, so no test
module imports another).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from discovery.types.circuit import Circuit
from tests import reference_impl as ref


class Literal:
    """One straightforward forward per call, every receiver input summed sender by sender (float64)."""

    def __init__(self, model, dataset, kind: str = "mean", ablate_mlps: bool = False, ablate_embed: bool = False):
        self.hf = model.hf_model
        self.cfg = self.hf.config
        self.ds = dataset
        self.kind = kind
        self.ablate_mlps = ablate_mlps
        self.ablate_embed = ablate_embed
        self.n_layers, self.n_heads, self.dh = self._sizes()
        source = self.run(dataset.corrupt_ids, lambda name: 1.0, {}, rep=None)[1]
        if kind == "mean":
            self.rep = {s: o.mean(0, keepdim=True) for s, o in source.items()}
        elif kind == "resample":
            self.rep = source
        else:
            self.rep = {s: torch.zeros_like(o[:1]) for s, o in source.items()}

    def _sizes(self) -> tuple[int, int, int]:
        return self.cfg.n_layer, self.cfg.n_head, self.cfg.n_embd // self.cfg.n_head

    def ablatable(self, sender: str) -> bool:
        return not sender.startswith("m") or self.ablate_mlps

    def start(self, embed, name: str, mask, rep) -> torch.Tensor:
        """The embedding a receiver reads: the clean one, or with ``ablate_embed`` its edge's mix."""
        if rep is None or not self.ablate_embed:
            return embed
        return rep["embed"] + mask(f"embed->{name}") * (embed - rep["embed"])

    def p(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().double()

    def ln(self, x: torch.Tensor, mod) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.p(mod.weight), self.p(mod.bias), self.cfg.layer_norm_epsilon)

    def embedding(self, ids):
        tr = self.hf.transformer
        return self.p(tr.wte.weight)[ids] + self.p(tr.wpe.weight)[: ids.shape[1]]

    def run(self, ids, mask, perturb, rep, embed=None):
        """(last-position logits [n, vocab], every sender's output in this run)."""
        tr = self.hf.transformer
        p_len = ids.shape[1]
        embed = self.embedding(ids) if embed is None else embed
        outputs: dict[str, torch.Tensor] = {"embed": embed}
        order: list[str] = []
        biases = torch.zeros_like(embed)

        def receive(name: str) -> torch.Tensor:
            x = self.start(embed, name, mask, rep) + biases
            for s in order:
                if rep is not None and self.ablatable(s):
                    x = x + rep[s] + mask(f"{s}->{name}") * (outputs[s] - rep[s])
                else:
                    x = x + outputs[s]
            return x + perturb.get(name, 0.0)

        causal = torch.ones(p_len, p_len, dtype=torch.bool).tril()
        for layer, block in enumerate(tr.h):
            W, b = self.p(block.attn.c_attn.weight), self.p(block.attn.c_attn.bias)
            W_O = self.p(block.attn.c_proj.weight)
            d, dh = self.cfg.n_embd, self.dh
            new = {}
            for h in range(self.n_heads):
                qkv = []
                for i, inp in enumerate("qkv"):
                    cols = slice(i * d + h * dh, i * d + (h + 1) * dh)
                    qkv.append(self.ln(receive(f"{layer}.{h}.{inp}"), block.ln_1) @ W[:, cols] + b[cols])
                q, k, v = qkv
                scores = (q @ k.transpose(-1, -2)) / dh**0.5
                z = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
                new[f"{layer}.{h}"] = z @ W_O[h * dh : (h + 1) * dh]
            outputs.update(new)
            order.extend(new)
            biases = biases + self.p(block.attn.c_proj.bias)
            x = self.ln(receive(f"m{layer}"), block.ln_2)
            hidden = F.gelu(x @ self.p(block.mlp.c_fc.weight) + self.p(block.mlp.c_fc.bias), approximate="tanh")
            outputs[f"m{layer}"] = hidden @ self.p(block.mlp.c_proj.weight) + self.p(block.mlp.c_proj.bias)
            order.append(f"m{layer}")
        final = self.ln(receive("logits"), tr.ln_f)[:, -1]
        return final @ self.p(self.hf.lm_head.weight).T, outputs

    def metric(self, mask=lambda name: 1.0, perturb=None, embed=None) -> float:
        logits, _ = self.run(self.ds.clean_ids, mask, perturb or {}, self.rep, embed)
        return ref.metric(self.ds, logits)

    def circuit_metric(self, circuit: Circuit) -> float:
        kept = {e.name for e in circuit.edges}
        return self.metric(lambda name: 1.0 if name in kept else 0.0)
