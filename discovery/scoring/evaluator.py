"""Scoring circuits by ablation: the hot path, and the only code that runs ablated forwards.

Node-level ablation replaces the output of every head outside the circuit (its ``z``, the
per-head attention output before ``W_O``) with a replacement taken from another dataset:

- ``mean`` (default): the head's mean over the source prompts, per position;
- ``resample``: the head's value on the paired source prompt (prompt i's corrupted twin);
- ``zero``: zeros.

The source is the dataset's corrupted prompts by default (``source="clean"`` takes the clean
ones). MLPs are kept unless ``ablate_mlps`` is set, in which case MLPs outside the circuit are
replaced the same way. The score is the task's metric on the clean prompts; it is normalised as
``(circuit - ablated) / (full - ablated)``, where *full* keeps everything and *ablated* keeps
nothing. All of that is recorded in :class:`EvaluationMethod`, stored and printed with every
score: published scores differ by 20 points from these choices alone.

Speed. One :meth:`Evaluator.evaluate` call scores many circuits in one pass over the layers. The
circuits form a trie over their per-layer masks: layer ``l`` is computed once per distinct mask
prefix ``0..l``, so circuits that agree on their first layers share that work (a greedy step's
candidates differ in one head). The groups that split off one trie node at a layer read the same
state, so they share its norm, its heads' q, k, v and z, and for parallel blocks (GPT-NeoX) the
MLP, which reads the block's input. Within a layer a head is computed only for the states whose
groups keep it; ablated heads contribute a precomputed constant, and heads that share a key/value
head (GQA, MQA) compute their keys and values once. After the last layer in which a trie group's
circuits keep a head, later layers cannot mix positions, so from that layer's output on only the
group's last position is computed (that layer still reads keys and values at every position); the unembedding
reads only the answer tokens (and the log partition, for ``prob_diff``). A call with more circuits
than one pass holds sorts them by their masks first, so that each pass gets circuits that share
prefixes; values come back in the caller's order.

Edge-level circuits (``Circuit.level == "edge"``, the one with no edges included) are delegated to
:mod:`discovery.scoring.edge_forward`. Both run on the one forward of :mod:`discovery.engine`; models
without the engine's fast path are scored through TransformerLens hooks (:mod:`discovery.scoring.hooked`,
node level only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch

from discovery.engine import Engine, Recording, record_forward
from discovery.model import LoadedModel
from discovery.scoring.edge_forward import PrefixCache, edge_metric_values
from discovery.scoring.hooked import HookedScorer
from discovery.scoring.metrics import (
    check_metric,
    per_prompt_metric,
    reads_answer_tokens_only,
    reads_full_model_reference,
)
from discovery.tasks.base import Dataset
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.evaluation import RELIABLE_SPAN, Ablation, EvaluationMethod, Score, normalise
from discovery.types.metrics import TASK_METRICS
from discovery.types.progress import ProgressCallback

__all__ = ["Evaluator", "Recording", "Replacement", "record_forward"]

SHARED_HEADS_FRACTION = 0.75
"""Node level: a head needed by at least this fraction of a chunk's states is computed for all of them
(gathering the rows of fewer costs about a third of what computing every row costs)."""


@dataclass(frozen=True, eq=False)
class Replacement:
    """What an ablated component is replaced with, per layer."""

    z: tuple[torch.Tensor, ...]
    """Per layer [n or 1, seq, heads, d_head]: the replacement head outputs."""
    mlp_out: tuple[torch.Tensor, ...]
    """Per layer [n or 1, seq, d_model]: the replacement MLP outputs."""
    attn_constant: tuple[torch.Tensor, ...]
    """Per layer [n or 1, seq, d_model]: the attention output when every head is replaced (b_O included)."""
    embed: torch.Tensor
    """[n or 1, seq, d_model]: the replacement input embedding (read where an ``embed`` edge is removed)."""


@dataclass(frozen=True, eq=False)
class _StateParts:
    """What the groups reading one chunk of states share at a layer (:meth:`Evaluator._state_parts`)."""

    last_only: bool
    block_in: torch.Tensor
    """[parents, n, q, d]: the states at the query positions (the last one when ``last_only``)."""
    kept: torch.Tensor
    """The heads some group keeps, ascending: ``z``'s head columns."""
    z: torch.Tensor | None
    """[parents, n, q, len(kept), d_head], or None when no group keeps a head (entries no group reads are zero)."""
    mlp_out: torch.Tensor | None
    """Parallel blocks with several groups a state: the MLP's output [states with a live group, n, q, d]."""
    mlp_row: torch.Tensor | None
    """[parents]: each state's row of ``mlp_out`` (-1 where none of its groups keeps the MLP)."""


