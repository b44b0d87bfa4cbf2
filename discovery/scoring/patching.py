"""Path patching (Wang et al. 2022): how much each sender head matters along its paths to a receiver.

For each sender head ``s`` and a receiver (the logits, or some heads' q/k/v inputs):

1. Run the clean prompts with every head frozen to its clean output except ``s``, which takes its
   output on the corrupted twin prompt; MLPs recompute. The receiver's input now carries only the
   sender's effect along paths ``s -> (MLPs) -> receiver``.
2. For a head receiver, run the clean prompts again with only the receiver heads' chosen inputs
   taken from step 1 (everything else recomputes); for the logits, step 1's output is used directly.
3. The effect is the metric of that run minus the clean metric (negative: the sender's path
   carries the behaviour).

Heads that cannot send to the receiver (in or after its layer) get NaN. All senders are computed
in one batch per layer: step 1 needs no attention at all (every head is frozen), only the MLPs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from discovery.engine import Engine, record_forward
from discovery.model import LoadedModel
from discovery.scoring.metrics import per_prompt_metric
from discovery.tasks.base import Dataset
from discovery.types.circuit import HEAD_INPUTS, ModelShape
from discovery.types.errors import UsageError
from discovery.types.progress import ProgressCallback, no_progress

ReceiverInput = Literal["q", "k", "v"]
ReceiverHead = tuple[int, int, ReceiverInput]


@dataclass(frozen=True)
class Receiver:
    """The logits, or a set of head inputs ``(layer, head, input)``."""

    heads: tuple[ReceiverHead, ...] = ()

    @property
    def is_logits(self) -> bool:
        return not self.heads

    @property
    def name(self) -> str:
        if self.is_logits:
            return "logits"
        return ",".join(f"{layer}.{head}.{inp}" for layer, head, inp in self.heads)

    @property
    def first_layer(self) -> int:
        return min(layer for layer, _, _ in self.heads)

    @classmethod
    def parse(cls, text: str, shape: ModelShape) -> Receiver:
        """``logits``, or comma-separated ``L.H.q`` / ``L.H.k`` / ``L.H.v`` / ``L.H`` (all three inputs)."""
        text = text.strip()
        if text == "logits":
            return cls()
        heads: list[ReceiverHead] = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            m = re.fullmatch(r"(\d+)\.(\d+)(?:\.([qkv]))?", part)
            if not m:
                raise UsageError(f"receiver {part!r}: write logits, L.H (all of q, k, v) or L.H.q / L.H.k / L.H.v")
            layer, head = int(m.group(1)), int(m.group(2))
            from discovery.types.circuit import head as make_head

            shape.check(make_head(layer, head))
            if layer == 0:
                raise UsageError(f"receiver {part!r}: a layer-0 head has no sender heads before it")
            inputs = (m.group(3),) if m.group(3) else HEAD_INPUTS
            heads.extend((layer, head, inp) for inp in inputs)  # type: ignore[misc]
        if not heads:
            raise UsageError("receiver is empty: write logits or heads such as 9.6.q")
        return cls(tuple(sorted(set(heads))))


@dataclass(frozen=True)
class PatchingResult:
    receiver: str
    effects: np.ndarray
    """[n_layers, n_heads] patched metric minus clean metric; NaN where a head cannot send."""
    clean_metric: float
    corrupt_metric: float
    """The metric of the unablated model on the corrupted prompts (answers of the clean ones)."""
    dataset: str
    metric: str

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The k senders with the largest |effect|."""
        flat = [
            (f"{l}.{h}", float(self.effects[l, h]))
            for l in range(self.effects.shape[0])
            for h in range(self.effects.shape[1])
            if not np.isnan(self.effects[l, h])
        ]
        return sorted(flat, key=lambda t: -abs(t[1]))[:k]


def _metric(eng: Engine, dataset: Dataset, resid_last: torch.Tensor) -> torch.Tensor:
    """Mean metric over prompts from last-position residuals [..., n, d] -> [...]."""
    final = eng.final_norm(resid_last)
    return per_prompt_metric(eng, dataset, final, dataset.metric, task_metrics_only=True).mean(-1)


def _attention(
    eng: Engine, layer: int, x: torch.Tensor, overrides: dict[tuple[int, ReceiverInput], torch.Tensor] | None = None
) -> torch.Tensor:
    """Attention output of ``layer`` on residual ``x`` [b, n, p, d]; ``overrides[(head, input)]`` is
    the normed residual [b, n, p, d] that head's q, k or v reads instead of ``x``'s."""
    ln = eng.ln1(layer, x)
    qkv = {which: eng.project(layer, which, ln) for which in ("q", "k", "v")}  # [b, n, p, h, e]
    for (head, inp), other in (overrides or {}).items():
        one = torch.tensor([head], device=x.device)
        qkv[inp][:, :, :, head] = eng.project(layer, inp, other, one)[:, :, :, 0]
    z = eng.attend(qkv["q"], qkv["k"], qkv["v"], torch.arange(x.shape[2], device=x.device))
    return eng.attention_output(layer, z)


