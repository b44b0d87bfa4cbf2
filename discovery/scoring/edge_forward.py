"""Edge-level ablation: a forward pass in which every receiver input has its own residual stream.

Semantics. An edge ``s -> r`` is a sender's output read by one input of a receiver (a head's q, k
or v, an MLP, or the logits). In an edge-level circuit every receiver input is

    input(r) = embed + sum over senders s before r of (edge kept ? out_s : rep_s) + biases

where ``out_s`` is the sender's output *in this run* (computed from its own, possibly ablated,
inputs) and ``rep_s`` its replacement output from ``evaluator.replacement`` (the mean / resampled
/ zero value the node-level ablation uses). Edge-level ablation removes what node-level ablation
removes: edges leaving heads, and edges leaving MLPs when the ablation has ``ablate_mlps``. MLPs
that are kept are never ablated at node level, so their edges are always present here too
(listing them in a circuit changes nothing). The embedding is kept too unless the ablation has
``ablate_embed`` (ACDC's graph, in which the input node's edges are prunable like any other):
then ``embed`` is one more sender, whose replacement is the source prompts' embedding, and a
receiver without its ``embed`` edge reads that instead of the clean one. Without
``ablate_embed`` the two levels agree where they should:

- all edges = the full model; no edges (``Circuit.from_edges([])``) = the node-level empty
  circuit (``ablated_metric``), so edge circuits are normalised on the same scale as node circuits;
- a node circuit C equals the edge circuit of every edge leaving C's components.

With ``ablate_embed`` all edges is still the full model, and no edges is every edge removed:
every receiver reads only replacement values, the embedding's included (as EAP-IG's
``evaluate_graph`` and auto-circuit score it). That is not the node-level empty circuit, which
keeps the clean embedding; edge circuits are still normalised by the node-level ends, so one
without its embedding edges can score below the empty node circuit (normalised below 0).

Gradients. :func:`edge_forward` takes edge masks as a float tensor, so it is differentiable in
the masks and (through ``probes``) in every receiver input: that is what EAP and EAP-IG use.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Any, Literal, Protocol

import numpy as np
import torch

from discovery.engine import Engine, record_forward
from discovery.scoring.metrics import per_prompt_metric, reads_full_model_reference
from discovery.types.circuit import (
    EMBED,
    HEAD_INPUTS,
    LOGITS,
    Circuit,
    Edge,
    HeadInput,
    ModelShape,
    Node,
    all_edges,
    head,
    mlp,
)

Slot = tuple[Node, "str | None"]


class ForwardInputs(Protocol):
    """What the edge-level forward reads off an evaluator (``discovery.scoring.evaluator.Evaluator`` has it all)."""

    @property
    def shape(self) -> ModelShape: ...

    @property
    def ablation(self) -> Any: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def dataset(self) -> Any: ...

    @property
    def replacement(self) -> Any: ...

    @property
    def metric_name(self) -> str: ...

    def readout(self, final_normed: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class EdgeGraph:
    """The ablatable edges of a model as a [receivers, senders] grid.

    Senders are ``embed`` first when it is ablatable, then layer by layer (a layer's heads, then
    its MLP when MLPs are ablatable); receiver slots likewise (each head's q, k, v, then the MLP),
    with ``logits`` last.
    """

    shape: ModelShape
    ablate_mlps: bool
    ablate_embed: bool = False

    @property
    def embed_senders(self) -> int:
        """How many senders come before layer 0's (1 when the embedding is ablatable)."""
        return 1 if self.ablate_embed else 0

    def layer_start(self, layer: int) -> int:
        """The index of layer ``layer``'s first sender (``n_layers``: the number of senders)."""
        return self.embed_senders + layer * self.senders_per_layer

    @cached_property
    def senders(self) -> list[Node]:
        out: list[Node] = [EMBED] if self.ablate_embed else []
        for layer in range(self.shape.n_layers):
            out.extend(head(layer, h) for h in range(self.shape.n_heads))
            if self.ablate_mlps:
                out.append(mlp(layer))
        return out

    @cached_property
    def sender_index(self) -> dict[Node, int]:
        return {s: i for i, s in enumerate(self.senders)}

    @property
    def senders_per_layer(self) -> int:
        return self.shape.n_heads + (1 if self.ablate_mlps else 0)

    @cached_property
    def receivers(self) -> list[Slot]:
        out: list[Slot] = []
        for layer in range(self.shape.n_layers):
            for h in range(self.shape.n_heads):
                out.extend((head(layer, h), inp) for inp in HEAD_INPUTS)
            out.append((mlp(layer), None))
        out.append((LOGITS, None))
        return out

    @cached_property
    def receiver_index(self) -> dict[Slot, int]:
        return {r: i for i, r in enumerate(self.receivers)}

    @property
    def receivers_per_layer(self) -> int:
        return 3 * self.shape.n_heads + 1

    @cached_property
    def edges(self) -> list[Edge]:
        """Every ablatable edge, in canonical order."""
        return [e for e in all_edges(self.shape) if self.ablatable(e)]

    def ablatable(self, edge: Edge) -> bool:
        return edge.sender in self.sender_index

    def ablatable_node(self, node: Node) -> bool:
        """Whether the node's output can be ablated (a head; an MLP when MLPs are ablated)."""
        return node in self.sender_index

    def position(self, edge: Edge) -> tuple[int, int]:
        """(receiver slot, sender) indices of an ablatable edge."""
        return self.receiver_index[(edge.receiver, edge.receiver_input)], self.sender_index[edge.sender]

    @cached_property
    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Receiver and sender indices of :attr:`edges`, as two arrays."""
        pos = np.array([self.position(e) for e in self.edges], dtype=np.int64).reshape(-1, 2)
        return pos[:, 0], pos[:, 1]

    @cached_property
    def valid(self) -> torch.Tensor:
        """[R, S] bool: which grid cells are edges."""
        grid = torch.zeros(len(self.receivers), len(self.senders), dtype=torch.bool)
        r, s = self.positions
        grid[torch.from_numpy(r), torch.from_numpy(s)] = True
        return grid

    def mask(self, circuits: Sequence[Circuit]) -> torch.Tensor:
        """[c, R, S] float masks (1 = edge kept); edges that are never ablated are ignored."""
        out = torch.zeros(len(circuits), len(self.receivers), len(self.senders))
        for i, c in enumerate(circuits):
            cells = [self.position(e) for e in c.edges if self.ablatable(e)]
            if cells:
                idx = torch.tensor(cells)
                out[i, idx[:, 0], idx[:, 1]] = 1.0
        return out

    def edges_from_mask(self, mask: torch.Tensor) -> list[Edge]:
        r, s = self.positions
        keep = mask[torch.from_numpy(r), torch.from_numpy(s)] > 0.5
        return [e for e, k in zip(self.edges, keep.tolist()) if k]

    def full_mask(self) -> torch.Tensor:
        return self.valid.float().unsqueeze(0)


def graph_of(evaluator: Any) -> EdgeGraph:
    """The edge graph of an evaluator (works through wrappers that delegate attributes)."""
    ablation = evaluator.ablation
    return _graph(evaluator.shape, bool(ablation.ablate_mlps), bool(getattr(ablation, "ablate_embed", False)))


@lru_cache(maxsize=16)
def _graph(shape: ModelShape, ablate_mlps: bool, ablate_embed: bool = False) -> EdgeGraph:
    return EdgeGraph(shape, ablate_mlps, ablate_embed)


# --- the edge-level forward ------------------------------------------------------------------------
#
# Every receiver input has two equal spellings (``delta_s = out_s - rep_s``, over ablatable senders
# before the receiver):
#
#   input(r) = base + sum_s mask(s->r) delta_s                 ("kept" form)
#            = resid - sum_s (valid(s->r) - mask(s->r)) delta_s  ("removed" form)
#
# where ``base`` is the stream with every ablatable sender replaced and ``resid`` the stream with
# every one of them present (this run's outputs). Per receiver group (a layer's head inputs, its
# MLP, the logits) the forward takes the form with fewer receivers that need a stream of their own:
# a receiver whose weights in that form are all zero reads the shared stream, so its q/k/v come
# from one shared projection as in a plain forward. A near-empty circuit is cheap in the kept form,
# a near-full one (ACDC's candidates, EAP's top edges) in the removed form.


@dataclass(frozen=True, eq=False)
class Prefix:
    """One circuit's forward state below every layer, reused by circuits whose receivers below some
    layer read exactly the same edges: ACDC walks receivers from the logits backwards, so every
    circuit it tests agrees with its start circuit below the receiver being tested."""

    mask: torch.Tensor
    """[R, S] the circuit's mask."""
    base: tuple[torch.Tensor, ...]
    """Per layer 0 .. n_layers: [n, p, d] the kept-form stream before the layer (n_layers: the logits)."""
    resid: tuple[torch.Tensor, ...]
    """Per layer 0 .. n_layers: [n, p, d] the removed-form stream before the layer."""
    deltas: torch.Tensor
    """[S, n, p, d] every sender's delta in this circuit's run."""

    def first_difference(self, masks: torch.Tensor, graph: EdgeGraph) -> int:
        """The lowest layer with a receiver whose edges differ from this prefix's in any of ``masks``."""
        differs = (masks != self.mask.to(masks.device)).any(0).any(-1)
        rows = torch.nonzero(differs).flatten()
        if not len(rows):
            return graph.shape.n_layers
        return min(int(rows[0]) // graph.receivers_per_layer, graph.shape.n_layers)


PREFIX_BUDGET_FLOATS = 2.5e8
"""Largest prefix kept per evaluator (1 GB in float32); larger prompt sets recompute from layer 0."""


class PrefixCache:
    """The :class:`Prefix` one evaluator remembers between edge-level batches (``Evaluator.edge_prefixes``).

    It belongs to the evaluator, so it lives and dies with it and never crosses to another model,
    prompt set or ablation: a prefix is only valid for the state it was computed from."""

    def __init__(self) -> None:
        self.prefix: Prefix | None = None

    def clear(self) -> None:
        """Forgets the prefix: the next batch is computed from layer 0 (and recorded anew)."""
        self.prefix = None


class ScoringInputs(ForwardInputs, Protocol):
    """What :func:`edge_metric_values` reads: the forward's inputs and the evaluator's prefix cache."""

    @property
    def edge_prefixes(self) -> PrefixCache: ...


class _Senders:
    """The deltas of the senders computed so far: the prefix's (shared by every circuit) below the
    first recomputed layer, then this batch's own, [c, A, n, p, d] in push order."""

    def __init__(
        self,
        shared: torch.Tensor | None,
        shared_count: int,
        computed: list[int],
        c: int,
        n: int,
        p: int,
        d: int,
        like: torch.Tensor,
        differentiable: bool,
    ) -> None:
        self.shared = shared  # [S0, n, p, d] or None
        self.shared_count = shared_count
        self.column_list = computed  # sender index of each own slot, ascending
        self.columns = torch.tensor(computed, dtype=torch.long)
        self.filled = 0
        self.pieces: list[torch.Tensor] = []
        self.buffer = (
            None if differentiable else torch.empty(c, len(computed), n, p, d, device=like.device, dtype=like.dtype)
        )

    def push(self, delta: torch.Tensor, last_only: bool) -> None:  # [c, k, n, p or 1, d]
        k = delta.shape[1]
        if self.buffer is None:
            self.pieces.append(delta)
        elif last_only:
            self.buffer[:, self.filled : self.filled + k, :, -1:] = delta
        else:
            self.buffer[:, self.filled : self.filled + k] = delta
        self.filled += k

    def own(self) -> torch.Tensor:
        if self.buffer is not None:
            return self.buffer[:, : self.filled]
        return torch.cat(self.pieces, dim=1)

    def mix(self, weights: torch.Tensor, last: bool) -> torch.Tensor | None:
        """sum_s weights[..., s] delta_s for weights [c, k, S] over every sender index: [c, k, n, p', d]
        (None when every weight is zero). Only the senders with a nonzero weight are read."""
        c, k, _ = weights.shape
        out = None
        parts: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
        if self.shared is not None and self.shared_count:
            parts.append((weights[:, :, : self.shared_count], self.shared, True))
        # own senders the weights reach (a parallel block's MLP does not read its own layer's heads)
        reach = bisect.bisect_left(self.column_list, weights.shape[-1], 0, self.filled)
        if reach:
            own_w = weights[:, :, self.columns[:reach].to(weights.device)]
            parts.append((own_w, self.own()[:, :reach], False))
        for w, deltas, shared in parts:
            if not torch.is_grad_enabled() or not w.requires_grad:
                nonzero = torch.nonzero(w.detach().abs().sum((0, 1)) > 0).flatten()
                if not len(nonzero):
                    continue
                if len(nonzero) < 0.6 * w.shape[-1]:  # a sparse update: read only those senders
                    w = w[:, :, nonzero]
                    deltas = deltas[nonzero] if shared else deltas[:, nonzero]
            if last:
                deltas = deltas[..., -1:, :]
            tail = deltas.shape[-3:] if shared else deltas.shape[2:]
            if shared:
                flat = deltas.reshape(deltas.shape[0], -1)
                term = (w.reshape(c * k, -1) @ flat).view(c, k, *tail)
            else:
                flat = deltas.reshape(c, deltas.shape[1], -1)
                term = torch.bmm(w, flat).view(c, k, *tail)
            out = term if out is None else out + term
        return out


def _group_form(
    weights_kept: torch.Tensor, weights_removed: torch.Tensor, every_row_own: bool
) -> tuple[bool, list[int]]:
    """(kept form?, the group's rows that need a stream of their own in it): the kept form when no
    more receivers have a nonzero kept weight than a nonzero removed one. ``every_row_own`` (probes):
    the kept form, every row its own."""
    if every_row_own:
        return True, list(range(weights_kept.shape[1]))
    own_kept = torch.nonzero(weights_kept.abs().sum((0, 2)) > 0).flatten().tolist()
    own_removed = torch.nonzero(weights_removed.abs().sum((0, 2)) > 0).flatten().tolist()
    return (True, own_kept) if len(own_kept) <= len(own_removed) else (False, own_removed)


@dataclass(frozen=True, eq=False)
class _Plan:
    """What one edge-level run computes, decided from the masks before any layer runs (:func:`_plan`)."""

    start_layer: int
    """The first layer computed; below it the state is the prefix's."""
    first_sender: int
    """The senders below it are the prefix's (the embedding among them); none when starting at layer 0."""
    kept_form: dict[int, bool]
    """Per receiver group (keyed by its first row): whether it reads the kept form (else the removed one)."""
    own_rows: dict[int, list[int]]
    """Per receiver group: its rows (offsets from the first) that read a stream of their own."""
    computed: set[int]
    """Senders whose output this run needs: a kept weight somewhere, or any sender below a group read in
    the removed form, whose shared stream holds them all."""
    stored: list[int]
    """Senders whose own delta some receiver reads (a nonzero weight in its group's form), ascending:
    the senders' buffer keeps these."""
    stored_set: set[int]
    last_head_layer: int
    """The last layer with a computed head (-1: none); after its attention only the last position matters."""
    track_resid: bool
    """Whether the removed-form stream is needed (a group reads it, or the run is recorded)."""
    may_trim: bool
    """Whether the run may drop every position but the last once nothing mixes positions any more
    (not when recording a prefix, which keeps every position, nor with gradients)."""


def _receiver_groups(graph: EdgeGraph, parallel: bool, start_layer: int) -> list[tuple[int, int, int]]:
    """(first row, row count, senders before the group) of every receiver group from ``start_layer`` on:
    each layer's head inputs and MLP, then the logits. A parallel block's MLP reads the block's input,
    so no head of its own layer."""
    H = graph.shape.n_heads
    groups: list[tuple[int, int, int]] = []
    for layer in range(start_layer, graph.shape.n_layers):
        r0 = layer * graph.receivers_per_layer
        groups.append((r0, 3 * H, graph.layer_start(layer)))
        groups.append((r0 + 3 * H, 1, graph.layer_start(layer) + (0 if parallel else H)))
    groups.append((len(graph.receivers) - 1, 1, len(graph.senders)))
    return groups


def _plan(
    graph: EdgeGraph,
    parallel: bool,
    masks: torch.Tensor,
    valid: torch.Tensor,
    start_layer: int,
    differentiable: bool,
    every_row_own: bool,
    record: bool,
) -> _Plan:
    """Reads ``masks`` [c, R, S] and ``valid`` [R, S]; decides each group's form and own rows and which
    senders are computed and stored (with ``record`` or gradients: every sender from the start on)."""
    S = len(graph.senders)
    first_sender = graph.layer_start(start_layer) if start_layer > 0 else 0
    kept_form: dict[int, bool] = {}
    own_rows: dict[int, list[int]] = {}
    computed_mask = torch.zeros(S, dtype=torch.bool, device=masks.device)
    stored_mask = torch.zeros(S, dtype=torch.bool, device=masks.device)
    for r0, count, before in _receiver_groups(graph, parallel, start_layer):
        w_kept = masks[:, r0 : r0 + count, :before]
        w_removed = valid[r0 : r0 + count, :before] - w_kept
        if differentiable and not every_row_own:  # gradients in every kept weight: every row reads its own
            kept, own = True, list(range(count))
        else:
            kept, own = _group_form(w_kept, w_removed, every_row_own)
        kept_form[r0], own_rows[r0] = kept, own
        reads = (w_kept if kept else w_removed).abs().sum((0, 1)) > 0
        stored_mask[:before] |= reads
        computed_mask[:before] |= reads if kept else True
    if record or differentiable:
        computed_mask[:] = True
        stored_mask[:] = True
    computed_mask[:first_sender] = False  # below the start: the prefix's
    stored_mask[:first_sender] = False
    computed = torch.nonzero(computed_mask).flatten().tolist()
    stored = torch.nonzero(stored_mask).flatten().tolist()
    head_layers = [graph.senders[i].layer for i in computed if graph.senders[i].kind == "head"]
    return _Plan(
        start_layer=start_layer,
        first_sender=first_sender,
        kept_form=kept_form,
        own_rows=own_rows,
        computed=set(computed),
        stored=stored,
        stored_set=set(stored),
        last_head_layer=max(head_layers, default=-1),
        track_resid=record or not all(kept_form.values()),
        may_trim=not record and not differentiable,
    )


@dataclass(frozen=True, eq=False)
class _LayerHeads:
    """The heads one layer computes, and at which query positions."""

    layer: int
    heads: list[int]
    """The computed heads, ascending."""
    index: torch.Tensor | None
    """``heads`` as a tensor for the engine's head selection (None: every head)."""
    queries_last: bool
    """Only the last query position (nothing after this layer reads the others)."""
    q_pos: torch.Tensor
    """The query positions."""


class _Run:
    """One edge-level forward in progress: the two shared streams, the senders' deltas so far, and
    what the receivers read. :func:`_forward` drives it layer by layer: :meth:`heads`, :meth:`mlp`,
    then :meth:`readout`.

    ``base`` [1 or c, n, p', d] is the kept-form stream (every ablatable sender replaced), ``resid``
    the removed-form one (every sender present, updated only when the plan tracks it); ``p'`` drops
    to 1 once ``last_only`` is set."""

    def __init__(
        self,
        evaluator: ForwardInputs,
        graph: EdgeGraph,
        plan: _Plan,
        masks: torch.Tensor,
        valid: torch.Tensor,
        probes: torch.Tensor | None,
        differentiable: bool,
        prefix: Prefix | None,
        embedding: torch.Tensor | None,
    ) -> None:
        self.graph = graph
        self.plan = plan
        self.eng: Engine = evaluator.engine
        self.rep = evaluator.replacement
        self.masks = masks
        self.valid = valid
        self.probes = probes
        self.c = masks.shape[0]
        self.last_only = False
        self.bases: list[torch.Tensor] = []
        self.resids: list[torch.Tensor] = []
        self.base, self.resid, self.senders = self._start_state(evaluator, prefix, embedding, differentiable)
        self.block_resid = self.resid
        """The removed-form stream entering the current block (a parallel block's MLP reads it)."""
        self.positions = torch.arange(self.base.shape[2], device=self.base.device)

    def _start_state(
        self, evaluator: ForwardInputs, prefix: Prefix | None, embedding: torch.Tensor | None, differentiable: bool
    ) -> tuple[torch.Tensor, torch.Tensor, _Senders]:
        """(base, resid, senders) at the start layer. From a prefix: its streams there and its deltas of
        the senders below. From scratch: the clean embedding (or ``embedding`` [n, p, d]) as ``resid``;
        ``base`` starts from the replacement embedding when the embedding is ablatable, and its delta
        (the first sender's) is pushed when some receiver reads it."""
        graph, plan, rep = self.graph, self.plan, self.rep
        if prefix is not None and plan.start_layer > 0:
            base = prefix.base[plan.start_layer].unsqueeze(0)
            resid = prefix.resid[plan.start_layer].unsqueeze(0)
            shared = prefix.deltas[: plan.first_sender]
        else:
            x0 = self.eng.embed(evaluator.dataset.clean_ids) if embedding is None else embedding  # [n, p, d]
            resid = x0.unsqueeze(0)
            base = rep.embed.unsqueeze(0).expand_as(resid) if graph.ablate_embed else resid
            shared = None
        n, p, d = resid.shape[1:]
        senders = _Senders(shared, plan.first_sender, plan.stored, self.c, n, p, d, resid, differentiable)
        if graph.ablate_embed and plan.start_layer == 0 and 0 in plan.stored_set:
            senders.push((resid - rep.embed).unsqueeze(1).expand(self.c, 1, n, p, d), False)
        return base, resid, senders

    def remember_layer_input(self) -> None:
        """With a recorded prefix: keeps both streams entering the next layer (or the logits)."""
        self.bases.append(self.base[0])
        self.resids.append(self.resid[0])

    def receiver_inputs(
        self, r0: int, rows: list[int], before: int, kept: bool, last: bool, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inputs of receiver rows ``r0 + rows`` [c, k, n, p', d] in the group's form; ``start``: the
        shared stream they differ from (default: the form's, ``base`` or ``resid``). Reads the masks,
        the senders' deltas below ``before`` and the probes; writes nothing."""
        masks, c = self.masks, self.c
        idx = torch.tensor([r0 + r for r in rows], device=masks.device)
        if start is None:
            start = self.base if kept else self.resid
        start = start[:, None, :, -1:] if last and not self.last_only else start[:, None]
        w = masks[:, idx, :before] if kept else self.valid[idx, :before] - masks[:, idx, :before]
        mixed = self.senders.mix(w if kept else -w, last)
        out = start.expand(c, len(rows), -1, -1, -1)
        if mixed is not None:
            out = out + mixed
        if self.probes is not None:
            pr = self.probes[:, idx]
            out = out + (pr[:, :, :, -1:] if last else pr)
        return out

    def _trim_to_last(self) -> None:
        """Drops every position but the last from the streams: nothing after this point mixes positions."""
        self.last_only = True
        self.base, self.resid = self.base[:, :, -1:], self.resid[:, :, -1:]
        self.block_resid = self.block_resid[:, :, -1:]

    def heads(self, layer: int) -> None:
        """Layer ``layer``'s attention. Reads the streams and the heads' q/k/v inputs; pushes the stored
        heads' deltas to the senders, adds every computed head's delta to ``resid`` (when tracked), and
        trims to the last position once no later head is computed. ``base`` is left as it was: the
        heads' replacement share is added by :meth:`mlp`."""
        plan, eng = self.plan, self.eng
        self.block_resid = self.resid
        heads_here = [h for h in range(self.graph.shape.n_heads) if self.graph.layer_start(layer) + h in plan.computed]
        queries_last = plan.may_trim and layer >= plan.last_head_layer
        if heads_here:
            all_heads = len(heads_here) == self.graph.shape.n_heads
            lh = _LayerHeads(
                layer,
                heads_here,
                None if all_heads else torch.tensor(heads_here, device=self.base.device),
                queries_last,
                self.positions[-1:] if queries_last else self.positions,
            )
            q, k, v = self._head_projections(lh)
            z = eng.attend(q, k, v, lh.q_pos)  # [c, n, q, k, e]
            z_rep = self.rep.z[layer][:, lh.q_pos]
            z_delta = z - (z_rep if all_heads else z_rep[:, :, lh.index])
            if queries_last and not self.last_only:
                self._trim_to_last()  # nothing after this layer's attention mixes positions
            self._push_head_deltas(lh, z_delta)
            if plan.track_resid:  # every computed head's delta at once, through W_O
                W_O = eng.layers[layer].W_O if lh.index is None else eng.layers[layer].W_O[lh.index]
                self.resid = self.resid + z_delta.flatten(-2) @ W_O.flatten(0, 1)
        if not self.last_only and plan.may_trim and layer > plan.last_head_layer:
            self._trim_to_last()

    def _head_projections(self, lh: _LayerHeads) -> list[torch.Tensor]:
        """q, k, v [c or 1, n, q or p, k, e] of the layer's computed heads. Rows that read a stream of
        their own are normalised and projected per head; the others share one projection of the
        group's stream, as in a plain forward."""
        r0 = lh.layer * self.graph.receivers_per_layer
        kept = self.plan.kept_form[r0]
        start = self.base if kept else self.resid
        # the q/k/v rows of the computed heads that read a stream of their own
        wanted = {3 * h + i for h in lh.heads for i in range(3)}
        own = [r for r in self.plan.own_rows[r0] if r in wanted]
        own_normed = None
        if own:
            inputs = self.receiver_inputs(r0, own, self.graph.layer_start(lh.layer), kept, False)
            own_normed = self.eng.ln1(lh.layer, inputs)
        shared_normed = self.eng.ln1(lh.layer, start) if len(own) < 3 * len(lh.heads) else None
        return [self._project(lh, i, which, own, own_normed, shared_normed) for i, which in enumerate(HEAD_INPUTS)]

    def _project(
        self,
        lh: _LayerHeads,
        i: int,
        which: HeadInput,
        own: list[int],
        own_normed: torch.Tensor | None,
        shared_normed: torch.Tensor | None,
    ) -> torch.Tensor:
        """One of q, k, v (``which``, the ``i``-th head input) for the layer's computed heads: from the
        shared normed stream, with the heads whose input reads its own stream (rows ``own``, normed
        ``own_normed`` [c, k, n, p, d]) projected from theirs."""
        eng = self.eng
        last_query = which == "q" and lh.queries_last
        pos = lh.q_pos if which == "q" else self.positions
        own_here = [(j, r) for j, r in enumerate(own) if r % 3 == i]
        if own_here:
            assert own_normed is not None
            x = own_normed[:, [j for j, _ in own_here]].transpose(1, 2)  # [c, n, k, p, d]
            if last_query:
                x = x[..., -1:, :]
            if len(own_here) == len(lh.heads):  # every head reads its own stream
                return eng.project(lh.layer, which, x, lh.index, pos, per_head_input=True)
        assert shared_normed is not None
        sx = shared_normed[..., -1:, :] if last_query else shared_normed
        out = eng.project(lh.layer, which, sx, lh.index, pos)  # [c', n, p, k, e]
        if own_here:
            out = out.expand(self.c, *out.shape[1:]).clone()
            slot = [lh.heads.index(r // 3) for _, r in own_here]
            heads_own = torch.tensor([r // 3 for _, r in own_here], device=self.base.device)
            out[..., slot, :] = eng.project(lh.layer, which, x, heads_own, pos, per_head_input=True)
        return out

    def _push_head_deltas(self, lh: _LayerHeads, z_delta: torch.Tensor) -> None:
        """Pushes the output deltas of the layer's stored heads (``z_delta`` [1 or c, n, q, k, e] per
        computed head) to the senders' buffer, [c, k, n, q, d]."""
        start = self.graph.layer_start(lh.layer)
        keep = [j for j, h in enumerate(lh.heads) if start + h in self.plan.stored_set]
        if not keep:
            return
        every = len(keep) == len(lh.heads)
        which_heads = lh.index if every else torch.tensor([lh.heads[j] for j in keep], device=self.base.device)
        delta = self.eng.head_outputs(lh.layer, z_delta if every else z_delta[..., keep, :], which_heads)
        self.senders.push(delta.expand(self.c, *delta.shape[1:]).transpose(1, 2), self.last_only)

    def mlp(self, layer: int) -> None:
        """Layer ``layer``'s MLP. Adds the heads' replacement share (``attn_constant``) to both streams,
        then the MLP: its replacement when it is ablatable and not computed; else computed from its
        input (the form's stream entering it, or its own), pushed as a sender when stored, and added
        to ``base`` (kept MLPs) or its replacement is (ablatable ones), its output to ``resid``."""
        graph, plan, eng, rep = self.graph, self.plan, self.eng, self.rep
        pos_sl = slice(-1, None) if self.last_only else slice(None)
        block_base = self.base  # the kept-form stream entering the block: this layer's heads are in the buffer
        self.base = self.base + rep.attn_constant[layer][:, pos_sl]
        if plan.track_resid:
            self.resid = self.resid + rep.attn_constant[layer][:, pos_sl]
        # the MLP reads this layer's heads too (its row comes after them), except in parallel blocks,
        # where it reads the block's input and the graph has no head -> MLP edge within the layer
        H = graph.shape.n_heads
        m_sender = graph.layer_start(layer) + H
        if graph.ablate_mlps and m_sender not in plan.computed:
            self.base = self.base + rep.mlp_out[layer][:, pos_sl]
            if plan.track_resid:
                self.resid = self.resid + rep.mlp_out[layer][:, pos_sl]
            return
        m_row = layer * graph.receivers_per_layer + 3 * H
        before = graph.layer_start(layer) + (0 if eng.parallel else H)
        kept = plan.kept_form[m_row]
        start = eng.mlp_input(block_base, self.base) if kept else eng.mlp_input(self.block_resid, self.resid)
        if plan.own_rows[m_row]:
            m_in = self.receiver_inputs(m_row, [0], before, kept, self.last_only, start=start)[:, 0]
        else:
            m_in = start
        m_out = eng.mlp(layer, eng.ln2(layer, m_in))
        if graph.ablate_mlps:
            if m_sender in plan.stored_set:
                m_delta = (m_out - rep.mlp_out[layer][:, pos_sl]).expand(self.c, *m_out.shape[1:])
                self.senders.push(m_delta.unsqueeze(1), self.last_only)
            self.base = self.base + rep.mlp_out[layer][:, pos_sl]
        else:
            self.base = self.base + m_out
        if plan.track_resid:
            self.resid = self.resid + m_out

    def readout(self, evaluator: ForwardInputs) -> torch.Tensor:
        """The per-circuit, per-prompt metric [c, n]: the logits slot's input at the last position,
        final-normed, read out by the evaluator."""
        logits_row = len(self.graph.receivers) - 1
        kept = self.plan.kept_form[logits_row]
        final_in = self.receiver_inputs(logits_row, [0], len(self.graph.senders), kept, True)[:, 0, :, -1]
        return evaluator.readout(self.eng.final_norm(final_in))

    def recorded(self) -> Prefix:
        """The one circuit's :class:`Prefix`: its mask, the streams :meth:`remember_layer_input` kept and
        every sender's delta."""
        return Prefix(self.masks[0].detach(), tuple(self.bases), tuple(self.resids), self.senders.own()[0].detach())


def _forward(
    evaluator: ForwardInputs,
    masks: torch.Tensor,
    probes: torch.Tensor | None = None,
    embedding: torch.Tensor | None = None,
    prefix: Prefix | None = None,
    start_layer: int = 0,
    record: bool = False,
) -> tuple[torch.Tensor, Prefix | None]:
    """Per-circuit, per-prompt metric [c, n] of ``masks`` [c, R, S], computed from ``start_layer``
    on (below it the state is ``prefix``'s, which must agree with ``masks`` there); with ``record``
    (one circuit) also that circuit's :class:`Prefix`."""
    graph = graph_of(evaluator)
    eng: Engine = evaluator.engine
    masks = masks.to(device=eng.device, dtype=eng.dtype)
    valid = graph.valid.to(device=eng.device, dtype=eng.dtype)
    differentiable = torch.is_grad_enabled() and (masks.requires_grad or probes is not None)
    plan = _plan(graph, eng.parallel, masks, valid, start_layer, differentiable, probes is not None, record)
    run = _Run(evaluator, graph, plan, masks, valid, probes, differentiable, prefix, embedding)
    for layer in range(start_layer, eng.n_layers):
        if record:
            run.remember_layer_input()
        run.heads(layer)
        run.mlp(layer)
    if record:
        run.remember_layer_input()
    return run.readout(evaluator), run.recorded() if record else None


def edge_forward(
    evaluator: ForwardInputs,
    masks: torch.Tensor,
    probes: torch.Tensor | None = None,
    embedding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-circuit, per-prompt metric [c, n] of edge masks ``masks`` [c, R, S] (floats; 1 kept, 0 ablated).

    ``embedding`` [n, p, d] replaces the clean prompts' input embedding. Differentiable in ``masks``
    and in ``probes`` [c, R, n, p, d], which is added to each receiver slot's input (zeros: no
    change; the gradient there is dMetric/d(receiver input)). The logits slot reads only the last
    position. Without gradients only the senders some receiver reads are computed, and after the
    last computed head only the last position.
    """
    return _forward(evaluator, masks, probes, embedding)[0]


def _chunk_size(evaluator: ForwardInputs, graph: EdgeGraph, budget_floats: float = 1.2e8) -> int:
    n, p = evaluator.dataset.clean_ids.shape
    d = evaluator.engine.d_model
    per_circuit = (len(graph.senders) + graph.receivers_per_layer + 4) * n * p * d
    return max(1, int(budget_floats // per_circuit))


def _prefix_fits(evaluator: ForwardInputs, graph: EdgeGraph) -> bool:
    n, p = evaluator.dataset.clean_ids.shape
    return (len(graph.senders) + 2 * (graph.shape.n_layers + 1)) * n * p * evaluator.engine.d_model <= (
        PREFIX_BUDGET_FLOATS
    )


@torch.no_grad()
def edge_metric_values(evaluator: ScoringInputs, circuits: Sequence[Circuit]) -> np.ndarray:
    """The metric (mean over prompts) of each edge-level circuit; equal circuits computed once.

    A batch whose circuits agree with the evaluator's remembered :class:`Prefix` (its
    ``edge_prefixes``) below some layer is computed from that layer on; a batch computed from scratch
    leaves its first circuit as the new prefix when there is none yet (recorded in the same pass when
    it is alone)."""
    graph = graph_of(evaluator)
    unique: dict[str, int] = {}
    order = [unique.setdefault(c.key, len(unique)) for c in circuits]
    firsts: dict[int, Circuit] = {}
    for c, u in zip(circuits, order):
        firsts.setdefault(u, c)
    distinct = [firsts[u] for u in range(len(unique))]
    values = np.empty(len(distinct), dtype=np.float64)
    chunk = _chunk_size(evaluator, graph)
    cache = evaluator.edge_prefixes if _prefix_fits(evaluator, graph) else None
    for start in range(0, len(distinct), chunk):
        batch = distinct[start : start + chunk]
        masks = graph.mask(batch)
        prefix = cache.prefix if cache is not None else None
        layer = prefix.first_difference(masks, graph) if prefix is not None else 0
        if layer > 0:
            out, _ = _forward(evaluator, masks, prefix=prefix, start_layer=layer)
        elif cache is not None and len(batch) == 1:
            out, cache.prefix = _forward(evaluator, masks, record=True)
        else:
            out, _ = _forward(evaluator, masks)
            if cache is not None and prefix is None:
                cache.prefix = _forward(evaluator, masks[:1], record=True)[1]
        values[start : start + len(batch)] = out.mean(-1).double().cpu().numpy()
    return values[np.array(order, dtype=np.int64)]


# --- attribution -----------------------------------------------------------------------------------


def _rows(t: torch.Tensor, rows: slice) -> torch.Tensor:
    """A per-prompt tensor's rows (a mean or zero replacement has one row, shared)."""
    return t if t.shape[0] == 1 else t[rows]


def _dataset_rows(dataset: Any, rows: slice) -> Any:
    return replace(
        dataset,
        examples=dataset.examples[rows],
        clean_ids=dataset.clean_ids[rows],
        corrupt_ids=dataset.corrupt_ids[rows],
        answer_weights=dataset.answer_weights[rows],
    )


def attribution_prompt_batch(evaluator: ForwardInputs, budget_floats: float = 1.5e8) -> int:
    """Prompts per backward pass so that attribution's activations stay near ``budget_floats`` floats
    (600 MB): about 400 residual-sized tensors per prompt, most of them the senders' deltas."""
    graph = graph_of(evaluator)
    p = evaluator.dataset.seq_len
    per_prompt = (len(graph.senders) + 20 * graph.shape.n_layers + 40) * p * evaluator.engine.d_model
    return max(1, int(budget_floats // per_prompt))


def edge_attribution(
    evaluator: ForwardInputs,
    steps: int = 1,
    interpolate: Literal["inputs", "edges"] | None = None,
    prompt_batch: int | None = None,
    progress: Callable[[int, int | None, str], None] | None = None,
) -> tuple[list[Edge], np.ndarray]:
    """EAP or EAP-IG scores of every ablatable edge, in :attr:`EdgeGraph.edges` order.

    score(s -> r) = (rep_s - out_s) . mean over alpha of dMetric/d input(r) at alpha, where out_s is
    the sender's output in the clean (unablated) run and rep_s its replacement: the first-order
    estimate of the metric change when that one edge is ablated (negative: the edge helps).
    Where the gradient is taken:

    - ``interpolate="inputs"`` (EAP-IG as published, Hanna et al. 2024, hannamw/EAP-IG
      ``get_scores_eap_ig``): averaged over ``steps`` runs of the full model on the input
      embedding ``corrupt + alpha (clean - corrupt)`` with alpha = k / steps, k = 0 .. steps-1,
      for every ``steps`` (one step: the gradient at the corrupted input, alpha = 0);
    - ``interpolate="edges"`` with ``steps > 1``: averaged over ``steps`` runs with every ablatable
      edge scaled by alpha = (k + 1/2) / steps, interpolating from the empty circuit (alpha = 0) to
      the full model (this project's earlier variant, kept as ``eap-ig-edges``); with one step it
      is plain EAP;
    - ``interpolate=None`` (the default): plain EAP, the gradient of one run of the full model on
      the clean input, when ``steps`` is 1; over inputs as above when it is more.

    With every edge present each receiver reads the plain residual stream, so EAP and EAP-IG over
    inputs are plain forwards and one backward each: the gradient at a head's q, k or v input is
    taken from the gradient at its q, k or v through that head's own norm and projection. Prompts
    go ``prompt_batch`` at a time (default :func:`attribution_prompt_batch`), which bounds memory.
    ``progress`` hears of each forward + backward pass done (of prompt batches x steps). Prompts of
    several lengths are attributed one length group at a time; the scores are means over prompts,
    so the groups' scores are combined weighted by their prompt counts.
    """
    # Over 60 lines mostly in its docstring: the estimate's conventions (sign, alpha grid, interpolation)
    # are what a reader checks against the papers, so they stay beside the loop that implements them.
    groups = getattr(evaluator, "groups", ())
    if groups:
        total: np.ndarray | None = None
        for i, group in enumerate(groups):

            def told(done: int, count: int | None, message: str, i: int = i) -> None:
                if progress:
                    progress(done, count, f"length group {i + 1}/{len(groups)}: {message}")

            edges, part = edge_attribution(group, steps, interpolate, prompt_batch, told)
            part = part * (group.dataset.n / evaluator.dataset.n)
            total = part if total is None else total + part
        assert total is not None
        return edges, total
    graph = graph_of(evaluator)
    if interpolate == "edges" and steps > 1:
        return graph.edges, _attribution_through_masks(evaluator, steps)
    eng: Engine = evaluator.engine
    ds = evaluator.dataset
    n = ds.n
    batch = prompt_batch or attribution_prompt_batch(evaluator)
    # plain EAP (the clean input, alpha = 1) unless the inputs are interpolated; "inputs" always is
    plain = interpolate != "inputs" and steps <= 1
    alphas = [1.0] if plain else [k / steps for k in range(steps)]
    scores = torch.zeros(len(graph.receivers), len(graph.senders), dtype=torch.float64, device=eng.device)
    passes, done = len(alphas) * -(-n // batch), 0
    for lo in range(0, n, batch):
        rows = slice(lo, min(n, lo + batch))
        clean_x = eng.embed(ds.clean_ids[rows])
        corrupt_x = None if plain else eng.embed(ds.corrupt_ids[rows])
        deltas = None if plain else sender_deltas(evaluator, rows)
        for alpha in alphas:
            x = clean_x if corrupt_x is None else corrupt_x + alpha * (clean_x - corrupt_x)
            scores += _gradient_scores(evaluator, x, rows, deltas) / len(alphas)
            done += 1
            if progress:
                progress(done, passes, f"attribution: prompts {rows.start}-{rows.stop - 1}, alpha {alpha:.2f}")
    r, s = graph.positions
    return graph.edges, scores[torch.from_numpy(r), torch.from_numpy(s)].cpu().numpy()


def _gradient_scores(
    evaluator: ForwardInputs, x: torch.Tensor, rows: slice, deltas: torch.Tensor | None
) -> torch.Tensor:
    """-(delta_s . dMetric/d input(r)) for every (receiver, sender) cell [R, S] (float64) from one
    forward of the full model on input embedding ``x`` [b, p, d] (prompts ``rows``) and one backward.
    ``deltas`` [S, b, p, d]: the senders' deltas to score with (None: this run's)."""
    # Over 60 lines on purpose: one forward and one backward whose per-layer inputs (residuals, q/k/v,
    # MLP inputs) must be kept in one autograd graph and read back in the same order after the backward.
    graph = graph_of(evaluator)
    eng: Engine = evaluator.engine
    rep = evaluator.replacement
    b, p, d = x.shape
    H = evaluator.shape.n_heads
    positions = torch.arange(p, device=x.device)
    resid_in: list[torch.Tensor] = []
    projections: list[tuple[torch.Tensor, ...]] = []
    mlp_inputs: list[torch.Tensor] = []
    own: list[torch.Tensor] = []
    if deltas is None and graph.ablate_embed:
        own.append((x - _rows(rep.embed, rows)).unsqueeze(0))
    with torch.enable_grad():
        h = x.detach().requires_grad_()  # a leaf: the weights are constants here
        for layer in range(eng.n_layers):
            resid_in.append(h.detach())
            normed = eng.ln1(layer, h)
            qkv = tuple(eng.project(layer, w, normed, None, positions) for w in HEAD_INPUTS)  # [b, p, H, e]
            for t in qkv:
                t.retain_grad()
            projections.append(qkv)
            z = eng.attend(qkv[0], qkv[1], qkv[2], positions)
            after = h + eng.attention_output(layer, z)
            m_in = eng.mlp_input(h, after).view_as(h)  # its own node: the gradient through the MLP alone
            m_in.retain_grad()
            mlp_inputs.append(m_in)
            m_out = eng.mlp(layer, eng.ln2(layer, m_in))
            if deltas is None:
                with torch.no_grad():
                    own.append(eng.head_outputs(layer, z - _rows(rep.z[layer], rows)).transpose(0, 1))
                    if graph.ablate_mlps:
                        own.append((m_out - _rows(rep.mlp_out[layer], rows)).unsqueeze(0))
            h = after + m_out
        final_in = h[:, -1]
        final_in.retain_grad()
        needs_reference = reads_full_model_reference(evaluator.metric_name)
        reference = getattr(evaluator, "reference_logprobs", None) if needs_reference else None
        per_prompt = per_prompt_metric(
            eng,
            _dataset_rows(evaluator.dataset, rows),
            eng.final_norm(final_in),
            evaluator.metric_name,
            None if reference is None else reference[rows],
        )
        (per_prompt.sum() / evaluator.dataset.n).backward()
    D = torch.cat(own, dim=0) if deltas is None else deltas  # [S, b, p, d]
    D_flat = D.reshape(D.shape[0], -1)
    scores = torch.zeros(len(graph.receivers), len(graph.senders), dtype=torch.float64, device=x.device)
    per_layer_r = graph.receivers_per_layer
    for layer in range(eng.n_layers):
        # the gradient at each head's own q, k, v input: back through that head's norm and projection
        slots = [resid_in[layer].unsqueeze(1).expand(b, H, p, d).clone().requires_grad_() for _ in range(3)]
        with torch.enable_grad():
            outs = [
                eng.project(layer, w, eng.ln1(layer, s), None, positions, per_head_input=True)
                for w, s in zip(HEAD_INPUTS, slots)
            ]
            grads = torch.autograd.grad(outs, slots, grad_outputs=[t.grad for t in projections[layer]])
        heads = torch.stack(grads, dim=2).reshape(b, 3 * H, p, d)  # rows 3h + (q, k, v), as the graph's
        mlp_grad = mlp_inputs[layer].grad
        assert mlp_grad is not None
        G = torch.cat([heads, mlp_grad.unsqueeze(1)], dim=1).transpose(0, 1)  # [3H + 1, b, p, d]
        before = min(len(graph.senders), graph.layer_start(layer) + H)
        r0 = layer * per_layer_r
        scores[r0 : r0 + per_layer_r, :before] = -(G.reshape(per_layer_r, -1) @ D_flat[:before].T).double()
    g_final = final_in.grad  # [b, d]
    assert g_final is not None
    scores[-1] = -torch.einsum("sbd,bd->s", D[:, :, -1], g_final).double()
    return scores


def _attribution_through_masks(evaluator: ForwardInputs, steps: int) -> np.ndarray:
    """EAP-IG over edge scaling: gradients at probes on every receiver of the masked forward."""
    graph = graph_of(evaluator)
    eng: Engine = evaluator.engine
    n, p = evaluator.dataset.clean_ids.shape
    R = len(graph.receivers)
    valid = graph.full_mask().to(eng.device)
    grad_sum = torch.zeros(R, n, p, eng.d_model, device=eng.device)
    for k in range(steps):
        alpha = (k + 0.5) / steps
        probes = torch.zeros(1, R, n, p, eng.d_model, device=eng.device, requires_grad=True)
        metric = edge_forward(evaluator, valid * alpha, probes).mean()
        (grad,) = torch.autograd.grad(metric, probes)
        grad_sum += grad[0]
    deltas = sender_deltas(evaluator)  # [S, n, p, d]
    scores = -torch.einsum("snpd,rnpd->rs", deltas, grad_sum / steps)
    r, s = graph.positions
    return scores[torch.from_numpy(r), torch.from_numpy(s)].double().cpu().numpy()


@torch.no_grad()
def sender_deltas(evaluator: ForwardInputs, rows: slice = slice(None)) -> torch.Tensor:
    """[S, n, p, d]: each ablatable sender's clean output minus its replacement (prompts ``rows``)."""
    graph = graph_of(evaluator)
    eng: Engine = evaluator.engine
    rep = evaluator.replacement
    rec = record_forward(eng, evaluator.dataset.clean_ids[rows])
    out = [(rec.embed - _rows(rep.embed, rows)).unsqueeze(0)] if graph.ablate_embed else []
    for layer in range(eng.n_layers):
        out.append(eng.head_outputs(layer, rec.z[layer] - _rows(rep.z[layer], rows)).transpose(0, 1))  # [h, n, p, d]
        if graph.ablate_mlps:
            out.append((rec.mlp_out[layer] - _rows(rep.mlp_out[layer], rows)).unsqueeze(0))
    return torch.cat(out, dim=0)