class Evaluator:
    """Scores circuits of one model on one dataset under one ablation.

    ``evaluate(circuits)`` is batched; ``forward_count`` counts the circuits actually computed,
    which is how the store's tests prove a cache hit costs no forward pass.
    """

    def __init__(
        self,
        model: LoadedModel,
        dataset: Dataset,
        ablation: Ablation = Ablation(),
        max_tokens_per_chunk: int | None = None,
        circuits_per_pass: int = 256,
        metric: str | Callable[..., torch.Tensor] | None = None,
        source_dataset: Dataset | None = None,
    ) -> None:
        self.model = model
        self.dataset = dataset.to(model.device)
        self.ablation = ablation
        self.metric_name = check_metric(self.dataset, metric)
        """The task's metric, ``kl`` (KL divergence to the full model), or a user metric's name."""
        self.source_dataset = (source_dataset or dataset).to(model.device)
        """Where replacement values come from: the evaluated prompts, or a separate (larger) set."""
        if source_dataset is not None and source_dataset.seq_len != dataset.seq_len:
            raise UsageError(
                f"the mean source {source_dataset.description} has prompts of {source_dataset.seq_len} tokens, "
                f"the evaluated prompts {dataset.seq_len}: means are per position, so lengths must agree"
            )
        if source_dataset is not None and ablation.kind == "resample" and source_dataset.n != dataset.n:
            raise UsageError("resample ablation pairs prompt i with source prompt i: the two sets need one size")
        if source_dataset is not None and (source_dataset.mixed_lengths or dataset.mixed_lengths):
            raise UsageError(
                "means from a separate source set are per position, so both sets need prompts of one token length"
            )
        self.shape = model.shape
        self.max_tokens_per_chunk = max_tokens_per_chunk
        """Input tokens one chunk of a layer holds (None: :meth:`~discovery.engine.Engine.tokens_per_chunk`,
        sized to the device's allocator)."""
        self.circuits_per_pass = circuits_per_pass
        self.forward_count = 0
        self.edge_prefixes = PrefixCache()
        """The edge-level forward state this evaluator remembers between batches (ACDC's walk reuses it)."""
        context = int(model.bridge.cfg.n_ctx)
        if self.dataset.seq_len > context:
            raise UsageError(f"prompts of {self.dataset.seq_len} tokens exceed the model's context of {context}")
        self.groups: tuple[Evaluator, ...] = tuple(
            Evaluator(model, g, ablation, max_tokens_per_chunk, circuits_per_pass, metric) for g in self.dataset.groups
        )
        """Prompts of several lengths: one evaluator per length group, each with its own per-position
        means; a metric is their prompt-weighted mean (see :class:`~discovery.tasks.base.Dataset`)."""
        self.hooked = None if model.fast_path or self.groups else HookedScorer(model, self.dataset, ablation)
        """The slow path (TransformerLens hooks) for architectures the engine has no fast path for."""
        if not model.fast_path and self.metric_name not in TASK_METRICS:
            raise UsageError(
                f"the {self.metric_name} metric needs the engine's fast path; this model runs on the hooked slow path"
            )
        self._settings = (max_tokens_per_chunk, circuits_per_pass, source_dataset)

    def with_metric(self, metric: str | Callable[..., torch.Tensor]) -> Evaluator:
        """The same evaluation scored by another metric (e.g. ``kl`` for ACDC's criterion)."""
        if metric == self.metric_name:
            return self
        chunk, per_pass, source = self._settings
        return Evaluator(self.model, self.dataset, self.ablation, chunk, per_pass, metric, source)

    @cached_property
    def engine(self) -> Engine:
        return self.model.engine

    @property
    def base_evaluator(self) -> Evaluator:
        """This evaluator (the :class:`~discovery.scoring.scorer.Scorer` member wrappers forward to)."""
        return self

    # --- what a score means ---------------------------------------------------------------
    def method(self, level: Literal["node", "edge"] = "node") -> EvaluationMethod:
        source = f"{self.source_dataset.description}:{self.ablation.source}"
        embed = self.ablation.ablate_embed and level == "edge"  # node circuits always keep the embedding
        return EvaluationMethod(
            self.ablation.kind, source, level, self.ablation.ablate_mlps, self.metric_name, ablate_embed=embed
        )

    # --- replacement values ---------------------------------------------------------------
    def _one_length(self, what: str) -> None:
        if self.groups:
            raise UsageError(
                f"{what} is per prompt length, and these prompts have {len(self.groups)} lengths: "
                "use the evaluator of one length group (evaluator.groups)"
            )

    @cached_property
    def source_recording(self) -> Recording:
        self._one_length("the source recording")
        src = self.source_dataset
        ids = src.corrupt_ids if self.ablation.source == "corrupt" else src.clean_ids
        return record_forward(self.engine, ids)

    @cached_property
    def replacement(self) -> Replacement:
        rec = self.source_recording
        embedded = rec.embed
        if self.ablation.kind == "mean":
            zs = [z.mean(0, keepdim=True) for z in rec.z]
            mlps = [m.mean(0, keepdim=True) for m in rec.mlp_out]
            embed = embedded.mean(0, keepdim=True)
        elif self.ablation.kind == "resample":
            zs, mlps, embed = list(rec.z), list(rec.mlp_out), embedded
        else:
            zs = [torch.zeros_like(z[:1]) for z in rec.z]
            mlps = [torch.zeros_like(m[:1]) for m in rec.mlp_out]
            embed = torch.zeros_like(embedded[:1])
        consts = [self.engine.attention_output(layer, z) for layer, z in enumerate(zs)]
        return Replacement(tuple(zs), tuple(mlps), tuple(consts), embed)

    # --- the two ends of the normalisation --------------------------------------------------
    @cached_property
    def full_metric(self) -> float:
        everything = Circuit.of(self.shape.all_heads() + self.shape.all_mlps())
        return float(self._metric_values([everything])[0])

    @cached_property
    def ablated_metric(self) -> float:
        return float(self._metric_values([Circuit()])[0])

    @cached_property
    def clean_final(self) -> torch.Tensor:
        """[n, d] the full model's final-normed last-position residual on the clean prompts."""
        self._one_length("the clean prompts' final residual")
        if self.hooked is not None:
            raise UsageError("the kl metric and the spread check need the engine's fast path")
        rec = record_forward(self.engine, self.dataset.clean_ids)
        return self.engine.final_norm(rec.resid_final[:, -1])

    @cached_property
    def reference_logprobs(self) -> torch.Tensor:
        """[n, vocab] the full model's next-token log-probabilities (the kl metric's reference)."""
        return torch.log_softmax(self.engine.token_logits(self.clean_final).double(), dim=-1)

    @cached_property
    def prompt_spread(self) -> float:
        """Standard deviation over prompts of the full model's per-prompt metric (0 for kl)."""
        if self.hooked is not None or self.metric_name == "kl":
            return 0.0
        values = self._full_per_prompt()
        return float(values.double().std()) if values.numel() > 1 else 0.0

    def _full_per_prompt(self) -> torch.Tensor:
        """[n] the full model's per-prompt metric (length groups one after another)."""
        if self.groups:
            return torch.cat([g._full_per_prompt() for g in self.groups])
        return per_prompt_metric(self.engine, self.dataset, self.clean_final, self.metric_name)

    @property
    def span_reliable(self) -> bool:
        """Whether full and ablated differ by more than the prompts' spread (see :data:`RELIABLE_SPAN`)."""
        span = abs(self.full_metric - self.ablated_metric)
        return span > 0 and span >= RELIABLE_SPAN * self.prompt_spread

    @property
    def span_note(self) -> str:
        """One line on why normalised scores are unreliable, or "" when they are not."""
        if self.span_reliable:
            return ""
        return (
            f"normalised score unreliable: full ({self.full_metric:.4f}) and ablated ({self.ablated_metric:.4f}) "
            f"differ by {abs(self.full_metric - self.ablated_metric):.4f}, less than {RELIABLE_SPAN} x the "
            f"prompts' spread ({self.prompt_spread:.4f})"
        )

    # --- public API --------------------------------------------------------------------------
    def evaluate(self, circuits: Sequence[Circuit], progress: ProgressCallback | None = None) -> list[Score]:
        """Score every circuit; equal circuits are computed once."""
        for c in circuits:
            c.validate(self.shape)
        full, ablated, reliable = self.full_metric, self.ablated_metric, self.span_reliable
        values = self.metric_values(circuits, progress)
        return [
            Score(c, float(v), normalise(float(v), full, ablated), full, ablated, self.method(c.level), reliable)
            for c, v in zip(circuits, values)
        ]

    def evaluate_one(self, circuit: Circuit) -> Score:
        return self.evaluate([circuit])[0]

    def metric_values(self, circuits: Sequence[Circuit], progress: ProgressCallback | None = None) -> np.ndarray:
        """The raw metric of each circuit (no normalisation), in passes of ``circuits_per_pass``.

        Node-level circuits are put in the order of their per-layer masks (layer 0 first) before
        they are split into passes, so the circuits of one pass share their mask prefixes; the
        values come back in the caller's order.
        """
        out = np.empty(len(circuits), dtype=np.float64)
        order = self._pass_order(circuits)
        for start in range(0, len(circuits), self.circuits_per_pass):
            chosen = order[start : start + self.circuits_per_pass]
            out[chosen] = self._metric_values([circuits[i] for i in chosen])
            if progress:
                progress(start + len(chosen), len(circuits), "circuits evaluated")
        return out

    def _pass_order(self, circuits: Sequence[Circuit]) -> np.ndarray:
        """Node-level circuits sorted by their masks (layer-major), then edge-level ones as given."""
        if len(circuits) <= self.circuits_per_pass or self.hooked is not None:
            return np.arange(len(circuits))
        node = np.array([i for i, c in enumerate(circuits) if c.level == "node"], dtype=np.int64)
        edge = np.array([i for i, c in enumerate(circuits) if c.level == "edge"], dtype=np.int64)
        if len(node):
            heads, mlps = self.masks([circuits[i] for i in node])
            keys = np.concatenate([heads, mlps[:, :, None]], axis=2).reshape(len(node), -1)
            node = node[np.lexsort(keys.T[::-1])]
        return np.concatenate([node, edge])

    # --- the forward ---------------------------------------------------------------------------
    def _metric_values(self, circuits: Sequence[Circuit]) -> np.ndarray:
        if self.groups:  # the mean over every prompt: each length group weighted by its prompt count
            total = np.zeros(len(circuits), dtype=np.float64)
            counted = self.groups[0].forward_count
            for g in self.groups:
                total += g._metric_values(circuits) * (g.dataset.n / self.dataset.n)
            self.forward_count += self.groups[0].forward_count - counted  # a circuit, not a circuit per group
            return total
        # by level, not by whether there are edges: an edge circuit with none is every edge removed
        node_level = [i for i, c in enumerate(circuits) if c.level == "node"]
        edge_level = [i for i, c in enumerate(circuits) if c.level == "edge"]
        out = np.empty(len(circuits), dtype=np.float64)
        if self.hooked is not None:
            if edge_level:
                self.model.engine  # noqa: B018 - raises the one-line error: edge level needs the fast path
            out[:] = [self.hooked.metric(*self.masks([c])) for c in circuits]
            self.forward_count += len({c.key for c in circuits})
            return out
        if node_level:
            out[node_level] = self._node_metric_values([circuits[i] for i in node_level])
        if edge_level:
            out[edge_level] = edge_metric_values(self, [circuits[i] for i in edge_level])
            self.forward_count += len({circuits[i].key for i in edge_level})
        return out

    def masks(self, circuits: Sequence[Circuit]) -> tuple[np.ndarray, np.ndarray]:
        """Per circuit: kept heads [c, layers, heads] and kept MLPs [c, layers] (bool)."""
        n_layers, n_heads = self.shape.n_layers, self.shape.n_heads
        heads = np.zeros((len(circuits), n_layers, n_heads), dtype=bool)
        mlps = np.ones((len(circuits), n_layers), dtype=bool)
        if self.ablation.ablate_mlps:
            mlps[:] = False
        for i, c in enumerate(circuits):
            for node in c.nodes:
                if node.kind == "head":
                    heads[i, node.layer, node.head] = True
                elif node.kind == "mlp":
                    mlps[i, node.layer] = True
        return heads, mlps

    @torch.no_grad()
    def _node_metric_values(self, circuits: Sequence[Circuit]) -> np.ndarray:
        """Node-level circuits in one pass over the layers: the trie of mask prefixes (module docstring).

        Each trie group (circuits sharing their masks up to layer ``l``) keeps every position only
        while one of its circuits keeps a head after ``l``; from the layer of its last kept head on
        it keeps the last position only (that layer still reads keys and values at every position).
        """
        # Over 60 lines on purpose: the trie walk's state (slots, full and last-position states, each group's
        # circuits) lives across the loop over layers; the per-layer work is in _layer and its helpers.
        head_masks, mlp_masks = self.masks(circuits)
        n_layers = self.shape.n_layers
        any_head = head_masks.sum(axis=2) > 0  # [c, layers]: keeps a head there
        last_kept = np.where(any_head.any(axis=1), n_layers - 1 - any_head[:, ::-1].argmax(axis=1), -1)

        x = self.engine.embed(self.dataset.clean_ids).unsqueeze(0)  # [1, n, p, d]
        full, last = x, x[:, :, -1:]  # the groups' states: every position / the last one only
        # group g's state is full[slot[g]] when is_full[g], else last[slot[g]]
        is_full = np.array([last_kept.max() >= 0])
        slot = np.zeros(1, dtype=np.int64)
        group_of = np.zeros(len(circuits), dtype=np.int64)
        for layer in range(n_layers):
            # split each group by this layer's mask: the trie's next level
            rows = np.concatenate(
                [group_of[:, None], np.packbits(head_masks[:, layer], axis=1), mlp_masks[:, layer, None]], axis=1
            )
            _, firsts, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
            new_group_of = inverse.reshape(-1)
            parents = group_of[firsts]
            reach = np.full(len(firsts), -1, dtype=np.int64)  # the last kept layer of each group's circuits
            np.maximum.at(reach, new_group_of, last_kept)
            heads, mlps = head_masks[firsts, layer], mlp_masks[firsts, layer]
            from_full = is_full[parents]
            to_full = reach > layer
            # all positions in, all out / all in, last out (keys and values of kept heads) / last in and out
            spread = np.nonzero(to_full)[0]
            narrowing = np.nonzero(from_full & ~to_full & heads.any(1))[0]
            narrow = np.nonzero(~to_full & ~(from_full & heads.any(1)))[0]
            new_full = self._layer(layer, full, slot[parents[spread]], heads[spread], mlps[spread], False)
            parts = []
            if len(narrowing):
                parts.append(
                    self._layer(layer, full, slot[parents[narrowing]], heads[narrowing], mlps[narrowing], True)
                )
            if len(narrow):
                sources = parents[narrow]
                if from_full[narrow].any():
                    inputs, source_slots = (
                        self._last_positions(full, last, is_full, slot, sources),
                        np.arange(len(narrow)),
                    )
                else:
                    inputs, source_slots = last, slot[sources]
                parts.append(self._layer(layer, inputs, source_slots, heads[narrow], mlps[narrow], True))
            new_last = parts[0] if len(parts) == 1 else torch.cat(parts) if parts else last[:0]
            slot = np.empty(len(firsts), dtype=np.int64)
            slot[spread] = np.arange(len(spread))
            slot[narrowing] = np.arange(len(narrowing))
            slot[narrow] = len(narrowing) + np.arange(len(narrow))
            is_full, full, last, group_of = to_full, new_full, new_last, new_group_of

        assert not is_full.any()
        final = self.engine.final_norm(last[:, :, -1])  # [groups, n, d]
        per_group = self.readout(final).mean(-1)
        self.forward_count += len(slot)
        return per_group.double().cpu().numpy()[slot[group_of]]

    @staticmethod
    def _last_positions(
        full: torch.Tensor, last: torch.Tensor, is_full: np.ndarray, slot: np.ndarray, groups: np.ndarray
    ) -> torch.Tensor:
        """[len(groups), n, 1, d] the last-position state of each of ``groups`` (full or last-only)."""
        out = torch.empty(len(groups), *last.shape[1:], device=last.device, dtype=last.dtype)
        fulls = is_full[groups]
        if fulls.any():
            into, take = (torch.from_numpy(a).to(last.device) for a in (np.nonzero(fulls)[0], slot[groups[fulls]]))
            out[into] = full[take, :, -1:]
        if not fulls.all():
            into, take = (torch.from_numpy(a).to(last.device) for a in (np.nonzero(~fulls)[0], slot[groups[~fulls]]))
            out[into] = last[take]
        return out

    def readout(self, final_normed: torch.Tensor) -> torch.Tensor:
        """The metric per prompt from final-normed last-position residuals [groups, n, d] -> [groups, n]."""
        reference = self.reference_logprobs if reads_full_model_reference(self.metric_name) else None
        if reads_answer_tokens_only(self.metric_name):  # answer columns only: no full-vocabulary logits
            return per_prompt_metric(self.engine, self.dataset, final_normed, self.metric_name)
        # a group at a time: full-vocabulary logits of every group at once can take gigabytes
        return torch.stack(
            [per_prompt_metric(self.engine, self.dataset, g, self.metric_name, reference) for g in final_normed]
        )

    def _layer(
        self,
        layer: int,
        states: torch.Tensor,
        sources: np.ndarray,
        head_mask: np.ndarray,
        mlp_mask: np.ndarray,
        last_only: bool,
    ) -> torch.Tensor:
        """Layer ``layer`` for each new group g: state ``states[sources[g]]``, masks ``head_mask[g]``, ``mlp_mask[g]``.

        Returns [groups, n, positions or 1, d]. The states are taken a chunk at a time, each chunk
        holding at most ``max_tokens_per_chunk`` input tokens (or one state, where a state holds
        more), and with them every group that reads them: what depends on a state alone is computed
        once for all of its groups (:meth:`_state_parts`), however many there are (every circuit
        reads the embedding at layer 0; a greedy step's candidates split off one state). The groups
        are then computed in chunks of the same size (:meth:`_group_outputs`).
        """
        n, positions = states.shape[1], states.shape[2]
        out_positions = 1 if last_only else positions
        out = torch.empty(len(sources), n, out_positions, states.shape[3], device=states.device, dtype=states.dtype)
        if not len(sources):
            return out
        device = states.device
        tokens = self.max_tokens_per_chunk or self.engine.tokens_per_chunk(positions)
        chunk = max(1, tokens // (n * positions))
        order = np.argsort(sources, kind="stable")  # the groups of one state side by side
        ordered = sources[order]
        parents, first_group = np.unique(ordered, return_index=True)
        bounds = np.append(first_group, len(sources))
        for start in range(0, len(parents), chunk):
            chunk_parents = parents[start : start + chunk]
            lo, hi = int(bounds[start]), int(bounds[min(start + chunk, len(parents))])
            contiguous = bool(chunk_parents[-1] - chunk_parents[0] == len(chunk_parents) - 1)
            x = (
                states[int(chunk_parents[0]) : int(chunk_parents[-1]) + 1]
                if contiguous
                else states[torch.from_numpy(chunk_parents).to(device)]
            )
            groups = order[lo:hi]
            # one group a state (in the states' order, as sorted): x[g] is group g's state
            parent_of = (
                None
                if hi - lo == len(chunk_parents)
                else torch.from_numpy(np.searchsorted(chunk_parents, ordered[lo:hi])).to(device)
            )
            heads = torch.from_numpy(head_mask[groups]).to(device)
            mlps = torch.from_numpy(mlp_mask[groups]).to(device)
            parts = self._state_parts(layer, x, parent_of, heads, mlps, last_only)
            for first in range(0, len(groups), chunk):
                sub = slice(first, first + chunk)
                these = groups[sub]
                result = self._group_outputs(
                    layer, parts, None if parent_of is None else parent_of[sub], heads[sub], mlps[sub]
                )
                if bool((np.diff(these) == 1).all()):
                    out[int(these[0]) : int(these[-1]) + 1] = result
                else:
                    out[torch.from_numpy(these).to(device)] = result
        return out

    @staticmethod
    def _parents_need(parent_of: torch.Tensor, kept_mask: torch.Tensor, n_parents: int) -> torch.Tensor:
        """[parents, h]: whether some group reading each state keeps each head."""
        need = torch.zeros(n_parents, kept_mask.shape[1], dtype=torch.int32, device=kept_mask.device)
        return need.index_add_(0, parent_of, kept_mask.to(torch.int32)) > 0

    def _kept_z(
        self, layer: int, normed: torch.Tensor, kept: torch.Tensor, need: torch.Tensor, last_only: bool
    ) -> torch.Tensor:
        """z [parents, n, q, h, e] of heads ``kept`` where ``need`` [parents, h] says a state's groups keep them.

        Each key/value head's query heads are computed for the states that need one of them: heads
        most states need (:data:`SHARED_HEADS_FRACTION`) in one batch over every state, the others per
        set of states that need them (states' rows gathered). Entries no group reads are zero.
        """
        eng = self.engine
        n_parents = len(need)
        sources = eng.kv_sources(layer)[kept]
        batches: dict[bytes, list[int]] = {}  # parents needing a key/value head's query heads -> their slots
        everyone = np.ones(n_parents, dtype=bool)
        need_np = need.cpu().numpy()
        for source in torch.unique(sources).tolist():
            slots = torch.nonzero(sources == source).flatten().tolist()
            parents = need_np[:, slots].any(1)
            if parents.sum() >= SHARED_HEADS_FRACTION * n_parents:
                parents = everyone
            batches.setdefault(np.packbits(parents).tobytes(), []).extend(slots)
        if len(batches) == 1 and next(iter(batches)) == np.packbits(everyone).tobytes():
            return eng.attention_z_shared_kv(layer, normed, kept, last_only)
        p, d = normed.shape[-2:]
        q = 1 if last_only else p
        z = torch.zeros(n_parents, normed.shape[1], q, len(kept), eng.d_head, device=normed.device, dtype=normed.dtype)
        for key, slot_list in batches.items():
            readers = np.nonzero(np.unpackbits(np.frombuffer(key, dtype=np.uint8))[:n_parents])[0]
            at = torch.tensor(sorted(slot_list), device=normed.device)
            if len(readers) == n_parents:
                z[:, :, :, at] = eng.attention_z_shared_kv(layer, normed, kept[at], last_only)
            else:
                rows = torch.from_numpy(readers).to(normed.device)
                part = eng.attention_z_shared_kv(layer, normed[rows], kept[at], last_only)
                z[rows[:, None], :, :, at[None, :]] = part.permute(0, 3, 1, 2, 4)
        return z

    def _state_parts(
        self,
        layer: int,
        x: torch.Tensor,
        parent_of: torch.Tensor | None,
        head_mask: torch.Tensor,
        mlp_mask: torch.Tensor,
        last_only: bool,
    ) -> _StateParts:
        """What groups g reading the states ``x[parent_of[g]]`` (``x[g]`` when None) share, once per state.

        The norm, the z of the heads some group keeps (every group differs from its siblings only in
        which of them it keeps), and for parallel blocks the MLP, which reads the block's input (only
        where a state has several groups: with one group a state, :meth:`_group_outputs` computes it
        and adds the residual in its last matmul).
        """
        eng = self.engine
        q_pos = slice(-1, None) if last_only else slice(None)
        block_in = x[:, :, q_pos]  # [parents, n, q, d]
        kept = torch.nonzero(head_mask.any(0)).flatten()
        z = None
        if len(kept):
            kept_mask = head_mask[:, kept]
            need = kept_mask if parent_of is None else self._parents_need(parent_of, kept_mask, len(x))
            z = self._kept_z(layer, eng.ln1(layer, x), kept, need, last_only)  # [parents, n, q, h, e]
        mlp_out = mlp_row = None
        if eng.parallel and parent_of is not None:
            live = torch.nonzero(mlp_mask).flatten()
            if len(live):
                needed = torch.unique(parent_of[live])
                every = len(needed) == len(x)
                mlp_out = eng.mlp(layer, eng.ln2(layer, block_in if every else block_in[needed]))
                mlp_row = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
                mlp_row[needed] = torch.arange(len(needed), device=x.device)
        return _StateParts(last_only, block_in, kept, z, mlp_out, mlp_row)

    def _group_outputs(
        self,
        layer: int,
        parts: _StateParts,
        parent_of: torch.Tensor | None,
        head_mask: torch.Tensor,
        mlp_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Layer ``layer``'s output [g, n, q, d] for groups g reading state ``parent_of[g]`` of ``parts`` (g when None).

        Each group's attention output is the ablated constant plus its kept heads' change,
        ``sum_h (z_h - z_rep_h) W_O[h]``: ``z_h W_O[h]`` from one matmul over the heads these
        groups keep, the replacements' share from their per-head outputs.
        """
        # Over 60 lines on purpose: the attention and MLP branches share the gathered states and the
        # groups' masks; split, each would re-gather them (the hot path of every node-level evaluation).
        eng = self.engine
        rep = self.replacement
        q_pos = slice(-1, None) if parts.last_only else slice(None)

        def per_group(t: torch.Tensor) -> torch.Tensor:
            return t if parent_of is None else t[parent_of]

        g, d = len(head_mask), parts.block_in.shape[-1]
        block_in = parts.block_in
        kept = torch.nonzero(head_mask.any(0)).flatten()
        attn_constant = rep.attn_constant[layer][:, q_pos]  # [n|1, q, d]
        if len(kept):
            assert parts.z is not None  # these groups keep a head, so the state's groups do
            n_kept, dh = len(kept), eng.d_head
            keep = head_mask[:, kept].to(block_in.dtype)  # [g, h]
            z = parts.z
            if n_kept < len(parts.kept):  # the columns of these groups' heads among the state's
                z = z.index_select(3, torch.searchsorted(parts.kept, kept))
            # a gather copies; with one group a state (one call per state chunk) z is not read again
            zk = (z[parent_of] if parent_of is not None else z.contiguous()).mul_(keep[:, None, None, :, None])
            W_O = eng.layers[layer].W_O[kept]  # [h, e, d]
            rep_out = torch.einsum("nqhe,hed->nqhd", rep.z[layer][:, q_pos][:, :, kept], W_O)  # [n|1, q, h, d]
            base = per_group(block_in) + (attn_constant - torch.einsum("gh,nqhd->gnqd", keep, rep_out))
            after = torch.addmm(base.reshape(-1, d), zk.reshape(-1, n_kept * dh), W_O.reshape(n_kept * dh, d))
            after = after.view(base.shape)
        else:
            after = per_group(block_in) + attn_constant
        if eng.parallel:  # the MLP reads the block's input
            live = torch.nonzero(mlp_mask).flatten()
            if parent_of is not None:  # computed once per state (_state_parts)
                if not len(live):
                    return after.add_(rep.mlp_out[layer][:, q_pos])
                assert parts.mlp_out is not None and parts.mlp_row is not None
                shared = parts.mlp_out[parts.mlp_row[parent_of[live]]]
                if len(live) == g:
                    return after.add_(shared)
                result = after + rep.mlp_out[layer][:, q_pos]
                result[live] = after[live] + shared
                return result
            if len(live) == g:  # one group a state: the add rides on the MLP's last matmul
                return eng.mlp(layer, eng.ln2(layer, block_in), residual=after)
            result = after + rep.mlp_out[layer][:, q_pos]
            if len(live):
                result[live] = after[live] + eng.mlp(layer, eng.ln2(layer, block_in[live]))
            return result
        if bool(mlp_mask.all()):
            return eng.mlp(layer, eng.ln2(layer, after), residual=after)
        result = after + rep.mlp_out[layer][:, q_pos]
        live = torch.nonzero(mlp_mask).flatten()
        if len(live):
            kept_after = after[live]
            result[live] = eng.mlp(layer, eng.ln2(layer, kept_after), residual=kept_after)
        return result