@torch.no_grad()
def path_patching(
    model: LoadedModel, dataset: Dataset, receiver: Receiver | str = "logits", progress: ProgressCallback | None = None
) -> PatchingResult:
    """The effect of every sender head on ``receiver`` (see the module docstring). Prompts of several
    lengths are patched one length group at a time; every figure is a mean over prompts, so the
    groups' figures are combined weighted by their prompt counts."""
    progress = progress or no_progress
    if isinstance(receiver, str):
        receiver = Receiver.parse(receiver, model.shape)
    dataset = dataset.to(model.device)
    if not dataset.mixed_lengths:
        return _path_patching(model, dataset, receiver, progress)
    parts = [_path_patching(model, g, receiver, progress) for g in dataset.groups]
    weights = [g.n / dataset.n for g in dataset.groups]
    return PatchingResult(
        receiver.name,
        np.sum([w * r.effects for w, r in zip(weights, parts)], axis=0),
        sum(w * r.clean_metric for w, r in zip(weights, parts)),
        sum(w * r.corrupt_metric for w, r in zip(weights, parts)),
        dataset.description,
        dataset.metric,
    )


def _path_patching(
    model: LoadedModel, dataset: Dataset, receiver: Receiver, progress: ProgressCallback
) -> PatchingResult:
    eng = model.engine
    shape = model.shape
    clean = record_forward(eng, dataset.clean_ids)
    corrupt = record_forward(eng, dataset.corrupt_ids)
    clean_metric = float(_metric(eng, dataset, clean.resid_final[:, -1]))
    corrupt_metric = float(_metric(eng, dataset, corrupt.resid_final[:, -1]))

    n_layers, n_heads = shape.n_layers, shape.n_heads
    last_sender_layer = n_layers - 1 if receiver.is_logits else receiver.first_layer - 1
    frozen_attn = [eng.attention_output(layer, z) for layer, z in enumerate(clean.z)]
    effects = np.full((n_layers, n_heads), np.nan)
    receiver_layers = sorted({layer for layer, _, _ in receiver.heads})
    # the residual entering each layer in the clean run: where a sender's batch starts from
    clean_pre = [eng.embed(dataset.clean_ids)]
    for layer in range(n_layers - 1):
        clean_pre.append(eng.block_with_attention(layer, clean_pre[-1], frozen_attn[layer]))

    for sender_layer in range(last_sender_layer + 1):
        # step 1: all heads frozen clean, each sender (batch row) swapped to its corrupted output
        delta = eng.head_outputs(sender_layer, corrupt.z[sender_layer] - clean.z[sender_layer]).transpose(0, 1)
        block_in = clean_pre[sender_layer].unsqueeze(0).expand(n_heads, -1, -1, -1)
        x = eng.block_with_attention(sender_layer, block_in, frozen_attn[sender_layer] + delta)  # [h, n, p, d]
        pre_at: dict[int, torch.Tensor] = {}
        stop = n_layers if receiver.is_logits else receiver_layers[-1]
        for layer in range(sender_layer + 1, stop):
            if layer in receiver_layers:
                pre_at[layer] = x
            x = eng.block_with_attention(layer, x, frozen_attn[layer])
        if receiver.is_logits:
            patched = _metric(eng, dataset, x[:, :, -1])
        else:
            if stop in receiver_layers:
                pre_at[stop] = x
            patched = _receiver_run(eng, dataset, receiver, pre_at, clean_pre, n_heads)
        effects[sender_layer] = (patched - clean_metric).double().cpu().numpy()
        progress(sender_layer + 1, last_sender_layer + 1, f"sender layer {sender_layer}")
    return PatchingResult(receiver.name, effects, clean_metric, corrupt_metric, dataset.description, dataset.metric)


def _receiver_run(
    eng: Engine,
    dataset: Dataset,
    receiver: Receiver,
    pre_at: dict[int, torch.Tensor],
    clean_pre: Sequence[torch.Tensor],
    batch: int,
) -> torch.Tensor:
    """Step 2: a clean run where the receiver heads' inputs read the step-1 residuals ``pre_at``."""
    first = receiver.first_layer
    x = clean_pre[first].unsqueeze(0).expand(batch, -1, -1, -1)
    for layer in range(first, eng.n_layers):
        overrides = {}
        for r_layer, r_head, inp in receiver.heads:
            if r_layer == layer:
                overrides[(r_head, inp)] = eng.ln1(layer, pre_at[layer])
        x = eng.block_with_attention(layer, x, _attention(eng, layer, x, overrides))
    return _metric(eng, dataset, x[:, :, -1])
