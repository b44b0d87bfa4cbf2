"""Straightforward reference implementations the fast code is checked against.

Everything here goes through TransformerLens hooks on the ``TransformerBridge``, one forward per
circuit, exactly as a notebook would: slow and obviously correct.
"""

from __future__ import annotations

import torch

from discovery.model import LoadedModel
from discovery.tasks.base import Dataset
from discovery.types.circuit import Circuit


def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def mlp_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


@torch.no_grad()
def source_activations(model: LoadedModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    bridge = model.bridge
    names = [z_hook(l) for l in range(model.shape.n_layers)] + [mlp_hook(l) for l in range(model.shape.n_layers)]
    _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name in names)
    return {name: cache[name].clone() for name in names}


@torch.no_grad()
def last_logits(model: LoadedModel, ids: torch.Tensor, hooks: list) -> torch.Tensor:
    logits = model.bridge.run_with_hooks(ids, fwd_hooks=hooks)
    return logits[:, -1]


def metric(dataset: Dataset, last: torch.Tensor) -> float:
    """The task's metric from full last-position logits, computed the long way."""
    per_prompt = []
    for i in range(dataset.n):
        w = dataset.answer_weights[i]
        toks = dataset.answer_tokens
        if dataset.metric == "logit_diff":
            per_prompt.append(float((last[i, toks] * w).sum()))
        else:
            probs = last[i].softmax(-1)
            per_prompt.append(float((probs[toks] * w).sum()))
    return sum(per_prompt) / len(per_prompt)


def ablated_metric(
    model: LoadedModel,
    dataset: Dataset,
    circuit: Circuit,
    kind: str = "mean",
    source: str = "corrupt",
    ablate_mlps: bool = False,
) -> float:
    """Node-level ablation of everything outside ``circuit`` through hooks, one forward."""
    src_ids = dataset.corrupt_ids if source == "corrupt" else dataset.clean_ids
    acts = source_activations(model, src_ids)
    kept_heads = {(n.layer, n.head) for n in circuit.nodes if n.kind == "head"}
    kept_mlps = {n.layer for n in circuit.nodes if n.kind == "mlp"}

    def replacement(name: str) -> torch.Tensor:
        a = acts[name]
        if kind == "mean":
            return a.mean(0, keepdim=True)
        if kind == "resample":
            return a
        return torch.zeros_like(a[:1])

    hooks = []
    for layer in range(model.shape.n_layers):
        rep = replacement(z_hook(layer))

        def patch_z(z, hook, layer=layer, rep=rep):
            z = z.clone()
            for h in range(model.shape.n_heads):
                if (layer, h) not in kept_heads:
                    z[:, :, h] = rep[:, :, h].expand_as(z[:, :, h])
            return z

        hooks.append((z_hook(layer), patch_z))
        if ablate_mlps and layer not in kept_mlps:
            mrep = replacement(mlp_hook(layer))
            hooks.append((mlp_hook(layer), lambda out, hook, mrep=mrep: mrep.expand_as(out).clone()))
    return metric(dataset, last_logits(model, dataset.clean_ids, hooks))


@torch.no_grad()
def path_patching_effect(
    model: LoadedModel, dataset: Dataset, sender: tuple[int, int], receiver: list[tuple[int, int, str]] | None
) -> float:
    """Path patching for one sender, literally: freeze every head's z to clean except the sender's
    (corrupted), read the receiver's q/k/v there, then patch them into a clean run."""
    n_layers = model.shape.n_layers
    clean = source_activations(model, dataset.clean_ids)
    corrupt = source_activations(model, dataset.corrupt_ids)
    clean_logits = last_logits(model, dataset.clean_ids, [])
    clean_metric = metric(dataset, clean_logits)

    def freeze(z, hook, layer):
        out = clean[z_hook(layer)].clone()
        if layer == sender[0]:
            out[:, :, sender[1]] = corrupt[z_hook(layer)][:, :, sender[1]]
        return out

    freeze_hooks = [(z_hook(l), lambda z, hook, l=l: freeze(z, hook, l)) for l in range(n_layers)]
    if receiver is None:
        return metric(dataset, last_logits(model, dataset.clean_ids, freeze_hooks)) - clean_metric
    names = {f"blocks.{l}.attn.hook_{inp}" for l, _, inp in receiver}
    captured: dict[str, torch.Tensor] = {}

    def capture(act, hook, name):
        captured[name] = act.clone()  # keyed by the alias asked for: hook.name is the canonical name
        return act

    model.bridge.run_with_hooks(
        dataset.clean_ids, fwd_hooks=freeze_hooks + [(n, lambda act, hook, n=n: capture(act, hook, n)) for n in names]
    )
    patch_hooks = []
    for layer, head, inp in receiver:
        name = f"blocks.{layer}.attn.hook_{inp}"

        def patch(act, hook, name=name, head=head):
            act = act.clone()
            act[:, :, head] = captured[name][:, :, head]
            return act

        patch_hooks.append((name, patch))
    return metric(dataset, last_logits(model, dataset.clean_ids, patch_hooks)) - clean_metric
