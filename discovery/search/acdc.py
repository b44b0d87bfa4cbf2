"""``acdc``: ACDC edge pruning (Conmy et al. 2023) over the evaluator's edge-level ablation.

Receivers are visited from the logits backwards (a layer's MLP, then its heads' v, k, q inputs);
each incoming edge still in the circuit is removed, ablated to its sender's replacement output,
when the removal changes the criterion by less than ``tau``:

- ``criterion=kl`` (default, as published): the KL divergence KL(full model || circuit) of the
  next-token distribution at the last position; an edge is removed when removing it raises the
  KL by less than tau (the paper's scale: tau around 0.01 - 0.1 nats);
- ``criterion=metric``: a one-sided drop of the task's normalised score (an edge whose removal
  lowers it by less than tau goes, including removals that push the circuit *above* the model;
  with ``absolute``: changes by less than tau either way). An earlier version of this project ran
  this by default; it is not what the paper ran.

By default ACDC runs as published: removed edges take the paired corrupted prompt's activations
(resample ablation) and every edge is prunable, the embedding's and the MLPs' included (the
method's evaluation defaults; ``--ablation``, ``--keep-mlps`` and ``--keep-embed`` override
them, and whatever ran is recorded with every score). A receiver with no outgoing edge left
cannot affect the output, so its incoming edges are dropped without evaluation. The returned
score is the task metric's, normalised as everywhere.

GPT-2-small has ~30k ablatable edges (a full pass: about half a forward per edge tested). To
restrict the walk: ``nodes`` starts from the edges among those components (plus the logits, and
the MLPs when they are not ablated), ``eap_top`` from the top edges by EAP score. Edges outside
the start set are ablated from the outset.

Speculation (``batch``): up to ``batch`` successive removals are scored in one ``evaluate`` call
assuming each is accepted; the first rejection discards the rest. The decisions are exactly the
sequential ones; only the evaluation count grows a little.

Speed: the circuits a receiver's test scores agree with the start circuit below that receiver's
layer, so the edge forward recomputes them from that layer only (:mod:`discovery.scoring.edge_forward`'s
remembered prefix). Progress is reported in work units (an edge into layer L weighs the layers it
recomputes), so the ETA holds from the first receivers on. Every scored circuit goes through the
scorer, so a job's store keeps each one: a resumed job replays the walk from stored scores up to
where it stopped, without a forward pass.
"""

from __future__ import annotations

from typing import Any

from discovery.scoring.edge_forward import graph_of
from discovery.scoring.scorer import Scorer
from discovery.search._helpers import parse_nodes
from discovery.search.base import EvaluationDefaults, Param, SearchMethodSpec, SearchResult, register
from discovery.types.circuit import LOGITS, Circuit, Edge
from discovery.types.errors import UsageError
from discovery.types.evaluation import Score
from discovery.types.progress import ProgressCallback


