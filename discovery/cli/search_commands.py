"""``circuits discover`` (run a search method), ``circuits curve`` (a ranking's faithfulness curve),
``circuits export`` (EAP-IG / MIB graph JSON) and ``circuits methods`` (list the methods)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from discovery.cli import common, output
from discovery.cli.common import console
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.evaluation import AblationChoice

parse_params = common.parse_params  # one parser for discover and submit


def discover(
    method: str = typer.Option("greedy", "--method", help="search method (see `circuits methods`)"),
    target: float | None = typer.Option(None, "--target", help="normalised score to reach (methods with a target)"),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="method parameter KEY=VALUE; repeatable"),
    png: Path = typer.Option(Path("circuit.png"), "--png", help="where to write the circuit's graph"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the result as JSON here"),
    top_edges: int = typer.Option(100, "--top-edges", help="edge circuits: draw only this many strongest edges"),
    model: str = common.ModelOpt,
    task: str = common.TaskOpt,
    n: int = common.NOpt,
    seed: int = common.SeedOpt,
    corruption: str | None = common.CorruptionOpt,
    ablation: str | None = common.MethodAblationOpt,
    mean_source: str = common.SourceOpt,
    ablate_mlps: bool | None = common.MethodMlpsOpt,
    ablate_embed: bool | None = common.MethodEmbedOpt,
    device: str = common.DeviceOpt,
    task_param: list[str] | None = common.TaskParamOpt,
) -> None:
    """Find a circuit with a search method; print it, its score and cost, and draw it."""
    from discovery.pictures.plots import draw_circuit
    from discovery.search import get_method, run_search

    spec = get_method(method)
    params = parse_params(param)
    if target is not None:
        if "target" not in {p.name for p in spec.params}:
            raise UsageError(
                f"method {method!r} takes no target; its parameters: "
                f"{', '.join(p.name for p in spec.params) or '(none)'}"
            )
        params["target"] = target
    spec.validate(params)  # refuse bad parameters before loading anything
    chosen = spec.resolve_ablation(AblationChoice.parse(ablation, mean_source, ablate_mlps, ablate_embed))
    common.check_dataset_options(task, n, task_param)  # usage errors before the model loads
    loaded = common.open_model(model, device)
    dataset = common.open_dataset(loaded, task, n, seed, corruption, task_param)
    evaluator = common.open_evaluator(loaded, dataset, chosen, store=False)
    job_id = None
    with common.progress_bar(f"{method}") as progress:
        if common.store_enabled():  # recorded as a run (a job row), exactly as `submit` records one
            from discovery.service import JobRequest, run_discovery
            from discovery.store import open_store

            request = JobRequest(
                task,
                method,
                model,
                params,
                n,
                seed,
                corruption,
                common.parse_task_params(task_param),
                ablation=AblationChoice.of(chosen),
                device=device,
            )
            job_id, result, _ = run_discovery(request, evaluator, open_store(), progress)
        else:
            result = run_search(method, evaluator, params, progress)
    score = result.score
    if result.target_met is False:  # said first: a missed target must not pass for a found circuit
        console.print(f"target not met: the {method} circuit below misses its target")
    if result.extra.get("warning"):
        console.print(f"warning: {result.extra['warning']}")
    console.print(f"model        {loaded.identity.name} (weights sha256 {loaded.identity.weight_hash[:12]})")
    console.print(f"method       {method} {json.dumps(result.params, default=str)}")
    console.print(f"evaluation   {score.method.describe()}")
    console.print(f"circuit      {result.circuit}")
    size = f"{result.circuit.size} components"
    if result.circuit.edges:
        size += f", {result.circuit.n_edges} edges"
    console.print(f"size         {size}")
    console.print(f"score        {score.metric:.4f} (full {score.full:.4f}, ablated {score.ablated:.4f})")
    flag = "" if score.reliable else "  (unreliable: full and ablated nearly coincide)"
    console.print(f"normalised   {score.normalised:.4f}{flag}   ratio to full {score.ratio:.4f}")
    console.print(f"evaluations  {result.n_evaluations}")
    console.print(f"wall time    {result.seconds:.2f} s")
    if job_id is not None:
        console.print(f"run          job {job_id} (circuits runs lists it)")
    title = f"{method}: {score.normalised:.3f} normalised, {dataset.description}"
    edge_scores = dict(result.extra.get("edge_scores") or []) or None
    draw_circuit(result.circuit, png, title=title, shape=loaded.shape, edge_scores=edge_scores, top_n=top_edges)
    console.print(f"graph        {png}")
    if json_out:
        json_out.write_text(
            json.dumps(
                {
                    "method": method,
                    "params": result.params,
                    "circuit": result.circuit.canonical,
                    "metric": score.metric,
                    "normalised": score.normalised,
                    "normalised_reliable": score.reliable,
                    "ratio": score.ratio,
                    "full": score.full,
                    "ablated": score.ablated,
                    "evaluation": score.method.describe(),
                    "n_evaluations": result.n_evaluations,
                    "seconds": result.seconds,
                    "steps": [[s.circuit.canonical, s.normalised] for s in result.steps],
                    "extra": result.extra,
                },
                default=str,
            )
        )
        console.print(f"json         {json_out}")


def curve(
    method: str = typer.Option("topk", "--method", help="a method that ranks: topk, threshold (heads), eap, eap-ig"),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="method parameter KEY=VALUE; repeatable"),
    grid: str | None = typer.Option(
        None, "--grid", help="k values, comma list (default: every k up to 200 entries, else MIB's fractions)"
    ),
    png: Path = typer.Option(Path("curve.png"), "--png", help="where to draw the curve"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the curve as JSON here"),
    model: str = common.ModelOpt,
    task: str = common.TaskOpt,
    n: int = common.NOpt,
    seed: int = common.SeedOpt,
    corruption: str | None = common.CorruptionOpt,
    ablation: str = common.AblationOpt,
    mean_source: str = common.SourceOpt,
    ablate_mlps: bool = common.MlpsOpt,
    device: str = common.DeviceOpt,
    task_param: list[str] | None = common.TaskParamOpt,
    fmt: str = output.FormatOpt,
) -> None:
    """Faithfulness curve: the normalised score of a ranking's top-k for a grid of k, its area, CPR and CMD.

    The curve is stored as a run (a `curve` job whose result holds every point; `circuits show JOB`),
    and each point's score as an evaluation. CPR: area under the normalised score over the fraction
    kept (higher is better); CMD: area under |1 - normalised| (lower is better).
    """
    from discovery import api
    from discovery.pictures.plots import draw_curve
    from discovery.search import get_method

    output.check_format(fmt)
    params = parse_params(param)
    get_method(method).validate(params)
    ks = None
    if grid:
        try:
            ks = [int(k) for k in grid.split(",") if k.strip()]
        except ValueError as e:
            raise UsageError(f"--grid {grid!r}: write whole numbers, e.g. 0,1,2,5,10") from e
    common.check_dataset_options(task, n, task_param)  # usage errors before the model loads
    loaded = common.open_model(model, device)
    dataset = common.open_dataset(loaded, task, n, seed, corruption, task_param)
    # the default store, as every command uses it; CIRCUITS_NO_STORE=1 keeps nothing
    no_store = os.environ.get("CIRCUITS_NO_STORE", "").strip().lower() in ("1", "true", "yes")
    use_store: Literal[False] | None = False if no_store else None
    with common.progress_bar(f"curve of {method}") as progress:
        result = api.curve(
            loaded, dataset, method, ks, ablation, mean_source, ablate_mlps, use_store, progress, **params
        )
    draw_curve(result, png)
    rows = [{"k": p.k, "fraction": p.fraction, "score": p.metric, "normalised": p.normalised} for p in result.points]
    if fmt != "table":
        output.emit(rows, ["k", "fraction", "score", "normalised"], fmt)
    else:
        console.print(f"model       {loaded.identity.name} (weights sha256 {loaded.identity.weight_hash[:12]})")
        console.print(f"ranking     {result.ranking} ({result.total} {result.unit})")
        console.print(f"evaluation  {result.method}")
        console.print(f"full        {result.full:.4f}; ablated {result.ablated:.4f} (normalised by their difference)")
        output.emit(rows, ["k", "fraction", "score", "normalised"], "table")
        if result.meaningful:
            console.print(f"area (log-x) {result.area:.4f}")
            console.print(
                f"CPR          {result.cpr:.4f}  (area under normalised score over fraction kept; higher is better)"
            )
            console.print(f"CMD          {result.cmd:.4f}  (area under |1 - normalised|; lower is better)")
        else:
            console.print("area, CPR, CMD: not defined (full and ablated metrics are equal: nothing to normalise by)")
        console.print(f"plot         {png}")
    if json_out:
        json_out.write_text(json.dumps(result.as_dict(), default=str))
        if fmt == "table":
            console.print(f"json         {json_out}")


def export(
    target: str = typer.Argument(..., help="a stored job id, or a circuit (e.g. 0.1,1.2 or '| 0.1->logits')"),
    out: Path = typer.Option(Path("graph.json"), "--out", "-o", help="the JSON file to write"),
    model: str = common.ModelOpt,
    device: str = common.DeviceOpt,
    mlps_kept: bool | None = typer.Option(
        None, "--mlps-kept/--mlps-ablated", help="node circuits: mark every MLP in the graph (default: the job's)"
    ),
    db: str | None = typer.Option(None, "--db", help="database URL (default: CIRCUITS_DATABASE_URL)"),
) -> None:
    """Write a circuit (with its edge scores, for an EAP/EAP-IG job) as EAP-IG Graph JSON: MIB's submission format."""
    from discovery.formats.eap_ig import to_eap_graph, write_eap_graph
    from discovery.store import open_store

    edge_scores = node_scores = None
    method = None
    if target.strip().isdigit():
        job = open_store(db).get_job(int(target))
        if job.result_circuit is None:
            raise UsageError(f"job {job.id} ({job.status.value}) has no result circuit")
        circuit = job.result_circuit
        extra = (job.result_score or {}).get("extra") or {}
        edge_scores = dict(extra.get("edge_scores") or []) or None
        node_scores = dict(extra.get("ranking") or []) or None
        evaluation = (job.result_score or {}).get("evaluation_method") or {}
        method = f"job {job.id}: {job.method} on {evaluation.get('source', job.task)}"
        if mlps_kept is None:
            mlps_kept = not evaluation.get("ablate_mlps", False)
        model = job.model if model == common.DEFAULT_MODEL else model
    else:
        circuit = Circuit.parse(target)
    loaded = common.open_model(model, device)
    graph = to_eap_graph(
        circuit,
        loaded.shape,
        loaded.identity.d_model,
        edge_scores=edge_scores,
        node_scores=node_scores,
        mlps_kept=True if mlps_kept is None else mlps_kept,
        method=method,
    )
    path = write_eap_graph(out, graph)
    kept = sum(1 for e in graph["edges"].values() if e["in_graph"])
    console.print(f"circuit  {circuit} ({circuit.level} level)")
    scored = "from the job" if edge_scores else "none (0.0)"
    console.print(f"graph    {kept} of {len(graph['edges'])} edges in the graph, edge scores {scored}")
    console.print(f"wrote    {path}")


def methods() -> None:
    """List the search methods and their parameters."""
    from discovery.search import METHODS, get_method

    get_method("greedy")  # importing the package registers every method
    table = Table("method", "level", "summary", "evaluation (default)", "parameters (default)")
    for key in sorted(METHODS):
        spec = METHODS[key]
        params = "\n".join(f"{p.name}={p.default!r}: {p.help}" for p in spec.params) or "(none)"
        d = spec.evaluation
        evaluation = f"{d.ablation}; MLPs {'ablated' if d.ablate_mlps else 'kept'}"
        if spec.level == "edge":
            evaluation += f"; embedding edges {'prunable' if d.ablate_embed else 'kept'}"
        table.add_row(key, spec.level, spec.summary, evaluation, params)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command()(discover)
    app.command()(curve)
    app.command()(export)
    app.command()(methods)
