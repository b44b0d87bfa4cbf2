"""The slow path: node-level ablation through TransformerLens hooks, for any architecture it boots.

Architectures without the engine's fast path (:data:`discovery.engine.FAST_PATH`) are still
scored exactly: one hooked forward of the ``TransformerBridge`` per circuit, replacing each
ablated head's ``hook_z`` (and, with ``ablate_mlps``, each ablated MLP's ``hook_mlp_out``) by its
mean / resampled / zero value over the source prompts — what a notebook does by hand. It is
correct and slow; the model loader says so in one line when it picks this path.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from discovery.scoring.metrics import LOGITS, per_prompt_metric
from discovery.tasks.base import Dataset

if TYPE_CHECKING:
    from discovery.model import LoadedModel
    from discovery.types.evaluation import Ablation


def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def mlp_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


class HookedScorer:
    """Metric values of node-level circuits, one hooked bridge forward each."""

    def __init__(self, model: LoadedModel, dataset: Dataset, ablation: Ablation) -> None:
        """``ablation``: its kind (mean / resample / zero) and source (the prompts replacements come from);
        which MLPs are replaced is the masks' to say (:meth:`metric`)."""
        self.model = model
        self.dataset = dataset
        self.ablation = ablation
        self.n_layers = model.shape.n_layers

    @cached_property
    def replacements(self) -> dict[str, torch.Tensor]:
        """Per hook name, the replacement activation: [1 or n, seq, ...]."""
        ds = self.dataset
        ids = ds.corrupt_ids if self.ablation.source == "corrupt" else ds.clean_ids
        names = {z_hook(layer) for layer in range(self.n_layers)} | {mlp_hook(layer) for layer in range(self.n_layers)}
        with torch.no_grad():
            _, cache = self.model.bridge.run_with_cache(ids, names_filter=lambda name: name in names)
        out = {}
        for name in names:
            act = cache[name].detach().clone()
            if self.ablation.kind == "mean":
                act = act.mean(0, keepdim=True)
            elif self.ablation.kind == "zero":
                act = torch.zeros_like(act[:1])
            out[name] = act
        return out

    @torch.no_grad()
    def metric(self, head_mask: np.ndarray, mlp_mask: np.ndarray) -> float:
        """The mean metric with heads ``head_mask`` [1, layers, heads] and MLPs ``mlp_mask`` [1, layers] kept."""
        rep = self.replacements
        hooks: list[tuple[str, Any]] = []
        for layer in range(self.n_layers):
            ablated = torch.from_numpy(~head_mask[0, layer]).to(self.model.device)
            if bool(ablated.any()):

                def patch_z(z: torch.Tensor, hook: Any, name: str = z_hook(layer), drop: torch.Tensor = ablated) -> Any:
                    return torch.where(drop[None, None, :, None], rep[name].expand_as(z), z)

                hooks.append((z_hook(layer), patch_z))
            if not mlp_mask[0, layer]:

                def patch_mlp(out: torch.Tensor, hook: Any, name: str = mlp_hook(layer)) -> Any:
                    return rep[name].expand_as(out).clone()

                hooks.append((mlp_hook(layer), patch_mlp))
        logits = self.model.bridge.run_with_hooks(self.dataset.clean_ids, fwd_hooks=hooks)[:, -1]
        return float(
            per_prompt_metric(LOGITS, self.dataset, logits, self.dataset.metric, task_metrics_only=True).mean()
        )
