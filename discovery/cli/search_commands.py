"""``circuits discover`` (run a search method) and ``circuits methods`` (list them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from discovery.cli import common
from discovery.cli.common import console
from discovery.errors import UsageError


def parse_params(items: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r}: write KEY=VALUE, e.g. --param max_size=10")
        params[key.strip().replace("-", "_")] = value.strip()
    return params


def discover(
    method: str = typer.Option("greedy", "--method", help="search method (see `circuits methods`)"),
    target: float | None = typer.Option(None, "--target", help="normalised score to reach (methods with a target)"),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="method parameter KEY=VALUE; repeatable"),
    png: Path = typer.Option(Path("circuit.png"), "--png", help="where to write the circuit's graph"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the result as JSON here"),
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
) -> None:
    """Find a circuit with a search method; print it, its score and cost, and draw it."""
    from discovery.plots import draw_circuit
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
    loaded = common.open_model(model, device)
    dataset = common.open_dataset(loaded, task, n, seed, corruption, task_param)
    evaluator = common.open_evaluator(loaded, dataset, ablation, mean_source, ablate_mlps)
    with common.progress_bar(f"{method}") as progress:
        result = run_search(method, evaluator, params, progress)
    score = result.score
    if result.target_met is False:  # said first: a missed target must not pass for a found circuit
        console.print(f"target not met: the {method} circuit below misses its target")
    console.print(f"model        {loaded.identity.name} (weights sha256 {loaded.identity.weight_hash[:12]})")
    console.print(f"method       {method} {json.dumps(result.params, default=str)}")
    console.print(f"evaluation   {score.method.describe()}")
    console.print(f"circuit      {result.circuit}")
    size = f"{result.circuit.size} components"
    if result.circuit.edges:
        size += f", {result.circuit.n_edges} edges"
    console.print(f"size         {size}")
    console.print(f"score        {score.metric:.4f} (full {score.full:.4f}, ablated {score.ablated:.4f})")
    console.print(f"normalised   {score.normalised:.4f}")
    console.print(f"evaluations  {result.n_evaluations}")
    console.print(f"wall time    {result.seconds:.2f} s")
    title = f"{method}: {score.normalised:.3f} normalised, {dataset.description}"
    draw_circuit(result.circuit, png, title=title)
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


def methods() -> None:
    """List the search methods and their parameters."""
    from discovery.search import METHODS, get_method

    get_method("greedy")  # importing the package registers every method
    table = Table("method", "level", "summary", "parameters (default)")
    for key in sorted(METHODS):
        spec = METHODS[key]
        params = "\n".join(f"{p.name}={p.default!r}: {p.help}" for p in spec.params) or "(none)"
        table.add_row(key, spec.level, spec.summary, params)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command()(discover)
    app.command()(methods)