def _start_edges(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> list[Edge]:
    graph = graph_of(evaluator)
    edges = list(graph.edges)
    if params["nodes"]:
        allowed = set(parse_nodes(evaluator, params["nodes"], "acdc", "nodes"))
        receivers = allowed | {LOGITS} | (set() if graph.ablate_mlps else set(evaluator.shape.all_mlps()))
        edges = [e for e in edges if e.sender in allowed and e.receiver in receivers]
    if params["eap_top"]:
        from discovery.search.eap import ranked_edges

        keep = set(edges)
        ranking = ranked_edges(evaluator, params["eap_steps"], progress, prompt_batch=params["prompt_batch"])
        ranked = [e for e, _ in ranking if e in keep]
        edges = ranked[: params["eap_top"]]
    if not edges:
        raise UsageError("method 'acdc': the restriction leaves no edge to walk")
    return sorted(edges, key=lambda e: e.sort_key)


def acdc(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    tau, batch = params["tau"], params["batch"]
    graph = graph_of(evaluator)
    kl = params["criterion"] == "kl"
    judge = evaluator.with_metric("kl") if kl else evaluator
    current_edges = set(_start_edges(evaluator, params, progress))
    start_count = len(current_edges)
    current = judge.evaluate([Circuit.from_edges(current_edges)])[0]
    steps = [current]
    removed, free_removed = 0, 0

    def keeps(before: Score, after: Score) -> bool:
        """Whether removing the edge that turned ``before`` into ``after`` is accepted."""
        if kl:
            return after.metric - before.metric < tau
        change = before.normalised - after.normalised
        return abs(change) < tau if params["absolute"] else change < tau

    # progress in work units: testing an edge into layer L recomputes layers L and above, so an edge
    # counts (layers above it + 1): the ETA then holds although the walk starts with the cheap ones
    n_layers = evaluator.shape.n_layers

    def cost(edge: Edge) -> int:
        return 1 if edge.receiver == LOGITS else n_layers - edge.receiver.layer + 1

    total_work = sum(cost(e) for e in current_edges)
    work_done, handled = 0, 0
    visited = 0
    for receiver, inp in reversed(graph.receivers):
        incoming = sorted(
            (e for e in current_edges if e.receiver == receiver and e.receiver_input == inp),
            key=lambda e: e.sender.sort_key,
            reverse=True,
        )
        if not incoming:
            continue
        visited += 1
        if (
            receiver != LOGITS
            and graph.ablatable_node(receiver)
            and not any(e.sender == receiver for e in current_edges)
        ):
            current_edges -= set(incoming)  # its output is ablated everywhere: its inputs cannot matter
            free_removed += len(incoming)
            work_done += sum(cost(e) for e in incoming)
            handled += len(incoming)
            continue
        i = 0
        while i < len(incoming):
            chunk = incoming[i : i + batch]
            trial, circuits = set(current_edges), []
            for e in chunk:
                trial.discard(e)
                circuits.append(Circuit.from_edges(trial))
            scores = judge.evaluate(circuits)
            for e, s in zip(chunk, scores):
                if keeps(current, s):
                    current_edges.discard(e)
                    current = s
                    removed += 1
                    i += 1
                else:
                    i += 1
                    break
        steps.append(current)
        work_done += sum(cost(e) for e in incoming)
        handled += len(incoming)
        shown = f"KL {current.metric:.4f}" if kl else f"score {current.normalised:.3f}"
        progress(
            work_done,
            total_work,
            f"{receiver.name}{'.' + inp if inp else ''}: {handled}/{start_count} edges tested, "
            f"{len(current_edges)} left, {shown}",
        )
    circuit = Circuit.from_edges(current_edges)
    final = evaluator.evaluate([circuit])[0]
    warning = None
    if not current_edges:  # the edge circuit with no edges: every edge removed (the embedding's when prunable)
        warning = (
            f"ACDC removed every edge at tau {tau:g}: the circuit is empty (scored with every edge removed); "
            "a smaller tau keeps more edges"
        )
    extra = {
        "warning": warning,
        "criterion": params["criterion"],
        "final_kl": float(current.metric) if kl else None,
        "start_edges": start_count,
        "removed_by_test": removed,
        "removed_unreachable": free_removed,
        "edges": sorted(e.name for e in current_edges),
    }
    return SearchResult("acdc", params, circuit, final, 0, 0.0, tuple(steps), extra)


register(
    SearchMethodSpec(
        key="acdc",
        summary="ACDC edge pruning from the logits backwards, removing edges that change the score by < tau",
        params=(
            Param("tau", float, 0.01, "largest rise in KL (criterion kl) or drop in normalised score", minimum=0),
            Param(
                "criterion",
                str,
                "kl",
                "kl: KL divergence to the full model, as published; metric: one-sided normalised drop",
                choices=("kl", "metric"),
            ),
            Param("absolute", bool, False, "criterion metric: compare |change| with tau (also keep edges that help)"),
            Param("nodes", list, None, "restrict to edges among these components, comma list"),
            Param("eap_top", int, 0, "restrict to the top N edges by EAP score (0: off)", minimum=0),
            Param("eap_steps", int, 1, "EAP-IG steps for eap_top (1: plain EAP)", minimum=1),
            Param("batch", int, 8, "removals scored per evaluate call (speculative; same decisions)", minimum=1),
            Param("prompt_batch", int, 0, "eap_top's attribution: prompts per backward pass (0: automatic)", minimum=0),
        ),
        func=acdc,
        level="edge",
        # as published: the paired corrupted prompt's activations, every edge prunable
        evaluation=EvaluationDefaults(ablation="resample", ablate_mlps=True, ablate_embed=True),
    )
)
