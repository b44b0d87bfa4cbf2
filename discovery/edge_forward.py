"""Edge-level ablation: a forward pass in which every receiver input has its own residual stream.

Semantics. An edge ``s -> r`` is a sender's output read by one input of a receiver (a head's q, k
or v, an MLP, or the logits). In an edge-level circuit every receiver input is

    input(r) = embed + sum over senders s before r of (edge kept ? out_s : rep_s) + biases

where ``out_s`` is the sender's output *in this run* (computed from its own, possibly ablated,
inputs) and ``rep_s`` its replacement output from ``evaluator.replacement`` (the mean / resampled
/ zero value the node-level ablation uses). Edge-level ablation removes exactly what node-level
ablation removes: edges leaving heads, and edges leaving MLPs when the ablation has
``ablate_mlps``. The embedding, and MLPs when they are kept, are never ablated at node level, so
their edges are always present here too (listing them in a circuit changes nothing). That makes
the two levels agree where they should:

- all edges = the full model; no edges = the node-level empty circuit (``ablated_metric``), so
  edge circuits are normalised on the same scale as node circuits;
- a node circuit C equals the edge circuit of every edge leaving C's components.

Gradients. :func:`edge_forward` takes edge masks as a float tensor, so it is differentiable in
the masks and (through ``probes``) in every receiver input: that is what EAP and EAP-IG use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Literal, Protocol

import numpy as np
import torch

from discovery.circuit import HEAD_INPUTS, LOGITS, Circuit, Edge, ModelShape, Node, all_edges, head, mlp
from discovery.engine import Engine, record_forward

Slot = tuple[Node, "str | None"]


class ForwardInputs(Protocol):
    """What the edge-level forward reads off an evaluator (``discovery.evaluator.Evaluator`` has it all)."""

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

    def readout(self, final_normed: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class EdgeGraph:
    """The ablatable edges of a model as a [receivers, senders] grid.

    Senders are ordered layer by layer (a layer's heads, then its MLP when MLPs are ablatable);
    receiver slots likewise (each head's q, k, v, then the MLP), with ``logits`` last.
    """

    shape: ModelShape
    ablate_mlps: bool

    @cached_property
    def senders(self) -> list[Node]:
        out: list[Node] = []
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
    return _graph(evaluator.shape, bool(evaluator.ablation.ablate_mlps))


@lru_cache(maxsize=16)
def _graph(shape: ModelShape, ablate_mlps: bool) -> EdgeGraph:
    return EdgeGraph(shape, ablate_mlps)


def edge_forward(
    evaluator: ForwardInputs,
    masks: torch.Tensor,
    probes: torch.Tensor | None = None,
    embedding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-circuit, per-prompt metric [c, n] of edge masks ``masks`` [c, R, S] (floats; 1 kept, 0 ablated).

    ``embedding`` [n, p, d] replaces the clean prompts' input embedding (EAP-IG's interpolated inputs).

    Differentiable in ``masks`` and in ``probes`` [c, R, n, p, d], which is added to each receiver
    slot's input (zeros: no change; the gradient there is dMetric/d(receiver input)). The logits
    slot reads only the last position.

    Without gradients only *active* senders are computed: a sender with no kept outgoing edge in any
    circuit of the batch contributes its replacement everywhere, so its own inputs never matter.
    After the last layer with an active head nothing mixes positions and only the last one is kept.
    """
    graph = graph_of(evaluator)
    eng: Engine = evaluator.engine
    ds = evaluator.dataset
    rep = evaluator.replacement
    shape = evaluator.shape
    H = shape.n_heads
    per_layer_r = graph.receivers_per_layer
    masks = masks.to(device=eng.device, dtype=eng.dtype)
    c = masks.shape[0]
    x0 = eng.embed(ds.clean_ids) if embedding is None else embedding  # [n, p, d]
    n, p, d = x0.shape
    differentiable = torch.is_grad_enabled() and (masks.requires_grad or probes is not None)
    if differentiable:
        active = torch.arange(len(graph.senders), device=masks.device)
    else:
        active = torch.nonzero(masks.abs().sum((0, 1)) > 0).flatten()
    active_set = set(active.tolist())
    cols = masks[:, :, active]  # [c, R, A]: mask columns of the active senders, in push order
    A = len(active)
    spl = graph.senders_per_layer
    head_layers = [graph.senders[i].layer for i in active_set if graph.senders[i].kind == "head"]
    last_head_layer = max(head_layers, default=-1)

    base = x0.unsqueeze(0).expand(c, n, p, d)
    # active senders' deltas (out_s - rep_s) in one buffer [c, A, n, p*d]: a receiver's input is one
    # batched matmul of its mask row with the senders before it. Autograd cannot see through
    # in-place writes, so differentiable calls concatenate instead.
    buffer = None if differentiable else torch.zeros(c, A, n, p, d, device=x0.device, dtype=x0.dtype)
    pieces: list[torch.Tensor] = []
    filled = 0
    positions = torch.arange(p, device=x0.device)
    last_only = False

    def push(delta: torch.Tensor) -> None:  # [c, s, n, p or 1, d]
        nonlocal filled
        if buffer is None:
            pieces.append(delta)
        elif last_only:
            buffer[:, filled : filled + delta.shape[1], :, -1:] = delta
        else:
            buffer[:, filled : filled + delta.shape[1]] = delta
        filled += delta.shape[1]

    def gather(
        rows: torch.Tensor | slice, count: int, last: bool = False, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inputs of receiver slots ``rows`` from every active sender pushed so far: [c, count, n, p, d].
        ``start``: the stream the senders' deltas are added to (default: ``base``)."""
        origin = base if start is None else start
        out = (origin[:, None, :, -1:] if last and not last_only else origin[:, None]).expand(-1, count, -1, -1, -1)
        if filled:
            D = buffer[:, :filled] if buffer is not None else torch.cat(pieces, dim=1)
            if last:
                D = D[:, :, :, -1:]
            mixed = torch.bmm(cols[:, rows, :filled], D.reshape(c, filled, -1))
            out = out + mixed.view(c, count, *out.shape[2:])
        if probes is not None:
            pr = probes[:, rows]
            out = out + (pr[:, :, :, -1:] if last else pr)
        return out

    for layer in range(eng.n_layers):
        r0 = layer * per_layer_r
        heads_here = [h for h in range(H) if layer * spl + h in active_set]
        if heads_here:
            hs = torch.tensor(heads_here, device=x0.device)
            rows = torch.tensor([r0 + 3 * h + i for h in heads_here for i in range(3)], device=x0.device)
            k_heads = len(heads_here)
            # each of q, k, v reads its own residual stream
            inp = gather(rows, 3 * k_heads)  # [c, 3k, n, p, d]
            ln = eng.ln1(layer, inp).reshape(c, k_heads, 3, n, p, d).transpose(1, 3)  # [c, n, 3, k, p, d]
            q = eng.project(layer, "q", ln[:, :, 0], hs, positions, per_head_input=True)  # [c, n, p, k, e]
            k = eng.project(layer, "k", ln[:, :, 1], hs, positions, per_head_input=True)
            v = eng.project(layer, "v", ln[:, :, 2], hs, positions, per_head_input=True)
            z = eng.attend(q, k, v, positions)
            delta = eng.head_outputs(layer, z - rep.z[layer][:, :, hs], hs)  # [c, n, k, p, d]
            push(delta.transpose(1, 2))  # [c, k, n, p, d]
        if layer > last_head_layer and not last_only and not differentiable:
            last_only = True  # nothing after this mixes positions
            base = base[:, :, -1:]
        pos = slice(-1, None) if last_only else slice(None)
        block_in = base
        base = base + rep.attn_constant[layer][:, pos]
        # the MLP reads this layer's heads too (its slot comes after them), except in parallel blocks,
        # where it reads the block's input and the graph has no head -> MLP edge within the layer
        mlp_active = (layer * spl + H) in active_set if graph.ablate_mlps else True
        if not mlp_active:
            base = base + rep.mlp_out[layer][:, pos]
            continue
        m_row = r0 + 3 * H
        m_in = gather(slice(m_row, m_row + 1), 1, last=last_only, start=eng.mlp_input(block_in, base))[:, 0]
        m_out = eng.mlp(layer, eng.ln2(layer, m_in))
        if graph.ablate_mlps:
            push((m_out - rep.mlp_out[layer][:, pos]).expand(c, n, m_out.shape[2], d).unsqueeze(1))
            base = base + rep.mlp_out[layer][:, pos]
        else:
            base = base + m_out
    final_in = gather(slice(len(graph.receivers) - 1, len(graph.receivers)), 1, last=True)[:, 0, :, -1]
    final = eng.final_norm(final_in)  # [c, n, d]
    return evaluator.readout(final)


def _chunk_size(evaluator: ForwardInputs, graph: EdgeGraph, budget_floats: float = 1.2e8) -> int:
    n, p = evaluator.dataset.clean_ids.shape
    d = evaluator.engine.d_model
    per_circuit = (len(graph.senders) + graph.receivers_per_layer + 4) * n * p * d
    return max(1, int(budget_floats // per_circuit))


@torch.no_grad()
def edge_metric_values(evaluator: ForwardInputs, circuits: Sequence[Circuit]) -> np.ndarray:
    """The metric (mean over prompts) of each edge-level circuit; equal circuits computed once."""
    graph = graph_of(evaluator)
    unique: dict[str, int] = {}
    order = [unique.setdefault(c.key, len(unique)) for c in circuits]
    firsts: dict[int, Circuit] = {}
    for c, u in zip(circuits, order):
        firsts.setdefault(u, c)
    distinct = [firsts[u] for u in range(len(unique))]
    values = np.empty(len(distinct), dtype=np.float64)
    chunk = _chunk_size(evaluator, graph)
    for start in range(0, len(distinct), chunk):
        batch = distinct[start : start + chunk]
        out = edge_forward(evaluator, graph.mask(batch))
        values[start : start + len(batch)] = out.mean(-1).double().cpu().numpy()
    return values[np.array(order, dtype=np.int64)]


def edge_attribution(
    evaluator: ForwardInputs, steps: int = 1, interpolate: Literal["inputs", "edges"] = "inputs"
) -> tuple[list[Edge], np.ndarray]:
    """EAP (``steps=1``) or EAP-IG scores of every ablatable edge, in :attr:`EdgeGraph.edges` order.

    score(s -> r) = (rep_s - out_s) . mean over alpha of dMetric/d input(r) at alpha, where out_s is
    the sender's output in the clean (unablated) run and rep_s its replacement: the first-order
    estimate of the metric change when that one edge is ablated (negative: the edge helps).
    With ``steps > 1`` the gradient is averaged over ``steps`` runs of the full model:

    - ``interpolate="inputs"`` (EAP-IG as published, Hanna et al. 2024, hannamw/EAP-IG
      ``get_scores_eap_ig``): the input embedding is ``corrupt + alpha (clean - corrupt)`` with
      alpha = k / steps, k = 0 .. steps-1;
    - ``interpolate="edges"``: every ablatable edge scaled by alpha = (k + 1/2) / steps,
      interpolating from the empty circuit (alpha = 0) to the full model (this project's earlier
      variant, kept as ``eap-ig-edges``).
    """
    graph = graph_of(evaluator)
    eng: Engine = evaluator.engine
    n, p = evaluator.dataset.clean_ids.shape
    d = eng.d_model
    R = len(graph.receivers)
    valid = graph.full_mask().to(eng.device)
    grad_sum = torch.zeros(R, n, p, d, device=eng.device)
    by_inputs = interpolate == "inputs" and steps > 1
    if by_inputs:
        alphas = [k / steps for k in range(steps)]
        clean_x, corrupt_x = eng.embed(evaluator.dataset.clean_ids), eng.embed(evaluator.dataset.corrupt_ids)
    else:
        alphas = [1.0] if steps <= 1 else [(k + 0.5) / steps for k in range(steps)]
    for alpha in alphas:
        probes = torch.zeros(1, R, n, p, d, device=eng.device, requires_grad=True)
        if by_inputs:
            inputs = corrupt_x + alpha * (clean_x - corrupt_x)
            metric = edge_forward(evaluator, valid, probes, embedding=inputs).mean()
        else:
            metric = edge_forward(evaluator, valid * alpha, probes).mean()
        (grad,) = torch.autograd.grad(metric, probes)
        grad_sum += grad[0]
    grad_mean = grad_sum / len(alphas)
    # the clean run's sender deltas (out_s - rep_s), from a full-mask forward
    deltas = sender_deltas(evaluator)  # [S, n, p, d]
    scores = -torch.einsum("snpd,rnpd->rs", deltas, grad_mean)
    r, s = graph.positions
    return graph.edges, scores[torch.from_numpy(r), torch.from_numpy(s)].double().cpu().numpy()


@torch.no_grad()
def sender_deltas(evaluator: ForwardInputs) -> torch.Tensor:
    """[S, n, p, d]: each ablatable sender's clean output minus its replacement."""
    graph = graph_of(evaluator)
    eng: Engine = evaluator.engine
    rep = evaluator.replacement
    rec = record_forward(eng, evaluator.dataset.clean_ids)
    out = []
    for layer in range(eng.n_layers):
        out.append(eng.head_outputs(layer, rec.z[layer] - rep.z[layer]).transpose(0, 1))  # [h, n, p, d]
        if graph.ablate_mlps:
            out.append((rec.mlp_out[layer] - rep.mlp_out[layer]).unsqueeze(0))
    return torch.cat(out, dim=0)
